// The fused membrane op: schemas (TORCH_LIBRARY) and the CPU kernels.
//
//   out = base_out + sum_k gate[b,k] * scale[k] * (x . down_k^T) . up_k^T
//
// With rank r and K both tiny the op is memory-bound: everything here is arranged so that each big
// tensor (x, base_out, out, grad_out, grad_x) is streamed once, and the small operands (down, up,
// J = K*r rows of C floats) stay in L1/L2. Accumulation is in the opmath type (fp32 for
// fp16/bf16/fp32, fp64 for fp64), so the result is rounded once.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <type_traits>
#include <vector>

#include "membrane_common.h"
#include "membrane_f32.h"

namespace spmctl {
namespace {

// Fixed-width lane blocks: independent partial sums let the compiler vectorise reductions without
// -ffast-math (it may not reassociate a plain `s += a[i] * b[i]` loop). Long rows use 64 lanes
// (several vector registers, i.e. several independent FMA chains, so the loop is not bound by FMA
// latency); short rows (the tiny model, C = 32..64) use 8, because folding 64 partial sums would
// cost more than the dot product itself.
constexpr int64_t kLanes = 64;
constexpr int64_t kLanesShort = 8;

template <typename acc_t>
inline acc_t fold8(const acc_t* p) {
  return ((p[0] + p[4]) + (p[1] + p[5])) + ((p[2] + p[6]) + (p[3] + p[7]));
}

template <typename acc_t>
inline acc_t dot(const acc_t* __restrict__ a, const acc_t* __restrict__ b, int64_t n) {
  int64_t i = 0;
  acc_t part8[kLanesShort] = {};
  if (n >= 4 * kLanes) {
    acc_t part[kLanes] = {};
    for (; i + kLanes <= n; i += kLanes) {
      for (int64_t l = 0; l < kLanes; ++l) part[l] += a[i + l] * b[i + l];
    }
    for (int64_t l = 0; l < kLanes; ++l) part8[l % kLanesShort] += part[l];
  }
  for (; i + kLanesShort <= n; i += kLanesShort) {
    for (int64_t l = 0; l < kLanesShort; ++l) part8[l] += a[i + l] * b[i + l];
  }
  acc_t s = fold8(part8);
  for (; i < n; ++i) s += a[i] * b[i];
  return s;
}

template <typename acc_t>
inline void axpy(acc_t alpha, const acc_t* __restrict__ x, acc_t* __restrict__ y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] += alpha * x[i];
}

// y = b + alpha * x in one pass (b converted from the storage type).
template <typename scalar_t, typename acc_t>
inline void axpy_from(acc_t alpha, const acc_t* __restrict__ x, const scalar_t* __restrict__ b,
                      acc_t* __restrict__ y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] = static_cast<acc_t>(b[i]) + alpha * x[i];
}

// Loads a row into the accumulation type; for fp32/fp64 it is used in place (no copy).
template <typename scalar_t, typename acc_t>
inline const acc_t* load_row(const scalar_t* src, acc_t* scratch, int64_t n) {
  if constexpr (std::is_same_v<scalar_t, acc_t>) {
    return src;
  } else {
    for (int64_t i = 0; i < n; ++i) scratch[i] = static_cast<acc_t>(src[i]);
    return scratch;
  }
}

template <typename scalar_t, typename acc_t>
inline void store_row(const acc_t* src, scalar_t* dst, int64_t n) {
  for (int64_t i = 0; i < n; ++i) dst[i] = static_cast<scalar_t>(src[i]);
}

inline bool any_nonzero(const void* p, int64_t n, bool dbl) {
  for (int64_t i = 0; i < n; ++i) {
    if (dbl ? static_cast<const double*>(p)[i] != 0.0 : static_cast<const float*>(p)[i] != 0.0f) return true;
  }
  return false;
}

// Splits `rows` into at most `threads` fixed chunks; the chunking (and so every reduction order)
// depends only on the sizes and thread count, never on scheduling.
inline int64_t num_chunks(int64_t rows, int64_t min_rows) {
  const int64_t by_size = std::max<int64_t>(1, rows / std::max<int64_t>(1, min_rows));
  return std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), by_size));
}

