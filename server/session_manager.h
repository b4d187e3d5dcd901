// The server's streaming sessions: each one a core ssm::Session (the state
// of `batch` streams of one model version) under its own lock, registered
// under a random 128-bit id (32 lowercase hex digits).
//
// A session is either attached (a StreamInfer call drives it) or detached
// (its stream broke, or ImportState created it). Detached sessions wait to
// be reattached for `ttl` of inactivity (no stream, no ExportState), then
// they are evicted: counted, logged, their state freed. An expired session
// is NotFound from the moment its TTL passes, whether or not EvictExpired
// has run since: lookups evict it on the spot.
//
// With a session store (Options::store, session_store.h) sessions outlive
// this replica. Each registered session holds the store's lease (one
// writer across replicas, renewed every lease/3), and a background thread
// (never the step path: a chunk only bumps an atomic) writes each attached
// session's snapshot whenever it advanced, at most every
// `checkpoint_interval`; a new session is written by Add itself, so its id
// never dies with this replica; durable_position() says how far the store
// has it.
// Only states whose outputs the stream's client has are written (Run's
// `received`): a reattach after any failure replays what the client lacks
// and never skips an output it did not get. A detached session is written
// a last time (its latest such state), its lease released, and then it
// lives in the store only (expiring after `ttl` there); a closed one is
// deleted from the store. Another replica reattaches it by id (AdoptStored,
// through session_open.h's policy); a replica that lost a session's lease
// (another took it over after a long pause) stops its stream
// (Unavailable) and never writes it again (writes are fenced by the lease).
// Store failures never fail a chunk: the writes retry every tick, logged
// once per episode and counted (Stats).
//
// Errors (the codes the wire reports unchanged; messages name a session by
// its tag, echo.h, never by its id, since they are logged):
//   NotFound            unknown, closed or evicted id
//   FailedPrecondition  Reattach of a session another stream holds
//   ResourceExhausted   Add past max_sessions (attached + detached), naming
//                       the limit and its value
// Lifecycle events are logged (log.h) with the session id.
//
// Thread safety: every method may be called concurrently. The registry has
// one mutex held only for map updates; each session has its own mutex, held
// while a chunk runs or a snapshot is taken, so one session's work never
// waits for another's.

#ifndef SSM_SERVER_SESSION_MANAGER_H_
#define SSM_SERVER_SESSION_MANAGER_H_

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "server/session_store.h"
#include "ssm/model.h"
#include "ssm/session.h"

namespace ssm::server {

class SnapshotSigner;

// A session's state as a snapshot plus the facts StateSnapshot copies.
struct SessionSnapshot {
  std::string data;       // Session::ExportState bytes
  std::string signature;  // HMAC of data when the server signs; else empty
  std::string model;
  int64_t version = 0;
  uint64_t fingerprint = 0;
  int64_t position = 0;
  int batch = 0;
};

// The snapshot of `session`, a stream of model `model_name` version
// `version`: the one place a snapshot's facts are gathered (a registered
// session's Export and Infer's return_state both come here).
// `signer` null: unsigned.
SessionSnapshot SnapshotOf(const ssm::Session& session, std::string model_name, int64_t version,
                           const SnapshotSigner* signer);

class SessionManager {
 public:
  using Clock = std::function<absl::Time()>;

  struct Options {
    int max_sessions = 1024;
    // Sessions one owner may hold (attached and detached); 0: no quota.
    int quota_sessions = 0;
    absl::Duration ttl = absl::Minutes(5);
    Clock clock = [] { return absl::Now(); };  // injectable for tests
    // Signs the snapshots sessions hand out (Export, Run's); null: unsigned.
    const SnapshotSigner* signer = nullptr;
    // The store sessions outlive this replica in; null: in process only.
    // Borrowed; must outlive the manager.
    SessionStore* store = nullptr;
    absl::Duration lease = absl::Seconds(10);
    absl::Duration checkpoint_interval = absl::Seconds(1);
    // How often the checkpointer looks at the sessions unprompted (renewing
    // leases, writing those that advanced); at most lease/6. What must not
    // wait for the tick wakes it: a new session (until its first write, a
    // replica's crash would lose it: its id could not be reopened
    // anywhere), a detach (another replica waits for its last write and its
    // lease) and a close (the store's copy must go).
    absl::Duration checkpoint_tick = absl::Milliseconds(100);
  };

