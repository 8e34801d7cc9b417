// CUDA kernels of the fused membrane op: plain C++ interface (raw pointers, sizes, a stream), so
// this header and membrane_kernels.cu need only the CUDA toolkit; torch glue is membrane_cuda.cpp.
//
// Operands (prepared by the glue): D (J, Cin) fp32 = down rows, U (J, Cout) fp32 = up transposed,
// coef (B, K) fp32 = gate * scale; J = K * r.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace spmctl_cuda {

enum class DType : int { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2 };

// Largest K * r the kernels hold in registers; the Python side routes larger J to the reference.
constexpr int kMaxJ = 32;

struct Shape {
  int64_t B;     // batch (gate rows)
  int64_t N;     // positions per sample (sequence length, or H*W)
  int64_t Cin;   // input channels
  int64_t Cout;  // output channels
  int K;         // membranes
  int r;         // rank
  bool nchw;     // true: channels strided by N (contiguous NCHW); false: channels contiguous per row
};

// out = base + sum_j coef[b, j / r] * (x . D_j) * U_j
cudaError_t membrane_forward(DType dtype, const void* x, const void* base, void* out, const float* D,
                             const float* U, const float* coef, Shape s, cudaStream_t stream);

// grad_x, and grad_D / grad_U accumulated (atomically, fp32) into gD (J, Cin) and gU (J, Cout),
// which the caller zeroes. w, v: scratch of B*N*J floats each.
cudaError_t membrane_backward(DType dtype, const void* grad_out, const void* x, void* grad_x, const float* D,
                              const float* U, const float* coef, float* gD, float* gU, float* w, float* v,
                              Shape s, cudaStream_t stream);

}  // namespace spmctl_cuda