// ---------------------------------------------------------------- channels contiguous ("rows")

// Walks rows in order, keeping the sample index and its J per-row coefficients (gate * scale of
// each row's membrane) up to date. Integer division per row (row -> sample, j -> membrane) cost
// more than the whole dot product at small C, so it happens once per sample instead.
template <typename acc_t>
struct RowCursor {
  const acc_t* coef;
  const Geometry& g;
  int64_t b, pos;
  std::vector<acc_t> cj;
  bool active = false;

  RowCursor(const acc_t* coef_, const Geometry& g_, int64_t row)
      : coef(coef_), g(g_), b(row / g_.N), pos(row % g_.N), cj(g_.J) {
    load();
  }
  void load() {
    const acc_t* cb = coef + b * g.K;
    active = any_nonzero(cb, g.K, std::is_same_v<acc_t, double>);
    for (int64_t j = 0; j < g.J; ++j) cj[j] = cb[j / g.r];
  }
  void next() {
    if (++pos == g.N) {
      pos = 0;
      ++b;
      if (b < g.B) load();
    }
  }
};

template <typename scalar_t>
void fwd_rows(const scalar_t* x, const scalar_t* base, scalar_t* out, const at::opmath_type<scalar_t>* D,
              const at::opmath_type<scalar_t>* U, const at::opmath_type<scalar_t>* coef, const Geometry& g) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t rows = g.B * g.N;
  at::parallel_for(0, rows, 64, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> xs(g.Cin), os(g.Cout), t(g.J);
    RowCursor<acc_t> cur(coef, g, begin);
    for (int64_t i = begin; i < end; ++i, cur.next()) {
      const scalar_t* xr = x + i * g.Cin;
      const scalar_t* br = base + i * g.Cout;
      scalar_t* orow = out + i * g.Cout;
      if (!cur.active) {
        if (orow != br) std::copy(br, br + g.Cout, orow);  // gate 0: out is base_out, bit for bit
        continue;
      }
      const acc_t* xa = load_row<scalar_t, acc_t>(xr, xs.data(), g.Cin);
      for (int64_t j = 0; j < g.J; ++j) t[j] = cur.cj[j] * dot(xa, D + j * g.Cin, g.Cin);
      // Second streaming pass: base_out + the first term straight into `out` (fp32/fp64) or an L1
      // scratch row (fp16/bf16, rounded once at the end); further terms hit the row in L1.
      acc_t* o;
      if constexpr (std::is_same_v<scalar_t, acc_t>) {
        o = orow;
      } else {
        o = os.data();
      }
      if (static_cast<const void*>(o) == static_cast<const void*>(br)) {
        axpy(t[0], U, o, g.Cout);  // in place (membrane_fwd_): out already holds base_out
      } else {
        axpy_from(t[0], U, br, o, g.Cout);
      }
      for (int64_t j = 1; j < g.J; ++j) axpy(t[j], U + j * g.Cout, o, g.Cout);
      if constexpr (!std::is_same_v<scalar_t, acc_t>) store_row(o, orow, g.Cout);
    }
  });
}

