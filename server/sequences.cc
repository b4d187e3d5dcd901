#include "server/sequences.h"

#include <memory>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "server/echo.h"
#include "server/log.h"
#include "server/session_open.h"
#include "ssm/session.h"

namespace ssm::server {

std::string SequenceId::ToString() const {
  if (!is_string) return absl::StrCat(number);
  return absl::StrCat("\"", Echo(text), "\"");
}

SequenceTable::SequenceTable(const ModelCatalog* catalog, SessionManager* sessions,
                             RequestLimits limits)
    : catalog_(catalog), sessions_(sessions), limits_(limits) {}

int SequenceTable::size() const {
  absl::MutexLock lock(&mu_);
  return static_cast<int>(live_.size());
}

std::optional<int64_t> SequenceTable::Position(absl::string_view owner, const ServedModel& served,
                                              const SequenceId& id) const {
  const Key key{std::string(owner), served.name, served.version, id};
  std::string session_id;
  {
    absl::MutexLock lock(&mu_);
    auto it = live_.find(key);
    if (it == live_.end()) return std::nullopt;
    session_id = it->second.session_id;
  }
  absl::StatusOr<std::shared_ptr<SessionManager::Entry>> entry = sessions_->Peek(session_id, owner);
  if (!entry.ok()) return std::nullopt;
  return (*entry)->position();
}

absl::StatusOr<int64_t> SequenceTable::Run(const SequenceRequest& r) {
  if (r.id.empty()) {
    return absl::InvalidArgumentError(
        "a sequence request needs a sequence_id (0 and \"\" mean no sequence)");
  }
  if (r.id.is_string && r.id.text.size() > kMaxSequenceIdBytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("sequence_id is ", r.id.text.size(), " bytes; at most ", kMaxSequenceIdBytes));
  }
  if (r.served == nullptr || r.batch < 1 || r.steps < 1) {
    return absl::InvalidArgumentError("a sequence request needs a model and a chunk");
  }
  const Key key{std::string(r.owner), r.served->name, r.served->version, r.id};
  return r.start ? Start(r, key) : Continue(r, key);
}

absl::StatusOr<int64_t> SequenceTable::Start(const SequenceRequest& r, const Key& key) {
  const ServedModel& served = *r.served;
  if (absl::Status s = CheckBatchLimit(r.batch, r.batch_field, limits_); !s.ok()) return s;
  std::string previous;
  int64_t position = 0;
  if (r.end) {
    // A sequence of one request needs no registered session: nobody will
    // continue it.
    absl::StatusOr<ssm::Session> session = ssm::Session::Create(served.model, r.batch);
    if (!session.ok()) return session.status();
    session->set_output_limit(kMaxWireValue);
    if (absl::Status s = session->Run(r.x, r.steps, r.y); !s.ok()) return s;
    position = session->position();
    absl::MutexLock lock(&mu_);
    if (auto it = live_.find(key); it != live_.end()) {
      previous = std::move(it->second.session_id);
      live_.erase(it);
    }
  } else {
    // The opening policy every protocol shares: limits, quota, owner.
    OpenSessionRequest open;
    open.model = served.name;
    open.version = served.version;
    open.batch = r.batch;
    open.attach = false;   // held detached between requests
    open.sequence = true;  // by this replica: the table naming it is ours
    open.owner = r.owner;
    absl::StatusOr<std::shared_ptr<SessionManager::Entry>> entry =
        OpenSession(open, *catalog_, *sessions_, limits_);
    if (!entry.ok()) return entry.status();
    absl::StatusOr<int64_t> ran = (*entry)->Run(r.x, r.steps, r.y, /*snapshot=*/nullptr);
    if (!ran.ok()) {
      // The previous sequence of this id, if any, goes on untouched.
      sessions_->Close((*entry)->id());
      return ran.status();
    }
    position = *ran;
    absl::MutexLock lock(&mu_);
    Live& live = live_[key];
    previous = std::move(live.session_id);
    live.session_id = (*entry)->id();
    live.batch = r.batch;
    MaybePruneLocked();
  }
  if (!previous.empty()) {
    // Triton's sequence batcher does the same: the old sequence did not end
    // before the new start, so it is ended early.
    sessions_->Close(previous);
    LogfLimited("sequence restarted",
                "sequence %s of model '%s' version %d started again before it ended; the "
                "previous one is closed",
                r.id.ToString(), served.name, served.version);
  }
  return position;
}

absl::StatusOr<int64_t> SequenceTable::Continue(const SequenceRequest& r, const Key& key) {
  Live live;
  {
    absl::MutexLock lock(&mu_);
    auto it = live_.find(key);
    if (it == live_.end()) return NotLive(r);
    live = it->second;
  }
  // Find counts as activity: the idle clock restarts with the request.
  absl::StatusOr<std::shared_ptr<SessionManager::Entry>> entry =
      sessions_->Find(live.session_id, r.owner);
  if (!entry.ok()) {
    // Evicted after --session_ttl without a request.
    ForgetIf(key, live.session_id);
    return NotLive(r);
  }
  if (r.batch != live.batch) {
    return absl::InvalidArgumentError(absl::StrCat(r.batch_field, " = ", r.batch, " but sequence ",
                                                   r.id.ToString(), " started with batch ",
                                                   live.batch));
  }
  absl::StatusOr<int64_t> position = (*entry)->Run(r.x, r.steps, r.y, /*snapshot=*/nullptr);
  if (!position.ok()) return position.status();
  if (r.end) {
    ForgetIf(key, live.session_id);
    sessions_->Close(live.session_id);
  } else {
    // And again once the chunk ran, so a long chunk does not count as idle.
    sessions_->Find(live.session_id, r.owner).IgnoreError();
  }
  return position;
}

absl::Status SequenceTable::NotLive(const SequenceRequest& r) const {
  return absl::InvalidArgumentError(absl::StrCat(
      "sequence ", r.id.ToString(), " of model '", r.served->name, "' version ", r.served->version,
      " is not active (never started, already ended, or idle longer than --session_ttl=",
      absl::FormatDuration(sessions_->options().ttl),
      "): its first request must set sequence_start"));
}

void SequenceTable::ForgetIf(const Key& key, const std::string& session_id) {
  absl::MutexLock lock(&mu_);
  auto it = live_.find(key);
  if (it != live_.end() && it->second.session_id == session_id) live_.erase(it);
}

void SequenceTable::MaybePruneLocked() {
  if (live_.size() < prune_at_) return;
  // Peek evicts an expired session on the spot, so a key whose session it
  // cannot find names nothing any more. Amortized: the next prune waits
  // until the table doubles again.
  std::vector<Key> gone;
  for (const auto& [key, live] : live_) {
    if (!sessions_->Peek(live.session_id, key.owner).ok()) gone.push_back(key);
  }
  for (const Key& key : gone) live_.erase(key);
  prune_at_ = std::max<size_t>(64, 2 * live_.size());
}

}  // namespace ssm::server
