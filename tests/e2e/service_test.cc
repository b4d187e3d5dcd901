// Every RPC's happy path against a real ssm_server process, through the
// client library; and the central promise of the service: any chunking of
// a stream gives the outputs of one Infer over the whole input.
#include <cmath>
#include <deque>
#include <string>
#include <vector>

#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>

#include "absl/strings/match.h"
#include "absl/synchronization/notification.h"
#include "client/ssm_client.h"
#include "gtest/gtest.h"
#include "tests/e2e/e2e_util.h"

namespace ssm::e2e {
namespace {

using client::Client;
using client::Tensor;

TEST(ServiceTest, HealthIsServingForTheServerItsServicesAndModels) {
  auto client = ClientFor(SharedServer());
  for (const char* service :
       {"", "ssm.v1.Inference", "ssm.v1.Math", "ssm.v1.Inference/s4-demo",
        "ssm.v1.Inference/legt-delay", "ssm.v1.Inference/legs-memory"}) {
    absl::StatusOr<Client::ServingStatus> health = client->Health(service);
    ASSERT_OK(health);
    EXPECT_EQ(*health, Client::ServingStatus::kServing) << service;
  }
  EXPECT_CODE(client->Health("no.such.Service"), kNotFound);
}

TEST(ServiceTest, ListModelsShowsTheShippedRepository) {
  auto client = ClientFor(SharedServer());
  absl::StatusOr<std::vector<ssm::v1::ModelStatus>> models = client->ListModels();
  ASSERT_OK(models);
  std::vector<std::string> names;
  for (const ssm::v1::ModelStatus& m : *models) {
    names.push_back(m.name());
    EXPECT_EQ(m.error(), "") << m.name();
    ASSERT_EQ(m.versions_size(), 1) << m.name();
    EXPECT_EQ(m.versions(0), 1) << m.name();
  }
  EXPECT_EQ(names,
            (std::vector<std::string>{"legs-memory", "legt-delay", "s4-demo"}));
}

TEST(ServiceTest, GetModelReturnsConfigAndMetadata) {
  auto client = ClientFor(SharedServer());
  absl::StatusOr<ssm::v1::GetModelResponse> s4 = client->GetModel("s4-demo");
  ASSERT_OK(s4);
  EXPECT_EQ(s4->config().name(), "s4-demo");
  EXPECT_EQ(s4->config().d_input(), 1);
  EXPECT_EQ(s4->config().d_output(), 1);
  EXPECT_EQ(s4->config().s4().n_layers(), 2);
  EXPECT_EQ(s4->version(), 1);
  EXPECT_NE(s4->fingerprint(), 0u);
  EXPECT_TRUE(s4->streamable());
  EXPECT_GT(s4->memory_bytes(), 0u);
  // Two layers of 64 channels x 32 complex modes, in double.
  EXPECT_GE(s4->state_bytes(), 2 * 64 * 64 * 8);

  absl::StatusOr<ssm::v1::GetModelResponse> same = client->GetModel("s4-demo", 1);
  ASSERT_OK(same);
  EXPECT_EQ(same->fingerprint(), s4->fingerprint());

  EXPECT_CODE(client->GetModel("no-such-model"), kNotFound);
  EXPECT_CODE(client->GetModel("s4-demo", 7), kNotFound);
}

// legt-delay is a delay line: its second output is the input 32 steps ago.
TEST(ServiceTest, InferRunsTheLegtDelayLine) {
  auto client = ClientFor(SharedServer());
  const int64_t length = 600;
  Tensor input{{1, length, 1}, std::vector<float>(length)};
  for (int64_t t = 0; t < length; ++t) {
    input.values[t] = static_cast<float>(std::sin(2 * M_PI * t / 200.0));
  }
  absl::StatusOr<client::InferResult> r = client->Infer("legt-delay", input);
  ASSERT_OK(r);
  EXPECT_EQ(r->model, "legt-delay");
  EXPECT_EQ(r->version, 1);
  ASSERT_EQ(r->output.shape, (std::vector<int64_t>{1, length, 3}));
  EXPECT_FALSE(r->state.has_value());
  double worst = 0;
  for (int64_t t = 128; t < length; ++t) {
    worst = std::max(worst, std::abs(double{r->output.values[t * 3 + 1]} -
                                     input.values[t - 32]));
  }
  EXPECT_LT(worst, 2e-3);
}

TEST(ServiceTest, InferBatchEntriesAreIndependent) {
  auto client = ClientFor(SharedServer());
  const Tensor both = MakeSequence(2, 120, 1, 5);
  absl::StatusOr<client::InferResult> r = client->Infer("s4-demo", both);
  ASSERT_OK(r);
  for (int64_t b = 0; b < 2; ++b) {
    Tensor one{{1, 120, 1},
               std::vector<float>(both.values.begin() + b * 120,
                                  both.values.begin() + (b + 1) * 120)};
    absl::StatusOr<client::InferResult> single = client->Infer("s4-demo", one);
    ASSERT_OK(single);
    Tensor part{{1, 120, 1},
                std::vector<float>(r->output.values.begin() + b * 120,
                                   r->output.values.begin() + (b + 1) * 120)};
    EXPECT_LE(MaxRelativeDiff(part, single->output), kWireTolerance) << b;
  }
}

class StreamMatchesInferTest : public ::testing::TestWithParam<std::string> {};

// Steps of 1 run the recurrence, chunks of 64 or more the FFT convolution
// from the carried state; all of them, mixed, must give Infer's outputs.
TEST_P(StreamMatchesInferTest, ForEveryChunking) {
  const std::string model = GetParam();
  auto client = ClientFor(SharedServer());
  const int64_t length = 400;
  const Tensor input = MakeSequence(1, length, 1, 3);
  absl::StatusOr<client::InferResult> whole = client->Infer(model, input);
  ASSERT_OK(whole);

  const std::vector<std::vector<int>> chunkings = {
      {1},                   // lock-step, one step per request
      {1, 7, 64, 3, 150},    // uneven, recurrence and convolution mixed
      {65},                  // every chunk just past the convolution switch
      {200},                 // chunks > 64
      {static_cast<int>(length)},  // the whole input as one chunk
  };
  for (const std::vector<int>& pattern : chunkings) {
    SCOPED_TRACE(::testing::PrintToString(pattern));
    absl::StatusOr<std::unique_ptr<client::Stream>> stream =
        client->OpenStream({.model = model});
    ASSERT_OK(stream);
    EXPECT_EQ((*stream)->opened().model(), model);
    EXPECT_EQ((*stream)->opened().position(), 0);
    EXPECT_EQ((*stream)->session_id().size(), 32u);
    absl::StatusOr<Tensor> streamed = StreamInChunks(**stream, input, pattern);
    ASSERT_OK(streamed);
    EXPECT_LE(MaxRelativeDiff(*streamed, whole->output), kWireTolerance);
    EXPECT_EQ((*stream)->position(), length);
    EXPECT_OK((*stream)->Close());
  }
}

// Pipelined: a writer keeps several chunks in flight while the reader
// collects; outputs come back in order and equal Infer's.
TEST_P(StreamMatchesInferTest, PipelinedAndBatched) {
  const std::string model = GetParam();
  auto client = ClientFor(SharedServer());
  const Tensor input = MakeSequence(2, 300, 1, 4);
  absl::StatusOr<client::InferResult> whole = client->Infer(model, input);
  ASSERT_OK(whole);
  for (const auto& [chunk, in_flight] :
       std::vector<std::pair<int, int>>{{1, 8}, {5, 4}, {70, 3}}) {
    SCOPED_TRACE(::testing::Message() << "chunk " << chunk << " in flight "
                                      << in_flight);
    absl::StatusOr<std::unique_ptr<client::Stream>> stream =
        client->OpenStream({.model = model, .batch = 2});
    ASSERT_OK(stream);
    absl::StatusOr<Tensor> streamed = (*stream)->Run(input, chunk, in_flight);
    ASSERT_OK(streamed);
    EXPECT_LE(MaxRelativeDiff(*streamed, whole->output), kWireTolerance);
    EXPECT_EQ((*stream)->in_flight(), 0);
    EXPECT_OK((*stream)->Close());
  }
}

INSTANTIATE_TEST_SUITE_P(Models, StreamMatchesInferTest,
                         ::testing::Values("s4-demo", "legt-delay"),
                         [](const auto& info) {
                           std::string name = info.param;
                           for (char& c : name) {
                             if (c == '-') c = '_';
                           }
                           return name;
                         });

// Infer's returned state continues in a stream exactly where it stopped.
TEST(ServiceTest, InferStateResumesInAStream) {
  auto client = ClientFor(SharedServer());
  const Tensor input = MakeSequence(1, 260, 1, 6);
  absl::StatusOr<client::InferResult> whole = client->Infer("s4-demo", input);
  ASSERT_OK(whole);
  absl::StatusOr<client::InferResult> head = client->Infer(
      "s4-demo", SliceSteps(input, 0, 100), /*version=*/0, /*return_state=*/true);
  ASSERT_OK(head);
  ASSERT_TRUE(head->state.has_value());
  EXPECT_EQ(head->state->model(), "s4-demo");
  EXPECT_EQ(head->state->position(), 100);
  EXPECT_EQ(head->state->batch(), 1);

  absl::StatusOr<std::unique_ptr<client::Stream>> stream =
      client->OpenStream({.model = "s4-demo", .resume_from = *head->state});
  ASSERT_OK(stream);
  EXPECT_EQ((*stream)->opened().position(), 100);
  absl::StatusOr<Tensor> tail =
      StreamInChunks(**stream, SliceSteps(input, 100, 260), {1, 9, 80});
  ASSERT_OK(tail);
  EXPECT_LE(MaxRelativeDiff(*tail, SliceSteps(whole->output, 100, 260)),
            kWireTolerance);
  EXPECT_OK((*stream)->Close());
}

// The state a chunk returns (want_state), ExportState of the attached
// session at that point, and ImportState + reattach all agree.
TEST(ServiceTest, ExportImportAndReattachOnOneServer) {
  auto client = ClientFor(SharedServer());
  const Tensor input = MakeSequence(1, 200, 1, 7);
  absl::StatusOr<client::InferResult> whole = client->Infer("legt-delay", input);
  ASSERT_OK(whole);

  absl::StatusOr<std::unique_ptr<client::Stream>> stream =
      client->OpenStream({.model = "legt-delay"});
  ASSERT_OK(stream);
  const Tensor head = SliceSteps(input, 0, 120);
  absl::StatusOr<client::StreamResult> r =
      (*stream)->RunChunk(head.values, 120, /*want_state=*/true);
  ASSERT_OK(r);
  ASSERT_TRUE(r->state.has_value());
  EXPECT_EQ(r->state->position(), 120);
  EXPECT_EQ(r->state->model(), "legt-delay");

  absl::StatusOr<ssm::v1::StateSnapshot> exported =
      client->ExportState((*stream)->session_id());
  ASSERT_OK(exported);
  EXPECT_EQ(exported->data(), r->state->data());
  EXPECT_EQ(exported->position(), 120);
  EXPECT_OK((*stream)->Close());
  // A closed session is gone.
  EXPECT_CODE(client->ExportState((*stream)->session_id()), kNotFound);

  absl::StatusOr<Client::Imported> imported =
      client->ImportState(*exported, "legt-delay");
  ASSERT_OK(imported);
  EXPECT_EQ(imported->position, 120);
  EXPECT_EQ(imported->session_id.size(), 32u);
  absl::StatusOr<std::unique_ptr<client::Stream>> reattached =
      client->OpenStream({.model = "legt-delay", .session_id = imported->session_id});
  ASSERT_OK(reattached);
  EXPECT_EQ((*reattached)->opened().position(), 120);
  EXPECT_EQ((*reattached)->session_id(), imported->session_id);
  absl::StatusOr<Tensor> tail =
      StreamInChunks(**reattached, SliceSteps(input, 120, 200), {3, 64});
  ASSERT_OK(tail);
  EXPECT_LE(MaxRelativeDiff(*tail, SliceSteps(whole->output, 120, 200)),
            kWireTolerance);
  EXPECT_OK((*reattached)->Close());
}

// LegS from DESIGN.md section 2, and the bilinear discretization checked by
// its defining equations: (I - dt/2 A) A_bar = I + dt/2 A and
// (I - dt/2 A) B_bar = dt B.
TEST(ServiceTest, BuildHippoLegsMatchesTheFormulaAndBilinear) {
  auto client = ClientFor(SharedServer());
  const int n = 6;
  const double dt = 0.1;
  ssm::v1::BuildHippoRequest request;
  request.set_measure(ssm::v1::HIPPO_MEASURE_LEGS);
  request.set_n(n);
  request.set_dt(dt);
  request.mutable_discretization()->set_kind(ssm::v1::DISCRETIZATION_KIND_BILINEAR);
  absl::StatusOr<ssm::v1::BuildHippoResponse> r = client->BuildHippo(request);
  ASSERT_OK(r);
  ASSERT_EQ(r->a().rows(), n);
  ASSERT_EQ(r->a().cols(), n);
  ASSERT_EQ(r->a().values_size(), n * n);
  ASSERT_EQ(r->b().values_size(), n);
  ASSERT_EQ(r->a_bar().values_size(), n * n);
  ASSERT_EQ(r->b_bar().values_size(), n);
  auto a = [&](int i, int k) { return r->a().values(i * n + k); };
  for (int i = 0; i < n; ++i) {
    EXPECT_NEAR(r->b().values(i), std::sqrt(2.0 * i + 1), 1e-12);
    for (int k = 0; k < n; ++k) {
      const double want = i > k    ? -std::sqrt((2.0 * i + 1) * (2.0 * k + 1))
                          : i == k ? -(i + 1.0)
                                   : 0.0;
      EXPECT_NEAR(a(i, k), want, 1e-12) << i << "," << k;
    }
  }
  for (int i = 0; i < n; ++i) {
    double lhs_b = 0;
    for (int k = 0; k < n; ++k) {
      double lhs = 0;
      for (int j = 0; j < n; ++j) {
        lhs += ((i == j) - dt / 2 * a(i, j)) * r->a_bar().values(j * n + k);
      }
      EXPECT_NEAR(lhs, (i == k) + dt / 2 * a(i, k), 1e-12) << i << "," << k;
      lhs_b += ((i == k) - dt / 2 * a(i, k)) * r->b_bar().values(k);
    }
    EXPECT_NEAR(lhs_b, dt * r->b().values(i), 1e-12) << i;
  }
}

// Three ways to a kernel, one answer (DESIGN.md section 2), over the wire.
TEST(ServiceTest, ComputeKernelMethodsAgree) {
  auto client = ClientFor(SharedServer());
  struct Case {
    ssm::v1::SsmInit::Kind kind;
    ssm::v1::KernelMethod fast;
  };
  for (const Case& c : {Case{ssm::v1::SsmInit::KIND_S4, ssm::v1::KERNEL_METHOD_DPLR},
                        Case{ssm::v1::SsmInit::KIND_S4D_LIN,
                             ssm::v1::KERNEL_METHOD_DIAGONAL}}) {
    SCOPED_TRACE(ssm::v1::SsmInit::Kind_Name(c.kind));
    ssm::v1::ComputeKernelRequest request;
    ssm::v1::SsmInit* init = request.mutable_init();
    init->set_kind(c.kind);
    if (c.kind == ssm::v1::SsmInit::KIND_S4) {
      init->set_measure(ssm::v1::HIPPO_MEASURE_LEGS);
    }
    init->set_n(16);
    init->set_channels(3);
    init->set_seed(11);
    request.set_length(100);
    request.set_method(c.fast);
    absl::StatusOr<ssm::v1::ComputeKernelResponse> fast =
        client->ComputeKernel(request);
    ASSERT_OK(fast);
    request.set_method(ssm::v1::KERNEL_METHOD_NAIVE);
    absl::StatusOr<ssm::v1::ComputeKernelResponse> naive =
        client->ComputeKernel(request);
    ASSERT_OK(naive);
    ASSERT_EQ(fast->kernel().rows(), 3);
    ASSERT_EQ(fast->kernel().cols(), 100);
    ASSERT_EQ(naive->kernel().values_size(), 300);
    ASSERT_EQ(fast->kernel().values_size(), 300);
    double diff = 0, scale = 0;
    for (int i = 0; i < 300; ++i) {
      diff = std::max(diff, std::abs(fast->kernel().values(i) -
                                     naive->kernel().values(i)));
      scale = std::max(scale, std::abs(naive->kernel().values(i)));
    }
    EXPECT_GT(scale, 0);
    EXPECT_LE(diff, 1e-9 * scale);
  }
}

// A raw-bytes bidi call: the requests written one after the other, then
// every response read. For protocols whose .proto we do not have.
class RawBidiCall
    : public grpc::ClientBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer> {
 public:
  RawBidiCall(grpc::GenericStub* stub, const std::string& method,
              std::deque<std::string> requests)
      : requests_(std::move(requests)) {
    stub->PrepareBidiStreamingCall(&context_, method, grpc::StubOptions(), this);
    StartRead(&in_);
    WriteNext();
    StartCall();
  }

  // The call's status and every response's bytes; false on timeout.
  bool Wait(absl::Duration timeout) {
    return done_.WaitForNotificationWithTimeout(timeout);
  }
  const grpc::Status& status() const { return status_; }
  const std::vector<std::string>& responses() const { return responses_; }

  void OnWriteDone(bool ok) override {
    if (ok) WriteNext();
  }
  void OnReadDone(bool ok) override {
    if (!ok) return;
    std::vector<grpc::Slice> slices;
    std::string bytes;
    if (in_.Dump(&slices).ok()) {
      for (const grpc::Slice& slice : slices) {
        bytes.append(reinterpret_cast<const char*>(slice.begin()), slice.size());
      }
    }
    responses_.push_back(std::move(bytes));
    StartRead(&in_);
  }
  void OnDone(const grpc::Status& status) override {
    status_ = status;
    done_.Notify();
  }

 private:
  void WriteNext() {
    if (requests_.empty()) {
      StartWritesDone();
      return;
    }
    grpc::Slice slice(requests_.front());
    requests_.pop_front();
    out_ = grpc::ByteBuffer(&slice, 1);
    StartWrite(&out_);
  }

  grpc::ClientContext context_;
  std::deque<std::string> requests_;
  grpc::ByteBuffer out_, in_;
  std::vector<std::string> responses_;
  grpc::Status status_;
  absl::Notification done_;
};

// Server reflection, so generic tools (grpcurl, grpc_cli) can call the
// service without its .proto: list the services, then fetch the file that
// defines ssm.v1.Inference. The requests are hand-encoded
// grpc.reflection.v1alpha.ServerReflectionRequest messages.
TEST(ServiceTest, ReflectionListsTheServicesAndServesTheirDescriptors) {
  auto client = ClientFor(SharedServer());
  grpc::GenericStub stub(client->channel());
  const std::string symbol = "ssm.v1.Inference";
  std::deque<std::string> requests = {
      std::string("\x3a\x00", 2),  // list_services = "" (field 7)
      // file_containing_symbol = "ssm.v1.Inference" (field 4)
      std::string("\x22") + static_cast<char>(symbol.size()) + symbol,
  };
  RawBidiCall call(&stub,
                   "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
                   std::move(requests));
  ASSERT_TRUE(call.Wait(absl::Seconds(20)));
  ASSERT_OK(client::StatusFromGrpc(call.status()));
  ASSERT_EQ(call.responses().size(), 2u);
  for (const char* service :
       {"ssm.v1.Inference", "ssm.v1.Math", "grpc.health.v1.Health"}) {
    EXPECT_TRUE(absl::StrContains(call.responses()[0], service)) << service;
  }
  // A FileDescriptorProto of ssm_service.proto, with its methods.
  EXPECT_TRUE(absl::StrContains(call.responses()[1], "ssm/v1/ssm_service.proto"));
  EXPECT_TRUE(absl::StrContains(call.responses()[1], "StreamInfer"));
}

}  // namespace
}  // namespace ssm::e2e