// One pass over (grad_out row, x row): grad_x row written, grad_down/grad_up accumulated into
// per-chunk buffers (summed in a fixed order afterwards, so results are deterministic).
template <typename scalar_t>
void bwd_rows(const scalar_t* gout, const scalar_t* x, scalar_t* gx, const at::opmath_type<scalar_t>* D,
              const at::opmath_type<scalar_t>* U, const at::opmath_type<scalar_t>* coef,
              at::opmath_type<scalar_t>* gD, at::opmath_type<scalar_t>* gU, const Geometry& g) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t rows = g.B * g.N;
  const int64_t chunks = num_chunks(rows, 256);
  std::vector<acc_t> partD(chunks > 1 ? (chunks - 1) * g.J * g.Cin : 0);
  std::vector<acc_t> partU(chunks > 1 ? (chunks - 1) * g.J * g.Cout : 0);
  at::parallel_for(0, chunks, 1, [&](int64_t cbeg, int64_t cend) {
    std::vector<acc_t> xs(g.Cin), gs(g.Cout), gxs(g.Cin), w(g.J), v(g.J);
    for (int64_t c = cbeg; c < cend; ++c) {
      acc_t* accD = c == 0 ? gD : partD.data() + (c - 1) * g.J * g.Cin;
      acc_t* accU = c == 0 ? gU : partU.data() + (c - 1) * g.J * g.Cout;
      const int64_t begin = rows * c / chunks, end = rows * (c + 1) / chunks;
      RowCursor<acc_t> cur(coef, g, begin);
      for (int64_t i = begin; i < end; ++i, cur.next()) {
        scalar_t* gxr = gx + i * g.Cin;
        if (!cur.active) {
          std::fill(gxr, gxr + g.Cin, scalar_t(0));
          continue;
        }
        const acc_t* xa = load_row<scalar_t, acc_t>(x + i * g.Cin, xs.data(), g.Cin);
        const acc_t* ga = load_row<scalar_t, acc_t>(gout + i * g.Cout, gs.data(), g.Cout);
        for (int64_t j = 0; j < g.J; ++j) {
          const acc_t s = cur.cj[j];
          w[j] = s * dot(ga, U + j * g.Cout, g.Cout);  // d loss / d h_j
          v[j] = s * dot(xa, D + j * g.Cin, g.Cin);    // gated h_j
        }
        acc_t* gxa;
        if constexpr (std::is_same_v<scalar_t, acc_t>) {
          gxa = gxr;
        } else {
          gxa = gxs.data();
        }
        std::fill(gxa, gxa + g.Cin, acc_t(0));
        for (int64_t j = 0; j < g.J; ++j) {
          axpy(w[j], D + j * g.Cin, gxa, g.Cin);
          axpy(w[j], xa, accD + j * g.Cin, g.Cin);
          axpy(v[j], ga, accU + j * g.Cout, g.Cout);
        }
        if constexpr (!std::is_same_v<scalar_t, acc_t>) store_row(gxa, gxr, g.Cin);
      }
    }
  });
  for (int64_t c = 1; c < chunks; ++c) {
    axpy(acc_t(1), partD.data() + (c - 1) * g.J * g.Cin, gD, g.J * g.Cin);
    axpy(acc_t(1), partU.data() + (c - 1) * g.J * g.Cout, gU, g.J * g.Cout);
  }
}

// ------------------------------------------------------------ contiguous NCHW 1x1 conv ("nchw")
// Channels are strided by N = H*W, so the streaming loops run over a tile of spatial positions
// (contiguous) and the projections for the tile live in a small (J, T) buffer.

constexpr int64_t kTile = 32;

template <typename scalar_t>
void fwd_nchw(const scalar_t* x, const scalar_t* base, scalar_t* out, const at::opmath_type<scalar_t>* D,
              const at::opmath_type<scalar_t>* U, const at::opmath_type<scalar_t>* coef, const Geometry& g) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t tiles = (g.N + kTile - 1) / kTile;
  at::parallel_for(0, g.B * tiles, 4, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> h(g.J * kTile), xs(kTile), o(kTile);
    for (int64_t w = begin; w < end; ++w) {
      const int64_t b = w / tiles, s0 = (w % tiles) * kTile, n = std::min(kTile, g.N - s0);
      const acc_t* cb = coef + b * g.K;
      if (!any_nonzero(cb, g.K, std::is_same_v<acc_t, double>)) {
        if (base != out) {
          for (int64_t co = 0; co < g.Cout; ++co) {
            const scalar_t* src = base + (b * g.Cout + co) * g.N + s0;
            std::copy(src, src + n, out + (b * g.Cout + co) * g.N + s0);
          }
        }
        continue;
      }
      std::fill(h.begin(), h.end(), acc_t(0));
      for (int64_t c = 0; c < g.Cin; ++c) {
        const acc_t* xa = load_row<scalar_t, acc_t>(x + (b * g.Cin + c) * g.N + s0, xs.data(), n);
        for (int64_t j = 0; j < g.J; ++j) axpy(D[j * g.Cin + c], xa, h.data() + j * kTile, n);
      }
      for (int64_t j = 0; j < g.J; ++j) {
        for (int64_t s = 0; s < n; ++s) h[j * kTile + s] *= cb[j / g.r];
      }
      for (int64_t co = 0; co < g.Cout; ++co) {
        const scalar_t* src = base + (b * g.Cout + co) * g.N + s0;
        for (int64_t s = 0; s < n; ++s) o[s] = static_cast<acc_t>(src[s]);
        for (int64_t j = 0; j < g.J; ++j) axpy(U[j * g.Cout + co], h.data() + j * kTile, o.data(), n);
        store_row(o.data(), out + (b * g.Cout + co) * g.N + s0, n);
      }
    }
  });
}

