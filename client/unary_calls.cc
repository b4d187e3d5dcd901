// The Client's unary calls: one request, one response, each through
// Client::Rep::Call (the per-call context with the token; the server's
// status kept as it came). Health goes without the token: servers leave it
// open, and it may be asked on a plaintext health-only port.
#include <utility>
#include <vector>

#include "client/connection.h"
#include "client/ssm_client.h"
#include "client/wire.h"

namespace ssm::client {

const char* ServingStatusName(Client::ServingStatus status) {
  switch (status) {
    case Client::ServingStatus::kServing:
      return "SERVING";
    case Client::ServingStatus::kNotServing:
      return "NOT_SERVING";
    case Client::ServingStatus::kServiceUnknown:
      return "SERVICE_UNKNOWN";
    case Client::ServingStatus::kUnknown:
      break;
  }
  return "UNKNOWN";
}

absl::StatusOr<std::vector<ssm::v1::ModelStatus>> Client::ListModels() {
  absl::StatusOr<ssm::v1::ListModelsResponse> response =
      rep_->Call(rep_->inference.get(), &ssm::v1::Inference::Stub::ListModels,
           ssm::v1::ListModelsRequest());
  if (!response.ok()) return response.status();
  return std::vector<ssm::v1::ModelStatus>(response->models().begin(),
                                           response->models().end());
}

absl::StatusOr<ssm::v1::GetModelResponse> Client::GetModel(
    const std::string& model, int64_t version) {
  ssm::v1::GetModelRequest request;
  request.set_model(model);
  request.set_version(version);
  return rep_->Call(rep_->inference.get(), &ssm::v1::Inference::Stub::GetModel,
              request);
}

absl::StatusOr<InferResult> Client::Infer(const std::string& model,
                                          const Tensor& input, int64_t version,
                                          bool return_state) {
  if (absl::Status s = CheckSequenceTensor(input); !s.ok()) return s;
  ssm::v1::InferRequest request;
  request.set_model(model);
  request.set_version(version);
  request.set_return_state(return_state);
  internal::ToProto(input, request.mutable_input());
  absl::StatusOr<ssm::v1::InferResponse> response =
      rep_->Call(rep_->inference.get(), &ssm::v1::Inference::Stub::Infer, request);
  if (!response.ok()) return response.status();

  InferResult result;
  result.model = response->model();
  result.version = response->version();
  absl::StatusOr<Tensor> output = internal::FromProto(
      response->output(), input.shape[0], input.shape[1], 0);
  if (!output.ok()) return output.status();
  result.output = *std::move(output);
  if (response->has_state()) result.state = response->state();
  return result;
}

absl::StatusOr<ssm::v1::StateSnapshot> Client::ExportState(
    const std::string& session_id) {
  ssm::v1::ExportStateRequest request;
  request.set_session_id(session_id);
  absl::StatusOr<ssm::v1::ExportStateResponse> response = rep_->Call(
      rep_->inference.get(), &ssm::v1::Inference::Stub::ExportState, request);
  if (!response.ok()) return response.status();
  return response->state();
}

absl::StatusOr<Client::Imported> Client::ImportState(
    const ssm::v1::StateSnapshot& snapshot, const std::string& model,
    int64_t version) {
  ssm::v1::ImportStateRequest request;
  *request.mutable_state() = snapshot;
  request.set_model(model);
  request.set_version(version);
  absl::StatusOr<ssm::v1::ImportStateResponse> response = rep_->Call(
      rep_->inference.get(), &ssm::v1::Inference::Stub::ImportState, request);
  if (!response.ok()) return response.status();
  return Imported{response->session_id(), response->position()};
}

absl::StatusOr<ssm::v1::BuildHippoResponse> Client::BuildHippo(
    const ssm::v1::BuildHippoRequest& request) {
  return rep_->Call(rep_->math.get(), &ssm::v1::Math::Stub::BuildHippo, request);
}

absl::StatusOr<ssm::v1::ComputeKernelResponse> Client::ComputeKernel(
    const ssm::v1::ComputeKernelRequest& request) {
  return rep_->Call(rep_->math.get(), &ssm::v1::Math::Stub::ComputeKernel, request);
}

absl::StatusOr<Client::ServingStatus> Client::Health(
    const std::string& service) {
  grpc::health::v1::HealthCheckRequest request;
  request.set_service(service);
  absl::StatusOr<grpc::health::v1::HealthCheckResponse> response =
      rep_->Call(rep_->health.get(), &grpc::health::v1::Health::Stub::Check,
                 request, /*with_token=*/false);
  if (!response.ok()) return response.status();
  switch (response->status()) {
    case grpc::health::v1::HealthCheckResponse::SERVING:
      return ServingStatus::kServing;
    case grpc::health::v1::HealthCheckResponse::NOT_SERVING:
      return ServingStatus::kNotServing;
    case grpc::health::v1::HealthCheckResponse::SERVICE_UNKNOWN:
      return ServingStatus::kServiceUnknown;
    default:
      return ServingStatus::kUnknown;
  }
}

}  // namespace ssm::client
