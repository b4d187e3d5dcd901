// How a Client reaches the server (internal to ssm_client_lib): the channel
// built from ClientOptions, the stubs over it, and the context every call
// starts from. Transport security (TLS, mTLS) is in MakeChannel's
// credentials and the per-call credentials (the bearer token) in the two
// context factories below, so unary calls, streams and a stream's resumes
// get them alike.
#ifndef SSMSERVE_CLIENT_CONNECTION_H_
#define SSMSERVE_CLIENT_CONNECTION_H_

#include <memory>
#include <string>

#include <grpcpp/grpcpp.h>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "client/ssm_client.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "ssm/v1/ssm_service.grpc.pb.h"

namespace ssm::client {

// A channel to options.address with the message size limits, the
// load-balancing policy, the reconnect backoff and the transport security
// of `options`. Fails (and makes no channel) when a TLS file cannot be
// read or holds no PEM, or the options contradict each other.
absl::StatusOr<std::shared_ptr<grpc::Channel>> MakeChannel(
    const ClientOptions& options);

// The value of the `authorization` metadata for options.token or
// options.token_file ("Bearer <token>"), or "" for no token.
absl::StatusOr<std::string> AuthorizationFor(const ClientOptions& options);

// Immutable after construction: shared by every thread using the Client
// and by its Streams.
struct Client::Rep {
  ClientOptions options;
  // Not OK: no channel or stubs, and every call returns it.
  absl::Status setup;
  std::shared_ptr<grpc::Channel> channel;
  std::unique_ptr<ssm::v1::Inference::Stub> inference;
  std::unique_ptr<ssm::v1::Math::Stub> math;
  std::unique_ptr<grpc::health::v1::Health::Stub> health;
  std::string authorization;  // "" for no token

  // A channel made from `options`, or over `channel`.
  explicit Rep(const ClientOptions& options);
  Rep(std::shared_ptr<grpc::Channel> channel, const ClientOptions& options);
  // The token and the stubs; `channel_status` (why there is no channel)
  // or a token that cannot be used becomes `setup`.
  void Init(std::shared_ptr<grpc::Channel> channel, absl::Status channel_status);

  // Adds the token's metadata, if any.
  void Authorize(grpc::ClientContext* context) const;
  // A unary call's context: the per-call deadline, wait-for-ready and,
  // with `with_token`, the token.
  void PrepareUnary(grpc::ClientContext* context, bool with_token) const;
  // One unary call of `stub`'s `method` in such a context; a failure is the
  // server's status as it came.
  template <typename Stub, typename Request, typename Response>
  absl::StatusOr<Response> Call(
      Stub* stub,
      grpc::Status (Stub::*method)(grpc::ClientContext*, const Request&,
                                   Response*),
      const Request& request, bool with_token = true) const {
    if (!setup.ok()) return setup;
    grpc::ClientContext context;
    PrepareUnary(&context, with_token);
    Response response;
    grpc::Status s = (stub->*method)(&context, request, &response);
    if (!s.ok()) return StatusFromGrpc(s);
    return response;
  }
  // A stream call's context: the token and no deadline, since a stream may
  // run for days (its open handshake has a watchdog of options.deadline
  // instead).
  std::unique_ptr<grpc::ClientContext> NewStreamContext() const;
};

}  // namespace ssm::client

#endif  // SSMSERVE_CLIENT_CONNECTION_H_