template <typename scalar_t>
void bwd_nchw(const scalar_t* gout, const scalar_t* x, scalar_t* gx, const at::opmath_type<scalar_t>* D,
              const at::opmath_type<scalar_t>* U, const at::opmath_type<scalar_t>* coef,
              at::opmath_type<scalar_t>* gD, at::opmath_type<scalar_t>* gU, const Geometry& g) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t tiles = (g.N + kTile - 1) / kTile;
  const int64_t work = g.B * tiles;
  const int64_t chunks = num_chunks(work, 8);
  std::vector<acc_t> partD(chunks > 1 ? (chunks - 1) * g.J * g.Cin : 0);
  std::vector<acc_t> partU(chunks > 1 ? (chunks - 1) * g.J * g.Cout : 0);
  at::parallel_for(0, chunks, 1, [&](int64_t cbeg, int64_t cend) {
    std::vector<acc_t> wv(g.J * kTile), vv(g.J * kTile), xs(kTile), gs(kTile), o(kTile);
    for (int64_t c = cbeg; c < cend; ++c) {
      acc_t* accD = c == 0 ? gD : partD.data() + (c - 1) * g.J * g.Cin;
      acc_t* accU = c == 0 ? gU : partU.data() + (c - 1) * g.J * g.Cout;
      for (int64_t wk = work * c / chunks; wk < work * (c + 1) / chunks; ++wk) {
        const int64_t b = wk / tiles, s0 = (wk % tiles) * kTile, n = std::min(kTile, g.N - s0);
        const acc_t* cb = coef + b * g.K;
        if (!any_nonzero(cb, g.K, std::is_same_v<acc_t, double>)) {
          for (int64_t ci = 0; ci < g.Cin; ++ci) {
            scalar_t* dst = gx + (b * g.Cin + ci) * g.N + s0;
            std::fill(dst, dst + n, scalar_t(0));
          }
          continue;
        }
        std::fill(wv.begin(), wv.end(), acc_t(0));
        std::fill(vv.begin(), vv.end(), acc_t(0));
        for (int64_t co = 0; co < g.Cout; ++co) {
          const acc_t* ga = load_row<scalar_t, acc_t>(gout + (b * g.Cout + co) * g.N + s0, gs.data(), n);
          for (int64_t j = 0; j < g.J; ++j) axpy(U[j * g.Cout + co], ga, wv.data() + j * kTile, n);
        }
        for (int64_t ci = 0; ci < g.Cin; ++ci) {
          const acc_t* xa = load_row<scalar_t, acc_t>(x + (b * g.Cin + ci) * g.N + s0, xs.data(), n);
          for (int64_t j = 0; j < g.J; ++j) axpy(D[j * g.Cin + ci], xa, vv.data() + j * kTile, n);
        }
        for (int64_t j = 0; j < g.J; ++j) {
          for (int64_t s = 0; s < n; ++s) {
            wv[j * kTile + s] *= cb[j / g.r];
            vv[j * kTile + s] *= cb[j / g.r];
          }
        }
        // grad_x and grad_down share the (now cache-resident) x tile; grad_up reuses grad_out.
        for (int64_t ci = 0; ci < g.Cin; ++ci) {
          const acc_t* xa = load_row<scalar_t, acc_t>(x + (b * g.Cin + ci) * g.N + s0, xs.data(), n);
          std::fill(o.begin(), o.end(), acc_t(0));
          for (int64_t j = 0; j < g.J; ++j) {
            axpy(D[j * g.Cin + ci], wv.data() + j * kTile, o.data(), n);
            accD[j * g.Cin + ci] += dot(wv.data() + j * kTile, xa, n);
          }
          store_row(o.data(), gx + (b * g.Cin + ci) * g.N + s0, n);
        }
        for (int64_t co = 0; co < g.Cout; ++co) {
          const acc_t* ga = load_row<scalar_t, acc_t>(gout + (b * g.Cout + co) * g.N + s0, gs.data(), n);
          for (int64_t j = 0; j < g.J; ++j) accU[j * g.Cout + co] += dot(vv.data() + j * kTile, ga, n);
        }
      }
    }
  });
  for (int64_t c = 1; c < chunks; ++c) {
    axpy(acc_t(1), partD.data() + (c - 1) * g.J * g.Cin, gD, g.J * g.Cin);
    axpy(acc_t(1), partU.data() + (c - 1) * g.J * g.Cout, gU, g.J * g.Cout);
  }
}

