// ssm_server in-process on 127.0.0.1 (a free port), over the shipped model
// repository, through the generated stubs: every RPC, its exact error
// codes, sessions across streams, health, reflection, drain and metrics.

#include <algorithm>
#include <chrono>
#include <cmath>
#include <limits>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include <gmock/gmock.h>
#include <grpcpp/create_channel.h>
#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/security/credentials.h>
#include <gtest/gtest.h>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "server/log.h"
#include "server/model_repository.h"
#include "server/ssm_server.h"
#include "ssm/v1/ssm_service.grpc.pb.h"

namespace ssm::server {
namespace {

using ::testing::HasSubstr;
using Stream = grpc::ClientReaderWriter<v1::StreamRequest, v1::StreamResponse>;

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

v1::Tensor MakeInput(int batch, int steps, double phase = 0) {
  v1::Tensor t;
  t.add_shape(batch);
  t.add_shape(steps);
  t.add_shape(1);
  for (int b = 0; b < batch; ++b) {
    for (int s = 0; s < steps; ++s) t.add_values(static_cast<float>(std::sin(0.05 * s + b + phase)));
  }
  return t;
}

// Rows [begin, end) of the time axis of a [batch, T, d] tensor.
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

void ExpectClose(const v1::Tensor& got, const v1::Tensor& want, double tol = 1e-5) {
  ASSERT_THAT(got.shape(), ::testing::ElementsAreArray(want.shape()));
  ASSERT_EQ(got.values_size(), want.values_size());
  for (int i = 0; i < want.values_size(); ++i) {
    ASSERT_NEAR(got.values(i), want.values(i), tol * (1 + std::abs(want.values(i)))) << i;
  }
}

class GrpcServerTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() { SetLogEnabled(false); }
  static void TearDownTestSuite() { SetLogEnabled(true); }

  void SetUp() override { StartServer(DefaultOptions()); }
  void TearDown() override {
    if (server_ != nullptr) server_->Shutdown(absl::ZeroDuration());
  }

  static ServerOptions DefaultOptions() {
    ServerOptions o;
    o.address = "127.0.0.1:0";
    o.threads = 2;
    o.limits.max_unary_length = 20000;
    o.limits.max_batch = 8;
    o.limits.max_chunk_steps = 4096;
    o.limits.max_message_bytes = 1 << 20;
    return o;
  }

  void StartServer(ServerOptions options) {
    if (server_ != nullptr) server_->Shutdown(absl::ZeroDuration());
    absl::StatusOr<std::unique_ptr<SsmServer>> server =
        SsmServer::Start(std::move(options), ShippedRepository());
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = *std::move(server);
    channel_ = grpc::CreateChannel(absl::StrCat("127.0.0.1:", server_->port()),
                                   grpc::InsecureChannelCredentials());
    inference_ = v1::Inference::NewStub(channel_);
    math_ = v1::Math::NewStub(channel_);
  }

  // Every call gets a deadline: a bug must fail the test, not hang it.
  static void SetDeadline(grpc::ClientContext* context) {
    context->set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(20));
  }

  grpc::Status Infer(const v1::InferRequest& request, v1::InferResponse* response) {
    grpc::ClientContext context;
    SetDeadline(&context);
    return inference_->Infer(&context, request, response);
  }

  struct OpenedStream {
    std::unique_ptr<grpc::ClientContext> context;
    std::unique_ptr<Stream> stream;
    v1::StreamOpened opened;
  };

