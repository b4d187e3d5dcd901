// The one translation point from the core's absl::Status to the wire's
// grpc::Status (DESIGN.md section 3). Every handler of ssm_server works in
// absl::Status and converts here, right before finishing the call, so the
// mapping cannot drift between RPCs.
//
// The canonical codes are the same seventeen on both sides and keep their
// numbers, so a code passes through unchanged (INVALID_ARGUMENT stays
// INVALID_ARGUMENT, DATA_LOSS stays DATA_LOSS, ...). The message is kept
// verbatim up to kMaxStatusMessageBytes; a longer one is cut there (at a
// UTF-8 character boundary) and says how much was cut, so no input can make
// the server echo megabytes back (gRPC would refuse such trailers and the
// client would see an unrelated error instead of the code). absl::Status
// payloads have no place on the wire and are dropped.
// A code outside the canonical range (only possible through a cast) becomes
// UNKNOWN, as gRPC itself treats unknown codes.
//
// Thread safety: pure function.

#ifndef SSM_SERVER_STATUS_H_
#define SSM_SERVER_STATUS_H_

#include <grpcpp/support/status.h>

#include "absl/status/status.h"
#include "server/echo.h"  // BoundedMessage, kMaxStatusMessageBytes

namespace ssm::server {

grpc::Status ToGrpcStatus(const absl::Status& status);

}  // namespace ssm::server

#endif  // SSM_SERVER_STATUS_H_
