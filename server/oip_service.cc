#include "server/oip_service.h"

#include <algorithm>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "server/log.h"
#include "server/oip_core.h"
#include "server/stream_transport.h"
#include "server/unary_call.h"
#include "ssm/session.h"

namespace ssm::server {
namespace {

namespace inf = ::inference;

// ModelStreamInfer's meaning over the pipelined transport: each request is
// a ModelInferRequest, answered in order; failures go in-band.
//
// Where a request runs: a request that continues a sequence with fewer
// steps than the core's convolution threshold, whose estimated time (this
// stream's measured cost per step for that model) is within kInlineBudgetNs,
// runs on the gRPC thread that read it (as StreamInfer's short chunks do);
// everything else on the worker pool.
class ModelStreamInferProtocol {
 public:
  using Request = inf::ModelInferRequest;
  using Response = inf::ModelStreamInferResponse;
  static constexpr const char* kRpc = "ModelStreamInfer";
  static constexpr const char* kRequestRpc = "ModelStreamInfer/request";

  ModelStreamInferProtocol(grpc::CallbackServerContext* context, const ServiceEnv* env)
      : context_(context), env_(env) {}

  ~ModelStreamInferProtocol() {
    if (caller_ != nullptr) env_->auth->LeaveCall(*caller_);
  }

  bool RunsInline(const Request& request) const {
    if (step_cost_ns_ <= 0 || request.model_name() != cost_model_) return false;
    const auto& p = request.parameters();
    auto id = p.find("sequence_id");
    if (id == p.end()) return false;  // a whole sequence: the pool's
    if (auto start = p.find("sequence_start");
        start != p.end() && start->second.bool_param()) {
      return false;  // opens a session
    }
    if (request.inputs_size() != 1 || request.inputs(0).shape_size() != 3) return true;  // an error
    const int64_t steps = request.inputs(0).shape(1);
    if (steps < 1) return true;  // an error
    if (steps >= ssm::Session::kConvChunkThreshold) return false;
    return steps * step_cost_ns_ <= kInlineBudgetNs;
  }

  absl::Status Handle(const Request& request, absl::Time arrived, Response* response) {
    response->Clear();
    if (caller_ == nullptr) {
      // The stream's caller, once: its credentials are the call's. Refused
      // credentials end the stream.
      absl::StatusOr<CallerRef> caller = AuthenticateCall(*env_->auth, *context_);
      if (!caller.ok()) return caller.status();
      if (absl::Status s = env_->auth->EnterCall(**caller); !s.ok()) return s;
      caller_ = *std::move(caller);
    }
    const absl::Time start = absl::Now();
    const absl::Status status = HandleOne(request, response->mutable_infer_response(), start);
    if (!status.ok()) {
      response->Clear();
      response->set_error_message(oip::StreamErrorMessage(status));
      const std::string code = absl::StatusCodeToString(status.code());
      LogfLimited(absl::StrCat("rpc ", kRequestRpc, " ", code),
                  "rpc %s failed: %s: %s (peer %s)", kRequestRpc, code, status.message(),
                  context_->peer());
    }
    env_->metrics->RecordRpc(kRequestRpc, status.code(), absl::Now() - arrived);
    return absl::OkStatus();
  }

  std::string End(const absl::Status& /*status*/, bool /*clean*/) {
    if (caller_ != nullptr) {
      env_->auth->LeaveCall(*caller_);
      caller_ = nullptr;
    }
    return "sequences kept in the sequence table";
  }

