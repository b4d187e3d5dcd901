#include "client/wire.h"

#include <grpcpp/grpcpp.h>

#include "absl/strings/str_cat.h"

namespace ssm::client {

absl::Status StatusFromGrpc(const grpc::Status& status) {
  // gRPC's and Abseil's canonical codes are the same numbers (0..16); a
  // code outside that range is UNKNOWN, as gRPC itself treats one.
  const int code = static_cast<int>(status.error_code());
  return absl::Status(code >= 0 && code <= 16
                          ? static_cast<absl::StatusCode>(code)
                          : absl::StatusCode::kUnknown,
                      status.error_message());
}

absl::Status CheckSequenceTensor(const Tensor& tensor) {
  using internal::ShapeString;
  if (tensor.shape.size() != 3) {
    return absl::InvalidArgumentError(
        absl::StrCat("tensor shape ", ShapeString(tensor.shape),
                     " is not [batch, steps, features]"));
  }
  for (int64_t d : tensor.shape) {
    if (d < 1) {
      return absl::InvalidArgumentError(absl::StrCat(
          "tensor shape ", ShapeString(tensor.shape), " has a dimension < 1"));
    }
  }
  if (static_cast<int64_t>(tensor.values.size()) !=
      internal::Product(tensor.shape)) {
    return absl::InvalidArgumentError(
        absl::StrCat("tensor of shape ", ShapeString(tensor.shape), " has ",
                     tensor.values.size(), " values"));
  }
  return absl::OkStatus();
}

namespace internal {

int64_t Product(const std::vector<int64_t>& shape) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

std::string ShapeString(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) {
    absl::StrAppend(&s, i ? ", " : "", shape[i]);
  }
  return s + "]";
}

void ToProto(const Tensor& tensor, ssm::v1::Tensor* proto) {
  proto->mutable_shape()->Add(tensor.shape.begin(), tensor.shape.end());
  proto->mutable_values()->Add(tensor.values.begin(), tensor.values.end());
}

absl::StatusOr<Tensor> FromProto(const ssm::v1::Tensor& proto, int64_t batch,
                                 int64_t steps, int64_t features) {
  Tensor t;
  t.shape.assign(proto.shape().begin(), proto.shape().end());
  t.values.assign(proto.values().begin(), proto.values().end());
  bool ok = t.shape.size() == 3 &&
            static_cast<int64_t>(t.values.size()) == Product(t.shape);
  if (ok) {
    const int64_t want[3] = {batch, steps, features};
    for (int i = 0; i < 3; ++i) ok = ok && (want[i] == 0 || want[i] == t.shape[i]);
  }
  if (!ok) {
    return absl::InternalError(absl::StrCat(
        "the server sent a tensor of shape ", ShapeString(t.shape), " with ",
        t.values.size(), " values; expected [", batch, ", ", steps, ", ",
        features, "] (0 = any)"));
  }
  return t;
}

ssm::v1::StreamRequest ChunkRequest(int64_t batch, int steps, int64_t d_input,
                                    absl::Span<const float> values,
                                    bool want_state) {
  ssm::v1::StreamRequest request;
  ssm::v1::Tensor* chunk = request.mutable_chunk();
  chunk->add_shape(batch);
  chunk->add_shape(steps);
  chunk->add_shape(d_input);
  chunk->mutable_values()->Add(values.begin(), values.end());
  request.set_want_state(want_state);
  return request;
}

}  // namespace internal
}  // namespace ssm::client
