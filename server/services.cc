#include "server/services.h"

#include <algorithm>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "server/forward.h"
#include "server/math_handlers.h"
#include "server/model_config.h"
#include "server/session_open.h"
#include "server/stream_call.h"
#include "server/tensor_codec.h"
#include "server/unary_call.h"
#include "ssm/threads.h"

namespace ssm::server {
namespace {

namespace v1 = ::ssm::v1;

// The checks an Infer passes before any work is scheduled, in the order a
// client fixes them: the input's shape (the model's d_input), the server's
// limits, the model's own max_length, the response's size, and whether
// return_state is possible. Returns the input's shape.
absl::StatusOr<SequenceShape> CheckInfer(const v1::InferRequest& request, const ServedModel& served,
                                         const RequestLimits& limits) {
  const ssm::Model& model = *served.model;
  absl::StatusOr<SequenceShape> shape =
      CheckSequenceShape(request.input(), "input", model.d_input(), served.name);
  if (!shape.ok()) return shape.status();
  if (absl::Status s = CheckBatchLimit(shape->batch, "input.shape[0]", limits); !s.ok()) {
    return s;
  }
  if (shape->steps > limits.max_unary_length) {
    return absl::ResourceExhaustedError(
        absl::StrCat("input.shape[1] = ", shape->steps,
                     " steps exceeds --max_unary_length=", limits.max_unary_length));
  }
  if (shape->steps > model.max_length()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "input.shape[1] = ", shape->steps, " steps exceeds model '", served.name, "''s max_length ",
        model.max_length(), " (StreamInfer takes sequences of any length)"));
  }
  const int64_t out_values = shape->batch * shape->steps * model.d_output();
  if (absl::Status s = CheckResponseBytes(
          out_values * 4 + (request.return_state()
                                ? static_cast<int64_t>(model.state_bytes()) * shape->batch
                                : 0),
          "the output", limits);
      !s.ok()) {
    return s;
  }
  if (request.return_state() && !model.streamable()) {
    return absl::FailedPreconditionError(
        absl::StrCat("return_state: model '", served.name,
                     "' has no state to continue from: ", model.not_streamable_reason()));
  }
  return shape;
}

}  // namespace

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
  const SequenceShape out_shape{shape->batch, shape->steps, served->model->d_output()};
  call->CompleteOnPool([context, served = *std::move(served), shape = *shape, out_shape, request,
                        response, signer = env_->sessions->options().signer]() -> absl::Status {
    std::vector<double> x;
    if (absl::Status s = ReadFiniteValues(request->input(), "input", &x); !s.ok()) return s;
    std::vector<double> y(out_shape.size());
    const int batch = static_cast<int>(shape.batch);
    const int steps = static_cast<int>(shape.steps);
    if (request->return_state()) {
      // The session's chunked convolution gives Forward's outputs (to
      // rounding) and, unlike Forward, the state after the last step. It
      // runs in slices of time of at most kMaxRowsPerPass rows; the call
      // stops between two if it is no longer wanted.
      absl::StatusOr<ssm::Session> session = ssm::Session::Create(served.model, batch);
      if (!session.ok()) return session.status();
      session->set_output_limit(kMaxWireValue);
      if (absl::Status s =
              session->Run(x, steps, absl::MakeSpan(y),
                           [&](int done) { return CallStopped(context, done, steps, "steps"); });
          !s.ok()) {
        return s;
      }
      WriteStateSnapshot(SnapshotOf(*session, served.name, served.version, signer),
                         response->mutable_state());
    } else if (absl::Status s =
                   ForwardInPieces(*served.model, x, batch, steps, absl::MakeSpan(y),
                                   [&](int done) {
                                     return CallStopped(context, done, batch, "sequences");
                                   });
               !s.ok()) {
      return s;
    }
    if (absl::Status s = CheckWireValues(y, out_shape, "output"); !s.ok()) return s;
    WriteSequenceTensor(y, out_shape, response->mutable_output());
    response->set_model(served.name);
    response->set_version(served.version);
    return absl::OkStatus();
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