 private:
  absl::Status HandleOne(const Request& request, inf::ModelInferResponse* response,
                         absl::Time start) {
    if (absl::Status s = env_->auth->Check(*caller_, Scope::kRun, request.model_name()); !s.ok()) {
      return s;
    }
    absl::StatusOr<oip::InferPlan> plan = oip::PlanInfer(request, *env_->catalog, env_->limits);
    if (!plan.ok()) return plan.status();
    // Draining: sequences already running may finish; nothing new starts.
    if (env_->Draining() && (!plan->in_sequence() || plan->start)) return DrainingError();
    absl::Status status =
        oip::RunInfer(*plan, request, *env_->sequences, caller_->principal,
                      [this](int done, int total) {
                        return CallStopped(context_, done, total, "sequences");
                      },
                      response);
    if (status.ok() && plan->in_sequence() && !plan->start &&
        plan->shape.steps < ssm::Session::kConvChunkThreshold) {
      NoteStepCost(plan->served.name,
                   absl::ToInt64Nanoseconds(absl::Now() - start) / plan->shape.steps);
    }
    return status;
  }

  // As StreamInfer's: quick to follow a faster measurement, slow to follow
  // a slower one (a preempted step should not send the stream to the pool).
  // One model at a time: a request for another model starts afresh.
  void NoteStepCost(const std::string& model, int64_t ns) {
    if (model != cost_model_) {
      cost_model_ = model;
      step_cost_ns_ = 0;
    }
    if (step_cost_ns_ <= 0 || ns < step_cost_ns_) {
      step_cost_ns_ = std::max<int64_t>(ns, 1);
    } else {
      step_cost_ns_ += (ns - step_cost_ns_) / 8;
    }
  }

  static constexpr int64_t kInlineBudgetNs = 250'000;

