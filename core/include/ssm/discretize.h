// Discretization: turn x'(t) = A x + B u into the recurrence
//   x_k = Ab x_{k-1} + Bb u_k
// for a step dt (time units per sample). Everything is computed in double.
//
//   GBT(alpha): Ab = (I - alpha dt A)^-1 (I + (1 - alpha) dt A),
//               Bb = dt (I - alpha dt A)^-1 B
//     alpha = 0 forward Euler, 1/2 bilinear (Tustin), 1 backward Euler.
//   ZOH:        Ab = exp(dt A), Bb = A^-1 (exp(dt A) - I) B, both read off one
//               exponential of dt [[A, B], [0, 0]], so a singular A is fine.
//
// Errors: InvalidArgument naming the argument for dt <= 0 or non-finite,
// alpha outside [0, 1], non-finite or mis-shaped A/B/Lambda, a singular
// I - alpha dt A, and a discrete system that overflows (an entry of Ab or Bb
// not finite: dt too large for the method, e.g. ZOH of an unstable A).
// Thread safety: every function is pure.

#ifndef SSM_DISCRETIZE_H_
#define SSM_DISCRETIZE_H_

#include <vector>

#include <Eigen/Dense>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "ssm/hippo.h"

namespace ssm {

struct Discretization {
  enum class Kind { kGbt, kZoh };
  Kind kind = Kind::kZoh;
  double alpha = 0.5;  // GBT only.

  static constexpr Discretization ForwardEuler() { return {Kind::kGbt, 0.0}; }
  static constexpr Discretization BackwardEuler() { return {Kind::kGbt, 1.0}; }
  static constexpr Discretization Bilinear() { return {Kind::kGbt, 0.5}; }
  static constexpr Discretization Gbt(double alpha) { return {Kind::kGbt, alpha}; }
  static constexpr Discretization Zoh() { return {Kind::kZoh, 0.0}; }
};

// Accepts "forward", "backward", "bilinear", "zoh" and "gbt:<alpha>".
absl::StatusOr<Discretization> ParseDiscretization(absl::string_view text);

struct DiscreteSystem {
  Eigen::MatrixXd A;  // Ab, N x N
  Eigen::VectorXd B;  // Bb, N
};

// One system, one step.
absl::StatusOr<DiscreteSystem> Discretize(const ContinuousSystem& system,
                                          double dt, Discretization method);

// One shared (A, B) with a step per channel: result[h] uses dt[h].
absl::StatusOr<std::vector<DiscreteSystem>> Discretize(
    const ContinuousSystem& system, const Eigen::VectorXd& dt,
    Discretization method);

// A diagonal complex system, element-wise: channel h, mode n evolves as
// x' = lambda(h,n) x + b(h,n) u with step dt(h).
struct DiagonalSystem {
  Eigen::MatrixXcd A;  // H x N: Lambda (continuous) or Ab (discrete)
  Eigen::MatrixXcd B;  // H x N
};

// lambda and b are H x N, dt has H entries. ZOH at lambda = 0 is the limit
// Bb = dt b (evaluated through a series, not 0/0).
absl::StatusOr<DiagonalSystem> DiscretizeDiagonal(const DiagonalSystem& system,
                                                  const Eigen::VectorXd& dt,
                                                  Discretization method);

// exp(a) for a square matrix (Pade approximation with scaling and squaring).
// Errors: InvalidArgument if a is not square or has non-finite entries.
absl::StatusOr<Eigen::MatrixXd> MatrixExp(const Eigen::MatrixXd& a);

}  // namespace ssm

#endif  // SSM_DISCRETIZE_H_
