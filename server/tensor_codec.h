// Wire tensors (ssm.v1.Tensor: packed float32, row-major, explicit shape) to
// and from the core's double buffers, with the validation every inference
// input goes through before any work is scheduled; and session snapshots
// into their wire message.
//
// Errors are InvalidArgument and name the field the caller passes (for
// example "input" or "chunk"), so a client can tell which one is wrong:
//   "input.shape must have 3 dimensions [batch, steps, features], got [4, 2]"
//   "chunk.shape[2] = 2 but model 'legt-delay' takes d_input 1"
//   "input.values holds 5 values but shape [1, 3, 2] needs 6"
//   "chunk.values[17] is NaN"
// Server limits (batch, steps) are not checked here: they are the caller's,
// and they are RESOURCE_EXHAUSTED, not INVALID_ARGUMENT.
//
// Thread safety: pure functions.

#ifndef SSM_SERVER_TENSOR_CODEC_H_
#define SSM_SERVER_TENSOR_CODEC_H_

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "server/limits.h"
#include "server/session_manager.h"
#include "ssm/v1/ssm_service.pb.h"

namespace ssm::server {

// The dimensions of a [batch, steps, features] tensor; every one >= 1.
struct SequenceShape {
  int64_t batch = 0;
  int64_t steps = 0;
  int64_t features = 0;

  int64_t size() const { return batch * steps * features; }
};

// Checks that `tensor` is exactly [batch, steps, `features`] with batch and
// steps >= 1, and that it holds exactly that many values. Does not look at
// the values themselves (ReadFiniteValues does, in the same pass that
// converts them).
absl::StatusOr<SequenceShape> CheckSequenceShape(const ssm::v1::Tensor& tensor,
                                                 absl::string_view field,
                                                 int64_t features,
                                                 absl::string_view model_name);

// Widens the values to double into *out (resized), refusing NaN and +-Inf
// with the index of the first one. *out is unspecified on error.
absl::Status ReadFiniteValues(const ssm::v1::Tensor& tensor, absl::string_view field,
                              std::vector<double>* out);

// A stream chunk's checks before it runs, in StreamInfer's order (its
// fuzz harness runs the same ones): the tensor's shape for `session` (its
// d_input, then its batch), --max_chunk_steps, the response's size (the
// session's state included when `want_state`), and the values, widened
// into *x. Returns the output's shape. Errors: InvalidArgument (shape,
// batch, a value not finite), ResourceExhausted (too many steps, a
// response past the message limit).
absl::StatusOr<SequenceShape> ReadStreamChunk(const ssm::v1::Tensor& chunk, bool want_state,
                                              const SessionManager::Entry& session,
                                              const RequestLimits& limits, std::vector<double>* x);

// InvalidArgument naming `field` and the first index [b, t, f] whose value
// is not finite or beyond float32's range (kMaxWireValue): such an output
// would reach the client as Inf.
absl::Status CheckWireValues(absl::Span<const double> values, const SequenceShape& shape,
                             absl::string_view field);

// Writes `values` (shape.size() of them, row-major) as a float32 tensor of
// `shape`, replacing what *tensor held. Values beyond float's range become
// +-Inf, as any narrowing to float32 does.
void WriteSequenceTensor(absl::Span<const double> values, const SequenceShape& shape,
                         ssm::v1::Tensor* tensor);

// Copies a session's snapshot into its wire message (every RPC that hands
// out a state does it here).
void WriteStateSnapshot(const SessionSnapshot& snapshot, ssm::v1::StateSnapshot* out);

}  // namespace ssm::server

#endif  // SSM_SERVER_TENSOR_CODEC_H_
