#include "server/services.h"

#include <memory>
#include <string>
#include <utility>

#include "server/infer.h"
#include "server/math_handlers.h"
#include "server/model_config.h"
#include "server/session_open.h"
#include "server/stream_call.h"
#include "server/tensor_codec.h"
#include "server/unary_call.h"
#include "ssm/threads.h"

namespace ssm::server {

namespace v1 = ::ssm::v1;

grpc::ServerUnaryReactor* InferenceService::Infer(grpc::CallbackServerContext* context,
                                                  const grpc::ByteBuffer* raw_request,
                                                  grpc::ByteBuffer* raw_response) {
  auto* call =
      new MessageCall<v1::InferRequest, v1::InferResponse>(context, env_, "Infer", raw_response);
  if (call->RefuseIfDraining() || !call->Authenticate() || !call->Parse(raw_request)) return call;
  const v1::InferRequest* request = &call->request();
  v1::InferResponse* response = call->response();
  if (!call->Authorize(Scope::kRun, request->model())) return call;
  absl::StatusOr<ServedModel> served = env_->catalog->Find(request->model(), request->version());
  if (!served.ok()) {
    call->Complete(served.status());
    return call;
  }
  absl::StatusOr<SequenceShape> shape = CheckInfer(*request, *served, env_->limits);
  if (!shape.ok()) {
    call->Complete(shape.status());
    return call;
  }
  call->CompleteOnPool([context, served = *std::move(served), shape = *shape, request, response,
                        signer = env_->sessions->options().signer]() -> absl::Status {
    return RunInfer(*request, served, shape, signer,
                    [context](int64_t done, int64_t total, const char* unit) {
                      return CallStopped(context, done, total, unit);
                    },
                    response);
  });
  return call;
}

grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer>* InferenceService::StreamInfer(
    grpc::CallbackServerContext* context) {
  return NewStreamCall(context, env_);
}

grpc::ServerUnaryReactor* InferenceService::ExportState(grpc::CallbackServerContext* context,
                                                        const grpc::ByteBuffer* raw_request,
                                                        grpc::ByteBuffer* raw_response) {
  auto* call = new MessageCall<v1::ExportStateRequest, v1::ExportStateResponse>(
      context, env_, "ExportState", raw_response);
  if (!call->Authenticate() || !call->Parse(raw_request) || !call->Authorize(Scope::kState)) {
    return call;
  }
  const v1::ExportStateRequest* request = &call->request();
  v1::ExportStateResponse* response = call->response();
  // Allowed while draining: that is exactly when a client moves its session
  // to another replica.
  if (request->session_id().empty()) {
    call->Complete(absl::InvalidArgumentError("session_id must be set"));
    return call;
  }
  absl::StatusOr<std::shared_ptr<SessionManager::Entry>> entry =
      env_->sessions->Find(request->session_id(), call->caller().principal);
  if (!entry.ok() && entry.status().code() == absl::StatusCode::kNotFound &&
      env_->sessions->options().store != nullptr) {
    // Not here: from the store (on a worker: it is a network round trip).
    call->CompleteOnPool([env = env_, call, request, response]() -> absl::Status {
      absl::StatusOr<SessionSnapshot> stored =
          env->sessions->ExportStored(request->session_id(), call->caller().principal);
      if (!stored.ok()) return stored.status();
      WriteStateSnapshot(*stored, response->mutable_state());
      return absl::OkStatus();
    });
    return call;
  }
  if (!entry.ok()) {
    call->Complete(entry.status());
    return call;
  }
  // On a worker: the session's lock may be held by a running chunk.
  call->CompleteOnPool([entry = *std::move(entry), response]() -> absl::Status {
    WriteStateSnapshot(entry->Export(), response->mutable_state());
    return absl::OkStatus();
  });
  return call;
}

grpc::ServerUnaryReactor* InferenceService::ImportState(grpc::CallbackServerContext* context,
                                                        const grpc::ByteBuffer* raw_request,
                                                        grpc::ByteBuffer* raw_response) {
  auto* call = new MessageCall<v1::ImportStateRequest, v1::ImportStateResponse>(
      context, env_, "ImportState", raw_response);
  if (call->RefuseIfDraining() || !call->Authenticate() || !call->Parse(raw_request)) return call;
  const v1::ImportStateRequest* request = &call->request();
  v1::ImportStateResponse* response = call->response();
  if (!call->Authorize(Scope::kState)) return call;
  // On a worker: parsing and checking a snapshot is proportional to its
  // size.
  call->CompleteOnPool([env = env_, call, request, response]() -> absl::Status {
    OpenSessionRequest open;
    open.model = request->model();
    open.version = request->version();
    open.has_snapshot = true;
    open.snapshot = request->state().data();
    open.snapshot_model = request->state().model();
    open.snapshot_signature = request->state().signature();
    open.attach = false;
    open.snapshot_field = "state";
    const Caller& caller = call->caller();
    open.owner = caller.principal;
    open.may_run = [env, &caller](absl::string_view model) {
      return env->auth->Check(caller, Scope::kRun, model);
    };
    absl::StatusOr<std::shared_ptr<SessionManager::Entry>> entry =
        OpenSession(open, *env->catalog, *env->sessions, env->limits);
    if (!entry.ok()) return entry.status();
    response->set_session_id((*entry)->id());
    response->set_position((*entry)->position());
    return absl::OkStatus();
  });
  return call;
}

grpc::ServerUnaryReactor* InferenceService::ListModels(grpc::CallbackServerContext* context,
                                                       const grpc::ByteBuffer* raw_request,
                                                       grpc::ByteBuffer* raw_response) {
  auto* call = new MessageCall<v1::ListModelsRequest, v1::ListModelsResponse>(
      context, env_, "ListModels", raw_response);
  if (call->RefuseIfDraining() || !call->Authenticate() || !call->Parse(raw_request)) return call;
  v1::ListModelsResponse* response = call->response();
  if (!call->Authorize(Scope::kList)) return call;
  // A table lookup: cheaper than a hand-off to the pool.
  for (const ModelListing& listing : env_->catalog->List()) {
    v1::ModelStatus* status = response->add_models();
    status->set_name(listing.name);
    for (int64_t v : listing.versions) status->add_versions(v);
    status->set_error(listing.error);
  }
  call->Complete(absl::OkStatus());
  return call;
}

grpc::ServerUnaryReactor* InferenceService::GetModel(grpc::CallbackServerContext* context,
                                                     const grpc::ByteBuffer* raw_request,
                                                     grpc::ByteBuffer* raw_response) {
  auto* call = new MessageCall<v1::GetModelRequest, v1::GetModelResponse>(context, env_, "GetModel",
                                                                          raw_response);
  if (call->RefuseIfDraining() || !call->Authenticate() || !call->Parse(raw_request)) return call;
  const v1::GetModelRequest* request = &call->request();
  v1::GetModelResponse* response = call->response();
  if (!call->Authorize(Scope::kRun, request->model())) return call;
  absl::StatusOr<ServedModel> served = env_->catalog->Find(request->model(), request->version());
  if (served.ok()) {
    const ssm::Model& model = *served->model;
    *response->mutable_config() = ModelConfigFromSpec(model.spec());
    response->set_version(served->version);
    response->set_fingerprint(model.fingerprint());
    response->set_streamable(model.streamable());
    response->set_memory_bytes(model.memory_bytes());
    response->set_state_bytes(static_cast<int64_t>(model.state_bytes()));
  }
  call->Complete(served.status());
  return call;
}

grpc::ServerUnaryReactor* MathService::BuildHippo(grpc::CallbackServerContext* context,
                                                  const grpc::ByteBuffer* raw_request,
                                                  grpc::ByteBuffer* raw_response) {
  auto* call = new MessageCall<v1::BuildHippoRequest, v1::BuildHippoResponse>(
      context, env_, "BuildHippo", raw_response);
  if (call->RefuseIfDraining() || !call->Authenticate() || !call->Parse(raw_request)) return call;
  if (!call->Authorize(Scope::kMath)) return call;
  const v1::BuildHippoRequest* request = &call->request();
  v1::BuildHippoResponse* response = call->response();
  MathLimits limits;
  limits.max_work = env_->limits.max_math_work;
  call->CompleteOnPool(
      [context, request, response, limits]() -> absl::Status {
        const ssm::ThreadLimit one_cpu(1);  // Math's share is its workers, not every core
        absl::StatusOr<v1::BuildHippoResponse> result = ::ssm::server::BuildHippo(
            *request, limits, [context] { return StillWantedDuring(context, "BuildHippo"); });
        if (!result.ok()) return result.status();
        response->Swap(&*result);
        return absl::OkStatus();
      },
      WorkerPool::JobClass::kMath);
  return call;
}

grpc::ServerUnaryReactor* MathService::ComputeKernel(grpc::CallbackServerContext* context,
                                                     const grpc::ByteBuffer* raw_request,
                                                     grpc::ByteBuffer* raw_response) {
  auto* call = new MessageCall<v1::ComputeKernelRequest, v1::ComputeKernelResponse>(
      context, env_, "ComputeKernel", raw_response);
  if (call->RefuseIfDraining() || !call->Authenticate() || !call->Parse(raw_request)) return call;
  if (!call->Authorize(Scope::kMath)) return call;
  const v1::ComputeKernelRequest* request = &call->request();
  v1::ComputeKernelResponse* response = call->response();
  MathLimits limits;
  limits.max_length = env_->limits.max_unary_length;
  limits.max_message_bytes = env_->limits.max_message_bytes;
  limits.max_work = env_->limits.max_math_work;
  call->CompleteOnPool(
      [context, request, response, limits]() -> absl::Status {
        const ssm::ThreadLimit one_cpu(1);  // Math's share is its workers, not every core
        absl::StatusOr<v1::ComputeKernelResponse> result = ::ssm::server::ComputeKernel(
            *request, limits, [context] { return StillWantedDuring(context, "ComputeKernel"); });
        if (!result.ok()) return result.status();
        response->Swap(&*result);
        return absl::OkStatus();
      },
      WorkerPool::JobClass::kMath);
  return call;
}

}  // namespace ssm::server
