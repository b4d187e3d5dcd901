#include "server/ssm_server.h"

#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/generic/async_generic_service.h>
#include <grpcpp/health_check_service_interface.h>
#include <grpcpp/impl/server_builder_option.h>
#include <grpcpp/security/server_credentials.h>
#include <grpcpp/security/tls_certificate_provider.h>
#include <grpcpp/security/tls_credentials_options.h>
#include <grpcpp/server_builder.h>

#include <algorithm>
#include <climits>
#include <exception>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "absl/time/clock.h"
#include "prometheus/exposer.h"
#include "server/echo.h"
#include "server/log.h"
#include "ssm/file_io.h"
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
           at_least("http_threads", o.http_threads, 1),
           at_least("max_batch", o.limits.max_batch, 1),
           at_least("max_chunk_steps", o.limits.max_chunk_steps, 1),
           at_least("max_unary_length", o.limits.max_unary_length, 1),
           at_least("max_math_work", o.limits.max_math_work, 1),
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
  if (o.step_batch_window < absl::ZeroDuration() || o.step_batch_window > absl::Seconds(1)) {
    return absl::InvalidArgumentError(absl::StrCat("--step_batch_window must be in [0, 1s], got ",
                                                   absl::FormatDuration(o.step_batch_window)));
  }
  if (o.step_batch_max < 1 || o.step_batch_max > 4096) {
    return absl::InvalidArgumentError(
        absl::StrCat("--step_batch_max must be in [1, 4096], got ", o.step_batch_max));
  }
  if (const std::optional<std::string> path = UnixSocketPath(o.address)) {
    // gRPC would take "unix:" without a path for a TCP host named "unix",
    // and cuts nothing: say what is wrong before it does something else.
    if (path->empty() || *path == absl::string_view("\0", 1)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "--address=", Echo(o.address), " names no socket path (e.g. unix:/run/ssm/ssm.sock)"));
    }
    if (path->size() > kMaxUnixSocketPath) {
      return absl::InvalidArgumentError(absl::StrCat("--address: a Unix socket's path is at most ",
                                                     kMaxUnixSocketPath, " bytes, got ",
                                                     path->size(), " (", Echo(*path), ")"));
    }
  }
  if (o.session_ttl <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError(
        absl::StrCat("--session_ttl must be > 0, got ", absl::FormatDuration(o.session_ttl)));
  }
  const ServerOptions::Tls& tls = o.tls;
  if (tls.cert_file.empty() != tls.key_file.empty()) {
    return absl::InvalidArgumentError("--tls_cert and --tls_key go together: set both or neither");
  }
  if (tls.cert_file.empty() &&
      (!tls.client_ca_file.empty() || tls.client_auth != ServerOptions::Tls::ClientAuth::kNone)) {
    return absl::InvalidArgumentError(
        "--tls_client_ca and --tls_client_auth need TLS: set --tls_cert and --tls_key");
  }
  if ((tls.client_auth != ServerOptions::Tls::ClientAuth::kNone) != !tls.client_ca_file.empty()) {
    return absl::InvalidArgumentError(
        "--tls_client_auth=request or require needs --tls_client_ca (the roots client "
        "certificates must chain to), and --tls_client_ca needs one of them");
  }
  if (!tls.cert_file.empty() && (tls.refresh < absl::Seconds(1) || tls.refresh > absl::Hours(24))) {
    return absl::InvalidArgumentError("--tls_refresh must be in [1s, 24h]");
  }
  if (!o.session_store.empty()) {
    if (o.session_lease < absl::Seconds(1)) {
      return absl::InvalidArgumentError("--session_lease must be >= 1s");
    }
    if (o.session_checkpoint <= absl::ZeroDuration() || o.session_checkpoint > o.session_ttl / 2) {
      return absl::InvalidArgumentError(
          "--session_checkpoint must be > 0 and at most half of --session_ttl");
    }
    if (o.session_store_timeout <= absl::ZeroDuration()) {
      return absl::InvalidArgumentError("--session_store_timeout must be > 0");
    }
  } else if (o.session_store_required) {
    return absl::InvalidArgumentError("--session_store_required needs --session_store");
  }
  if (o.auth_refresh <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError("--auth_refresh must be > 0");
  }
  for (absl::Status s : {at_least("quota_calls", o.quota_calls, 0),
                         at_least("quota_sessions", o.quota_sessions, 0)}) {
    if (!s.ok()) return s;
  }
  if ((o.quota_calls > 0 || o.quota_sessions > 0) && o.auth_callers.empty()) {
    return absl::InvalidArgumentError(
        "--quota_calls and --quota_sessions are per caller: they need --auth_callers");
  }
  return absl::OkStatus();
}

