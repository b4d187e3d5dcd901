#include "server/session_manager.h"

#include <algorithm>
#include <random>
#include <utility>

#include "absl/algorithm/container.h"
#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "server/echo.h"
#include "server/log.h"
#include "server/snapshot_keys.h"
#include "ssm/threads.h"

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
    case SessionManager::Origin::kAdopted:
      return "taken over from the session store";
    case SessionManager::Origin::kSequence:
      return "opened for a sequence";
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
      model_(&session.model()),
      signer_(signer),
      session_(std::move(session)),
      position_(session_.position()) {}

int64_t SessionManager::Entry::position() const {
  absl::MutexLock lock(&mu_);
  return session_.position();
}

namespace {

absl::Status LostLease() {
  return absl::UnavailableError(
      "this replica lost the session's lease (it could not renew it in time) and another "
      "stream may have taken it over: reattach by id");
}

}  // namespace

void SessionManager::Entry::BeginChunkLocked(std::optional<int64_t> received) {
  confirmed_ =
      std::max(confirmed_, std::min(received.value_or(session_.position()), session_.position()));
  confirmed_position_.store(confirmed_, std::memory_order_relaxed);
  if (capture_wanted_ && confirmed_ >= session_.position()) {
    // The checkpointer asked for a state the client has all the outputs
    // of: this one (a copy, once per checkpoint; never a store call).
    pending_ = Captured{session_.position(), session_.ExportState()};
    capture_wanted_ = false;
  }
}

absl::StatusOr<int64_t> SessionManager::Entry::Run(absl::Span<const double> x, int steps,
                                                   absl::Span<double> y, SessionSnapshot* snapshot,
                                                   std::optional<int64_t> received) {
  if (lost_.load(std::memory_order_relaxed)) return LostLease();
  absl::MutexLock lock(&mu_);
  BeginChunkLocked(received);
  if (absl::Status status = session_.Run(x, steps, y); !status.ok()) return status;
  if (snapshot != nullptr) *snapshot = ExportLocked();
  position_.store(session_.position(), std::memory_order_relaxed);
  return session_.position();
}

void SessionManager::Entry::RunBatch(absl::Span<Chunk> chunks, int steps) {
  // A repeated entry would be locked twice: refused before any lock.
  thread_local std::vector<std::pair<const Entry*, size_t>> order;
  order.clear();
  for (size_t i = 0; i < chunks.size(); ++i) order.emplace_back(chunks[i].entry, i);
  std::sort(order.begin(), order.end());
  thread_local std::vector<char> skip;
  skip.assign(chunks.size(), 0);
  for (size_t k = 1; k < order.size(); ++k) {
    if (order[k].first == order[k - 1].first) {
      skip[order[k].second] = 1;
      chunks[order[k].second].result = absl::FailedPreconditionError(
          "a session appears more than once in one batch; it runs its first chunk only");
    }
  }
  thread_local std::vector<ssm::Session::Chunk> core;
  thread_local std::vector<size_t> index;
  core.clear();
  index.clear();
  // The locks are taken in the entries' address order: passes gather
  // sessions in any order, and Abseil's deadlock detector (on in Debian's
  // build) aborts on lock orders that ever disagree.
  for (const auto& [unused, i] : order) {
    Chunk& c = chunks[i];
    if (skip[i]) continue;
    if (c.entry->lost_.load(std::memory_order_relaxed)) {
      c.result = LostLease();
      continue;
    }
    c.entry->mu_.Lock();
    c.entry->BeginChunkLocked(c.received);
    core.push_back({&c.entry->session_, c.x, c.y, absl::OkStatus()});
    index.push_back(i);
  }
  ssm::Session::RunBatch(absl::MakeSpan(core), steps);
  for (size_t k = 0; k < core.size(); ++k) {
    Chunk& c = chunks[index[k]];
    Entry& e = *c.entry;
    if (core[k].status.ok()) {
      const int64_t position = e.session_.position();
      e.position_.store(position, std::memory_order_relaxed);
      c.result = position;
    } else {
      c.result = std::move(core[k].status);
    }
    e.mu_.Unlock();
  }
}

