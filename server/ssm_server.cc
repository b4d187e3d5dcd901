#include "server/ssm_server.h"

#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/health_check_service_interface.h>
#include <grpcpp/security/server_credentials.h>
#include <grpcpp/server_builder.h>

#include <algorithm>
#include <climits>
#include <exception>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "prometheus/exposer.h"
#include "server/log.h"
#include "ssm/threads.h"

namespace ssm::server {
namespace {}  // namespace

absl::Status ValidateServerOptions(const ServerOptions& o) {
  auto at_least = [](absl::string_view flag, int64_t value, int64_t min) {
    return value >= min ? absl::OkStatus()
                        : absl::InvalidArgumentError(
                              absl::StrCat("--", flag, " must be >= ", min, ", got ", value));
  };
  const absl::Duration max_age = absl::Milliseconds(INT32_MAX);
  for (const auto& [flag, value] : {std::pair{"max_connection_age", o.max_connection_age},
                                    {"max_connection_age_grace", o.max_connection_age_grace},
                                    {"max_connection_idle", o.max_connection_idle},
                                    {"keepalive_time", o.keepalive_time},
                                    {"keepalive_timeout", o.keepalive_timeout}}) {
    if (value < absl::ZeroDuration() || value > max_age) {
      return absl::InvalidArgumentError(
          absl::StrCat("--", flag, " must be in [0, 24 days], got ", absl::FormatDuration(value)));
    }
  }
  for (absl::Status s : {
           at_least("threads", o.threads, 0),
           at_least("max_queue", o.max_queue, 0),
           at_least("math_threads", o.math_threads, 0),
           at_least("max_math_queue", o.max_math_queue, 0),
           at_least("max_sessions", o.max_sessions, 1),
           at_least("max_connections", o.max_connections, 0),
           at_least("max_batch", o.limits.max_batch, 1),
           at_least("max_chunk_steps", o.limits.max_chunk_steps, 1),
           at_least("max_unary_length", o.limits.max_unary_length, 1),
           at_least("max_message_bytes", o.limits.max_message_bytes, 1024),
       }) {
    if (!s.ok()) return s;
  }
  // gRPC takes the message size as an int; chunks run with an int step count.
  if (o.limits.max_message_bytes > INT_MAX) {
    return absl::InvalidArgumentError(absl::StrCat("--max_message_bytes must be <= ", INT_MAX,
                                                   ", got ", o.limits.max_message_bytes));
  }
  if (o.limits.max_chunk_steps > INT_MAX || o.limits.max_unary_length > INT_MAX) {
    return absl::InvalidArgumentError(
        absl::StrCat("--max_chunk_steps and --max_unary_length must be <= ", INT_MAX));
  }
  if (o.threads > 0 && o.math_threads > o.threads) {
    return absl::InvalidArgumentError(absl::StrCat("--math_threads must be <= --threads (",
                                                   o.threads, "), got ", o.math_threads));
  }
  if (o.session_ttl <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError(
        absl::StrCat("--session_ttl must be > 0, got ", absl::FormatDuration(o.session_ttl)));
  }
  return absl::OkStatus();
}

SsmServer::SsmServer(ServerOptions options) : options_(std::move(options)) {}

absl::StatusOr<std::unique_ptr<SsmServer>> SsmServer::Start(ServerOptions options,
                                                            LoadedRepository repository) {
  if (absl::Status s = ValidateServerOptions(options); !s.ok()) return s;
  std::unique_ptr<SsmServer> self(new SsmServer(std::move(options)));
  const ServerOptions& o = self->options_;

  self->metrics_ = std::make_unique<Metrics>();
  self->catalog_ = std::make_unique<ModelCatalog>(std::move(repository));
  SessionManager::Options session_options;
  session_options.max_sessions = o.max_sessions;
  session_options.ttl = o.session_ttl;
  if (o.clock) session_options.clock = o.clock;
  self->sessions_ = std::make_unique<SessionManager>(std::move(session_options));
  // One count for both the workers and the core's parallel loops: the
  // CPUs this server may use, not the node's.
  const int threads = o.threads > 0 ? o.threads : ssm::DefaultThreads();
  if (absl::Status s = ssm::SetThreads(threads); !s.ok()) return s;
  const int math_threads = o.math_threads > 0 ? o.math_threads : std::max(1, threads / 2);
  self->pool_ = std::make_unique<WorkerPool>(threads, o.max_queue, math_threads, o.max_math_queue);
  self->metrics_->SetModels(self->catalog_->loaded_versions(), self->catalog_->failed_models());
  self->metrics_->SetSampler([server = self.get(), sessions = self->sessions_.get(),
                              pool = self->pool_.get(), catalog = self->catalog_.get()] {
    const SessionManager::Stats stats = sessions->GetStats();
    Metrics::Sampled s;
    s.sessions_attached = stats.attached;
    s.sessions_detached = stats.detached;
    s.session_state_bytes = stats.state_bytes;
    s.session_evictions_total = stats.evicted_total;
    s.worker_threads = pool->threads();
    s.core_threads = ssm::Threads();
    if (const ConnectionGuard* guard = server->connections_.get()) {
      s.connections_open = guard->open();
      s.connections_closed_over_limit_total = guard->closed_over_limit();
    }
    s.process = ReadProcessStats();
    s.worker_queue_depth = pool->queued();
    s.worker_rejections_total = pool->rejected();
    const ssm::ConvMode::CacheStats cache = catalog->KernelCacheTotals();
    s.kernel_cache_hits_total = cache.hits;
    s.kernel_cache_misses_total = cache.misses;
    s.kernel_cache_bytes = cache.spectra_bytes;
    return s;
  });

  self->env_.catalog = self->catalog_.get();
  self->env_.sessions = self->sessions_.get();
  self->env_.pool = self->pool_.get();
  self->env_.metrics = self->metrics_.get();
  self->env_.limits = o.limits;
  self->env_.draining = &self->draining_;
  self->env_.calls = &self->calls_;
  self->inference_ = std::make_unique<InferenceService>(&self->env_);
  self->math_ = std::make_unique<MathService>(&self->env_);

  // Both are process-wide switches read by the next BuildAndStart.
  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  // gRPC sets SO_REUSEPORT by default, which lets a second server bind the
  // same port and silently take half the connections: make it an error.
  builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);
  builder.AddListeningPort(o.address, grpc::InsecureServerCredentials(), &self->port_);
  if (o.max_connection_age > absl::ZeroDuration()) {
    builder.AddChannelArgument(GRPC_ARG_MAX_CONNECTION_AGE_MS,
                               static_cast<int>(absl::ToInt64Milliseconds(o.max_connection_age)));
    builder.AddChannelArgument(
        GRPC_ARG_MAX_CONNECTION_AGE_GRACE_MS,
        static_cast<int>(absl::ToInt64Milliseconds(o.max_connection_age_grace)));
  }
  auto milliseconds = [](absl::Duration d) {
    return static_cast<int>(absl::ToInt64Milliseconds(d));
  };
  if (o.max_connection_idle > absl::ZeroDuration()) {
    builder.AddChannelArgument(GRPC_ARG_MAX_CONNECTION_IDLE_MS,
                               milliseconds(o.max_connection_idle));
  }
  if (o.keepalive_time > absl::ZeroDuration()) {
    builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_TIME_MS, milliseconds(o.keepalive_time));
    builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, milliseconds(o.keepalive_timeout));
  }
  builder.SetMaxReceiveMessageSize(static_cast<int>(o.limits.max_message_bytes));
  builder.SetMaxSendMessageSize(static_cast<int>(o.limits.max_message_bytes));
  builder.RegisterService(self->inference_.get());
  builder.RegisterService(self->math_.get());
  self->server_ = builder.BuildAndStart();
  if (self->server_ == nullptr || self->port_ == 0) {
    if (self->server_ != nullptr) self->server_->Shutdown();
    self->shut_down_ = true;
    return absl::UnavailableError(
        absl::StrCat("cannot listen on ", o.address, " (in use, or not a local address?)"));
  }

  grpc::HealthCheckServiceInterface* health = self->server_->GetHealthCheckService();
  if (health != nullptr) {
    health->SetServingStatus("", true);
    health->SetServingStatus("ssm.v1.Inference", true);
    health->SetServingStatus("ssm.v1.Math", true);
    for (const ModelListing& model : self->catalog_->List()) {
      health->SetServingStatus(absl::StrCat("ssm.v1.Inference/", model.name),
                               !model.versions.empty());
    }
  }

  ConnectionGuard::Options guard;
  guard.port = self->port_;
  guard.max_connections = o.max_connections;
  self->connections_ = std::make_unique<ConnectionGuard>(guard);

  if (!o.metrics_address.empty()) {
    try {
      self->exposer_ = std::make_unique<prometheus::Exposer>(o.metrics_address);
      self->exposer_->RegisterCollectable(self->metrics_->collectable());
      const std::vector<int> ports = self->exposer_->GetListeningPorts();
      self->metrics_port_ = ports.empty() ? 0 : ports.front();
    } catch (const std::exception& e) {
      self->Shutdown(absl::ZeroDuration());
      return absl::UnavailableError(
          absl::StrCat("cannot serve metrics on ", o.metrics_address, ": ", e.what()));
    }
  }

  self->eviction_thread_ = std::thread([server = self.get()] { server->EvictionLoop(); });
  return self;
}

