#include "server/worker_pool.h"

#include <algorithm>
#include <utility>

namespace ssm::server {

WorkerPool::WorkerPool(int threads, int max_queue) : max_queue_(std::max(0, max_queue)) {
  threads = std::max(1, threads);
  workers_.reserve(threads);
  for (int i = 0; i < threads; ++i) workers_.emplace_back([this] { WorkerLoop(); });
}

WorkerPool::~WorkerPool() { Shutdown(); }

bool WorkerPool::TrySchedule(absl::AnyInvocable<void() &&> job) {
  absl::MutexLock lock(&mu_);
  // Jobs that an idle worker will pick up right away are not "waiting".
  const int waiting = static_cast<int>(queue_.size()) - idle_;
  if (stopping_ || waiting >= max_queue_) {
    ++rejected_;
    return false;
  }
  queue_.push_back(std::move(job));
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
  return static_cast<int>(queue_.size());
}

uint64_t WorkerPool::rejected() const {
  absl::MutexLock lock(&mu_);
  return rejected_;
}

bool WorkerPool::HasWorkOrStopping() const { return !queue_.empty() || stopping_; }

void WorkerPool::WorkerLoop() {
  while (true) {
    absl::AnyInvocable<void() &&> job;
    {
      absl::MutexLock lock(&mu_);
      ++idle_;
      mu_.Await(absl::Condition(this, &WorkerPool::HasWorkOrStopping));
      --idle_;
      // Stopping still drains the queue: every job finishes a call.
      if (queue_.empty()) return;
      job = std::move(queue_.front());
      queue_.pop_front();
    }
    std::move(job)();
  }
}

}  // namespace ssm::server