  // How a session came to be, for the log.
  // kSequence: a new session that a per-replica table names (the Open
  // Inference Protocol's sequences, sequences.h), held detached here
  // between its requests and never written to the store: nothing on
  // another replica could name it.
  enum class Origin { kNew, kResumed, kImported, kAdopted, kSequence };

  // One registered session. Its identity is immutable; the core session
  // behind it is reached only through Run and Export, under its lock.
  class Entry {
   public:
    Entry(std::string id, std::string owner, std::string model_name, int64_t version,
          ssm::Session session, const SnapshotSigner* signer);

    const std::string& id() const { return id_; }
    // The principal that opened or imported it ("" without authentication).
    const std::string& owner() const { return owner_; }
    const std::string& model_name() const { return model_name_; }
    int64_t version() const { return version_; }
    int batch() const { return batch_; }
    int d_input() const { return d_input_; }
    int d_output() const { return d_output_; }
    int64_t state_bytes() const { return state_bytes_; }
    int64_t position() const;

    // Session::Run under the lock: x is batch x steps x d_input, y batch x
    // steps x d_output. On error the state is unchanged (the core's
    // guarantee). When `snapshot` is not null it receives the state after
    // the chunk, taken under the same lock. Returns the position after.
    // `received`: how many steps of outputs the client has (clamped to the
    // position; a value below an earlier one changes nothing); without it,
    // the chunk's start (a client that sends a chunk after reading the
    // previous answer has every output before it).
    absl::StatusOr<int64_t> Run(absl::Span<const double> x, int steps, absl::Span<double> y,
                                SessionSnapshot* snapshot,
                                std::optional<int64_t> received = std::nullopt);

    // One chunk of one entry, for RunBatch.
    struct Chunk {
      Entry* entry = nullptr;
      absl::Span<const double> x;  // batch x steps x d_input
      absl::Span<double> y;        // batch x steps x d_output
      std::optional<int64_t> received;
      absl::StatusOr<int64_t> result;  // set by RunBatch: what Run would return
    };
    // Run (without a snapshot) of a chunk of each entry, the short ones of
    // one model object and batch stepped together (ssm::Session::RunBatch):
    // each entry under its own lock with Run's bookkeeping (the lost lease,
    // the confirmed position and a checkpoint's capture at the chunk's
    // start), each result Run's, bit for bit. An entry may appear once (a
    // repeat gets FailedPrecondition and is not run). Holds every entry's
    // lock while the pass runs.
    static void RunBatch(absl::Span<Chunk> chunks, int steps)
        ABSL_NO_THREAD_SAFETY_ANALYSIS;  // locks every entry of the batch in turn

    // The core model the session runs (immutable; shared by the sessions
    // of one loaded version): sessions of one model object and batch can
    // be stepped together.
    const ssm::Model* model() const { return model_; }

    SessionSnapshot Export() const;

    // With a store: the position the store has the state of (-1: none yet),
    // and whether the session was taken over by another replica.
    int64_t durable_position() const { return durable_position_.load(); }
    bool lost() const { return lost_.load(); }

   private:
    friend class SessionManager;
    SessionSnapshot ExportLocked() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

    // A state taken for the store.
    struct Captured {
      int64_t position = 0;
      std::string data;
    };
    // Run's bookkeeping at a chunk's start (confirmed position, capture).
    void BeginChunkLocked(std::optional<int64_t> received) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
    // A stream starts driving the session: its client has everything
    // before here. With `keep` (a store that does not have this position
    // yet) the state is kept as the fallback a last write can always use.
    void Attached(bool keep);
    // The state to write now, if there is one whose outputs the client has:
    // the current one when it has them all, else a state taken earlier once
    // the client confirms it. Otherwise (not `final`) takes the current
    // state to write once confirmed, and returns nothing.
    std::optional<Captured> TakeCheckpoint(bool final);
    const std::string id_;
    const std::string owner_;
    const std::string model_name_;
    const int64_t version_;
    const int batch_;
    const int d_input_;
    const int d_output_;
    const int64_t state_bytes_;
    const ssm::Model* const model_;
    const SnapshotSigner* const signer_;
    mutable absl::Mutex mu_;
    ssm::Session session_ ABSL_GUARDED_BY(mu_);
    int64_t confirmed_ ABSL_GUARDED_BY(mu_) = 0;  // outputs the client has
    std::optional<Captured> pending_ ABSL_GUARDED_BY(mu_);
    bool capture_wanted_ ABSL_GUARDED_BY(mu_) = false;  // for Run, by the checkpointer
    // Store bookkeeping. position_ mirrors the session's position for the
    // checkpointer without its lock; the rest is the checkpointer's.
    std::string holder_;  // the lease holder token; set before registration
    std::atomic<int64_t> position_{0};
    std::atomic<int64_t> confirmed_position_{0};  // confirmed_, for Stats
    std::atomic<int64_t> durable_position_{-1};
    std::atomic<bool> lost_{false};
    bool stored_ = false;          // kept in the store (set before registration)
    int64_t saved_position_ = -1;  // checkpointer only
    absl::Time saved_at_ = absl::InfinitePast();
    absl::Time renewed_at_ = absl::InfinitePast();
  };

