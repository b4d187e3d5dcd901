// ssm_server: serves the model repository over gRPC (server/README.md).
//
//   ssm_server [--address=127.0.0.1:50051] [--model_repository=models] ...
//
// Runs until SIGTERM or SIGINT, then drains (ssm_server.h) and exits 0.
// Exits 1 when it cannot start: bad flags, no repository, address in use.

#include <signal.h>

#include <cstdint>
#include <cstdio>
#include <string>
#include <thread>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "server/log.h"
#include "server/model_repository.h"
#include "server/ssm_server.h"

ABSL_FLAG(std::string, address, "127.0.0.1:50051",
          "host:port to serve gRPC on (loopback by default; 0.0.0.0:50051 for all interfaces), or "
          "unix:/path/ssm.sock for a Unix-domain socket (co-located clients)");
ABSL_FLAG(std::string, model_repository, "models",
          "model repository folder (<model>/config.pbtxt, <model>/<version>/weights.safetensors); "
          "relative paths are from the working directory");
ABSL_FLAG(int, metrics_port, 9464, "Prometheus metrics port (/metrics); 0 disables");
ABSL_FLAG(std::string, metrics_address, "127.0.0.1", "host the metrics port binds to");
ABSL_FLAG(int, threads, 0,
          "worker threads for model, session and kernel work, and the threads the core's "
          "parallel loops use; 0: the CPUs this process may use (its affinity, capped by a "
          "cgroup CPU quota)");
ABSL_FLAG(int, max_queue, 256,
          "jobs that may wait for a worker; past it calls get RESOURCE_EXHAUSTED (server busy)");
ABSL_FLAG(absl::Duration, step_batch_window, absl::Microseconds(250),
          "streams' short chunks of one model and batch that arrive within this window are "
          "stepped together (a chunk waits at most this long for company, and not at all "
          "when every stream it expects is in); 0: every chunk runs on its own");
ABSL_FLAG(int, step_batch_max, 16, "chunks stepped together at most (--step_batch_window)");
ABSL_FLAG(int, math_threads, 0,
          "workers that may run Math calls (BuildHippo, ComputeKernel) at once, so they never "
          "take every worker from inference; 0: half of --threads, at least 1");
ABSL_FLAG(int, max_math_queue, 16,
          "Math calls that may wait for a worker (their own queue); past it RESOURCE_EXHAUSTED");
ABSL_FLAG(int, max_sessions, 1024, "sessions held at once, attached and detached");
ABSL_FLAG(int64_t, max_chunk_steps, 16384, "time steps in one stream chunk");
ABSL_FLAG(int64_t, max_unary_length, 65536,
          "time steps in one Infer call (also caps ComputeKernel's length); models' own "
          "max_length applies too");
ABSL_FLAG(int64_t, max_math_work, 8'000'000'000,
          "a Math call's estimated work in multiply-adds (about 1e10 a second on one core); "
          "past it RESOURCE_EXHAUSTED before anything is built");
ABSL_FLAG(int64_t, max_message_bytes, 64 << 20, "largest gRPC message received or sent");
ABSL_FLAG(int, max_batch, 64, "streams (batch) in one call or session");
ABSL_FLAG(absl::Duration, session_ttl, absl::Minutes(5),
          "how long a detached session waits to be reattached before it is evicted");
ABSL_FLAG(absl::Duration, max_connection_age, absl::ZeroDuration(),
          "send GOAWAY to connections older than this so clients rebalance across "
          "replicas (0: never)");
ABSL_FLAG(absl::Duration, max_connection_age_grace, absl::Seconds(30),
          "after a GOAWAY from --max_connection_age, how long running calls may finish");
ABSL_FLAG(int, max_connections, 1000,
          "TCP connections held at once on the gRPC port; past it the newest are closed "
          "(0: no cap)");
ABSL_FLAG(absl::Duration, max_connection_idle, absl::Minutes(10),
          "close a connection that has had no call for this long (0: never)");
ABSL_FLAG(absl::Duration, keepalive_time, absl::Minutes(1),
          "ping a connection quiet for this long to find peers that vanished (0: gRPC's "
          "default, 2h)");
