#include "server/metrics.h"

#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "prometheus/metric_family.h"
#include "prometheus/text_serializer.h"

namespace ssm::server {
namespace {

// 50 us (a single recurrent step) to 10 s (a long unary call or a kernel).
const prometheus::Histogram::BucketBoundaries& LatencyBuckets() {
  static const auto* buckets = new prometheus::Histogram::BucketBoundaries{
      5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2,
      5e-2, 0.1,  0.25,   0.5,  1.0,  2.5,    5.0,  10.0};
  return *buckets;
}

prometheus::MetricFamily OneValue(const std::string& name, const std::string& help,
                                  prometheus::MetricType type, double value) {
  prometheus::MetricFamily family;
  family.name = name;
  family.help = help;
  family.type = type;
  prometheus::ClientMetric metric;
  if (type == prometheus::MetricType::Counter) {
    metric.counter.value = value;
  } else {
    metric.gauge.value = value;
  }
  family.metric.push_back(std::move(metric));
  return family;
}

}  // namespace

// The registry's families plus the sampled ones, built at scrape time.
class Metrics::Collector : public prometheus::Collectable {
 public:
  explicit Collector(std::shared_ptr<prometheus::Registry> registry)
      : registry_(std::move(registry)) {}

  void SetSampler(Sampler sampler) {
    absl::MutexLock lock(&mu_);
    sampler_ = std::move(sampler);
  }

  std::vector<prometheus::MetricFamily> Collect() const override {
    std::vector<prometheus::MetricFamily> out = registry_->Collect();
    Sampler sampler;
    {
      absl::MutexLock lock(&mu_);
      sampler = sampler_;
    }
    if (!sampler) return out;
    const Sampled s = sampler();
    using prometheus::MetricType;
    out.push_back(OneValue("ssm_sessions_active", "Sessions attached to a stream.",
                           MetricType::Gauge, s.sessions_attached));
    out.push_back(OneValue("ssm_sessions_detached",
                           "Detached sessions waiting to be reattached (until --session_ttl).",
                           MetricType::Gauge, s.sessions_detached));
    out.push_back(OneValue("ssm_session_state_bytes",
                           "Bytes of state held by all sessions (attached and detached).",
                           MetricType::Gauge, static_cast<double>(s.session_state_bytes)));
    out.push_back(OneValue("ssm_session_evictions_total",
                           "Detached sessions evicted after --session_ttl.", MetricType::Counter,
                           static_cast<double>(s.session_evictions_total)));
    out.push_back(OneValue("ssm_worker_threads", "Threads of the worker pool (--threads).",
                           MetricType::Gauge, s.worker_threads));
    out.push_back(OneValue("ssm_core_threads",
                           "Threads the core's parallel loops may use (--threads).",
                           MetricType::Gauge, s.core_threads));
    out.push_back(OneValue("ssm_connections_open",
                           "TCP connections held on the gRPC port (--max_connections caps them).",
                           MetricType::Gauge, s.connections_open));
    out.push_back(OneValue("ssm_connections_closed_over_limit_total",
                           "Connections closed because --max_connections were already open.",
                           MetricType::Counter,
                           static_cast<double>(s.connections_closed_over_limit_total)));
    if (s.session_store) {
      out.push_back(OneValue("ssm_sessions_unsaved",
                             "Sessions whose confirmed state (outputs the client has) is ahead of "
                             "the session store's copy.",
                             MetricType::Gauge, s.sessions_unsaved));
      out.push_back(OneValue("ssm_session_store_writes_total",
                             "Session snapshots written to the session store.", MetricType::Counter,
                             static_cast<double>(s.session_store_writes_total)));
      out.push_back(OneValue("ssm_session_store_bytes_total",
                             "Bytes of session snapshots written to the session store.",
                             MetricType::Counter,
                             static_cast<double>(s.session_store_bytes_total)));
      out.push_back(OneValue("ssm_session_store_errors_total",
                             "Session store operations that failed (they are retried).",
                             MetricType::Counter,
                             static_cast<double>(s.session_store_errors_total)));
    }
    out.push_back(OneValue("process_resident_memory_bytes", "Resident memory size in bytes.",
                           MetricType::Gauge, static_cast<double>(s.process.resident_bytes)));
    out.push_back(OneValue("process_open_fds", "Number of open file descriptors.",
                           MetricType::Gauge, static_cast<double>(s.process.open_fds)));
    out.push_back(OneValue("process_max_fds", "Maximum number of open file descriptors.",
                           MetricType::Gauge, static_cast<double>(s.process.max_fds)));
    out.push_back(OneValue("process_threads", "Threads of the process.", MetricType::Gauge,
                           static_cast<double>(s.process.threads)));
    out.push_back(OneValue("ssm_worker_queue_depth", "Jobs waiting for a worker thread.",
                           MetricType::Gauge, s.worker_queue_depth));
    out.push_back(OneValue("ssm_worker_rejections_total",
                           "Jobs refused because --max_queue jobs were waiting (server busy).",
                           MetricType::Counter, static_cast<double>(s.worker_rejections_total)));
    out.push_back(OneValue("ssm_kernel_cache_hits_total",
                           "Convolutions that found their kernel spectra cached.",
                           MetricType::Counter, static_cast<double>(s.kernel_cache_hits_total)));
    out.push_back(OneValue("ssm_kernel_cache_misses_total",
                           "Kernel spectra built for a new length rung.", MetricType::Counter,
                           static_cast<double>(s.kernel_cache_misses_total)));
    out.push_back(OneValue("ssm_kernel_cache_bytes", "Bytes of kernel spectra held.",
                           MetricType::Gauge, static_cast<double>(s.kernel_cache_bytes)));
    out.push_back(OneValue("ssm_step_batches_total",
                           "Passes of gathered stream chunks stepped together.",
                           MetricType::Counter, static_cast<double>(s.step_batches_total)));
    out.push_back(OneValue("ssm_step_batch_chunks_total", "Stream chunks stepped in those passes.",
                           MetricType::Counter, static_cast<double>(s.step_batch_chunks_total)));
    out.push_back(OneValue("ssm_step_batches_inline_total",
                           "Passes run on the gRPC thread that closed them (the rest ran on "
                           "the batcher's thread).",
                           MetricType::Counter, static_cast<double>(s.step_batches_inline_total)));
    return out;
  }

