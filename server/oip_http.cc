#include "server/oip_http.h"  // first: Eigen comes in before cpp-httplib's <resolv.h>

#include <dirent.h>
#include <httplib.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <sys/socket.h>

#include <functional>
#include <optional>
#include <regex>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "nlohmann/json.hpp"
#include "server/connection_guard.h"  // LocalPort
#include "server/echo.h"
#include "server/log.h"
#include "server/oip_core.h"
#include "server/oip_json.h"
#include "server/status.h"
#include "server/watched_file.h"
#include "ssm/threads.h"

namespace ssm::server {

int HttpStatus(absl::StatusCode code) {
  switch (code) {
    case absl::StatusCode::kOk:
      return 200;
    case absl::StatusCode::kInvalidArgument:
    case absl::StatusCode::kFailedPrecondition:
    case absl::StatusCode::kOutOfRange:
      return 400;
    case absl::StatusCode::kUnauthenticated:
      return 401;
    case absl::StatusCode::kPermissionDenied:
      return 403;
    case absl::StatusCode::kNotFound:
      return 404;
    case absl::StatusCode::kAlreadyExists:
    case absl::StatusCode::kAborted:
      return 409;
    case absl::StatusCode::kResourceExhausted:
      return 429;
    case absl::StatusCode::kCancelled:
      return 499;
    case absl::StatusCode::kUnimplemented:
      return 501;
    case absl::StatusCode::kUnavailable:
      return 503;
    case absl::StatusCode::kDeadlineExceeded:
      return 504;
    default:
      return 500;
  }
}

namespace {

namespace inf = ::inference;

// OpenSSL objects parsed from PEM files, freed with their holder.
struct CertificateChain {
  X509* leaf = nullptr;
  STACK_OF(X509)* rest = nullptr;
  ~CertificateChain() {
    X509_free(leaf);
    sk_X509_pop_free(rest, X509_free);
  }
};
struct PrivateKey {
  EVP_PKEY* key = nullptr;
  ~PrivateKey() { EVP_PKEY_free(key); }
};
struct TrustStore {
  X509_STORE* store = nullptr;
  ~TrustStore() { X509_STORE_free(store); }
};

std::vector<X509*> ReadCertificates(absl::string_view text) {
  std::vector<X509*> certs;
  BIO* bio = BIO_new_mem_buf(text.data(), static_cast<int>(text.size()));
  while (X509* cert = PEM_read_bio_X509(bio, nullptr, nullptr, nullptr)) certs.push_back(cert);
  BIO_free(bio);
  ERR_clear_error();  // the read that ended the loop
  return certs;
}

absl::StatusOr<std::shared_ptr<const CertificateChain>> ParseChain(absl::string_view text,
                                                                   absl::string_view path) {
  std::vector<X509*> certs = ReadCertificates(text);
  if (certs.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(path, " holds no PEM certificate"));
  }
  auto chain = std::make_shared<CertificateChain>();
  chain->leaf = certs[0];
  chain->rest = sk_X509_new_null();
  for (size_t i = 1; i < certs.size(); ++i) sk_X509_push(chain->rest, certs[i]);
  return std::shared_ptr<const CertificateChain>(std::move(chain));
}

absl::StatusOr<std::shared_ptr<const PrivateKey>> ParseKey(absl::string_view text,
                                                           absl::string_view path) {
  BIO* bio = BIO_new_mem_buf(text.data(), static_cast<int>(text.size()));
  EVP_PKEY* key = PEM_read_bio_PrivateKey(bio, nullptr, nullptr, nullptr);
  BIO_free(bio);
  if (key == nullptr) {
    ERR_clear_error();
    return absl::InvalidArgumentError(absl::StrCat(path, " holds no PEM private key"));
  }
  auto out = std::make_shared<PrivateKey>();
  out->key = key;
  return std::shared_ptr<const PrivateKey>(std::move(out));
}

absl::StatusOr<std::shared_ptr<const TrustStore>> ParseRoots(absl::string_view text,
                                                             absl::string_view path) {
  std::vector<X509*> certs = ReadCertificates(text);
  if (certs.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(path, " holds no PEM certificate"));
  }
  auto out = std::make_shared<TrustStore>();
  out->store = X509_STORE_new();
  for (X509* cert : certs) {
    X509_STORE_add_cert(out->store, cert);
    X509_free(cert);  // the store holds its own reference
  }
  return std::shared_ptr<const TrustStore>(std::move(out));
}

