// Between the client's types and the wire's (internal to ssm_client_lib):
// tensors to and from ssm.v1.Tensor, and a stream's chunk requests. The
// public translations (StatusFromGrpc, CheckSequenceTensor) are declared in
// ssm_client.h and defined in wire.cc too.
#ifndef SSMSERVE_CLIENT_WIRE_H_
#define SSMSERVE_CLIENT_WIRE_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "client/ssm_client.h"
#include "ssm/v1/ssm_service.pb.h"

namespace ssm::client::internal {

int64_t Product(const std::vector<int64_t>& shape);
std::string ShapeString(const std::vector<int64_t>& shape);  // "[1, 2, 3]"

void ToProto(const Tensor& tensor, ssm::v1::Tensor* proto);

// A tensor the server sent; INTERNAL if it is not [batch, steps, features]
// with the expected sizes (0 = any), since a server that breaks the contract
// is a bug there, not bad input here.
absl::StatusOr<Tensor> FromProto(const ssm::v1::Tensor& proto, int64_t batch,
                                 int64_t steps, int64_t features);

// `values` as the chunk [batch, steps, d_input] of a stream request.
ssm::v1::StreamRequest ChunkRequest(int64_t batch, int steps, int64_t d_input,
                                    absl::Span<const float> values,
                                    bool want_state);

}  // namespace ssm::client::internal

#endif  // SSMSERVE_CLIENT_WIRE_H_
