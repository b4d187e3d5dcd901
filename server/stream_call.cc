#include "server/stream_call.h"

#include <algorithm>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "server/echo.h"
#include "server/session_open.h"
#include "server/stream_transport.h"
#include "server/tensor_codec.h"
#include "server/unary_call.h"
#include "ssm/session.h"

namespace ssm::server {
namespace {

namespace v1 = ::ssm::v1;

// StreamInfer's meaning, over the transport of stream_transport.h: the
// first request opens (or resumes, or reattaches) the stream's one session
// through the session layer's policy; every chunk after it runs on that
// session; the end closes the session after a clean half-close and detaches
// it otherwise (a break, or an error status), keeping its state for
// --session_ttl.
//
// Where a chunk runs. `open`, long chunks (>= the core's convolution
// threshold) and chunks whose estimated cost is above kInlineBudgetNs are
// not cheap: they run on the worker pool. With the step batcher
// (env->batcher), a short chunk that asks for no state is handed to it
// (Start: the batcher steps it with the other sessions' chunks of its model
// and batch, and the stream carries on when it is done); without it, short
// recurrent chunks of a session whose measured step cost is small run on
// gRPC's thread.
class StreamInferProtocol final : public StepBatcher::Waiter {
 public:
  using Request = v1::StreamRequest;
  using Response = v1::StreamResponse;
  static constexpr const char* kRpc = "StreamInfer";

  StreamInferProtocol(grpc::CallbackServerContext* context, const ServiceEnv* env)
      : context_(context), env_(env) {}

  // The transport calls End on every path; this only guards the invariant
  // that a finished stream never holds a session or a place in a quota.
  ~StreamInferProtocol() {
    if (env_->batcher != nullptr) env_->batcher->Leave(&slot_);
    if (session_ != nullptr) env_->sessions->Detach(session_->id(), "stream ended");
    if (caller_ != nullptr) env_->auth->LeaveCall(*caller_);
  }

  // Whether `request` is cheap enough to run on a gRPC thread: protocol
  // errors are; an `open` of a new session with a small state is (others
  // may parse a snapshot, or ask the session store); a chunk the step
  // batcher takes is (the batcher decides where its pass runs); any other
  // chunk is when it is short enough to run recurrently and its estimated
  // time (the session's measured cost per step, plus a snapshot's bytes at
  // ~1 ns each) is within kInlineBudgetNs. Without the batcher a session's
  // first chunk goes to the pool: its cost is not known yet.
  bool RunsInline(const v1::StreamRequest& request) const {
    switch (request.kind_case()) {
      case v1::StreamRequest::kOpen:
        return OpensCheaply(request.open());
      case v1::StreamRequest::kChunk:
        break;
      default:
        return true;
    }
    const v1::Tensor& chunk = request.chunk();
    if (session_ == nullptr || chunk.shape_size() != 3) return true;  // an error
    if (Gathered(request)) return true;  // the batcher decides where it runs
    const int64_t steps = chunk.shape(1);
    if (steps >= ssm::Session::kConvChunkThreshold || step_cost_ns_ <= 0) return false;
    const int64_t cost = std::max<int64_t>(steps, 1) * step_cost_ns_ +
                         (request.want_state() ? session_->state_bytes() : 0);
    return cost <= kInlineBudgetNs;
  }

  // One request in, its response filled in (or why the stream must end).
  absl::Status Handle(const v1::StreamRequest& request, absl::Time arrived,
                      v1::StreamResponse* response) {
    switch (request.kind_case()) {
      case v1::StreamRequest::kOpen:
        response->Clear();
        return HandleOpen(request.open(), response);
      case v1::StreamRequest::kChunk:
        return HandleChunk(request, arrived, response);
      default:
        return absl::InvalidArgumentError("a request must carry `open` or `chunk`");
    }
  }

  // A request that may finish later (stream_transport.h): a chunk the step
  // batcher takes; anything else is Handle's.
  RequestStart Start(const v1::StreamRequest& request, absl::Time arrived,
                     v1::StreamResponse* response, absl::Status* status,
                     RequestResumer* resumer) {
    if (request.kind_case() != v1::StreamRequest::kChunk || !Gathered(request)) {
      *status = Handle(request, arrived, response);
      return RequestStart::kDone;
    }
    if (absl::Status s = PrepareChunk(request); !s.ok()) {
      *status = std::move(s);
      return RequestStart::kDone;
    }
    slot_.entry = session_.get();
    slot_.x = x_;
    slot_.y = absl::MakeSpan(y_);
    slot_.steps = static_cast<int>(out_shape_.steps);
    slot_.received = received_;
    slot_.waiter = this;
    arrived_ = arrived;
    response_ = response;
    resumer_ = resumer;
    if (env_->batcher->Submit(&slot_)) {
      *status = FinishChunk();
      return RequestStart::kDone;
    }
    return RequestStart::kPending;  // StepDone comes; touch nothing here
  }

