// Per-request limits of ssm_server and their checks. Past a limit a call
// gets RESOURCE_EXHAUSTED naming the flag and its value: the request may be
// valid, this server just will not take that much at once.
//
// gRPC-free: the session layer and every wire protocol share these.
// Thread safety: plain values and pure functions.

#ifndef SSM_SERVER_LIMITS_H_
#define SSM_SERVER_LIMITS_H_

#include <cstdint>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"

namespace ssm::server {

// Outputs travel as float32: a larger value would arrive as Inf, so a
// chunk or call that produces one fails instead (sessions check it before
// their state advances: Session::set_output_limit).
inline constexpr double kMaxWireValue = 3.4028234663852886e38;  // FLT_MAX

struct RequestLimits {
  int max_batch = 64;                    // --max_batch
  int64_t max_chunk_steps = 16384;       // --max_chunk_steps
  int64_t max_unary_length = 65536;      // --max_unary_length
  int64_t max_message_bytes = 64 << 20;  // --max_message_bytes
  // A Math request's estimated work (math_handlers.h), in multiply-adds.
  int64_t max_math_work = 8'000'000'000;  // --max_math_work
};

// ResourceExhausted when `batch` (the value of `field`) passes --max_batch.
absl::Status CheckBatchLimit(int64_t batch, absl::string_view field, const RequestLimits& limits);

// ResourceExhausted when a response of `bytes` would pass
// --max_message_bytes: refused before it is computed, since gRPC would
// refuse to send it anyway.
absl::Status CheckResponseBytes(int64_t bytes, absl::string_view what,
                                const RequestLimits& limits);

}  // namespace ssm::server

#endif  // SSM_SERVER_LIMITS_H_
