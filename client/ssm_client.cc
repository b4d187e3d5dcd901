#include "client/ssm_client.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <deque>
#include <thread>
#include <utility>

#include <grpcpp/grpcpp.h>

#include "absl/base/thread_annotations.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "ssm/v1/ssm_service.grpc.pb.h"

namespace ssm::client {
namespace {

using ssm::v1::StateSnapshot;
using ssm::v1::StreamRequest;
using ssm::v1::StreamResponse;
using StreamCall = grpc::ClientReaderWriter<StreamRequest, StreamResponse>;

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

void ToProto(const Tensor& t, ssm::v1::Tensor* p) {
  p->mutable_shape()->Add(t.shape.begin(), t.shape.end());
  p->mutable_values()->Add(t.values.begin(), t.values.end());
}

// A tensor the server sent; INTERNAL if it is not [batch, steps, d] with
// the expected sizes (0 = any), since a server that breaks the contract is
// a bug there, not bad input here.
absl::StatusOr<Tensor> FromProto(const ssm::v1::Tensor& p, int64_t batch,
                                 int64_t steps, int64_t features) {
  Tensor t;
  t.shape.assign(p.shape().begin(), p.shape().end());
  t.values.assign(p.values().begin(), p.values().end());
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

std::shared_ptr<grpc::Channel> MakeChannel(const ClientOptions& options) {
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(options.max_message_bytes);
  args.SetMaxSendMessageSize(options.max_message_bytes);
  if (!options.load_balancing.empty()) {
    args.SetLoadBalancingPolicyName(options.load_balancing);
  }
  auto ms = [](absl::Duration d) {
    return static_cast<int>(
        std::clamp<int64_t>(absl::ToInt64Milliseconds(d), 1, 3600 * 1000));
  };
  const int initial = ms(options.reconnect_backoff);
  args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, initial);
  // Not GRPC_ARG_MIN_RECONNECT_BACKOFF_MS: gRPC uses it as the connect
  // timeout, and a short one cuts off handshakes with a busy server.
  args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS,
              std::max(initial, ms(options.max_reconnect_backoff)));
  return grpc::CreateCustomChannel(options.address,
                                   grpc::InsecureChannelCredentials(), args);
}

}  // namespace

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
  if (static_cast<int64_t>(tensor.values.size()) != Product(tensor.shape)) {
    return absl::InvalidArgumentError(
        absl::StrCat("tensor of shape ", ShapeString(tensor.shape), " has ",
                     tensor.values.size(), " values"));
  }
  return absl::OkStatus();
}

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

// ---------------------------------------------------------------------------
// Client

struct Client::Rep {
  ClientOptions options;
  std::shared_ptr<grpc::Channel> channel;
  std::unique_ptr<ssm::v1::Inference::Stub> inference;
  std::unique_ptr<ssm::v1::Math::Stub> math;
  std::unique_ptr<grpc::health::v1::Health::Stub> health;

  Rep(std::shared_ptr<grpc::Channel> ch, const ClientOptions& opts)
      : options(opts),
        channel(std::move(ch)),
        inference(ssm::v1::Inference::NewStub(channel)),
        math(ssm::v1::Math::NewStub(channel)),
        health(grpc::health::v1::Health::NewStub(channel)) {}

  // A unary call's context: the per-call deadline and wait-for-ready.
  void Prepare(grpc::ClientContext* context) const {
    if (options.deadline != absl::InfiniteDuration()) {
      context->set_deadline(absl::ToChronoTime(absl::Now() + options.deadline));
    }
    context->set_wait_for_ready(options.wait_for_ready);
  }
};

Client::Client(const ClientOptions& options)
    : Client(MakeChannel(options), options) {}

Client::Client(std::shared_ptr<grpc::Channel> channel,
               const ClientOptions& options)
    : rep_(std::make_unique<Rep>(std::move(channel), options)) {}

Client::~Client() = default;