  grpc::CallbackServerContext* const context_;
  const ServiceEnv* const env_;
  CallerRef caller_;  // set by the first request; holds a place in the caller's quota
  std::string cost_model_;
  int64_t step_cost_ns_ = 0;  // 0: not measured yet
};

}  // namespace

grpc::ServerUnaryReactor* OipService::ServerLive(grpc::CallbackServerContext* context,
                                                 const Raw* raw_request, Raw* raw_response) {
  auto* call = new MessageCall<inf::ServerLiveRequest, inf::ServerLiveResponse>(
      context, env_, "ServerLive", raw_response);
  if (!call->Parse(raw_request)) return call;
  call->response()->set_live(true);  // answering is being live, draining or not
  call->Complete(absl::OkStatus());
  return call;
}

grpc::ServerUnaryReactor* OipService::ServerReady(grpc::CallbackServerContext* context,
                                                  const Raw* raw_request, Raw* raw_response) {
  auto* call = new MessageCall<inf::ServerReadyRequest, inf::ServerReadyResponse>(
      context, env_, "ServerReady", raw_response);
  if (!call->Parse(raw_request)) return call;
  call->response()->set_ready(!env_->Draining());
  call->Complete(absl::OkStatus());
  return call;
}

grpc::ServerUnaryReactor* OipService::ServerMetadata(grpc::CallbackServerContext* context,
                                                     const Raw* raw_request, Raw* raw_response) {
  auto* call = new MessageCall<inf::ServerMetadataRequest, inf::ServerMetadataResponse>(
      context, env_, "ServerMetadata", raw_response);
  if (!call->Parse(raw_request)) return call;
  oip::FillServerMetadata(call->response());
  call->Complete(absl::OkStatus());
  return call;
}

grpc::ServerUnaryReactor* OipService::ModelReady(grpc::CallbackServerContext* context,
                                                 const Raw* raw_request, Raw* raw_response) {
  auto* call = new MessageCall<inf::ModelReadyRequest, inf::ModelReadyResponse>(
      context, env_, "ModelReady", raw_response);
  if (!call->Authenticate() || !call->Parse(raw_request)) return call;
  const inf::ModelReadyRequest& request = call->request();
  if (!call->Authorize(Scope::kRun, request.name())) return call;
  absl::StatusOr<ServedModel> served =
      oip::FindModel(*env_->catalog, request.name(), request.version(), "name", "version");
  if (!served.ok() && served.status().code() != absl::StatusCode::kNotFound) {
    call->Complete(served.status());  // a malformed request, not a model that is not there
    return call;
  }
  call->response()->set_ready(served.ok() && !env_->Draining());
  call->Complete(absl::OkStatus());
  return call;
}

grpc::ServerUnaryReactor* OipService::ModelMetadata(grpc::CallbackServerContext* context,
                                                    const Raw* raw_request, Raw* raw_response) {
  auto* call = new MessageCall<inf::ModelMetadataRequest, inf::ModelMetadataResponse>(
      context, env_, "ModelMetadata", raw_response);
  if (call->RefuseIfDraining() || !call->Authenticate() || !call->Parse(raw_request)) return call;
  const inf::ModelMetadataRequest& request = call->request();
  if (!call->Authorize(Scope::kRun, request.name())) return call;
  absl::StatusOr<ServedModel> served =
      oip::FindModel(*env_->catalog, request.name(), request.version(), "name", "version");
  if (served.ok()) oip::FillModelMetadata(*env_->catalog, *served, call->response());
  call->Complete(served.status());
  return call;
}

grpc::ServerUnaryReactor* OipService::ModelConfig(grpc::CallbackServerContext* context,
                                                  const Raw* raw_request, Raw* raw_response) {
  auto* call = new MessageCall<inf::ModelConfigRequest, inf::ModelConfigResponse>(
      context, env_, "ModelConfig", raw_response);
  if (call->RefuseIfDraining() || !call->Authenticate() || !call->Parse(raw_request)) return call;
  const inf::ModelConfigRequest& request = call->request();
  if (!call->Authorize(Scope::kRun, request.name())) return call;
  absl::StatusOr<ServedModel> served =
      oip::FindModel(*env_->catalog, request.name(), request.version(), "name", "version");
  if (served.ok()) {
    oip::FillModelConfig(*env_->catalog, *served, env_->limits, env_->sessions->options().ttl,
                         call->response()->mutable_config());
  }
  call->Complete(served.status());
  return call;
}

grpc::ServerUnaryReactor* OipService::RepositoryIndex(grpc::CallbackServerContext* context,
                                                      const Raw* raw_request, Raw* raw_response) {
  auto* call = new MessageCall<inf::RepositoryIndexRequest, inf::RepositoryIndexResponse>(
      context, env_, "RepositoryIndex", raw_response);
  if (call->RefuseIfDraining() || !call->Authenticate() || !call->Parse(raw_request)) return call;
  if (!call->Authorize(Scope::kList)) return call;
  oip::FillRepositoryIndex(*env_->catalog, call->request().ready(), call->response());
  call->Complete(absl::OkStatus());
  return call;
}

grpc::ServerUnaryReactor* OipService::ModelInfer(grpc::CallbackServerContext* context,
                                                 const Raw* raw_request, Raw* raw_response) {
  auto* call = new MessageCall<inf::ModelInferRequest, inf::ModelInferResponse>(
      context, env_, "ModelInfer", raw_response);
  if (call->RefuseIfDraining() || !call->Authenticate() || !call->Parse(raw_request)) return call;
  const inf::ModelInferRequest* request = &call->request();
  if (!call->Authorize(Scope::kRun, request->model_name())) return call;
  absl::StatusOr<oip::InferPlan> plan = oip::PlanInfer(*request, *env_->catalog, env_->limits);
  if (!plan.ok()) {
    call->Complete(plan.status());
    return call;
  }
  call->CompleteOnPool([env = env_, call, context, request,
                        plan = *std::move(plan)]() -> absl::Status {
    return oip::RunInfer(plan, *request, *env->sequences, call->caller().principal,
                         [context](int done, int total) {
                           return CallStopped(context, done, total, "sequences");
                         },
                         call->response());
  });
  return call;
}

grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer>* OipService::ModelStreamInfer(
    grpc::CallbackServerContext* context) {
  return new PipelinedStream<ModelStreamInferProtocol>(context, env_);
}

}  // namespace ssm::server
