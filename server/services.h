// The gRPC services of ssm_server, on the callback API: ssm.v1.Inference
// and ssm.v1.Math (the wire contract is proto/ssm/v1/ssm_service.proto;
// behaviours the proto leaves open are documented in server/README.md).
//
// Every call gets its own reactor object holding all its state: unary calls
// a UnaryCall (unary_call.h), streams a StreamInfer reactor
// (stream_call.h). gRPC's event threads validate and hand the heavy work to
// the WorkerPool, whose workers run the model, the session or the kernel
// and finish the call; the one exception is a stream's short chunks, which
// run right on the event thread because a hand-off costs more than the
// steps (stream_call.cc says how that is bounded). Sessions are opened
// through the session layer's one policy (session_open.h).
// Errors cross to the wire through ToGrpcStatus (status.h) only.
//
// Thread safety: a service object serves any number of concurrent calls.
// It borrows everything in ServiceEnv, which must outlive the grpc::Server
// the service is registered with (that is, until Shutdown returned).

#ifndef SSM_SERVER_SERVICES_H_
#define SSM_SERVER_SERVICES_H_

#include <grpcpp/support/byte_buffer.h>

#include "server/service_env.h"
#include "ssm/v1/ssm_service.grpc.pb.h"

namespace ssm::server {

// Every method is gRPC's raw callback variant: requests arrive as bytes and
// are parsed by the call (unary_call.h, stream_call.h), so a malformed
// message is an INVALID_ARGUMENT the server sees, logs and counts.
using RawInferenceService = ssm::v1::Inference::WithRawCallbackMethod_Infer<
    ssm::v1::Inference::WithRawCallbackMethod_StreamInfer<
        ssm::v1::Inference::WithRawCallbackMethod_ExportState<
            ssm::v1::Inference::WithRawCallbackMethod_ImportState<
                ssm::v1::Inference::WithRawCallbackMethod_ListModels<
                    ssm::v1::Inference::WithRawCallbackMethod_GetModel<
                        ssm::v1::Inference::Service>>>>>>;
using RawMathService = ssm::v1::Math::WithRawCallbackMethod_BuildHippo<
    ssm::v1::Math::WithRawCallbackMethod_ComputeKernel<ssm::v1::Math::Service>>;

class InferenceService final : public RawInferenceService {
 public:
  explicit InferenceService(const ServiceEnv* env) : env_(env) {}

  grpc::ServerUnaryReactor* Infer(grpc::CallbackServerContext* context,
                                  const grpc::ByteBuffer* request,
                                  grpc::ByteBuffer* response) override;
  grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer>* StreamInfer(
      grpc::CallbackServerContext* context) override;
  grpc::ServerUnaryReactor* ExportState(grpc::CallbackServerContext* context,
                                        const grpc::ByteBuffer* request,
                                        grpc::ByteBuffer* response) override;
  grpc::ServerUnaryReactor* ImportState(grpc::CallbackServerContext* context,
                                        const grpc::ByteBuffer* request,
                                        grpc::ByteBuffer* response) override;
  grpc::ServerUnaryReactor* ListModels(grpc::CallbackServerContext* context,
                                       const grpc::ByteBuffer* request,
                                       grpc::ByteBuffer* response) override;
  grpc::ServerUnaryReactor* GetModel(grpc::CallbackServerContext* context,
                                     const grpc::ByteBuffer* request,
                                     grpc::ByteBuffer* response) override;

 private:
  const ServiceEnv* env_;
};

class MathService final : public RawMathService {
 public:
  explicit MathService(const ServiceEnv* env) : env_(env) {}

  grpc::ServerUnaryReactor* BuildHippo(grpc::CallbackServerContext* context,
                                       const grpc::ByteBuffer* request,
                                       grpc::ByteBuffer* response) override;
  grpc::ServerUnaryReactor* ComputeKernel(grpc::CallbackServerContext* context,
                                          const grpc::ByteBuffer* request,
                                          grpc::ByteBuffer* response) override;

 private:
  const ServiceEnv* env_;
};

}  // namespace ssm::server

#endif  // SSM_SERVER_SERVICES_H_