// The subject alternative names of the client certificate the handshake
// verified (none without one), as gRPC reports them to AuthenticateCall.
std::vector<std::string> VerifiedSans(const SSL* ssl) {
  std::vector<std::string> sans;
  if (ssl == nullptr || SSL_get_verify_result(ssl) != X509_V_OK) return sans;
  X509* cert = SSL_get0_peer_certificate(ssl);
  if (cert == nullptr) return sans;
  auto* names = static_cast<GENERAL_NAMES*>(
      X509_get_ext_d2i(cert, NID_subject_alt_name, nullptr, nullptr));
  if (names == nullptr) return sans;
  for (int i = 0; i < sk_GENERAL_NAME_num(names); ++i) {
    const GENERAL_NAME* name = sk_GENERAL_NAME_value(names, i);
    const ASN1_STRING* text = nullptr;
    switch (name->type) {
      case GEN_DNS:
        text = name->d.dNSName;
        break;
      case GEN_URI:
        text = name->d.uniformResourceIdentifier;
        break;
      case GEN_EMAIL:
        text = name->d.rfc822Name;
        break;
      case GEN_IPADD: {
        const ASN1_OCTET_STRING* ip = name->d.iPAddress;
        char buffer[INET6_ADDRSTRLEN] = {};
        const int family = ip->length == 4 ? AF_INET : (ip->length == 16 ? AF_INET6 : 0);
        if (family != 0 && inet_ntop(family, ip->data, buffer, sizeof(buffer)) != nullptr) {
          sans.emplace_back(buffer);
        }
        break;
      }
      default:
        break;
    }
    if (text != nullptr) {
      sans.emplace_back(reinterpret_cast<const char*>(ASN1_STRING_get0_data(text)),
                        static_cast<size_t>(ASN1_STRING_length(text)));
    }
  }
  GENERAL_NAMES_free(names);
  return sans;
}

// "host:port" → host (brackets of an IPv6 literal removed) and port.
absl::Status SplitAddress(const std::string& address, std::string* host, int* port) {
  const size_t colon = address.rfind(':');
  if (colon == std::string::npos || !absl::SimpleAtoi(address.substr(colon + 1), port) ||
      *port < 0 || *port > 65535) {
    return absl::InvalidArgumentError(
        absl::StrCat("--http_address must be host:port, got '", Echo(address), "'"));
  }
  *host = address.substr(0, colon);
  if (host->size() >= 2 && host->front() == '[' && host->back() == ']') {
    *host = host->substr(1, host->size() - 2);
  }
  if (host->empty()) *host = "0.0.0.0";
  return absl::OkStatus();
}

// Shuts down (never closes: the descriptors stay cpp-httplib's) this
// process's connected sockets on local port `port`. A connection idle in
// cpp-httplib's keep-alive wait ignores stop() until its keep-alive timeout;
// a shut-down socket reads as closed at once, so its thread lets go.
void ShutdownConnections(int port) {
  DIR* dir = opendir("/proc/self/fd");
  if (dir == nullptr) return;
  while (const dirent* entry = readdir(dir)) {
    int fd = 0;
    if (!absl::SimpleAtoi(entry->d_name, &fd) || fd == dirfd(dir)) continue;
    int listening = 0;
    socklen_t flag_length = sizeof(listening);
    if (LocalPort(fd) != port ||
        getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &listening, &flag_length) != 0 || listening) {
      continue;
    }
    shutdown(fd, SHUT_RDWR);
  }
  closedir(dir);
}

