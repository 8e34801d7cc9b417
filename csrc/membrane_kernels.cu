// CUDA kernels of the fused membrane op (see membrane_kernels.h). Needs only the CUDA toolkit.
//
// Memory-bound design: in the channels-contiguous layout one warp owns a row (coalesced loads along
// channels, warp-shuffle reductions for the J projections); in NCHW one thread owns a spatial
// position (coalesced along positions). Accumulation is fp32 for every input dtype.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "membrane_kernels.h"

namespace spmctl_cuda {
namespace {

template <typename T>
struct Cvt;
template <>
struct Cvt<float> {
  __device__ static float load(float v) { return v; }
  __device__ static float store(float v) { return v; }
};
template <>
struct Cvt<__half> {
  __device__ static float load(__half v) { return __half2float(v); }
  __device__ static __half store(float v) { return __float2half_rn(v); }
};
template <>
struct Cvt<__nv_bfloat16> {
  __device__ static float load(__nv_bfloat16 v) { return __bfloat162float(v); }
  __device__ static __nv_bfloat16 store(float v) { return __float2bfloat16_rn(v); }
};

constexpr int kWarp = 32;
constexpr int kThreads = 256;

__device__ __forceinline__ float warp_sum(float v) {
  for (int o = kWarp / 2; o > 0; o /= 2) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

__device__ __forceinline__ bool gate_on(const float* coef, int64_t b, int K) {
  for (int k = 0; k < K; ++k) {
    if (coef[b * K + k] != 0.f) return true;
  }
  return false;
}

// -------------------------------------------------------------------------- forward

template <typename T, int JM>
__global__ void fwd_rows(const T* __restrict__ x, const T* __restrict__ base, T* __restrict__ out,
                         const float* __restrict__ D, const float* __restrict__ U,
                         const float* __restrict__ coef, Shape s) {
  const int J = s.K * s.r, lane = threadIdx.x % kWarp;
  const int64_t rows = s.B * s.N, warps = (int64_t)gridDim.x * (blockDim.x / kWarp);
  for (int64_t row = ((int64_t)blockIdx.x * blockDim.x + threadIdx.x) / kWarp; row < rows; row += warps) {
    const int64_t b = row / s.N;
    const T* xr = x + row * s.Cin;
    const T* br = base + row * s.Cout;
    T* orow = out + row * s.Cout;
    if (!gate_on(coef, b, s.K)) {  // warp-uniform branch: gate 0 copies base_out bit for bit
      for (int64_t c = lane; c < s.Cout; c += kWarp) orow[c] = br[c];
      continue;
    }
    float h[JM];
#pragma unroll
    for (int j = 0; j < JM; ++j) h[j] = 0.f;
    for (int64_t c = lane; c < s.Cin; c += kWarp) {
      const float xv = Cvt<T>::load(xr[c]);
#pragma unroll
      for (int j = 0; j < JM; ++j) {
        if (j < J) h[j] += xv * D[j * s.Cin + c];
      }
    }
#pragma unroll
    for (int j = 0; j < JM; ++j) {
      if (j < J) h[j] = warp_sum(h[j]) * coef[b * s.K + j / s.r];
    }
    for (int64_t c = lane; c < s.Cout; c += kWarp) {
      float acc = Cvt<T>::load(br[c]);
#pragma unroll
      for (int j = 0; j < JM; ++j) {
        if (j < J) acc += h[j] * U[j * s.Cout + c];
      }
      orow[c] = Cvt<T>::store(acc);
    }
  }
}

template <typename T, int JM>
__global__ void fwd_nchw(const T* __restrict__ x, const T* __restrict__ base, T* __restrict__ out,
                         const float* __restrict__ D, const float* __restrict__ U,
                         const float* __restrict__ coef, Shape s) {
  const int J = s.K * s.r;
  const int64_t total = s.B * s.N;
  for (int64_t idx = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; idx < total;
       idx += (int64_t)gridDim.x * blockDim.x) {
    const int64_t b = idx / s.N, p = idx % s.N;
    const T* xb = x + b * s.Cin * s.N + p;
    const T* bb = base + b * s.Cout * s.N + p;
    T* ob = out + b * s.Cout * s.N + p;
    if (!gate_on(coef, b, s.K)) {
      for (int64_t c = 0; c < s.Cout; ++c) ob[c * s.N] = bb[c * s.N];
      continue;
    }
    float h[JM];
#pragma unroll
    for (int j = 0; j < JM; ++j) h[j] = 0.f;
    for (int64_t c = 0; c < s.Cin; ++c) {
      const float xv = Cvt<T>::load(xb[c * s.N]);
#pragma unroll
      for (int j = 0; j < JM; ++j) {
        if (j < J) h[j] += xv * D[j * s.Cin + c];
      }
    }
#pragma unroll
    for (int j = 0; j < JM; ++j) {
      if (j < J) h[j] *= coef[b * s.K + j / s.r];
    }
    for (int64_t c = 0; c < s.Cout; ++c) {
      float acc = Cvt<T>::load(bb[c * s.N]);
#pragma unroll
      for (int j = 0; j < JM; ++j) {
        if (j < J) acc += h[j] * U[j * s.Cout + c];
      }
      ob[c * s.N] = Cvt<T>::store(acc);
    }
  }
}

// ------------------------------------------------------------------------- backward
// Pass 1 (per row): w_j = coef * (g . U_j), v_j = coef * (x . D_j) into scratch, and
// grad_x = sum_j w_j D_j. Pass 2 (reductions over rows): gD[j] += sum w_j x, gU[j] += sum v_j g.

template <typename T, int JM>
__global__ void bwd_rows(const T* __restrict__ g, const T* __restrict__ x, T* __restrict__ gx,
                         const float* __restrict__ D, const float* __restrict__ U,
                         const float* __restrict__ coef, float* __restrict__ w, float* __restrict__ v, Shape s) {
  const int J = s.K * s.r, lane = threadIdx.x % kWarp;
  const int64_t rows = s.B * s.N, warps = (int64_t)gridDim.x * (blockDim.x / kWarp);
  for (int64_t row = ((int64_t)blockIdx.x * blockDim.x + threadIdx.x) / kWarp; row < rows; row += warps) {
    const int64_t b = row / s.N;
    const T* gr = g + row * s.Cout;
    const T* xr = x + row * s.Cin;
    T* gxr = gx + row * s.Cin;
    float hw[JM], hv[JM];
#pragma unroll
    for (int j = 0; j < JM; ++j) hw[j] = hv[j] = 0.f;
    const bool on = gate_on(coef, b, s.K);
    if (on) {
      for (int64_t c = lane; c < s.Cout; c += kWarp) {
        const float gv = Cvt<T>::load(gr[c]);
#pragma unroll
        for (int j = 0; j < JM; ++j) {
          if (j < J) hw[j] += gv * U[j * s.Cout + c];
        }
      }
      for (int64_t c = lane; c < s.Cin; c += kWarp) {
        const float xv = Cvt<T>::load(xr[c]);
#pragma unroll
        for (int j = 0; j < JM; ++j) {
          if (j < J) hv[j] += xv * D[j * s.Cin + c];
        }
      }
#pragma unroll
      for (int j = 0; j < JM; ++j) {
        if (j < J) {
          const float cj = coef[b * s.K + j / s.r];
          hw[j] = warp_sum(hw[j]) * cj;
          hv[j] = warp_sum(hv[j]) * cj;
        }
      }
    }
#pragma unroll
    for (int j = 0; j < JM; ++j) {
      if (j < J && lane == (j % kWarp)) {
        w[row * J + j] = hw[j];
        v[row * J + j] = hv[j];
      }
    }
    for (int64_t c = lane; c < s.Cin; c += kWarp) {
      float acc = 0.f;
#pragma unroll
      for (int j = 0; j < JM; ++j) {
        if (j < J) acc += hw[j] * D[j * s.Cin + c];
      }
      gxr[c] = Cvt<T>::store(acc);
    }
  }
}

template <typename T, int JM>
__global__ void bwd_nchw(const T* __restrict__ g, const T* __restrict__ x, T* __restrict__ gx,
                         const float* __restrict__ D, const float* __restrict__ U,
                         const float* __restrict__ coef, float* __restrict__ w, float* __restrict__ v, Shape s) {
  const int J = s.K * s.r;
  const int64_t total = s.B * s.N;
  for (int64_t idx = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; idx < total;
       idx += (int64_t)gridDim.x * blockDim.x) {
    const int64_t b = idx / s.N, p = idx % s.N;
    const T* gb = g + b * s.Cout * s.N + p;
    const T* xb = x + b * s.Cin * s.N + p;
    T* gxb = gx + b * s.Cin * s.N + p;
    float hw[JM], hv[JM];
#pragma unroll
    for (int j = 0; j < JM; ++j) hw[j] = hv[j] = 0.f;
    if (gate_on(coef, b, s.K)) {
      for (int64_t c = 0; c < s.Cout; ++c) {
        const float gv = Cvt<T>::load(gb[c * s.N]);
#pragma unroll
        for (int j = 0; j < JM; ++j) {
          if (j < J) hw[j] += gv * U[j * s.Cout + c];
        }
      }
      for (int64_t c = 0; c < s.Cin; ++c) {
        const float xv = Cvt<T>::load(xb[c * s.N]);
#pragma unroll
        for (int j = 0; j < JM; ++j) {
          if (j < J) hv[j] += xv * D[j * s.Cin + c];
        }
      }
#pragma unroll
      for (int j = 0; j < JM; ++j) {
        if (j < J) {
          const float cj = coef[b * s.K + j / s.r];
          hw[j] *= cj;
          hv[j] *= cj;
        }
      }
    }
#pragma unroll
    for (int j = 0; j < JM; ++j) {
      if (j < J) {
        w[idx * J + j] = hw[j];
        v[idx * J + j] = hv[j];
      }
    }
    for (int64_t c = 0; c < s.Cin; ++c) {
      float acc = 0.f;
#pragma unroll
      for (int j = 0; j < JM; ++j) {
        if (j < J) acc += hw[j] * D[j * s.Cin + c];
      }
      gxb[c * s.N] = Cvt<T>::store(acc);
    }
  }
}

constexpr int64_t kRowsPerBlock = 256;

// out[j, c] += sum_rows coef_rows[row, j] * t(row, c); channels contiguous: threads along c.
template <typename T, int JM>
__global__ void reduce_rows(const float* __restrict__ wr, const T* __restrict__ t, float* __restrict__ out,
                            int64_t rows, int64_t C, int J, int64_t per_block) {
  const int64_t c = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (c >= C) return;
  const int64_t r0 = blockIdx.y * per_block, r1 = min(rows, r0 + per_block);
  float acc[JM];
#pragma unroll
  for (int j = 0; j < JM; ++j) acc[j] = 0.f;
  for (int64_t row = r0; row < r1; ++row) {
    const float tv = Cvt<T>::load(t[row * C + c]);
#pragma unroll
    for (int j = 0; j < JM; ++j) {
      if (j < J) acc[j] += wr[row * J + j] * tv;
    }
  }
#pragma unroll
  for (int j = 0; j < JM; ++j) {
    if (j < J) atomicAdd(out + j * C + c, acc[j]);
  }
}

// Same reduction for NCHW: one block per channel (and chunk of positions), threads along positions,
// then a block reduction per j.
template <typename T, int JM>
__global__ void reduce_nchw(const float* __restrict__ wr, const T* __restrict__ t, float* __restrict__ out,
                            int64_t B, int64_t N, int64_t C, int J, int64_t per_block) {
  __shared__ float part[kThreads / kWarp][JM];
  const int64_t c = blockIdx.x;
  const int64_t total = B * N, i0 = (int64_t)blockIdx.y * per_block;
  const int64_t i1 = min(total, i0 + per_block);
  float acc[JM];
#pragma unroll
  for (int j = 0; j < JM; ++j) acc[j] = 0.f;
  for (int64_t idx = i0 + threadIdx.x; idx < i1; idx += blockDim.x) {
    const int64_t b = idx / N, p = idx % N;
    const float tv = Cvt<T>::load(t[(b * C + c) * N + p]);
#pragma unroll
    for (int j = 0; j < JM; ++j) {
      if (j < J) acc[j] += wr[idx * J + j] * tv;
    }
  }
  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp;
#pragma unroll
  for (int j = 0; j < JM; ++j) {
    if (j < J) {
      const float sum = warp_sum(acc[j]);
      if (lane == 0) part[warp][j] = sum;
    }
  }
  __syncthreads();
  if (threadIdx.x < J) {
    float sum = 0.f;
    for (int k = 0; k < kThreads / kWarp; ++k) sum += part[k][threadIdx.x];
    atomicAdd(out + threadIdx.x * C + c, sum);
  }
}

int grid_for(int64_t work, int64_t per_block) {
  const int64_t blocks = (work + per_block - 1) / per_block;
  return (int)(blocks < 1 ? 1 : (blocks > 65535 * 8 ? 65535 * 8 : blocks));
}

// Rows per reduction block: at least `base`, more when gridDim.y (<= 65535) would overflow.
int64_t chunk_rows(int64_t rows, int64_t base) {
  const int64_t need = (rows + 65534) / 65535;
  return need > base ? need : base;
}

template <typename T, int JM>
cudaError_t forward_impl(const void* x, const void* base, void* out, const float* D, const float* U,
                         const float* coef, Shape s, cudaStream_t stream) {
  const int64_t rows = s.B * s.N;
  if (s.nchw) {
    fwd_nchw<T, JM><<<grid_for(rows, kThreads), kThreads, 0, stream>>>(
        static_cast<const T*>(x), static_cast<const T*>(base), static_cast<T*>(out), D, U, coef, s);
  } else {
    fwd_rows<T, JM><<<grid_for(rows, kThreads / kWarp), kThreads, 0, stream>>>(
        static_cast<const T*>(x), static_cast<const T*>(base), static_cast<T*>(out), D, U, coef, s);
  }
  return cudaGetLastError();
}

template <typename T, int JM>
cudaError_t backward_impl(const void* g, const void* x, void* gx, const float* D, const float* U,
                          const float* coef, float* gD, float* gU, float* w, float* v, Shape s,
                          cudaStream_t stream) {
  const int64_t rows = s.B * s.N;
  const int J = s.K * s.r;
  const T* gt = static_cast<const T*>(g);
  const T* xt = static_cast<const T*>(x);
  if (s.nchw) {
    bwd_nchw<T, JM><<<grid_for(rows, kThreads), kThreads, 0, stream>>>(gt, xt, static_cast<T*>(gx), D, U,
                                                                       coef, w, v, s);
    const int64_t per = chunk_rows(rows, kRowsPerBlock * 4);
    const unsigned chunks = (unsigned)((rows + per - 1) / per);
    reduce_nchw<T, JM><<<dim3((unsigned)s.Cin, chunks), kThreads, 0, stream>>>(w, xt, gD, s.B, s.N, s.Cin, J,
                                                                               per);
    reduce_nchw<T, JM><<<dim3((unsigned)s.Cout, chunks), kThreads, 0, stream>>>(v, gt, gU, s.B, s.N, s.Cout,
                                                                                J, per);
  } else {
    bwd_rows<T, JM><<<grid_for(rows, kThreads / kWarp), kThreads, 0, stream>>>(gt, xt, static_cast<T*>(gx), D,
                                                                               U, coef, w, v, s);
    const int64_t per = chunk_rows(rows, kRowsPerBlock);
    const unsigned chunks = (unsigned)((rows + per - 1) / per);
    constexpr int kCols = 128;
    reduce_rows<T, JM><<<dim3((unsigned)((s.Cin + kCols - 1) / kCols), chunks), kCols, 0, stream>>>(
        w, xt, gD, rows, s.Cin, J, per);
    reduce_rows<T, JM><<<dim3((unsigned)((s.Cout + kCols - 1) / kCols), chunks), kCols, 0, stream>>>(
        v, gt, gU, rows, s.Cout, J, per);
  }
  return cudaGetLastError();
}

// Register arrays are sized at compile time: a small variant for the common K*r <= 4 and a large one.
template <typename T>
cudaError_t forward_j(const void* x, const void* base, void* out, const float* D, const float* U,
                      const float* coef, Shape s, cudaStream_t stream) {
  if (s.K * s.r <= 4) return forward_impl<T, 4>(x, base, out, D, U, coef, s, stream);
  return forward_impl<T, kMaxJ>(x, base, out, D, U, coef, s, stream);
}

template <typename T>
cudaError_t backward_j(const void* g, const void* x, void* gx, const float* D, const float* U, const float* coef,
                       float* gD, float* gU, float* w, float* v, Shape s, cudaStream_t stream) {
  if (s.K * s.r <= 4) return backward_impl<T, 4>(g, x, gx, D, U, coef, gD, gU, w, v, s, stream);
  return backward_impl<T, kMaxJ>(g, x, gx, D, U, coef, gD, gU, w, v, s, stream);
}

}  // namespace

cudaError_t membrane_forward(DType dtype, const void* x, const void* base, void* out, const float* D,
                             const float* U, const float* coef, Shape s, cudaStream_t stream) {
  if (s.K * s.r > kMaxJ || s.K * s.r < 1) return cudaErrorInvalidValue;
  if (s.B * s.N == 0) return cudaSuccess;
  switch (dtype) {
    case DType::kFloat32:
      return forward_j<float>(x, base, out, D, U, coef, s, stream);
    case DType::kFloat16:
      return forward_j<__half>(x, base, out, D, U, coef, s, stream);
    case DType::kBFloat16:
      return forward_j<__nv_bfloat16>(x, base, out, D, U, coef, s, stream);
  }
  return cudaErrorInvalidValue;
}

cudaError_t membrane_backward(DType dtype, const void* grad_out, const void* x, void* grad_x, const float* D,
                              const float* U, const float* coef, float* gD, float* gU, float* w, float* v,
                              Shape s, cudaStream_t stream) {
  if (s.K * s.r > kMaxJ || s.K * s.r < 1) return cudaErrorInvalidValue;
  if (s.B * s.N == 0) return cudaSuccess;
  switch (dtype) {
    case DType::kFloat32:
      return backward_j<float>(grad_out, x, grad_x, D, U, coef, gD, gU, w, v, s, stream);
    case DType::kFloat16:
      return backward_j<__half>(grad_out, x, grad_x, D, U, coef, gD, gU, w, v, s, stream);
    case DType::kBFloat16:
      return backward_j<__nv_bfloat16>(grad_out, x, grad_x, D, U, coef, gD, gU, w, v, s, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace spmctl_cuda
