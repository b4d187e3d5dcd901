// ssm_server's event log: one line per lifecycle event (start, model
// loaded/failed, session opened/detached/reattached/evicted/closed, drain,
// exit) and per failed call, to stderr, each prefixed with the UTC time in
// ISO 8601 with milliseconds:
//   2024-05-01T12:00:00.123Z session 3f2a... detached (stream cancelled)
// Nothing is logged per chunk or per successful call: the hot path stays
// quiet (counters and histograms cover it, see metrics.h). Lines a client
// can cause at will (a failed call, a session opened or closed) go through
// LogfLimited, so a flood of bad calls cannot flood the log: each kind of
// line has a budget (a burst of kLogBurst, then kLogPerSecond a second), and
// the first line after a quiet spell says how many of its kind were
// dropped. Counters in metrics.h still count every one.
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

inline constexpr int kLogBurst = 20;
inline constexpr double kLogPerSecond = 5;

// Writes `line` unless lines of `kind` (a short fixed string, e.g. "rpc
// Infer INVALID_ARGUMENT") are over their budget; returns whether it did.
bool LogLineLimited(absl::string_view kind, absl::string_view line);

template <typename... Args>
void LogfLimited(absl::string_view kind, const absl::FormatSpec<Args...>& format,
                 const Args&... args) {
  LogLineLimited(kind, absl::StrFormat(format, args...));
}

// When false, LogLine writes nothing (tests that provoke many errors use it
// to keep their output readable). Default true.
void SetLogEnabled(bool enabled);

}  // namespace ssm::server

#endif  // SSM_SERVER_LOG_H_
