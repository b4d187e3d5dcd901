// Online function approximation with HiPPO (the HiPPO paper's memory): feed
// the samples of a signal f one at a time; N coefficients summarize its
// history, and Reconstruct reads the history back through Legendre
// polynomials. No training: the memory is the discretized HiPPO system.
//
// Ages: a point of the remembered window is named by its age r in [0, 1]:
// r = 0 is now, r = 1 the oldest edge of the window.
//   LegS (time-varying, remembers all of [0, t] uniformly, t = steps()):
//     f(t - r t) ~ sum_n c_n sqrt(2n+1) P_n(1 - 2r).
//     The first sample sets the memory to that constant (the exact projection
//     of a one-sample history); step k >= 2 applies the GBT discretization of
//     (A/k, B/k), so the memory stretches with the history instead of
//     forgetting it. A constant signal is remembered exactly.
//   LegT (time-invariant, window of `window` samples, LMU form):
//     f(t - r window) ~ sum_n c_n P_n(2r - 1).
// Time is counted in samples and sample k covers the step (k-1, k] that ends
// at it, so the sample d steps back (d = 0: the newest) sits at the centre
// of its step, SampleAge(d) = (d + 1/2) / window. Reading at d / window
// instead lands on the boundary between two samples and returns roughly
// their average, a half-sample bias.
//
// Thread safety: const methods may run concurrently; Update needs exclusive
// access. Errors leave the memory unchanged.

#ifndef SSM_HIPPO_MEMORY_H_
#define SSM_HIPPO_MEMORY_H_

#include <cstdint>

#include <Eigen/Dense>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "ssm/discretize.h"

namespace ssm {

class HippoMemory {
 public:
  // A LegS memory of n coefficients. Only GBT discretizations are offered:
  // the step matrix changes every step, and a matrix exponential per step
  // would cost O(N^3). Errors: InvalidArgument for n < 1 or a ZOH method.
  static absl::StatusOr<HippoMemory> LegS(
      int n, Discretization method = Discretization::Bilinear());

  // A LegT memory of n coefficients over a sliding window of `window`
  // samples (> 0, need not be an integer). Errors: InvalidArgument for
  // n < 1 or a window that is not finite and > 0.
  static absl::StatusOr<HippoMemory> LegT(
      int n, double window, Discretization method = Discretization::Zoh());

  // Feeds one sample (or several, oldest first). InvalidArgument if a sample
  // is not finite; then nothing of that call is applied.
  absl::Status Update(double f);
  absl::Status Update(absl::Span<const double> f);

  // Reconstructed values at the given ages (each in [0, 1]).
  // InvalidArgument naming the first bad age.
  absl::StatusOr<Eigen::VectorXd> Reconstruct(
      absl::Span<const double> ages) const;

  // Row j holds the basis functions at ages[j], so values = E * coefficients.
  absl::StatusOr<Eigen::MatrixXd> EvalMatrix(absl::Span<const double> ages) const;

  // The age of the sample `steps_back` steps before the newest (see above);
  // the window is the LegT window or, for LegS, the steps seen so far.
  double SampleAge(double steps_back) const;

  const Eigen::VectorXd& coefficients() const { return c_; }
  int64_t steps() const { return steps_; }
  int size() const { return static_cast<int>(c_.size()); }
  void Reset();
  // Continues a saved stream: sets the coefficients and the number of
  // samples seen. InvalidArgument for a size other than size(), a
  // non-finite coefficient or steps < 0; then nothing changes.
  absl::Status Restore(absl::Span<const double> c, int64_t steps);

 private:
  enum class Kind { kLegS, kLegT };
  HippoMemory(Kind kind, Discretization method, double window,
              ContinuousSystem system);

  void Step(double f);

  Kind kind_;
  Discretization method_;
  double window_;            // LegT only
  ContinuousSystem system_;  // LegS: the continuous (A, B); LegT: Ab, Bb.
  Eigen::VectorXd c_;
  Eigen::VectorXd scratch_;
  int64_t steps_ = 0;
};

}  // namespace ssm

#endif  // SSM_HIPPO_MEMORY_H_
