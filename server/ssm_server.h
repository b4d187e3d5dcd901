// ssm_server assembled: the model catalog, the session manager, the worker
// pool, the Inference and Math services, grpc.health.v1.Health, server
// reflection and the Prometheus exposer, with a graceful drain.
// ssm_server_main.cc turns flags into ServerOptions; tests start one
// in-process on 127.0.0.1:0.
//
// Health service names (grpc.health.v1.Health/Check and Watch):
//   ""                           the server as a whole
//   "ssm.v1.Inference", "ssm.v1.Math"
//   "ssm.v1.Inference/<model>"   each model of the repository: SERVING if
//                                at least one version loaded, NOT_SERVING
//                                if it failed
// Every name turns NOT_SERVING when the drain begins.
//
// Drain (Shutdown): health flips to NOT_SERVING and new calls and new
// streams get UNAVAILABLE "server is draining", while the server keeps
// listening and answering (so health checkers and clients on existing
// connections see both), until the running calls (open streams included)
// are done or the grace period ends. Then gRPC's shutdown closes the
// listener and cancels what is left (streams detach their sessions, which
// die with the process), the workers finish the jobs they hold, and
// Shutdown returns.
//
// Thread safety: Start and Shutdown from one thread; the accessors and
// BeginDrain from any.

#ifndef SSM_SERVER_SSM_SERVER_H_
#define SSM_SERVER_SSM_SERVER_H_

#include <grpcpp/generic/async_generic_service.h>
#include <grpcpp/server.h>

#include <atomic>
#include <memory>
#include <optional>
#include <string>
#include <thread>

#include "absl/status/statusor.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "server/auth.h"
#include "server/connection_guard.h"
#include "server/metrics.h"
#include "server/model_catalog.h"
#include "server/model_repository.h"
#include "server/oip_http.h"
#include "server/oip_service.h"
#include "server/sequences.h"
#include "server/services.h"
#include "server/session_manager.h"
#include "server/snapshot_keys.h"
#include "server/step_batcher.h"
#include "server/worker_pool.h"

namespace prometheus {
class Exposer;
}  // namespace prometheus

namespace ssm::server {

struct ServerOptions {
  std::string address = "127.0.0.1:50051";  // host:port; port 0 picks a free one
  // Workers, and the core's parallel loops (ssm::SetThreads, process-wide);
  // 0: ssm::DefaultThreads(), the CPUs this process may use.
  int threads = 0;
  int max_queue = 256;  // jobs waiting for a worker
  // Streams' short chunks of one model and batch that arrive within this
  // window are stepped together, at most step_batch_max of them
  // (step_batcher.h); zero: every chunk runs on its own. Passes of 16
  // rather than 64 let answers leave while later chunks still arrive
  // (docs/DESIGN.md §3.5 has the figures).
  absl::Duration step_batch_window = absl::Microseconds(250);
  int step_batch_max = 16;
  // Math's share: workers that may run Math jobs at once (0: half of
  // `threads`, at least 1) and Math jobs that may wait.
  int math_threads = 0;
  int max_math_queue = 16;
  int max_sessions = 1024;
  absl::Duration session_ttl = absl::Minutes(5);
  // Connections older than this get a GOAWAY (then `grace` to finish their
  // calls), so clients reconnect and long-lived connections rebalance across
  // replicas. Zero: never.
  absl::Duration max_connection_age = absl::ZeroDuration();
  absl::Duration max_connection_age_grace = absl::ZeroDuration();
  // Connections held at once; past it the newest are closed
  // (connection_guard.h). 0: no cap.
  int max_connections = 0;
  // A connection with no call for this long is closed (gRPC's
  // max_connection_idle). Zero: never.
  absl::Duration max_connection_idle = absl::ZeroDuration();
  // The server pings a connection quiet for keepalive_time and closes it if
  // no answer comes within keepalive_timeout (a peer that vanished without
  // closing). Zero keepalive_time: gRPC's default (2 hours).
  absl::Duration keepalive_time = absl::ZeroDuration();
  absl::Duration keepalive_timeout = absl::Seconds(20);
  RequestLimits limits;

  // Transport security. cert_file empty: plaintext (the default, for
  // loopback). Certificates and keys are re-read when their files change
  // (`refresh`): rotation needs no restart.
  struct Tls {
    enum class ClientAuth { kNone, kRequest, kRequire };
    std::string cert_file;       // the server's certificate chain (PEM)
    std::string key_file;        // its private key (PEM)
    std::string client_ca_file;  // roots that client certificates must chain to
    ClientAuth client_auth = ClientAuth::kNone;
    absl::Duration refresh = absl::Seconds(10);
  } tls;
  // "host:port" of a plaintext server that serves grpc.health.v1.Health
  // only (Kubernetes' gRPC probes cannot speak TLS); empty: none.
  std::string health_address;
  bool reflection = true;
  // Callers and their scopes (auth.h); empty: no authentication.
  std::string auth_callers;
  absl::Duration auth_refresh = absl::Seconds(5);
  int quota_calls = 0;     // per principal, with auth_callers; 0: none
  int quota_sessions = 0;  // per principal, with auth_callers; 0: none
  // Snapshot signing keys (snapshot_keys.h); empty: unsigned snapshots.
  std::string snapshot_keys;
  // "host:port" of the Open Inference Protocol's REST port (oip_http.h),
  // HTTPS with `tls`'s files when TLS is on; empty: none. `http_threads`:
  // connections it serves at once.
  std::string http_address;
  int http_threads = 8;

