// One computation's view of its caller's StopCheck (ssm/stop.h), shared by
// the threads of its ParallelFor loops: the first non-OK status is kept, and
// once a stop is seen the other threads stop at their next poll without
// asking the check again.

#ifndef SSM_CORE_SRC_STOPPER_H_
#define SSM_CORE_SRC_STOPPER_H_

#include <atomic>
#include <mutex>
#include <utility>

#include "absl/status/status.h"
#include "ssm/stop.h"

namespace ssm::internal {

class Stopper {
 public:
  explicit Stopper(StopCheck check) : check_(check) {}
  Stopper(const Stopper&) = delete;
  Stopper& operator=(const Stopper&) = delete;

  // True when the computation must stop: a stop was seen, or the check
  // fails now. Thread-safe.
  bool Stop() {
    if (stopped_.load(std::memory_order_acquire)) return true;
    absl::Status status = check_();
    if (status.ok()) return false;
    std::lock_guard<std::mutex> lock(mu_);
    if (!stopped_.load(std::memory_order_relaxed)) {
      status_ = std::move(status);
      stopped_.store(true, std::memory_order_release);
    }
    return true;
  }

  bool stopped() const { return stopped_.load(std::memory_order_acquire); }

  // The status that stopped the computation (OK if none did). Read it
  // after the parallel loops have returned.
  absl::Status status() const {
    std::lock_guard<std::mutex> lock(mu_);
    return status_;
  }

 private:
  StopCheck check_;
  std::atomic<bool> stopped_{false};
  mutable std::mutex mu_;
  absl::Status status_;
};

}  // namespace ssm::internal

#endif  // SSM_CORE_SRC_STOPPER_H_
