// Bad requests, one RPC at a time: each gets its exact code, and the server
// goes on serving - a witness session opened before every test must
// continue with the right outputs after it, and fresh calls must work.
#include <gmock/gmock.h>
#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>

#include <chrono>
#include <cmath>
#include <csignal>
#include <limits>
#include <string>
#include <vector>

#include "absl/synchronization/notification.h"
#include "client/ssm_client.h"
#include "gtest/gtest.h"
#include "ssm/v1/ssm_service.grpc.pb.h"
#include "tests/e2e/e2e_util.h"

namespace ssm::e2e {
namespace {

using client::Tensor;

constexpr int kMaxMessageBytes = 256 << 10;

class ErrorsTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    absl::StatusOr<std::unique_ptr<ServerProcess>> started =
        ServerProcess::Start({absl::StrCat("--max_message_bytes=", kMaxMessageBytes)});
    ASSERT_OK(started);
    server_ = started->release();
  }
  static void TearDownTestSuite() {
    delete server_;
    server_ = nullptr;
  }

  // The witness: a stream that lives through the bad requests.
  void SetUp() override {
    ASSERT_NE(server_, nullptr);
    client_ = ClientFor(*server_);
    witness_input_ = MakeSequence(1, 100, 1, 21);
    absl::StatusOr<client::InferResult> whole = client_->Infer("legt-delay", witness_input_);
    ASSERT_OK(whole);
    witness_want_ = whole->output;
    absl::StatusOr<std::unique_ptr<client::Stream>> stream =
        client_->OpenStream({.model = "legt-delay"});
    ASSERT_OK(stream);
    witness_ = *std::move(stream);
    absl::StatusOr<Tensor> head =
        StreamInChunks(*witness_, SliceSteps(witness_input_, 0, 50), {1, 10});
    ASSERT_OK(head);
    EXPECT_LE(MaxRelativeDiff(*head, SliceSteps(witness_want_, 0, 50)), kWireTolerance);
  }

  // After the test's bad requests: the server is up, the witness continues
  // exactly, and a new client call works.
  void TearDown() override {
    if (witness_ == nullptr) return;
    absl::StatusOr<Tensor> tail =
        StreamInChunks(*witness_, SliceSteps(witness_input_, 50, 100), {3, 70});
    ASSERT_OK(tail);
    EXPECT_LE(MaxRelativeDiff(*tail, SliceSteps(witness_want_, 50, 100)), kWireTolerance);
    EXPECT_OK(witness_->Close());
    absl::StatusOr<client::InferResult> again = client_->Infer("legt-delay", witness_input_);
    ASSERT_OK(again);
    EXPECT_EQ(MaxRelativeDiff(again->output, witness_want_), 0.0);
    absl::StatusOr<client::Client::ServingStatus> health = client_->Health();
    ASSERT_OK(health);
    EXPECT_EQ(*health, client::Client::ServingStatus::kServing);
  }

  // A raw stub, for requests the client library refuses to build.
  std::unique_ptr<ssm::v1::Inference::Stub> RawStub() {
    return ssm::v1::Inference::NewStub(client_->channel());
  }

  static ServerProcess* server_;
  std::unique_ptr<client::Client> client_;
  Tensor witness_input_, witness_want_;
  std::unique_ptr<client::Stream> witness_;
};

ServerProcess* ErrorsTest::server_ = nullptr;

TEST_F(ErrorsTest, InferBadShapesAreInvalidArgument) {
  // legt-delay takes 1 feature.
  EXPECT_CODE(client_->Infer("legt-delay", MakeSequence(1, 10, 2)), kInvalidArgument);
  // Longer than s4-demo's max_length (16384).
  EXPECT_CODE(client_->Infer("s4-demo", MakeSequence(1, 16385, 1)), kInvalidArgument);

  // Shapes the client library would not send.
  auto stub = RawStub();
  for (const std::vector<int64_t>& shape :
       std::vector<std::vector<int64_t>>{{1, 3}, {1, 0, 1}, {1, 3, 1, 1}, {}}) {
    SCOPED_TRACE(::testing::PrintToString(shape));
    ssm::v1::InferRequest request;
    request.set_model("legt-delay");
    for (int64_t d : shape) request.mutable_input()->add_shape(d);
    for (int i = 0; i < 3; ++i) request.mutable_input()->add_values(1.0f);
    grpc::ClientContext context;
    ssm::v1::InferResponse response;
    EXPECT_CODE(client::StatusFromGrpc(stub->Infer(&context, request, &response)),
                kInvalidArgument);
  }
  ssm::v1::InferRequest mismatch;  // 3 values for [1, 4, 1]
  mismatch.set_model("legt-delay");
  for (int64_t d : {1, 4, 1}) mismatch.mutable_input()->add_shape(d);
  for (int i = 0; i < 3; ++i) mismatch.mutable_input()->add_values(1.0f);
  grpc::ClientContext context;
  ssm::v1::InferResponse response;
  EXPECT_CODE(client::StatusFromGrpc(stub->Infer(&context, mismatch, &response)), kInvalidArgument);
}

