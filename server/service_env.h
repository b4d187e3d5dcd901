// What every call of ssm_server's services borrows: the catalog, the
// session registry, the worker pool, the metrics, the limits, the drain
// flag and the call counter. gRPC-free, so a second wire protocol's
// reactors share it unchanged.
//
// Thread safety: ServiceEnv is filled once before the server starts and
// read-only after; what it points to is thread-safe and must outlive the
// grpc::Server (that is, until SsmServer::Shutdown returned).

#ifndef SSM_SERVER_SERVICE_ENV_H_
#define SSM_SERVER_SERVICE_ENV_H_

#include <atomic>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "server/auth.h"
#include "server/limits.h"
#include "server/metrics.h"
#include "server/model_catalog.h"
#include "server/sequences.h"
#include "server/session_manager.h"
#include "server/step_batcher.h"
#include "server/worker_pool.h"

namespace ssm::server {

// Counts the calls of this server's services from their handler to their
// OnDone, so a drain can keep the server answering (health NOT_SERVING,
// UNAVAILABLE for new work) until the running ones are done, and only
// then close the listener. Thread-safe.
class CallCounter {
 public:
  void Enter();
  void Exit();
  int running() const;
  // True once no call runs; false if `deadline` comes first.
  bool WaitForIdle(absl::Time deadline);

 private:
  mutable absl::Mutex mu_;
  int running_ ABSL_GUARDED_BY(mu_) = 0;
};

struct ServiceEnv {
  const ModelCatalog* catalog = nullptr;
  SessionManager* sessions = nullptr;
  WorkerPool* pool = nullptr;
  Metrics* metrics = nullptr;
  RequestLimits limits;
  // Set when the server starts draining: new calls and new streams are
  // refused with UNAVAILABLE; running streams go on.
  const std::atomic<bool>* draining = nullptr;
  CallCounter* calls = nullptr;
  // Who is calling and what they may do (auth.h); disabled without
  // --auth_callers. Never null in a running server.
  Authorizer* auth = nullptr;
  // The Open Inference Protocol's client-named sequences (sequences.h),
  // shared by its gRPC and REST transports.
  SequenceTable* sequences = nullptr;
  // Gathers streams' short chunks to step them together (step_batcher.h);
  // null: every chunk runs on its own (--step_batch_window=0).
  StepBatcher* batcher = nullptr;

  bool Draining() const { return draining != nullptr && draining->load(std::memory_order_acquire); }
};

// UNAVAILABLE: what new work gets while the server drains.
absl::Status DrainingError();

// RESOURCE_EXHAUSTED: the worker pool refused a job (every worker busy and
// the queue full).
absl::Status BusyError(const WorkerPool& pool);
// RESOURCE_EXHAUSTED: the pool refused a Math job (Math's share of the
// workers busy and its own queue full).
absl::Status MathBusyError(const WorkerPool& pool);

}  // namespace ssm::server

#endif  // SSM_SERVER_SERVICE_ENV_H_