void SessionManager::Entry::Attached(bool keep) {
  absl::MutexLock lock(&mu_);
  confirmed_ = session_.position();
  confirmed_position_.store(confirmed_, std::memory_order_relaxed);
  capture_wanted_ = false;
  pending_.reset();
  if (keep) pending_ = Captured{session_.position(), session_.ExportState()};
}

std::optional<SessionManager::Entry::Captured> SessionManager::Entry::TakeCheckpoint(bool final) {
  absl::MutexLock lock(&mu_);
  const int64_t position = session_.position();
  std::optional<Captured> out;
  if (confirmed_ >= position) {
    pending_.reset();
    out = Captured{position, session_.ExportState()};
  } else if (pending_.has_value() && pending_->position <= confirmed_) {
    out = std::move(pending_);
    pending_.reset();
  } else if (!final) {
    // Outputs are in flight. Either the next chunk starts where the client
    // has everything (a client that reads each answer before it sends
    // again): Run keeps that state. Or the client keeps chunks in flight
    // and says what it has: this state is written once it has caught up.
    capture_wanted_ = true;
    if (!pending_.has_value()) pending_ = Captured{position, session_.ExportState()};
  }
  return out;
}

SessionSnapshot SessionManager::Entry::Export() const {
  absl::MutexLock lock(&mu_);
  return ExportLocked();
}

SessionSnapshot SessionManager::Entry::ExportLocked() const {
  return SnapshotOf(session_, model_name_, version_, signer_);
}

SessionManager::SessionManager(Options options)
    : options_(std::move(options)), replica_(NewSessionId().substr(0, 12)) {
  if (options_.store != nullptr) {
    checkpointer_ = std::thread([this] {
      ssm::NameThisThread("ssm-checkpoint");
      CheckpointLoop();
    });
  }
}

SessionManager::~SessionManager() {
  {
    absl::MutexLock lock(&wake_mu_);
    stopping_ = true;
  }
  wake_cv_.Signal();
  if (checkpointer_.joinable()) checkpointer_.join();
}

std::string SessionManager::NewHolder() const {
  return absl::StrCat(replica_, ":", NewSessionId().substr(0, 16));
}

absl::StatusOr<std::shared_ptr<SessionManager::Entry>> SessionManager::Add(
    std::string model_name, int64_t version, ssm::Session session, bool attached, Origin origin,
    std::string owner, const Adopted* adopted) {
  const int batch = session.batch();
  const int64_t position = session.position();
  const bool stored = options_.store != nullptr && origin != Origin::kSequence;
  if (stored && !attached) {
    // A detached session lives in the store only: written now, so any
    // replica can reattach it as soon as this returns.
    auto entry = std::make_shared<Entry>(NewSessionId(), std::move(owner), std::move(model_name),
                                         version, std::move(session), options_.signer);
    const std::string holder = NewHolder();
    absl::StatusOr<bool> leased = options_.store->AcquireLease(entry->id(), holder, options_.lease);
    absl::Status status = leased.status();
    if (status.ok() && *leased) {
      StoredSession record{entry->owner(), entry->model_name(), version, position,
                           entry->Export().data};
      status = options_.store->Put(entry->id(), holder, record, options_.ttl);
      if (status.ok()) {
        store_writes_.fetch_add(1);
        store_bytes_.fetch_add(record.snapshot.size());
      }
      (void)options_.store->ReleaseLease(entry->id(), holder);
    }
    NoteStoreResult(status, "writing an imported session");
    if (!status.ok()) {
      return absl::UnavailableError(absl::StrCat("the session store cannot take the session now (",
                                                 status.message(), "); retry"));
    }
    entry->durable_position_.store(position);
    LogfLimited("session opened",
                "session %s %s into %s: model '%s' version %d, batch %d, "
                "position %d",
                SessionTag(entry->id()), OriginText(origin), options_.store->Describe(),
                entry->model_name(), version, batch, position);
    return entry;
  }
  // A store that is failing is not waited for on every open (each would
  // take the store's timeout): the session runs at once and the
  // checkpointer writes it when the store answers.
  Adopted written;
  if (stored && adopted == nullptr && store_healthy_.load()) {
    absl::StatusOr<Adopted> first = WriteNew(owner, model_name, version, session);
    if (first.ok()) {
      written = *std::move(first);
      adopted = &written;
    }
  }
  absl::StatusOr<std::shared_ptr<Entry>> entry =
      Register(std::move(model_name), version, std::move(session), attached, origin,
               std::move(owner), adopted);
  if (!entry.ok() && adopted == &written) {
    // Refused (a limit): the record goes, and its lease with it.
    const absl::Status deleted = options_.store->Delete(written.id, written.holder);
    NoteStoreResult(deleted, "deleting a refused session");
  }
  return entry;
}

