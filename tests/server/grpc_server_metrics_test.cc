// The Prometheus metrics the server keeps: calls by code, latencies,
// stream steps, sessions, and the kernel cache.

#include <string>

#include <gmock/gmock.h>
#include <grpcpp/generic/generic_stub.h>
#include <gtest/gtest.h>

#include "absl/synchronization/notification.h"
#include "grpc_server_fixture.h"
#include "ssm/threads.h"

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

// A request that does not parse is an error like any other: counted with
// its code, not lost before the service sees it.
TEST_F(GrpcServerTest, MalformedRequestsAreCounted) {
  grpc::GenericStub generic(channel_);
  const std::string junk = "\xff\xff\xff\xff\x0f not a protobuf";
  grpc::Slice slice(junk);
  grpc::ByteBuffer request(&slice, 1), response;
  grpc::ClientContext context;
  absl::Notification done;
  grpc::Status status;
  generic.UnaryCall(&context, "/ssm.v1.Inference/GetModel", grpc::StubOptions(), &request,
                    &response, [&](grpc::Status s) {
                      status = std::move(s);
                      done.Notify();
                    });
  ASSERT_TRUE(done.WaitForNotificationWithTimeout(absl::Seconds(20)));
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(server_->metrics().Text(),
              HasSubstr(R"(ssm_rpc_errors_total{code="INVALID_ARGUMENT",rpc="GetModel"} 1)"));
}

// --threads sizes both the workers and the core's parallel loops.
TEST_F(GrpcServerTest, ThreadsFollowTheFlag) {
  StartServerWith([](ServerOptions& o) { o.threads = 3; });
  const std::string text = server_->metrics().Text();
  EXPECT_EQ(MetricValue(text, "ssm_worker_threads"), 3);
  EXPECT_EQ(MetricValue(text, "ssm_core_threads"), 3);
  EXPECT_EQ(ssm::Threads(), 3);
}

TEST_F(GrpcServerTest, ProcessAndConnectionFiguresAreExported) {
  v1::InferResponse response;
  ASSERT_TRUE(Infer(InferRequestFor("legt-delay", MakeInput(1, 5)), &response).ok());
  const std::string text = server_->metrics().Text();
  EXPECT_GT(MetricValue(text, "process_resident_memory_bytes"), 1 << 20);
  EXPECT_GT(MetricValue(text, "process_open_fds"), 3);
  EXPECT_GT(MetricValue(text, "process_max_fds"), 0);
  EXPECT_GT(MetricValue(text, "process_threads"), 1);
  EXPECT_GE(MetricValue(text, "ssm_connections_open"), 0);
  EXPECT_EQ(MetricValue(text, "ssm_connections_closed_over_limit_total"), 0);
}

}  // namespace
}  // namespace ssm::server::testing