  // The batcher stepped the chunk Start handed it.
  void StepDone() override { resumer_->Resume(FinishChunk()); }

  std::string End(const absl::Status& status, bool clean) {
    if (env_->batcher != nullptr) env_->batcher->Leave(&slot_);
    if (caller_ != nullptr) {
      env_->auth->LeaveCall(*caller_);
      caller_ = nullptr;
    }
    if (session_ == nullptr) return "no session";
    const std::string& id = session_->id();
    std::string tag = absl::StrCat("session ", SessionTag(id));
    if (clean) {
      env_->sessions->Close(id);
    } else {
      env_->sessions->Detach(id, status.ok() ? std::string("stream ended")
                                             : absl::StrCat(absl::StatusCodeToString(status.code()),
                                                            ": ", status.message()));
    }
    session_.reset();
    return tag;
  }

 private:
  absl::Status HandleOpen(const v1::StreamOpen& open, v1::StreamResponse* response) {
    if (session_ != nullptr) {
      // The id is not repeated: the client has it, and messages are logged.
      return absl::InvalidArgumentError(
          "`open` must be the first request and only the first; this stream already has its "
          "session");
    }
    if (env_->Draining()) return DrainingError();
    // The stream's caller: known from its metadata, counted against its
    // quota of calls in flight for as long as the stream is open.
    if (caller_ == nullptr) {
      absl::StatusOr<CallerRef> caller = AuthenticateCall(*env_->auth, *context_);
      if (!caller.ok()) return caller.status();
      if (absl::Status s = env_->auth->EnterCall(**caller); !s.ok()) return s;
      caller_ = *std::move(caller);
    }
    OpenSessionRequest request;
    request.model = open.model();
    request.version = open.version();
    request.batch = open.batch();
    request.session_id = open.session_id();
    request.has_snapshot = open.has_resume_from();
    request.snapshot = open.resume_from().data();
    request.snapshot_model = open.resume_from().model();
    request.snapshot_signature = open.resume_from().signature();
    request.owner = caller_->principal;
    request.may_run = [this](absl::string_view model) {
      return env_->auth->Check(*caller_, Scope::kRun, model);
    };
    // The version of a resumed stream is the snapshot's: the newest whose
    // weights it matches.
    if (request.has_snapshot) request.version = 0;
    request.field_prefix = "open.";
    absl::StatusOr<std::shared_ptr<SessionManager::Entry>> entry =
        OpenSession(request, *env_->catalog, *env_->sessions, env_->limits);
    if (!entry.ok()) return entry.status();
    session_ = *std::move(entry);
    handles_ = env_->metrics->ForModel(session_->model_name());

    v1::StreamOpened* opened = response->mutable_opened();
    opened->set_session_id(session_->id());
    opened->set_model(session_->model_name());
    opened->set_version(session_->version());
    opened->set_batch(session_->batch());
    opened->set_d_input(session_->d_input());
    opened->set_d_output(session_->d_output());
    const int64_t position = session_->position();
    opened->set_position(position);
    opened->set_durable(env_->sessions->options().store != nullptr);
    response->set_position(position);
    response->set_durable_position(session_->durable_position());
    return absl::OkStatus();
  }

  // A new session (no snapshot to parse, no id to look up, no store to
  // ask) whose state is at most kInlineOpenBytes: allocating it costs less
  // than a hop to the pool, and a thousand clients connecting at once must
  // not fill the pool's queue with opens ("server busy").
  bool OpensCheaply(const v1::StreamOpen& open) const {
    if (open.has_resume_from() || !open.session_id().empty() ||
        env_->sessions->options().store != nullptr) {
      return false;
    }
    if (open.batch() < 0 || open.batch() > env_->limits.max_batch) return true;  // refused at once
    absl::StatusOr<ServedModel> served = env_->catalog->Find(open.model(), open.version());
    if (!served.ok()) return true;  // NOT_FOUND at once
    return std::max<int64_t>(open.batch(), 1) * static_cast<int64_t>(served->model->state_bytes()) <=
           kInlineOpenBytes;
  }
  static constexpr int64_t kInlineOpenBytes = 1 << 20;

  // A chunk the step batcher takes: short enough for the recurrent mode,
  // and no state asked for (a snapshot is taken under the session's lock
  // right after the chunk: Handle's path).
  bool Gathered(const v1::StreamRequest& request) const {
    if (env_->batcher == nullptr || session_ == nullptr || request.want_state()) return false;
    const v1::Tensor& chunk = request.chunk();
    return chunk.shape_size() == 3 && chunk.shape(1) >= 1 &&
           chunk.shape(1) < ssm::Session::kConvChunkThreshold;
  }

