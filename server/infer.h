// ssm.v1 Infer's meaning without a transport: the checks a request passes
// before any work is scheduled, and the run itself. The gRPC service
// (services.cc) calls them on gRPC's thread and on a worker; the libFuzzer
// harness of the unary path (tests/fuzz/infer_request_fuzz.cc) calls the
// same functions, so it fuzzes the server's code and not a copy.
//
// Errors (exact codes; messages name the field, e.g. "input.shape[1]"):
//   InvalidArgument     a shape that is not [batch >= 1, L >= 1, d_input]
//                       or that the values do not fill, L past the model's
//                       max_length, NaN or Inf in the input, an output
//                       float32 cannot carry
//   ResourceExhausted   past --max_batch, --max_unary_length or
//                       --max_message_bytes (the response, state included)
//   FailedPrecondition  return_state on a model that cannot stream
//   whatever `stop` returns (the transport's cancellation)
//
// Thread safety: pure functions.

#ifndef SSM_SERVER_INFER_H_
#define SSM_SERVER_INFER_H_

#include <cstdint>

#include "absl/functional/function_ref.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "server/limits.h"
#include "server/model_catalog.h"
#include "server/session_manager.h"
#include "server/tensor_codec.h"
#include "ssm/v1/ssm_service.pb.h"

namespace ssm::server {

// The checks in the order a client fixes them: the input's shape (the
// model's d_input), the server's limits, the model's own max_length, the
// response's size, and whether return_state is possible. Returns the
// input's shape. Does not read the values (RunInfer does, on a worker).
absl::StatusOr<SequenceShape> CheckInfer(const ssm::v1::InferRequest& request,
                                         const ServedModel& served, const RequestLimits& limits);

// Runs a request CheckInfer passed (`shape` is its answer) and fills
// *response: the output [batch, L, d_output], the model's name and
// version, and with return_state the state after the last step (signed by
// `signer`; null: unsigned). Reads the input first (InvalidArgument for
// NaN or Inf). `stop(done, total, unit)` is asked between pieces of the
// work ("sequences" of a whole-sequence run, "steps" of a session's); its
// first non-OK answer is returned and *response is then incomplete.
absl::Status RunInfer(
    const ssm::v1::InferRequest& request, const ServedModel& served, const SequenceShape& shape,
    const SnapshotSigner* signer,
    absl::FunctionRef<absl::Status(int64_t done, int64_t total, const char* unit)> stop,
    ssm::v1::InferResponse* response);

}  // namespace ssm::server

#endif  // SSM_SERVER_INFER_H_
