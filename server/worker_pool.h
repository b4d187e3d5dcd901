// A bounded pool of worker threads for the server's heavy work (Forward,
// session chunks, snapshot import/export, kernels), so gRPC's event threads
// only parse, validate and hand off, and never block on a computation.
//
// Bounded twice: `threads` workers (normally the number of cores) run jobs,
// and at most `max_queue` more jobs wait for one. TrySchedule refuses past
// that, and the caller answers RESOURCE_EXHAUSTED ("server busy") instead of
// letting latency grow without bound.
//
// Math jobs (HiPPO matrices, kernels: seconds of dense work a client can
// ask for at will) have a share of their own: at most `math_threads` of the
// workers run them at once, and at most `max_math_queue` of them wait (in
// a queue of their own, so they never take inference's places). So a Math
// flood can neither occupy every worker nor fill inference's queue. Among
// runnable jobs, workers take the oldest first.
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
  enum class JobClass { kInference, kMath };

  // threads >= 1, max_queue >= 0 (0: a job runs only if a worker is idle);
  // math_threads in [1, threads] (0: all of them), max_math_queue >= 0.
  WorkerPool(int threads, int max_queue, int math_threads = 0, int max_math_queue = 0);
  ~WorkerPool();

  WorkerPool(const WorkerPool&) = delete;
  WorkerPool& operator=(const WorkerPool&) = delete;

  // Queues `job`. False (and `job` is destroyed unrun) when its class's
  // queue is full (max_queue jobs wait for a worker; for Math,
  // max_math_queue), or after Shutdown.
  bool TrySchedule(absl::AnyInvocable<void() &&> job, JobClass job_class = JobClass::kInference);

  void Shutdown();

  int threads() const { return static_cast<int>(workers_.size()); }
  int max_queue() const { return max_queue_; }
  int math_threads() const { return math_threads_; }
  int max_math_queue() const { return max_math_queue_; }
  // Jobs waiting for a worker (not counting running ones), of both classes.
  int queued() const;
  // Jobs refused since construction.
  uint64_t rejected() const;

 private:
  struct Queued {
    absl::AnyInvocable<void() &&> job;
    uint64_t order = 0;  // arrival, across both queues
  };

  void WorkerLoop();
  bool MathRunnable() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  bool HasWorkOrStopping() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  bool Drained() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const int max_queue_;
  const int math_threads_;
  const int max_math_queue_;
  mutable absl::Mutex mu_;
  std::deque<Queued> queue_ ABSL_GUARDED_BY(mu_);
  std::deque<Queued> math_queue_ ABSL_GUARDED_BY(mu_);
  uint64_t arrivals_ ABSL_GUARDED_BY(mu_) = 0;
  int math_running_ ABSL_GUARDED_BY(mu_) = 0;
  int idle_ ABSL_GUARDED_BY(mu_) = 0;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  uint64_t rejected_ ABSL_GUARDED_BY(mu_) = 0;
  std::vector<std::thread> workers_;  // fixed after construction
};

}  // namespace ssm::server

#endif  // SSM_SERVER_WORKER_POOL_H_
