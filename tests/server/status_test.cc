// The single absl::Status -> grpc::Status translation keeps every canonical
// code and the message.

#include <string>

#include <gtest/gtest.h>

#include "server/status.h"

namespace ssm::server {
namespace {

TEST(StatusTest, OkIsOk) {
  const grpc::Status s = ToGrpcStatus(absl::OkStatus());
  EXPECT_TRUE(s.ok());
  EXPECT_EQ(s.error_code(), grpc::StatusCode::OK);
  EXPECT_EQ(s.error_message(), "");
}

TEST(StatusTest, EveryCanonicalCodePassesThroughWithItsMessage) {
  const struct {
    absl::StatusCode absl_code;
    grpc::StatusCode grpc_code;
  } kCases[] = {
      {absl::StatusCode::kCancelled, grpc::StatusCode::CANCELLED},
      {absl::StatusCode::kUnknown, grpc::StatusCode::UNKNOWN},
      {absl::StatusCode::kInvalidArgument, grpc::StatusCode::INVALID_ARGUMENT},
      {absl::StatusCode::kDeadlineExceeded, grpc::StatusCode::DEADLINE_EXCEEDED},
      {absl::StatusCode::kNotFound, grpc::StatusCode::NOT_FOUND},
      {absl::StatusCode::kAlreadyExists, grpc::StatusCode::ALREADY_EXISTS},
      {absl::StatusCode::kPermissionDenied, grpc::StatusCode::PERMISSION_DENIED},
      {absl::StatusCode::kResourceExhausted, grpc::StatusCode::RESOURCE_EXHAUSTED},
      {absl::StatusCode::kFailedPrecondition, grpc::StatusCode::FAILED_PRECONDITION},
      {absl::StatusCode::kAborted, grpc::StatusCode::ABORTED},
      {absl::StatusCode::kOutOfRange, grpc::StatusCode::OUT_OF_RANGE},
      {absl::StatusCode::kUnimplemented, grpc::StatusCode::UNIMPLEMENTED},
      {absl::StatusCode::kInternal, grpc::StatusCode::INTERNAL},
      {absl::StatusCode::kUnavailable, grpc::StatusCode::UNAVAILABLE},
      {absl::StatusCode::kDataLoss, grpc::StatusCode::DATA_LOSS},
      {absl::StatusCode::kUnauthenticated, grpc::StatusCode::UNAUTHENTICATED},
  };
  for (const auto& c : kCases) {
    const std::string message = "why: " + absl::StatusCodeToString(c.absl_code);
    const grpc::Status s = ToGrpcStatus(absl::Status(c.absl_code, message));
    EXPECT_EQ(s.error_code(), c.grpc_code) << message;
    EXPECT_EQ(s.error_message(), message);
  }
}

TEST(StatusTest, PayloadsStayBehind) {
  absl::Status status = absl::DataLossError("state snapshot: checksum mismatch");
  status.SetPayload("type.example/detail", absl::Cord("binary"));
  const grpc::Status s = ToGrpcStatus(status);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::DATA_LOSS);
  EXPECT_EQ(s.error_message(), "state snapshot: checksum mismatch");
  EXPECT_EQ(s.error_details(), "");
}

TEST(StatusTest, NonCanonicalCodeIsUnknown) {
  const grpc::Status s = ToGrpcStatus(absl::Status(static_cast<absl::StatusCode>(42), "odd"));
  EXPECT_EQ(s.error_code(), grpc::StatusCode::UNKNOWN);
  EXPECT_EQ(s.error_message(), "odd");
}

TEST(StatusTest, LongMessagesAreCutAndSaySo) {
  const std::string fits(kMaxStatusMessageBytes, 'a');
  EXPECT_EQ(ToGrpcStatus(absl::InvalidArgumentError(fits)).error_message(), fits);

  const std::string huge(1 << 20, 'b');
  const std::string cut = ToGrpcStatus(absl::NotFoundError(huge)).error_message();
  EXPECT_LE(cut.size(), kMaxStatusMessageBytes);
  EXPECT_EQ(cut.substr(0, 100), huge.substr(0, 100));
  const size_t kept = cut.find(' ');
  ASSERT_NE(kept, std::string::npos);
  EXPECT_EQ(cut.substr(kept), " ... [" + std::to_string(huge.size() - kept) + " more bytes]");
}

}  // namespace
}  // namespace ssm::server