  // Every check of a chunk before it runs, and its values into x_ (y_ sized
  // for its outputs, out_shape_ and received_ set).
  absl::Status PrepareChunk(const v1::StreamRequest& request) {
    if (session_ == nullptr) {
      return absl::InvalidArgumentError(
          "the first request of a stream must be `open`; got a chunk");
    }
    const v1::Tensor& chunk = request.chunk();
    received_.reset();
    if (request.has_received()) {
      if (request.received() < 0) {
        return absl::InvalidArgumentError(absl::StrCat("received = ", request.received(),
                                                       ": must be >= 0 (the steps of "
                                                       "outputs this client has)"));
      }
      received_ = request.received();
    }
    absl::StatusOr<SequenceShape> out =
        ReadStreamChunk(chunk, request.want_state(), *session_, env_->limits, &x_);
    if (!out.ok()) return out.status();
    out_shape_ = *out;
    y_.resize(out_shape_.size());
    return absl::OkStatus();
  }

  // A gathered chunk's response, from the batcher's result.
  absl::Status FinishChunk() {
    if (!slot_.result.ok()) return slot_.result.status();
    WriteChunkResponse(*slot_.result, response_);
    return absl::OkStatus();
  }

  // The response to a chunk that ran (y_ holds its outputs), into a
  // reused message: the previous output's tensor is overwritten in place,
  // keeping its buffer; any other kind is replaced.
  void WriteChunkResponse(int64_t position, v1::StreamResponse* response) {
    WriteSequenceTensor(y_, out_shape_, response->mutable_output());
    response->set_position(position);
    response->set_durable_position(session_->durable_position());
    response->clear_state();
    handles_.steps->Increment(static_cast<double>(out_shape_.steps));
    handles_.chunk_latency->Observe(absl::ToDoubleSeconds(absl::Now() - arrived_));
  }

  absl::Status HandleChunk(const v1::StreamRequest& request, absl::Time arrived,
                           v1::StreamResponse* response) {
    if (absl::Status s = PrepareChunk(request); !s.ok()) return s;
    const bool want_state = request.want_state();
    arrived_ = arrived;
    SessionSnapshot snapshot;
    const absl::Time run_start = absl::Now();
    absl::StatusOr<int64_t> position =
        session_->Run(x_, static_cast<int>(out_shape_.steps), absl::MakeSpan(y_),
                      want_state ? &snapshot : nullptr, received_);
    if (!position.ok()) return position.status();
    if (out_shape_.steps < ssm::Session::kConvChunkThreshold && !want_state) {
      NoteStepCost(absl::ToInt64Nanoseconds(absl::Now() - run_start) / out_shape_.steps);
    }
    WriteChunkResponse(*position, response);
    if (want_state) WriteStateSnapshot(snapshot, response->mutable_state());
    return absl::OkStatus();
  }

  // A chunk estimated to take longer than this goes to the worker pool.
  static constexpr int64_t kInlineBudgetNs = 250'000;

  // The session's cost of one recurrent step, for RunsInline: quick to
  // follow a faster measurement, slow to follow a slower one, so a step
  // that was merely preempted does not send the stream to the pool for long.
  void NoteStepCost(int64_t ns) {
    if (step_cost_ns_ <= 0 || ns < step_cost_ns_) {
      step_cost_ns_ = std::max<int64_t>(ns, 1);
    } else {
      step_cost_ns_ += (ns - step_cost_ns_) / 8;
    }
  }

  grpc::CallbackServerContext* const context_;
  const ServiceEnv* const env_;
  CallerRef caller_;  // set by `open`; holds a place in the caller's quota
  std::shared_ptr<SessionManager::Entry> session_;
  Metrics::StreamHandles handles_;
  int64_t step_cost_ns_ = 0;  // 0: not measured yet
  // Reused across chunks: a stream of small chunks allocates no buffers.
  std::vector<double> x_;
  std::vector<double> y_;
  // The chunk being run: its shape and what its client has received.
  SequenceShape out_shape_;
  std::optional<int64_t> received_;
  absl::Time arrived_;
  // A gathered chunk's place in the batcher, and where its answer goes.
  StepBatcher::Slot slot_;
  v1::StreamResponse* response_ = nullptr;
  RequestResumer* resumer_ = nullptr;
};

}  // namespace

grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer>* NewStreamCall(
    grpc::CallbackServerContext* context, const ServiceEnv* env) {
  return new PipelinedStream<StreamInferProtocol>(context, env);
}

}  // namespace ssm::server