ABSL_FLAG(absl::Duration, keepalive_timeout, absl::Seconds(20),
          "close a pinged connection whose peer does not answer within this");
ABSL_FLAG(std::string, tls_cert, "",
          "server certificate chain (PEM): serve TLS instead of plaintext (with --tls_key); "
          "re-read when the file changes");
ABSL_FLAG(std::string, tls_key, "", "the server certificate's private key (PEM)");
ABSL_FLAG(std::string, tls_client_ca, "",
          "roots (PEM) that client certificates must chain to, for --tls_client_auth");
ABSL_FLAG(std::string, tls_client_auth, "none",
          "client certificates: none, request (verified when sent) or require (mTLS)");
ABSL_FLAG(absl::Duration, tls_refresh, absl::Seconds(10),
          "how often certificate and key files are checked for changes");
ABSL_FLAG(std::string, health_address, "",
          "host:port of a plaintext server that serves grpc.health.v1.Health only (for "
          "probes that cannot speak TLS); empty: none");
ABSL_FLAG(bool, reflection, true, "serve gRPC server reflection on the main port");
ABSL_FLAG(std::string, auth_callers, "",
          "callers file (JSON: principals, SHA-256 token hashes, certificate SANs, scopes); "
          "empty: no authentication. Re-read when it changes");
ABSL_FLAG(absl::Duration, auth_refresh, absl::Seconds(5),
          "how often --auth_callers and --snapshot_keys are checked for changes");
ABSL_FLAG(int, quota_calls, 0,
          "calls (and open streams) one caller may have in flight; 0: no quota (needs "
          "--auth_callers)");
ABSL_FLAG(int, quota_sessions, 0,
          "sessions one caller may hold, attached and detached; 0: no quota (needs "
          "--auth_callers)");
ABSL_FLAG(std::string, snapshot_keys, "",
          "snapshot signing keys (hex, one per line; the first signs, all verify): snapshots "
          "carry an HMAC-SHA256 and imports must; empty: unsigned snapshots");
ABSL_FLAG(std::string, session_store, "",
          "keep sessions in a store shared by replicas, redis://[user:password@]host:port[/db], "
          "so any replica continues a session by its id; empty: in this process only");
ABSL_FLAG(absl::Duration, session_checkpoint, absl::Seconds(1),
          "with --session_store: how often a session's state is written when it advanced");
ABSL_FLAG(absl::Duration, session_lease, absl::Seconds(10),
          "with --session_store: a replica's hold on a session, renewed while attached; a "
          "replica that died gives its sessions up after this");
ABSL_FLAG(absl::Duration, session_store_timeout, absl::Seconds(2),
          "with --session_store: how long one store command may take");
ABSL_FLAG(bool, session_store_required, false,
          "health NOT_SERVING while the session store fails (default: keep serving; sessions "
          "step on and writes retry)");
ABSL_FLAG(std::string, http_address, "",
          "host:port of the Open Inference Protocol's REST port (KServe v2 over HTTP; HTTPS "
          "with --tls_cert/--tls_key); empty: off. The gRPC binding is always on --address");
ABSL_FLAG(int, http_threads, 8, "REST connections served at once (more wait in a queue)");
ABSL_FLAG(absl::Duration, drain_timeout, absl::Seconds(20),
          "on SIGTERM/SIGINT, how long running calls may take before they are cancelled");

