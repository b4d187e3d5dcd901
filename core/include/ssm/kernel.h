// SSM convolution kernels: K[h, l] = Re(Cf^T Ab^l Bb) for l < L, the output
// of channel h at step l for a unit impulse at step 0 (the D skip term is
// not part of K). Results are H x L, row-major, double. Three ways to compute
// them, which the tests hold to agree:
//   NaiveKernel     dense powers of the full discretized state matrix:
//                   O(N^2 L) per channel, the obviously-correct reference.
//   DplrKernel      S4's generating function: Cauchy sums at the L-th roots
//                   of unity, Woodbury for the low-rank part, one inverse real
//                   FFT. O((N + L log L) per point), bilinear only.
//   DiagonalKernel  S4D's Vandermonde product (rank 0), ZOH or bilinear.
//
// C and C~: the generating function of a length-L kernel needs
// C~ = (I - Ab^L)^T C, and trained S4 weights store C~ (with the L it was
// made for), not C. DplrKernel therefore takes C~ in system.C; CTilde and
// CFromCTilde convert, and ResizeCTilde retargets C~ to another length.
//
// Errors: InvalidArgument (naming the argument) for length < 1, an invalid
// system (see ValidateDplr), rank > kMaxRank, or a method the function does
// not support; the stop check's own status when it stops the work (stop.h:
// polled per channel, per block of steps or points, per dense product).
// Thread safety: every function is pure; the fast ones use the core's
// worker pool.

#ifndef SSM_KERNEL_H_
#define SSM_KERNEL_H_

#include "absl/status/statusor.h"
#include "ssm/discretize.h"
#include "ssm/dplr.h"
#include "ssm/stop.h"
#include "ssm/types.h"

namespace ssm {

inline constexpr int kMaxRank = 4;

// system.C is C (the output weights themselves). Bilinear or ZOH.
absl::StatusOr<RowMatrixXd> NaiveKernel(const DplrSystem& system, int length,
                                        Discretization method,
                                        StopCheck stop = NeverStop);

// system.C is C~ for `length`. Bilinear discretization.
absl::StatusOr<RowMatrixXd> DplrKernel(const DplrSystem& system, int length,
                                       StopCheck stop = NeverStop);

// Rank 0; system.C is C.
absl::StatusOr<RowMatrixXd> DiagonalKernel(const DplrSystem& system, int length,
                                           Discretization method,
                                           StopCheck stop = NeverStop);

// C~ = (I - Ab^L)^T C for the bilinear Ab (half-stored, H x M).
absl::StatusOr<RowMatrixXcd> CTilde(const DplrSystem& system, int length,
                                    StopCheck stop = NeverStop);
// The inverse map: system.C holds C~ for `length`. InvalidArgument if
// I - Ab^L is singular (a mode with Ab^L = 1, e.g. even-N FouT's dead mode).
absl::StatusOr<RowMatrixXcd> CFromCTilde(const DplrSystem& system, int length,
                                         StopCheck stop = NeverStop);
// C~ for `to` from C~ for `from` (the S4 reference doubles a length with
// C~_2L = (I + Ab^L)^T C~_L; this is the general case).
absl::StatusOr<RowMatrixXcd> ResizeCTilde(const DplrSystem& system, int from,
                                          int to);

}  // namespace ssm

#endif  // SSM_KERNEL_H_
