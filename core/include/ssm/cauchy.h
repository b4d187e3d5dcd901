// Cauchy sums over conjugate pole pairs: the hot loop of S4's DPLR
// convolution kernel (kernel.h). For every channel h, numerator set s and
// evaluation point j,
//
//   out[s](h, j) = sum_{n < M}  v[s](h, n) / (z(h, j) - lambda(h, n))
//                      + conj(v[s](h, n)) / (z(h, j) - conj(lambda(h, n))),
//
// i.e. the Cauchy matrix of the full, conjugate-doubled set of N = 2M poles
// applied to a conjugate-symmetric numerator, of which only one half (the
// dplr.h convention) is passed in. Each pair is folded into one real-
// rational term (q z - p) / ((z - lambda)(z - conj lambda)), q = 2 Re v,
// p = 2 Re(v conj lambda), whose denominator is shared by all S sets: the
// work is one complex reciprocal per (h, j, n) plus 4 real multiply-adds
// per (h, j, n, s), half of what the unfolded sum costs.
//
// Shapes: lambda is H x M, every v[s] is H x M (S = v.size() >= 1), z is
// H x J (the points may differ per channel); the result holds S matrices of
// H x J. H, M, J >= 1.
//
// Accuracy: the denominator is formed as (z - Re lambda)^2 + (Im lambda)^2
// with the difference of squares factored, so it keeps full relative
// accuracy even at a point next to a pole. With Re z >= 0 >= Re lambda
// (S4: points on the imaginary axis, stable poles) the error of out(h, j)
// is a small multiple of 1e-16 times sum_n |v| (1/|z - lambda| +
// 1/|z - conj lambda|), as good as summing the unfolded terms directly.
// Elsewhere the numerator q z - p can cancel at a point close to a pole that
// lies far from the origin, which loosens that bound by up to a factor
// |lambda| / |z - lambda|.
//
// Errors (InvalidArgument, the message names the argument): an empty or
// mis-shaped argument, S == 0, a non-finite entry, an entry of lambda or z
// with a real or imaginary part beyond kCauchyMaxMagnitude (past it the
// squared denominators overflow), and a result that is not finite: a point
// on (or within rounding of) a pole; that message names the channel, the
// point and the nearest pole.
//
// Stopping (stop.h): `stop` is polled before each block of points of a
// channel; when it stops the work, its status is returned.
//
// Performance: channels and blocks of points run on the core's worker pool;
// the inner loop is vectorized (structure of arrays, AVX-512 or AVX2+FMA
// chosen at run time on x86-64, SSE2 otherwise). Results do not depend on
// how the work is split: a channel computed alone is bitwise equal to the
// same channel in a larger call. Which variant runs can change the last bits
// (FMA or not), so results may differ in the last bits between CPUs.
//
// Thread safety: every function is pure.

#ifndef SSM_CAUCHY_H_
#define SSM_CAUCHY_H_

#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "ssm/stop.h"
#include "ssm/types.h"

namespace ssm {

inline constexpr double kCauchyMaxMagnitude = 1e75;

absl::StatusOr<std::vector<RowMatrixXcd>> CauchyConjugateSums(
    const RowMatrixXcd& lambda, absl::Span<const RowMatrixXcd> v,
    const RowMatrixXcd& z, StopCheck stop = NeverStop);

namespace internal {

// The instruction-set variants of the inner loop, for tests and benchmarks
// that pin one. kAuto (what CauchyConjugateSums uses) picks the widest one
// the CPU runs.
enum class CauchyIsa { kAuto, kSse2, kAvx2, kAvx512 };

bool CauchyIsaSupported(CauchyIsa isa);

// As CauchyConjugateSums with the given variant; FailedPrecondition if the
// CPU (or the build) does not support it.
absl::StatusOr<std::vector<RowMatrixXcd>> CauchyConjugateSums(
    const RowMatrixXcd& lambda, absl::Span<const RowMatrixXcd> v,
    const RowMatrixXcd& z, CauchyIsa isa, StopCheck stop = NeverStop);

}  // namespace internal
}  // namespace ssm

#endif  // SSM_CAUCHY_H_