TEST_F(ErrorsTest, NonFiniteValuesAreInvalidArgument) {
  for (float bad : {std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::infinity(),
                    -std::numeric_limits<float>::infinity()}) {
    Tensor input = MakeSequence(1, 20, 1);
    input.values[13] = bad;
    EXPECT_CODE(client_->Infer("s4-demo", input), kInvalidArgument);

    absl::StatusOr<std::unique_ptr<client::Stream>> stream =
        client_->OpenStream({.model = "s4-demo"});
    ASSERT_OK(stream);
    EXPECT_CODE((*stream)->RunChunk(input.values, 20), kInvalidArgument);
    // The stream has ended with that error.
    EXPECT_CODE((*stream)->Send(input.values, 20), kInvalidArgument);
  }
}

TEST_F(ErrorsTest, UnknownNamesAreNotFound) {
  EXPECT_CODE(client_->Infer("no-such-model", MakeSequence(1, 5, 1)), kNotFound);
  EXPECT_CODE(client_->Infer("s4-demo", MakeSequence(1, 5, 1), /*version=*/3), kNotFound);
  EXPECT_CODE(client_->OpenStream({.model = "no-such-model"}), kNotFound);
  EXPECT_CODE(client_->OpenStream({.model = "legt-delay", .version = 2}), kNotFound);
  EXPECT_CODE(client_->ExportState("0123456789abcdef0123456789abcdef"), kNotFound);
  EXPECT_CODE(client_->ExportState("not-an-id"), kNotFound);
  absl::StatusOr<client::InferResult> r =
      client_->Infer("legt-delay", MakeSequence(1, 5, 1), 0, true);
  ASSERT_OK(r);
  EXPECT_CODE(client_->ImportState(*r->state, "no-such-model"), kNotFound);
}

TEST_F(ErrorsTest, OversizeMessagesAreResourceExhausted) {
  // 100000 float32 values: 400 kB against --max_message_bytes=256 kB.
  EXPECT_CODE(client_->Infer("legt-delay", MakeSequence(1, 100000, 1)), kResourceExhausted);
  // Small enough to send, but the output (3 features) would be too large.
  EXPECT_CODE(client_->Infer("legt-delay", MakeSequence(1, 30000, 1)), kResourceExhausted);
  absl::StatusOr<std::unique_ptr<client::Stream>> stream =
      client_->OpenStream({.model = "legt-delay"});
  ASSERT_OK(stream);
  const Tensor big = MakeSequence(1, 100000, 1);
  EXPECT_CODE((*stream)->RunChunk(big.values, 100000), kResourceExhausted);
}

TEST_F(ErrorsTest, AnotherModelsSnapshotIsFailedPrecondition) {
  absl::StatusOr<client::InferResult> legt =
      client_->Infer("legt-delay", MakeSequence(1, 30, 1), 0, true);
  ASSERT_OK(legt);
  ASSERT_TRUE(legt->state.has_value());
  EXPECT_CODE(client_->ImportState(*legt->state, "s4-demo"), kFailedPrecondition);
  EXPECT_CODE(client_->ImportState(*legt->state, "legs-memory"), kFailedPrecondition);
  EXPECT_CODE(client_->OpenStream({.model = "s4-demo", .resume_from = *legt->state}),
              kFailedPrecondition);
  // The right model takes it.
  EXPECT_OK(client_->ImportState(*legt->state, "legt-delay"));
}

