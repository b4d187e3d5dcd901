#include "server/service_env.h"

#include "absl/strings/str_cat.h"

namespace ssm::server {

void CallCounter::Enter() {
  absl::MutexLock lock(&mu_);
  ++running_;
}

void CallCounter::Exit() {
  absl::MutexLock lock(&mu_);
  --running_;
}

int CallCounter::running() const {
  absl::MutexLock lock(&mu_);
  return running_;
}

bool CallCounter::WaitForIdle(absl::Time deadline) {
  absl::MutexLock lock(&mu_);
  auto idle = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return running_ == 0; };
  return mu_.AwaitWithDeadline(absl::Condition(&idle), deadline);
}

absl::Status DrainingError() {
  return absl::UnavailableError("server is draining; retry on another replica");
}

absl::Status BusyError(const WorkerPool& pool) {
  return absl::ResourceExhaustedError(absl::StrCat(
      "server busy: ", pool.threads(), " workers are busy and --max_queue=", pool.max_queue(),
      " jobs are already waiting; retry later"));
}

absl::Status MathBusyError(const WorkerPool& pool) {
  return absl::ResourceExhaustedError(absl::StrCat("server busy with Math: ", pool.math_threads(),
                                                   " workers (--math_threads) are busy with "
                                                   "Math and --max_math_queue=",
                                                   pool.max_math_queue(),
                                                   " Math jobs are already waiting; retry later"));
}

}  // namespace ssm::server
