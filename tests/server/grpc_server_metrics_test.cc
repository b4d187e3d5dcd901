// The Prometheus metrics the server keeps: calls by code, latencies,
// stream steps, sessions, and the kernel cache.

#include <string>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "grpc_server_fixture.h"

namespace ssm::server::testing {
namespace {

using ::testing::HasSubstr;

TEST_F(GrpcServerTest, MetricsCountCallsAndSessions) {
  v1::InferRequest request = InferRequestFor("legt-delay", MakeInput(1, 5));
  v1::InferResponse response;
  ASSERT_TRUE(Infer(request, &response).ok());
  request.set_model("nope");
  ASSERT_FALSE(Infer(request, &response).ok());
  OpenedStream s = Open(OpenModel("legt-delay"));
  v1::StreamResponse chunk;
  ASSERT_TRUE(SendChunk(s.stream.get(), MakeInput(1, 7), &chunk));

  const std::string text = server_->metrics().Text();
  // After one good and one unknown-model Infer and a 7-step chunk:
  const char* const kExpected[] = {
      R"(ssm_rpc_requests_total{code="OK",rpc="Infer"} 1)",
      R"(ssm_rpc_requests_total{code="NOT_FOUND",rpc="Infer"} 1)",
      R"(ssm_rpc_errors_total{code="NOT_FOUND",rpc="Infer"} 1)",
      R"(ssm_rpc_latency_seconds_count{rpc="Infer"} 2)",
      R"(ssm_stream_steps_total{model="legt-delay"} 7)",
      R"(ssm_stream_chunk_latency_seconds_count{model="legt-delay"} 1)",
      R"(ssm_sessions_active 1)",
      R"(ssm_sessions_detached 0)",
      R"(ssm_models_loaded 3)",
      R"(ssm_session_evictions_total 0)",
  };
  for (const char* line : kExpected) EXPECT_THAT(text, HasSubstr(line));
  // s4-demo has 2 layers: each Infer looks up each layer's spectra for its
  // length rung once, and the second call finds both. The repository's
  // models (and their caches) outlive one test, so count the difference.
  const double misses0 = MetricValue(text, "ssm_kernel_cache_misses_total");
  const double hits0 = MetricValue(text, "ssm_kernel_cache_hits_total");
  ASSERT_GE(misses0, 0);
  ASSERT_GE(hits0, 0);
  request.set_model("s4-demo");
  ASSERT_TRUE(Infer(request, &response).ok());
  ASSERT_TRUE(Infer(request, &response).ok());
  const std::string cached = server_->metrics().Text();
  const double misses = MetricValue(cached, "ssm_kernel_cache_misses_total") - misses0;
  const double hits = MetricValue(cached, "ssm_kernel_cache_hits_total") - hits0;
  EXPECT_EQ(misses + hits, 4);
  EXPECT_GE(hits, 2);
  EXPECT_THAT(cached, ::testing::Not(HasSubstr("ssm_kernel_cache_bytes 0\n")));
  EXPECT_TRUE(Close(s).ok());
  EXPECT_THAT(server_->metrics().Text(),
              HasSubstr("ssm_rpc_requests_total{code=\"OK\",rpc=\"StreamInfer\"} 1"));
}

}  // namespace
}  // namespace ssm::server::testing