TEST_F(ErrorsTest, CorruptedSnapshotsAreDataLoss) {
  absl::StatusOr<client::InferResult> r =
      client_->Infer("s4-demo", MakeSequence(1, 30, 1), 0, true);
  ASSERT_OK(r);
  const std::string good = r->state->data();
  ASSERT_GT(good.size(), 64u);

  std::vector<std::string> bad;
  std::string flipped = good;
  flipped[flipped.size() / 2] ^= 0x10;  // a state bit: only the CRC notices
  bad.push_back(flipped);
  bad.push_back(good.substr(0, good.size() - 9));  // truncated
  std::string magic = good;
  magic[0] = 'X';
  bad.push_back(magic);
  bad.push_back("SSMSNAP");                 // too short for a header
  bad.push_back(std::string(200, '\x5a'));  // garbage
  for (size_t i = 0; i < bad.size(); ++i) {
    SCOPED_TRACE(i);
    ssm::v1::StateSnapshot snapshot = *r->state;
    snapshot.set_data(bad[i]);
    EXPECT_CODE(client_->ImportState(snapshot, "s4-demo"), kDataLoss);
    EXPECT_CODE(client_->OpenStream({.model = "s4-demo", .resume_from = snapshot}), kDataLoss);
  }
}

TEST_F(ErrorsTest, BadStreamsGetTheirCodes) {
  auto stub = RawStub();
  // A chunk before `open`.
  {
    grpc::ClientContext context;
    auto call = stub->StreamInfer(&context);
    ssm::v1::StreamRequest request;
    for (int64_t d : {1, 1, 1}) request.mutable_chunk()->add_shape(d);
    request.mutable_chunk()->add_values(0.5f);
    ASSERT_TRUE(call->Write(request));
    ssm::v1::StreamResponse response;
    EXPECT_FALSE(call->Read(&response));
    EXPECT_CODE(client::StatusFromGrpc(call->Finish()), kInvalidArgument);
  }
  // An empty request, and a second `open`.
  for (bool second_open : {false, true}) {
    SCOPED_TRACE(second_open);
    grpc::ClientContext context;
    auto call = stub->StreamInfer(&context);
    ssm::v1::StreamRequest open;
    open.mutable_open()->set_model("legt-delay");
    ASSERT_TRUE(call->Write(open));
    ssm::v1::StreamResponse response;
    ASSERT_TRUE(call->Read(&response));
    EXPECT_TRUE(response.has_opened());
    call->Write(second_open ? open : ssm::v1::StreamRequest());
    EXPECT_FALSE(call->Read(&response));
    EXPECT_CODE(client::StatusFromGrpc(call->Finish()), kInvalidArgument);
  }
  // Wrong feature count and wrong batch in a chunk.
  absl::StatusOr<std::unique_ptr<client::Stream>> stream =
      client_->OpenStream({.model = "legt-delay", .batch = 2});
  ASSERT_OK(stream);
  {
    grpc::ClientContext context;
    auto call = stub->StreamInfer(&context);
    ssm::v1::StreamRequest open;
    open.mutable_open()->set_model("legt-delay");
    ASSERT_TRUE(call->Write(open));
    ssm::v1::StreamResponse response;
    ASSERT_TRUE(call->Read(&response));
    ssm::v1::StreamRequest chunk;
    for (int64_t d : {2, 1, 1}) chunk.mutable_chunk()->add_shape(d);
    chunk.mutable_chunk()->add_values(1);
    chunk.mutable_chunk()->add_values(2);
    call->Write(chunk);
    EXPECT_FALSE(call->Read(&response));
    EXPECT_CODE(client::StatusFromGrpc(call->Finish()), kInvalidArgument);
  }
  // An open with both resume_from and session_id.
  ssm::v1::StreamOpen both;
  both.set_model("legt-delay");
  both.mutable_resume_from()->set_data("x");
  both.set_session_id("abc");
  {
    grpc::ClientContext context;
    auto call = stub->StreamInfer(&context);
    ssm::v1::StreamRequest request;
    *request.mutable_open() = both;
    call->Write(request);
    ssm::v1::StreamResponse response;
    EXPECT_FALSE(call->Read(&response));
    EXPECT_CODE(client::StatusFromGrpc(call->Finish()), kInvalidArgument);
  }
  // The valid batch-2 stream opened in between still works.
  const Tensor two = MakeSequence(2, 6, 1);
  EXPECT_OK((*stream)->RunChunk(two.values, 6));
  EXPECT_OK((*stream)->Close());
}

// A client that sends garbage and vanishes without reading: nothing to
// observe on its side; the server must shrug it off (the fixture's
// TearDown checks the witness and fresh calls).
TEST_F(ErrorsTest, GarbageThenDisconnectLeavesTheServerServing) {
  auto stub = RawStub();
  for (int round = 0; round < 5; ++round) {
    grpc::ClientContext context;
    auto call = stub->StreamInfer(&context);
    ssm::v1::StreamRequest open;
    open.mutable_open()->set_model("s4-demo");
    call->Write(open);
    ssm::v1::StreamRequest garbage;
    for (int64_t d : {1, 5, 1}) garbage.mutable_chunk()->add_shape(d);
    garbage.mutable_chunk()->add_values(std::nanf(""));
    call->Write(garbage);
    call->Write(garbage);
    context.TryCancel();
    call->Finish();
  }
}

