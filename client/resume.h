// Resume on UNAVAILABLE (ResumePolicy in ssm_client.h), internal to
// ssm_client_lib: what a stream keeps so that it can reopen its session
// elsewhere and replay, and where a resumed stream starts. Reopening and
// replaying on the call itself are Stream::Rep's OpenRetrying, Recover and
// ReopenOnce (stream_internal.h), defined in resume.cc with these.
//
// The policy lives here whole: how a session is found again after a failure
// (its id on a server with a session store; else its latest snapshot, or a
// fresh session of the same version) is ReopenMessage; which state a stream
// must hold before it starts is ResumeStartingPoint.
#ifndef SSMSERVE_CLIENT_RESUME_H_
#define SSMSERVE_CLIENT_RESUME_H_

#include <cstdint>
#include <deque>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "client/ssm_client.h"
#include "ssm/v1/ssm_service.pb.h"

namespace ssm::client::internal {

// A chunk sent on a stream and not yet answered (or, with resume, answered
// but not yet covered by a snapshot).
struct SentChunk {
  int steps = 0;
  bool want_state = false;    // the caller's
  bool forced_state = false;  // asked for by the resume policy only
  std::vector<float> input;   // kept only with resume
  absl::Time sent;
};

// The latest snapshot of a stream's session, the chunks answered since (to
// replay after a reopen) and when to ask for the next snapshot. Does nothing
// unless policy.enabled. Not thread-safe: the stream's `mu` guards it.
class ResumeLog {
 public:
  explicit ResumeLog(const ResumePolicy& policy) : policy_(policy) {}

  // The stream opened at `position`, from `base` (none: a fresh session);
  // `opened` says whether the server keeps the session durable.
  void Start(std::optional<ssm::v1::StateSnapshot> base, int64_t position,
             const ssm::v1::StreamOpened& opened);
  bool durable() const { return durable_; }

  // Send side, for a chunk of `steps` after `sent` steps: true if it must
  // ask for the state (a checkpoint is due); schedules the next one.
  bool CheckpointDue(int64_t sent, int steps);

  // Reader side: `chunk` was answered, with the state after it when `state`
  // is not null (moved from), and the server's durable position. Resets the
  // failure count.
  void Answered(SentChunk chunk, ssm::v1::StateSnapshot* state, int64_t durable_position);

  // Reader side, after the call failed: false once the policy's
  // max_attempts failures came in a row without an answer (a server that
  // accepts each reopen and fails again must not keep the stream forever).
  bool MayRecover();

  // What a reopen sends, given the previous open's answer: for a durable
  // session its id; else the latest snapshot, or without one a fresh
  // session of the version the outputs came from. And the position the
  // server must answer with (durable: at least; it may have checkpointed
  // further than this client heard).
  ssm::v1::StreamOpen ReopenMessage(const ssm::v1::StreamOpened& last) const;
  int64_t ReopenPosition() const;

  // The chunks answered since the latest snapshot (durable: since the
  // server's durable position), oldest first; the first starts at
  // ReopenPosition().
  const std::deque<SentChunk>& answered() const { return answered_; }

 private:
  const ResumePolicy policy_;
  std::optional<ssm::v1::StateSnapshot> snapshot_;
  bool durable_ = false;
  std::string session_id_;
  int64_t answered_start_ = 0;  // the position answered_ starts at
  std::deque<SentChunk> answered_;
  int64_t next_checkpoint_ = 0;
  int failures_without_progress_ = 0;
};

// The snapshot a stream opened with `options` must start its ResumeLog from:
// none without resume or for a new session; options.resume_from; or for a
// reattached session its state exported now (a starting point that outlives
// the server holding it). The export's error if it fails.
absl::StatusOr<std::optional<ssm::v1::StateSnapshot>> ResumeStartingPoint(
    Client& client, const StreamOptions& options);

}  // namespace ssm::client::internal

#endif  // SSMSERVE_CLIENT_RESUME_H_