 private:
  std::shared_ptr<prometheus::Registry> registry_;
  mutable absl::Mutex mu_;
  Sampler sampler_ ABSL_GUARDED_BY(mu_);
};

Metrics::Metrics()
    : registry_(std::make_shared<prometheus::Registry>()),
      collector_(std::make_shared<Collector>(registry_)) {
  requests_ = &prometheus::BuildCounter()
                   .Name("ssm_rpc_requests_total")
                   .Help("Finished calls by method and status code.")
                   .Register(*registry_);
  errors_ = &prometheus::BuildCounter()
                 .Name("ssm_rpc_errors_total")
                 .Help("Calls that finished with a non-OK status, by method and code.")
                 .Register(*registry_);
  latency_ = &prometheus::BuildHistogram()
                  .Name("ssm_rpc_latency_seconds")
                  .Help("Unary call latency, from arrival to the status.")
                  .Register(*registry_);
  stream_steps_ = &prometheus::BuildCounter()
                       .Name("ssm_stream_steps_total")
                       .Help("Time steps run by streams (each over the session's batch).")
                       .Register(*registry_);
  chunk_latency_ = &prometheus::BuildHistogram()
                        .Name("ssm_stream_chunk_latency_seconds")
                        .Help("One stream chunk, from its arrival to its output queued.")
                        .Register(*registry_);
  models_loaded_ = &prometheus::BuildGauge()
                        .Name("ssm_models_loaded")
                        .Help("Model versions loaded and served.")
                        .Register(*registry_)
                        .Add({});
  models_failed_ = &prometheus::BuildGauge()
                        .Name("ssm_models_failed")
                        .Help("Models of the repository that failed to load.")
                        .Register(*registry_)
                        .Add({});
}

void Metrics::SetSampler(Sampler sampler) { collector_->SetSampler(std::move(sampler)); }

void Metrics::SetModels(int loaded_versions, int failed_models) {
  models_loaded_->Set(loaded_versions);
  models_failed_->Set(failed_models);
}

void Metrics::RecordRpc(absl::string_view rpc, absl::StatusCode code, absl::Duration latency) {
  const prometheus::Labels labels = {{"rpc", std::string(rpc)},
                                     {"code", absl::StatusCodeToString(code)}};
  requests_->Add(labels).Increment();
  if (code != absl::StatusCode::kOk) errors_->Add(labels).Increment();
  if (latency != absl::InfiniteDuration()) {
    latency_->Add({{"rpc", std::string(rpc)}}, LatencyBuckets())
        .Observe(absl::ToDoubleSeconds(latency));
  }
}

Metrics::StreamHandles Metrics::ForModel(const std::string& model) {
  StreamHandles handles;
  handles.steps = &stream_steps_->Add({{"model", model}});
  handles.chunk_latency = &chunk_latency_->Add({{"model", model}}, LatencyBuckets());
  return handles;
}

std::shared_ptr<prometheus::Collectable> Metrics::collectable() const { return collector_; }

std::string Metrics::Text() const {
  return prometheus::TextSerializer().Serialize(collector_->Collect());
}

}  // namespace ssm::server
