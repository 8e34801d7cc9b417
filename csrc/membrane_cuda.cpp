// Torch glue of the CUDA membrane kernels: CUDA dispatch key, device guard, current stream.
// Built only where torch has CUDA (the kernels themselves are in membrane_kernels.cu).
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "membrane_common.h"
#include "membrane_kernels.h"

namespace spmctl {
namespace {

spmctl_cuda::DType kernel_dtype(at::ScalarType t) {
  switch (t) {
    case at::kFloat:
      return spmctl_cuda::DType::kFloat32;
    case at::kHalf:
      return spmctl_cuda::DType::kFloat16;
    case at::kBFloat16:
      return spmctl_cuda::DType::kBFloat16;
    default:
      TORCH_CHECK(false, "membrane (CUDA): unsupported dtype ", t, " (float32, float16, bfloat16)");
  }
}

spmctl_cuda::Shape kernel_shape(const Geometry& g) {
  TORCH_CHECK(g.J >= 1 && g.J <= spmctl_cuda::kMaxJ, "membrane (CUDA): K*rank must be in 1..",
              spmctl_cuda::kMaxJ, ", got ", g.J);
  return {g.B, g.N, g.Cin, g.Cout, static_cast<int>(g.K), static_cast<int>(g.r), g.nchw};
}

at::Tensor membrane_fwd_cuda(const at::Tensor& x_in, const at::Tensor& base_in, const at::Tensor& down,
                             const at::Tensor& up, const at::Tensor& gate, const at::Tensor& scale, bool conv) {
  const Geometry g = membrane_geometry(x_in, base_in, down, up, gate, scale, conv);
  const c10::cuda::CUDAGuard guard(x_in.device());
  const auto fmt = membrane_format(x_in, conv);
  const at::Tensor x = x_in.contiguous(fmt), base = base_in.contiguous(fmt);
  at::Tensor out = at::empty(base.sizes(), base.options().memory_format(fmt));
  if (out.numel() == 0) return out;
  const Operands op = membrane_operands(down, up, gate, scale, at::kFloat);
  const cudaError_t err = spmctl_cuda::membrane_forward(
      kernel_dtype(x.scalar_type()), x.const_data_ptr(), base.const_data_ptr(), out.mutable_data_ptr(),
      op.D.const_data_ptr<float>(), op.U.const_data_ptr<float>(), op.coef.const_data_ptr<float>(),
      kernel_shape(g), c10::cuda::getCurrentCUDAStream().stream());
  TORCH_CHECK(err == cudaSuccess, "membrane_fwd (CUDA): ", cudaGetErrorString(err));
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> membrane_bwd_cuda(const at::Tensor& gout_in,
                                                                 const at::Tensor& x_in, const at::Tensor& down,
                                                                 const at::Tensor& up, const at::Tensor& gate,
                                                                 const at::Tensor& scale, bool conv) {
  const Geometry g = membrane_geometry(x_in, gout_in, down, up, gate, scale, conv);
  const c10::cuda::CUDAGuard guard(x_in.device());
  const auto fmt = membrane_format(x_in, conv);
  const at::Tensor x = x_in.contiguous(fmt), gout = gout_in.contiguous(fmt);
  at::Tensor gx = at::empty(x.sizes(), x.options().memory_format(fmt));
  const auto f32 = x.options().dtype(at::kFloat);
  at::Tensor gD = at::zeros({g.J, g.Cin}, f32), gU = at::zeros({g.J, g.Cout}, f32);
  if (x.numel() > 0) {
    const Operands op = membrane_operands(down, up, gate, scale, at::kFloat);
    at::Tensor w = at::empty({g.B * g.N * g.J}, f32), v = at::empty({g.B * g.N * g.J}, f32);
    const cudaError_t err = spmctl_cuda::membrane_backward(
        kernel_dtype(x.scalar_type()), gout.const_data_ptr(), x.const_data_ptr(), gx.mutable_data_ptr(),
        op.D.const_data_ptr<float>(), op.U.const_data_ptr<float>(), op.coef.const_data_ptr<float>(),
        gD.mutable_data_ptr<float>(), gU.mutable_data_ptr<float>(), w.mutable_data_ptr<float>(),
        v.mutable_data_ptr<float>(), kernel_shape(g), c10::cuda::getCurrentCUDAStream().stream());
    TORCH_CHECK(err == cudaSuccess, "membrane_bwd (CUDA): ", cudaGetErrorString(err));
  }
  at::Tensor grad_down = gD.view({g.K, g.r, g.Cin}).to(down.scalar_type());
  at::Tensor grad_up = gU.view({g.K, g.r, g.Cout}).permute({0, 2, 1}).contiguous().to(up.scalar_type());
  return {gx, grad_down, grad_up};
}

}  // namespace
}  // namespace spmctl

TORCH_LIBRARY_IMPL(spmctl, CUDA, m) {
  m.impl("membrane_fwd", &spmctl::membrane_fwd_cuda);
  m.impl("membrane_bwd", &spmctl::membrane_bwd_cuda);
}
