#include "grpc_server_fixture.h"

#include <gmock/gmock.h>
#include <grpcpp/create_channel.h>
#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/security/credentials.h>

#include <chrono>
#include <cmath>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "server/log.h"
#include "tests/common/loopback_port.h"

namespace ssm::server::testing {

const LoadedRepository& ShippedRepository() {
  static const LoadedRepository* repo = [] {
    absl::StatusOr<LoadedRepository> loaded =
        LoadRepository(std::string(SSM_SOURCE_DIR) + "/models");
    EXPECT_TRUE(loaded.ok()) << loaded.status();
    return new LoadedRepository(*std::move(loaded));
  }();
  return *repo;
}

std::shared_ptr<const Model> ShippedModel(const std::string& name) {
  return ShippedRepository().models.at(name).rbegin()->second;
}

v1::Tensor MakeInput(int batch, int steps, double phase) {
  v1::Tensor t;
  t.add_shape(batch);
  t.add_shape(steps);
  t.add_shape(1);
  for (int b = 0; b < batch; ++b) {
    for (int s = 0; s < steps; ++s)
      t.add_values(static_cast<float>(std::sin(0.05 * s + b + phase)));
  }
  return t;
}

v1::Tensor Slice(const v1::Tensor& t, int begin, int end) {
  const int batch = static_cast<int>(t.shape(0)), steps = static_cast<int>(t.shape(1)),
            d = static_cast<int>(t.shape(2));
  v1::Tensor out;
  out.add_shape(batch);
  out.add_shape(end - begin);
  out.add_shape(d);
  for (int b = 0; b < batch; ++b) {
    for (int s = begin; s < end; ++s) {
      for (int f = 0; f < d; ++f) out.add_values(t.values((b * steps + s) * d + f));
    }
  }
  return out;
}

void ExpectClose(const v1::Tensor& got, const v1::Tensor& want, double tol) {
  ASSERT_THAT(got.shape(), ::testing::ElementsAreArray(want.shape()));
  ASSERT_EQ(got.values_size(), want.values_size());
  for (int i = 0; i < want.values_size(); ++i) {
    ASSERT_NEAR(got.values(i), want.values(i), tol * (1 + std::abs(want.values(i)))) << i;
  }
}

v1::InferRequest InferRequestFor(const std::string& model, const v1::Tensor& input) {
  v1::InferRequest request;
  request.set_model(model);
  *request.mutable_input() = input;
  return request;
}

v1::StreamOpen OpenModel(const std::string& model, int batch) {
  v1::StreamOpen open;
  open.set_model(model);
  open.set_batch(batch);
  return open;
}

v1::StreamOpen Reattach(const std::string& session_id) {
  v1::StreamOpen open;
  open.set_session_id(session_id);
  return open;
}

v1::StreamOpen ResumeFrom(const v1::StateSnapshot& state) {
  v1::StreamOpen open;
  *open.mutable_resume_from() = state;
  return open;
}

v1::StreamRequest ChunkRequest(const v1::Tensor& chunk, bool want_state) {
  v1::StreamRequest request;
  *request.mutable_chunk() = chunk;
  request.set_want_state(want_state);
  return request;
}

double MetricValue(const std::string& text, const std::string& name) {
  const size_t at = text.find("\n" + name + " ");
  return at == std::string::npos ? -1 : std::stod(text.substr(at + name.size() + 2));
}

std::string Bytes(const grpc::ByteBuffer& buffer) {
  std::vector<grpc::Slice> slices;
  std::string out;
  if (!buffer.Dump(&slices).ok()) return out;
  for (const grpc::Slice& s : slices)
    out.append(reinterpret_cast<const char*>(s.begin()), s.size());
  return out;
}

void GrpcServerTest::SetUpTestSuite() { SetLogEnabled(false); }
void GrpcServerTest::TearDownTestSuite() { SetLogEnabled(true); }

void GrpcServerTest::SetUp() { StartServer(Options()); }

void GrpcServerTest::TearDown() {
  if (server_ != nullptr) server_->Shutdown(absl::ZeroDuration());
}

ServerOptions GrpcServerTest::DefaultOptions() {
  ServerOptions o;
  o.address = "127.0.0.1:0";
  o.threads = 2;
  o.limits.max_unary_length = 20000;
  o.limits.max_batch = 8;
  o.limits.max_chunk_steps = 4096;
  o.limits.max_message_bytes = 1 << 20;
  return o;
}

std::shared_ptr<grpc::Channel> GrpcServerTest::NewChannel() const {
  // Each channel its own subchannels: from the process-wide pool, a channel
  // to a new server inherits the backoff of an earlier test's subchannel
  // whose server (on the same port number, which the kernel hands out
  // again) has gone, and fails fast with its cached "Connection refused".
  grpc::ChannelArguments args;
  args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
  return grpc::CreateCustomChannel(absl::StrCat("127.0.0.1:", server_->port()),
                                   grpc::InsecureChannelCredentials(), args);
}

void GrpcServerTest::StartServer(ServerOptions options) {
  if (server_ != nullptr) server_->Shutdown(absl::ZeroDuration());
  // Its ports come from the kernel (port 0), which may hand out one that
  // no connection reaches here (tests/common/loopback_port.h): then again.
  absl::StatusOr<std::unique_ptr<SsmServer>> server;
  for (int attempt = 0; attempt < 8; ++attempt) {
    server = SsmServer::Start(options, ShippedRepository());
    ASSERT_TRUE(server.ok()) << server.status();
    const SsmServer& s = **server;
    if (::ssm::testing::LoopbackPortReachable(s.port()) &&
        (s.http_port() == 0 || ::ssm::testing::LoopbackPortReachable(s.http_port()))) {
      break;
    }
    (*server)->Shutdown(absl::ZeroDuration());
    server = absl::UnavailableError("no reachable ports in 8 starts");
  }
  ASSERT_TRUE(server.ok()) << server.status();
  server_ = *std::move(server);
  channel_ = NewChannel();
  inference_ = v1::Inference::NewStub(channel_);
  math_ = v1::Math::NewStub(channel_);
}

void GrpcServerTest::StartServerWith(absl::FunctionRef<void(ServerOptions&)> change) {
  ServerOptions options = Options();
  change(options);
  StartServer(std::move(options));
}

void GrpcServerTest::SetDeadline(grpc::ClientContext* context) {
  context->set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(20));
}