// What a handler answers: a status and a body, or a failure.
struct Reply {
  int status = 200;
  std::string body;
  std::string content_type = "application/json";
  size_t json_length = 0;  // with binary data after the JSON: its length
};

Reply Json(int status, std::string body) {
  Reply r;
  r.status = status;
  r.body = std::move(body);
  return r;
}

// Counts a request as a running call (the drain waits for it) and, once
// authenticated, against its caller's quota, until it is answered.
class CallScope {
 public:
  explicit CallScope(const ServiceEnv* env) : env_(env) { env_->calls->Enter(); }
  ~CallScope() {
    if (caller_ != nullptr) env_->auth->LeaveCall(*caller_);
    env_->calls->Exit();
  }
  CallScope(const CallScope&) = delete;
  CallScope& operator=(const CallScope&) = delete;

  absl::Status Authenticate(const httplib::Request& req) {
    std::string authorization = req.get_header_value("Authorization");
    absl::StatusOr<CallerRef> caller =
        env_->auth->Authenticate(authorization, VerifiedSans(req.ssl));
    if (!caller.ok()) return caller.status();
    if (absl::Status s = env_->auth->EnterCall(**caller); !s.ok()) return s;
    caller_ = *std::move(caller);
    return absl::OkStatus();
  }
  // Authenticate, then the scope.
  absl::Status Authorize(const httplib::Request& req, Scope scope, absl::string_view model = "") {
    if (caller_ == nullptr) {
      if (absl::Status s = Authenticate(req); !s.ok()) return s;
    }
    return env_->auth->Check(*caller_, scope, model);
  }
  const Caller& caller() const { return *caller_; }

 private:
  const ServiceEnv* const env_;
  CallerRef caller_;
};

// The URL's model and version (the optional /versions/{v} group).
std::string Match(const httplib::Request& req, size_t i) {
  return i < req.matches.size() && req.matches[i].matched ? req.matches[i].str() : "";
}

}  // namespace

// The certificate, key and client roots, re-read when their files change;
// each handshake picks up the current ones (SSL_CTX_set_cert_cb).
class OipHttpServer::Certificates {
 public:
  static absl::StatusOr<std::unique_ptr<Certificates>> Load(const Options& o) {
    auto c = std::unique_ptr<Certificates>(new Certificates);
    auto chain = WatchedFile<CertificateChain>::Create(o.cert_file, ParseChain, o.tls_refresh);
    if (!chain.ok()) return Named("--tls_cert", chain.status());
    c->chain_ = *std::move(chain);
    auto key = WatchedFile<PrivateKey>::Create(o.key_file, ParseKey, o.tls_refresh);
    if (!key.ok()) return Named("--tls_key", key.status());
    c->key_ = *std::move(key);
    if (!o.client_ca_file.empty()) {
      auto roots = WatchedFile<TrustStore>::Create(o.client_ca_file, ParseRoots, o.tls_refresh);
      if (!roots.ok()) return Named("--tls_client_ca", roots.status());
      c->roots_ = *std::move(roots);
    }
    if (!c->Current().has_value()) {
      return absl::InvalidArgumentError("--tls_key is not the key of --tls_cert's certificate");
    }
    return c;
  }

  // Sets up a new connection's certificate, key and client roots.
  static int OnHandshake(SSL* ssl, void* arg) {
    auto* self = static_cast<Certificates*>(arg);
    std::optional<Pair> pair = self->Current();
    if (!pair.has_value()) return 0;
    if (SSL_use_cert_and_key(ssl, pair->chain->leaf, pair->key->key, pair->chain->rest, 1) != 1) {
      return 0;
    }
    if (self->roots_ != nullptr) {
      std::shared_ptr<const TrustStore> roots = self->roots_->Get();
      // Kept for as long as the connection: SSL_set1 takes a reference.
      SSL_set1_verify_cert_store(ssl, roots->store);
    }
    return 1;
  }

 private:
  struct Pair {
    std::shared_ptr<const CertificateChain> chain;
    std::shared_ptr<const PrivateKey> key;
  };

