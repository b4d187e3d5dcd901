// The Open Inference Protocol's HTTP/REST binding (KServe v2, with Triton's
// binary tensor data, model configuration and repository index
// extensions) on its own port, through cpp-httplib. Requests become the
// protocol's messages (oip_json.h) and go through the gRPC service's checks
// and code paths (oip_core.h): the same catalog, sequences, worker pool,
// authorizer, limits and metrics.
//
// Routes:
//   GET  /v2                                       server metadata
//   GET  /v2/health/live                           200 {"live": true}
//   GET  /v2/health/ready                          200 {"ready": true}; 503 draining
//   GET  /v2/models/{m}[/versions/{v}]             model metadata
//   GET  /v2/models/{m}[/versions/{v}]/ready       200 {"name","ready":true}; 400 not ready
//   GET  /v2/models/{m}[/versions/{v}]/config      Triton's model configuration (JSON)
//   POST /v2/models/{m}[/versions/{v}]/infer       inference (JSON and binary tensors)
//   POST /v2/repository/index                      Triton's repository index
// Anything else is 404, a known path with another method 405, each with
// the protocol's error body {"error": "..."}.
//
// Status codes: 200 on success; failures map the request's canonical code
// (HttpStatus): INVALID_ARGUMENT, FAILED_PRECONDITION and OUT_OF_RANGE 400,
// UNAUTHENTICATED 401, PERMISSION_DENIED 403, NOT_FOUND 404,
// RESOURCE_EXHAUSTED 429 (a body over --max_message_bytes: 413),
// CANCELLED 499, UNIMPLEMENTED 501, UNAVAILABLE 503, DEADLINE_EXCEEDED 504,
// the rest 500; the body is {"error": "<message>"}, the message as gRPC's.
//
// Authentication: "Authorization: Bearer <token>", and over mTLS the
// verified client certificate, through the same Authorizer as gRPC, with
// the same scopes (oip_service.h); live, ready and server metadata are
// open.
//
// Threads and bounds: `threads` connections are served at once by
// cpp-httplib's pool (one thread per connection while it lasts; more wait
// in its queue); their handlers parse and answer, and inference runs on
// the server's worker pool ("server busy", 429, when it is full). A body
// over --max_message_bytes is refused before it is read (413); reads and
// writes time out after `io_timeout`; an idle keep-alive connection is
// closed after `keep_alive`. Every request counts as a running call for
// the drain (service_env.h), and each is recorded in the metrics as
// rpc="REST <name>" (e.g. "REST ModelInfer").
//
// TLS: with a certificate and key the port speaks HTTPS only, with the
// files re-read when they change (checked every `tls_refresh`), client
// certificates verified against `client_ca` when asked.
//
// Thread safety: Start and Stop from one thread.

#ifndef SSM_SERVER_OIP_HTTP_H_
#define SSM_SERVER_OIP_HTTP_H_

#include <atomic>
#include <memory>
#include <string>
#include <thread>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "server/service_env.h"

namespace httplib {
class Server;
}  // namespace httplib

namespace ssm::server {

// The HTTP status for a failed request's canonical code (above).
int HttpStatus(absl::StatusCode code);

class OipHttpServer {
 public:
  struct Options {
    std::string address;  // "host:port"; port 0 picks a free one
    int threads = 8;
    absl::Duration io_timeout = absl::Seconds(30);
    absl::Duration keep_alive = absl::Seconds(5);
    // HTTPS when cert_file is set (PEM files).
    std::string cert_file;
    std::string key_file;
    std::string client_ca_file;
    enum class ClientAuth { kNone, kRequest, kRequire } client_auth = ClientAuth::kNone;
    absl::Duration tls_refresh = absl::Seconds(10);
  };

  // Binds and starts serving. Unavailable naming the address when it
  // cannot be bound; InvalidArgument for bad options or TLS files that do
  // not load. `env` must outlive the server.
  static absl::StatusOr<std::unique_ptr<OipHttpServer>> Start(Options options,
                                                              const ServiceEnv* env);

  ~OipHttpServer();  // Stop()

  int port() const { return port_; }
  bool tls() const { return tls_; }

  // Stops listening and waits for the connections being served (their
  // running requests finish; the worker pool must still run). Idempotent.
  void Stop();

 private:
  class Certificates;
  OipHttpServer() = default;
  void Route();
  // Until cpp-httplib's accept loop runs (or ended).
  void WaitUntilListening();

  const ServiceEnv* env_ = nullptr;
  Options options_;
  std::unique_ptr<Certificates> certificates_;  // HTTPS only
  std::unique_ptr<httplib::Server> server_;
  std::thread listener_;
  std::atomic<bool> listener_done_{false};
  int port_ = 0;
  bool tls_ = false;
  bool stopped_ = false;
};

}  // namespace ssm::server

#endif  // SSM_SERVER_OIP_HTTP_H_