  // Durable sessions: "redis://[user:password@]host:port[/db]"; empty:
  // sessions live in this process only.
  std::string session_store;
  absl::Duration session_store_timeout = absl::Seconds(2);
  absl::Duration session_lease = absl::Seconds(10);
  absl::Duration session_checkpoint = absl::Seconds(1);
  // Health NOT_SERVING while the store fails (else sessions keep stepping
  // and the server stays SERVING).
  bool session_store_required = false;

  // "host:port" for the Prometheus exposer; empty: no metrics endpoint
  // (the metrics are still kept, see metrics()).
  std::string metrics_address;
  // The session manager's clock (tests inject one); null: absl::Now.
  SessionManager::Clock clock;
};

// InvalidArgument naming the flag when an option is out of range (Start
// checks this too; main calls it before loading any model).
absl::Status ValidateServerOptions(const ServerOptions& options);

// Whether an address is reachable from this machine only: "host:port" on
// loopback (127.0.0.0/8, ::1, localhost) or a Unix-domain socket.
// Plaintext elsewhere is worth a warning.
bool IsLoopback(absl::string_view address);

// The socket path of a Unix-domain address as gRPC spells them —
// "unix:PATH", "unix:///ABSOLUTE/PATH", or "unix-abstract:NAME" (Linux's
// abstract namespace: the path is a NUL byte, then NAME; empty when the
// address names none, which ValidateServerOptions refuses) — or nullopt
// for a TCP "host:port". A co-located client (a sidecar, an app on the same
// host) reaches the server there without TCP: a quarter to a third more
// steps/s for 64 lock-step streams (bench/README.md).
std::optional<std::string> UnixSocketPath(absl::string_view address);
// sockaddr_un's sun_path holds 108 bytes, a filesystem path's NUL included.
inline constexpr size_t kMaxUnixSocketPath = 107;

class SsmServer {
 public:
  // Starts serving `repository` (whatever loaded; failed models are listed
  // as such). Errors: Unavailable naming the address when it cannot be
  // bound (gRPC's or the exposer's); InvalidArgument for options out of
  // range.
  static absl::StatusOr<std::unique_ptr<SsmServer>> Start(ServerOptions options,
                                                          LoadedRepository repository);

  // Shuts down at once (no grace) if Shutdown has not run.
  ~SsmServer();

  SsmServer(const SsmServer&) = delete;
  SsmServer& operator=(const SsmServer&) = delete;

  // The gRPC port bound (the chosen one when the address asked for 0).
  int port() const { return port_; }
  // The metrics port bound, 0 without an exposer.
  int metrics_port() const { return metrics_port_; }
  // The health-only port bound, 0 without one.
  int health_port() const { return health_port_; }
  // The REST port bound, 0 without one.
  int http_port() const { return http_ != nullptr ? http_->port() : 0; }
  const ServerOptions& options() const { return options_; }
  const ModelCatalog& catalog() const { return *catalog_; }
  SessionManager& sessions() { return *sessions_; }
  const SessionManager& sessions() const { return *sessions_; }
  Metrics& metrics() { return *metrics_; }
  const WorkerPool& pool() const { return *pool_; }
  const ConnectionGuard& connections() const { return *connections_; }
  bool draining() const { return draining_.load(); }

  // Sets a health name on the main server and the health-only one.
  void SetHealth(const std::string& name, bool serving);

  // The drain's first half: health NOT_SERVING, new calls UNAVAILABLE.
  // Running calls are untouched. Idempotent.
  void BeginDrain();

  // BeginDrain, then waits up to `grace` for running calls, cancels the
  // rest and stops the workers and the exposer. Returns once every call
  // is done. Idempotent.
  void Shutdown(absl::Duration grace);

 private:
  explicit SsmServer(ServerOptions options);
  void EvictionLoop();

  const ServerOptions options_;
  std::atomic<bool> draining_{false};
  bool shut_down_ = false;
  int port_ = 0;
  int metrics_port_ = 0;
  int health_port_ = 0;

  // Declared in dependency order: destroyed in reverse, so nothing outlives
  // what it borrows.
  std::unique_ptr<Metrics> metrics_;
  std::unique_ptr<Authorizer> auth_;
  std::unique_ptr<SnapshotSigner> signer_;
  std::unique_ptr<ModelCatalog> catalog_;
  std::unique_ptr<SessionStore> store_;
  std::unique_ptr<SessionManager> sessions_;
  std::unique_ptr<SequenceTable> sequences_;
  std::unique_ptr<WorkerPool> pool_;
  std::unique_ptr<StepBatcher> batcher_;
  CallCounter calls_;
  ServiceEnv env_;
  std::unique_ptr<InferenceService> inference_;
  std::unique_ptr<MathService> math_;
  std::unique_ptr<OipService> oip_;
  std::unique_ptr<grpc::Server> server_;
  std::unique_ptr<grpc::CallbackGenericService> health_only_;
  std::unique_ptr<grpc::Server> health_server_;
  std::unique_ptr<OipHttpServer> http_;
  std::unique_ptr<ConnectionGuard> connections_;  // read by the exposer's scrapes
  std::unique_ptr<prometheus::Exposer> exposer_;
  absl::Notification stop_eviction_;
  std::thread eviction_thread_;
};

}  // namespace ssm::server

#endif  // SSM_SERVER_SSM_SERVER_H_
