// Recurrent mode: advance a batch of independent sessions of one SSM layer
// (H channels) step by step,
//   x_k = Ab x_{k-1} + Bb u_k,   y_k = Re(Cf^T x_k) + D u_k.
//
// State layout (shared with the convolutional mode's carried state): for
// each session b and channel h, the M kept modes of the conjugate-symmetric
// state as M real parts followed by M imaginary parts, i.e. batch x H x 2M
// doubles. Inputs and outputs are batch x H x T (channels first, the same
// layout as the convolutional mode), so one step is batch x H.
//
// Kinds:
//   kFast   rank 0: the diagonal step, O(M) per channel (ZOH or bilinear).
//           rank r: the bilinear step through Woodbury's identity on
//           I - dt/2 A = (1 - dt/2 Lambda) + dt/2 P P^*, O(M r) per channel
//           and exact. (Diagonalizing Ab instead, as the S4 reference's
//           "diagonal" step does, is ill-conditioned: HiPPO-LegS's
//           eigenvectors have a condition number near 2^(4N/3).)
//   kDense  the full N x N discretized matrix, O(N^2): the reference.
//
// Errors: InvalidArgument naming the argument for a bad system, sizes that
// disagree, or a non-finite input (then neither state nor outputs change).
// Thread safety: const methods may run concurrently on different states.

#ifndef SSM_RECURRENT_H_
#define SSM_RECURRENT_H_

#include <cstdint>
#include <vector>

#include <Eigen/Core>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "ssm/discretize.h"
#include "ssm/dplr.h"

namespace ssm {

class SsmStepper {
 public:
  enum class Kind { kFast, kDense };

  // system.C is C (not C~; see kernel.h's CFromCTilde). d has H entries.
  // Rank > 0 supports the bilinear discretization only.
  static absl::StatusOr<SsmStepper> Create(const DplrSystem& system,
                                           const Eigen::VectorXd& d,
                                           Discretization method,
                                           Kind kind = Kind::kFast);

  int channels() const { return channels_; }
  int modes() const { return modes_; }
  // Doubles of state per session: H * 2M.
  int state_size() const { return channels_ * 2 * modes_; }

  // Runs `steps` steps for `batch` sessions: u and y are batch x H x steps,
  // state is batch x state_size() and is updated in place.
  absl::Status Run(absl::Span<const double> u, int batch, int steps,
                   absl::Span<double> state, absl::Span<double> y) const;

  // The same steps for sessions whose states lie apart, in `blocks` groups
  // of `batch`: group k's state (batch x state_size() doubles) is read from
  // in[k] and the state after the steps written to out[k], which is either
  // in[k] itself (in place) or a buffer that does not overlap it (in[k] is
  // then left as it was). u and y are (blocks x batch) x H x steps, the
  // groups one after another. Every session's outputs and state are bit
  // for bit those Run gives it, whatever the grouping. No checks: the
  // caller gives finite inputs and buffers of the right sizes (Run is the
  // checked form; a model's streaming pass checks each group's inputs).
  void RunBlocks(const double* u, int batch, int blocks, int steps,
                 const double* const* in, double* const* out, double* y) const;

 private:
  friend class DiagonalStepperF32;  // packs a_, b_, c_ in float
  SsmStepper() = default;
  // One channel's steps from state `in` to state `out` (the same buffer, or
  // two that do not overlap).
  void StepChannel(int h, const double* u, int steps, const double* in, double* out,
                   double* y) const;
  // One low-rank step (rank R) of sessions b0 .. b0 + S - 1 of RunBlocks'
  // set, every channel.
  template <int R, int S>
  void StepSessions(int64_t b0, const double* u, const double* const* in, double* const* out,
                    int batch, double* y) const;

  Kind kind_ = Kind::kFast;
  int channels_ = 0, modes_ = 0, rank_ = 0;
  // Per channel, SoA (M reals then M imaginaries), H x 2M each.
  std::vector<double> a_, b_, c_;  // diagonal: Ab, Bb, C
  // Low-rank step, diagonal plus rank r (recurrent.cc): Lb, Bt and the
  // output functional om (H x 2M), U_a and the functionals g_a (H x r x 2M),
  // and the direct term delta = 2 Re(C Bt) + D (H).
  std::vector<double> lb_, bt_, om_, u_, g_;
  std::vector<double> dy_;
  Eigen::VectorXd d_;
  // Dense reference: per channel the full N x N Ab and Bb, Cf.
  std::vector<Eigen::MatrixXcd> dense_a_;
  std::vector<Eigen::VectorXcd> dense_b_, dense_c_;
};

// The diagonal (S4D) step in float32, for latency-bound streaming: at batch 1
// a step streams every parameter once, so halving the bytes halves the time
// (the double step is bound by L2 bandwidth at H = 256, N = 64). Parameters
// are discretized in double, then rounded and packed per block of 8 modes
// (Ab, Bb, C interleaved). The state keeps SsmStepper's layout (H x 2M per
// session: M reals, then M imaginaries), so converting one to the other is a
// cast. Accuracy against the double stepper: tests/core/recurrent_test.cc
// (FloatStepTracksDouble) states the bound. Errors and thread safety as
// SsmStepper.
class DiagonalStepperF32 {
 public:
  static absl::StatusOr<DiagonalStepperF32> Create(const DplrSystem& system,
                                                   const Eigen::VectorXd& d,
                                                   Discretization method);

  // Move-only: the packed block's alignment offset belongs to its buffer.
  DiagonalStepperF32(DiagonalStepperF32&&) = default;
  DiagonalStepperF32& operator=(DiagonalStepperF32&&) = default;
  DiagonalStepperF32(const DiagonalStepperF32&) = delete;
  DiagonalStepperF32& operator=(const DiagonalStepperF32&) = delete;

  int channels() const { return channels_; }
  int modes() const { return modes_; }
  int state_size() const { return channels_ * 2 * modes_; }  // floats per session

  // u and y: batch x H x steps; state: batch x state_size(), in place.
  absl::Status Run(absl::Span<const float> u, int batch, int steps,
                   absl::Span<float> state, absl::Span<float> y) const;

 private:
  DiagonalStepperF32() = default;
  // The packed parameters start on a cache line: a 32-byte load then never
  // straddles two lines (worth ~5% of a step at H = 256).
  const float* packed() const;
  float* packed();

  int channels_ = 0, modes_ = 0, blocks_ = 0;
  std::vector<float> storage_;  // H x blocks x {ar, ai, br, bi, cr, ci} x 8, + slack
  std::vector<float> d_;
};

}  // namespace ssm

#endif  // SSM_RECURRENT_H_
