#include "client/resume.h"

#include <algorithm>
#include <deque>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "client/stream_internal.h"
#include "client/wire.h"

namespace ssm::client {
namespace internal {

void ResumeLog::Start(std::optional<ssm::v1::StateSnapshot> base, int64_t position,
                      const ssm::v1::StreamOpened& opened) {
  durable_ = opened.durable();
  session_id_ = opened.session_id();
  answered_start_ = position;
  // A durable session is found again by its id: no snapshot to keep.
  snapshot_ = durable_ ? std::nullopt : std::move(base);
  next_checkpoint_ = position + policy_.checkpoint_steps;
}

bool ResumeLog::CheckpointDue(int64_t sent, int steps) {
  // The server checkpoints durable sessions itself.
  if (!policy_.enabled || durable_ || sent + steps < next_checkpoint_) return false;
  next_checkpoint_ = sent + steps + policy_.checkpoint_steps;
  return true;
}

void ResumeLog::Answered(SentChunk chunk, ssm::v1::StateSnapshot* state, int64_t durable_position) {
  failures_without_progress_ = 0;
  if (!policy_.enabled) return;
  if (durable_) {
    answered_.push_back(std::move(chunk));
    // What the store has need not be replayed.
    while (!answered_.empty() && answered_start_ + answered_.front().steps <= durable_position) {
      answered_start_ += answered_.front().steps;
      answered_.pop_front();
    }
    return;
  }
  if (state != nullptr) {
    snapshot_ = std::move(*state);
    answered_.clear();
    answered_start_ = snapshot_->position();
  } else {
    answered_.push_back(std::move(chunk));
  }
}

bool ResumeLog::MayRecover() { return ++failures_without_progress_ <= policy_.max_attempts; }

ssm::v1::StreamOpen ResumeLog::ReopenMessage(const ssm::v1::StreamOpened& last) const {
  ssm::v1::StreamOpen open;
  open.set_model(last.model());
  open.set_batch(last.batch());
  if (durable_) {
    open.set_session_id(session_id_);
  } else if (snapshot_.has_value()) {
    *open.mutable_resume_from() = *snapshot_;
  } else {
    open.set_version(last.version());  // pin what the outputs came from
  }
  return open;
}

int64_t ResumeLog::ReopenPosition() const {
  if (durable_) return answered_start_;
  return snapshot_.has_value() ? snapshot_->position() : 0;
}

absl::StatusOr<std::optional<ssm::v1::StateSnapshot>> ResumeStartingPoint(
    Client& client, const StreamOptions& options) {
  if (!options.resume.enabled) return std::nullopt;
  if (options.resume_from.has_value()) return options.resume_from;
  if (options.session_id.empty()) return std::nullopt;
  absl::StatusOr<ssm::v1::StateSnapshot> base = client.ExportState(options.session_id);
  if (!base.ok()) return base.status();
  return *std::move(base);
}

}  // namespace internal

absl::Status Stream::Rep::OpenRetrying(const ssm::v1::StreamOpen& open) {
  absl::Status status;
  {
    absl::MutexLock write_lock(&write_mu);
    status = OpenCall(open);
  }
  const ResumePolicy& policy = options.resume;
  for (int attempt = 0;
       policy.enabled && !status.ok() && status.code() == absl::StatusCode::kUnavailable &&
       attempt < policy.max_attempts;
       ++attempt) {
    absl::SleepFor(policy.backoff * (1 << std::min(attempt, 20)));
    client->channel->WaitForConnected(absl::ToChronoTime(absl::Now() + policy.connect_timeout));
    absl::MutexLock write_lock(&write_mu);
    status = OpenCall(open);
  }
  return status;
}

absl::Status Stream::Rep::ReopenOnce() {
  ssm::v1::StreamOpen open;
  std::deque<internal::SentChunk> replay;
  std::deque<internal::SentChunk> resend;
  int64_t expected_position = 0;
  bool durable = false;
  {
    absl::MutexLock lock(&mu);
    open = resume.ReopenMessage(opened);
    expected_position = resume.ReopenPosition();
    durable = resume.durable();
    replay = resume.answered();
    resend = unacked;
  }
  if (absl::Status s = OpenCall(open); !s.ok()) return s;
  {
    absl::MutexLock lock(&mu);
    // A durable session's store may have more than this client heard of:
    // the answered chunks it already has are not replayed.
    while (durable && !replay.empty() &&
           expected_position + replay.front().steps <= opened.position()) {
      expected_position += replay.front().steps;
      replay.pop_front();
    }
    if (opened.position() != expected_position) {
      context->TryCancel();
      return absl::InternalError(absl::StrCat("resumed at position ", opened.position(),
                                              ", expected ", expected_position));
    }
  }
  // A kept chunk as a request again (its d_input from its size), saying
  // the caller has every output up to where it had read.
  const int64_t batch = open.batch();
  int64_t received;
  {
    absl::MutexLock lock(&mu);
    received = position;
  }
  auto request = [batch, received](const internal::SentChunk& p, bool want_state) {
    ssm::v1::StreamRequest r = internal::ChunkRequest(
        batch, p.steps, static_cast<int64_t>(p.input.size()) / (batch * p.steps), p.input,
        want_state);
    r.set_received(received);
    return r;
  };
  // Chunks already answered: replayed one at a time (a response read per
  // request keeps flow control from stalling a long replay), outputs
  // dropped since the caller has them.
  for (const internal::SentChunk& p : replay) {
    ssm::v1::StreamResponse response;
    if (!call->Write(request(p, false)) || !call->Read(&response)) {
      return FinishCall();
    }
    expected_position += p.steps;
    if (!response.has_output() || response.position() != expected_position) {
      context->TryCancel();
      FinishCall().IgnoreError();
      return absl::InternalError(absl::StrCat("replay: response at position ", response.position(),
                                              ", expected ", expected_position));
    }
  }
  // Chunks in flight: sent again, answered to the caller as usual. A failed
  // Write surfaces at the next Read.
  for (const internal::SentChunk& p : resend) {
    if (!call->Write(request(p, p.want_state || p.forced_state))) break;
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
    if (!resume.MayRecover()) return failure;
  }
  absl::Duration backoff = policy.backoff;
  absl::Status last = failure;
  for (int attempt = 0; attempt < policy.max_attempts; ++attempt) {
    absl::SleepFor(backoff);
    backoff *= 2;
    absl::MutexLock write_lock(&write_mu);
    if (!client->channel->WaitForConnected(
            absl::ToChronoTime(absl::Now() + policy.connect_timeout))) {
      last = absl::UnavailableError(absl::StrCat("resume: no server reachable at ",
                                                 client->options.address, " (", failure.message(),
                                                 ")"));
      continue;
    }
    last = ReopenOnce();
    // A durable session whose dead replica still holds its lease: ask
    // again until the lease has run out (ResumePolicy::lease_wait).
    const absl::Time lease_deadline = absl::Now() + policy.lease_wait;
    while (last.code() == absl::StatusCode::kFailedPrecondition && resume_durable() &&
           absl::Now() < lease_deadline) {
      absl::SleepFor(absl::Milliseconds(200));
      last = ReopenOnce();
    }
    if (last.ok()) {
      absl::MutexLock lock(&mu);
      write_failed = false;
      return absl::OkStatus();
    }
    if (last.code() != absl::StatusCode::kUnavailable) return last;
  }
  return last;
}

}  // namespace ssm::client