namespace {

using ssm::server::Logf;

std::string PlaintextWarning(const std::string& address) {
  return absl::StrCat("WARNING: plaintext gRPC on ", address,
                      ", which is not loopback: anyone on the network can read and send "
                      "requests; serve TLS (--tls_cert, --tls_key) or listen on 127.0.0.1");
}

void PrintBanner(const ssm::server::SsmServer& server, const std::string& address,
                 const std::string& repository) {
  const ssm::server::ModelCatalog& catalog = server.catalog();
  const ssm::server::ServerOptions& o = server.options();
  const bool tls = !o.tls.cert_file.empty();
  std::string text =
      absl::StrFormat("ssm_server listening on %s (gRPC, %s)\n", address,
                      !tls ? "plaintext"
                      : o.tls.client_auth == ssm::server::ServerOptions::Tls::ClientAuth::kRequire
                          ? "TLS, client certificates required"
                      : o.tls.client_auth == ssm::server::ServerOptions::Tls::ClientAuth::kRequest
                          ? "TLS, client certificates verified when sent"
                          : "TLS");
  if (!tls && !ssm::server::IsLoopback(address)) {
    absl::StrAppend(&text, PlaintextWarning(address), "\n");
  }
  absl::StrAppendFormat(&text, "model repository: %s\n", repository);
  absl::StrAppend(&text, "models served:\n");
  int served = 0;
  for (const ssm::server::ModelListing& model : catalog.List()) {
    if (model.versions.empty()) continue;
    ++served;
    absl::StatusOr<ssm::server::ServedModel> newest = catalog.Find(model.name, 0);
    const ssm::Model& m = *newest->model;
    absl::StrAppendFormat(&text,
                          "  %-14s versions %s  d_input %d -> d_output %d, max_length %d%s\n",
                          model.name, absl::StrJoin(model.versions, ","), m.d_input(), m.d_output(),
                          m.max_length(), m.streamable() ? ", streamable" : ", unary only");
  }
  if (served == 0) absl::StrAppend(&text, "  (none)\n");
  if (!catalog.errors().empty()) {
    absl::StrAppend(&text, "models NOT served:\n");
    for (const auto& [name, status] : catalog.errors()) {
      absl::StrAppendFormat(&text, "  %s: %s\n", name, status.message());
    }
  }
  if (server.metrics_port() != 0) {
    absl::StrAppendFormat(&text, "metrics: http://%s:%d/metrics\n",
                          absl::GetFlag(FLAGS_metrics_address), server.metrics_port());
  } else {
    absl::StrAppend(&text, "metrics: disabled (--metrics_port=0)\n");
  }
  absl::StrAppendFormat(&text,
                        "health: grpc.health.v1.Health (\"\", \"ssm.v1.Inference/<model>\"); "
                        "server reflection %s\n",
                        o.reflection ? "on" : "off");
  absl::StrAppend(&text,
                  "Open Inference Protocol: inference.GRPCInferenceService on the gRPC port\n");
  if (server.http_port() != 0) {
    const std::string http = o.http_address.substr(0, o.http_address.rfind(':'));
    absl::StrAppendFormat(&text, "Open Inference Protocol REST: %s://%s:%d/v2\n",
                          tls ? "https" : "http", http, server.http_port());
    if (!tls && !ssm::server::IsLoopback(o.http_address)) {
      absl::StrAppend(&text, "WARNING: plaintext HTTP on ", o.http_address,
                      ", which is not loopback: serve TLS (--tls_cert, --tls_key) or listen on "
                      "127.0.0.1\n");
    }
  }
  if (server.health_port() != 0) {
    absl::StrAppendFormat(&text, "health only, plaintext: %s:%d\n",
                          o.health_address.substr(0, o.health_address.rfind(':')),
                          server.health_port());
  }
  if (!o.session_store.empty()) {
    absl::StrAppendFormat(&text, "sessions: durable in %s (checkpoint every %s, lease %s)\n",
                          server.sessions().options().store->Describe(),
                          absl::FormatDuration(o.session_checkpoint),
                          absl::FormatDuration(o.session_lease));
  }
  absl::StrAppendFormat(&text, "callers: %s; snapshots %s\n",
                        o.auth_callers.empty()
                            ? std::string("anyone (no --auth_callers)")
                            : absl::StrCat("as --auth_callers=", o.auth_callers, " says"),
                        o.snapshot_keys.empty() ? "unsigned" : "signed (HMAC-SHA256)");
  absl::StrAppendFormat(&text, "try:  build/client/ssm_client --address=%s models\n", address);
  absl::StrAppend(&text, "stop: Ctrl-C or SIGTERM (drains for up to ",
                  absl::FormatDuration(absl::GetFlag(FLAGS_drain_timeout)), ")\n");
  std::fputs(text.c_str(), stdout);
  std::fflush(stdout);
}

}  // namespace

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "Serves state-space models over gRPC (ssm.v1.Inference, ssm.v1.Math, and the Open "
      "Inference Protocol's inference.GRPCInferenceService) and, with --http_address, the Open "
      "Inference Protocol's REST binding.\n"
      "Usage: ssm_server [--address=127.0.0.1:50051] [--model_repository=models] [flags]");
  absl::ParseCommandLine(argc, argv);
  // Debian's Abseil is built without NDEBUG, so every absl::Mutex lock also
  // runs the debug deadlock detector (a graph lookup per acquisition, a few
  // per cent of a streaming server's time in profiles). The tests keep it.
  absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore);

  // Signals are taken synchronously by sigwait below: block them before
  // any thread starts, so every thread (gRPC's included) inherits the mask
  // and no handler ever runs in a random thread.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  ssm::server::ServerOptions options;
  options.address = absl::GetFlag(FLAGS_address);
  options.threads = absl::GetFlag(FLAGS_threads);
  options.max_queue = absl::GetFlag(FLAGS_max_queue);
  options.step_batch_window = absl::GetFlag(FLAGS_step_batch_window);
  options.step_batch_max = absl::GetFlag(FLAGS_step_batch_max);
  options.math_threads = absl::GetFlag(FLAGS_math_threads);
  options.max_math_queue = absl::GetFlag(FLAGS_max_math_queue);
  options.max_sessions = absl::GetFlag(FLAGS_max_sessions);
  options.session_ttl = absl::GetFlag(FLAGS_session_ttl);
  options.max_connection_age = absl::GetFlag(FLAGS_max_connection_age);
  options.max_connection_age_grace = absl::GetFlag(FLAGS_max_connection_age_grace);
  options.max_connections = absl::GetFlag(FLAGS_max_connections);
  options.max_connection_idle = absl::GetFlag(FLAGS_max_connection_idle);
  options.keepalive_time = absl::GetFlag(FLAGS_keepalive_time);
  options.keepalive_timeout = absl::GetFlag(FLAGS_keepalive_timeout);
  options.tls.cert_file = absl::GetFlag(FLAGS_tls_cert);
  options.tls.key_file = absl::GetFlag(FLAGS_tls_key);
  options.tls.client_ca_file = absl::GetFlag(FLAGS_tls_client_ca);
  options.tls.refresh = absl::GetFlag(FLAGS_tls_refresh);
  const std::string client_auth = absl::GetFlag(FLAGS_tls_client_auth);
  if (client_auth == "none") {
    options.tls.client_auth = ssm::server::ServerOptions::Tls::ClientAuth::kNone;
  } else if (client_auth == "request") {
    options.tls.client_auth = ssm::server::ServerOptions::Tls::ClientAuth::kRequest;
  } else if (client_auth == "require") {
    options.tls.client_auth = ssm::server::ServerOptions::Tls::ClientAuth::kRequire;
  } else {
    std::fprintf(stderr, "ssm_server: --tls_client_auth must be none, request or require, got %s\n",
                 client_auth.c_str());
    return 1;
  }
  options.health_address = absl::GetFlag(FLAGS_health_address);
  options.reflection = absl::GetFlag(FLAGS_reflection);
  options.auth_callers = absl::GetFlag(FLAGS_auth_callers);
  options.auth_refresh = absl::GetFlag(FLAGS_auth_refresh);
  options.quota_calls = absl::GetFlag(FLAGS_quota_calls);
  options.quota_sessions = absl::GetFlag(FLAGS_quota_sessions);
  options.snapshot_keys = absl::GetFlag(FLAGS_snapshot_keys);
  options.session_store = absl::GetFlag(FLAGS_session_store);
  options.session_checkpoint = absl::GetFlag(FLAGS_session_checkpoint);
  options.session_lease = absl::GetFlag(FLAGS_session_lease);
  options.session_store_timeout = absl::GetFlag(FLAGS_session_store_timeout);
  options.session_store_required = absl::GetFlag(FLAGS_session_store_required);
  options.http_address = absl::GetFlag(FLAGS_http_address);
  options.http_threads = absl::GetFlag(FLAGS_http_threads);
  options.limits.max_batch = absl::GetFlag(FLAGS_max_batch);
  options.limits.max_chunk_steps = absl::GetFlag(FLAGS_max_chunk_steps);
  options.limits.max_unary_length = absl::GetFlag(FLAGS_max_unary_length);
  options.limits.max_message_bytes = absl::GetFlag(FLAGS_max_message_bytes);
  options.limits.max_math_work = absl::GetFlag(FLAGS_max_math_work);
  const int metrics_port = absl::GetFlag(FLAGS_metrics_port);
  if (metrics_port < 0 || metrics_port > 65535) {
    std::fprintf(stderr, "ssm_server: --metrics_port must be in [0, 65535], got %d\n",
                 metrics_port);
    return 1;
  }
  if (metrics_port != 0) {
    options.metrics_address = absl::StrCat(absl::GetFlag(FLAGS_metrics_address), ":", metrics_port);
  }
  const absl::Duration drain_timeout = absl::GetFlag(FLAGS_drain_timeout);
  if (drain_timeout < absl::ZeroDuration()) {
    std::fprintf(stderr, "ssm_server: --drain_timeout must be >= 0, got %s\n",
                 absl::FormatDuration(drain_timeout).c_str());
    return 1;
  }
  if (absl::Status valid = ssm::server::ValidateServerOptions(options); !valid.ok()) {
    std::fprintf(stderr, "ssm_server: %s\n", std::string(valid.message()).c_str());
    return 1;
  }

  const std::string repository_path = absl::GetFlag(FLAGS_model_repository);
  Logf("ssm_server starting: repository %s", repository_path);
  absl::StatusOr<ssm::server::LoadedRepository> repository =
      ssm::server::LoadRepository(repository_path);
  if (!repository.ok()) {
    Logf("cannot load the model repository: %s", repository.status().ToString());
    std::fprintf(stderr, "ssm_server: %s (set --model_repository, or run from the repo root)\n",
                 std::string(repository.status().message()).c_str());
    return 1;
  }
  for (const std::string& warning : repository->warnings) Logf("repository: %s", warning);
  for (const auto& [name, versions] : repository->models) {
    for (const auto& [version, model] : versions) {
      Logf("model '%s' version %d loaded (fingerprint %016x, %d bytes)", name, version,
           model->fingerprint(), model->memory_bytes());
    }
  }
  for (const auto& [name, status] : repository->errors) {
    Logf("model '%s' failed to load: %s", name, status.ToString());
  }

  absl::StatusOr<std::unique_ptr<ssm::server::SsmServer>> server =
      ssm::server::SsmServer::Start(options, *std::move(repository));
  if (!server.ok()) {
    Logf("cannot start: %s", server.status().ToString());
    std::fprintf(stderr, "ssm_server: %s\n", std::string(server.status().message()).c_str());
    return 1;
  }
  // With port 0 in --address the system chose one: show the real one. (A
  // Unix-domain socket has no port; gRPC reports 1 for it.)
  const std::string bound =
      !ssm::server::UnixSocketPath(options.address).has_value()
          ? absl::StrCat(options.address.substr(0, options.address.rfind(':')), ":",
                         (*server)->port())
          : options.address;
  Logf(
      "ssm_server started on %s: %d model versions loaded, %d models failed, %d workers, "
      "metrics %s",
      bound, (*server)->catalog().loaded_versions(), (*server)->catalog().failed_models(),
      (*server)->pool().threads(),
      options.metrics_address.empty() ? std::string("off") : options.metrics_address);
  if (options.tls.cert_file.empty() && !ssm::server::IsLoopback(bound)) {
    Logf("%s", PlaintextWarning(bound));
  }
  PrintBanner(**server, bound, repository_path);

  int signal_number = 0;
  while (sigwait(&signals, &signal_number) != 0) {
  }
  Logf("received %s: draining for up to %s", signal_number == SIGTERM ? "SIGTERM" : "SIGINT",
       absl::FormatDuration(drain_timeout));
  const absl::Time drain_start = absl::Now();
  (*server)->Shutdown(drain_timeout);
  const ssm::server::SessionManager::Stats stats = (*server)->sessions().GetStats();
  Logf("drained in %s; %d sessions dropped with the process; exiting",
       absl::FormatDuration(absl::Now() - drain_start), stats.attached + stats.detached);
  server->reset();
  Logf("ssm_server exited");
  return 0;
}