absl::StatusOr<SessionManager::Adopted> SessionManager::WriteNew(const std::string& owner,
                                                                 const std::string& model_name,
                                                                 int64_t version,
                                                                 const ssm::Session& session) {
  SessionStore& store = *options_.store;
  Adopted out{NewSessionId(), NewHolder(), session.position()};
  absl::StatusOr<bool> leased = store.AcquireLease(out.id, out.holder, options_.lease);
  absl::Status status = leased.status();
  if (status.ok() && !*leased) {
    status = absl::InternalError("the lease of a fresh random id is held");  // 2^-128
  }
  if (status.ok()) {
    StoredSession record{owner, model_name, version, out.position, session.ExportState()};
    const size_t bytes = record.snapshot.size();
    status = store.Put(out.id, out.holder, record, options_.ttl);
    if (status.ok()) {
      store_writes_.fetch_add(1);
      store_bytes_.fetch_add(bytes);
    } else {
      (void)store.ReleaseLease(out.id, out.holder);
    }
  }
  NoteStoreResult(status, "writing a new session");
  if (!status.ok()) return status;
  return out;
}

absl::StatusOr<std::shared_ptr<SessionManager::Entry>> SessionManager::Register(
    std::string model_name, int64_t version, ssm::Session session, bool attached, Origin origin,
    std::string owner, const Adopted* adopted) {
  const int batch = session.batch();
  const int64_t position = session.position();
  const bool stored = options_.store != nullptr && origin != Origin::kSequence;
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
  std::string id = adopted != nullptr ? adopted->id : NewSessionId();
  while (adopted == nullptr && sessions_.contains(id)) id = NewSessionId();  // 2^-128
  if (adopted != nullptr && sessions_.contains(id)) {
    return absl::FailedPreconditionError(
        absl::StrCat("session ", SessionTag(id),
                     " is already held by this replica; a session has one "
                     "stream at a time"));
  }
  auto entry = std::make_shared<Entry>(id, std::move(owner), std::move(model_name), version,
                                       std::move(session), options_.signer);
  entry->stored_ = stored;
  if (stored) {
    // An adopted session (or a new one written by Add) came with its lease
    // and its stored position; else the checkpointer takes the lease with
    // its first write.
    entry->holder_ = adopted != nullptr ? adopted->holder : NewHolder();
    if (adopted != nullptr) {
      entry->saved_position_ = adopted->position;
      entry->saved_at_ = entry->renewed_at_ = now;
      entry->durable_position_.store(adopted->position);
    }
  }
  // A state the store does not have yet is kept until written: without it
  // a stream that broke with outputs in flight before the first checkpoint
  // would leave nothing its client could continue from.
  entry->Attached(/*keep=*/stored && adopted == nullptr);
  sessions_.emplace(id, Slot{entry, attached, now});
  ++per_owner_[entry->owner()];
  if (attached) ++attached_;
  state_bytes_ += entry->state_bytes();
  if (stored && adopted == nullptr) WakeCheckpointer();
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
  if (entry.lost()) return UnknownSession(id);
  it->second.attached = true;
  ++attached_;
  it->second.entry->Attached(/*keep=*/false);
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
  DetachLocked(it, why);
}

