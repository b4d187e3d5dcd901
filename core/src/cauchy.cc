#include "ssm/cauchy.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <new>
#include <vector>

#include "absl/strings/str_cat.h"
#include "check.h"
#include "parallel.h"
#include "stopper.h"

#ifndef SSM_CAUCHY_SHIFTED
#define SSM_CAUCHY_SHIFTED 1
#endif
#ifndef SSM_CAUCHY_BLOCK
#define SSM_CAUCHY_BLOCK 128
#endif
#ifndef SSM_CAUCHY_UNROLL
#define SSM_CAUCHY_UNROLL 2
#endif

namespace ssm {
namespace {

// Points per block: the block's coordinates and accumulators (2S rows) stay
// in L1 while every pole sweeps over them. A multiple of every lane count.
constexpr int kBlock = SSM_CAUCHY_BLOCK;
// Row stride of the per-block arrays. kBlock doubles is 1 KiB, and rows a
// multiple of 4 KiB apart make the CPU see false store-to-load dependencies
// (4K aliasing) between the accumulator rows updated in one iteration.
constexpr int kStride = kBlock + 8;
// Poles folded into the accumulators per pass over them: halves their loads
// and stores, which otherwise bound the loop.
constexpr int kUnroll = SSM_CAUCHY_UNROLL;
// Sets accumulated per pass; more sets reuse 1/D from a scratch row.
constexpr int kMaxGroup = 4;
constexpr bool kShifted = SSM_CAUCHY_SHIFTED;

#define SSM_INLINE inline __attribute__((always_inline))

struct Problem {
  int channels, modes, points, sets, blocks;
  const cdouble* lambda;
  std::vector<const cdouble*> v;
  const cdouble* z;
  std::vector<cdouble*> out;
  // Per work item: j * sets + s of its first non-finite result, or -1.
  std::vector<int64_t> first_bad;
  internal::Stopper* stop;
};

// One allocation per work range, 64-byte aligned.
class Scratch {
 public:
  Scratch(int modes, int sets) {
    // Every piece is rounded up to whole 64-byte lines by take() below.
    auto lines = [](int64_t k) { return (k + 7) / 8 * 8; };
    // sc.u holds kBasis (4 shifted, 2 unshifted) rows per unrolled pole.
    const int64_t n = 5 * lines(kStride) + lines(int64_t{4} * kUnroll * kStride) +
                      lines(int64_t{4} * sets * kStride) + 2 * lines(modes) +
                      2 * lines(int64_t{sets} * modes);
    data_ = static_cast<double*>(
        ::operator new[](n * sizeof(double), std::align_val_t{64}));
    double* p = data_;
    auto take = [&p](int64_t k) {
      double* r = p;
      p += (k + 7) / 8 * 8;
      return r;
    };
    x = take(kStride);
    y = take(kStride);
    y2 = take(kStride);
    re = take(kStride);
    im = take(kStride);
    u = take(int64_t{4} * kUnroll * kStride);
    acc = take(int64_t{4} * sets * kStride);
    lr = take(modes);
    li = take(modes);
    q = take(int64_t{sets} * modes);
    c = take(int64_t{sets} * modes);
  }
  ~Scratch() { ::operator delete[](data_, std::align_val_t{64}); }
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;

  double *x, *y, *y2, *re, *im, *u, *acc, *lr, *li, *q, *c;

