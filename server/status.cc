#include "server/status.h"

namespace ssm::server {

grpc::Status ToGrpcStatus(const absl::Status& status) {
  if (status.ok()) return grpc::Status::OK;
  const int code = static_cast<int>(status.code());
  // absl::StatusCode and grpc::StatusCode share the numbering 0..16
  // (OK .. UNAUTHENTICATED); anything else is not a canonical code.
  const grpc::StatusCode grpc_code =
      code >= static_cast<int>(grpc::StatusCode::OK) &&
              code <= static_cast<int>(grpc::StatusCode::UNAUTHENTICATED)
          ? static_cast<grpc::StatusCode>(code)
          : grpc::StatusCode::UNKNOWN;
  return grpc::Status(grpc_code, BoundedMessage(status.message()));
}

}  // namespace ssm::server