std::optional<std::string> UnixSocketPath(absl::string_view address) {
  if (absl::ConsumePrefix(&address, "unix-abstract:")) {
    return absl::StrCat(absl::string_view("\0", 1), address);
  }
  if (absl::ConsumePrefix(&address, "unix://")) return std::string(address);
  if (absl::ConsumePrefix(&address, "unix:")) return std::string(address);
  return std::nullopt;
}

bool IsLoopback(absl::string_view address) {
  if (UnixSocketPath(address).has_value()) return true;
  const absl::string_view host = address.substr(0, address.rfind(':'));
  return host == "127.0.0.1" || host == "localhost" || host == "[::1]" ||
         absl::StartsWith(host, "127.");
}

namespace {

// Removes server reflection from a builder: the health-only server must
// serve nothing else, and --reflection=false turns it off on the main one.
// (Reflection is a process-wide builder plugin in gRPC 1.51; a builder
// option is the way to drop it from one server.)
class WithoutReflection final : public grpc::ServerBuilderOption {
 public:
  void UpdateArguments(grpc::ChannelArguments* /*args*/) override {}
  void UpdatePlugins(std::vector<std::unique_ptr<grpc::ServerBuilderPlugin>>* plugins) override {
    plugins->erase(
        std::remove_if(plugins->begin(), plugins->end(),
                       [](const std::unique_ptr<grpc::ServerBuilderPlugin>& p) {
                         return dynamic_cast<grpc::reflection::ProtoServerReflectionPlugin*>(
                                    p.get()) != nullptr;
                       }),
        plugins->end());
  }
};

// What the health-only server answers for every method but Health's: gRPC
// needs a service on a server with no completion queue, and the answer
// should say where the rest is.
class HealthOnly final : public grpc::CallbackGenericService {
 public:
  grpc::ServerGenericBidiReactor* CreateReactor(
      grpc::GenericCallbackServerContext* /*context*/) override {
    class Refuse final : public grpc::ServerGenericBidiReactor {
     public:
      Refuse() {
        Finish(grpc::Status(grpc::StatusCode::UNIMPLEMENTED,
                            "this port serves grpc.health.v1.Health only; call the main port"));
      }
      void OnDone() override { delete this; }
    };
    return new Refuse;
  }
};

// The main port's credentials: TLS from files (re-read on change) or
// plaintext.
std::shared_ptr<grpc::ServerCredentials> Credentials(const ServerOptions::Tls& tls) {
  if (tls.cert_file.empty()) return grpc::InsecureServerCredentials();
  const unsigned refresh = static_cast<unsigned>(absl::ToInt64Seconds(tls.refresh));
  auto provider = std::make_shared<grpc::experimental::FileWatcherCertificateProvider>(
      tls.key_file, tls.cert_file, tls.client_ca_file, refresh);
  grpc::experimental::TlsServerCredentialsOptions options(provider);
  options.watch_identity_key_cert_pairs();
  if (!tls.client_ca_file.empty()) options.watch_root_certs();
  switch (tls.client_auth) {
    case ServerOptions::Tls::ClientAuth::kNone:
      options.set_cert_request_type(GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE);
      break;
    case ServerOptions::Tls::ClientAuth::kRequest:
      options.set_cert_request_type(GRPC_SSL_REQUEST_CLIENT_CERTIFICATE_AND_VERIFY);
      break;
    case ServerOptions::Tls::ClientAuth::kRequire:
      options.set_cert_request_type(GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY);
      break;
  }
  return grpc::experimental::TlsServerCredentials(options);
}

// The certificate files must be readable now: the provider would only log
// its failures and serve no handshake at all.
absl::Status CheckTlsFiles(const ServerOptions::Tls& tls) {
  for (const auto& [flag, path] : {std::pair{"--tls_cert", tls.cert_file},
                                   {"--tls_key", tls.key_file},
                                   {"--tls_client_ca", tls.client_ca_file}}) {
    if (path.empty()) continue;
    absl::StatusOr<std::string> text = ssm::ReadFileToString(path);
    if (!text.ok())
      return absl::Status(text.status().code(), absl::StrCat(flag, ": ", text.status().message()));
    if (text->find("-----BEGIN ") == std::string::npos) {
      return absl::InvalidArgumentError(absl::StrCat(flag, ": ", path, " holds no PEM block"));
    }
  }
  return absl::OkStatus();
}

}  // namespace

