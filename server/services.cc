#include "server/services.h"

#include <chrono>
#include <string>
#include <utility>
#include <vector>

#include "absl/functional/any_invocable.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "server/log.h"
#include "server/math_handlers.h"
#include "server/model_config.h"
#include "server/status.h"
#include "server/tensor_codec.h"

namespace ssm::server {
namespace {

namespace v1 = ::ssm::v1;

bool Draining(const ServiceEnv& env) {
  return env.draining != nullptr && env.draining->load(std::memory_order_acquire);
}

absl::Status DrainingError() {
  return absl::UnavailableError("server is draining; retry on another replica");
}

absl::Status BusyError(const WorkerPool& pool) {
  return absl::ResourceExhaustedError(absl::StrCat(
      "server busy: ", pool.threads(), " workers are busy and --max_queue=", pool.max_queue(),
      " jobs are already waiting; retry later"));
}

// Why a call that is still queued should not run: its client cancelled or
// its deadline passed. OK when it should run.
absl::Status CallStillWanted(grpc::CallbackServerContext* context) {
  if (!context->IsCancelled()) return absl::OkStatus();
  if (context->deadline() <= std::chrono::system_clock::now()) {
    return absl::DeadlineExceededError("the deadline passed before the work started");
  }
  return absl::CancelledError("the call was cancelled");
}

void SnapshotToProto(const SessionSnapshot& snapshot, v1::StateSnapshot* out) {
  out->set_data(snapshot.data);
  out->set_model(snapshot.model);
  out->set_version(snapshot.version);
  out->set_fingerprint(snapshot.fingerprint);
  out->set_position(snapshot.position);
  out->set_batch(snapshot.batch);
}

absl::Status CheckBatchLimit(int64_t batch, absl::string_view field, const RequestLimits& limits) {
  if (batch > limits.max_batch) {
    return absl::ResourceExhaustedError(
        absl::StrCat(field, " = ", batch, " exceeds --max_batch=", limits.max_batch));
  }
  return absl::OkStatus();
}

// Refuses a response gRPC would refuse to send anyway, before computing it.
absl::Status CheckResponseBytes(int64_t bytes, absl::string_view what,
                                const RequestLimits& limits) {
  if (bytes > limits.max_message_bytes) {
    return absl::ResourceExhaustedError(absl::StrCat(what, " would take ", bytes,
                                                     " bytes, more than --max_message_bytes=",
                                                     limits.max_message_bytes));
  }
  return absl::OkStatus();
}

// The reactor of one unary call: its start time for the latency metric,
// the single exit through ToGrpcStatus, and the hand-off to the pool.
class UnaryCall final : public grpc::ServerUnaryReactor {
 public:
  UnaryCall(grpc::CallbackServerContext* context, const ServiceEnv* env, const char* rpc)
      : context_(context), env_(env), rpc_(rpc), start_(absl::Now()) {
    env_->calls->Enter();
  }

  // Finishes the call. Exactly once per call; the reactor may be deleted
  // (OnDone) as soon as this returns, so it is the caller's last use.
  void Complete(const absl::Status& status) {
    if (!status.ok()) {
      Logf("rpc %s failed: %s: %s (peer %s)", rpc_, absl::StatusCodeToString(status.code()),
           status.message(), context_->peer());
    }
    env_->metrics->RecordRpc(rpc_, status.code(), absl::Now() - start_);
    Finish(ToGrpcStatus(status));
  }

  // Runs `work` on a worker and completes the call with its status, unless
  // the pool is full (RESOURCE_EXHAUSTED now) or the call is cancelled or
  // past its deadline by the time a worker is free.
  void CompleteOnPool(absl::AnyInvocable<absl::Status() &&> work) {
    WorkerPool& pool = *env_->pool;
    if (!pool.TrySchedule([this, work = std::move(work)]() mutable {
          absl::Status status = CallStillWanted(context_);
          if (status.ok()) status = std::move(work)();
          Complete(status);
        })) {
      Complete(BusyError(pool));
    }
  }

