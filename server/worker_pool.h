// A bounded pool of worker threads for the server's heavy work (Forward,
// session chunks, snapshot import/export, kernels), so gRPC's event threads
// only parse, validate and hand off, and never block on a computation.
//
// Bounded twice: `threads` workers (normally the number of cores) run jobs,
// and at most `max_queue` more jobs wait for one. TrySchedule refuses past
// that, and the caller answers RESOURCE_EXHAUSTED ("server busy") instead of
// letting latency grow without bound.
//
// Shutdown() stops accepting jobs, runs every job already queued (each one
// finishes a gRPC call, so dropping it would leave that call hanging), and
// joins the workers. The destructor calls it.
//
// Thread safety: every method may be called from any thread, including from
// inside a job (a job may schedule another), except Shutdown: call it from
// one thread that is not a worker.

#ifndef SSM_SERVER_WORKER_POOL_H_
#define SSM_SERVER_WORKER_POOL_H_

#include <cstdint>
#include <deque>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/functional/any_invocable.h"
#include "absl/synchronization/mutex.h"

namespace ssm::server {

class WorkerPool {
 public:
  // threads >= 1, max_queue >= 0 (0: a job runs only if a worker is idle).
  WorkerPool(int threads, int max_queue);
  ~WorkerPool();

  WorkerPool(const WorkerPool&) = delete;
  WorkerPool& operator=(const WorkerPool&) = delete;

  // Queues `job`. False (and `job` is destroyed unrun) when max_queue jobs
  // already wait for a worker, or after Shutdown.
  bool TrySchedule(absl::AnyInvocable<void() &&> job);

  void Shutdown();

  int threads() const { return static_cast<int>(workers_.size()); }
  int max_queue() const { return max_queue_; }
  // Jobs waiting for a worker (not counting running ones).
  int queued() const;
  // Jobs refused since construction.
  uint64_t rejected() const;

 private:
  void WorkerLoop();
  bool HasWorkOrStopping() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const int max_queue_;
  mutable absl::Mutex mu_;
  std::deque<absl::AnyInvocable<void() &&>> queue_ ABSL_GUARDED_BY(mu_);
  int idle_ ABSL_GUARDED_BY(mu_) = 0;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  uint64_t rejected_ ABSL_GUARDED_BY(mu_) = 0;
  std::vector<std::thread> workers_;  // fixed after construction
};

}  // namespace ssm::server

#endif  // SSM_SERVER_WORKER_POOL_H_