SsmServer::SsmServer(ServerOptions options) : options_(std::move(options)) {}

absl::StatusOr<std::unique_ptr<SsmServer>> SsmServer::Start(ServerOptions options,
                                                            LoadedRepository repository) {
  if (absl::Status s = ValidateServerOptions(options); !s.ok()) return s;
  std::unique_ptr<SsmServer> self(new SsmServer(std::move(options)));
  const ServerOptions& o = self->options_;

  if (absl::Status s = CheckTlsFiles(o.tls); !s.ok()) return s;
  Authorizer::Options auth_options;
  auth_options.callers_path = o.auth_callers;
  auth_options.refresh = o.auth_refresh;
  auth_options.quota_calls = o.quota_calls;
  auth_options.quota_sessions = o.quota_sessions;
  absl::StatusOr<std::unique_ptr<Authorizer>> auth = Authorizer::Create(std::move(auth_options));
  if (!auth.ok()) return auth.status();
  self->auth_ = *std::move(auth);
  if (!o.snapshot_keys.empty()) {
    absl::StatusOr<std::unique_ptr<SnapshotSigner>> signer =
        SnapshotSigner::Create(o.snapshot_keys, o.auth_refresh);
    if (!signer.ok()) return signer.status();
    self->signer_ = *std::move(signer);
  }

  self->metrics_ = std::make_unique<Metrics>();
  self->catalog_ = std::make_unique<ModelCatalog>(std::move(repository));
  SessionManager::Options session_options;
  session_options.max_sessions = o.max_sessions;
  session_options.quota_sessions = o.quota_sessions;
  session_options.signer = self->signer_.get();
  if (!o.session_store.empty()) {
    absl::StatusOr<std::unique_ptr<SessionStore>> store =
        OpenRedisStore(o.session_store, o.session_store_timeout);
    if (!store.ok()) return store.status();
    self->store_ = *std::move(store);
    session_options.store = self->store_.get();
    session_options.lease = o.session_lease;
    session_options.checkpoint_interval = o.session_checkpoint;
  }
  session_options.ttl = o.session_ttl;
  if (o.clock) session_options.clock = o.clock;
  self->sessions_ = std::make_unique<SessionManager>(std::move(session_options));
  self->sequences_ =
      std::make_unique<SequenceTable>(self->catalog_.get(), self->sessions_.get(), o.limits);
  // One count for both the workers and the core's parallel loops: the
  // CPUs this server may use, not the node's.
  const int threads = o.threads > 0 ? o.threads : ssm::DefaultThreads();
  if (absl::Status s = ssm::SetThreads(threads); !s.ok()) return s;
  const int math_threads = o.math_threads > 0 ? o.math_threads : std::max(1, threads / 2);
  self->pool_ = std::make_unique<WorkerPool>(threads, o.max_queue, math_threads, o.max_math_queue);
  if (o.step_batch_window > absl::ZeroDuration()) {
    StepBatcher::Options batching;
    batching.window = o.step_batch_window;
    batching.max_batch = o.step_batch_max;
    self->batcher_ = std::make_unique<StepBatcher>(batching);
  }
  self->metrics_->SetModels(self->catalog_->loaded_versions(), self->catalog_->failed_models());
  self->metrics_->SetSampler([server = self.get(), sessions = self->sessions_.get(),
                              pool = self->pool_.get(), catalog = self->catalog_.get()] {
    const SessionManager::Stats stats = sessions->GetStats();
    Metrics::Sampled s;
    s.sessions_attached = stats.attached;
    s.sessions_detached = stats.detached;
    s.session_state_bytes = stats.state_bytes;
    s.session_evictions_total = stats.evicted_total;
    s.session_store = sessions->options().store != nullptr;
    s.sessions_unsaved = stats.unsaved;
    s.session_store_writes_total = stats.store_writes_total;
    s.session_store_bytes_total = stats.store_bytes_total;
    s.session_store_errors_total = stats.store_errors_total;
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
    if (const StepBatcher* batcher = server->batcher_.get()) {
      const StepBatcher::Stats b = batcher->stats();
      s.step_batches_total = b.passes;
      s.step_batch_chunks_total = b.chunks;
      s.step_batches_inline_total = b.inline_passes;
    }
    return s;
  });

  self->env_.catalog = self->catalog_.get();
  self->env_.sessions = self->sessions_.get();
  self->env_.pool = self->pool_.get();
  self->env_.metrics = self->metrics_.get();
  self->env_.limits = o.limits;
  self->env_.draining = &self->draining_;
  self->env_.calls = &self->calls_;
  self->env_.auth = self->auth_.get();
  self->env_.sequences = self->sequences_.get();
  self->env_.batcher = self->batcher_.get();
  self->inference_ = std::make_unique<InferenceService>(&self->env_);
  self->math_ = std::make_unique<MathService>(&self->env_);
  self->oip_ = std::make_unique<OipService>(&self->env_);

  // Both are process-wide switches read by the next BuildAndStart.
  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  // gRPC sets SO_REUSEPORT by default, which lets a second server bind the
  // same port and silently take half the connections: make it an error.
  builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);
  builder.AddListeningPort(o.address, Credentials(o.tls), &self->port_);
  if (!o.reflection) builder.SetOption(std::make_unique<WithoutReflection>());
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
  builder.RegisterService(self->oip_.get());  // the Open Inference Protocol
  self->server_ = builder.BuildAndStart();
  if (self->server_ == nullptr || self->port_ == 0) {
    if (self->server_ != nullptr) self->server_->Shutdown();
    self->shut_down_ = true;
    return absl::UnavailableError(
        absl::StrCat("cannot listen on ", o.address, " (in use, or not a local address?)"));
  }

  if (!o.health_address.empty()) {
    // Plaintext, and nothing but grpc.health.v1.Health: no service of ours
    // is registered and reflection is dropped.
    grpc::ServerBuilder health_builder;
    health_builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);
    health_builder.AddListeningPort(o.health_address, grpc::InsecureServerCredentials(),
                                    &self->health_port_);
    health_builder.SetOption(std::make_unique<WithoutReflection>());
    self->health_only_ = std::make_unique<HealthOnly>();
    health_builder.RegisterCallbackGenericService(self->health_only_.get());
    self->health_server_ = health_builder.BuildAndStart();
    if (self->health_server_ == nullptr || self->health_port_ == 0) {
      self->Shutdown(absl::ZeroDuration());
      return absl::UnavailableError(
          absl::StrCat("cannot listen on --health_address=", o.health_address));
    }
  }
  if (!o.http_address.empty()) {
    OipHttpServer::Options http;
    http.address = o.http_address;
    http.threads = o.http_threads;
    http.cert_file = o.tls.cert_file;
    http.key_file = o.tls.key_file;
    http.client_ca_file = o.tls.client_ca_file;
    using Auth = ServerOptions::Tls::ClientAuth;
    using HttpAuth = OipHttpServer::Options::ClientAuth;
    http.client_auth = o.tls.client_auth == Auth::kRequire   ? HttpAuth::kRequire
                       : o.tls.client_auth == Auth::kRequest ? HttpAuth::kRequest
                                                             : HttpAuth::kNone;
    http.tls_refresh = o.tls.refresh;
    absl::StatusOr<std::unique_ptr<OipHttpServer>> server =
        OipHttpServer::Start(std::move(http), &self->env_);
    if (!server.ok()) {
      self->Shutdown(absl::ZeroDuration());
      return server.status();
    }
    self->http_ = *std::move(server);
  }
  self->SetHealth("", true);
  self->SetHealth("ssm.v1.Inference", true);
  self->SetHealth("ssm.v1.Math", true);
  self->SetHealth("inference.GRPCInferenceService", true);
  for (const ModelListing& model : self->catalog_->List()) {
    self->SetHealth(absl::StrCat("ssm.v1.Inference/", model.name), !model.versions.empty());
  }

  ConnectionGuard::Options guard;
  guard.port = self->port_;
  guard.unix_path = UnixSocketPath(o.address).value_or("");
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

  self->eviction_thread_ = std::thread([server = self.get()] {
    ssm::NameThisThread("ssm-evict");
    server->EvictionLoop();
  });
  return self;
}

