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

#include <cstddef>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"

namespace ssm::server {

inline constexpr size_t kMaxStatusMessageBytes = 1024;

grpc::Status ToGrpcStatus(const absl::Status& status);

// `message` if it fits in `max` bytes, else its first bytes (never half a
// UTF-8 character) and " ... [N more bytes]", within `max` bytes in all.
std::string BoundedMessage(absl::string_view message, size_t max = kMaxStatusMessageBytes);

}  // namespace ssm::server

#endif  // SSM_SERVER_STATUS_H_