  // Opens a stream; on failure returns the call's status in *status.
  OpenedStream Open(const v1::StreamOpen& open, grpc::Status* status = nullptr) {
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

  static v1::StreamOpen OpenModel(const std::string& model, int batch = 1) {
    v1::StreamOpen open;
    open.set_model(model);
    open.set_batch(batch);
    return open;
  }

  static bool SendChunk(Stream* stream, const v1::Tensor& chunk, v1::StreamResponse* response,
                        bool want_state = false) {
    v1::StreamRequest request;
    *request.mutable_chunk() = chunk;
    request.set_want_state(want_state);
    return stream->Write(request) && stream->Read(response);
  }

  // Ends a stream after an error the server reported: its final status.
  static grpc::Status FinishAfterError(Stream* stream) {
    v1::StreamResponse ignored;
    while (stream->Read(&ignored)) {
    }
    return stream->Finish();
  }

  grpc::Status ExportState(const std::string& id, v1::ExportStateResponse* response) {
    grpc::ClientContext context;
    SetDeadline(&context);
    v1::ExportStateRequest request;
    request.set_session_id(id);
    return inference_->ExportState(&context, request, response);
  }

  // Waits (bounded) until the server has detached `n` sessions: a
  // cancelled stream is noticed asynchronously.
  bool WaitForDetached(int n) {
    const absl::Time deadline = absl::Now() + absl::Seconds(10);
    while (absl::Now() < deadline) {
      if (server_->sessions().GetStats().detached == n) return true;
      absl::SleepFor(absl::Milliseconds(5));
    }
    return false;
  }

  // grpc.health.v1.Health/Check by hand (the health protos are not
  // installed): HealthCheckRequest{service = 1}; the reply's field 1 is
  // the status (1 SERVING, 2 NOT_SERVING).
  grpc::Status HealthCheck(const std::string& service, int* serving_status) {
    std::string request_bytes;
    if (!service.empty()) {
      request_bytes = absl::StrCat("\x0a", std::string(1, static_cast<char>(service.size())),
                                   service);
    }
    grpc::Slice slice(request_bytes);
    grpc::ByteBuffer request(&slice, 1), response;
    grpc::GenericStub stub(channel_);
    grpc::ClientContext context;
    SetDeadline(&context);
    absl::Notification done;
    grpc::Status status;
    stub.UnaryCall(&context, "/grpc.health.v1.Health/Check", grpc::StubOptions(), &request,
                   &response, [&](grpc::Status s) {
                     status = std::move(s);
                     done.Notify();
                   });
    done.WaitForNotification();
    const std::string bytes = Bytes(response);
    *serving_status = bytes.size() == 2 && bytes[0] == 0x08 ? bytes[1] : 0;
    return status;
  }

  static std::string Bytes(const grpc::ByteBuffer& buffer) {
    std::vector<grpc::Slice> slices;
    std::string out;
    if (!buffer.Dump(&slices).ok()) return out;
    for (const grpc::Slice& s : slices) out.append(reinterpret_cast<const char*>(s.begin()), s.size());
    return out;
  }

  std::unique_ptr<SsmServer> server_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::Inference::Stub> inference_;
  std::unique_ptr<v1::Math::Stub> math_;
};

TEST_F(GrpcServerTest, ListsAndDescribesModels) {
  grpc::ClientContext context;
  SetDeadline(&context);
  v1::ListModelsResponse list;
  ASSERT_TRUE(inference_->ListModels(&context, v1::ListModelsRequest(), &list).ok());
  ASSERT_EQ(list.models_size(), 3);
  EXPECT_EQ(list.models(0).name(), "legs-memory");
  EXPECT_EQ(list.models(1).name(), "legt-delay");
  EXPECT_EQ(list.models(2).name(), "s4-demo");
  for (const v1::ModelStatus& m : list.models()) {
    EXPECT_THAT(m.versions(), ::testing::ElementsAre(1));
    EXPECT_EQ(m.error(), "");
  }

  grpc::ClientContext context2;
  SetDeadline(&context2);
  v1::GetModelRequest request;
  request.set_model("s4-demo");
  v1::GetModelResponse model;
  ASSERT_TRUE(inference_->GetModel(&context2, request, &model).ok());
  EXPECT_EQ(model.config().name(), "s4-demo");
  EXPECT_EQ(model.config().s4().n_layers(), 2);
  EXPECT_EQ(model.version(), 1);
  EXPECT_EQ(model.fingerprint(), ShippedModel("s4-demo")->fingerprint());
  EXPECT_TRUE(model.streamable());
  EXPECT_GT(model.memory_bytes(), 0u);
  // Two layers of 64 channels, N/2 = 32 complex modes each.
  EXPECT_EQ(model.state_bytes(), 2 * 64 * 64 * 8);

  grpc::ClientContext context3;
  SetDeadline(&context3);
  request.set_version(2);
  grpc::Status status = inference_->GetModel(&context3, request, &model);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_THAT(status.error_message(), HasSubstr("no version 2"));
}

TEST_F(GrpcServerTest, InferMatchesTheModel) {
  v1::InferRequest request;
  request.set_model("legt-delay");
  *request.mutable_input() = MakeInput(2, 300);
  v1::InferResponse response;
  grpc::Status status = Infer(request, &response);
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(response.model(), "legt-delay");
  EXPECT_EQ(response.version(), 1);
  EXPECT_THAT(response.output().shape(), ::testing::ElementsAre(2, 300, 3));
  EXPECT_FALSE(response.has_state());

  std::shared_ptr<const Model> model = ShippedModel("legt-delay");
  std::vector<double> x(request.input().values().begin(), request.input().values().end());
  std::vector<double> y(2 * 300 * 3);
  ASSERT_TRUE(model->Forward(x, 2, 300, absl::MakeSpan(y)).ok());
  for (size_t i = 0; i < y.size(); ++i) {
    ASSERT_EQ(response.output().values(static_cast<int>(i)), static_cast<float>(y[i])) << i;
  }
}

TEST_F(GrpcServerTest, InferRefusesBadInputWithExactCodes) {
  v1::InferRequest request;
  v1::InferResponse response;
  request.set_model("no-such-model");
  *request.mutable_input() = MakeInput(1, 10);
  EXPECT_EQ(Infer(request, &response).error_code(), grpc::StatusCode::NOT_FOUND);

  request.set_model("legt-delay");
  request.set_version(7);
  grpc::Status status = Infer(request, &response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_THAT(status.error_message(), HasSubstr("no version 7"));
  request.set_version(0);

  request.mutable_input()->set_values(5, std::numeric_limits<float>::quiet_NaN());
  status = Infer(request, &response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(status.error_message(), "input.values[5] is NaN");

  *request.mutable_input() = MakeInput(1, 10);
  request.mutable_input()->set_shape(2, 2);
  status = Infer(request, &response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(status.error_message(), HasSubstr("input.shape[2]"));

  request.mutable_input()->clear_shape();
  status = Infer(request, &response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(status.error_message(), HasSubstr("input.shape"));

  // Server limits: RESOURCE_EXHAUSTED naming the flag.
  *request.mutable_input() = MakeInput(9, 2);
  status = Infer(request, &response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_THAT(status.error_message(), HasSubstr("--max_batch=8"));

  *request.mutable_input() = MakeInput(1, 20001);
  status = Infer(request, &response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_THAT(status.error_message(), HasSubstr("--max_unary_length=20000"));

  request.set_model("legs-memory");  // 32 outputs per step: 10000 steps = 1.28 MB out
  *request.mutable_input() = MakeInput(1, 10000);
  status = Infer(request, &response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_THAT(status.error_message(), HasSubstr("--max_message_bytes=1048576"));

  // gRPC's own receive limit (a 1.3 MB request).
  request.set_model("legt-delay");
  *request.mutable_input() = MakeInput(8, 20000);
  EXPECT_EQ(Infer(request, &response).error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);

  // The model's own max_length is a property of the request: INVALID_ARGUMENT.
  request.set_model("s4-demo");
  *request.mutable_input() = MakeInput(1, 16385);
  status = Infer(request, &response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(status.error_message(), HasSubstr("max_length 16384"));

  // A deadline already past.
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() - std::chrono::seconds(1));
  *request.mutable_input() = MakeInput(1, 10);
  EXPECT_EQ(inference_->Infer(&context, request, &response).error_code(),
            grpc::StatusCode::DEADLINE_EXCEEDED);

  // And the server still answers.
  request.set_model("legt-delay");
  EXPECT_TRUE(Infer(request, &response).ok());
}

TEST_F(GrpcServerTest, StreamedChunksEqualOneInfer) {
  const v1::Tensor input = MakeInput(2, 400);
  v1::InferRequest request;
  request.set_model("s4-demo");
  *request.mutable_input() = input;
  v1::InferResponse whole;
  ASSERT_TRUE(Infer(request, &whole).ok());

  OpenedStream s = Open(OpenModel("s4-demo", 2));
  EXPECT_EQ(s.opened.session_id().size(), 32u);
  EXPECT_EQ(s.opened.model(), "s4-demo");
  EXPECT_EQ(s.opened.version(), 1);
  EXPECT_EQ(s.opened.batch(), 2);
  EXPECT_EQ(s.opened.d_input(), 1);
  EXPECT_EQ(s.opened.d_output(), 1);
  EXPECT_EQ(s.opened.position(), 0);
  EXPECT_EQ(server_->sessions().GetStats().attached, 1);

  // Steps and short chunks run recurrently, long ones as convolutions.
  const int cuts[] = {0, 1, 2, 9, 73, 200, 201, 400};
  for (int i = 0; i + 1 < 8; ++i) {
    v1::StreamResponse response;
    ASSERT_TRUE(SendChunk(s.stream.get(), Slice(input, cuts[i], cuts[i + 1]), &response));
    EXPECT_EQ(response.position(), cuts[i + 1]);
    ExpectClose(response.output(), Slice(whole.output(), cuts[i], cuts[i + 1]));
  }
  // A clean end closes the session.
  s.stream->WritesDone();
  ASSERT_TRUE(s.stream->Finish().ok());
  v1::ExportStateResponse exported;
  EXPECT_EQ(ExportState(s.opened.session_id(), &exported).error_code(),
            grpc::StatusCode::NOT_FOUND);
  EXPECT_EQ(server_->sessions().GetStats().attached, 0);
  EXPECT_EQ(server_->sessions().GetStats().detached, 0);
}

TEST_F(GrpcServerTest, SnapshotsMoveSessionsBetweenStreams) {
  const v1::Tensor input = MakeInput(1, 150);
  OpenedStream a = Open(OpenModel("legt-delay"));
  v1::StreamResponse first;
  ASSERT_TRUE(SendChunk(a.stream.get(), Slice(input, 0, 100), &first, /*want_state=*/true));
  ASSERT_TRUE(first.has_state());
  EXPECT_EQ(first.state().model(), "legt-delay");
  EXPECT_EQ(first.state().version(), 1);
  EXPECT_EQ(first.state().position(), 100);
  EXPECT_EQ(first.state().batch(), 1);
  EXPECT_EQ(first.state().fingerprint(), ShippedModel("legt-delay")->fingerprint());

  // ExportState of the attached session: the same bytes.
  v1::ExportStateResponse exported;
  ASSERT_TRUE(ExportState(a.opened.session_id(), &exported).ok());
  EXPECT_EQ(exported.state().data(), first.state().data());

  // Resume in a second stream, and import as a detached session.
  v1::StreamOpen resume;
  *resume.mutable_resume_from() = first.state();
  OpenedStream b = Open(resume);
  EXPECT_EQ(b.opened.position(), 100);
  EXPECT_NE(b.opened.session_id(), a.opened.session_id());

  grpc::ClientContext context;
  SetDeadline(&context);
  v1::ImportStateRequest import;
  *import.mutable_state() = first.state();
  import.set_model("legt-delay");
  v1::ImportStateResponse imported;
  ASSERT_TRUE(inference_->ImportState(&context, import, &imported).ok());
  EXPECT_EQ(imported.position(), 100);
  v1::StreamOpen reattach;
  reattach.set_session_id(imported.session_id());
  OpenedStream c = Open(reattach);
  EXPECT_EQ(c.opened.position(), 100);

  // All three continue identically.
  v1::StreamResponse ra, rb, rc;
  ASSERT_TRUE(SendChunk(a.stream.get(), Slice(input, 100, 150), &ra));
  ASSERT_TRUE(SendChunk(b.stream.get(), Slice(input, 100, 150), &rb));
  ASSERT_TRUE(SendChunk(c.stream.get(), Slice(input, 100, 150), &rc));
  ExpectClose(rb.output(), ra.output(), 0);
  ExpectClose(rc.output(), ra.output(), 0);
  EXPECT_EQ(rc.position(), 150);
  for (OpenedStream* s : {&a, &b, &c}) {
    s->stream->WritesDone();
    EXPECT_TRUE(s->stream->Finish().ok());
  }
}

TEST_F(GrpcServerTest, InferReturnsStateToContinueInAStream) {
  const v1::Tensor input = MakeInput(1, 130);
  v1::InferRequest request;
  request.set_model("s4-demo");
  *request.mutable_input() = input;
  v1::InferResponse whole;
  ASSERT_TRUE(Infer(request, &whole).ok());

  *request.mutable_input() = Slice(input, 0, 80);
  request.set_return_state(true);
  v1::InferResponse head;
  ASSERT_TRUE(Infer(request, &head).ok());
  ASSERT_TRUE(head.has_state());
  EXPECT_EQ(head.state().position(), 80);
  ExpectClose(head.output(), Slice(whole.output(), 0, 80));

  v1::StreamOpen open;
  *open.mutable_resume_from() = head.state();
  OpenedStream s = Open(open);
  v1::StreamResponse tail;
  ASSERT_TRUE(SendChunk(s.stream.get(), Slice(input, 80, 130), &tail));
  ExpectClose(tail.output(), Slice(whole.output(), 80, 130));
  s.stream->WritesDone();
  EXPECT_TRUE(s.stream->Finish().ok());
}

TEST_F(GrpcServerTest, BrokenStreamDetachesAndCanBeReattached) {
  const v1::Tensor input = MakeInput(1, 60);
  OpenedStream a = Open(OpenModel("legt-delay"));
  v1::StreamResponse first;
  ASSERT_TRUE(SendChunk(a.stream.get(), Slice(input, 0, 30), &first));
  const std::string id = a.opened.session_id();

  // While attached, nobody else may take it.
  v1::StreamOpen reattach;
  reattach.set_session_id(id);
  grpc::Status status;
  Open(reattach, &status);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::FAILED_PRECONDITION);

  a.context->TryCancel();
  a.stream->Finish().IgnoreError();
  ASSERT_TRUE(WaitForDetached(1));

  OpenedStream b = Open(reattach, &status);
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(b.opened.session_id(), id);
  EXPECT_EQ(b.opened.position(), 30);
  v1::StreamResponse second;
  ASSERT_TRUE(SendChunk(b.stream.get(), Slice(input, 30, 60), &second));
  EXPECT_EQ(second.position(), 60);

  v1::InferRequest request;
  request.set_model("legt-delay");
  *request.mutable_input() = input;
  v1::InferResponse whole;
  ASSERT_TRUE(Infer(request, &whole).ok());
  ExpectClose(second.output(), Slice(whole.output(), 30, 60));
  b.stream->WritesDone();
  EXPECT_TRUE(b.stream->Finish().ok());
}

TEST_F(GrpcServerTest, GarbageEndsTheStreamAndKeepsTheSession) {
  // A chunk before open.
  {
    grpc::ClientContext context;
    SetDeadline(&context);
    std::unique_ptr<Stream> stream = inference_->StreamInfer(&context);
    v1::StreamRequest request;
    *request.mutable_chunk() = MakeInput(1, 3);
    ASSERT_TRUE(stream->Write(request));
    const grpc::Status status = FinishAfterError(stream.get());
    EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
    EXPECT_THAT(status.error_message(), HasSubstr("must be `open`"));
  }
  // An empty request.
  {
    grpc::ClientContext context;
    SetDeadline(&context);
    std::unique_ptr<Stream> stream = inference_->StreamInfer(&context);
    ASSERT_TRUE(stream->Write(v1::StreamRequest()));
    EXPECT_EQ(FinishAfterError(stream.get()).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  }
  // Open errors.
  grpc::Status status;
  Open(OpenModel("no-such-model"), &status);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::NOT_FOUND);
  Open(OpenModel("legt-delay", 9), &status);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_THAT(status.error_message(), HasSubstr("--max_batch=8"));
  v1::StreamOpen both = OpenModel("legt-delay");
  both.set_session_id("abc");
  both.mutable_resume_from()->set_data("x");
  Open(both, &status);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  v1::StreamOpen unknown;
  unknown.set_session_id("00000000000000000000000000000000");
  Open(unknown, &status);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::NOT_FOUND);

  // A good session, then a bad chunk: the stream ends, the session stays
  // detached with its state as it was.
  const v1::Tensor input = MakeInput(1, 20);
  OpenedStream s = Open(OpenModel("legt-delay"));
  v1::StreamResponse ok;
  ASSERT_TRUE(SendChunk(s.stream.get(), Slice(input, 0, 10), &ok));
  v1::Tensor bad = Slice(input, 10, 20);
  bad.set_values(4, std::numeric_limits<float>::infinity());
  v1::StreamResponse ignored;
  SendChunk(s.stream.get(), bad, &ignored);
  status = FinishAfterError(s.stream.get());
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(status.error_message(), "chunk.values[4] is +Inf");
  ASSERT_TRUE(WaitForDetached(1));

  v1::StreamOpen reattach;
  reattach.set_session_id(s.opened.session_id());
  OpenedStream again = Open(reattach);
  EXPECT_EQ(again.opened.position(), 10);
  // A chunk of the wrong batch, then a second open: each ends its stream.
  SendChunk(again.stream.get(), MakeInput(2, 3), &ignored);
  status = FinishAfterError(again.stream.get());
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(status.error_message(), HasSubstr("chunk.shape[0] = 2"));
  ASSERT_TRUE(WaitForDetached(1));

  OpenedStream third = Open(reattach);
  v1::StreamRequest second_open;
  *second_open.mutable_open() = OpenModel("legt-delay");
  ASSERT_TRUE(third.stream->Write(second_open));
  status = FinishAfterError(third.stream.get());
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(status.error_message(), HasSubstr("only the first"));
  ASSERT_TRUE(WaitForDetached(1));

  // Through all that the state never moved.
  v1::ExportStateResponse exported;
  ASSERT_TRUE(ExportState(s.opened.session_id(), &exported).ok());
  EXPECT_EQ(exported.state().position(), 10);
}

TEST_F(GrpcServerTest, ChunkLimits) {
  OpenedStream s = Open(OpenModel("legt-delay"));
  v1::StreamResponse ignored;
  SendChunk(s.stream.get(), MakeInput(1, 4097), &ignored);
  const grpc::Status status = FinishAfterError(s.stream.get());
  EXPECT_EQ(status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_THAT(status.error_message(), HasSubstr("--max_chunk_steps=4096"));
}

TEST_F(GrpcServerTest, SnapshotErrors) {
  OpenedStream s = Open(OpenModel("legt-delay"));
  v1::StreamResponse response;
  ASSERT_TRUE(SendChunk(s.stream.get(), MakeInput(1, 5), &response, true));

  v1::ImportStateRequest import;
  *import.mutable_state() = response.state();
  import.set_model("legs-memory");  // another model's weights
  v1::ImportStateResponse imported;
  grpc::ClientContext c1;
  SetDeadline(&c1);
  grpc::Status status = inference_->ImportState(&c1, import, &imported);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::FAILED_PRECONDITION);

  import.set_model("");  // falls back to state.model
  std::string data = response.state().data();
  data[data.size() - 9] ^= 1;
  import.mutable_state()->set_data(data);
  grpc::ClientContext c2;
  SetDeadline(&c2);
  status = inference_->ImportState(&c2, import, &imported);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::DATA_LOSS);

  v1::StreamOpen resume;
  resume.mutable_resume_from()->set_data("not a snapshot");
  resume.set_model("legt-delay");
  Open(resume, &status);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::DATA_LOSS);

  v1::ExportStateResponse exported;
  EXPECT_EQ(ExportState("ffffffffffffffffffffffffffffffff", &exported).error_code(),
            grpc::StatusCode::NOT_FOUND);
  EXPECT_EQ(ExportState("", &exported).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  s.stream->WritesDone();
  EXPECT_TRUE(s.stream->Finish().ok());
}

TEST_F(GrpcServerTest, MathService) {
  grpc::ClientContext context;
  SetDeadline(&context);
  v1::BuildHippoRequest hippo;
  hippo.set_measure(v1::HIPPO_MEASURE_LEGS);
  hippo.set_n(8);
  hippo.set_dt(0.01);
  v1::BuildHippoResponse matrices;
  ASSERT_TRUE(math_->BuildHippo(&context, hippo, &matrices).ok());
  EXPECT_EQ(matrices.a().rows(), 8);
  EXPECT_EQ(matrices.a().values(0), -1.0);  // A[0,0] = -(0+1)

  grpc::ClientContext context2;
  SetDeadline(&context2);
  v1::ComputeKernelRequest kernel;
  kernel.mutable_init()->set_kind(v1::SsmInit::KIND_S4D_INV);
  kernel.mutable_init()->set_n(16);
  kernel.mutable_init()->set_channels(4);
  kernel.set_length(128);
  v1::ComputeKernelResponse k;
  ASSERT_TRUE(math_->ComputeKernel(&context2, kernel, &k).ok());
  EXPECT_EQ(k.kernel().rows(), 4);
  EXPECT_EQ(k.kernel().cols(), 128);

  grpc::ClientContext context3;
  SetDeadline(&context3);
  kernel.set_length(20001);
  EXPECT_EQ(math_->ComputeKernel(&context3, kernel, &k).error_code(),
            grpc::StatusCode::RESOURCE_EXHAUSTED);
}

TEST_F(GrpcServerTest, HealthNamesAndReflection) {
  int serving = 0;
  ASSERT_TRUE(HealthCheck("", &serving).ok());
  EXPECT_EQ(serving, 1);
  ASSERT_TRUE(HealthCheck("ssm.v1.Inference", &serving).ok());
  EXPECT_EQ(serving, 1);
  ASSERT_TRUE(HealthCheck("ssm.v1.Inference/legt-delay", &serving).ok());
  EXPECT_EQ(serving, 1);
  EXPECT_EQ(HealthCheck("ssm.v1.Inference/no-such-model", &serving).error_code(),
            grpc::StatusCode::NOT_FOUND);

  // grpc.reflection.v1alpha: ServerReflectionRequest{list_services = 7}.
  grpc::GenericStub stub(channel_);
  grpc::ClientContext context;
  SetDeadline(&context);
  grpc::CompletionQueue cq;
  auto call = stub.PrepareCall(
      &context, "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo", &cq);
  auto step = [&cq](int tag) {
    void* got = nullptr;
    bool ok = false;
    return cq.Next(&got, &ok) && ok && got == reinterpret_cast<void*>(static_cast<intptr_t>(tag));
  };
  call->StartCall(reinterpret_cast<void*>(1));
  ASSERT_TRUE(step(1));
  const std::string request_bytes("\x3a\x00", 2);
  grpc::Slice slice(request_bytes);
  grpc::ByteBuffer request(&slice, 1), response;
  call->Write(request, reinterpret_cast<void*>(2));
  ASSERT_TRUE(step(2));
  call->Read(&response, reinterpret_cast<void*>(3));
  ASSERT_TRUE(step(3));
  const std::string services = Bytes(response);
  EXPECT_THAT(services, HasSubstr("ssm.v1.Inference"));
  EXPECT_THAT(services, HasSubstr("ssm.v1.Math"));
  EXPECT_THAT(services, HasSubstr("grpc.health.v1.Health"));
  call->WritesDone(reinterpret_cast<void*>(4));
  ASSERT_TRUE(step(4));
  grpc::Status status;
  call->Finish(&status, reinterpret_cast<void*>(5));
  ASSERT_TRUE(step(5));
  EXPECT_TRUE(status.ok()) << status.error_message();
  cq.Shutdown();
}

TEST_F(GrpcServerTest, DrainRefusesNewWorkAndLetsStreamsFinish) {
  OpenedStream s = Open(OpenModel("legt-delay"));
  v1::StreamResponse response;
  ASSERT_TRUE(SendChunk(s.stream.get(), MakeInput(1, 5), &response));

  server_->BeginDrain();
  int serving = 0;
  ASSERT_TRUE(HealthCheck("", &serving).ok());
  EXPECT_EQ(serving, 2);  // NOT_SERVING
  ASSERT_TRUE(HealthCheck("ssm.v1.Inference/legt-delay", &serving).ok());
  EXPECT_EQ(serving, 2);

  v1::InferRequest request;
  request.set_model("legt-delay");
  *request.mutable_input() = MakeInput(1, 5);
  v1::InferResponse infer;
  grpc::Status status = Infer(request, &infer);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAVAILABLE);
  EXPECT_THAT(status.error_message(), HasSubstr("server is draining"));
  Open(OpenModel("legt-delay"), &status);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAVAILABLE);

  // A session can still be exported, to move it to another replica.
  v1::ExportStateResponse exported;
  ASSERT_TRUE(ExportState(s.opened.session_id(), &exported).ok());
  EXPECT_EQ(exported.state().position(), 5);

  // The running stream goes on.
  ASSERT_TRUE(SendChunk(s.stream.get(), MakeInput(1, 5), &response));
  EXPECT_EQ(response.position(), 10);
  s.stream->WritesDone();
  EXPECT_TRUE(s.stream->Finish().ok());

  const absl::Time start = absl::Now();
  server_->Shutdown(absl::Seconds(5));
  EXPECT_LT(absl::Now() - start, absl::Seconds(5));  // nothing was left running
  server_.reset();
}

TEST_F(GrpcServerTest, ShutdownKeepsAnsweringUntilRunningCallsFinish) {
  OpenedStream s = Open(OpenModel("legt-delay"));
  absl::Notification shut_down;
  std::thread drainer([&] {
    server_->Shutdown(absl::Seconds(20));
    shut_down.Notify();
  });
  // On the existing connection, while the stream runs: health says
  // NOT_SERVING and new work is refused with the drain's own message.
  int serving = 0;
  const absl::Time deadline = absl::Now() + absl::Seconds(10);
  while (serving != 2 && absl::Now() < deadline) {
    ASSERT_TRUE(HealthCheck("", &serving).ok());
  }
  EXPECT_EQ(serving, 2);
  v1::InferRequest request;
  request.set_model("legt-delay");
  *request.mutable_input() = MakeInput(1, 5);
  v1::InferResponse infer;
  const grpc::Status status = Infer(request, &infer);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAVAILABLE);
  EXPECT_THAT(status.error_message(), HasSubstr("server is draining"));
  EXPECT_FALSE(shut_down.HasBeenNotified());

  v1::StreamResponse response;
  ASSERT_TRUE(SendChunk(s.stream.get(), MakeInput(1, 5), &response));
  s.stream->WritesDone();
  EXPECT_TRUE(s.stream->Finish().ok());
  // The last call is done: the drain ends long before its 20 s grace.
  EXPECT_TRUE(shut_down.WaitForNotificationWithTimeout(absl::Seconds(10)));
  drainer.join();
  server_.reset();
}

TEST_F(GrpcServerTest, ShutdownCancelsStreamsPastTheGrace) {
  OpenedStream s = Open(OpenModel("legt-delay"));
  const absl::Time start = absl::Now();
  server_->Shutdown(absl::Milliseconds(200));
  EXPECT_LT(absl::Now() - start, absl::Seconds(5));
  v1::StreamResponse response;
  EXPECT_FALSE(SendChunk(s.stream.get(), MakeInput(1, 5), &response));
  EXPECT_FALSE(s.stream->Finish().ok());
  server_.reset();
}

TEST_F(GrpcServerTest, MetricsCountCallsAndSessions) {
  v1::InferRequest request;
  request.set_model("legt-delay");
  *request.mutable_input() = MakeInput(1, 5);
  v1::InferResponse response;
  ASSERT_TRUE(Infer(request, &response).ok());
  request.set_model("nope");
  ASSERT_FALSE(Infer(request, &response).ok());
  OpenedStream s = Open(OpenModel("legt-delay"));
  v1::StreamResponse chunk;
  ASSERT_TRUE(SendChunk(s.stream.get(), MakeInput(1, 7), &chunk));

  const std::string text = server_->metrics().Text();
  EXPECT_THAT(text, HasSubstr("ssm_rpc_requests_total{code=\"OK\",rpc=\"Infer\"} 1"));
  EXPECT_THAT(text, HasSubstr("ssm_rpc_requests_total{code=\"NOT_FOUND\",rpc=\"Infer\"} 1"));
  EXPECT_THAT(text, HasSubstr("ssm_rpc_errors_total{code=\"NOT_FOUND\",rpc=\"Infer\"} 1"));
  EXPECT_THAT(text, HasSubstr("ssm_rpc_latency_seconds_count{rpc=\"Infer\"} 2"));
  EXPECT_THAT(text, HasSubstr("ssm_stream_steps_total{model=\"legt-delay\"} 7"));
  EXPECT_THAT(text, HasSubstr("ssm_stream_chunk_latency_seconds_count{model=\"legt-delay\"} 1"));
  EXPECT_THAT(text, HasSubstr("ssm_sessions_active 1"));
  EXPECT_THAT(text, HasSubstr("ssm_sessions_detached 0"));
  EXPECT_THAT(text, HasSubstr("ssm_models_loaded 3"));
  EXPECT_THAT(text, HasSubstr("ssm_session_evictions_total 0"));
  // s4-demo has 2 layers: each Infer looks up each layer's spectra for its
  // length rung once, and the second call finds both. The repository's
  // models (and their caches) outlive one test, so count the difference.
  auto counter = [](const std::string& text, const std::string& name) -> double {
    const size_t at = text.find("\n" + name + " ");
    return at == std::string::npos ? -1 : std::stod(text.substr(at + name.size() + 2));
  };
  const double misses0 = counter(text, "ssm_kernel_cache_misses_total");
  const double hits0 = counter(text, "ssm_kernel_cache_hits_total");
  ASSERT_GE(misses0, 0);
  ASSERT_GE(hits0, 0);
  request.set_model("s4-demo");
  ASSERT_TRUE(Infer(request, &response).ok());
  ASSERT_TRUE(Infer(request, &response).ok());
  const std::string cached = server_->metrics().Text();
  const double misses = counter(cached, "ssm_kernel_cache_misses_total") - misses0;
  const double hits = counter(cached, "ssm_kernel_cache_hits_total") - hits0;
  EXPECT_EQ(misses + hits, 4);
  EXPECT_GE(hits, 2);
  EXPECT_THAT(cached, ::testing::Not(HasSubstr("ssm_kernel_cache_bytes 0\n")));
  s.stream->WritesDone();
  EXPECT_TRUE(s.stream->Finish().ok());
  EXPECT_THAT(server_->metrics().Text(),
              HasSubstr("ssm_rpc_requests_total{code=\"OK\",rpc=\"StreamInfer\"} 1"));
}

TEST_F(GrpcServerTest, AddressInUseIsAnError) {
  ServerOptions options = DefaultOptions();
  options.address = absl::StrCat("127.0.0.1:", server_->port());
  absl::StatusOr<std::unique_ptr<SsmServer>> second =
      SsmServer::Start(options, ShippedRepository());
  EXPECT_EQ(second.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(second.status().message(), HasSubstr(options.address));
  options.address = "127.0.0.1:0";
  options.limits.max_batch = 0;
  EXPECT_EQ(SsmServer::Start(options, ShippedRepository()).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST_F(GrpcServerTest, DetachedSessionsExpire) {
  ServerOptions options = DefaultOptions();
  options.session_ttl = absl::Milliseconds(300);
  StartServer(options);
  OpenedStream s = Open(OpenModel("legt-delay"));
  s.context->TryCancel();
  s.stream->Finish().IgnoreError();
  ASSERT_TRUE(WaitForDetached(1));
  // The sweep (every ttl/10) evicts it; then it is gone.
  const absl::Time deadline = absl::Now() + absl::Seconds(10);
  while (server_->sessions().GetStats().evicted_total == 0 && absl::Now() < deadline) {
    absl::SleepFor(absl::Milliseconds(10));
  }
  EXPECT_EQ(server_->sessions().GetStats().evicted_total, 1u);
  v1::StreamOpen reattach;
  reattach.set_session_id(s.opened.session_id());
  grpc::Status status;
  Open(reattach, &status);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::NOT_FOUND);
}

// A large Infer runs in pieces (at most 32768 sequence x step rows each):
// whole sequences without return_state, slices of time with it. Either way
// each sequence's outputs are those of the sequence alone.
TEST_F(GrpcServerTest, LargeInferRunsInPiecesWithTheSameOutputs) {
  constexpr int kBatch = 3, kSteps = 12000;  // pieces of 2 + 1 sequences
  v1::InferRequest request;
  request.set_model("s4-demo");
  *request.mutable_input() = MakeInput(kBatch, kSteps);
  v1::InferResponse whole;
  ASSERT_TRUE(Infer(request, &whole).ok());
  ASSERT_EQ(whole.output().values_size(), kBatch * kSteps);
  request.set_return_state(true);  // time pieces of 10922 + 1078 steps
  v1::InferResponse with_state;
  ASSERT_TRUE(Infer(request, &with_state).ok());
  EXPECT_EQ(with_state.state().position(), kSteps);
  EXPECT_EQ(with_state.state().batch(), kBatch);
  for (int b = 0; b < kBatch; ++b) {
    SCOPED_TRACE(absl::StrCat("sequence ", b));
    v1::InferRequest one;
    one.set_model("s4-demo");
    *one.mutable_input() = MakeInput(1, kSteps, /*phase=*/b);
    v1::InferResponse alone;
    ASSERT_TRUE(Infer(one, &alone).ok());
    double worst = 0, worst_state = 0;
    for (int t = 0; t < kSteps; ++t) {
      const double want = alone.output().values(t);
      worst = std::max(worst, std::abs(whole.output().values(b * kSteps + t) - want));
      worst_state = std::max(worst_state,
                             std::abs(with_state.output().values(b * kSteps + t) - want));
    }
    // float32 on the wire; the model's outputs are O(1).
    EXPECT_LE(worst, 1e-5);
    EXPECT_LE(worst_state, 1e-5);
  }
}

// A passed deadline stops a long Infer between pieces: the lone worker is
// free again long before the whole call would have ended (~3 s of work).
TEST_F(GrpcServerTest, DeadlineStopsALongInferBetweenPieces) {
  ServerOptions options = DefaultOptions();
  options.threads = 1;
  options.max_queue = 0;
  options.limits.max_batch = 64;
  options.limits.max_message_bytes = 8 << 20;
  StartServer(options);
  v1::InferRequest small;
  small.set_model("legt-delay");
  *small.mutable_input() = MakeInput(1, 5);
  v1::InferResponse response;
  {  // The lone worker may still be starting.
    const absl::Time deadline = absl::Now() + absl::Seconds(10);
    while (!Infer(small, &response).ok() && absl::Now() < deadline) {
      absl::SleepFor(absl::Milliseconds(5));
    }
  }
  v1::InferRequest big;
  big.set_model("s4-demo");
  *big.mutable_input() = MakeInput(64, 12000);  // 32 pieces of 2 sequences
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(150));
  const grpc::Status late = inference_->Infer(&context, big, &response);
  EXPECT_EQ(late.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED) << late.error_message();
  const absl::Time expired = absl::Now();
  // With --max_queue=0 a small call is refused (RESOURCE_EXHAUSTED) while
  // the worker is busy; it must be served within a piece or two.
  grpc::Status status;
  do {
    status = Infer(small, &response);
  } while (status.error_code() == grpc::StatusCode::RESOURCE_EXHAUSTED &&
           absl::Now() - expired < absl::Seconds(10));
  EXPECT_TRUE(status.ok()) << status.error_message();
  EXPECT_LT(absl::Now() - expired, absl::Seconds(1.5))
      << "the worker went on with the expired call";
}

TEST_F(GrpcServerTest, BusyServerSaysSo) {
  ServerOptions options = DefaultOptions();
  options.threads = 1;
  options.max_queue = 0;
  StartServer(options);
  // The lone worker may still be starting: a job is taken only by an idle
  // one. Wait until a small call goes through.
  {
    v1::InferRequest warm;
    warm.set_model("legt-delay");
    *warm.mutable_input() = MakeInput(1, 5);
    v1::InferResponse response;
    const absl::Time deadline = absl::Now() + absl::Seconds(10);
    while (!Infer(warm, &response).ok() && absl::Now() < deadline) {
      absl::SleepFor(absl::Milliseconds(5));
    }
  }
  // Many concurrent long calls against one worker and no queue: some are
  // refused with RESOURCE_EXHAUSTED "server busy", none fails otherwise.
  constexpr int kCalls = 8;
  v1::InferRequest request;
  request.set_model("s4-demo");
  *request.mutable_input() = MakeInput(8, 4000);
  std::vector<grpc::ClientContext> contexts(kCalls);
  std::vector<v1::InferResponse> responses(kCalls);
  std::vector<grpc::Status> statuses(kCalls);
  absl::Mutex mu;
  int done = 0;
  for (int i = 0; i < kCalls; ++i) {
    SetDeadline(&contexts[i]);
    inference_->async()->Infer(&contexts[i], &request, &responses[i], [&, i](grpc::Status s) {
      absl::MutexLock lock(&mu);
      statuses[i] = std::move(s);
      ++done;
    });
  }
  {
    absl::MutexLock lock(&mu);
    mu.Await(absl::Condition(+[](int* d) { return *d == kCalls; }, &done));
  }
  int ok = 0, busy = 0;
  for (const grpc::Status& s : statuses) {
    if (s.ok()) ++ok;
    if (s.error_code() == grpc::StatusCode::RESOURCE_EXHAUSTED) {
      ++busy;
      EXPECT_THAT(s.error_message(), HasSubstr("server busy"));
    }
  }
  EXPECT_GE(ok, 1);
  EXPECT_GE(busy, 1);
  EXPECT_EQ(ok + busy, kCalls);
}

// Pipelining: a client may send any number of chunks before reading. The
// responses come back one per chunk, in order, equal to one Infer, whether
// a chunk ran on a gRPC thread (short ones, once the session's step cost
// is known) or on the pool (open, the first chunk, long ones, snapshots).
TEST_F(GrpcServerTest, PipelinedChunksKeepTheirOrderAndOutputs) {
  const v1::Tensor input = MakeInput(1, 700);
  v1::InferRequest request;
  request.set_model("s4-demo");
  *request.mutable_input() = input;
  v1::InferResponse whole;
  ASSERT_TRUE(Infer(request, &whole).ok());

  OpenedStream s = Open(OpenModel("s4-demo"));
  // 1-step chunks, short ones, long (convolution) ones, in any mix; some
  // ask for the state.
  std::vector<int> cuts = {0};
  for (int i = 0; i < 150; ++i) cuts.push_back(cuts.back() + 1);
  for (int len : {5, 64, 1, 1, 130, 2, 1, 63, 200, 1, 1, 1}) cuts.push_back(cuts.back() + len);
  while (cuts.back() < 700) cuts.push_back(cuts.back() + 1);
  ASSERT_EQ(cuts.back(), 700);
  const int chunks = static_cast<int>(cuts.size()) - 1;
  for (int i = 0; i < chunks; ++i) {
    v1::StreamRequest chunk;
    *chunk.mutable_chunk() = Slice(input, cuts[i], cuts[i + 1]);
    chunk.set_want_state(i % 37 == 5);
    ASSERT_TRUE(s.stream->Write(chunk)) << i;
  }
  s.stream->WritesDone();
  for (int i = 0; i < chunks; ++i) {
    v1::StreamResponse response;
    ASSERT_TRUE(s.stream->Read(&response)) << i;
    ASSERT_TRUE(response.has_output()) << i;
    EXPECT_EQ(response.position(), cuts[i + 1]) << i;
    EXPECT_EQ(response.has_state(), i % 37 == 5) << i;
    if (response.has_state()) {
      EXPECT_EQ(response.state().position(), cuts[i + 1]);
    }
    ExpectClose(response.output(), Slice(whole.output(), cuts[i], cuts[i + 1]));
  }
  v1::StreamResponse extra;
  EXPECT_FALSE(s.stream->Read(&extra));
  EXPECT_TRUE(s.stream->Finish().ok());
  EXPECT_EQ(server_->sessions().GetStats().attached, 0);
  EXPECT_EQ(server_->sessions().GetStats().detached, 0);  // closed
  EXPECT_THAT(server_->metrics().Text(),
              HasSubstr("ssm_stream_steps_total{model=\"s4-demo\"} 700"));
}

// A client that sends far more chunks than the server reads ahead (its
// window) and only then reads: the server stops reading when its window is
// full and resumes as responses go out; nothing is lost or reordered.
TEST_F(GrpcServerTest, ManyChunksSentBeforeAnyIsRead) {
  constexpr int kChunks = 1000;
  const v1::Tensor input = MakeInput(1, kChunks);
  OpenedStream s = Open(OpenModel("legt-delay"));
  for (int i = 0; i < kChunks; ++i) {
    v1::StreamRequest chunk;
    *chunk.mutable_chunk() = Slice(input, i, i + 1);
    ASSERT_TRUE(s.stream->Write(chunk)) << i;
  }
  s.stream->WritesDone();
  v1::InferRequest request;
  request.set_model("legt-delay");
  *request.mutable_input() = input;
  v1::InferResponse whole;
  ASSERT_TRUE(Infer(request, &whole).ok());
  for (int i = 0; i < kChunks; ++i) {
    v1::StreamResponse response;
    ASSERT_TRUE(s.stream->Read(&response)) << i;
    ASSERT_EQ(response.position(), i + 1);
    ExpectClose(response.output(), Slice(whole.output(), i, i + 1));
  }
  EXPECT_TRUE(s.stream->Finish().ok());
}

// A bad chunk in the middle of a pipeline: the chunks before it are
// answered, the ones after it are dropped unrun, the stream ends with the
// bad chunk's error and the session is kept, detached, after the good ones.
TEST_F(GrpcServerTest, PipelinedErrorAnswersTheChunksBeforeIt) {
  const v1::Tensor input = MakeInput(1, 40);
  OpenedStream s = Open(OpenModel("legt-delay"));
  for (int i = 0; i < 10; ++i) {
    v1::StreamRequest chunk;
    *chunk.mutable_chunk() = Slice(input, 2 * i, 2 * i + 2);
    if (i == 6) chunk.mutable_chunk()->set_values(1, std::nanf(""));
    // Writes after the bad chunk may find the call already ended.
    const bool written = s.stream->Write(chunk);
    if (i <= 6) {
      ASSERT_TRUE(written) << i;
    }
  }
  s.stream->WritesDone();
  int answered = 0;
  v1::StreamResponse response;
  while (s.stream->Read(&response)) {
    ++answered;
    EXPECT_EQ(response.position(), 2 * answered);
  }
  EXPECT_EQ(answered, 6);
  const grpc::Status status = s.stream->Finish();
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(status.error_message(), "chunk.values[1] is NaN");
  ASSERT_TRUE(WaitForDetached(1));
  v1::ExportStateResponse exported;
  ASSERT_TRUE(ExportState(s.opened.session_id(), &exported).ok());
  EXPECT_EQ(exported.state().position(), 12);
}

// Cancelling a stream with chunks in flight: whatever ran is applied
// whole, what did not run is not; the reattached session's position is a
// chunk boundary and the stream goes on exactly from there.
TEST_F(GrpcServerTest, CancelWithChunksInFlightLeavesAWholeNumberOfChunks) {
  constexpr int kStep = 3, kChunks = 60;
  const v1::Tensor input = MakeInput(1, kStep * kChunks + 30);
  v1::InferRequest request;
  request.set_model("s4-demo");
  *request.mutable_input() = input;
  v1::InferResponse whole;
  ASSERT_TRUE(Infer(request, &whole).ok());

  OpenedStream a = Open(OpenModel("s4-demo"));
  for (int i = 0; i < kChunks; ++i) {
    v1::StreamRequest chunk;
    *chunk.mutable_chunk() = Slice(input, kStep * i, kStep * i + kStep);
    ASSERT_TRUE(a.stream->Write(chunk));
  }
  v1::StreamResponse response;
  for (int i = 0; i < 5; ++i) ASSERT_TRUE(a.stream->Read(&response));
  a.context->TryCancel();
  a.stream->Finish().IgnoreError();
  ASSERT_TRUE(WaitForDetached(1));

  v1::StreamOpen reattach;
  reattach.set_session_id(a.opened.session_id());
  OpenedStream b = Open(reattach);
  const int position = static_cast<int>(b.opened.position());
  EXPECT_GE(position, 5 * kStep);
  EXPECT_LE(position, kStep * kChunks);
  EXPECT_EQ(position % kStep, 0) << position;
  ASSERT_TRUE(SendChunk(b.stream.get(), Slice(input, position, position + 30), &response));
  ExpectClose(response.output(), Slice(whole.output(), position, position + 30));
  b.stream->WritesDone();
  EXPECT_TRUE(b.stream->Finish().ok());
}

// Short chunks run on gRPC's threads, so a stream of single steps goes on
// while every worker is busy; a chunk that needs the pool then gets the
// documented "server busy".
TEST_F(GrpcServerTest, ShortChunksDoNotWaitForABusyPool) {
  ServerOptions options = DefaultOptions();
  options.threads = 1;
  options.max_queue = 0;
  StartServer(options);
  const v1::Tensor input = MakeInput(1, 200);
  // The lone worker may still be starting: a job is taken only by an idle
  // one, so retry the open until it goes through.
  OpenedStream s;
  grpc::Status status;
  const absl::Time open_deadline = absl::Now() + absl::Seconds(10);
  do {
    s = Open(OpenModel("s4-demo"), &status);
  } while (!status.ok() && absl::Now() < open_deadline);
  ASSERT_TRUE(status.ok()) << status.error_message();
  v1::StreamResponse response;
  // The first chunks measure the session's step cost (the first one on the
  // worker; the estimate follows the fastest of them).
  constexpr int kWarm = 10;
  for (int t = 0; t < kWarm; ++t) {
    ASSERT_TRUE(SendChunk(s.stream.get(), Slice(input, t, t + 1), &response));
  }

  // Occupy the worker with a long Infer. Nothing else runs: once a small
  // call has gone through, the worker is idle; then a small call refused
  // while the long one is still going proves the long one holds it.
  v1::InferRequest probe;
  probe.set_model("legt-delay");
  *probe.mutable_input() = MakeInput(1, 5);
  v1::InferResponse probe_response;
  v1::InferRequest long_request;
  long_request.set_model("s4-demo");
  *long_request.mutable_input() = MakeInput(8, 16000);  // s4-demo's max_length is 16384
  struct LongCall {
    grpc::ClientContext context;
    v1::InferResponse response;
    absl::Notification done;
  };
  std::unique_ptr<LongCall> long_call;
  bool holds_worker = false;
  const absl::Time busy_deadline = absl::Now() + absl::Seconds(20);
  while (!holds_worker && absl::Now() < busy_deadline) {
    while (!Infer(probe, &probe_response).ok() && absl::Now() < busy_deadline) {
    }
    long_call = std::make_unique<LongCall>();
    SetDeadline(&long_call->context);
    inference_->async()->Infer(&long_call->context, &long_request, &long_call->response,
                               [c = long_call.get()](grpc::Status) { c->done.Notify(); });
    while (!long_call->done.HasBeenNotified()) {
      if (Infer(probe, &probe_response).error_code() == grpc::StatusCode::RESOURCE_EXHAUSTED) {
        holds_worker = !long_call->done.HasBeenNotified();
        break;
      }
    }
    if (!holds_worker) long_call->done.WaitForNotification();
  }
  ASSERT_TRUE(holds_worker);

  // Single steps go on meanwhile, on gRPC's threads.
  for (int t = kWarm; t < kWarm + 5; ++t) {
    ASSERT_TRUE(SendChunk(s.stream.get(), Slice(input, t, t + 1), &response)) << t;
    EXPECT_EQ(response.position(), t + 1);
  }
  // A long chunk needs the worker.
  SendChunk(s.stream.get(), Slice(input, kWarm + 5, kWarm + 105), &response);
  s.stream->WritesDone();
  status = FinishAfterError(s.stream.get());
  if (!long_call->done.HasBeenNotified()) {
    // The worker was busy throughout: the long chunk was refused.
    EXPECT_EQ(status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
    EXPECT_THAT(status.error_message(), HasSubstr("server busy"));
    ASSERT_TRUE(WaitForDetached(1));
  }
  long_call->done.WaitForNotification();
}

}  // namespace
}  // namespace ssm::server