  void OnDone() override {
    CallCounter* calls = env_->calls;
    delete this;
    calls->Exit();
  }

 private:
  grpc::CallbackServerContext* const context_;
  const ServiceEnv* const env_;
  const char* const rpc_;
  const absl::Time start_;
};

// The reactor of one StreamInfer call, one session. Strictly one operation
// in flight at a time (a read, a chunk on the pool, or a write), so the
// outputs go out in order, one per chunk, and the reactor's state needs no
// lock: each step happens-after the previous one through gRPC or the pool.
class StreamCall final
    : public grpc::ServerBidiReactor<v1::StreamRequest, v1::StreamResponse> {
 public:
  StreamCall(grpc::CallbackServerContext* context, const ServiceEnv* env)
      : context_(context), env_(env) {
    env_->calls->Enter();
    StartRead(&request_);
  }

  void OnReadDone(bool ok) override {
    if (!ok) {
      // No more requests: the client either closed its side (a clean end,
      // the session ends with it) or the stream broke (kept, detached).
      if (context_->IsCancelled()) {
        End(absl::CancelledError("the stream was cancelled or broke"), Disposition::kDetach);
      } else {
        End(absl::OkStatus(), Disposition::kClose);
      }
      return;
    }
    request_start_ = absl::Now();
    if (!env_->pool->TrySchedule([this] { Process(); })) {
      End(BusyError(*env_->pool), Disposition::kDetach);
    }
  }

  void OnWriteDone(bool ok) override {
    if (!ok) {
      End(absl::CancelledError("the stream broke while sending a response"),
          Disposition::kDetach);
      return;
    }
    StartRead(&request_);
  }

  void OnDone() override {
    // End releases the session on every path; this only guards the
    // invariant that a finished stream never holds one.
    if (session_ != nullptr) env_->sessions->Detach(session_->id(), "stream ended");
    CallCounter* calls = env_->calls;
    delete this;
    calls->Exit();
  }

 private:
  enum class Disposition { kClose, kDetach };

  // On a worker: one request in, one response out (or the stream's end).
  void Process() {
    absl::Status status = CallStillWanted(context_);
    if (status.ok()) {
      response_.Clear();
      switch (request_.kind_case()) {
        case v1::StreamRequest::kOpen:
          status = HandleOpen(request_.open());
          break;
        case v1::StreamRequest::kChunk:
          status = HandleChunk(request_.chunk(), request_.want_state());
          break;
        default:
          status = absl::InvalidArgumentError("a request must carry `open` or `chunk`");
      }
    }
    if (!status.ok()) {
      End(status, Disposition::kDetach);
      return;
    }
    StartWrite(&response_);
  }

  absl::Status HandleOpen(const v1::StreamOpen& open) {
    if (session_ != nullptr) {
      return absl::InvalidArgumentError(absl::StrCat(
          "`open` must be the first request and only the first; this stream already runs "
          "session ",
          session_->id()));
    }
    if (Draining(*env_)) return DrainingError();
    if (open.has_resume_from() && !open.session_id().empty()) {
      return absl::InvalidArgumentError(
          "open: set at most one of resume_from and session_id");
    }
    if (open.batch() < 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("open.batch must be >= 1 (0 means 1), got ", open.batch()));
    }
    const RequestLimits& limits = env_->limits;
    std::shared_ptr<SessionManager::Entry> entry;
    if (!open.session_id().empty()) {
      absl::StatusOr<std::shared_ptr<SessionManager::Entry>> reattached =
          env_->sessions->Reattach(open.session_id(), open.model(), open.batch());
      if (!reattached.ok()) return reattached.status();
      entry = *std::move(reattached);
    } else if (open.has_resume_from()) {
      const std::string& name =
          open.model().empty() ? open.resume_from().model() : open.model();
      if (name.empty()) {
        return absl::InvalidArgumentError("open.model must be set (or open.resume_from.model)");
      }
      // The version is the snapshot's: the newest whose weights it matches.
      absl::StatusOr<ModelCatalog::Resumed> resumed =
          env_->catalog->ResumeSession(name, 0, open.resume_from().data());
      if (!resumed.ok()) return resumed.status();
      const int batch = resumed->session.batch();
      if (absl::Status s = CheckBatchLimit(batch, "open.resume_from's batch", limits); !s.ok()) {
        return s;
      }
      if (open.batch() != 0 && open.batch() != batch) {
        return absl::InvalidArgumentError(absl::StrCat(
            "open.batch = ", open.batch(), " but the snapshot has batch ", batch));
      }
      absl::StatusOr<std::shared_ptr<SessionManager::Entry>> added = env_->sessions->Add(
          name, resumed->served.version, std::move(resumed->session), /*attached=*/true,
          SessionManager::Origin::kResumed);
      if (!added.ok()) return added.status();
      entry = *std::move(added);
    } else {
      if (open.model().empty()) return absl::InvalidArgumentError("open.model must be set");
      absl::StatusOr<ServedModel> served = env_->catalog->Find(open.model(), open.version());
      if (!served.ok()) return served.status();
      const int batch = open.batch() == 0 ? 1 : open.batch();
      if (absl::Status s = CheckBatchLimit(batch, "open.batch", limits); !s.ok()) return s;
      absl::StatusOr<ssm::Session> session = ssm::Session::Create(served->model, batch);
      if (!session.ok()) return session.status();
      absl::StatusOr<std::shared_ptr<SessionManager::Entry>> added =
          env_->sessions->Add(served->name, served->version, *std::move(session),
                              /*attached=*/true, SessionManager::Origin::kNew);
      if (!added.ok()) return added.status();
      entry = *std::move(added);
    }
    session_ = std::move(entry);
    handles_ = env_->metrics->ForModel(session_->model_name());

    v1::StreamOpened* opened = response_.mutable_opened();
    opened->set_session_id(session_->id());
    opened->set_model(session_->model_name());
    opened->set_version(session_->version());
    opened->set_batch(session_->batch());
    opened->set_d_input(session_->d_input());
    opened->set_d_output(session_->d_output());
    const int64_t position = session_->position();
    opened->set_position(position);
    response_.set_position(position);
    return absl::OkStatus();
  }