SsmServer::~SsmServer() { Shutdown(absl::ZeroDuration()); }

void SsmServer::SetHealth(const std::string& name, bool serving) {
  for (grpc::Server* server : {server_.get(), health_server_.get()}) {
    if (server == nullptr) continue;
    if (grpc::HealthCheckServiceInterface* health = server->GetHealthCheckService()) {
      health->SetServingStatus(name, serving);
    }
  }
}

void SsmServer::BeginDrain() {
  if (draining_.exchange(true)) return;
  for (grpc::Server* server : {server_.get(), health_server_.get()}) {
    if (server == nullptr) continue;
    if (grpc::HealthCheckServiceInterface* health = server->GetHealthCheckService()) {
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
  if (health_server_ != nullptr) health_server_->Shutdown(absl::ToChronoTime(absl::Now()));
  // Every stream has finished, so nothing is gathered any more.
  if (batcher_ != nullptr) batcher_->Shutdown();
  // Before the workers stop: a REST request still running waits for its job.
  if (http_ != nullptr) http_->Stop();
  stop_eviction_.Notify();
  if (eviction_thread_.joinable()) eviction_thread_.join();
  // The streams have detached: every session this replica held goes to the
  // store (its last state, its lease released) so another replica can take
  // it over by id. Bounded, like the rest of the drain.
  if (store_ != nullptr) {
    const bool all = sessions_->FlushAll(absl::Now() + std::max(grace, absl::Seconds(2)));
    Logf("drain: %s", all ? "every session written to the session store"
                          : "some sessions could not be written to the session store");
  }
  pool_->Shutdown();
  exposer_.reset();
  connections_.reset();
}

void SsmServer::EvictionLoop() {
  // Lookups already refuse expired sessions on the spot; this sweep frees
  // the ones nobody asks about, and counts them, promptly.
  const absl::Duration period =
      std::clamp(options_.session_ttl / 10, absl::Milliseconds(10), absl::Seconds(1));
  bool serving = true;
  while (!stop_eviction_.WaitForNotificationWithTimeout(period)) {
    sessions_->EvictExpired();
    if (options_.session_store_required && !draining()) {
      // The store is required: health says whether it answers.
      const bool healthy = sessions_->GetStats().store_healthy;
      if (healthy != serving) {
        serving = healthy;
        SetHealth("", serving);
        Logf("health %s: the session store %s", serving ? "SERVING" : "NOT_SERVING",
             serving ? "answers again" : "fails and --session_store_required is set");
      }
    }
  }
}

}  // namespace ssm::server
