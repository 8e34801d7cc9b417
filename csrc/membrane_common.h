// Shared torch-side glue of the membrane op: argument checks and layout normalisation.
// Used by the CPU kernels (membrane_op.cpp) and the CUDA glue (membrane_cuda.cpp).
#pragma once

#include <ATen/ATen.h>
#include <ATen/OpMathType.h>

#include <cstdint>

namespace spmctl {

// How the big tensors are laid out once normalised.
//   rows: channels are contiguous (linear input, or a channels-last 1x1 conv); row i = (b, n)
//   nchw: channels are strided by N = H*W (a contiguous 1x1 conv); a "row" is (b, spatial s)
struct Geometry {
  int64_t B = 0, N = 0, Cin = 0, Cout = 0, K = 0, r = 0, J = 0;
  bool nchw = false;
};

// A 4-D conv tensor is treated as channels-last only when it is exactly that and not also
// contiguous; the Python fake kernel uses the same rule so that output strides agree.
inline bool membrane_channels_last(const at::Tensor& x, bool conv) {
  return conv && x.dim() == 4 && !x.is_contiguous() &&
         x.is_contiguous(at::MemoryFormat::ChannelsLast);
}

inline at::MemoryFormat membrane_format(const at::Tensor& x, bool conv) {
  return membrane_channels_last(x, conv) ? at::MemoryFormat::ChannelsLast
                                         : at::MemoryFormat::Contiguous;
}

// Validates shapes and returns the geometry; `other` is base_out (forward) or grad_out (backward).
inline Geometry membrane_geometry(const at::Tensor& x, const at::Tensor& other, const at::Tensor& down,
                                  const at::Tensor& up, const at::Tensor& gate, const at::Tensor& scale,
                                  bool conv) {
  TORCH_CHECK(down.dim() == 3, "membrane: down must be (K, r, C_in), got ", down.sizes());
  TORCH_CHECK(up.dim() == 3, "membrane: up must be (K, C_out, r), got ", up.sizes());
  Geometry g;
  g.K = down.size(0);
  g.r = down.size(1);
  g.J = g.K * g.r;
  g.Cin = down.size(2);
  g.Cout = up.size(1);
  TORCH_CHECK(up.size(0) == g.K && up.size(2) == g.r, "membrane: up ", up.sizes(),
              " does not match down ", down.sizes());
  TORCH_CHECK(x.scalar_type() == other.scalar_type(), "membrane: x and base_out/grad_out dtypes differ (",
              x.scalar_type(), " vs ", other.scalar_type(), ")");
  TORCH_CHECK(x.device() == other.device() && x.device() == down.device() && x.device() == up.device() &&
                  x.device() == gate.device() && x.device() == scale.device(),
              "membrane: all tensors must be on one device");
  if (conv) {
    TORCH_CHECK(x.dim() == 4 && other.dim() == 4, "membrane(conv): x and base_out must be 4-D");
    TORCH_CHECK(x.size(1) == g.Cin && other.size(1) == g.Cout, "membrane(conv): channels mismatch");
    TORCH_CHECK(x.size(0) == other.size(0) && x.size(2) == other.size(2) && x.size(3) == other.size(3),
                "membrane(conv): x ", x.sizes(), " and base_out ", other.sizes(), " differ");
    g.B = x.size(0);
    g.N = x.size(2) * x.size(3);
    g.nchw = !membrane_channels_last(x, conv);
  } else {
    TORCH_CHECK(x.dim() >= 2 && other.dim() == x.dim(), "membrane: x must be (B, ..., C_in)");
    TORCH_CHECK(x.size(-1) == g.Cin && other.size(-1) == g.Cout, "membrane: channels mismatch: x ",
                x.sizes(), ", base_out ", other.sizes(), ", down ", down.sizes(), ", up ", up.sizes());
    for (int64_t d = 0; d + 1 < x.dim(); ++d) {
      TORCH_CHECK(x.size(d) == other.size(d), "membrane: x ", x.sizes(), " and base_out ", other.sizes(),
                  " differ");
    }
    g.B = x.size(0);
    g.N = g.B == 0 ? 0 : x.numel() / (g.B * g.Cin);
    g.nchw = false;
  }
  TORCH_CHECK(gate.dim() == 2 && gate.size(0) == g.B && gate.size(1) == g.K, "membrane: gate must be (B, K) = (",
              g.B, ", ", g.K, "), got ", gate.sizes());
  TORCH_CHECK(scale.numel() == g.K, "membrane: scale must have K = ", g.K, " entries");
  return g;
}

// Small operands in the accumulation type, laid out for streaming over channels:
//   D (J, C_in) = down rows, U (J, C_out) = up transposed, coef (B, K) = gate * scale.
struct Operands {
  at::Tensor D, U, coef;
};

inline Operands membrane_operands(const at::Tensor& down, const at::Tensor& up, const at::Tensor& gate,
                                  const at::Tensor& scale, at::ScalarType acc) {
  const int64_t K = down.size(0), r = down.size(1);
  Operands o;
  o.D = down.to(acc).reshape({K * r, down.size(2)}).contiguous();
  o.U = up.to(acc).permute({0, 2, 1}).reshape({K * r, up.size(1)}).contiguous();
  o.coef = (gate.to(acc) * scale.to(acc).reshape({1, K})).contiguous();
  return o;
}

// out += the membranes' term, as two BLAS calls (rows x J projections, then a rank-J update of `out`),
// for the row layout (channels contiguous; a channels-last (B, C, H, W) tensor is (B, H, W, C) in
// memory) in fp32/fp64. A gate-0 sample gets an exact zero update: its rows stay bit for bit.
inline void membrane_rows_blas_(at::Tensor& out, const at::Tensor& x, const at::Tensor& down,
                                const at::Tensor& up, const at::Tensor& gate, const at::Tensor& scale,
                                const Geometry& g) {
  const Operands op = membrane_operands(down, up, gate, scale, x.scalar_type());
  auto rows2d = [](const at::Tensor& t) {
    return t.dim() == 4 ? t.permute({0, 2, 3, 1}).view({-1, t.size(1)}) : t.view({-1, t.size(-1)});
  };
  at::Tensor h = at::mm(rows2d(x), op.D.t());             // (rows, J)
  at::Tensor coef_j = op.coef.repeat_interleave(g.r, 1);  // (B, J)
  h.view({g.B, g.N, g.J}).mul_(coef_j.unsqueeze(1));
  rows2d(out).addmm_(h, op.U);
}

}  // namespace spmctl