// Bytes that are not a protobuf message at all: every unary method answers
// INVALID_ARGUMENT naming the type it expected (gRPC's own parse failure
// would be UNIMPLEMENTED with no message, never seen by the server).
TEST_F(ErrorsTest, UnparsableUnaryRequestsAreInvalidArgumentNamingTheType) {
  grpc::GenericStub generic(client_->channel());
  const std::string junk = "\xff\xff\xff\xff\x0f not a protobuf";
  const std::pair<const char*, const char*> kMethods[] = {
      {"/ssm.v1.Inference/Infer", "ssm.v1.InferRequest"},
      {"/ssm.v1.Inference/ExportState", "ssm.v1.ExportStateRequest"},
      {"/ssm.v1.Inference/ImportState", "ssm.v1.ImportStateRequest"},
      {"/ssm.v1.Inference/ListModels", "ssm.v1.ListModelsRequest"},
      {"/ssm.v1.Inference/GetModel", "ssm.v1.GetModelRequest"},
      {"/ssm.v1.Math/BuildHippo", "ssm.v1.BuildHippoRequest"},
      {"/ssm.v1.Math/ComputeKernel", "ssm.v1.ComputeKernelRequest"},
  };
  for (const auto& [method, type] : kMethods) {
    SCOPED_TRACE(method);
    grpc::Slice slice(junk);
    grpc::ByteBuffer request(&slice, 1);
    grpc::ByteBuffer response;
    grpc::ClientContext context;
    absl::Notification done;
    grpc::Status status;
    generic.UnaryCall(&context, method, grpc::StubOptions(), &request, &response,
                      [&](grpc::Status s) {
                        status = std::move(s);
                        done.Notify();
                      });
    ASSERT_TRUE(done.WaitForNotificationWithTimeout(absl::Seconds(20)));
    EXPECT_CODE(client::StatusFromGrpc(status), kInvalidArgument);
    EXPECT_THAT(status.error_message(), ::testing::HasSubstr(type));
  }
}

// A stream message that does not parse ends the stream with
// INVALID_ARGUMENT (not a clean half-close), and its session stays
// detached with its state: reattached by id, it continues exactly.
TEST_F(ErrorsTest, AnUnparsableStreamMessageKeepsTheSessionDetached) {
  const Tensor input = MakeSequence(1, 40, 1, 5);
  absl::StatusOr<client::InferResult> whole = client_->Infer("s4-demo", input);
  ASSERT_OK(whole);

  grpc::GenericStub generic(client_->channel());
  grpc::CompletionQueue cq;
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(20));
  void* tag = nullptr;
  bool ok = false;
  auto next = [&] { return cq.Next(&tag, &ok) && ok; };
  std::unique_ptr<grpc::GenericClientAsyncReaderWriter> call =
      generic.PrepareCall(&context, "/ssm.v1.Inference/StreamInfer", &cq);
  call->StartCall(nullptr);
  ASSERT_TRUE(next());
  auto write = [&](const std::string& bytes) {
    grpc::Slice slice(bytes);
    grpc::ByteBuffer buffer(&slice, 1);
    call->Write(buffer, nullptr);
    return next();
  };
  auto read = [&](ssm::v1::StreamResponse* out) {
    grpc::ByteBuffer buffer;
    call->Read(&buffer, nullptr);
    if (!next()) return false;
    std::vector<grpc::Slice> slices;
    if (!buffer.Dump(&slices).ok()) return false;
    std::string bytes;
    for (const grpc::Slice& s : slices)
      bytes.append(reinterpret_cast<const char*>(s.begin()), s.size());
    return out->ParseFromString(bytes);
  };
  ssm::v1::StreamRequest open;
  open.mutable_open()->set_model("s4-demo");
  ASSERT_TRUE(write(open.SerializeAsString()));
  ssm::v1::StreamResponse opened;
  ASSERT_TRUE(read(&opened));
  const std::string id = opened.opened().session_id();
  ASSERT_FALSE(id.empty());
  // 25 steps in chunks of 5, each answered.
  for (int t0 = 0; t0 < 25; t0 += 5) {
    ssm::v1::StreamRequest chunk;
    const Tensor part = SliceSteps(input, t0, t0 + 5);
    for (int64_t d : part.shape) chunk.mutable_chunk()->add_shape(d);
    for (float v : part.values) chunk.mutable_chunk()->add_values(v);
    ASSERT_TRUE(write(chunk.SerializeAsString()));
    ssm::v1::StreamResponse response;
    ASSERT_TRUE(read(&response));
    EXPECT_EQ(response.position(), t0 + 5);
  }
  ASSERT_TRUE(write("\xff\xff\xff\xff\x0f not a protobuf"));
  ssm::v1::StreamResponse none;
  EXPECT_FALSE(read(&none));
  grpc::Status status;
  call->Finish(&status, nullptr);
  ASSERT_TRUE(next());
  EXPECT_CODE(client::StatusFromGrpc(status), kInvalidArgument);
  EXPECT_THAT(status.error_message(), ::testing::HasSubstr("ssm.v1.StreamRequest"));
  cq.Shutdown();
  while (cq.Next(&tag, &ok)) {
  }

  // The session waits, detached, at position 25; the rest continues it.
  absl::StatusOr<std::unique_ptr<client::Stream>> again =
      client_->OpenStream({.model = "s4-demo", .session_id = id});
  ASSERT_OK(again);
  EXPECT_EQ((*again)->position(), 25);
  absl::StatusOr<Tensor> tail = StreamInChunks(**again, SliceSteps(input, 25, 40), {4, 11});
  ASSERT_OK(tail);
  EXPECT_LE(MaxRelativeDiff(*tail, SliceSteps(whole->output, 25, 40)), kWireTolerance);
  EXPECT_OK((*again)->Close());
}