  absl::Status HandleChunk(const v1::Tensor& chunk, bool want_state) {
    if (session_ == nullptr) {
      return absl::InvalidArgumentError(
          "the first request of a stream must be `open`; got a chunk");
    }
    const SessionManager::Entry& entry = *session_;
    absl::StatusOr<SequenceShape> shape =
        CheckSequenceShape(chunk, "chunk", entry.d_input(), entry.model_name());
    if (!shape.ok()) return shape.status();
    if (shape->batch != entry.batch()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "chunk.shape[0] = ", shape->batch, " but the session's batch is ", entry.batch()));
    }
    const RequestLimits& limits = env_->limits;
    if (shape->steps > limits.max_chunk_steps) {
      return absl::ResourceExhaustedError(absl::StrCat("chunk.shape[1] = ", shape->steps,
                                                       " steps exceeds --max_chunk_steps=",
                                                       limits.max_chunk_steps));
    }
    const SequenceShape out_shape{shape->batch, shape->steps, entry.d_output()};
    if (absl::Status s = CheckResponseBytes(
            out_shape.size() * 4 + (want_state ? entry.state_bytes() : 0), "the chunk's output",
            limits);
        !s.ok()) {
      return s;
    }
    if (absl::Status s = ReadFiniteValues(chunk, "chunk", &x_); !s.ok()) return s;
    y_.resize(out_shape.size());
    SessionSnapshot snapshot;
    absl::StatusOr<int64_t> position = session_->Run(x_, static_cast<int>(shape->steps),
                                                     absl::MakeSpan(y_),
                                                     want_state ? &snapshot : nullptr);
    if (!position.ok()) return position.status();
    WriteSequenceTensor(y_, out_shape, response_.mutable_output());
    response_.set_position(*position);
    if (want_state) SnapshotToProto(snapshot, response_.mutable_state());
    handles_.steps->Increment(static_cast<double>(shape->steps));
    handles_.chunk_latency->Observe(absl::ToDoubleSeconds(absl::Now() - request_start_));
    return absl::OkStatus();
  }

  // Releases the session (closed after a clean end, detached otherwise) and
  // finishes the call. The last thing any path does: OnDone may follow at
  // once and delete this.
  void End(const absl::Status& status, Disposition disposition) {
    std::string session_id = "none";
    if (session_ != nullptr) {
      session_id = session_->id();
      if (disposition == Disposition::kClose) {
        env_->sessions->Close(session_id);
      } else {
        env_->sessions->Detach(session_id,
                               status.ok() ? std::string("stream ended")
                                           : absl::StrCat(absl::StatusCodeToString(status.code()),
                                                          ": ", status.message()));
      }
      session_.reset();
    }
    if (!status.ok()) {
      Logf("rpc StreamInfer failed: %s: %s (session %s, peer %s)",
           absl::StatusCodeToString(status.code()), status.message(), session_id,
           context_->peer());
    }
    env_->metrics->RecordRpc("StreamInfer", status.code(), absl::InfiniteDuration());
    Finish(ToGrpcStatus(status));
  }

  grpc::CallbackServerContext* const context_;
  const ServiceEnv* const env_;
  std::shared_ptr<SessionManager::Entry> session_;
  Metrics::StreamHandles handles_;
  v1::StreamRequest request_;
  v1::StreamResponse response_;
  absl::Time request_start_;
  // Reused across chunks: a stream of small chunks allocates no buffers.
  std::vector<double> x_;
  std::vector<double> y_;
};

}  // namespace