void SessionManager::DetachLocked(Map::iterator it, absl::string_view why) {
  it->second.attached = false;
  it->second.last_activity = options_.clock();
  --attached_;
  if (it->second.entry->stored_) {
    if (it->second.entry->lost()) {
      LogfLimited("session detached", "session %s detached (%s); another replica holds it now",
                  SessionTag(it->first), why);
    } else {
      // The checkpointer writes its latest state whose outputs the client
      // has, releases the lease and lets it go: from then on it lives in
      // the store, where a reattach (here too) continues it.
      leaving_.push_back(it->second.entry);
      WakeCheckpointer();
      LogfLimited("session detached", "session %s detached (%s); kept in %s for %s",
                  SessionTag(it->first), why, options_.store->Describe(),
                  absl::FormatDuration(options_.ttl));
    }
    EraseLocked(it);
    return;
  }
  LogfLimited("session detached", "session %s detached (%s); kept for %s", SessionTag(it->first),
              why, absl::FormatDuration(options_.ttl));
}

void SessionManager::Close(absl::string_view id) {
  absl::MutexLock lock(&mu_);
  auto it = sessions_.find(id);
  if (it == sessions_.end()) return;
  LogfLimited("session closed", "session %s closed", SessionTag(it->first));
  if (it->second.entry->stored_ && !it->second.entry->lost()) {
    to_delete_.emplace_back(it->first, it->second.entry->holder_);
    WakeCheckpointer();
  }
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
  stats.detached = static_cast<int>(sessions_.size() + leaving_.size()) - attached_;
  stats.state_bytes = state_bytes_;
  stats.evicted_total = evicted_total_;
  if (options_.store != nullptr) {
    for (const auto& [id, slot] : sessions_) {
      const Entry& e = *slot.entry;
      if (e.stored_ && !e.lost() &&
          e.durable_position() < e.confirmed_position_.load(std::memory_order_relaxed)) {
        ++stats.unsaved;
      }
    }
  }
  stats.store_writes_total = store_writes_.load();
  stats.store_bytes_total = store_bytes_.load();
  stats.store_errors_total = store_errors_.load();
  stats.store_healthy = store_healthy_.load();
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

// --- The session store ------------------------------------------------------

void SessionManager::NoteStoreResult(const absl::Status& status, absl::string_view what) {
  if (status.ok()) {
    if (!store_healthy_.exchange(true)) {
      Logf("session store %s answers again", options_.store->Describe());
    }
    return;
  }
  // A lost lease is the protocol working, not the store failing.
  if (status.code() == absl::StatusCode::kFailedPrecondition) return;
  store_errors_.fetch_add(1);
  // Once per episode: the first failure after a success.
  if (store_healthy_.exchange(false)) {
    Logf("session store %s failed (%s: %s); sessions keep running, writes retry",
         options_.store->Describe(), what, status.message());
  }
}

bool SessionManager::Save(Entry& entry, absl::Time now, bool final) {
  SessionStore& store = *options_.store;
  if (entry.saved_position_ < 0 && entry.renewed_at_ == absl::InfinitePast()) {
    // A session of this replica's own making: its lease comes with its
    // first write (a fresh random id: nobody else can hold it).
    absl::StatusOr<bool> leased = store.AcquireLease(entry.id(), entry.holder_, options_.lease);
    NoteStoreResult(leased.status(), "taking a lease");
    if (!leased.ok()) return false;
    if (!*leased) {
      entry.lost_.store(true);
      return true;
    }
    entry.renewed_at_ = now;
  }
  std::optional<Entry::Captured> state = entry.TakeCheckpoint(final);
  if (!state.has_value() || state->position <= entry.saved_position_) return true;
  StoredSession record{entry.owner(), entry.model_name(), entry.version(), state->position,
                       std::move(state->data)};
  const absl::Status status = store.Put(entry.id(), entry.holder_, record, options_.ttl);
  NoteStoreResult(status, "writing a checkpoint");
  if (status.code() == absl::StatusCode::kFailedPrecondition) {
    entry.lost_.store(true);  // someone else holds the lease now
    return true;
  }
  if (!status.ok()) {
    // Not written: what was taken goes back for the next attempt (a
    // confirmed state stays confirmed).
    absl::MutexLock lock(&entry.mu_);
    if (!entry.pending_.has_value()) {
      entry.pending_ = Entry::Captured{record.position, std::move(record.snapshot)};
    }
    return false;
  }
  store_writes_.fetch_add(1);
  store_bytes_.fetch_add(record.snapshot.size());
  entry.saved_position_ = record.position;
  entry.saved_at_ = now;
  entry.durable_position_.store(record.position);
  return true;
}

void SessionManager::CheckpointOnce() {
  absl::MutexLock pass(&checkpoint_mu_);
  SessionStore& store = *options_.store;
  std::vector<std::shared_ptr<Entry>> attached;
  std::vector<std::shared_ptr<Entry>> leaving;
  std::vector<std::pair<std::string, std::string>> deletes;
  {
    absl::MutexLock lock(&mu_);
    attached.reserve(sessions_.size());
    for (const auto& [id, slot] : sessions_) {
      if (slot.entry->stored_) attached.push_back(slot.entry);
    }
    leaving = leaving_;
    deletes.swap(to_delete_);
  }
  const absl::Time now = options_.clock();
  for (const std::shared_ptr<Entry>& entry : attached) {
    Entry& e = *entry;
    if (e.lost()) continue;
    const bool leased = e.renewed_at_ != absl::InfinitePast();
    if (leased && now - e.renewed_at_ >= options_.lease / 3) {
      // Also keeps the record from expiring while the session is held.
      absl::StatusOr<bool> renewed =
          store.RenewLease(e.id(), e.holder_, options_.lease, options_.ttl);
      NoteStoreResult(renewed.status(), "renewing a lease");
      if (renewed.ok()) {
        if (!*renewed) {
          e.lost_.store(true);
          continue;
        }
        e.renewed_at_ = now;
      }
    }
    const int64_t position = e.position_.load(std::memory_order_relaxed);
    const bool behind = e.saved_position_ < position || e.saved_position_ < 0;
    if (behind && now - e.saved_at_ >= options_.checkpoint_interval) {
      (void)Save(e, now, /*final=*/false);
    }
  }
  // Detached sessions: a last write, then the lease goes. A store that
  // does not answer keeps them here to retry; a lease lost meanwhile (the
  // store expired it, someone took over) lets them go unwritten.
  std::vector<std::shared_ptr<Entry>> gone;
  for (const std::shared_ptr<Entry>& entry : leaving) {
    Entry& e = *entry;
    if (!e.lost() && !Save(e, now, /*final=*/true)) continue;
    if (!e.lost()) (void)store.ReleaseLease(e.id(), e.holder_);
    gone.push_back(entry);
  }
  for (const auto& [id, holder] : deletes) {
    const absl::Status deleted = store.Delete(id, holder);
    // Not ours (never written, or taken over) is fine; an unreachable store
    // leaves the record to expire after its TTL.
    NoteStoreResult(deleted, "deleting a closed session");
  }
  if (gone.empty()) return;
  absl::MutexLock lock(&mu_);
  leaving_.erase(std::remove_if(leaving_.begin(), leaving_.end(),
                                [&](const std::shared_ptr<Entry>& e) {
                                  return absl::c_linear_search(gone, e);
                                }),
                 leaving_.end());
}

void SessionManager::CheckpointLoop() {
  const absl::Duration tick =
      std::min({options_.checkpoint_tick, options_.checkpoint_interval, options_.lease / 6});
  for (;;) {
    {
      absl::MutexLock lock(&wake_mu_);
      const absl::Time until = absl::Now() + tick;
      while (!wake_ && !stopping_ && !wake_cv_.WaitWithDeadline(&wake_mu_, until)) {
      }
      if (stopping_) return;
      wake_ = false;  // wakes from now on ask for another pass
    }
    CheckpointOnce();
  }
}

void SessionManager::WakeCheckpointer() {
  {
    absl::MutexLock lock(&wake_mu_);
    wake_ = true;
  }
  wake_cv_.Signal();
}

absl::StatusOr<SessionManager::Stored> SessionManager::TakeStored(absl::string_view id,
                                                                  absl::string_view owner) {
  SessionStore* store = options_.store;
  // Only what could be one of our ids goes to the store.
  if (store == nullptr || id.size() != 32 ||
      !absl::c_all_of(id, [](char c) { return absl::ascii_isxdigit(c); })) {
    return UnknownSession(id);
  }
  Stored out;
  out.adopted.id = std::string(id);
  out.adopted.holder = NewHolder();
  absl::StatusOr<bool> leased = store->AcquireLease(id, out.adopted.holder, options_.lease);
  NoteStoreResult(leased.status(), "taking a lease");
  if (!leased.ok()) {
    return absl::UnavailableError(
        absl::StrCat("the session store cannot be reached to take over session ", SessionTag(id),
                     ": ", leased.status().message(), "; retry"));
  }
  if (!*leased) {
    return absl::FailedPreconditionError(absl::StrCat(
        "session ", SessionTag(id),
        "'s lease is held: it is attached to another stream, or the replica it left is "
        "still writing its last state; a session has one stream at a time. If the holder "
        "died, the lease expires within --session_lease=",
        absl::FormatDuration(options_.lease)));
  }
  absl::StatusOr<std::optional<StoredSession>> record = store->Get(id);
  NoteStoreResult(record.status(), "reading a session");
  absl::Status refused;
  if (!record.ok()) {
    refused =
        record.status().code() == absl::StatusCode::kDataLoss
            ? record.status()
            : absl::UnavailableError(absl::StrCat(
                  "the session store cannot be read: ", record.status().message(), "; retry"));
  } else if (!record->has_value() || (*record)->owner != owner) {
    refused = UnknownSession(id);
  }
  if (!refused.ok()) {
    ReleaseAdopted(out.adopted);
    return refused;
  }
  out.record = **std::move(record);
  out.adopted.position = out.record.position;
  return out;
}

void SessionManager::ReleaseAdopted(const Adopted& adopted) {
  if (options_.store != nullptr) (void)options_.store->ReleaseLease(adopted.id, adopted.holder);
}

absl::StatusOr<SessionSnapshot> SessionManager::ExportStored(absl::string_view id,
                                                             absl::string_view owner) {
  if (options_.store == nullptr) return UnknownSession(id);
  absl::StatusOr<std::optional<StoredSession>> record = options_.store->Get(id);
  NoteStoreResult(record.status(), "reading a session");
  if (!record.ok()) {
    if (record.status().code() == absl::StatusCode::kDataLoss) return record.status();
    return absl::UnavailableError(
        absl::StrCat("the session store cannot be read: ", record.status().message()));
  }
  if (!record->has_value() || (*record)->owner != owner) return UnknownSession(id);
  absl::StatusOr<ssm::SnapshotInfo> info = ssm::ReadSnapshotInfo((*record)->snapshot);
  if (!info.ok()) return info.status();
  SessionSnapshot out;
  out.data = std::move((*record)->snapshot);
  if (options_.signer != nullptr) out.signature = options_.signer->Sign(out.data);
  out.model = (*record)->model;
  out.version = (*record)->version;
  out.fingerprint = info->fingerprint;
  out.position = info->position;
  out.batch = info->batch;
  return out;
}

bool SessionManager::FlushAll(absl::Time deadline) {
  if (options_.store == nullptr) return true;
  {
    // Whatever is still attached goes too: the process is leaving.
    absl::MutexLock lock(&mu_);
    for (auto it = sessions_.begin(); it != sessions_.end();) {
      auto next = std::next(it);
      if (it->second.attached) DetachLocked(it, "the server is draining");
      it = next;
    }
  }
  while (true) {
    CheckpointOnce();
    {
      absl::MutexLock lock(&mu_);
      // Sessions the store does not keep (sequences) die with the process.
      const bool written =
          absl::c_none_of(sessions_, [](const auto& slot) { return slot.second.entry->stored_; });
      if (written && leaving_.empty()) return true;
    }
    if (options_.clock() >= deadline) return false;
    absl::SleepFor(absl::Milliseconds(50));
  }
}

}  // namespace ssm::server
