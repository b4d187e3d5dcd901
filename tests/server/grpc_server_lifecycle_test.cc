// The server's life: health and reflection while serving, the drain
// (health NOT_SERVING, new calls refused, running streams finish), shutdown
// with and past its grace, and start-up errors.

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <thread>

#include <gmock/gmock.h>
#include <grpcpp/generic/generic_stub.h>
#include <gtest/gtest.h>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "grpc_server_fixture.h"

namespace ssm::server::testing {
namespace {

using ::testing::HasSubstr;

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

  v1::InferResponse infer;
  grpc::Status status = Infer(InferRequestFor("legt-delay", MakeInput(1, 5)), &infer);
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
  EXPECT_TRUE(Close(s).ok());

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
  v1::InferResponse infer;
  const grpc::Status status = Infer(InferRequestFor("legt-delay", MakeInput(1, 5)), &infer);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAVAILABLE);
  EXPECT_THAT(status.error_message(), HasSubstr("server is draining"));
  EXPECT_FALSE(shut_down.HasBeenNotified());

  v1::StreamResponse response;
  ASSERT_TRUE(SendChunk(s.stream.get(), MakeInput(1, 5), &response));
  EXPECT_TRUE(Close(s).ok());
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

TEST(UnixSocketAddressTest, PathsAreReadAsGrpcSpellsThem) {
  EXPECT_EQ(UnixSocketPath("unix:/run/ssm.sock"), "/run/ssm.sock");
  EXPECT_EQ(UnixSocketPath("unix:///run/ssm.sock"), "/run/ssm.sock");
  EXPECT_EQ(UnixSocketPath("unix:relative.sock"), "relative.sock");
  EXPECT_EQ(UnixSocketPath("unix-abstract:ssm"), std::string("\0ssm", 4));
  EXPECT_EQ(UnixSocketPath("unix:"), "");  // no path: refused by ValidateServerOptions
  EXPECT_EQ(UnixSocketPath("127.0.0.1:50051"), std::nullopt);
  EXPECT_EQ(UnixSocketPath("unixhost:50051"), std::nullopt);
  EXPECT_TRUE(IsLoopback("unix:/run/ssm.sock"));
  EXPECT_TRUE(IsLoopback("unix-abstract:ssm"));
  EXPECT_FALSE(IsLoopback("0.0.0.0:50051"));
}

TEST(UnixSocketAddressTest, AnAddressWithoutAPathOrWithOneTooLongIsRefused) {
  ServerOptions options;
  for (const char* address : {"unix:", "unix://", "unix-abstract:"}) {
    options.address = address;
    const absl::Status status = ValidateServerOptions(options);
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << address;
    EXPECT_THAT(status.message(), HasSubstr("names no socket path")) << address;
  }
  options.address = "unix:/tmp/" + std::string(kMaxUnixSocketPath - 5, 'a');  // 107 bytes
  EXPECT_TRUE(ValidateServerOptions(options).ok()) << ValidateServerOptions(options);
  options.address += "a";
  const absl::Status status = ValidateServerOptions(options);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), HasSubstr("at most 107 bytes, got 108"));
  // A host whose name starts with "unix" is a host.
  options.address = "unixhost:50051";
  EXPECT_TRUE(ValidateServerOptions(options).ok());
}

}  // namespace
}  // namespace ssm::server::testing