void CallCounter::Enter() {
  absl::MutexLock lock(&mu_);
  ++running_;
}

void CallCounter::Exit() {
  absl::MutexLock lock(&mu_);
  --running_;
}

int CallCounter::running() const {
  absl::MutexLock lock(&mu_);
  return running_;
}

bool CallCounter::WaitForIdle(absl::Time deadline) {
  absl::MutexLock lock(&mu_);
  auto idle = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return running_ == 0; };
  return mu_.AwaitWithDeadline(absl::Condition(&idle), deadline);
}

grpc::ServerUnaryReactor* InferenceService::Infer(grpc::CallbackServerContext* context,
                                                  const v1::InferRequest* request,
                                                  v1::InferResponse* response) {
  auto* call = new UnaryCall(context, env_, "Infer");
  if (Draining(*env_)) {
    call->Complete(DrainingError());
    return call;
  }
  absl::StatusOr<ServedModel> served = env_->catalog->Find(request->model(), request->version());
  if (!served.ok()) {
    call->Complete(served.status());
    return call;
  }
  const ssm::Model& model = *served->model;
  absl::StatusOr<SequenceShape> shape =
      CheckSequenceShape(request->input(), "input", model.d_input(), served->name);
  if (!shape.ok()) {
    call->Complete(shape.status());
    return call;
  }
  const RequestLimits& limits = env_->limits;
  absl::Status status = CheckBatchLimit(shape->batch, "input.shape[0]", limits);
  if (status.ok() && shape->steps > limits.max_unary_length) {
    status = absl::ResourceExhaustedError(absl::StrCat("input.shape[1] = ", shape->steps,
                                                       " steps exceeds --max_unary_length=",
                                                       limits.max_unary_length));
  }
  if (status.ok() && shape->steps > model.max_length()) {
    status = absl::InvalidArgumentError(absl::StrCat(
        "input.shape[1] = ", shape->steps, " steps exceeds model '", served->name,
        "''s max_length ", model.max_length(), " (StreamInfer takes sequences of any length)"));
  }
  const SequenceShape out_shape{shape->batch, shape->steps, model.d_output()};
  if (status.ok()) {
    status = CheckResponseBytes(
        out_shape.size() * 4 + (request->return_state() ? served->state_bytes * shape->batch : 0),
        "the output", limits);
  }
  if (status.ok() && request->return_state() && !model.streamable()) {
    status = absl::FailedPreconditionError(absl::StrCat(
        "return_state: model '", served->name,
        "' is bidirectional, so it has no state to continue from"));
  }
  if (!status.ok()) {
    call->Complete(status);
    return call;
  }
  call->CompleteOnPool([served = *std::move(served), shape = *shape, out_shape, request,
                        response]() -> absl::Status {
    std::vector<double> x;
    if (absl::Status s = ReadFiniteValues(request->input(), "input", &x); !s.ok()) return s;
    std::vector<double> y(out_shape.size());
    const int batch = static_cast<int>(shape.batch);
    const int steps = static_cast<int>(shape.steps);
    if (request->return_state()) {
      // The session's chunked convolution gives Forward's outputs (to
      // rounding) and, unlike Forward, the state after the last step.
      absl::StatusOr<ssm::Session> session = ssm::Session::Create(served.model, batch);
      if (!session.ok()) return session.status();
      if (absl::Status s = session->Run(x, steps, absl::MakeSpan(y)); !s.ok()) return s;
      v1::StateSnapshot* state = response->mutable_state();
      state->set_data(session->ExportState());
      state->set_model(served.name);
      state->set_version(served.version);
      state->set_fingerprint(served.model->fingerprint());
      state->set_position(session->position());
      state->set_batch(batch);
    } else {
      if (absl::Status s = served.model->Forward(x, batch, steps, absl::MakeSpan(y)); !s.ok()) {
        return s;
      }
    }
    WriteSequenceTensor(y, out_shape, response->mutable_output());
    response->set_model(served.name);
    response->set_version(served.version);
    return absl::OkStatus();
  });
  return call;
}