// ------------------------------------------------------------------------------------ glue

// The fp32 kernels where they apply; false sends the caller to the general kernels.
inline bool try_fwd_f32(const at::Tensor& x, const float* base, float* out, const at::Tensor& down,
                        const at::Tensor& up, const at::Tensor& gate, const at::Tensor& scale, const Geometry& g) {
  if (x.scalar_type() != at::kFloat || g.J > kMaxRowJ) return false;
  const RowOperandsF32 op = row_operands_f32(down, up, gate, scale, g);
  return fwd_f32_dispatch(x.const_data_ptr<float>(), base, out, op.D.const_data_ptr<float>(),
                          op.U.const_data_ptr<float>(), op.coef.data(), g);
}

at::Tensor membrane_fwd_cpu(const at::Tensor& x_in, const at::Tensor& base_in, const at::Tensor& down,
                            const at::Tensor& up, const at::Tensor& gate, const at::Tensor& scale, bool conv) {
  const Geometry g = membrane_geometry(x_in, base_in, down, up, gate, scale, conv);
  const auto fmt = membrane_format(x_in, conv);
  const at::Tensor x = x_in.contiguous(fmt), base = base_in.contiguous(fmt);
  at::Tensor out = at::empty(base.sizes(), base.options().memory_format(fmt));
  if (out.numel() == 0) return out;
  if (x.scalar_type() == at::kFloat &&
      try_fwd_f32(x, base.const_data_ptr<float>(), out.mutable_data_ptr<float>(), down, up, gate, scale, g)) {
    return out;
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "membrane_fwd_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const Operands op = membrane_operands(down, up, gate, scale, c10::CppTypeToScalarType<acc_t>::value);
    auto fn = g.nchw ? fwd_nchw<scalar_t> : fwd_rows<scalar_t>;
    fn(x.const_data_ptr<scalar_t>(), base.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>(),
       op.D.const_data_ptr<acc_t>(), op.U.const_data_ptr<acc_t>(), op.coef.const_data_ptr<acc_t>(), g);
  });
  return out;
}