  static absl::Status Named(absl::string_view flag, const absl::Status& s) {
    return absl::Status(s.code(), absl::StrCat(flag, ": ", s.message()));
  }

  // The newest certificate and key that belong together: between the two
  // files' reloads a rotation is half done, and the last matching pair
  // serves meanwhile.
  std::optional<Pair> Current() {
    Pair now{chain_->Get(), key_->Get()};
    absl::MutexLock lock(&mu_);
    if (now.chain != good_.chain || now.key != good_.key) {
      if (X509_check_private_key(now.chain->leaf, now.key->key) == 1) {
        good_ = now;
      } else {
        ERR_clear_error();
      }
    }
    if (good_.chain == nullptr) return std::nullopt;
    return good_;
  }

  Certificates() = default;

  std::unique_ptr<WatchedFile<CertificateChain>> chain_;
  std::unique_ptr<WatchedFile<PrivateKey>> key_;
  std::unique_ptr<WatchedFile<TrustStore>> roots_;
  absl::Mutex mu_;
  Pair good_ ABSL_GUARDED_BY(mu_);
};

absl::StatusOr<std::unique_ptr<OipHttpServer>> OipHttpServer::Start(Options options,
                                                                    const ServiceEnv* env) {
  std::string host;
  int port = 0;
  if (absl::Status s = SplitAddress(options.address, &host, &port); !s.ok()) return s;
  if (options.threads < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("--http_threads must be >= 1, got ", options.threads));
  }
  std::unique_ptr<OipHttpServer> self(new OipHttpServer);
  self->env_ = env;
  self->options_ = std::move(options);
  const Options& o = self->options_;
  if (!o.cert_file.empty()) {
    absl::StatusOr<std::unique_ptr<Certificates>> certificates = Certificates::Load(o);
    if (!certificates.ok()) return certificates.status();
    self->certificates_ = *std::move(certificates);
    Certificates* certs = self->certificates_.get();
    const bool verify = o.client_auth != Options::ClientAuth::kNone;
    const bool require = o.client_auth == Options::ClientAuth::kRequire;
    auto server = std::make_unique<httplib::SSLServer>([&](SSL_CTX& ctx) {
      SSL_CTX_set_min_proto_version(&ctx, TLS1_2_VERSION);
      SSL_CTX_set_cert_cb(&ctx, &Certificates::OnHandshake, certs);
      if (verify) {
        SSL_CTX_set_verify(&ctx, SSL_VERIFY_PEER | (require ? SSL_VERIFY_FAIL_IF_NO_PEER_CERT : 0),
                           nullptr);
      }
      return true;
    });
    if (!server->is_valid()) return absl::InternalError("cannot set up TLS for the HTTP port");
    self->server_ = std::move(server);
    self->tls_ = true;
  } else {
    self->server_ = std::make_unique<httplib::Server>();
  }
  httplib::Server& server = *self->server_;
  const int threads = o.threads;
  server.new_task_queue = [threads] { return new httplib::ThreadPool(threads); };
  // SO_REUSEADDR only: cpp-httplib also sets SO_REUSEPORT, which would let
  // a second server share the port silently (as gRPC's would; see
  // ssm_server.cc).
  server.set_socket_options([](socket_t sock) {
    int yes = 1;
    setsockopt(sock, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof(yes));
  });
  server.set_payload_max_length(static_cast<size_t>(env->limits.max_message_bytes));
  const auto io = absl::ToChronoMicroseconds(o.io_timeout);
  server.set_read_timeout(io);
  server.set_write_timeout(io);
  server.set_keep_alive_timeout(
      std::max<time_t>(1, static_cast<time_t>(absl::ToInt64Seconds(o.keep_alive))));
  server.set_keep_alive_max_count(1000);
  self->Route();

  if (port == 0) {
    port = server.bind_to_any_port(host);
    if (port < 0) port = 0;
  } else if (!server.bind_to_port(host, port)) {
    port = 0;
  }
  if (port == 0) {
    return absl::UnavailableError(absl::StrCat("cannot listen on --http_address=",
                                               self->options_.address,
                                               " (in use, or not a local address?)"));
  }
  self->port_ = port;
  OipHttpServer* raw = self.get();
  self->listener_ = std::thread([raw] {
    ssm::NameThisThread("ssm-rest-listen");
    raw->server_->listen_after_bind();
    raw->listener_done_.store(true);
  });
  // cpp-httplib's stop() does nothing until its accept loop runs: wait for
  // it, so a Stop right after Start cannot miss it.
  raw->WaitUntilListening();
  return self;
}