grpc::ServerBidiReactor<v1::StreamRequest, v1::StreamResponse>* InferenceService::StreamInfer(
    grpc::CallbackServerContext* context) {
  return new StreamCall(context, env_);
}

grpc::ServerUnaryReactor* InferenceService::ExportState(grpc::CallbackServerContext* context,
                                                        const v1::ExportStateRequest* request,
                                                        v1::ExportStateResponse* response) {
  auto* call = new UnaryCall(context, env_, "ExportState");
  // Allowed while draining: that is exactly when a client moves its session
  // to another replica.
  if (request->session_id().empty()) {
    call->Complete(absl::InvalidArgumentError("session_id must be set"));
    return call;
  }
  absl::StatusOr<std::shared_ptr<SessionManager::Entry>> entry =
      env_->sessions->Find(request->session_id());
  if (!entry.ok()) {
    call->Complete(entry.status());
    return call;
  }
  // On a worker: the session's lock may be held by a running chunk.
  call->CompleteOnPool([entry = *std::move(entry), response]() -> absl::Status {
    SnapshotToProto(entry->Export(), response->mutable_state());
    return absl::OkStatus();
  });
  return call;
}

grpc::ServerUnaryReactor* InferenceService::ImportState(grpc::CallbackServerContext* context,
                                                        const v1::ImportStateRequest* request,
                                                        v1::ImportStateResponse* response) {
  auto* call = new UnaryCall(context, env_, "ImportState");
  if (Draining(*env_)) {
    call->Complete(DrainingError());
    return call;
  }
  if (request->state().data().empty()) {
    call->Complete(absl::InvalidArgumentError("state.data must be set"));
    return call;
  }
  const std::string& name = request->model().empty() ? request->state().model() : request->model();
  if (name.empty()) {
    call->Complete(absl::InvalidArgumentError("model must be set (or state.model)"));
    return call;
  }
  call->CompleteOnPool([env = env_, name, request, response]() -> absl::Status {
    absl::StatusOr<ModelCatalog::Resumed> resumed =
        env->catalog->ResumeSession(name, request->version(), request->state().data());
    if (!resumed.ok()) return resumed.status();
    if (absl::Status s = CheckBatchLimit(resumed->session.batch(), "the snapshot's batch",
                                         env->limits);
        !s.ok()) {
      return s;
    }
    const int64_t position = resumed->session.position();
    absl::StatusOr<std::shared_ptr<SessionManager::Entry>> entry =
        env->sessions->Add(name, resumed->served.version, std::move(resumed->session),
                           /*attached=*/false, SessionManager::Origin::kImported);
    if (!entry.ok()) return entry.status();
    response->set_session_id((*entry)->id());
    response->set_position(position);
    return absl::OkStatus();
  });
  return call;
}

