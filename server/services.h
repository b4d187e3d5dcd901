// The gRPC services of ssm_server, on the callback API: ssm.v1.Inference
// and ssm.v1.Math (the wire contract is proto/ssm/v1/ssm_service.proto;
// behaviours the proto leaves open are documented in server/README.md).
//
// Every call gets its own reactor object holding all its state. gRPC's
// event threads validate and hand the heavy work to the WorkerPool, whose
// workers run the model, the session or the kernel and finish the call;
// the one exception is a stream's short chunks (a few recurrent steps of a
// cheap model), which run right on the event thread because a hand-off
// costs more than the steps (services.cc, StreamCall, says how that is
// bounded). Streams are pipelined: a stream reads ahead while its chunks
// run and its responses are written, in order.
// Errors cross to the wire through ToGrpcStatus (status.h) only.
//
// Thread safety: a service object serves any number of concurrent calls.
// It borrows everything in ServiceEnv, which must outlive the grpc::Server
// the service is registered with (that is, until Shutdown returned).

#ifndef SSM_SERVER_SERVICES_H_
#define SSM_SERVER_SERVICES_H_

#include <atomic>
#include <cstdint>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "server/metrics.h"
#include "server/model_catalog.h"
#include "server/session_manager.h"
#include "server/worker_pool.h"
#include "ssm/v1/ssm_service.grpc.pb.h"

namespace ssm::server {

// Counts the calls of this server's services from their handler to their
// OnDone, so a drain can keep the server answering (health NOT_SERVING,
// UNAVAILABLE for new work) until the running ones are done, and only
// then close the listener. Thread-safe.
class CallCounter {
 public:
  void Enter();
  void Exit();
  int running() const;
  // True once no call runs; false if `deadline` comes first.
  bool WaitForIdle(absl::Time deadline);

 private:
  mutable absl::Mutex mu_;
  int running_ ABSL_GUARDED_BY(mu_) = 0;
};

// Per-request limits; violations are RESOURCE_EXHAUSTED naming the flag.
struct RequestLimits {
  int max_batch = 64;                    // --max_batch
  int64_t max_chunk_steps = 16384;       // --max_chunk_steps
  int64_t max_unary_length = 65536;      // --max_unary_length
  int64_t max_message_bytes = 64 << 20;  // --max_message_bytes
};

struct ServiceEnv {
  const ModelCatalog* catalog = nullptr;
  SessionManager* sessions = nullptr;
  WorkerPool* pool = nullptr;
  Metrics* metrics = nullptr;
  RequestLimits limits;
  // Set when the server starts draining: new calls and new streams are
  // refused with UNAVAILABLE; running streams go on.
  const std::atomic<bool>* draining = nullptr;
  CallCounter* calls = nullptr;
};

class InferenceService final : public ssm::v1::Inference::CallbackService {
 public:
  explicit InferenceService(const ServiceEnv* env) : env_(env) {}

  grpc::ServerUnaryReactor* Infer(grpc::CallbackServerContext* context,
                                  const ssm::v1::InferRequest* request,
                                  ssm::v1::InferResponse* response) override;
  grpc::ServerBidiReactor<ssm::v1::StreamRequest, ssm::v1::StreamResponse>* StreamInfer(
      grpc::CallbackServerContext* context) override;
  grpc::ServerUnaryReactor* ExportState(grpc::CallbackServerContext* context,
                                        const ssm::v1::ExportStateRequest* request,
                                        ssm::v1::ExportStateResponse* response) override;
  grpc::ServerUnaryReactor* ImportState(grpc::CallbackServerContext* context,
                                        const ssm::v1::ImportStateRequest* request,
                                        ssm::v1::ImportStateResponse* response) override;
  grpc::ServerUnaryReactor* ListModels(grpc::CallbackServerContext* context,
                                       const ssm::v1::ListModelsRequest* request,
                                       ssm::v1::ListModelsResponse* response) override;
  grpc::ServerUnaryReactor* GetModel(grpc::CallbackServerContext* context,
                                     const ssm::v1::GetModelRequest* request,
                                     ssm::v1::GetModelResponse* response) override;

 private:
  const ServiceEnv* env_;
};

class MathService final : public ssm::v1::Math::CallbackService {
 public:
  explicit MathService(const ServiceEnv* env) : env_(env) {}

  grpc::ServerUnaryReactor* BuildHippo(grpc::CallbackServerContext* context,
                                       const ssm::v1::BuildHippoRequest* request,
                                       ssm::v1::BuildHippoResponse* response) override;
  grpc::ServerUnaryReactor* ComputeKernel(grpc::CallbackServerContext* context,
                                          const ssm::v1::ComputeKernelRequest* request,
                                          ssm::v1::ComputeKernelResponse* response) override;

 private:
  const ServiceEnv* env_;
};

}  // namespace ssm::server

#endif  // SSM_SERVER_SERVICES_H_