  struct Stats {
    int attached = 0;
    int detached = 0;
    int64_t state_bytes = 0;     // all sessions' state
    uint64_t evicted_total = 0;  // since construction
    // With a store:
    // Sessions with a state the client has confirmed that the store lacks
    // (the outputs in flight are not counted: they cannot be saved yet).
    int unsaved = 0;
    uint64_t store_writes_total = 0;  // snapshots written
    uint64_t store_bytes_total = 0;   // their bytes
    uint64_t store_errors_total = 0;  // failed store operations
    bool store_healthy = true;        // the last store operation succeeded
  };

  // A session read from the store, to register here (AdoptStored).
  struct Adopted {
    std::string id;
    std::string holder;  // the lease this replica took for it
    int64_t position = 0;
  };

  explicit SessionManager(Options options);

  // Registers `session` under a fresh id, owned by `owner`, attached (a
  // stream's) or detached (ImportState's). ResourceExhausted at
  // max_sessions (after evicting the expired ones) or past the owner's
  // quota_sessions, naming the limit. With a store, a new session is
  // written there before this returns (so its id, once a client has it,
  // survives this replica), unless the store is failing: then it runs at
  // once and the checkpointer writes it when the store answers.
  absl::StatusOr<std::shared_ptr<Entry>> Add(std::string model_name, int64_t version,
                                             ssm::Session session, bool attached, Origin origin,
                                             std::string owner = "",
                                             const Adopted* adopted = nullptr);

  // With a store: takes the lease on `id` and reads its record, for a
  // reattach on a replica that does not hold the session. NotFound (as
  // UnknownSession) for no record or another owner's; FailedPrecondition
  // while another stream holds the lease; Unavailable when the store
  // cannot be reached. On success the caller registers the session with
  // Add(..., &adopted) or gives the lease back with ReleaseAdopted.
  struct Stored {
    StoredSession record;
    Adopted adopted;
  };
  absl::StatusOr<Stored> TakeStored(absl::string_view id, absl::string_view owner);
  void ReleaseAdopted(const Adopted& adopted);

  // With a store, for ExportState on a replica that does not hold `id`:
  // its stored snapshot. NotFound as Find.
  absl::StatusOr<SessionSnapshot> ExportStored(absl::string_view id, absl::string_view owner);

  // Writes every session this replica holds to the store and releases its
  // leases (a drain's last step), waiting up to `deadline`; true when all
  // were written. No-op without a store.
  bool FlushAll(absl::Time deadline);

  ~SessionManager();

  // Attaches a detached session of `owner` to a new stream. When `model` is
  // not empty it must be the session's model (else FailedPrecondition), and
  // a `batch` other than 0 must be the session's batch (else
  // InvalidArgument); a refused reattach leaves the session as it was.
  // Another owner's session is NotFound, exactly as an unknown id (its
  // existence is not revealed).
  absl::StatusOr<std::shared_ptr<Entry>> Reattach(absl::string_view id,
                                                  absl::string_view model = "", int batch = 0,
                                                  absl::string_view owner = "");

  // The session of `owner`, attached or not, for ExportState; counts as
  // activity for a detached one (its TTL restarts). NotFound as Reattach.
  absl::StatusOr<std::shared_ptr<Entry>> Find(absl::string_view id, absl::string_view owner = "");

