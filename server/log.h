// ssm_server's event log: one line per lifecycle event (start, model
// loaded/failed, session opened/detached/reattached/evicted/closed, drain,
// exit) and per failed call, to stderr, each prefixed with the UTC time in
// ISO 8601 with milliseconds:
//   2024-05-01T12:00:00.123Z session 3f2a... detached (stream cancelled)
// Nothing is logged per chunk or per successful call: the hot path stays
// quiet (counters and histograms cover it, see metrics.h).
//
// Thread safety: lines from concurrent threads never interleave (one
// fwrite per line).

#ifndef SSM_SERVER_LOG_H_
#define SSM_SERVER_LOG_H_

#include <string>

#include "absl/strings/str_format.h"
#include "absl/strings/string_view.h"

namespace ssm::server {

// Writes `line` with the time prefix and a newline.
void LogLine(absl::string_view line);

template <typename... Args>
void Logf(const absl::FormatSpec<Args...>& format, const Args&... args) {
  LogLine(absl::StrFormat(format, args...));
}

// When false, LogLine writes nothing (tests that provoke many errors use it
// to keep their output readable). Default true.
void SetLogEnabled(bool enabled);

}  // namespace ssm::server

#endif  // SSM_SERVER_LOG_H_
