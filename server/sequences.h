// Sequences named by the client (Triton's sequence batcher semantics) over
// the server's sessions: the Open Inference Protocol's `sequence_id`,
// `sequence_start` and `sequence_end` parameters, for every transport that
// carries them (ModelInfer, ModelStreamInfer, REST infer). gRPC-free and
// proto-free: it speaks the catalog, the session registry and the opening
// policy (session_open.h), nothing of the wire.
//
// A sequence is keyed by (caller, model, version, sequence id): the client
// chooses the id (a uint64 or a string), so two callers' sequence 42 are
// two sequences, and neither can reach the other's. Each live sequence is
// one registered session (SessionManager), held *detached* between its
// requests, so it counts against --max_sessions and the caller's
// --quota_sessions, shows in the session metrics, and is evicted after
// --session_ttl without a request.
//
// One request of a sequence (Run):
//   start        a new session; after its chunk ran, the sequence's id names
//                it. A start on a live id ends the previous sequence (Triton:
//                "terminated early"), once the new chunk has run.
//   start + end  a one-request sequence: a fresh session runs the chunk and
//                is dropped; a live sequence of that id ends too.
//   neither      continues the live sequence from its state.
//   end          continues, then the sequence ends (its session is closed).
// A request that fails (a chunk the core refuses: an output float32 cannot
// carry, a stop) changes nothing: a continued sequence keeps its state (the
// core leaves a session as before a failed chunk), and a failed start
// leaves the previous sequence of that id, if any, as it was.
//
// Errors (exact codes; messages name the sequence, echoed):
//   InvalidArgument     a continue or end of a sequence that is not live
//                       (never started, ended, or idle past --session_ttl;
//                       Triton's code for "must specify the START flag"), a
//                       batch other than the one the sequence started with,
//                       an empty id, a string id over kMaxSequenceIdBytes
//   ResourceExhausted   a start past --max_sessions or the caller's quota,
//                       or past --max_batch
//   FailedPrecondition  a start on a model that cannot stream
//   whatever the session's chunk returns (session_manager.h, ssm/session.h)
//
// Chunk invariance: a sequence's requests run as chunks of one session, so
// any split of a sequence into requests gives the outputs of one whole
// Infer, to float32 rounding (the core's guarantee for sessions).
//
// Thread safety: every method may be called concurrently. Requests of one
// sequence that arrive together run one at a time (the session's lock), in
// the order they take it.

#ifndef SSM_SERVER_SEQUENCES_H_
#define SSM_SERVER_SEQUENCES_H_

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/types/span.h"
#include "server/limits.h"
#include "server/model_catalog.h"
#include "server/session_manager.h"

namespace ssm::server {

// A string sequence id longer than this is refused (ids are held as keys).
inline constexpr size_t kMaxSequenceIdBytes = 256;

// A client's name for a sequence: a uint64 or a string. 0 and "" mean "not
// part of a sequence". A number and a string never name the same sequence
// (42 and "42" are two).
struct SequenceId {
  bool is_string = false;
  uint64_t number = 0;
  std::string text;

  static SequenceId Number(uint64_t n) { return SequenceId{false, n, ""}; }
  static SequenceId String(std::string s) { return SequenceId{true, 0, std::move(s)}; }

  bool empty() const { return is_string ? text.empty() : number == 0; }
  // For messages and logs: 42, or "abc" quoted and echoed (echo.h).
  std::string ToString() const;

  friend bool operator==(const SequenceId& a, const SequenceId& b) {
    return a.is_string == b.is_string && a.number == b.number && a.text == b.text;
  }
  template <typename H>
  friend H AbslHashValue(H h, const SequenceId& id) {
    return H::combine(std::move(h), id.is_string, id.number, id.text);
  }
};

// One request of a sequence: the parameters, the caller, the model version
// the request resolved to, and its chunk, already validated against the
// model (shape, finite values, limits): x is batch x steps x d_input, y
// batch x steps x d_output.
struct SequenceRequest {
  SequenceId id;
  bool start = false;
  bool end = false;
  absl::string_view owner;  // the caller's principal ("" without authentication)
  const ServedModel* served = nullptr;
  int batch = 0;
  int steps = 0;
  absl::Span<const double> x;
  absl::Span<double> y;
  // How the request's batch is named in messages, e.g. "inputs[0].shape[0]".
  absl::string_view batch_field = "batch";
};

class SequenceTable {
 public:
  SequenceTable(const ModelCatalog* catalog, SessionManager* sessions, RequestLimits limits);

  SequenceTable(const SequenceTable&) = delete;
  SequenceTable& operator=(const SequenceTable&) = delete;

  // Runs one request of a sequence (the rules above) and returns the
  // sequence's position after it (steps consumed since its start).
  absl::StatusOr<int64_t> Run(const SequenceRequest& request);

  // The position (steps since its start) of `owner`'s live sequence `id`
  // of `served`, without counting as activity (its idle clock runs on);
  // nullopt when that sequence is not live. For tests and the fuzz
  // harnesses, which check that a refused request moves no sequence.
  std::optional<int64_t> Position(absl::string_view owner, const ServedModel& served,
                                  const SequenceId& id) const;

  // Live sequences this table still names (some may have expired in the
  // registry and not been pruned yet). For tests and metrics.
  int size() const;

 private:
  struct Key {
    std::string owner;
    std::string model;
    int64_t version = 0;
    SequenceId id;

    friend bool operator==(const Key& a, const Key& b) {
      return a.owner == b.owner && a.model == b.model && a.version == b.version && a.id == b.id;
    }
    template <typename H>
    friend H AbslHashValue(H h, const Key& k) {
      return H::combine(std::move(h), k.owner, k.model, k.version, k.id);
    }
  };
  struct Live {
    std::string session_id;
    int batch = 0;
  };

  absl::StatusOr<int64_t> Start(const SequenceRequest& request, const Key& key);
  absl::StatusOr<int64_t> Continue(const SequenceRequest& request, const Key& key);
  // InvalidArgument: `request`'s sequence is not live.
  absl::Status NotLive(const SequenceRequest& request) const;
  // Forgets `key` if it still names `session_id`.
  void ForgetIf(const Key& key, const std::string& session_id);
  // Drops the keys whose sessions the registry no longer has (evicted
  // after their TTL), when the table has doubled since the last prune.
  void MaybePruneLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const ModelCatalog* const catalog_;
  SessionManager* const sessions_;
  const RequestLimits limits_;
  mutable absl::Mutex mu_;
  absl::flat_hash_map<Key, Live> live_ ABSL_GUARDED_BY(mu_);
  size_t prune_at_ ABSL_GUARDED_BY(mu_) = 64;
};

}  // namespace ssm::server

#endif  // SSM_SERVER_SEQUENCES_H_
