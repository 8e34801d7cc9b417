// spmctl::linear_membrane: an nn.Linear and its membranes in one op, for sampling (no gradient).
//
//   out = x . W^T + bias + sum_k gate[b,k] * scale[k] * (x . down_k^T) . up_k^T
//
// Why: run after the layer, the membrane re-reads the layer's freshly written output, which the
// GEMM leaves out of cache; at the tiny model's widths that made the membrane cost twice what it did
// on warm data. ATen's own linear already starts by writing the bias into the output and then runs
// the GEMM with beta = 1 (addmm). Here the first write is bias + the membrane term instead, computed
// while x is warm, and the GEMM is the same addmm call. A row whose gates are all zero gets exactly
// the bias, so it comes out bit for bit as F.linear computes it.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <vector>

#include "membrane_common.h"
#include "membrane_f32.h"

namespace spmctl {
namespace {

at::Tensor linear_membrane_cpu(const at::Tensor& x_in, const at::Tensor& weight,
                               const std::optional<at::Tensor>& bias, const at::Tensor& down, const at::Tensor& up,
                               const at::Tensor& gate, const at::Tensor& scale) {
  TORCH_CHECK(x_in.scalar_type() == at::kFloat && weight.scalar_type() == at::kFloat,
              "linear_membrane: float32 x and weight expected, got ", x_in.scalar_type(), " and ",
              weight.scalar_type());
  TORCH_CHECK(weight.dim() == 2 && x_in.dim() >= 2 && x_in.size(-1) == weight.size(1),
              "linear_membrane: x ", x_in.sizes(), " does not match weight ", weight.sizes());
  const int64_t cout = weight.size(0), cin = weight.size(1);
  const bool has_bias = bias.has_value() && bias->defined();
  if (has_bias) {
    TORCH_CHECK(bias->scalar_type() == at::kFloat && bias->numel() == cout, "linear_membrane: bias must be ",
                cout, " float32 values");
  }
  const at::Tensor x = x_in.contiguous();
  std::vector<int64_t> out_sizes(x.sizes().begin(), x.sizes().end());
  out_sizes.back() = cout;
  at::Tensor out = at::empty(out_sizes, x.options());
  // geometry and argument checks as for membrane_fwd (out stands in for base_out: only its shape counts)
  const Geometry g = membrane_geometry(x, out, down, up, gate, scale, /*conv=*/false);
  if (out.numel() == 0) return out;
  const at::Tensor b = has_bias ? bias->contiguous() : at::zeros({cout}, x.options());
  const at::Tensor x2d = x.view({-1, cin});
  at::Tensor out2d = out.view({-1, cout});
  const RowOperandsF32 op = row_operands_f32(down, up, gate, scale, g);
  const bool done = fwd_f32_dispatch(x.const_data_ptr<float>(), b.const_data_ptr<float>(),
                                     out.mutable_data_ptr<float>(), op.D.const_data_ptr<float>(),
                                     op.U.const_data_ptr<float>(), op.coef.data(), g, /*base_stride=*/0);
  if (!done) {  // J beyond the specialised kernels: the bias, then the membranes' BLAS update
    out2d.copy_(b.expand({out2d.size(0), cout}));
    membrane_rows_blas_(out, x, down, up, gate, scale, g);
  }
  out2d.addmm_(x2d, weight.t());  // the GEMM at::linear runs after writing the bias (beta = 1)
  return out;
}

}  // namespace
}  // namespace spmctl

TORCH_LIBRARY_FRAGMENT(spmctl, m) {
  m.def(
      "linear_membrane(Tensor x, Tensor weight, Tensor? bias, Tensor down, Tensor up, Tensor gate, "
      "Tensor scale) -> Tensor");
}

TORCH_LIBRARY_IMPL(spmctl, CPU, m) { m.impl("linear_membrane", &spmctl::linear_membrane_cpu); }
