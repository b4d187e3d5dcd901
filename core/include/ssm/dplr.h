// Diagonal-plus-low-rank (DPLR) state-space systems, the S4 parameterization,
// and the decompositions and initializations that produce them.
//
// A DPLR system has a state of N = 2M complex modes in conjugate pairs, of
// which only one half (M modes) is stored. Over the full state
//   A = diag(Lambda, conj Lambda) - Pf Pf^*,   Pf = [P; conj P]  (N x r),
//   x' = A x + Bf u,   y = Re(Cf^T x) + D u,  Bf = [B; conj B], Cf = [C; conj C]
// (C multiplies the state without conjugation, as in the S4 reference; with a
// conjugate-symmetric state y = 2 Re sum_m C_m x_m). The S4 reference's Q is
// conj(P). A diagonal (S4D) system is the same with r = 0.
//
// Thread safety: every function is pure.

#ifndef SSM_DPLR_H_
#define SSM_DPLR_H_

#include <cstdint>
#include <vector>

#include <Eigen/Core>

#include "absl/status/statusor.h"
#include "ssm/hippo.h"
#include "ssm/types.h"

namespace ssm {

// H channels, each with its own M modes and step. Shapes: lambda, B, C and
// every P[a] are H x M; dt has H entries (> 0, time units per sample).
struct DplrSystem {
  RowMatrixXcd lambda;
  std::vector<RowMatrixXcd> P;  // rank r = P.size(); empty for S4D
  RowMatrixXcd B;
  RowMatrixXcd C;
  Eigen::VectorXd dt;

  int channels() const { return static_cast<int>(lambda.rows()); }
  int modes() const { return static_cast<int>(lambda.cols()); }  // M = N/2
  int rank() const { return static_cast<int>(P.size()); }
};

// Checks shapes and finiteness; InvalidArgument naming the field otherwise.
absl::Status ValidateDplr(const DplrSystem& system);

// The NPLR decomposition of a HiPPO matrix, in double:
//   A = V (diag(Lambda_f) - Pt_f Pt_f^*) V^*,  V unitary (N x N),
// with Lambda = shift + i w from a Hermitian eigensolve of the skew part of
// A + P P^T. Only one of each conjugate pair is kept (Im lambda <= 0, the S4
// reference's choice); V's first M columns belong to lambda and the last M
// are their conjugates. A zero pair (FouT's constant/sin(0) pair) gets the
// basis (e_a +- i e_b)/sqrt2 of its real eigenspace.
struct Nplr {
  Eigen::VectorXcd lambda;  // M
  Eigen::MatrixXcd P;       // M x r  (V_half^* P)
  Eigen::VectorXcd B;       // M      (V_half^* B)
  Eigen::MatrixXcd V;       // N x N
};

// Errors: InvalidArgument for a measure without a symmetric low-rank
// correction (lmu, see hippo.h), odd N (the modes come in pairs), N < 2.
absl::StatusOr<Nplr> MakeNplr(Measure measure, int n,
                              const HippoOptions& options = {});

// The S4 reference clips the imaginary part of its B~ = V^* B to
// [-b_clip, b_clip] (its nplr's B_clip, 2 by default; None switches it off).
inline constexpr double kS4BClip = 2.0;

// S4's initialization: every channel gets the NPLR of `measure` (rank r of
// the measure) with Im B~ clipped to [-b_clip, b_clip] as the reference does
// (b_clip = +infinity: no clip), C with entries drawn from a complex normal
// of variance 1/2 per part (deterministic in `seed`), and steps spaced
// log-uniformly over [dt_min, dt_max] across channels. Errors: as MakeNplr,
// plus h < 1, a bad dt range, or b_clip not > 0 (NaN included).
//
// What differs from the reference (same formulas otherwise): its C and dt
// are random draws of torch's generator (dt log-uniform at random, ours
// evenly spaced), and its eigenvectors come from LAPACK's zheevd, whose
// phases are not Eigen's; B~ = V^* B therefore differs by a phase per mode,
// so which entries the clip touches differs too. The system the clip leaves
// is the reference's only up to those phases.
absl::StatusOr<DplrSystem> MakeS4Init(Measure measure, int n, int h,
                                      double dt_min, double dt_max,
                                      uint64_t seed, double b_clip = kS4BClip);

// S4D initializations (rank 0, B = 1 except LegS), C and dt as MakeS4Init.
// Like the S4 reference (and MakeNplr) we keep the half with Im lambda <= 0;
// the conjugate half (-1/2 + i pi m, ...) describes the same system.
//   kLegS: lambda and B from the LegS NPLR (P dropped), Im B clipped to
//          [-b_clip, b_clip] as in MakeS4Init (the reference's B_init 'legs')
//   kLin:  lambda_m = -1/2 - i pi m
//   kInv:  lambda_m = -1/2 - i (N/pi) (N/(2m+1) - 1)
enum class S4dInit { kLegS, kLin, kInv };
absl::StatusOr<DplrSystem> MakeS4dInit(S4dInit init, int n, int h,
                                       double dt_min, double dt_max,
                                       uint64_t seed, double b_clip = kS4BClip);

}  // namespace ssm

#endif  // SSM_DPLR_H_
