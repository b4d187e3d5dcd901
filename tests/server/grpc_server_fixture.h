// The fixture of the in-process gRPC suites (grpc_server_*_test.cc):
// ssm_server on 127.0.0.1 (a free port) over the shipped model repository,
// the generated stubs connected to it, and the helpers the suites share.
//
// Extending it: a test that needs other options restarts the server with
// StartServerWith(change); a suite whose every test needs them (other
// limits, TLS) derives a fixture and overrides Options(), and NewChannel()
// for other channel credentials or arguments.

#ifndef SSM_TESTS_SERVER_GRPC_SERVER_FIXTURE_H_
#define SSM_TESTS_SERVER_GRPC_SERVER_FIXTURE_H_

#include <memory>
#include <string>

#include <grpcpp/channel.h>
#include <grpcpp/client_context.h>
#include <grpcpp/support/byte_buffer.h>
#include <gtest/gtest.h>

#include "absl/functional/function_ref.h"
#include "server/model_repository.h"
#include "server/ssm_server.h"
#include "ssm/v1/ssm_service.grpc.pb.h"

namespace ssm::server::testing {

using Stream = grpc::ClientReaderWriter<v1::StreamRequest, v1::StreamResponse>;

// The shipped repository (models/), loaded once per process.
const LoadedRepository& ShippedRepository();
// The newest version of one of its models.
std::shared_ptr<const Model> ShippedModel(const std::string& name);

// batch x steps x 1: sequence b at step s is sin(0.05 s + b + phase).
v1::Tensor MakeInput(int batch, int steps, double phase = 0);
// Rows [begin, end) of the time axis of a [batch, T, d] tensor.
v1::Tensor Slice(const v1::Tensor& t, int begin, int end);
// Same shape, values within tol relative (to 1 + |want|).
void ExpectClose(const v1::Tensor& got, const v1::Tensor& want, double tol = 1e-5);

v1::InferRequest InferRequestFor(const std::string& model, const v1::Tensor& input);
v1::StreamOpen OpenModel(const std::string& model, int batch = 1);
v1::StreamOpen Reattach(const std::string& session_id);
v1::StreamOpen ResumeFrom(const v1::StateSnapshot& state);
v1::StreamRequest ChunkRequest(const v1::Tensor& chunk, bool want_state = false);

// The value of an unlabelled metric in Prometheus text; -1 when absent.
double MetricValue(const std::string& text, const std::string& name);

// The bytes of a message received through a generic stub.
std::string Bytes(const grpc::ByteBuffer& buffer);

class GrpcServerTest : public ::testing::Test {
 protected:
  // The server's log lines would drown the test output.
  static void SetUpTestSuite();
  static void TearDownTestSuite();

  void SetUp() override;  // StartServer(Options())
  void TearDown() override;

  // Small limits the suites run into on purpose: --threads=2,
  // --max_unary_length=20000, --max_batch=8, --max_chunk_steps=4096,
  // --max_message_bytes=1 MiB.
  static ServerOptions DefaultOptions();
  // What SetUp starts the server with.
  virtual ServerOptions Options() const { return DefaultOptions(); }
  // A channel to the running server (plaintext).
  virtual std::shared_ptr<grpc::Channel> NewChannel() const;

  // Stops the running server, if any, starts one with `options` and points
  // channel_ and the stubs at it.
  void StartServer(ServerOptions options);
  // The same with Options() changed by `change`.
  void StartServerWith(absl::FunctionRef<void(ServerOptions&)> change);

  // Every call gets a deadline: a bug must fail the test, not hang it.
  static void SetDeadline(grpc::ClientContext* context);

  grpc::Status Infer(const v1::InferRequest& request, v1::InferResponse* response);
  grpc::Status ExportState(const std::string& id, v1::ExportStateResponse* response);
  grpc::Status ImportState(const v1::ImportStateRequest& request,
                           v1::ImportStateResponse* response);

  // Waits (bounded) until a small Infer goes through: a lone worker may
  // still be starting, and a job is taken only by an idle one.
  void WaitForAnIdleWorker();

  struct OpenedStream {
    std::unique_ptr<grpc::ClientContext> context;
    std::unique_ptr<Stream> stream;
    v1::StreamOpened opened;
  };

  // Opens a stream; on failure returns the call's status in *status (and
  // without `status`, fails the test).
  OpenedStream Open(const v1::StreamOpen& open, grpc::Status* status = nullptr);

  // Sends one chunk and reads its response.
  static bool SendChunk(Stream* stream, const v1::Tensor& chunk, v1::StreamResponse* response,
                        bool want_state = false);
  // Ends a stream cleanly (WritesDone): its final status.
  static grpc::Status Close(OpenedStream& s);
  // Ends a stream after an error the server reported: its final status.
  static grpc::Status FinishAfterError(Stream* stream);
  // The client goes away mid-stream: the server keeps the session detached
  // (see WaitForDetached).
  static void Cancel(OpenedStream& s);

  // Waits (bounded) until the server has detached `n` sessions: a
  // cancelled stream is noticed asynchronously.
  bool WaitForDetached(int n);

  // grpc.health.v1.Health/Check by hand (the health protos are not
  // installed): HealthCheckRequest{service = 1}; the reply's field 1 is
  // the status (1 SERVING, 2 NOT_SERVING) in *serving_status.
  grpc::Status HealthCheck(const std::string& service, int* serving_status);

  std::unique_ptr<SsmServer> server_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::Inference::Stub> inference_;
  std::unique_ptr<v1::Math::Stub> math_;
};

}  // namespace ssm::server::testing

#endif  // SSM_TESTS_SERVER_GRPC_SERVER_FIXTURE_H_
