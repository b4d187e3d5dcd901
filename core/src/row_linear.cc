#include "row_linear.h"

#include <cstring>

#ifdef __FMA__
#include <immintrin.h>
#endif

namespace ssm::internal {
namespace {

typedef double V4 __attribute__((vector_size(32)));

inline V4 Load4(const double* p) {
  V4 v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

// acc + a * b, rounded once where the CPU has FMA. Written out rather than
// left to the compiler's contraction, which may differ between the tiles
// below: every tile must round each term alike.
inline V4 MulAdd(V4 a, V4 b, V4 acc) {
#ifdef __FMA__
  return reinterpret_cast<V4>(_mm256_fmadd_pd(reinterpret_cast<__m256d>(a),
                                              reinterpret_cast<__m256d>(b),
                                              reinterpret_cast<__m256d>(acc)));
#else
  return acc + a * b;  // no FMA instruction to contract into
#endif
}

// R rows x V vectors of 4 outputs, starting at output o0: each output's sum
// over k in order, then its bias. x: R rows of `in`; y: R rows of `out`.
template <int R, int V>
void Tile(const double* __restrict x, int in, const double* __restrict wt, int padded, int o0,
          const double* __restrict b, int out, double* __restrict y) {
  V4 acc[R][V];
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < V; ++v) acc[r][v] = V4{0, 0, 0, 0};
  for (int k = 0; k < in; ++k) {
    const double* w = wt + static_cast<size_t>(k) * padded + o0;
    V4 wv[V];
    for (int v = 0; v < V; ++v) wv[v] = Load4(w + 4 * v);
    for (int r = 0; r < R; ++r) {
      const double xk = x[static_cast<size_t>(r) * in + k];
      const V4 xv = {xk, xk, xk, xk};
      for (int v = 0; v < V; ++v) acc[r][v] = MulAdd(xv, wv[v], acc[r][v]);
    }
  }
  for (int r = 0; r < R; ++r) {
    double* yr = y + static_cast<size_t>(r) * out;
    for (int v = 0; v < V; ++v) {
      for (int lane = 0; lane < 4; ++lane) {
        const int o = o0 + 4 * v + lane;
        if (o < out) yr[o] = acc[r][v][lane] + b[o];
      }
    }
  }
}

// All outputs of R rows: tiles of kMaxV vectors, then one narrower tile.
template <int R, int kMaxV>
void Rows(const double* x, int in, const double* wt, int padded, const double* b, int out,
          double* y) {
  int o0 = 0;
  for (; o0 + 4 * kMaxV <= padded; o0 += 4 * kMaxV) {
    Tile<R, kMaxV>(x, in, wt, padded, o0, b, out, y);
  }
  switch ((padded - o0) / 4) {
    case 0: break;
    case 1: Tile<R, 1>(x, in, wt, padded, o0, b, out, y); break;
    case 2: Tile<R, 2>(x, in, wt, padded, o0, b, out, y); break;
    case 3: Tile<R, 3>(x, in, wt, padded, o0, b, out, y); break;
    case 4: Tile<R, 4>(x, in, wt, padded, o0, b, out, y); break;
    case 5: Tile<R, 5>(x, in, wt, padded, o0, b, out, y); break;
    case 6: Tile<R, 6>(x, in, wt, padded, o0, b, out, y); break;
    default: Tile<R, 7>(x, in, wt, padded, o0, b, out, y); break;
  }
}

}  // namespace

RowLinear::RowLinear(const RowMatrixXd& w, const Eigen::VectorXd& b)
    : in_(static_cast<int>(w.cols())),
      out_(static_cast<int>(w.rows())),
      padded_((out_ + 3) / 4 * 4),
      wt_(static_cast<size_t>(in_) * padded_, 0.0),
      b_(b.data(), b.data() + b.size()) {
  for (int k = 0; k < in_; ++k)
    for (int o = 0; o < out_; ++o) wt_[static_cast<size_t>(k) * padded_ + o] = w(o, k);
}

void RowLinear::Apply(const double* x, int64_t rows, double* y) const {
  // Two rows share each weight load over 16 outputs (8 accumulators); a
  // last odd row takes 32 outputs at a time (8 accumulators): either way
  // enough independent sums to hide an FMA's latency.
  int64_t r = 0;
  for (; r + 2 <= rows; r += 2) {
    Rows<2, 4>(x + r * in_, in_, wt_.data(), padded_, b_.data(), out_, y + r * out_);
  }
  if (r < rows) Rows<1, 8>(x + r * in_, in_, wt_.data(), padded_, b_.data(), out_, y + r * out_);
}

}  // namespace ssm::internal
