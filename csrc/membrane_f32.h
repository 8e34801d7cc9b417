// The fp32 forward, the sampling hot path, over rows (channels contiguous) and NCHW 1x1 convs:
//
//   out[i] = base[i] + sum_j coef[b(i), j] * (x[i] . D[j]) * U[j]      (J = K * r, usually 1..4)
//
// At the widths of attention layers the op is a few dozen FLOPs per row, so what matters is per-row
// overhead. Rows are processed with 8-float vectors (GCC/Clang vector extensions: AVX/AVX-512 under
// -march=native, SSE pairs otherwise), the J dot products share each load of x, J is a template
// parameter for the common sizes (accumulators stay in registers), and no ATen op is called per
// launch: the general BLAS route (mm, then a rank-J addmm) ran at about a third of this speed for
// (1024 x 32) inputs, mostly in call overhead and skinny-GEMM inefficiency.
//
// Each row is computed independently in a fixed order, so results never depend on threading.
// A sample whose gates are all zero is copied (or, in place, left untouched): bit for bit base_out.
#pragma once

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "membrane_common.h"

namespace spmctl {

constexpr int64_t kMaxRowJ = 16;  // larger J takes the generic kernels

#if defined(__GNUC__) || defined(__clang__)
#define SPMCTL_HAVE_VEC8 1
typedef float vec8 __attribute__((vector_size(32)));

inline vec8 load8(const float* p) {
  vec8 v;
  std::memcpy(&v, p, sizeof v);  // unaligned load
  return v;
}
inline void store8(float* p, vec8 v) { std::memcpy(p, &v, sizeof v); }
inline float hsum8(vec8 v) { return ((v[0] + v[4]) + (v[1] + v[5])) + ((v[2] + v[6]) + (v[3] + v[7])); }

// Rows [begin, end). JT > 0: J known at compile time; JT == 0: runtime J (<= kMaxRowJ).
// A plain function taking sizes by value: inside a capturing lambda GCC reloaded them through the
// captured references after every store and kept the accumulators on the stack (2x slower).
template <int JT>
void fwd_rows_f32_range(const float* __restrict__ x, const float* base, int64_t base_stride, float* out,
                        const float* __restrict__ D, const float* __restrict__ U, const float* __restrict__ coef_bk,
                        int64_t J_rt, int64_t N, int64_t K, int64_t r, int64_t Cin, int64_t Cout, int64_t begin,
                        int64_t end) {
  const int64_t J = JT > 0 ? JT : J_rt;
  float cj[kMaxRowJ] = {}, t[kMaxRowJ];
  // sample b and position n of row i, stepped (an integer division per row costs as much as the
  // row's arithmetic at C = 32)
  int64_t b = begin / N, n = begin % N;
  bool active = false, fresh = true;
  for (int64_t i = begin; i < end; ++i, ++n) {
    if (n == N) {
      n = 0;
      ++b;
      fresh = true;
    }
    if (fresh) {  // a new sample: its J coefficients (gate * scale of the row's membrane)
      fresh = false;
      active = false;
      for (int64_t j = 0; j < J; ++j) {
        cj[j] = coef_bk[b * K + j / r];
        active |= cj[j] != 0.0f;
      }
    }
    const float* br = base + i * base_stride;
    float* orow = out + i * Cout;
    if (!active) {
      if (orow != br) std::memcpy(orow, br, sizeof(float) * Cout);
      continue;
    }
    const float* xr = x + i * Cin;
    int64_t c = 0;
    if constexpr (JT > 0) {
      vec8 acc[JT];
      for (int j = 0; j < JT; ++j) acc[j] = vec8{};
      for (; c + 8 <= Cin; c += 8) {
        const vec8 xv = load8(xr + c);
        for (int j = 0; j < JT; ++j) acc[j] += xv * load8(D + j * Cin + c);
      }
      for (int j = 0; j < JT; ++j) t[j] = hsum8(acc[j]);
    } else {
      for (int64_t j = 0; j < J; ++j) {
        vec8 acc = {};
        for (c = 0; c + 8 <= Cin; c += 8) acc += load8(xr + c) * load8(D + j * Cin + c);
        t[j] = hsum8(acc);
      }
    }
    for (int64_t j = 0; j < J; ++j) {
      float s = t[j];
      for (int64_t k = c; k < Cin; ++k) s += xr[k] * D[j * Cin + k];
      t[j] = cj[j] * s;
    }
    c = 0;
    for (; c + 8 <= Cout; c += 8) {
      vec8 o = load8(br + c);
      for (int64_t j = 0; j < J; ++j) o += t[j] * load8(U + j * Cout + c);
      store8(orow + c, o);
    }
    for (; c < Cout; ++c) {
      float o = br[c];
      for (int64_t j = 0; j < J; ++j) o += t[j] * U[j * Cout + c];
      orow[c] = o;
    }
  }
}

// base_stride: Cout for a base_out tensor, 0 for one row broadcast to every row (a bias).
template <int JT>
void fwd_rows_f32(const float* x, const float* base, int64_t base_stride, float* out, const float* D,
                  const float* U, const float* coef_bk, const Geometry& g) {
  const Geometry gg = g;  // by value into the workers
  at::parallel_for(0, gg.B * gg.N, 256, [=](int64_t begin, int64_t end) {
    fwd_rows_f32_range<JT>(x, base, base_stride, out, D, U, coef_bk, gg.J, gg.N, gg.K, gg.r, gg.Cin, gg.Cout,
                           begin, end);
  });
}

// ------------------------------------------------------------------------ contiguous NCHW 1x1 conv
// Channels are strided by N = H*W, so vectors run over spatial positions: a tile of Q*8 positions of
// one sample keeps its J projections in registers while x's channels, then out's, stream past.

template <int JT, int Q>
inline void nchw_tile_f32(const float* x, const float* base, float* out, const float* D, const float* U,
                          const float* cj, int64_t J_rt, int64_t Cin, int64_t Cout, int64_t N) {
  constexpr int JM = JT > 0 ? JT : static_cast<int>(kMaxRowJ);
  const int64_t J = JT > 0 ? JT : J_rt;
  vec8 h[JM][Q];
  for (int64_t j = 0; j < J; ++j) {
    for (int q = 0; q < Q; ++q) h[j][q] = vec8{};
  }
  for (int64_t c = 0; c < Cin; ++c) {
    vec8 v[Q];
    for (int q = 0; q < Q; ++q) v[q] = load8(x + c * N + 8 * q);
    for (int64_t j = 0; j < J; ++j) {
      const float d = D[j * Cin + c];
      for (int q = 0; q < Q; ++q) h[j][q] += d * v[q];
    }
  }
  for (int64_t j = 0; j < J; ++j) {
    for (int q = 0; q < Q; ++q) h[j][q] *= cj[j];
  }
  for (int64_t co = 0; co < Cout; ++co) {
    for (int q = 0; q < Q; ++q) {
      vec8 o = load8(base + co * N + 8 * q);
      for (int64_t j = 0; j < J; ++j) o += U[j * Cout + co] * h[j][q];
      store8(out + co * N + 8 * q, o);
    }
  }
}

// Positions that do not fill a vector (N not a multiple of 8), one at a time.
inline void nchw_scalar_f32(const float* x, const float* base, float* out, const float* D, const float* U,
                            const float* cj, int64_t J, int64_t Cin, int64_t Cout, int64_t N, int64_t n) {
  for (int64_t s = 0; s < n; ++s) {
    float t[kMaxRowJ];
    for (int64_t j = 0; j < J; ++j) {
      float acc = 0.0f;
      for (int64_t c = 0; c < Cin; ++c) acc += D[j * Cin + c] * x[c * N + s];
      t[j] = cj[j] * acc;
    }
    for (int64_t co = 0; co < Cout; ++co) {
      float o = base[co * N + s];
      for (int64_t j = 0; j < J; ++j) o += U[j * Cout + co] * t[j];
      out[co * N + s] = o;
    }
  }
}

constexpr int64_t kNchwTile = 32;  // positions per work item: 4 vectors

template <int JT>
void fwd_nchw_f32(const float* x, const float* base, float* out, const float* D, const float* U,
                  const float* coef_bk, const Geometry& g) {
  const Geometry gg = g;
  const int64_t tiles = (gg.N + kNchwTile - 1) / kNchwTile;
  at::parallel_for(0, gg.B * tiles, 8, [=](int64_t begin, int64_t end) {
    const int64_t J = JT > 0 ? JT : gg.J, N = gg.N;
    float cj[kMaxRowJ];
    for (int64_t w = begin; w < end; ++w) {
      const int64_t b = w / tiles, s0 = (w % tiles) * kNchwTile, n = std::min(kNchwTile, N - s0);
      bool active = false;
      for (int64_t j = 0; j < J; ++j) {
        cj[j] = coef_bk[b * gg.K + j / gg.r];
        active |= cj[j] != 0.0f;
      }
      const float* xb = x + b * gg.Cin * N + s0;
      const float* bb = base + b * gg.Cout * N + s0;
      float* ob = out + b * gg.Cout * N + s0;
      if (!active) {
        if (ob != bb) {
          for (int64_t co = 0; co < gg.Cout; ++co) std::memcpy(ob + co * N, bb + co * N, sizeof(float) * n);
        }
        continue;
      }
      int64_t done = 0;
      for (; done + 32 <= n; done += 32) {
        nchw_tile_f32<JT, 4>(xb + done, bb + done, ob + done, D, U, cj, J, gg.Cin, gg.Cout, N);
      }
      for (; done + 8 <= n; done += 8) {
        nchw_tile_f32<JT, 1>(xb + done, bb + done, ob + done, D, U, cj, J, gg.Cin, gg.Cout, N);
      }
      nchw_scalar_f32(xb + done, bb + done, ob + done, D, U, cj, J, gg.Cin, gg.Cout, N, n - done);
    }
  });
}

// Dispatches on layout and J; false where these kernels do not apply (the caller takes the generic one).
// base_stride (rows layout only): see fwd_rows_f32.
inline bool fwd_f32_dispatch(const float* x, const float* base, float* out, const float* D, const float* U,
                             const float* coef_bk, const Geometry& g, int64_t base_stride = -1) {
  if (g.J > kMaxRowJ) return false;
  if (g.nchw) {
    switch (g.J) {
      case 1: fwd_nchw_f32<1>(x, base, out, D, U, coef_bk, g); break;
      case 2: fwd_nchw_f32<2>(x, base, out, D, U, coef_bk, g); break;
      case 4: fwd_nchw_f32<4>(x, base, out, D, U, coef_bk, g); break;
      default: fwd_nchw_f32<0>(x, base, out, D, U, coef_bk, g);
    }
    return true;
  }
  const int64_t bs = base_stride < 0 ? g.Cout : base_stride;
  switch (g.J) {
    case 1: fwd_rows_f32<1>(x, base, bs, out, D, U, coef_bk, g); break;
    case 2: fwd_rows_f32<2>(x, base, bs, out, D, U, coef_bk, g); break;
    case 3: fwd_rows_f32<3>(x, base, bs, out, D, U, coef_bk, g); break;
    case 4: fwd_rows_f32<4>(x, base, bs, out, D, U, coef_bk, g); break;
    default: fwd_rows_f32<0>(x, base, bs, out, D, U, coef_bk, g);
  }
  return true;
}
#else
inline bool fwd_f32_dispatch(const float*, const float*, float*, const float*, const float*, const float*,
                             const Geometry&, int64_t = -1) {
  return false;
}
#endif

// fp32 operands for the kernels of membrane_f32.h without a dispatcher call where the layout allows (the sampling
// path calls this ~50 times per UNet step): D and (for r = 1) U are the parameters themselves, and
// coef = gate * scale is a B*K loop.
struct RowOperandsF32 {
  at::Tensor D, U;  // keep copies alive when one was needed
  std::vector<float> coef;
};

inline RowOperandsF32 row_operands_f32(const at::Tensor& down, const at::Tensor& up, const at::Tensor& gate,
                                       const at::Tensor& scale, const Geometry& g) {
  RowOperandsF32 o;
  const auto f32 = at::kFloat;
  o.D = down.scalar_type() == f32 && down.is_contiguous() ? down : down.to(f32).contiguous();
  if (g.r == 1 && up.scalar_type() == f32 && up.is_contiguous()) {
    o.U = up;  // (K, C_out, 1) is (J, C_out) in memory
  } else {
    o.U = up.to(f32).permute({0, 2, 1}).reshape({g.J, g.Cout}).contiguous();
  }
  const at::Tensor gt = gate.to(f32).contiguous(), sc = scale.to(f32).contiguous();
  const float* gp = gt.const_data_ptr<float>();
  const float* sp = sc.const_data_ptr<float>();
  o.coef.resize(g.B * g.K);
  for (int64_t b = 0; b < g.B; ++b) {
    for (int64_t k = 0; k < g.K; ++k) o.coef[b * g.K + k] = gp[b * g.K + k] * sp[k];
  }
  return o;
}

}  // namespace spmctl