OipHttpServer::~OipHttpServer() { Stop(); }

void OipHttpServer::WaitUntilListening() {
  while (!server_->is_running() && !listener_done_.load()) absl::SleepFor(absl::Microseconds(200));
}

void OipHttpServer::Stop() {
  if (stopped_) return;
  stopped_ = true;
  if (listener_.joinable()) {
    WaitUntilListening();
    server_->stop();
    // The listener joins its connection threads before it returns. Running
    // requests are done by now (the drain waited for them, or its time is
    // up); idle keep-alive connections would hold their threads, and the
    // exit, for up to their timeout.
    ShutdownConnections(port_);
    listener_.join();
  }
}

void OipHttpServer::Route() {
  httplib::Server& server = *server_;
  const ServiceEnv* env = env_;

  // Every route's frame: the call's count, the metrics, the failure log,
  // the error body.
  using Handler = std::function<absl::StatusOr<Reply>(const httplib::Request&, CallScope&)>;
  auto serve = [env](const char* rpc, Handler handler) {
    return [env, rpc, handler = std::move(handler)](const httplib::Request& req,
                                                    httplib::Response& res) {
      const absl::Time start = absl::Now();
      absl::Status status;
      {
        CallScope scope(env);
        absl::StatusOr<Reply> reply = handler(req, scope);
        status = reply.status();
        if (reply.ok()) {
          res.status = reply->status;
          if (reply->json_length < reply->body.size() && reply->json_length > 0) {
            res.set_header("Inference-Header-Content-Length", std::to_string(reply->json_length));
          }
          res.set_content(std::move(reply->body), reply->content_type);
        } else {
          res.status = HttpStatus(status.code());
          res.set_content(oip::ErrorJson(BoundedMessage(status.message())), "application/json");
        }
      }
      if (!status.ok()) {
        const std::string code = absl::StatusCodeToString(status.code());
        LogfLimited(absl::StrCat("rpc ", rpc, " ", code), "rpc %s failed: %s: %s (peer %s:%d)",
                    rpc, code, status.message(), req.remote_addr, req.remote_port);
      }
      env->metrics->RecordRpc(rpc, status.code(), absl::Now() - start);
    };
  };

  server.Get(R"(/v2/?)", serve("REST ServerMetadata", [](const httplib::Request&, CallScope&)
                                                          -> absl::StatusOr<Reply> {
    inf::ServerMetadataResponse metadata;
    oip::FillServerMetadata(&metadata);
    return Json(200, oip::ServerMetadataJson(metadata));
  }));
  server.Get("/v2/health/live", serve("REST ServerLive", [](const httplib::Request&, CallScope&)
                                                             -> absl::StatusOr<Reply> {
    return Json(200, R"({"live":true})");
  }));
  server.Get("/v2/health/ready", serve("REST ServerReady", [env](const httplib::Request&, CallScope&)
                                                               -> absl::StatusOr<Reply> {
    if (env->Draining()) return Json(503, R"({"ready":false})");
    return Json(200, R"({"ready":true})");
  }));

  constexpr const char* kModel = R"(/v2/models/([^/]+)(?:/versions/([^/]+))?)";
  server.Get(absl::StrCat(kModel, "/ready"),
             serve("REST ModelReady", [env](const httplib::Request& req, CallScope& scope)
                                          -> absl::StatusOr<Reply> {
               const std::string name = Match(req, 1);
               if (absl::Status s = scope.Authorize(req, Scope::kRun, name); !s.ok()) return s;
               absl::StatusOr<ServedModel> served =
                   oip::FindModel(*env->catalog, name, Match(req, 2), "model", "version");
               if (!served.ok() && served.status().code() != absl::StatusCode::kNotFound) {
                 return served.status();
               }
               const bool ready = served.ok() && !env->Draining();
               return Json(ready ? 200 : 400,
                           nlohmann::json{{"name", name}, {"ready", ready}}.dump(
                               -1, ' ', false, nlohmann::json::error_handler_t::replace));
             }));
  server.Get(absl::StrCat(kModel, "/config"),
             serve("REST ModelConfig", [env](const httplib::Request& req, CallScope& scope)
                                           -> absl::StatusOr<Reply> {
               if (env->Draining()) return DrainingError();
               const std::string name = Match(req, 1);
               if (absl::Status s = scope.Authorize(req, Scope::kRun, name); !s.ok()) return s;
               absl::StatusOr<ServedModel> served =
                   oip::FindModel(*env->catalog, name, Match(req, 2), "model", "version");
               if (!served.ok()) return served.status();
               inf::ModelConfig config;
               oip::FillModelConfig(*env->catalog, *served, env->limits,
                                    env->sessions->options().ttl, &config);
               return Json(200, oip::ModelConfigJson(config));
             }));
  server.Get(kModel, serve("REST ModelMetadata", [env](const httplib::Request& req,
                                                       CallScope& scope) -> absl::StatusOr<Reply> {
               if (env->Draining()) return DrainingError();
               const std::string name = Match(req, 1);
               if (absl::Status s = scope.Authorize(req, Scope::kRun, name); !s.ok()) return s;
               absl::StatusOr<ServedModel> served =
                   oip::FindModel(*env->catalog, name, Match(req, 2), "model", "version");
               if (!served.ok()) return served.status();
               inf::ModelMetadataResponse metadata;
               oip::FillModelMetadata(*env->catalog, *served, &metadata);
               return Json(200, oip::ModelMetadataJson(metadata));
             }));
  auto index = serve("REST RepositoryIndex", [env](const httplib::Request& req, CallScope& scope)
                                                 -> absl::StatusOr<Reply> {
    if (env->Draining()) return DrainingError();
    if (absl::Status s = scope.Authorize(req, Scope::kList); !s.ok()) return s;
    bool ready = false;
    if (!req.body.empty()) {
      nlohmann::json j = nlohmann::json::parse(req.body, nullptr, false);
      if (j.is_discarded() || !j.is_object()) {
        return absl::InvalidArgumentError("the request body must be a JSON object (or empty)");
      }
      if (auto r = j.find("ready"); r != j.end()) {
        if (!r->is_boolean()) return absl::InvalidArgumentError("ready must be a bool");
        ready = r->get<bool>();
      }
    }
    inf::RepositoryIndexResponse response;
    oip::FillRepositoryIndex(*env->catalog, ready, &response);
    return Json(200, oip::RepositoryIndexJson(response));
  });
  server.Post("/v2/repository/index", index);
  // `curl -X POST .../index`, as Triton's documentation has it, sends no
  // Content-Length, and cpp-httplib refuses a POST without one before
  // routing it: answer that one here, before the body would be read.
  server.set_pre_routing_handler([index](const httplib::Request& req, httplib::Response& res) {
    if (req.method == "POST" && req.path == "/v2/repository/index" &&
        !req.has_header("Content-Length") && !req.has_header("Transfer-Encoding")) {
      index(req, res);
      return httplib::Server::HandlerResponse::Handled;
    }
    return httplib::Server::HandlerResponse::Unhandled;
  });

  server.Post(absl::StrCat(kModel, "/infer"),
              serve("REST ModelInfer", [env](const httplib::Request& req, CallScope& scope)
                                           -> absl::StatusOr<Reply> {
                if (env->Draining()) return DrainingError();
                // Credentials before anything of the request is looked at.
                if (absl::Status s = scope.Authenticate(req); !s.ok()) return s;
                inf::ModelInferRequest request;
                request.set_model_name(Match(req, 1));
                request.set_model_version(Match(req, 2));
                if (absl::Status s = scope.Authorize(req, Scope::kRun, request.model_name());
                    !s.ok()) {
                  return s;
                }
                int64_t header_length = -1;
                if (req.has_header("Inference-Header-Content-Length")) {
                  const std::string text = req.get_header_value("Inference-Header-Content-Length");
                  if (!absl::SimpleAtoi(text, &header_length) || header_length < 0) {
                    return absl::InvalidArgumentError(
                        absl::StrCat("Inference-Header-Content-Length must be a byte count, got '",
                                     Echo(text), "'"));
                  }
                }
                int d_input = 0;
                if (header_length == 0) {
                  // A raw binary request: its shape follows from the model's.
                  absl::StatusOr<ServedModel> served = oip::FindModel(
                      *env->catalog, request.model_name(), request.model_version(), "model",
                      "version");
                  if (!served.ok()) return served.status();
                  d_input = served->model->d_input();
                }
                if (absl::Status s = oip::ParseRestInfer(req.body, header_length, d_input, &request);
                    !s.ok()) {
                  return s;
                }
                absl::StatusOr<oip::InferPlan> plan =
                    oip::PlanInfer(request, *env->catalog, env->limits);
                if (!plan.ok()) return plan.status();
                // The model runs on a worker; this thread waits for it.
                inf::ModelInferResponse response;
                absl::Status result;
                absl::Notification done;
                const std::string& owner = scope.caller().principal;
                if (!env->pool->TrySchedule([&] {
                      result = oip::RunInfer(*plan, request, *env->sequences, owner,
                                             [](int, int) { return absl::OkStatus(); }, &response);
                      done.Notify();
                    })) {
                  return BusyError(*env->pool);
                }
                done.WaitForNotification();
                if (!result.ok()) return result;
                Reply reply;
                reply.body = oip::WriteRestInfer(response, &reply.json_length);
                if (reply.json_length < reply.body.size()) {
                  reply.content_type = "application/octet-stream";
                }
                return reply;
              }));

  // What cpp-httplib answers itself (no route, a body too large) and the
  // other methods of known paths get the protocol's error body too.
  static const std::regex* const known = new std::regex(
      R"(/v2/?|/v2/health/(live|ready)|/v2/repository/index|/v2/models/[^/]+(/versions/[^/]+)?(/ready|/config|/infer)?)");
  const int64_t max_bytes = env->limits.max_message_bytes;
  server.set_error_handler(httplib::Server::HandlerWithResponse(
      [max_bytes](const httplib::Request& req, httplib::Response& res) {
    if (!res.body.empty()) return httplib::Server::HandlerResponse::Unhandled;  // ours already
    std::string message;
    if (res.status == 404 && std::regex_match(req.path, *known)) {
      res.status = 405;
      message = absl::StrCat("method ", Echo(req.method), " is not served on ", Echo(req.path));
    } else if (res.status == 404) {
      message = absl::StrCat("no such endpoint: ", Echo(req.path),
                             " (the Open Inference Protocol's are under /v2)");
    } else if (res.status == 400) {
      message = "the request could not be read (a POST body needs Content-Length or chunked "
                "encoding)";
    } else if (res.status == 413) {
      message = absl::StrCat("the request body is larger than --max_message_bytes=", max_bytes);
    } else {
      message = absl::StrCat("HTTP ", res.status);
    }
    res.set_content(oip::ErrorJson(message), "application/json");
    return httplib::Server::HandlerResponse::Handled;
  }));
  server.set_exception_handler(
      [](const httplib::Request&, httplib::Response& res, std::exception_ptr ep) {
        std::string what = "unknown";
        try {
          if (ep) std::rethrow_exception(ep);
        } catch (const std::exception& e) {
          what = e.what();
        } catch (...) {
        }
        res.status = 500;
        res.set_content(oip::ErrorJson(absl::StrCat("internal error: ", Echo(what))),
                        "application/json");
      });
}

}  // namespace ssm::server
