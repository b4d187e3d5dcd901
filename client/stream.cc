// Stream: one StreamInfer call (its open handshake, the writer and reader
// sides, Run, Close and Detach) and Client::OpenStream. What resume adds
// (keeping snapshots, reopening, replaying) is in resume.cc.
#include <algorithm>
#include <atomic>
#include <optional>
#include <thread>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "client/resume.h"
#include "client/stream_internal.h"
#include "client/wire.h"

namespace ssm::client {

absl::Status Stream::Rep::OpenCall(const ssm::v1::StreamOpen& open) {
  {
    // Under mu too: Detach() cancels `context` from any thread.
    absl::MutexLock lock(&mu);
    if (detached) return absl::CancelledError("the stream was detached");
    context = client->NewStreamContext();
    call = client->inference->StreamInfer(context.get());
    finished = false;
  }
  ssm::v1::StreamRequest request;
  *request.mutable_open() = open;
  ssm::v1::StreamResponse response;
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
        absl::StrCat("no answer to the stream's open within ", absl::FormatDuration(limit)));
  }
  // A refused open ends the call with the server's status, which Finish
  // returns; a failed Write shows up the same way.
  if (!ok) return FinishCall();
  if (!response.has_opened()) {
    context->TryCancel();
    FinishCall().IgnoreError();
    return absl::InternalError("the server answered the stream's open without `opened`");
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

Stream::Stream(std::unique_ptr<Rep> rep) : rep_(std::move(rep)) {}

Stream::~Stream() {
  absl::MutexLock write_lock(&rep_->write_mu);
  if (!rep_->finished) {
    rep_->context->TryCancel();
    rep_->FinishCall().IgnoreError();
  }
}

absl::StatusOr<std::unique_ptr<Stream>> Client::OpenStream(const StreamOptions& options) {
  if (!rep_->setup.ok()) return rep_->setup;
  if (options.batch < 1) {
    return absl::InvalidArgumentError(absl::StrCat("batch must be >= 1, got ", options.batch));
  }
  if (options.resume_from.has_value() && !options.session_id.empty()) {
    return absl::InvalidArgumentError("resume_from and session_id are exclusive");
  }
  if (options.resume.enabled && options.resume.checkpoint_steps < 1) {
    return absl::InvalidArgumentError("resume.checkpoint_steps must be >= 1");
  }
  absl::StatusOr<std::optional<ssm::v1::StateSnapshot>> base =
      internal::ResumeStartingPoint(*this, options);
  if (!base.ok()) return base.status();

  auto rep = std::make_unique<Stream::Rep>(rep_.get(), options);
  ssm::v1::StreamOpen open;
  open.set_model(options.model);
  open.set_version(options.version);
  open.set_batch(options.batch);
  if (options.resume_from.has_value()) {
    *open.mutable_resume_from() = *options.resume_from;
  }
  open.set_session_id(options.session_id);
  if (absl::Status s = rep->OpenRetrying(open); !s.ok()) return s;
  {
    absl::MutexLock lock(&rep->mu);
    rep->position = rep->opened.position();
    rep->resume.Start(*std::move(base), rep->position, rep->opened);
    rep->sent_position = rep->position;
  }
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

absl::Status Stream::Send(absl::Span<const float> chunk, int steps, bool want_state) {
  Rep& r = *rep_;
  if (steps < 1) {
    return absl::InvalidArgumentError(absl::StrCat("a chunk needs steps >= 1, got ", steps));
  }
  if (static_cast<int64_t>(chunk.size()) != r.ChunkValues(steps)) {
    absl::MutexLock lock(&r.mu);
    return absl::InvalidArgumentError(
        absl::StrCat("a chunk of ", steps, " steps needs batch ", r.opened.batch(), " x ", steps,
                     " x d_input ", r.opened.d_input(), " values, got ", chunk.size()));
  }
  {
    absl::MutexLock lock(&r.mu);
    auto has_slot = [&r]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(r.mu) {
      return r.max_in_flight <= 0 || static_cast<int>(r.unacked.size()) < r.max_in_flight ||
             r.ended || r.detached;
    };
    r.mu.Await(absl::Condition(&has_slot));
    if (r.ended) {
      return r.end_status.ok() ? absl::FailedPreconditionError("the stream is closed")
                               : r.end_status;
    }
    if (r.writes_done) {
      return absl::FailedPreconditionError("Send() after Close()");
    }
    if (r.detached) return absl::CancelledError("the stream was detached");
  }

  internal::SentChunk pending;
  pending.steps = steps;
  pending.want_state = want_state;
  const ResumePolicy& policy = r.options.resume;
  if (policy.enabled) pending.input.assign(chunk.begin(), chunk.end());

  absl::MutexLock write_lock(&r.write_mu);
  int64_t batch, d_input, received;
  bool ask_state = want_state;
  {
    absl::MutexLock lock(&r.mu);
    batch = r.opened.batch();
    d_input = r.opened.d_input();
    received = r.position;
    if (r.resume.CheckpointDue(r.sent_position, steps)) {
      ask_state = true;
      pending.forced_state = !want_state;
    }
  }
  ssm::v1::StreamRequest request = internal::ChunkRequest(batch, steps, d_input, chunk, ask_state);
  // What this client has: a durable server checkpoints no further, so a
  // failure never costs an output that was in flight.
  request.set_received(received);
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
      return absl::UnavailableError("the stream is broken; Receive() returns the server's status");
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<StreamResult> Stream::Receive() {
  Rep& r = *rep_;
  {
    absl::MutexLock lock(&r.mu);
    auto ready = [&r]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(r.mu) {
      return !r.unacked.empty() || r.writes_done || r.ended || r.detached || r.write_failed;
    };
    r.mu.Await(absl::Condition(&ready));
    if (r.ended) {
      return r.end_status.ok() ? absl::OutOfRangeError("the stream is closed") : r.end_status;
    }
    if (r.unacked.empty() && r.writes_done) {
      return absl::OutOfRangeError("no chunk in flight after Close()");
    }
  }
  while (true) {
    ssm::v1::StreamResponse response;
    if (r.call->Read(&response)) {
      if (!response.has_output()) {
        {
          absl::MutexLock write_lock(&r.write_mu);
          r.context->TryCancel();
          r.FinishCall().IgnoreError();
        }
        absl::Status s = absl::InternalError("the server sent a second `opened`");
        r.End(s);
        return s;
      }
      internal::SentChunk pending;
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
          internal::FromProto(response.output(), batch, pending.steps, d_output);
      if (!output.ok()) {
        r.End(output.status());
        return output.status();
      }
      result.output = *std::move(output);
      const bool got_state = response.has_state();
      if (got_state && pending.want_state) result.state = response.state();
      absl::MutexLock lock(&r.mu);
      r.position = response.position();
      r.resume.Answered(std::move(pending), got_state ? response.mutable_state() : nullptr,
                        response.durable_position());
      return result;
    }
    // The call is over: its status says why.
    absl::Status status;
    {
      absl::MutexLock write_lock(&r.write_mu);
      status = r.FinishCall();
    }
    if (status.ok()) {
      status = absl::InternalError("the server ended the stream with chunks in flight");
    }
    status = r.Recover(status);
    if (!status.ok()) {
      r.End(status);
      return status;
    }
  }
}

absl::StatusOr<StreamResult> Stream::RunChunk(absl::Span<const float> chunk, int steps,
                                              bool want_state) {
  absl::Status sent = Send(chunk, steps, want_state);
  if (sent.code() == absl::StatusCode::kUnavailable) {
    // The call broke: Receive() returns the server's reason.
    absl::StatusOr<StreamResult> why = Receive();
    return why.ok() ? sent : why.status();
  }
  if (!sent.ok()) return sent;
  return Receive();
}

absl::StatusOr<Tensor> Stream::Run(const Tensor& input, int chunk_steps, int in_flight) {
  if (absl::Status s = CheckSequenceTensor(input); !s.ok()) return s;
  const ssm::v1::StreamOpened info = opened();
  const int64_t batch = input.shape[0], length = input.shape[1], d_in = input.shape[2];
  if (batch != info.batch() || d_in != info.d_input()) {
    return absl::InvalidArgumentError(absl::StrCat("input ", internal::ShapeString(input.shape),
                                                   " does not fit the session: batch ",
                                                   info.batch(), ", d_input ", info.d_input()));
  }
  if (chunk_steps < 1 || in_flight < 1) {
    return absl::InvalidArgumentError(absl::StrCat("chunk_steps and in_flight must be >= 1, got ",
                                                   chunk_steps, " and ", in_flight));
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

  Tensor output{{batch, length, d_out}, std::vector<float>(batch * length * d_out)};
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
      return r.end_status.ok() ? absl::FailedPreconditionError("the stream is closed")
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
    ssm::v1::StreamResponse extra;
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