const std::shared_ptr<grpc::Channel>& Client::channel() const {
  return rep_->channel;
}

const ClientOptions& Client::options() const { return rep_->options; }

bool Client::WaitForConnected(absl::Duration timeout) {
  return rep_->channel->WaitForConnected(
      absl::ToChronoTime(absl::Now() + timeout));
}

absl::StatusOr<std::vector<ssm::v1::ModelStatus>> Client::ListModels() {
  grpc::ClientContext context;
  rep_->Prepare(&context);
  ssm::v1::ListModelsResponse response;
  grpc::Status s = rep_->inference->ListModels(
      &context, ssm::v1::ListModelsRequest(), &response);
  if (!s.ok()) return StatusFromGrpc(s);
  return std::vector<ssm::v1::ModelStatus>(response.models().begin(),
                                           response.models().end());
}

absl::StatusOr<ssm::v1::GetModelResponse> Client::GetModel(
    const std::string& model, int64_t version) {
  grpc::ClientContext context;
  rep_->Prepare(&context);
  ssm::v1::GetModelRequest request;
  request.set_model(model);
  request.set_version(version);
  ssm::v1::GetModelResponse response;
  grpc::Status s = rep_->inference->GetModel(&context, request, &response);
  if (!s.ok()) return StatusFromGrpc(s);
  return response;
}

absl::StatusOr<InferResult> Client::Infer(const std::string& model,
                                          const Tensor& input, int64_t version,
                                          bool return_state) {
  if (absl::Status s = CheckSequenceTensor(input); !s.ok()) return s;
  ssm::v1::InferRequest request;
  request.set_model(model);
  request.set_version(version);
  request.set_return_state(return_state);
  ToProto(input, request.mutable_input());

  grpc::ClientContext context;
  rep_->Prepare(&context);
  ssm::v1::InferResponse response;
  grpc::Status s = rep_->inference->Infer(&context, request, &response);
  if (!s.ok()) return StatusFromGrpc(s);

  InferResult result;
  result.model = response.model();
  result.version = response.version();
  absl::StatusOr<Tensor> output =
      FromProto(response.output(), input.shape[0], input.shape[1], 0);
  if (!output.ok()) return output.status();
  result.output = *std::move(output);
  if (response.has_state()) result.state = response.state();
  return result;
}

absl::StatusOr<ssm::v1::StateSnapshot> Client::ExportState(
    const std::string& session_id) {
  grpc::ClientContext context;
  rep_->Prepare(&context);
  ssm::v1::ExportStateRequest request;
  request.set_session_id(session_id);
  ssm::v1::ExportStateResponse response;
  grpc::Status s = rep_->inference->ExportState(&context, request, &response);
  if (!s.ok()) return StatusFromGrpc(s);
  return response.state();
}

absl::StatusOr<Client::Imported> Client::ImportState(
    const ssm::v1::StateSnapshot& snapshot, const std::string& model,
    int64_t version) {
  grpc::ClientContext context;
  rep_->Prepare(&context);
  ssm::v1::ImportStateRequest request;
  *request.mutable_state() = snapshot;
  request.set_model(model);
  request.set_version(version);
  ssm::v1::ImportStateResponse response;
  grpc::Status s = rep_->inference->ImportState(&context, request, &response);
  if (!s.ok()) return StatusFromGrpc(s);
  return Imported{response.session_id(), response.position()};
}

absl::StatusOr<ssm::v1::BuildHippoResponse> Client::BuildHippo(
    const ssm::v1::BuildHippoRequest& request) {
  grpc::ClientContext context;
  rep_->Prepare(&context);
  ssm::v1::BuildHippoResponse response;
  grpc::Status s = rep_->math->BuildHippo(&context, request, &response);
  if (!s.ok()) return StatusFromGrpc(s);
  return response;
}