SsmServer::~SsmServer() { Shutdown(absl::ZeroDuration()); }

void SsmServer::BeginDrain() {
  if (draining_.exchange(true)) return;
  if (server_ != nullptr) {
    if (grpc::HealthCheckServiceInterface* health = server_->GetHealthCheckService()) {
      health->SetServingStatus(false);  // every name, "" included
    }
  }
  const SessionManager::Stats stats = sessions_->GetStats();
  Logf(
      "draining: health NOT_SERVING, refusing new calls; %d streams attached, %d sessions "
      "detached",
      stats.attached, stats.detached);
}

void SsmServer::Shutdown(absl::Duration grace) {
  if (shut_down_) return;
  shut_down_ = true;
  BeginDrain();
  // Keep listening while the running calls finish: gRPC's Shutdown would
  // close the listener and send GOAWAY at once, and then nobody could see
  // the NOT_SERVING health or the "draining" answers. New calls in this
  // window are refused at once, so they do not hold the drain up.
  const absl::Time deadline = absl::Now() + grace;
  const bool idle = calls_.WaitForIdle(deadline);
  Logf("drain: %s", idle ? "every call finished"
                         : absl::StrCat(calls_.running(),
                                        " calls still running at the "
                                        "deadline: cancelling them"));
  // Blocks until every call has finished, cancelling those still running
  // (none when idle) at once. The workers must keep running meanwhile:
  // they finish the calls whose jobs they hold.
  server_->Shutdown(absl::ToChronoTime(absl::Now()));
  stop_eviction_.Notify();
  if (eviction_thread_.joinable()) eviction_thread_.join();
  pool_->Shutdown();
  exposer_.reset();
  connections_.reset();
}

void SsmServer::EvictionLoop() {
  // Lookups already refuse expired sessions on the spot; this sweep frees
  // the ones nobody asks about, and counts them, promptly.
  const absl::Duration period =
      std::clamp(options_.session_ttl / 10, absl::Milliseconds(10), absl::Seconds(1));
  while (!stop_eviction_.WaitForNotificationWithTimeout(period)) sessions_->EvictExpired();
}

}  // namespace ssm::server
