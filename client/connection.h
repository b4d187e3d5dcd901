// How a Client reaches the server (internal to ssm_client_lib): the channel
// built from ClientOptions, the stubs over it, and the context every call
// starts from. Transport security goes into MakeChannel's credentials and
// per-call credentials (a token) into the two context factories below, so
// unary calls and streams get them alike.
#ifndef SSMSERVE_CLIENT_CONNECTION_H_
#define SSMSERVE_CLIENT_CONNECTION_H_

#include <memory>

#include <grpcpp/grpcpp.h>

#include "client/ssm_client.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "ssm/v1/ssm_service.grpc.pb.h"

namespace ssm::client {

// A channel to options.address with the message size limits, the
// load-balancing policy and the reconnect backoff of `options`.
std::shared_ptr<grpc::Channel> MakeChannel(const ClientOptions& options);

// Immutable after construction: shared by every thread using the Client
// and by its Streams.
struct Client::Rep {
  ClientOptions options;
  std::shared_ptr<grpc::Channel> channel;
  std::unique_ptr<ssm::v1::Inference::Stub> inference;
  std::unique_ptr<ssm::v1::Math::Stub> math;
  std::unique_ptr<grpc::health::v1::Health::Stub> health;

  Rep(std::shared_ptr<grpc::Channel> channel, const ClientOptions& options);

  // A unary call's context: the per-call deadline and wait-for-ready.
  void PrepareUnary(grpc::ClientContext* context) const;
  // One unary call of `stub`'s `method` in such a context; a failure is the
  // server's status as it came.
  template <typename Stub, typename Request, typename Response>
  absl::StatusOr<Response> Call(
      Stub& stub,
      grpc::Status (Stub::*method)(grpc::ClientContext*, const Request&,
                                   Response*),
      const Request& request) const {
    grpc::ClientContext context;
    PrepareUnary(&context);
    Response response;
    grpc::Status s = (stub.*method)(&context, request, &response);
    if (!s.ok()) return StatusFromGrpc(s);
    return response;
  }
  // A stream call's context: no deadline, since a stream may run for days
  // (its open handshake has a watchdog of options.deadline instead).
  std::unique_ptr<grpc::ClientContext> NewStreamContext() const;
};

}  // namespace ssm::client

#endif  // SSMSERVE_CLIENT_CONNECTION_H_
