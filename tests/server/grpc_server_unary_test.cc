// The unary calls: the catalog (ListModels, GetModel), Infer against the
// model itself, every bad input's exact code, large calls run in pieces,
// and the Math service.

#include <algorithm>
#include <chrono>
#include <cmath>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "absl/strings/str_cat.h"
#include "grpc_server_fixture.h"

namespace ssm::server::testing {
namespace {

using ::testing::HasSubstr;

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
  const v1::InferRequest request = InferRequestFor("legt-delay", MakeInput(2, 300));
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
  v1::InferRequest request = InferRequestFor("no-such-model", MakeInput(1, 10));
  v1::InferResponse response;
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

// A large Infer runs in pieces (at most 32768 sequence x step rows each):
// whole sequences without return_state, slices of time with it. Either way
// each sequence's outputs are those of the sequence alone.
TEST_F(GrpcServerTest, LargeInferRunsInPiecesWithTheSameOutputs) {
  constexpr int kBatch = 3, kSteps = 12000;  // pieces of 2 + 1 sequences
  v1::InferRequest request = InferRequestFor("s4-demo", MakeInput(kBatch, kSteps));
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
    const v1::InferRequest one = InferRequestFor("s4-demo", MakeInput(1, kSteps, /*phase=*/b));
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

}  // namespace
}  // namespace ssm::server::testing
