// inference.GRPCInferenceService, the Open Inference Protocol over gRPC, on
// the same port as ssm.v1 and over the same catalog, sessions, worker pool,
// authorizer and metrics: a second set of reactors, not a second server.
// Unary RPCs are MessageCalls (unary_call.h); ModelStreamInfer is a
// protocol over the pipelined stream transport (stream_transport.h). What
// the requests mean is oip_core.h's; client-named sequences are the
// session layer's (sequences.h).
//
// Who may call what (with --auth_callers; without it everyone may):
//   ServerLive, ServerReady, ServerMetadata  anyone, like gRPC health
//   ModelReady, ModelMetadata, ModelConfig,
//   ModelInfer, ModelStreamInfer            run:<model>
//   RepositoryIndex                          list
// Draining: ServerReady and ModelReady answer false, ServerLive true;
// ModelMetadata, ModelConfig, RepositoryIndex and ModelInfer are
// UNAVAILABLE (ssm.v1's rule for new unary calls); on a ModelStreamInfer
// stream, requests that continue or end a live sequence go on, and others
// get UNAVAILABLE in their error_message.
//
// ModelStreamInfer, as Triton serves it: one response per request, in
// order; a request that fails gets a response whose error_message is
// "<CODE>: <message>" (oip::StreamErrorMessage) and the stream goes on.
// What ends the stream with a status: bytes that are not a
// ModelInferRequest (INVALID_ARGUMENT), credentials refused on the first
// request (UNAUTHENTICATED, or RESOURCE_EXHAUSTED past --quota_calls), the
// pool refusing a request that needs it ("server busy"), a cancel. The
// stream holds no session: sequences live in the sequence table, so a
// sequence may start on one call and continue on another, and a broken
// stream leaves its sequences to their idle expiry.
//
// Metrics: every RPC is counted under its name (ssm_rpc_requests_total
// {rpc="ModelInfer"}, ...); a ModelStreamInfer stream once when it ends,
// and each of its requests as rpc="ModelStreamInfer/request" with its code
// and latency (arrival to response queued).
//
// Thread safety: as services.h.

#ifndef SSM_SERVER_OIP_SERVICE_H_
#define SSM_SERVER_OIP_SERVICE_H_

#include <grpcpp/support/byte_buffer.h>

#include "inference/grpc_service.grpc.pb.h"
#include "server/service_env.h"

namespace ssm::server {

namespace oip_internal {
using G = inference::GRPCInferenceService;
using RawService = G::WithRawCallbackMethod_ServerLive<G::WithRawCallbackMethod_ServerReady<
    G::WithRawCallbackMethod_ModelReady<G::WithRawCallbackMethod_ServerMetadata<
        G::WithRawCallbackMethod_ModelMetadata<G::WithRawCallbackMethod_ModelInfer<
            G::WithRawCallbackMethod_ModelStreamInfer<G::WithRawCallbackMethod_ModelConfig<
                G::WithRawCallbackMethod_RepositoryIndex<G::Service>>>>>>>>>;
}  // namespace oip_internal

class OipService final : public oip_internal::RawService {
 public:
  // `env` must have `sequences` set.
  explicit OipService(const ServiceEnv* env) : env_(env) {}

  using Raw = grpc::ByteBuffer;
  grpc::ServerUnaryReactor* ServerLive(grpc::CallbackServerContext* c, const Raw* request,
                                       Raw* response) override;
  grpc::ServerUnaryReactor* ServerReady(grpc::CallbackServerContext* c, const Raw* request,
                                        Raw* response) override;
  grpc::ServerUnaryReactor* ModelReady(grpc::CallbackServerContext* c, const Raw* request,
                                       Raw* response) override;
  grpc::ServerUnaryReactor* ServerMetadata(grpc::CallbackServerContext* c, const Raw* request,
                                           Raw* response) override;
  grpc::ServerUnaryReactor* ModelMetadata(grpc::CallbackServerContext* c, const Raw* request,
                                          Raw* response) override;
  grpc::ServerUnaryReactor* ModelInfer(grpc::CallbackServerContext* c, const Raw* request,
                                       Raw* response) override;
  grpc::ServerBidiReactor<Raw, Raw>* ModelStreamInfer(grpc::CallbackServerContext* c) override;
  grpc::ServerUnaryReactor* ModelConfig(grpc::CallbackServerContext* c, const Raw* request,
                                        Raw* response) override;
  grpc::ServerUnaryReactor* RepositoryIndex(grpc::CallbackServerContext* c, const Raw* request,
                                            Raw* response) override;

 private:
  const ServiceEnv* env_;
};

}  // namespace ssm::server

#endif  // SSM_SERVER_OIP_SERVICE_H_
