#include "server/worker_pool.h"

#include <algorithm>
#include <utility>

#include "ssm/threads.h"

namespace ssm::server {

WorkerPool::WorkerPool(int threads, int max_queue, int math_threads, int max_math_queue)
    : max_queue_(std::max(0, max_queue)),
      math_threads_(math_threads <= 0 ? std::max(1, threads)
                                      : std::clamp(math_threads, 1, std::max(1, threads))),
      max_math_queue_(std::max(0, max_math_queue)) {
  threads = std::max(1, threads);
  workers_.reserve(threads);
  for (int i = 0; i < threads; ++i) {
    workers_.emplace_back([this] {
      ssm::NameThisThread("ssm-worker");
      WorkerLoop();
    });
  }
}

WorkerPool::~WorkerPool() { Shutdown(); }

bool WorkerPool::TrySchedule(absl::AnyInvocable<void() &&> job, JobClass job_class) {
  absl::MutexLock lock(&mu_);
  bool full;
  if (job_class == JobClass::kMath) {
    // A Math job an idle worker takes at once (its share not used up) is
    // not waiting.
    const int free = std::min(idle_, math_threads_ - math_running_);
    full = static_cast<int>(math_queue_.size()) - std::max(0, free) >= max_math_queue_;
  } else {
    // Jobs that an idle worker will pick up right away are not "waiting".
    full = static_cast<int>(queue_.size()) - idle_ >= max_queue_;
  }
  if (stopping_ || full) {
    ++rejected_;
    return false;
  }
  (job_class == JobClass::kMath ? math_queue_ : queue_)
      .push_back(Queued{std::move(job), arrivals_++});
  return true;
}

void WorkerPool::Shutdown() {
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
  }
  for (std::thread& t : workers_) {
    if (t.joinable()) t.join();
  }
}

int WorkerPool::queued() const {
  absl::MutexLock lock(&mu_);
  return static_cast<int>(queue_.size() + math_queue_.size());
}

uint64_t WorkerPool::rejected() const {
  absl::MutexLock lock(&mu_);
  return rejected_;
}

bool WorkerPool::MathRunnable() const {
  return !math_queue_.empty() && math_running_ < math_threads_;
}

bool WorkerPool::HasWorkOrStopping() const {
  return !queue_.empty() || MathRunnable() || (stopping_ && Drained());
}

bool WorkerPool::Drained() const { return queue_.empty() && math_queue_.empty(); }

void WorkerPool::WorkerLoop() {
  while (true) {
    absl::AnyInvocable<void() &&> job;
    bool math = false;
    {
      absl::MutexLock lock(&mu_);
      ++idle_;
      mu_.Await(absl::Condition(this, &WorkerPool::HasWorkOrStopping));
      --idle_;
      // Stopping still drains both queues (every job finishes a call): a
      // worker leaves only once nothing is queued.
      if (queue_.empty() && !MathRunnable()) return;
      math = MathRunnable() && (queue_.empty() || math_queue_.front().order < queue_.front().order);
      std::deque<Queued>& from = math ? math_queue_ : queue_;
      job = std::move(from.front().job);
      from.pop_front();
      if (math) ++math_running_;
    }
    std::move(job)();
    if (math) {
      absl::MutexLock lock(&mu_);
      --math_running_;
    }
  }
}

}  // namespace ssm::server