// In place: `out` holds base_out and receives the sum. Used where no gradient is needed (denoising,
// sampling): it saves allocating and first-touching a fresh output as large as the layer's output.
void membrane_fwd_inplace_cpu(at::Tensor& out, const at::Tensor& x_in, const at::Tensor& down,
                               const at::Tensor& up, const at::Tensor& gate, const at::Tensor& scale,
                               bool conv) {
  const Geometry g = membrane_geometry(x_in, out, down, up, gate, scale, conv);
  const auto fmt = membrane_format(x_in, conv);
  if (!out.is_contiguous(fmt)) {
    out.copy_(membrane_fwd_cpu(x_in, out, down, up, gate, scale, conv));
    return;
  }
  if (out.numel() == 0) return;
  const at::Tensor x = x_in.contiguous(fmt);
  if (x.scalar_type() == at::kFloat) {
    float* o = out.mutable_data_ptr<float>();
    if (try_fwd_f32(x, o, o, down, up, gate, scale, g)) return;
  }
  if (!g.nchw && (x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble)) {
    // fp64, or fp32 with a J beyond the specialised kernels: BLAS beats the generic row loop when
    // rows are short
    membrane_rows_blas_(out, x, down, up, gate, scale, g);
    return;
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "membrane_fwd_inplace_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const Operands op = membrane_operands(down, up, gate, scale, c10::CppTypeToScalarType<acc_t>::value);
    auto fn = g.nchw ? fwd_nchw<scalar_t> : fwd_rows<scalar_t>;
    scalar_t* o = out.mutable_data_ptr<scalar_t>();
    fn(x.const_data_ptr<scalar_t>(), o, o, op.D.const_data_ptr<acc_t>(), op.U.const_data_ptr<acc_t>(),
       op.coef.const_data_ptr<acc_t>(), g);
  });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> membrane_bwd_cpu(const at::Tensor& gout_in,
                                                                const at::Tensor& x_in, const at::Tensor& down,
                                                                const at::Tensor& up, const at::Tensor& gate,
                                                                const at::Tensor& scale, bool conv) {
  const Geometry g = membrane_geometry(x_in, gout_in, down, up, gate, scale, conv);
  const auto fmt = membrane_format(x_in, conv);
  const at::Tensor x = x_in.contiguous(fmt), gout = gout_in.contiguous(fmt);
  at::Tensor gx = at::empty(x.sizes(), x.options().memory_format(fmt));
  at::Tensor grad_down, grad_up;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "membrane_bwd_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto acc = c10::CppTypeToScalarType<acc_t>::value;
    const Operands op = membrane_operands(down, up, gate, scale, acc);
    at::Tensor gD = at::zeros({g.J, g.Cin}, x.options().dtype(acc));
    at::Tensor gU = at::zeros({g.J, g.Cout}, x.options().dtype(acc));
    if (x.numel() > 0) {
      auto fn = g.nchw ? bwd_nchw<scalar_t> : bwd_rows<scalar_t>;
      fn(gout.const_data_ptr<scalar_t>(), x.const_data_ptr<scalar_t>(), gx.mutable_data_ptr<scalar_t>(),
         op.D.const_data_ptr<acc_t>(), op.U.const_data_ptr<acc_t>(), op.coef.const_data_ptr<acc_t>(),
         gD.mutable_data_ptr<acc_t>(), gU.mutable_data_ptr<acc_t>(), g);
    }
    grad_down = gD.view({g.K, g.r, g.Cin}).to(down.scalar_type());
    grad_up = gU.view({g.K, g.r, g.Cout}).permute({0, 2, 1}).contiguous().to(up.scalar_type());
  });
  return {gx, grad_down, grad_up};
}

}  // namespace
}  // namespace spmctl

TORCH_LIBRARY(spmctl, m) {
  m.def(
      "membrane_fwd(Tensor x, Tensor base_out, Tensor down, Tensor up, Tensor gate, Tensor scale, "
      "bool conv=False) -> Tensor");
  m.def(
      // returns nothing: an op whose output aliases an input cannot be functionalised (torch.compile)
      "membrane_fwd_(Tensor(a!) out, Tensor x, Tensor down, Tensor up, Tensor gate, Tensor scale, "
      "bool conv=False) -> ()");
  m.def(
      "membrane_bwd(Tensor grad_out, Tensor x, Tensor down, Tensor up, Tensor gate, Tensor scale, "
      "bool conv=False) -> (Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(spmctl, CPU, m) {
  m.impl("membrane_fwd", &spmctl::membrane_fwd_cpu);
  m.impl("membrane_fwd_", &spmctl::membrane_fwd_inplace_cpu);
  m.impl("membrane_bwd", &spmctl::membrane_bwd_cpu);
}
