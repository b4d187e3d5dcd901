#include "server/log.h"

#include <atomic>
#include <cstdio>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"

namespace ssm::server {
namespace {
std::atomic<bool> log_enabled{true};
}  // namespace

void LogLine(absl::string_view line) {
  if (!log_enabled.load(std::memory_order_relaxed)) return;
  const std::string text = absl::StrCat(
      absl::FormatTime("%Y-%m-%dT%H:%M:%E3SZ", absl::Now(), absl::UTCTimeZone()), " ", line,
      "\n");
  std::fwrite(text.data(), 1, text.size(), stderr);
}

void SetLogEnabled(bool enabled) { log_enabled.store(enabled, std::memory_order_relaxed); }

}  // namespace ssm::server
