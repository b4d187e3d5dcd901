// Text that comes from clients, on its way into status messages and logs.
//
// A client's own names and ids are echoed back so it can see what was wrong
// ("model 'x' is not served"), but a hostile client must not make the
// server write megabytes per call into its log or a status message larger
// than gRPC will send. And a session id is a bearer capability (whoever
// knows it may continue or export the session), so logs carry a tag
// derived from it, never the id itself. And a status message, whatever
// it holds, reaches a client only bounded (BoundedMessage): every transport
// (gRPC through status.h, REST, a stream's error_message) cuts it the same
// way.
//
// Thread safety: pure functions.

#ifndef SSM_SERVER_ECHO_H_
#define SSM_SERVER_ECHO_H_

#include <cstddef>
#include <string>

#include "absl/strings/string_view.h"

namespace ssm::server {

inline constexpr size_t kMaxEchoBytes = 96;
inline constexpr size_t kMaxStatusMessageBytes = 1024;

// `text` as it may be echoed: at most `max_bytes` of it, with bytes outside
// printable ASCII escaped (\n, \x07, ...; so nothing can forge a log line or
// break a terminal), and "...(+N bytes)" when it was cut. Not quoted.
std::string Echo(absl::string_view text, size_t max_bytes = kMaxEchoBytes);

// The tag logs use for a session: "s-" and the first 12 hex digits of the
// SHA-256 of its id. Stable across replicas (a session's lines can be
// followed from one replica's log to another's), and telling nothing about
// the id itself.
std::string SessionTag(absl::string_view session_id);

// `message` if it fits in `max` bytes, else its first bytes (never half a
// UTF-8 character) and " ... [N more bytes]", within `max` bytes in all.
std::string BoundedMessage(absl::string_view message, size_t max = kMaxStatusMessageBytes);

}  // namespace ssm::server

#endif  // SSM_SERVER_ECHO_H_