grpc::ServerUnaryReactor* InferenceService::ListModels(grpc::CallbackServerContext* context,
                                                       const v1::ListModelsRequest* /*request*/,
                                                       v1::ListModelsResponse* response) {
  auto* call = new UnaryCall(context, env_, "ListModels");
  if (Draining(*env_)) {
    call->Complete(DrainingError());
    return call;
  }
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
                                                     const v1::GetModelRequest* request,
                                                     v1::GetModelResponse* response) {
  auto* call = new UnaryCall(context, env_, "GetModel");
  if (Draining(*env_)) {
    call->Complete(DrainingError());
    return call;
  }
  absl::StatusOr<ServedModel> served = env_->catalog->Find(request->model(), request->version());
  if (!served.ok()) {
    call->Complete(served.status());
    return call;
  }
  const ssm::Model& model = *served->model;
  *response->mutable_config() = ModelConfigFromSpec(model.spec());
  response->set_version(served->version);
  response->set_fingerprint(model.fingerprint());
  response->set_streamable(model.streamable());
  response->set_memory_bytes(model.memory_bytes());
  response->set_state_bytes(served->state_bytes);
  call->Complete(absl::OkStatus());
  return call;
}

grpc::ServerUnaryReactor* MathService::BuildHippo(grpc::CallbackServerContext* context,
                                                  const v1::BuildHippoRequest* request,
                                                  v1::BuildHippoResponse* response) {
  auto* call = new UnaryCall(context, env_, "BuildHippo");
  if (Draining(*env_)) {
    call->Complete(DrainingError());
    return call;
  }
  call->CompleteOnPool([request, response]() -> absl::Status {
    absl::StatusOr<v1::BuildHippoResponse> result = ::ssm::server::BuildHippo(*request);
    if (!result.ok()) return result.status();
    response->Swap(&*result);
    return absl::OkStatus();
  });
  return call;
}

grpc::ServerUnaryReactor* MathService::ComputeKernel(grpc::CallbackServerContext* context,
                                                     const v1::ComputeKernelRequest* request,
                                                     v1::ComputeKernelResponse* response) {
  auto* call = new UnaryCall(context, env_, "ComputeKernel");
  if (Draining(*env_)) {
    call->Complete(DrainingError());
    return call;
  }
  MathLimits limits;
  limits.max_length = env_->limits.max_unary_length;
  limits.max_message_bytes = env_->limits.max_message_bytes;
  call->CompleteOnPool([request, response, limits]() -> absl::Status {
    absl::StatusOr<v1::ComputeKernelResponse> result =
        ::ssm::server::ComputeKernel(*request, limits);
    if (!result.ok()) return result.status();
    response->Swap(&*result);
    return absl::OkStatus();
  });
  return call;
}

}  // namespace ssm::server