 private:
  double* data_;
};

// GCC/Clang generic vectors of the target's native width. Passed by
// reference only: by value their ABI depends on the target.
template <class V>
struct Simd {
  static constexpr int kLanes = sizeof(V) / sizeof(double);
  static SSM_INLINE void Load(V& v, const double* p) {
    __builtin_memcpy(&v, p, sizeof(V));
  }
  static SSM_INLINE void Store(double* p, const V& v) {
    __builtin_memcpy(p, &v, sizeof(V));
  }
};

enum class UMode { kCompute, kComputeAndSave, kLoad };

// Adds the contributions of kP poles to the accumulators of G sets over the
// block's first `len` points. Per set, acc holds rows (re, im) of the result
// (shifted) or (re Sq, im Sq, re Sp, im Sp) (unshifted). The basis values
// 1/D (and (z - Re lambda)/D) depend on the pole and point only; with more
// than one group of sets the first group saves them to sc.u and the others
// reload them.
template <class V, int G, int kP, UMode kMode>
SSM_INLINE void AccumulateGroup(int len, const Scratch& sc, const double* lr,
                                const double* li, const double* q,
                                const double* c, int m, double* acc) {
  using S = Simd<V>;
  constexpr int kRows = kShifted ? 2 : 4;
  constexpr int kBasis = kShifted ? 4 : 2;
  for (int j = 0; j < len; j += S::kLanes) {
    V b[kP][kBasis];
    if constexpr (kMode == UMode::kLoad) {
#pragma GCC unroll 8
      for (int k = 0; k < kP; ++k) {
#pragma GCC unroll 4
        for (int t = 0; t < kBasis; ++t) {
          S::Load(b[k][t], sc.u + (k * kBasis + t) * kStride + j);
        }
      }
    } else {
      V x, y, y2;
      S::Load(x, sc.x + j);
      S::Load(y, sc.y + j);
      S::Load(y2, sc.y2 + j);
#pragma GCC unroll 8
      for (int k = 0; k < kP; ++k) {
        // D = (z - lambda)(z - conj lambda) = (dx + i ym)(dx + i yp):
        // re D = dx^2 - ym yp without the cancellation of z^2 + b z + a.
        const V dx = x - lr[k];
        const V ym = y - li[k];
        const V yp = y + li[k];
        const V dr = dx * dx - ym * yp;
        const V di = y2 * dx;
        const V inv = 1.0 / (dr * dr + di * di);
        b[k][0] = dr * inv;  // 1/D = b0 - i b1
        b[k][1] = di * inv;
        if constexpr (kShifted) {
          // (z - Re lambda)/D = b2 + i b3
          b[k][2] = (dx * dr + y * di) * inv;
          b[k][3] = (y * dr - dx * di) * inv;
        }
        if constexpr (kMode == UMode::kComputeAndSave) {
#pragma GCC unroll 4
          for (int t = 0; t < kBasis; ++t) {
            S::Store(sc.u + (k * kBasis + t) * kStride + j, b[k][t]);
          }
        }
      }
    }
#pragma GCC unroll 8
    for (int g = 0; g < G; ++g) {
      double* a = acc + g * kRows * kStride + j;
      if constexpr (kShifted) {
        V re, im;
        S::Load(re, a);
        S::Load(im, a + kStride);
#pragma GCC unroll 8
        for (int k = 0; k < kP; ++k) {
          const double qq = q[g * m + k], cc = c[g * m + k];
          re += qq * b[k][2];
          im += qq * b[k][3];
          re += cc * b[k][0];
          im -= cc * b[k][1];
        }
        S::Store(a, re);
        S::Store(a + kStride, im);
      } else {
        V sqr, sqi, spr, spi;
        S::Load(sqr, a);
        S::Load(sqi, a + kStride);
        S::Load(spr, a + 2 * kStride);
        S::Load(spi, a + 3 * kStride);
#pragma GCC unroll 8
        for (int k = 0; k < kP; ++k) {
          const double qq = q[g * m + k], pp = c[g * m + k];
          sqr += qq * b[k][0];
          sqi -= qq * b[k][1];
          spr += pp * b[k][0];
          spi -= pp * b[k][1];
        }
        S::Store(a, sqr);
        S::Store(a + kStride, sqi);
        S::Store(a + 2 * kStride, spr);
        S::Store(a + 3 * kStride, spi);
      }
    }
  }
}

template <class V, int G, int kP>
SSM_INLINE void RunGroup(int len, const Scratch& sc, int gi, int groups,
                         const double* lr, const double* li, const double* q,
                         const double* c, int m, double* acc) {
  if (gi > 0) {
    AccumulateGroup<V, G, kP, UMode::kLoad>(len, sc, lr, li, q, c, m, acc);
  } else if (groups > 1) {
    AccumulateGroup<V, G, kP, UMode::kComputeAndSave>(len, sc, lr, li, q, c, m,
                                                      acc);
  } else {
    AccumulateGroup<V, G, kP, UMode::kCompute>(len, sc, lr, li, q, c, m, acc);
  }
}

template <class V, int kP>
SSM_INLINE void AccumulatePoles(int len, int sets, const Scratch& sc, int n,
                                int m) {
  constexpr int kRows = kShifted ? 2 : 4;
  const int groups = (sets + kMaxGroup - 1) / kMaxGroup;
  int s0 = 0;
  for (int gi = 0; gi < groups; ++gi) {
    // Balanced group sizes: 9 sets run as 3 + 3 + 3, not 4 + 4 + 1.
    const int left = sets - s0, size = (left + groups - gi - 1) / (groups - gi);
    double* acc = sc.acc + int64_t{s0} * kRows * kStride;
    const double* q = sc.q + int64_t{s0} * m + n;
    const double* c = sc.c + int64_t{s0} * m + n;
    const double* lr = sc.lr + n;
    const double* li = sc.li + n;
    switch (size) {
      case 1: RunGroup<V, 1, kP>(len, sc, gi, groups, lr, li, q, c, m, acc); break;
      case 2: RunGroup<V, 2, kP>(len, sc, gi, groups, lr, li, q, c, m, acc); break;
      case 3: RunGroup<V, 3, kP>(len, sc, gi, groups, lr, li, q, c, m, acc); break;
      default: RunGroup<V, 4, kP>(len, sc, gi, groups, lr, li, q, c, m, acc); break;
    }
    s0 += size;
  }
}

// Channel h's poles and folded numerators into the scratch arrays.
void PrepareChannel(const Problem& pr, int h, Scratch& sc) {
  const int m = pr.modes;
  const cdouble* lam = pr.lambda + int64_t{h} * m;
  for (int n = 0; n < m; ++n) {
    sc.lr[n] = lam[n].real();
    sc.li[n] = lam[n].imag();
  }
  for (int s = 0; s < pr.sets; ++s) {
    const cdouble* v = pr.v[s] + int64_t{h} * m;
    for (int n = 0; n < m; ++n) {
      sc.q[int64_t{s} * m + n] = 2 * v[n].real();
      // Shifted: out = sum q (z - Re l)/D - 2 Im v Im l / D.
      // Unshifted: out = z sum q/D - sum p/D, p = 2 Re(v conj l).
      sc.c[int64_t{s} * m + n] =
          kShifted ? -2 * v[n].imag() * sc.li[n]
                   : 2 * (v[n].real() * sc.lr[n] + v[n].imag() * sc.li[n]);
    }
  }
}

// Work items [begin, end): item i is block i % blocks of channel i / blocks.
template <class V>
SSM_INLINE void RunItems(Problem& pr, int64_t begin, int64_t end) {
  using S = Simd<V>;
  constexpr int kRows = kShifted ? 2 : 4;
  const int m = pr.modes, sets = pr.sets;
  Scratch sc(m, sets);
  int prepared = -1;
  for (int64_t item = begin; item < end; ++item) {
    if (pr.stop->Stop()) return;
    const int h = static_cast<int>(item / pr.blocks);
    const int j0 = static_cast<int>(item % pr.blocks) * kBlock;
    if (h != prepared) {
      PrepareChannel(pr, h, sc);
      prepared = h;
    }
    const int len = std::min(kBlock, pr.points - j0);
    // Padding up to a whole vector repeats the last point, so it can only
    // be non-finite where a real result is.
    const int padded = (len + S::kLanes - 1) / S::kLanes * S::kLanes;
    const cdouble* z = pr.z + int64_t{h} * pr.points + j0;
    for (int j = 0; j < padded; ++j) {
      const cdouble zj = z[std::min(j, len - 1)];
      sc.x[j] = zj.real();
      sc.y[j] = zj.imag();
      sc.y2[j] = 2 * zj.imag();
    }
    std::fill(sc.acc, sc.acc + int64_t{kRows} * sets * kStride, 0.0);
    int n = 0;
    for (; n + kUnroll <= m; n += kUnroll) {
      AccumulatePoles<V, kUnroll>(padded, sets, sc, n, m);
    }
    for (; n < m; ++n) AccumulatePoles<V, 1>(padded, sets, sc, n, m);

    V bad{};
    for (int s = 0; s < sets; ++s) {
      const double* a = sc.acc + int64_t{s} * kRows * kStride;
      const double* re = a;
      const double* im = a + kStride;
      if constexpr (!kShifted) {
        for (int j = 0; j < padded; j += S::kLanes) {
          V x, y, sqr, sqi, spr, spi;
          S::Load(x, sc.x + j);
          S::Load(y, sc.y + j);
          S::Load(sqr, a + j);
          S::Load(sqi, a + kStride + j);
          S::Load(spr, a + 2 * kStride + j);
          S::Load(spi, a + 3 * kStride + j);
          const V r = x * sqr - y * sqi - spr;
          const V i = x * sqi + y * sqr - spi;
          S::Store(sc.re + j, r);
          S::Store(sc.im + j, i);
        }
        re = sc.re;
        im = sc.im;
      }
      for (int j = 0; j < padded; j += S::kLanes) {
        V r, i;
        S::Load(r, re + j);
        S::Load(i, im + j);
        bad += (r - r) + (i - i);  // 0 unless some entry is inf or NaN
      }
      double* o = reinterpret_cast<double*>(pr.out[s] +
                                            int64_t{h} * pr.points + j0);
      for (int j = 0; j < len; ++j) {
        o[2 * j] = re[j];
        o[2 * j + 1] = im[j];
      }
    }
    bool any_bad = false;
    for (int l = 0; l < S::kLanes; ++l) any_bad |= bad[l] != 0;
    if (any_bad) {
      for (int j = 0; j < len && pr.first_bad[item] < 0; ++j) {
        for (int s = 0; s < sets; ++s) {
          const cdouble o = pr.out[s][int64_t{h} * pr.points + j0 + j];
          if (!std::isfinite(o.real()) || !std::isfinite(o.imag())) {
            pr.first_bad[item] = int64_t{j0 + j} * sets + s;
            break;
          }
        }
      }
    }
  }
}

typedef double V2 __attribute__((vector_size(16)));
typedef double V4 __attribute__((vector_size(32)));
typedef double V8 __attribute__((vector_size(64)));

using RunFn = void (*)(Problem&, int64_t, int64_t);

void RunSse2(Problem& pr, int64_t begin, int64_t end) {
  RunItems<V2>(pr, begin, end);
}

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define SSM_CAUCHY_MULTIVERSION 1
__attribute__((target("arch=x86-64-v3"))) void RunAvx2(Problem& pr,
                                                       int64_t begin,
                                                       int64_t end) {
  RunItems<V4>(pr, begin, end);
}
__attribute__((target("arch=x86-64-v4"))) void RunAvx512(Problem& pr,
                                                         int64_t begin,
                                                         int64_t end) {
  RunItems<V8>(pr, begin, end);
}
#else
#define SSM_CAUCHY_MULTIVERSION 0
#endif

internal::CauchyIsa BestIsa() {
#if SSM_CAUCHY_MULTIVERSION
  static const internal::CauchyIsa best = [] {
    __builtin_cpu_init();
    if (__builtin_cpu_supports("x86-64-v4")) return internal::CauchyIsa::kAvx512;
    if (__builtin_cpu_supports("x86-64-v3")) return internal::CauchyIsa::kAvx2;
    return internal::CauchyIsa::kSse2;
  }();
  return best;
#else
  return internal::CauchyIsa::kSse2;
#endif
}

RunFn Kernel(internal::CauchyIsa isa) {
  switch (isa) {
#if SSM_CAUCHY_MULTIVERSION
    case internal::CauchyIsa::kAvx512: return RunAvx512;
    case internal::CauchyIsa::kAvx2: return RunAvx2;
#endif
    case internal::CauchyIsa::kSse2: return RunSse2;
    default: return nullptr;
  }
}

// Every real and imaginary part within +-kCauchyMaxMagnitude (so finite).
// One fast pass; CheckAllFinite and a scan name the entry only on failure.
absl::Status CheckEntries(const RowMatrixXcd& m, absl::string_view name,
                          bool bounded) {
  const double* d = reinterpret_cast<const double*>(m.data());
  const int64_t n = 2 * m.size();
  const double limit =
      bounded ? kCauchyMaxMagnitude : std::numeric_limits<double>::max();
  bool ok = true;
  for (int64_t i = 0; i < n; ++i) ok &= std::abs(d[i]) <= limit;
  if (ok) return absl::OkStatus();
  if (absl::Status st = internal::CheckAllFinite(m, name); !st.ok()) return st;
  for (Eigen::Index i = 0; i < m.rows(); ++i) {
    for (Eigen::Index j = 0; j < m.cols(); ++j) {
      if (std::abs(m(i, j).real()) > limit || std::abs(m(i, j).imag()) > limit) {
        return absl::InvalidArgumentError(absl::StrCat(
            name, " has an entry beyond +-", limit, " at (", i, ", ", j,
            "): ", m(i, j).real(), " + ", m(i, j).imag(), "i"));
      }
    }
  }
  return absl::OkStatus();
}

absl::Status Validate(const RowMatrixXcd& lambda,
                      absl::Span<const RowMatrixXcd> v,
                      const RowMatrixXcd& z) {
  if (lambda.rows() < 1 || lambda.cols() < 1) {
    return internal::ShapeError("lambda", "H x M with H, M >= 1",
                                lambda.rows(), lambda.cols());
  }
  if (v.empty()) {
    return absl::InvalidArgumentError(
        "v must hold at least one numerator set, got none");
  }
  const std::string hm = absl::StrCat(lambda.rows(), " x ", lambda.cols(),
                                      " (the shape of lambda)");
  for (size_t s = 0; s < v.size(); ++s) {
    if (v[s].rows() != lambda.rows() || v[s].cols() != lambda.cols()) {
      return internal::ShapeError(absl::StrCat("v[", s, "]"), hm, v[s].rows(),
                                  v[s].cols());
    }
  }
  if (z.rows() != lambda.rows() || z.cols() < 1) {
    return internal::ShapeError(
        "z", absl::StrCat(lambda.rows(), " x J (H rows, as lambda) with J >= 1"),
        z.rows(), z.cols());
  }
  if (auto st = CheckEntries(lambda, "lambda", true); !st.ok()) return st;
  for (size_t s = 0; s < v.size(); ++s) {
    if (auto st = CheckEntries(v[s], absl::StrCat("v[", s, "]"), false);
        !st.ok()) {
      return st;
    }
  }
  return CheckEntries(z, "z", true);
}

absl::Status PoleError(const Problem& pr, int64_t item, int64_t code) {
  const int h = static_cast<int>(item / pr.blocks);
  const int64_t j = code / pr.sets;
  const int s = static_cast<int>(code % pr.sets);
  const cdouble zj = pr.z[h * int64_t{pr.points} + j];
  // The nearest pole (or conjugate) explains most such failures.
  int nearest = 0;
  double best = std::numeric_limits<double>::infinity();
  for (int n = 0; n < pr.modes; ++n) {
    const cdouble l = pr.lambda[h * int64_t{pr.modes} + n];
    const double d = std::min(std::abs(zj - l), std::abs(zj - std::conj(l)));
    if (d < best) best = d, nearest = n;
  }
  const cdouble l = pr.lambda[h * int64_t{pr.modes} + nearest];
  return absl::InvalidArgumentError(absl::StrCat(
      "the result for v[", s, "] at channel ", h, ", point z(", h, ", ", j,
      ") = ", zj.real(), " + ", zj.imag(),
      "i is not finite: the point lies on or too close to the pole lambda(",
      h, ", ", nearest, ") = ", l.real(), " + ", l.imag(),
      "i or its conjugate (distance ", best, ")"));
}

}  // namespace

namespace internal {

bool CauchyIsaSupported(CauchyIsa isa) {
  if (isa == CauchyIsa::kAuto) return true;
  return Kernel(isa) != nullptr && static_cast<int>(isa) <= static_cast<int>(BestIsa());
}

absl::StatusOr<std::vector<RowMatrixXcd>> CauchyConjugateSums(
    const RowMatrixXcd& lambda, absl::Span<const RowMatrixXcd> v,
    const RowMatrixXcd& z, CauchyIsa isa, StopCheck stop) {
  if (isa == CauchyIsa::kAuto) isa = BestIsa();
  if (!CauchyIsaSupported(isa)) {
    return absl::FailedPreconditionError(absl::StrCat(
        "Cauchy kernel variant ", static_cast<int>(isa),
        " is not supported by this CPU or build"));
  }
  if (auto st = Validate(lambda, v, z); !st.ok()) return st;

  Problem pr;
  pr.channels = static_cast<int>(lambda.rows());
  pr.modes = static_cast<int>(lambda.cols());
  pr.points = static_cast<int>(z.cols());
  pr.sets = static_cast<int>(v.size());
  pr.blocks = (pr.points + kBlock - 1) / kBlock;
  pr.lambda = lambda.data();
  pr.z = z.data();
  std::vector<RowMatrixXcd> out(v.size());
  for (size_t s = 0; s < v.size(); ++s) {
    pr.v.push_back(v[s].data());
    out[s].resize(pr.channels, pr.points);
    pr.out.push_back(out[s].data());
  }
  const int64_t items = int64_t{pr.channels} * pr.blocks;
  pr.first_bad.assign(items, -1);
  Stopper stopper(stop);
  pr.stop = &stopper;
  const RunFn run = Kernel(isa);
  // Work items are (channel, block) pairs rather than channels, so that a
  // call with fewer channels than threads still uses every core.
  ParallelFor(items, 1, [&](int64_t begin, int64_t end) {
    run(pr, begin, end);
  });
  if (stopper.stopped()) return stopper.status();
  for (int64_t item = 0; item < items; ++item) {
    if (pr.first_bad[item] >= 0) return PoleError(pr, item, pr.first_bad[item]);
  }
  return out;
}

}  // namespace internal

absl::StatusOr<std::vector<RowMatrixXcd>> CauchyConjugateSums(
    const RowMatrixXcd& lambda, absl::Span<const RowMatrixXcd> v,
    const RowMatrixXcd& z, StopCheck stop) {
  return internal::CauchyConjugateSums(lambda, v, z, internal::CauchyIsa::kAuto, stop);
}

}  // namespace ssm
