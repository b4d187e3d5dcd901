// Gathers the short chunks of sessions of one model that arrive within a
// short window and steps them together (SessionManager::Entry::RunBatch,
// one pass of the model over all their rows), like Triton's sequence
// batcher but with every session's state kept where it is. gRPC-free: a
// stream hands in a chunk and is told when it has been stepped.
//
// Groups. Chunks gather per group: one loaded model version (its core
// model object) and batch size; sessions of different models, versions or
// batches never share a pass. Within a pass, chunks of different lengths
// run as separate core calls.
//
// When a group's gathered chunks run (a "pass"):
//   - at once, when every stream of the group has one gathered (a stream
//     alone never waits; lock-step streams all in run without waiting),
//     when `max_batch` are gathered, or when chunks of the group arrive
//     too rarely for company to come within the window (measured
//     inter-arrival time over half the window);
//   - otherwise when a chunk arrives at least half the window after the
//     first gathered one, or, if none does, `window` after it (so no chunk
//     waits longer than the window).
//
// Where a pass runs: on the thread that closed it (a gRPC thread handing in
// a chunk), unless its estimated time (the group's measured cost per step,
// following faster passes at once and slower ones by 1/8) is over
// `inline_budget`; passes closed by the window, and the costly ones, run on
// the batcher's own thread. Either way the passes run with one core thread
// (ssm::ThreadLimit): handing a pass's sessions to the core's other
// threads costs wake-ups the other cores, busy with the connections, do
// not repay. While a thread reports a pass's chunks done (their streams go
// on answering on it), passes their next chunks close go to the batcher's
// thread, so completions never nest.
//
// Lifetime: a Slot is a stream's place (one chunk in flight at a time);
// the stream must keep it until Leave. Shutdown (and the destructor) runs
// every chunk still gathered, then joins the thread; a chunk handed in
// after it runs at once on the caller's thread.
//
// Thread safety: Submit and Leave may be called from any thread; one mutex
// guards the groups, held for short bookkeeping only (never while a pass
// runs).

#ifndef SSM_SERVER_STEP_BATCHER_H_
#define SSM_SERVER_STEP_BATCHER_H_

#include <cstdint>
#include <deque>
#include <memory>
#include <optional>
#include <thread>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "server/session_manager.h"

namespace ssm::server {

class StepBatcher {
  struct Group;  // one model object and batch: its gathered chunks and streams

 public:
  struct Options {
    // The longest a chunk waits for company (> 0).
    absl::Duration window = absl::Microseconds(250);
    int max_batch = 64;  // chunks in one pass at most (>= 1)
    // A pass estimated to take at most this runs on the thread that closed
    // it; a longer one on the batcher's thread.
    absl::Duration inline_budget = absl::Milliseconds(1);
  };

  // Told when its chunk has been stepped (from any thread, once per chunk
  // that Submit did not finish itself).
  class Waiter {
   public:
    virtual void StepDone() = 0;

   protected:
    ~Waiter() = default;
  };

  // A stream's place in the gathering: the chunk it hands in (fill these,
  // then Submit) and its result.
  class Slot {
   public:
    SessionManager::Entry* entry = nullptr;  // the stream's session
    absl::Span<const double> x;              // batch x steps x d_input
    absl::Span<double> y;                    // batch x steps x d_output
    int steps = 0;                           // 1 .. Session::kConvChunkThreshold - 1
    std::optional<int64_t> received;
    Waiter* waiter = nullptr;
    // Set before the chunk is reported done: Entry::Run's result.
    absl::StatusOr<int64_t> result;

   private:
    friend class StepBatcher;
    Group* group_ = nullptr;  // set at the first Submit; a member of it until Leave
  };

  struct Stats {
    uint64_t passes = 0;         // passes run
    uint64_t chunks = 0;         // chunks stepped in them
    uint64_t inline_passes = 0;  // run on the thread that closed them
  };

  explicit StepBatcher(Options options);
  ~StepBatcher();  // Shutdown()
  StepBatcher(const StepBatcher&) = delete;
  StepBatcher& operator=(const StepBatcher&) = delete;
  void Shutdown();

  // Hands in the slot's chunk. True: it has been stepped already, on this
  // thread (its result is set; the waiter is not called). False: the
  // waiter's StepDone comes later, from another thread or after this
  // returns. The slot must have no chunk in flight, and its entry the same
  // model and batch as at its first Submit.
  bool Submit(Slot* slot);

  // The slot's stream is over (no chunk in flight): it is a member of its
  // group no more. Idempotent; a slot that never submitted needs none.
  void Leave(Slot* slot);

  Stats stats() const;
  const Options& options() const { return options_; }

 private:
  struct Pass {
    Group* group = nullptr;
    std::vector<Slot*> slots;
  };

  // Takes up to max_batch of the group's gathered chunks into `slots`.
  void TakeLocked(Group* group, absl::Time now, std::vector<Slot*>* slots)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Steps a pass of the group's chunks and reports them done (all but
  // `own`, which the caller reports).
  void Run(Group* group, std::vector<Slot*>& slots, Slot* own);
  void Loop();

  const Options options_;
  mutable absl::Mutex mu_;
  absl::flat_hash_map<std::pair<const ssm::Model*, int>, std::unique_ptr<Group>> groups_
      ABSL_GUARDED_BY(mu_);
  std::deque<Pass> closed_ ABSL_GUARDED_BY(mu_);   // for the batcher's thread
  std::vector<Group*> open_ ABSL_GUARDED_BY(mu_);  // groups with chunks gathered
  absl::CondVar cv_;  // the batcher's thread waits here
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  Stats stats_ ABSL_GUARDED_BY(mu_);
  std::thread thread_;
};

}  // namespace ssm::server

#endif  // SSM_SERVER_STEP_BATCHER_H_
