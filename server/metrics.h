// ssm_server's Prometheus metrics (text format, served by prometheus-cpp's
// Exposer on the metrics port; see README.md for the list):
//
//   ssm_rpc_requests_total{rpc,code}        counter: finished calls
//   ssm_rpc_errors_total{rpc,code}          counter: the non-OK ones
//   ssm_rpc_latency_seconds{rpc}            histogram: unary calls, from
//                                           arrival to the status
//   ssm_stream_steps_total{model}           counter: time steps run by
//                                           streams (each over the batch)
//   ssm_stream_chunk_latency_seconds{model} histogram: one chunk, from its
//                                           arrival to its output queued
//   ssm_sessions_active, ssm_sessions_detached, ssm_session_state_bytes
//                                           gauges, sampled at scrape
//   ssm_session_evictions_total             counter, sampled at scrape
//   ssm_models_loaded, ssm_models_failed    gauges (model versions loaded;
//                                           models that failed)
//   ssm_worker_threads, ssm_worker_queue_depth    gauges, sampled
//   ssm_core_threads                        gauge, sampled: threads the core's
//                                           parallel loops use (--threads)
//   ssm_connections_open                    gauge, sampled: TCP connections
//                                           held on the gRPC port
//   ssm_connections_closed_over_limit_total counter, sampled: closed past
//                                           --max_connections
//   ssm_sessions_unsaved                    gauge, with --session_store:
//                                           sessions ahead of the store
//   ssm_session_store_writes_total, ssm_session_store_bytes_total,
//   ssm_session_store_errors_total          counters, with --session_store
//   process_resident_memory_bytes, process_open_fds, process_max_fds,
//   process_threads                         gauges, sampled from /proc/self
//   ssm_worker_rejections_total             counter: "server busy" refusals
//   ssm_kernel_cache_hits_total, ssm_kernel_cache_misses_total
//                                           counters, sampled: FFT convolvers
//                                           (kernel spectra per length rung)
//                                           reused / built, all models
//   ssm_kernel_cache_bytes                  gauge, sampled: spectra held
//   ssm_step_batches_total, ssm_step_batch_chunks_total,
//   ssm_step_batches_inline_total           counters, sampled: gathered
//                                           passes, the chunks they stepped,
//                                           and the passes run on the gRPC
//                                           thread that closed them
//
// `rpc` is the method name ("Infer", "StreamInfer", "BuildHippo", ...),
// `code` the canonical code's name ("OK", "INVALID_ARGUMENT", ...). A
// stream counts once, when it ends, with its final code; its latency is per
// chunk (a stream's lifetime is not a latency).
//
// Thread safety: every method may be called concurrently; recording is
// lock-free apart from prometheus-cpp's per-family label lookup (avoid it
// on hot paths by keeping the ForModel handles).

#ifndef SSM_SERVER_METRICS_H_
#define SSM_SERVER_METRICS_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "prometheus/collectable.h"
#include "prometheus/counter.h"
#include "prometheus/family.h"
#include "prometheus/gauge.h"
#include "prometheus/histogram.h"
#include "prometheus/registry.h"
#include "server/connection_guard.h"

namespace ssm::server {

class Metrics {
 public:
  // Values owned elsewhere (the session manager, the worker pool), read at
  // every scrape instead of being pushed on every change.
  struct Sampled {
    int sessions_attached = 0;
    int sessions_detached = 0;
    int64_t session_state_bytes = 0;
    uint64_t session_evictions_total = 0;
    int worker_threads = 0;
    int core_threads = 0;
    int connections_open = 0;
    uint64_t connections_closed_over_limit_total = 0;
    ProcessStats process;
    bool session_store = false;  // the store figures below are exported
    int sessions_unsaved = 0;
    uint64_t session_store_writes_total = 0;
    uint64_t session_store_bytes_total = 0;
    uint64_t session_store_errors_total = 0;
    int worker_queue_depth = 0;
    uint64_t worker_rejections_total = 0;
    int64_t kernel_cache_hits_total = 0;    // FFT convolvers found in a model's cache
    int64_t kernel_cache_misses_total = 0;  // ... and built (a new length rung)
    int64_t kernel_cache_bytes = 0;         // kernel spectra held
    uint64_t step_batches_total = 0;        // the step batcher's passes
    uint64_t step_batch_chunks_total = 0;   // ... and the chunks they stepped
    uint64_t step_batches_inline_total = 0;  // passes run where they closed
  };
  using Sampler = std::function<Sampled()>;

  // Per-model stream handles: recording through them takes no lookup.
  struct StreamHandles {
    prometheus::Counter* steps = nullptr;
    prometheus::Histogram* chunk_latency = nullptr;
  };

  Metrics();

  // Set once, before the metrics are exposed; the sampler must stay valid
  // while anything may scrape (the server removes the exposer first).
  void SetSampler(Sampler sampler);
  void SetModels(int loaded_versions, int failed_models);

  // A finished call. `latency` is recorded for unary calls only
  // (pass absl::InfiniteDuration() to skip it, as streams do).
  void RecordRpc(absl::string_view rpc, absl::StatusCode code, absl::Duration latency);

  StreamHandles ForModel(const std::string& model);

  // What the exposer serves (the registry plus the sampled families).
  std::shared_ptr<prometheus::Collectable> collectable() const;
  // The same in Prometheus text format (tests, debugging).
  std::string Text() const;

 private:
  class Collector;

  std::shared_ptr<prometheus::Registry> registry_;
  std::shared_ptr<Collector> collector_;
  prometheus::Family<prometheus::Counter>* requests_;
  prometheus::Family<prometheus::Counter>* errors_;
  prometheus::Family<prometheus::Histogram>* latency_;
  prometheus::Family<prometheus::Counter>* stream_steps_;
  prometheus::Family<prometheus::Histogram>* chunk_latency_;
  prometheus::Gauge* models_loaded_;
  prometheus::Gauge* models_failed_;
};

}  // namespace ssm::server

#endif  // SSM_SERVER_METRICS_H_
