// HiPPO matrices: the continuous-time systems x'(t) = A x(t) + B u(t) whose
// state holds the coefficients of the input's history in an orthogonal basis.
//
// Convention: every A returned here is the system matrix itself (not its
// negation), so a stable A has eigenvalues with negative real part. Matrices
// are built in double and follow the sign/scale of the S4 reference code, so
// weights trained there mean the same thing here.
//
// Thread safety: every function is pure and may be called concurrently.

#ifndef SSM_HIPPO_H_
#define SSM_HIPPO_H_

#include <Eigen/Dense>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace ssm {

enum class Measure {
  // Scaled Legendre (uniform weight on the whole history [0, t]).
  //   A[n,k] = -sqrt((2n+1)(2k+1)) (n > k), -(n+1) (n = k), 0 (n < k);
  //   B[n] = sqrt(2n+1).
  kLegS,
  // Translated Legendre as the S4 reference normalizes it ("legt"):
  //   A[n,k] = -1/2 sqrt((2n+1)(2k+1)) * (1 if n >= k else (-1)^(n-k));
  //   B[n] = 1/2 sqrt(2n+1).
  // It is similar to kLmu with theta = 2: A = T A_lmu T^-1, B = T B_lmu,
  // T = diag((-1)^n / sqrt(2n+1)).
  kLegT,
  // Translated Legendre in the HiPPO/LMU form, sliding window theta:
  //   A[n,k] = -(2n+1)/theta * ((-1)^(n-k) if k <= n else 1);
  //   B[n] = (2n+1) (-1)^n / theta.
  // The window is read back as u(t - r*theta) ~ sum_n x_n(t) P_n(2r - 1),
  // r in [0, 1], P_n the Legendre polynomials.
  kLmu,
  // Translated Laguerre: A = I/2 - tril(ones) (diagonal included), B = beta.
  kLagT,
  // Translated Fourier: A = J - B B^T, J block-diagonal with
  // [[0, -pi k], [pi k, 0]] on each (cos k, sin k) index pair. Even N uses
  // the S4 reference's layout: pairs (2k, 2k+1), B = (1, 0, sqrt2, 0, sqrt2,
  // 0, ...); index 1 is sin(0 t) = 0, a dead slot, so A has one exact zero
  // eigenvalue on a mode that neither the input nor any other mode reaches.
  // Odd N drops the dead slot: pairs (2k-1, 2k), B = (1, sqrt2, 0, sqrt2,
  // ...), and every eigenvalue has a negative real part.
  kFouT,
};

// Lower-case names used in configs and on the wire: "legs", "legt", "lmu",
// "lagt", "fout".
absl::string_view MeasureName(Measure measure);
// Inverse of MeasureName. InvalidArgument naming the text if it is unknown.
absl::StatusOr<Measure> ParseMeasure(absl::string_view name);

struct HippoOptions {
  double theta = 1.0;  // kLmu window length in time units; finite, > 0.
  double beta = 1.0;   // kLagT input scale; finite, != 0.
};

struct ContinuousSystem {
  Eigen::MatrixXd A;  // N x N
  Eigen::VectorXd B;  // N
};

// A and B of `measure` for state size n >= 1.
// Errors: InvalidArgument if n < 1 or an option used by `measure` is out of
// range (the message names the argument).
absl::StatusOr<ContinuousSystem> MakeHippo(Measure measure, int n,
                                           const HippoOptions& options = {});

// The normal-plus-low-rank structure: A + P P^T = shift * I + S with S
// skew-symmetric, so A is a normal matrix minus a rank-r term.
struct LowRankCorrection {
  Eigen::MatrixXd P;  // N x r
  double shift = 0;   // the scaled-identity part of A + P P^T
};

// P for the measures that have one: kLegS (r = 1, shift -1/2, P = sqrt(n+1/2)),
// kLegT (r = 2, shift 0: the even and odd entries of sqrt(n+1/2) in separate
// columns), kLagT (r = 1, shift 0, P = 1/sqrt2), kFouT (r = 1, shift 0, P = B).
// Errors: InvalidArgument if n < 1, or for kLmu, whose diagonal scaling makes
// it normal-plus-low-rank only with P != Q; use kLegT, which is similar to it.
absl::StatusOr<LowRankCorrection> MakeLowRankCorrection(Measure measure, int n);

}  // namespace ssm

#endif  // SSM_HIPPO_H_