absl::StatusOr<ssm::v1::ComputeKernelResponse> Client::ComputeKernel(
    const ssm::v1::ComputeKernelRequest& request) {
  grpc::ClientContext context;
  rep_->Prepare(&context);
  ssm::v1::ComputeKernelResponse response;
  grpc::Status s = rep_->math->ComputeKernel(&context, request, &response);
  if (!s.ok()) return StatusFromGrpc(s);
  return response;
}

absl::StatusOr<Client::ServingStatus> Client::Health(
    const std::string& service) {
  grpc::ClientContext context;
  rep_->Prepare(&context);
  grpc::health::v1::HealthCheckRequest request;
  request.set_service(service);
  grpc::health::v1::HealthCheckResponse response;
  grpc::Status s = rep_->health->Check(&context, request, &response);
  if (!s.ok()) return StatusFromGrpc(s);
  switch (response.status()) {
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

// ---------------------------------------------------------------------------
// Stream
//
// Two locks. `write_mu` serializes everything that writes to or replaces
// the call (Send's Write, WritesDone, Finish, reopening); `mu` guards the
// bookkeeping both sides read. Lock order: write_mu, then mu. Only the
// reader side (Receive) ever replaces the call, so it can Read without a
// lock while a Send writes (gRPC allows one Read concurrent with one Write).

struct Stream::Rep {
  // A chunk sent and not yet covered by a snapshot.
  struct Pending {
    int steps = 0;
    bool want_state = false;  // the caller's
    bool forced_state = false;  // asked for by the resume policy only
    std::vector<float> input;   // kept only with resume
    absl::Time sent;
  };

  Client::Rep* client = nullptr;
  StreamOptions options;

  absl::Mutex write_mu ABSL_ACQUIRED_BEFORE(mu);
  // Replaced under write_mu and mu, by the reader side only.
  std::unique_ptr<grpc::ClientContext> context;
  std::unique_ptr<StreamCall> call;
  bool finished = true;  // Finish() was called on `call` (write_mu)
  int64_t sent_position = 0;    // steps sent (write_mu)
  int64_t next_checkpoint = 0;  // resume: ask for the state here (write_mu)

  mutable absl::Mutex mu;
  ssm::v1::StreamOpened opened ABSL_GUARDED_BY(mu);
  int max_in_flight ABSL_GUARDED_BY(mu) = 0;
  std::deque<Pending> unacked ABSL_GUARDED_BY(mu);
  // Resume: chunks answered since `snapshot`, for replay.
  std::vector<Pending> answered ABSL_GUARDED_BY(mu);
  // Resume: where a reopen starts (none: a fresh session).
  std::optional<StateSnapshot> snapshot ABSL_GUARDED_BY(mu);
  int64_t position ABSL_GUARDED_BY(mu) = 0;
  bool write_failed ABSL_GUARDED_BY(mu) = false;
  bool writes_done ABSL_GUARDED_BY(mu) = false;
  bool detached ABSL_GUARDED_BY(mu) = false;
  bool ended ABSL_GUARDED_BY(mu) = false;
  absl::Status end_status ABSL_GUARDED_BY(mu);
  int failures_without_progress = 0;  // reader side only

  // Starts a new call and completes the open handshake. Caller holds
  // write_mu and is the reader side.
  absl::Status OpenCall(const ssm::v1::StreamOpen& open)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(write_mu);
  // Ends the current call and returns its status (write_mu held).
  absl::Status FinishCall() ABSL_EXCLUSIVE_LOCKS_REQUIRED(write_mu);
  // After the call failed with `failure`: reopen and replay if the resume
  // policy allows, else return `failure`. Reader side.
  absl::Status Recover(absl::Status failure) ABSL_LOCKS_EXCLUDED(write_mu, mu);
  absl::Status ReopenOnce() ABSL_EXCLUSIVE_LOCKS_REQUIRED(write_mu);
  // A kept chunk (resume) as a request again.
  static StreamRequest ReplayRequest(const Pending& p, int batch,
                                     bool want_state);
  void End(absl::Status status) ABSL_LOCKS_EXCLUDED(mu);
  int64_t ChunkValues(int steps) const ABSL_LOCKS_EXCLUDED(mu);
};

absl::Status Stream::Rep::OpenCall(const ssm::v1::StreamOpen& open) {
  {
    // Under mu too: Detach() cancels `context` from any thread.
    absl::MutexLock lock(&mu);
    if (detached) return absl::CancelledError("the stream was detached");
    context = std::make_unique<grpc::ClientContext>();
    call = client->inference->StreamInfer(context.get());
    finished = false;
  }
  StreamRequest request;
  *request.mutable_open() = open;
  StreamResponse response;
  // The stream itself has no deadline (it may run for days), so the
  // handshake gets a watchdog: no answer within the unary deadline cancels
  // the call.
  const absl::Duration limit = client->options.deadline;
  absl::Notification answered;
  std::atomic<bool> timed_out{false};
  grpc::ClientContext* const ctx = context.get();
  std::thread watchdog;
  if (limit != absl::InfiniteDuration()) {
    watchdog = std::thread([&answered, &timed_out, ctx, limit] {
      if (!answered.WaitForNotificationWithTimeout(limit)) {
        timed_out = true;
        ctx->TryCancel();
      }
    });
  }
  const bool ok = call->Write(request) && call->Read(&response);
  answered.Notify();
  if (watchdog.joinable()) watchdog.join();
  if (timed_out) {
    FinishCall().IgnoreError();
    return absl::DeadlineExceededError(
        absl::StrCat("no answer to the stream's open within ",
                     absl::FormatDuration(limit)));
  }
  // A refused open ends the call with the server's status, which Finish
  // returns; a failed Write shows up the same way.
  if (!ok) return FinishCall();
  if (!response.has_opened()) {
    context->TryCancel();
    FinishCall().IgnoreError();
    return absl::InternalError(
        "the server answered the stream's open without `opened`");
  }
  absl::MutexLock lock(&mu);
  opened = response.opened();
  return absl::OkStatus();
}

absl::Status Stream::Rep::FinishCall() {
  if (finished) return absl::FailedPreconditionError("the call has ended");
  finished = true;
  return StatusFromGrpc(call->Finish());
}

void Stream::Rep::End(absl::Status status) {
  absl::MutexLock lock(&mu);
  if (ended) return;
  ended = true;
  end_status = std::move(status);
}

int64_t Stream::Rep::ChunkValues(int steps) const {
  absl::MutexLock lock(&mu);
  return int64_t{opened.batch()} * steps * opened.d_input();
}

StreamRequest Stream::Rep::ReplayRequest(const Pending& p, int batch,
                                         bool want_state) {
  StreamRequest request;
  ssm::v1::Tensor* chunk = request.mutable_chunk();
  chunk->add_shape(batch);
  chunk->add_shape(p.steps);
  chunk->add_shape(static_cast<int64_t>(p.input.size()) /
                   (int64_t{batch} * p.steps));
  chunk->mutable_values()->Add(p.input.begin(), p.input.end());
  request.set_want_state(want_state);
  return request;
}

absl::Status Stream::Rep::ReopenOnce() {
  ssm::v1::StreamOpen open;
  std::vector<Pending> replay;
  std::deque<Pending> resend;
  int64_t expected_position = 0;
  {
    absl::MutexLock lock(&mu);
    open.set_model(opened.model());
    open.set_batch(opened.batch());
    if (snapshot.has_value()) {
      *open.mutable_resume_from() = *snapshot;
      expected_position = snapshot->position();
    } else {
      open.set_version(opened.version());  // pin what the outputs came from
    }
    replay = answered;
    resend = unacked;
  }
  if (absl::Status s = OpenCall(open); !s.ok()) return s;
  {
    absl::MutexLock lock(&mu);
    if (opened.position() != expected_position) {
      context->TryCancel();
      return absl::InternalError(absl::StrCat(
          "resumed at position ", opened.position(), ", expected ",
          expected_position));
    }
  }
  // Chunks already answered: replayed one at a time (a response read per
  // request keeps flow control from stalling a long replay), outputs
  // dropped since the caller has them.
  for (const Pending& p : replay) {
    const StreamRequest request = ReplayRequest(p, open.batch(), false);
    StreamResponse response;
    if (!call->Write(request) || !call->Read(&response)) return FinishCall();
    expected_position += p.steps;
    if (!response.has_output() || response.position() != expected_position) {
      context->TryCancel();
      FinishCall().IgnoreError();
      return absl::InternalError(absl::StrCat(
          "replay: response at position ", response.position(), ", expected ",
          expected_position));
    }
  }
  // Chunks in flight: sent again, answered to the caller as usual. A failed
  // Write surfaces at the next Read.
  for (const Pending& p : resend) {
    if (!call->Write(
            ReplayRequest(p, open.batch(), p.want_state || p.forced_state))) {
      break;
    }
  }
  return absl::OkStatus();
}

absl::Status Stream::Rep::Recover(absl::Status failure) {
  const ResumePolicy& policy = options.resume;
  {
    absl::MutexLock lock(&mu);
    if (!policy.enabled || detached || writes_done ||
        failure.code() != absl::StatusCode::kUnavailable) {
      return failure;
    }
  }
  // A server that accepts the reopen and fails again before answering
  // anything must not keep us here forever.
  if (++failures_without_progress > policy.max_attempts) return failure;
  absl::Duration backoff = policy.backoff;
  absl::Status last = failure;
  for (int attempt = 0; attempt < policy.max_attempts; ++attempt) {
    absl::SleepFor(backoff);
    backoff *= 2;
    absl::MutexLock write_lock(&write_mu);
    if (!client->channel->WaitForConnected(
            absl::ToChronoTime(absl::Now() + policy.connect_timeout))) {
      last = absl::UnavailableError(
          absl::StrCat("resume: no server reachable at ",
                       client->options.address, " (", failure.message(), ")"));
      continue;
    }
    last = ReopenOnce();
    if (last.ok()) {
      absl::MutexLock lock(&mu);
      write_failed = false;
      return absl::OkStatus();
    }
    if (last.code() != absl::StatusCode::kUnavailable) return last;
  }
  return last;
}

Stream::Stream(std::unique_ptr<Rep> rep) : rep_(std::move(rep)) {}

Stream::~Stream() {
  absl::MutexLock write_lock(&rep_->write_mu);
  if (!rep_->finished) {
    rep_->context->TryCancel();
    rep_->FinishCall().IgnoreError();
  }
}

absl::StatusOr<std::unique_ptr<Stream>> Client::OpenStream(
    const StreamOptions& options) {
  if (options.batch < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("batch must be >= 1, got ", options.batch));
  }
  if (options.resume_from.has_value() && !options.session_id.empty()) {
    return absl::InvalidArgumentError(
        "resume_from and session_id are exclusive");
  }
  if (options.resume.enabled && options.resume.checkpoint_steps < 1) {
    return absl::InvalidArgumentError("resume.checkpoint_steps must be >= 1");
  }
  auto rep = std::make_unique<Stream::Rep>();
  rep->client = rep_.get();
  rep->options = options;
  rep->max_in_flight = options.max_in_flight;

  ssm::v1::StreamOpen open;
  open.set_model(options.model);
  open.set_version(options.version);
  open.set_batch(options.batch);
  if (options.resume_from.has_value()) {
    *open.mutable_resume_from() = *options.resume_from;
  }
  open.set_session_id(options.session_id);
  if (options.resume.enabled) {
    // Resuming needs a starting point that outlives this server: the given
    // snapshot, or the reattached session's state taken before attaching.
    absl::MutexLock lock(&rep->mu);
    if (options.resume_from.has_value()) {
      rep->snapshot = options.resume_from;
    } else if (!options.session_id.empty()) {
      absl::StatusOr<StateSnapshot> base = ExportState(options.session_id);
      if (!base.ok()) return base.status();
      rep->snapshot = *std::move(base);
    }
  }

  absl::Status status;
  {
    absl::MutexLock write_lock(&rep->write_mu);
    status = rep->OpenCall(open);
  }
  // With resume on, a draining or unreachable server is retried like a
  // broken stream would be.
  for (int attempt = 0; options.resume.enabled && !status.ok() &&
                        status.code() == absl::StatusCode::kUnavailable &&
                        attempt < options.resume.max_attempts;
       ++attempt) {
    absl::SleepFor(options.resume.backoff * (1 << std::min(attempt, 20)));
    WaitForConnected(options.resume.connect_timeout);
    absl::MutexLock write_lock(&rep->write_mu);
    status = rep->OpenCall(open);
  }
  if (!status.ok()) return status;
  {
    absl::MutexLock lock(&rep->mu);
    rep->position = rep->opened.position();
  }
  rep->sent_position = rep->position;
  rep->next_checkpoint = rep->position + options.resume.checkpoint_steps;
  return std::unique_ptr<Stream>(new Stream(std::move(rep)));
}

ssm::v1::StreamOpened Stream::opened() const {
  absl::MutexLock lock(&rep_->mu);
  return rep_->opened;
}

std::string Stream::session_id() const {
  absl::MutexLock lock(&rep_->mu);
  return rep_->opened.session_id();
}

int64_t Stream::position() const {
  absl::MutexLock lock(&rep_->mu);
  return rep_->position;
}

int Stream::in_flight() const {
  absl::MutexLock lock(&rep_->mu);
  return static_cast<int>(rep_->unacked.size());
}

absl::Status Stream::Send(absl::Span<const float> chunk, int steps,
                          bool want_state) {
  Rep& r = *rep_;
  if (steps < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("a chunk needs steps >= 1, got ", steps));
  }
  if (static_cast<int64_t>(chunk.size()) != r.ChunkValues(steps)) {
    absl::MutexLock lock(&r.mu);
    return absl::InvalidArgumentError(absl::StrCat(
        "a chunk of ", steps, " steps needs batch ", r.opened.batch(), " x ",
        steps, " x d_input ", r.opened.d_input(), " values, got ",
        chunk.size()));
  }
  {
    absl::MutexLock lock(&r.mu);
    auto has_slot = [&r]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(r.mu) {
      return r.max_in_flight <= 0 ||
             static_cast<int>(r.unacked.size()) < r.max_in_flight ||
             r.ended || r.detached;
    };
    r.mu.Await(absl::Condition(&has_slot));
    if (r.ended) {
      return r.end_status.ok()
                 ? absl::FailedPreconditionError("the stream is closed")
                 : r.end_status;
    }
    if (r.writes_done) {
      return absl::FailedPreconditionError("Send() after Close()");
    }
    if (r.detached) return absl::CancelledError("the stream was detached");
  }

  StreamRequest request;
  ssm::v1::Tensor* tensor = request.mutable_chunk();
  Rep::Pending pending;
  pending.steps = steps;
  pending.want_state = want_state;

  absl::MutexLock write_lock(&r.write_mu);
  {
    absl::MutexLock lock(&r.mu);
    tensor->add_shape(r.opened.batch());
    tensor->add_shape(steps);
    tensor->add_shape(r.opened.d_input());
  }
  tensor->mutable_values()->Add(chunk.begin(), chunk.end());
  const ResumePolicy& policy = r.options.resume;
  bool ask_state = want_state;
  if (policy.enabled) {
    pending.input.assign(chunk.begin(), chunk.end());
    if (r.sent_position + steps >= r.next_checkpoint) {
      ask_state = true;
      pending.forced_state = !want_state;
      r.next_checkpoint = r.sent_position + steps + policy.checkpoint_steps;
    }
  }
  request.set_want_state(ask_state);
  r.sent_position += steps;
  pending.sent = absl::Now();
  {
    absl::MutexLock lock(&r.mu);
    r.unacked.push_back(std::move(pending));
  }
  if (!r.call->Write(request)) {
    // The call is over. Receive() learns why (and, with resume, reopens
    // and sends this chunk again).
    absl::MutexLock lock(&r.mu);
    r.write_failed = true;
    if (!policy.enabled) {
      return absl::UnavailableError(
          "the stream is broken; Receive() returns the server's status");
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<StreamResult> Stream::Receive() {
  Rep& r = *rep_;
  {
    absl::MutexLock lock(&r.mu);
    auto ready = [&r]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(r.mu) {
      return !r.unacked.empty() || r.writes_done || r.ended || r.detached ||
             r.write_failed;
    };
    r.mu.Await(absl::Condition(&ready));
    if (r.ended) {
      return r.end_status.ok() ? absl::OutOfRangeError("the stream is closed")
                               : r.end_status;
    }
    if (r.unacked.empty() && r.writes_done) {
      return absl::OutOfRangeError("no chunk in flight after Close()");
    }
  }
  while (true) {
    StreamResponse response;
    if (r.call->Read(&response)) {
      if (!response.has_output()) {
        {
          absl::MutexLock write_lock(&r.write_mu);
          r.context->TryCancel();
          r.FinishCall().IgnoreError();
        }
        absl::Status s =
            absl::InternalError("the server sent a second `opened`");
        r.End(s);
        return s;
      }
      Rep::Pending pending;
      int64_t batch, d_output;
      {
        absl::MutexLock lock(&r.mu);
        if (r.unacked.empty()) {
          // Cannot happen: the server answers each chunk exactly once.
          absl::Status s = absl::InternalError("a response for no chunk");
          r.ended = true;
          r.end_status = s;
          return s;
        }
        pending = std::move(r.unacked.front());
        r.unacked.pop_front();
        batch = r.opened.batch();
        d_output = r.opened.d_output();
      }
      StreamResult result;
      result.round_trip = absl::Now() - pending.sent;
      result.position = response.position();
      absl::StatusOr<Tensor> output =
          FromProto(response.output(), batch, pending.steps, d_output);
      if (!output.ok()) {
        r.End(output.status());
        return output.status();
      }
      result.output = *std::move(output);
      const bool got_state = response.has_state();
      if (got_state && pending.want_state) result.state = response.state();
      r.failures_without_progress = 0;
      absl::MutexLock lock(&r.mu);
      r.position = response.position();
      if (r.options.resume.enabled) {
        if (got_state) {
          r.snapshot = std::move(*response.mutable_state());
          r.answered.clear();
        } else {
          r.answered.push_back(std::move(pending));
        }
      }
      return result;
    }
    // The call is over: its status says why.
    absl::Status status;
    {
      absl::MutexLock write_lock(&r.write_mu);
      status = r.FinishCall();
    }
    if (status.ok()) {
      status = absl::InternalError(
          "the server ended the stream with chunks in flight");
    }
    status = r.Recover(status);
    if (!status.ok()) {
      r.End(status);
      return status;
    }
  }
}

absl::StatusOr<StreamResult> Stream::RunChunk(absl::Span<const float> chunk,
                                              int steps, bool want_state) {
  absl::Status sent = Send(chunk, steps, want_state);
  if (sent.code() == absl::StatusCode::kUnavailable) {
    // The call broke: Receive() returns the server's reason.
    absl::StatusOr<StreamResult> why = Receive();
    return why.ok() ? sent : why.status();
  }
  if (!sent.ok()) return sent;
  return Receive();
}

absl::StatusOr<Tensor> Stream::Run(const Tensor& input, int chunk_steps,
                                   int in_flight) {
  if (absl::Status s = CheckSequenceTensor(input); !s.ok()) return s;
  const ssm::v1::StreamOpened info = opened();
  const int64_t batch = input.shape[0], length = input.shape[1],
                d_in = input.shape[2];
  if (batch != info.batch() || d_in != info.d_input()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "input ", ShapeString(input.shape), " does not fit the session: batch ",
        info.batch(), ", d_input ", info.d_input()));
  }
  if (chunk_steps < 1 || in_flight < 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "chunk_steps and in_flight must be >= 1, got ", chunk_steps, " and ",
        in_flight));
  }
  if (this->in_flight() != 0) {
    return absl::FailedPreconditionError("Run() with chunks already in flight");
  }
  int saved_limit;
  {
    absl::MutexLock lock(&rep_->mu);
    saved_limit = rep_->max_in_flight;
    rep_->max_in_flight = in_flight;
  }
  const int64_t d_out = info.d_output();
  const int64_t n_chunks = (length + chunk_steps - 1) / chunk_steps;

  // The writer gathers each chunk [batch, T, d_in] out of [batch, L, d_in].
  absl::Status write_status;
  std::thread writer([&] {
    std::vector<float> chunk;
    for (int64_t t0 = 0; t0 < length; t0 += chunk_steps) {
      const int64_t t = std::min<int64_t>(chunk_steps, length - t0);
      chunk.resize(batch * t * d_in);
      for (int64_t b = 0; b < batch; ++b) {
        std::copy_n(input.values.begin() + (b * length + t0) * d_in, t * d_in,
                    chunk.begin() + b * t * d_in);
      }
      write_status = Send(chunk, static_cast<int>(t));
      if (!write_status.ok()) return;
    }
  });

  Tensor output{{batch, length, d_out},
                std::vector<float>(batch * length * d_out)};
  absl::Status read_status;
  int64_t t0 = 0;
  for (int64_t i = 0; i < n_chunks; ++i) {
    absl::StatusOr<StreamResult> r = Receive();
    if (!r.ok()) {
      read_status = r.status();
      // Unblock a writer waiting for a slot that will never free.
      {
        absl::MutexLock lock(&rep_->mu);
        if (!rep_->ended) {
          rep_->ended = true;
          rep_->end_status = read_status;
        }
      }
      break;
    }
    const int64_t t = r->output.shape[1];
    for (int64_t b = 0; b < batch; ++b) {
      std::copy_n(r->output.values.begin() + b * t * d_out, t * d_out,
                  output.values.begin() + (b * length + t0) * d_out);
    }
    t0 += t;
  }
  writer.join();
  {
    absl::MutexLock lock(&rep_->mu);
    rep_->max_in_flight = saved_limit;
  }
  if (!read_status.ok()) return read_status;
  if (!write_status.ok()) return write_status;
  return output;
}

absl::Status Stream::Close() {
  Rep& r = *rep_;
  {
    absl::MutexLock lock(&r.mu);
    if (r.ended) {
      return r.end_status.ok()
                 ? absl::FailedPreconditionError("the stream is closed")
                 : r.end_status;
    }
    if (!r.unacked.empty()) {
      return absl::FailedPreconditionError(
          absl::StrCat(r.unacked.size(), " chunk(s) still in flight"));
    }
    r.writes_done = true;
  }
  absl::Status status;
  {
    absl::MutexLock write_lock(&r.write_mu);
    r.call->WritesDone();
    StreamResponse extra;
    bool unexpected = false;
    while (r.call->Read(&extra)) unexpected = true;
    status = r.FinishCall();
    if (status.ok() && unexpected) {
      status = absl::InternalError("a response after Close()");
    }
  }
  r.End(status);
  return status;
}

void Stream::Detach() {
  absl::MutexLock lock(&rep_->mu);
  rep_->detached = true;
  // TryCancel is thread-safe; whoever is blocked in Read/Write returns and
  // Receive() or the destructor collects the call's status.
  if (rep_->context != nullptr) rep_->context->TryCancel();
}

}  // namespace ssm::client