grpc::Status GrpcServerTest::Infer(const v1::InferRequest& request, v1::InferResponse* response) {
  grpc::ClientContext context;
  SetDeadline(&context);
  return inference_->Infer(&context, request, response);
}

grpc::Status GrpcServerTest::ExportState(const std::string& id, v1::ExportStateResponse* response) {
  grpc::ClientContext context;
  SetDeadline(&context);
  v1::ExportStateRequest request;
  request.set_session_id(id);
  return inference_->ExportState(&context, request, response);
}

grpc::Status GrpcServerTest::ImportState(const v1::ImportStateRequest& request,
                                         v1::ImportStateResponse* response) {
  grpc::ClientContext context;
  SetDeadline(&context);
  return inference_->ImportState(&context, request, response);
}

void GrpcServerTest::WaitForAnIdleWorker() {
  const v1::InferRequest small = InferRequestFor("legt-delay", MakeInput(1, 5));
  v1::InferResponse response;
  const absl::Time deadline = absl::Now() + absl::Seconds(10);
  while (!Infer(small, &response).ok() && absl::Now() < deadline) {
    absl::SleepFor(absl::Milliseconds(5));
  }
}

GrpcServerTest::OpenedStream GrpcServerTest::Open(const v1::StreamOpen& open,
                                                  grpc::Status* status) {
  OpenedStream s;
  s.context = std::make_unique<grpc::ClientContext>();
  SetDeadline(s.context.get());
  s.stream = inference_->StreamInfer(s.context.get());
  v1::StreamRequest request;
  *request.mutable_open() = open;
  v1::StreamResponse response;
  if (s.stream->Write(request) && s.stream->Read(&response)) {
    EXPECT_TRUE(response.has_opened());
    s.opened = response.opened();
    if (status != nullptr) *status = grpc::Status::OK;
  } else {
    s.stream->WritesDone();
    const grpc::Status finished = s.stream->Finish();
    if (status != nullptr) {
      *status = finished;
    } else {
      ADD_FAILURE() << "open failed: " << finished.error_message();
    }
  }
  return s;
}

bool GrpcServerTest::SendChunk(Stream* stream, const v1::Tensor& chunk,
                               v1::StreamResponse* response, bool want_state) {
  return stream->Write(ChunkRequest(chunk, want_state)) && stream->Read(response);
}

grpc::Status GrpcServerTest::Close(OpenedStream& s) {
  s.stream->WritesDone();
  return s.stream->Finish();
}

grpc::Status GrpcServerTest::FinishAfterError(Stream* stream) {
  v1::StreamResponse ignored;
  while (stream->Read(&ignored)) {
  }
  return stream->Finish();
}

void GrpcServerTest::Cancel(OpenedStream& s) {
  s.context->TryCancel();
  s.stream->Finish().IgnoreError();
}

bool GrpcServerTest::WaitForDetached(int n) {
  const absl::Time deadline = absl::Now() + absl::Seconds(10);
  while (absl::Now() < deadline) {
    if (server_->sessions().GetStats().detached == n) return true;
    absl::SleepFor(absl::Milliseconds(5));
  }
  return false;
}

grpc::Status GrpcServerTest::HealthCheck(const std::string& service, int* serving_status) {
  std::string request_bytes;
  if (!service.empty()) {
    request_bytes =
        absl::StrCat("\x0a", std::string(1, static_cast<char>(service.size())), service);
  }
  grpc::Slice slice(request_bytes);
  grpc::ByteBuffer request(&slice, 1), response;
  grpc::GenericStub stub(channel_);
  grpc::ClientContext context;
  SetDeadline(&context);
  absl::Notification done;
  grpc::Status status;
  stub.UnaryCall(&context, "/grpc.health.v1.Health/Check", grpc::StubOptions(), &request, &response,
                 [&](grpc::Status s) {
                   status = std::move(s);
                   done.Notify();
                 });
  done.WaitForNotification();
  const std::string bytes = Bytes(response);
  *serving_status = bytes.size() == 2 && bytes[0] == 0x08 ? bytes[1] : 0;
  return status;
}

}  // namespace ssm::server::testing