TEST_F(ErrorsTest, MathBadArgumentsAreInvalidArgument) {
  ssm::v1::BuildHippoRequest hippo;
  hippo.set_measure(ssm::v1::HIPPO_MEASURE_LEGS);
  hippo.set_n(0);
  hippo.set_dt(0.1);
  EXPECT_CODE(client_->BuildHippo(hippo), kInvalidArgument);
  hippo.set_n(4);
  hippo.set_dt(-1);
  EXPECT_CODE(client_->BuildHippo(hippo), kInvalidArgument);
  hippo.set_dt(0.1);
  hippo.set_measure(ssm::v1::HIPPO_MEASURE_UNSPECIFIED);
  EXPECT_CODE(client_->BuildHippo(hippo), kInvalidArgument);

  ssm::v1::ComputeKernelRequest kernel;
  kernel.mutable_init()->set_kind(ssm::v1::SsmInit::KIND_S4D_LIN);
  kernel.mutable_init()->set_n(8);
  kernel.mutable_init()->set_channels(2);
  kernel.set_length(0);
  EXPECT_CODE(client_->ComputeKernel(kernel), kInvalidArgument);
  kernel.set_length(16);
  kernel.mutable_init()->set_n(7);  // N must be even
  EXPECT_CODE(client_->ComputeKernel(kernel), kInvalidArgument);
}

// --max_sessions counts attached and detached sessions; a freed slot is
// usable again.
TEST(SessionLimitTest, TooManySessionsIsResourceExhausted) {
  absl::StatusOr<std::unique_ptr<ServerProcess>> server =
      ServerProcess::Start({"--max_sessions=2"});
  ASSERT_OK(server);
  auto client = ClientFor(**server);
  auto first = client->OpenStream({.model = "legt-delay"});
  ASSERT_OK(first);
  auto second = client->OpenStream({.model = "s4-demo"});
  ASSERT_OK(second);
  EXPECT_CODE(client->OpenStream({.model = "legt-delay"}), kResourceExhausted);
  absl::StatusOr<client::InferResult> r =
      client->Infer("legt-delay", MakeSequence(1, 5, 1), 0, true);
  ASSERT_OK(r);
  EXPECT_CODE(client->ImportState(*r->state, "legt-delay"), kResourceExhausted);
  // The sessions that exist are unaffected...
  const Tensor x = MakeSequence(1, 4, 1);
  EXPECT_OK((*first)->RunChunk(x.values, 4));
  // ...and closing one frees its slot.
  EXPECT_OK((*second)->Close());
  auto third = client->OpenStream({.model = "legt-delay"});
  ASSERT_OK(third);
  EXPECT_OK((*third)->RunChunk(x.values, 4));
}

}  // namespace
}  // namespace ssm::e2e
