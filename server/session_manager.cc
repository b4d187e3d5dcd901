#include "server/session_manager.h"

#include <random>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "server/echo.h"
#include "server/log.h"
#include "server/snapshot_keys.h"

namespace ssm::server {
namespace {

const char* OriginText(SessionManager::Origin origin) {
  switch (origin) {
    case SessionManager::Origin::kNew:
      return "opened";
    case SessionManager::Origin::kResumed:
      return "opened from a snapshot";
    case SessionManager::Origin::kImported:
      return "imported (detached)";
  }
  return "opened";
}

}  // namespace

std::string NewSessionId() {
  // std::random_device reads the OS's entropy source on Linux (getrandom or
  // /dev/urandom): ids are unguessable, and a session id is all it takes to
  // reattach or export a session.
  std::random_device device;
  uint32_t words[4];
  for (uint32_t& w : words) w = device();
  return absl::StrFormat("%08x%08x%08x%08x", words[0], words[1], words[2], words[3]);
}

SessionSnapshot SnapshotOf(const ssm::Session& session, std::string model_name, int64_t version,
                           const SnapshotSigner* signer) {
  SessionSnapshot out;
  out.data = session.ExportState();
  if (signer != nullptr) out.signature = signer->Sign(out.data);
  out.model = std::move(model_name);
  out.version = version;
  out.fingerprint = session.model().fingerprint();
  out.position = session.position();
  out.batch = session.batch();
  return out;
}

SessionManager::Entry::Entry(std::string id, std::string owner, std::string model_name,
                             int64_t version, ssm::Session session, const SnapshotSigner* signer)
    : id_(std::move(id)),
      owner_(std::move(owner)),
      model_name_(std::move(model_name)),
      version_(version),
      batch_(session.batch()),
      d_input_(session.model().d_input()),
      d_output_(session.model().d_output()),
      state_bytes_(static_cast<int64_t>(session.state_bytes())),
      signer_(signer),
      session_(std::move(session)) {}

int64_t SessionManager::Entry::position() const {
  absl::MutexLock lock(&mu_);
  return session_.position();
}

absl::StatusOr<int64_t> SessionManager::Entry::Run(absl::Span<const double> x, int steps,
                                                   absl::Span<double> y,
                                                   SessionSnapshot* snapshot) {
  absl::MutexLock lock(&mu_);
  if (absl::Status status = session_.Run(x, steps, y); !status.ok()) return status;
  if (snapshot != nullptr) *snapshot = ExportLocked();
  return session_.position();
}

SessionSnapshot SessionManager::Entry::Export() const {
  absl::MutexLock lock(&mu_);
  return ExportLocked();
}

SessionSnapshot SessionManager::Entry::ExportLocked() const {
  return SnapshotOf(session_, model_name_, version_, signer_);
}

SessionManager::SessionManager(Options options) : options_(std::move(options)) {}

absl::StatusOr<std::shared_ptr<SessionManager::Entry>> SessionManager::Add(
    std::string model_name, int64_t version, ssm::Session session, bool attached, Origin origin,
    std::string owner) {
  const int batch = session.batch();
  const int64_t position = session.position();
  absl::MutexLock lock(&mu_);
  const absl::Time now = options_.clock();
  if (static_cast<int>(sessions_.size()) >= options_.max_sessions) {
    // Expired sessions do not count against the limit; sweep them first.
    for (auto it = sessions_.begin(); it != sessions_.end();) {
      auto next = std::next(it);
      if (ExpiredLocked(it->second, now)) EvictLocked(it, now);
      it = next;
    }
  }
  if (static_cast<int>(sessions_.size()) >= options_.max_sessions) {
    return absl::ResourceExhaustedError(
        absl::StrCat("too many sessions: the server holds --max_sessions=", options_.max_sessions,
                     " (attached and detached); end or let detached ones expire (--session_ttl=",
                     absl::FormatDuration(options_.ttl), ")"));
  }
  const int quota = options_.quota_sessions;
  if (quota > 0) {
    auto held = per_owner_.find(owner);
    if (held != per_owner_.end() && held->second >= quota) {
      return absl::ResourceExhaustedError(
          absl::StrCat("caller '", owner, "' already holds --quota_sessions=", quota,
                       " sessions (attached and detached); end some or let detached ones expire"));
    }
  }
  std::string id = NewSessionId();
  while (sessions_.contains(id)) id = NewSessionId();  // 2^-128: for form's sake
  auto entry = std::make_shared<Entry>(id, std::move(owner), std::move(model_name), version,
                                       std::move(session), options_.signer);
  sessions_.emplace(id, Slot{entry, attached, now});
  ++per_owner_[entry->owner()];
  if (attached) ++attached_;
  state_bytes_ += entry->state_bytes();
  LogfLimited("session opened", "session %s %s: model '%s' version %d, batch %d, position %d",
              SessionTag(id), OriginText(origin), entry->model_name(), version, batch, position);
  return entry;
}

absl::StatusOr<std::shared_ptr<SessionManager::Entry>> SessionManager::Reattach(
    absl::string_view id, absl::string_view model, int batch, absl::string_view owner) {
  absl::MutexLock lock(&mu_);
  auto it = LookupLocked(id, owner, options_.clock());
  if (it == sessions_.end()) {
    return UnknownSession(id);
  }
  if (it->second.attached) {
    return absl::FailedPreconditionError(
        absl::StrCat("session ", SessionTag(id),
                     " is attached to another stream; a session has one stream at a time"));
  }
  const Entry& entry = *it->second.entry;
  if (!model.empty() && model != entry.model_name()) {
    return absl::FailedPreconditionError(absl::StrCat("session ", SessionTag(id), " runs model '",
                                                      entry.model_name(), "', not '", Echo(model),
                                                      "'"));
  }
  if (batch != 0 && batch != entry.batch()) {
    return absl::InvalidArgumentError(absl::StrCat("open.batch = ", batch, " but session ",
                                                   SessionTag(id), " has batch ", entry.batch()));
  }
  it->second.attached = true;
  ++attached_;
  LogfLimited("session reattached", "session %s reattached", SessionTag(it->first));
  return it->second.entry;
}

absl::StatusOr<std::shared_ptr<SessionManager::Entry>> SessionManager::Find(
    absl::string_view id, absl::string_view owner) {
  absl::MutexLock lock(&mu_);
  const absl::Time now = options_.clock();
  auto it = LookupLocked(id, owner, now);
  if (it == sessions_.end()) {
    return UnknownSession(id);
  }
  it->second.last_activity = now;
  return it->second.entry;
}

absl::StatusOr<std::shared_ptr<SessionManager::Entry>> SessionManager::Peek(
    absl::string_view id, absl::string_view owner) {
  absl::MutexLock lock(&mu_);
  auto it = LookupLocked(id, owner, options_.clock());
  if (it == sessions_.end()) return UnknownSession(id);
  return it->second.entry;
}

void SessionManager::Detach(absl::string_view id, absl::string_view why) {
  absl::MutexLock lock(&mu_);
  auto it = sessions_.find(id);
  if (it == sessions_.end() || !it->second.attached) return;
  it->second.attached = false;
  it->second.last_activity = options_.clock();
  --attached_;
  LogfLimited("session detached", "session %s detached (%s); kept for %s", SessionTag(it->first),
              why, absl::FormatDuration(options_.ttl));
}

void SessionManager::Close(absl::string_view id) {
  absl::MutexLock lock(&mu_);
  auto it = sessions_.find(id);
  if (it == sessions_.end()) return;
  LogfLimited("session closed", "session %s closed", SessionTag(it->first));
  EraseLocked(it);
}

int SessionManager::EvictExpired() {
  absl::MutexLock lock(&mu_);
  const absl::Time now = options_.clock();
  int evicted = 0;
  for (auto it = sessions_.begin(); it != sessions_.end();) {
    auto next = std::next(it);
    if (ExpiredLocked(it->second, now)) {
      EvictLocked(it, now);
      ++evicted;
    }
    it = next;
  }
  return evicted;
}

SessionManager::Stats SessionManager::GetStats() const {
  absl::MutexLock lock(&mu_);
  Stats stats;
  stats.attached = attached_;
  stats.detached = static_cast<int>(sessions_.size()) - attached_;
  stats.state_bytes = state_bytes_;
  stats.evicted_total = evicted_total_;
  return stats;
}

absl::Status SessionManager::UnknownSession(absl::string_view id) const {
  // Messages are logged, and an id is a capability: the tag names it.
  return absl::NotFoundError(
      absl::StrCat("session ", SessionTag(id),
                   " not found (never existed, ended, or evicted after --session_ttl=",
                   absl::FormatDuration(options_.ttl), " detached)"));
}

bool SessionManager::ExpiredLocked(const Slot& slot, absl::Time now) const {
  return !slot.attached && now - slot.last_activity >= options_.ttl;
}

void SessionManager::EraseLocked(Map::iterator it) {
  if (it->second.attached) --attached_;
  auto held = per_owner_.find(it->second.entry->owner());
  if (held != per_owner_.end() && --held->second <= 0) per_owner_.erase(held);
  state_bytes_ -= it->second.entry->state_bytes();
  // A stream or an ExportState still running on the entry keeps it alive
  // through its shared_ptr; the registry just forgets it.
  sessions_.erase(it);
}

void SessionManager::EvictLocked(Map::iterator it, absl::Time now) {
  LogfLimited("session evicted", "session %s evicted after %s detached", SessionTag(it->first),
              absl::FormatDuration(now - it->second.last_activity));
  ++evicted_total_;
  EraseLocked(it);
}

SessionManager::Map::iterator SessionManager::LookupLocked(absl::string_view id,
                                                           absl::string_view owner,
                                                           absl::Time now) {
  auto it = sessions_.find(id);
  if (it == sessions_.end()) return it;
  if (ExpiredLocked(it->second, now)) {
    EvictLocked(it, now);
    return sessions_.end();
  }
  // Another caller's session is as good as absent to this one.
  if (it->second.entry->owner() != owner) return sessions_.end();
  return it;
}

}  // namespace ssm::server
