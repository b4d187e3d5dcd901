// Text that comes from clients, on its way into status messages and logs.
//
// A client's own names and ids are echoed back so it can see what was wrong
// ("model 'x' is not served"), but a hostile client must not make the
// server write megabytes per call into its log or a status message larger
// than gRPC will send. And a session id is a bearer capability (whoever
// knows it may continue or export the session), so logs carry a tag
// derived from it, never the id itself.
//
// Thread safety: pure functions.

#ifndef SSM_SERVER_ECHO_H_
#define SSM_SERVER_ECHO_H_

#include <cstddef>
#include <string>

#include "absl/strings/string_view.h"

namespace ssm::server {

inline constexpr size_t kMaxEchoBytes = 96;

// `text` as it may be echoed: at most `max_bytes` of it, with bytes outside
// printable ASCII escaped (\n, \x07, ...; so nothing can forge a log line or
// break a terminal), and "...(+N bytes)" when it was cut. Not quoted.
std::string Echo(absl::string_view text, size_t max_bytes = kMaxEchoBytes);

// The tag logs use for a session: "s-" and the first 12 hex digits of the
// SHA-256 of its id. Stable across replicas (a session's lines can be
// followed from one replica's log to another's), and telling nothing about
// the id itself.
std::string SessionTag(absl::string_view session_id);

}  // namespace ssm::server

#endif  // SSM_SERVER_ECHO_H_
