// Models: an S4 stack (encoder, S4 blocks, decoder) or a training-free
// HiPPO memory, run in either mode:
//   - Forward: a whole sequence at once (convolutional mode), and
//   - Session (session.h): an endless stream, chunk by chunk, with the state
//     kept between chunks; any chunking gives Forward's outputs.
//
// Layout: inputs batch x L x d_input and outputs batch x L x d_output,
// row-major (time, then features), doubles. Everything runs in double: the
// S4 reference's float32 weights are widened on load.
//
// Weights (LoadModel): an S4 stack reads the official S4 implementation's
// state_dict names (README "Model repository"; DESIGN.md section 2):
//   encoder.{weight,bias}, decoder.{weight,bias}, norms.<i>.{weight,bias}
//   (BatchNorm also .{running_mean,running_var}), final_norm.* (if any),
//   s4_layers.<i>.layer.kernel.{inv_dt,A_real,A_imag,B,C,P,l_kernel},
//   s4_layers.<i>.layer.D, s4_layers.<i>.output_linear.0.{weight,bias}
// (DPLR or its diagonal kernel) or, for the minimal S4D block,
//   s4_layers.<i>.kernel.{log_dt,log_A_real,A_imag,C}, s4_layers.<i>.D.
// `kernel.C` holds C~ when `l_kernel` > 0; it is mapped back to C exactly.
// A HiPPO memory needs no weights file (its matrices follow from the spec);
// when one is given it must hold `hippo.A` (N x N) and `hippo.B` (N) equal
// to the spec's to 1e-12, so a repository cannot silently drift.
//
// Errors: InvalidArgument naming the tensor (and the source file) for a
// missing, mis-shaped or non-finite tensor, or an unused one (a typo in a
// name must not silently drop a weight); for Forward, shapes that disagree,
// L outside [1, max_length], non-finite inputs (outputs untouched).
// Thread safety: a loaded Model is immutable; Forward may run concurrently.

#ifndef SSM_MODEL_H_
#define SSM_MODEL_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "ssm/conv_mode.h"
#include "ssm/model_spec.h"
#include "ssm/safetensors.h"

namespace ssm {

class Model {
 public:
  virtual ~Model() = default;

  const ModelSpec& spec() const { return spec_; }
  int d_input() const { return spec_.d_input; }
  int d_output() const { return spec_.d_output; }
  int max_length() const { return spec_.max_length; }
  // 64-bit hash of the spec's architecture and every weight value: a
  // session snapshot names the exact weights it belongs to.
  uint64_t fingerprint() const { return fingerprint_; }
  // False for bidirectional stacks (their outputs depend on the future) and
  // for DSS kernels (theirs depend on the whole sequence's length).
  virtual bool streamable() const = 0;
  // Bytes of one stream's state (batch 1), what a Session holds per stream
  // between chunks and a snapshot carries; 0 for a model that cannot stream.
  size_t state_bytes() const { return streamable() ? state_size() * sizeof(double) : 0; }
  // Why not, when streamable() is false: one clause for error messages
  // ("it is bidirectional: ..."); empty otherwise.
  virtual std::string not_streamable_reason() const { return ""; }
  // Bytes held by weights, kernels and FFT plans' spectra (approximate).
  virtual size_t memory_bytes() const = 0;
  // Summed over the model's layers (zero for models without kernels).
  virtual ConvMode::CacheStats kernel_cache_stats() const { return {}; }

  // Convolutional mode: x is batch x length x d_input, y batch x length x
  // d_output; 1 <= length <= max_length().
  virtual absl::Status Forward(absl::Span<const double> x, int batch, int length,
                               absl::Span<double> y) const = 0;

 protected:
  Model(ModelSpec spec, uint64_t fingerprint)
      : spec_(std::move(spec)), fingerprint_(fingerprint) {}

  // One short chunk (steps < Session::kConvChunkThreshold, the recurrent
  // mode) of one session, for AdvanceShort: x is batch x steps x d_input
  // (finite), y batch x steps x d_output; the state (batch x state_size())
  // is read from state_in and the state after the chunk written to
  // state_out, a buffer that does not overlap it, so state_in is never
  // changed. status is the session's own result; when it is not OK, y and
  // state_out hold nothing of use.
  struct ShortChunk {
    absl::Span<const double> x;
    absl::Span<double> y;
    const double* state_in = nullptr;
    double* state_out = nullptr;
    int64_t position = 0;
    absl::Status status;
  };

 private:
  friend class Session;
  // Recurrent/chunked mode, used by Session: `steps` steps from `state`
  // (batch x state_size() doubles, zero = the start of a stream), at stream
  // position `position` (steps already taken). Writes y and advances state.
  virtual size_t state_size() const = 0;
  virtual absl::Status Advance(absl::Span<const double> x, int batch, int steps,
                               int64_t position, absl::Span<double> state,
                               absl::Span<double> y, std::vector<double>& scratch) const = 0;

  // A short chunk of each of several sessions of this model with `batch`
  // streams each, `steps` steps, in one pass (Session::RunBatch; Session::Run
  // passes one). Each session's outputs, state and status are bit for bit
  // those it gets in a pass of its own: a failure (a non-finite value
  // reaching an SSM) is that session's alone. This default runs Advance on
  // each in turn; the S4 stack steps them together.
  virtual void AdvanceShort(absl::Span<ShortChunk> chunks, int batch, int steps,
                            std::vector<double>& scratch) const;

  ModelSpec spec_;
  uint64_t fingerprint_ = 0;
};

// Builds the model the spec describes from its weights (`weights` may be
// null only for a HiPPO memory).
absl::StatusOr<std::shared_ptr<const Model>> LoadModel(const ModelSpec& spec,
                                                       const SafeTensors* weights);

// Untrained weights for an S4 stack under the S4 reference's names and
// shapes, deterministic in `seed`: the S4 init (HiPPO-LegS DPLR) or S4D-LegS,
// dt log-uniform in [1e-3, 1e-1], C and D standard normal, linears uniform
// in +-1/sqrt(fan_in) (PyTorch's default), norms 1 and 0 (BatchNorm's
// running mean 0 and variance 1); `l_kernel` 0 (C stored as C); inv_dt,
// A_real and A_imag stored under the inverse of the spec's transforms (the
// reference's inv_transform; a value a transform cannot reach is NaN and
// the model then fails to load). For the shipped s4-demo model and tests.
absl::StatusOr<std::vector<TensorToWrite>> InitS4StackWeights(const ModelSpec& spec,
                                                              uint64_t seed,
                                                              DType dtype = DType::kF32);
// `hippo.A`, `hippo.B` (the continuous matrices) of a HiPPO memory's spec.
absl::StatusOr<std::vector<TensorToWrite>> HippoMemoryWeights(const ModelSpec& spec);

}  // namespace ssm

#endif  // SSM_MODEL_H_