  // The session of `owner`, without counting as activity (to learn its
  // model before deciding to reattach). NotFound as Reattach.
  absl::StatusOr<std::shared_ptr<Entry>> Peek(absl::string_view id, absl::string_view owner = "");

  // The stream holding `id` broke or failed: keep the session, detached,
  // for the TTL. `why` goes to the log. No-op for an unknown id.
  void Detach(absl::string_view id, absl::string_view why);

  // The stream holding `id` finished cleanly: the session ends. No-op for
  // an unknown id.
  void Close(absl::string_view id);

  // Evicts detached sessions idle for ttl or longer; returns how many.
  int EvictExpired();

  Stats GetStats() const;
  const Options& options() const { return options_; }

 private:
  struct Slot {
    std::shared_ptr<Entry> entry;
    bool attached = false;
    absl::Time last_activity;
  };
  using Map = absl::flat_hash_map<std::string, Slot>;

  // NotFound for `id`, naming it by its tag (messages are logged).
  absl::Status UnknownSession(absl::string_view id) const;
  bool ExpiredLocked(const Slot& slot, absl::Time now) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void EraseLocked(Map::iterator it) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void EvictLocked(Map::iterator it, absl::Time now) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The slot for `id` if `owner` owns it, evicting it first if expired;
  // end() if none.
  Map::iterator LookupLocked(absl::string_view id, absl::string_view owner, absl::Time now)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  // The checkpointer (with a store): every tick, writes the sessions that
  // advanced, renews leases, finishes detached sessions' last writes and
  // deletes closed ones.
  void CheckpointLoop();
  void CheckpointOnce();
  // One session's checkpoint (`final`: its last, see TakeCheckpoint); false
  // when the store failed.
  bool Save(Entry& entry, absl::Time now, bool final);
  // Registry side of a detach: with a store the session leaves the registry
  // for leaving_ (its last write and lease release are the checkpointer's).
  void DetachLocked(Map::iterator it, absl::string_view why) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void NoteStoreResult(const absl::Status& status, absl::string_view what);
  std::string NewHolder() const;
  // Has the checkpointer run a pass now rather than at its next tick.
  void WakeCheckpointer();
  // A new attached session's first write, before its id is handed out:
  // its lease and record under a fresh id, as if adopted at its position.
  absl::StatusOr<Adopted> WriteNew(const std::string& owner, const std::string& model_name,
                                   int64_t version, const ssm::Session& session);
  absl::StatusOr<std::shared_ptr<Entry>> Register(std::string model_name, int64_t version,
                                                  ssm::Session session, bool attached,
                                                  Origin origin, std::string owner,
                                                  const Adopted* adopted);

  const Options options_;
  const std::string replica_;  // this process, in lease holder tokens
  mutable absl::Mutex mu_;
  Map sessions_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<std::string, int> per_owner_ ABSL_GUARDED_BY(mu_);
  int attached_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t state_bytes_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t evicted_total_ ABSL_GUARDED_BY(mu_) = 0;
  // Closed sessions to delete from the store (id, holder).
  std::vector<std::pair<std::string, std::string>> to_delete_ ABSL_GUARDED_BY(mu_);
  // With a store: detached sessions, out of the registry, whose last write
  // and lease release are pending. A reattach meanwhile goes to the store
  // and waits for the lease like any other replica.
  std::vector<std::shared_ptr<Entry>> leaving_ ABSL_GUARDED_BY(mu_);

  // Store counters (the checkpointer and adopters write them).
  std::atomic<uint64_t> store_writes_{0}, store_bytes_{0}, store_errors_{0};
  std::atomic<bool> store_healthy_{true};
  absl::Mutex checkpoint_mu_;  // one checkpoint pass at a time (the thread, FlushAll)
  absl::Mutex wake_mu_;        // never held with mu_ or checkpoint_mu_ taken after it
  absl::CondVar wake_cv_;
  bool wake_ ABSL_GUARDED_BY(wake_mu_) = false;
  bool stopping_ ABSL_GUARDED_BY(wake_mu_) = false;
  std::thread checkpointer_;
};

// A fresh random session id: 128 bits from the OS's entropy, 32 hex digits.
std::string NewSessionId();

}  // namespace ssm::server

#endif  // SSM_SERVER_SESSION_MANAGER_H_
