#include "server/log.h"

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <string>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"

namespace ssm::server {
namespace {

std::atomic<bool> log_enabled{true};

// A token bucket per kind of line. Kinds are few and fixed (method x code,
// session events), so the map stays small.
struct Budget {
  double tokens = kLogBurst;
  absl::Time refilled = absl::InfinitePast();
  int64_t dropped = 0;
};

absl::Mutex budgets_mu;
absl::flat_hash_map<std::string, Budget>& Budgets() ABSL_EXCLUSIVE_LOCKS_REQUIRED(budgets_mu) {
  static auto* budgets = new absl::flat_hash_map<std::string, Budget>();
  return *budgets;
}

}  // namespace

void LogLine(absl::string_view line) {
  if (!log_enabled.load(std::memory_order_relaxed)) return;
  const std::string text = absl::StrCat(
      absl::FormatTime("%Y-%m-%dT%H:%M:%E3SZ", absl::Now(), absl::UTCTimeZone()), " ", line, "\n");
  std::fwrite(text.data(), 1, text.size(), stderr);
}

bool LogLineLimited(absl::string_view kind, absl::string_view line) {
  int64_t dropped = 0;
  {
    absl::MutexLock lock(&budgets_mu);
    Budget& b = Budgets()[kind];
    const absl::Time now = absl::Now();
    if (b.refilled != absl::InfinitePast()) {
      b.tokens = std::min<double>(
          kLogBurst, b.tokens + absl::ToDoubleSeconds(now - b.refilled) * kLogPerSecond);
    }
    b.refilled = now;
    if (b.tokens < 1) {
      ++b.dropped;
      return false;
    }
    b.tokens -= 1;
    dropped = b.dropped;
    b.dropped = 0;
  }
  if (dropped == 0) {
    LogLine(line);
  } else {
    LogLine(absl::StrCat(line, " (", dropped, " more like it dropped)"));
  }
  return true;
}

void SetLogEnabled(bool enabled) { log_enabled.store(enabled, std::memory_order_relaxed); }

}  // namespace ssm::server
