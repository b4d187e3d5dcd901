#include "server/step_batcher.h"

#include <algorithm>
#include <utility>

#include "absl/time/clock.h"
#include "ssm/threads.h"

namespace ssm::server {
namespace {

// Set while this thread reports a pass's chunks done: a pass that the
// streams it resumes close goes to the batcher's thread, so completions
// never nest.
thread_local int completing = 0;

}  // namespace

struct StepBatcher::Group {
  std::deque<Slot*> gathered;  // handed in, not yet taken into a pass
  absl::Time first_at;         // when the oldest gathered chunk came
  bool open = false;           // in open_ (gathered is not empty)
  int members = 0;             // streams that handed in a chunk and did not leave
  // Arrivals: the last one, and the time between two (an average that
  // moves by 1/8 of each new gap).
  absl::Time last_arrival = absl::InfinitePast();
  absl::Duration arrival_gap = absl::InfiniteDuration();
  // A pass's measured cost per chunk step (0: not measured yet).
  int64_t ns_per_step = 0;
};

StepBatcher::StepBatcher(Options options) : options_(options) {
  thread_ = std::thread([this] {
    ssm::NameThisThread("ssm-step-batch");
    Loop();
  });
}

StepBatcher::~StepBatcher() { Shutdown(); }

void StepBatcher::Shutdown() {
  {
    absl::MutexLock lock(&mu_);
    if (stopping_) return;
    stopping_ = true;
  }
  cv_.Signal();
  thread_.join();
}

bool StepBatcher::Submit(Slot* slot) {
  const absl::Time now = absl::Now();
  // A pass run here is gathered into the thread's own vector (no
  // allocation per pass once it has grown); only a thread that is not
  // completing a pass does that, so the vector is never reused while a
  // pass on it is being completed.
  thread_local std::vector<Slot*> here;
  std::vector<Slot*> at_shutdown;
  std::vector<Slot*>* run_on = nullptr;
  Group* g = nullptr;
  bool wake = false;
  {
    absl::MutexLock lock(&mu_);
    if (slot->group_ == nullptr) {
      std::unique_ptr<Group>& g = groups_[{slot->entry->model(), slot->entry->batch()}];
      if (g == nullptr) g = std::make_unique<Group>();
      slot->group_ = g.get();
      ++g->members;
    }
    g = slot->group_;
    if (g->last_arrival != absl::InfinitePast()) {
      const absl::Duration gap = now - g->last_arrival;
      g->arrival_gap = g->arrival_gap == absl::InfiniteDuration()
                           ? gap
                           : g->arrival_gap + (gap - g->arrival_gap) / 8;
    }
    g->last_arrival = now;
    if (g->gathered.empty()) g->first_at = now;
    g->gathered.push_back(slot);
    const int gathered = static_cast<int>(g->gathered.size());
    const bool everyone = gathered >= g->members;
    const bool full = gathered >= options_.max_batch;
    const bool late = now - g->first_at >= options_.window / 2;
    // Too little company within the window to be worth a wait (and, for a
    // pass the window closes, a hand-off to the batcher's thread): chunks
    // of this group come more than a quarter of a window apart on average.
    const bool sparse = g->arrival_gap > options_.window / 4;
    if (everyone || full || late || sparse || stopping_) {
      const size_t n = std::min<size_t>(g->gathered.size(), options_.max_batch);
      int64_t steps = 0;
      for (size_t i = 0; i < n; ++i) steps += g->gathered[i]->steps;
      const bool cheap = g->ns_per_step > 0 &&
                         absl::Nanoseconds(g->ns_per_step * steps) <= options_.inline_budget;
      if (cheap && completing == 0) {
        run_on = &here;
      } else if (stopping_) {
        run_on = &at_shutdown;  // nobody else would run it
      } else {
        Pass pass;
        pass.group = g;
        TakeLocked(g, now, &pass.slots);
        closed_.push_back(std::move(pass));
        wake = true;
      }
      if (run_on != nullptr) {
        TakeLocked(g, now, run_on);
        ++stats_.inline_passes;
      }
    } else if (!g->open) {
      g->open = true;
      open_.push_back(g);
      wake = true;  // a new deadline
    }
  }
  if (wake) cv_.Signal();
  if (run_on == nullptr) return false;
  Run(g, *run_on, slot);
  return true;
}

void StepBatcher::Leave(Slot* slot) {
  absl::MutexLock lock(&mu_);
  if (slot->group_ == nullptr) return;
  --slot->group_->members;
  slot->group_ = nullptr;
}

StepBatcher::Stats StepBatcher::stats() const {
  absl::MutexLock lock(&mu_);
  return stats_;
}

void StepBatcher::TakeLocked(Group* g, absl::Time now, std::vector<Slot*>* slots) {
  const size_t n = std::min<size_t>(g->gathered.size(), options_.max_batch);
  slots->assign(g->gathered.begin(), g->gathered.begin() + n);
  g->gathered.erase(g->gathered.begin(), g->gathered.begin() + n);
  if (g->gathered.empty()) {
    if (g->open) {
      g->open = false;
      open_.erase(std::find(open_.begin(), open_.end(), g));
    }
  } else {
    g->first_at = now;  // the rest wait (at most) a window of their own
    if (!g->open) {
      g->open = true;
      open_.push_back(g);
    }
  }
}

void StepBatcher::Run(Group* g, std::vector<Slot*>& slots, Slot* own) {
  // Chunks of one length per core call (almost always all of them).
  if (!std::is_sorted(slots.begin(), slots.end(),
                      [](const Slot* a, const Slot* b) { return a->steps < b->steps; })) {
    std::stable_sort(slots.begin(), slots.end(),
                     [](const Slot* a, const Slot* b) { return a->steps < b->steps; });
  }
  thread_local std::vector<SessionManager::Entry::Chunk> chunks;
  // One thread: splitting a pass of single steps across the core's pool
  // costs a wake-up and a wait (futex) per pass, and the other cores are
  // busy with the connections (measured: 17% of the server's samples in
  // context switches with the split, under 64 lock-step streams).
  ssm::ThreadLimit one_thread(1);
  const absl::Time start = absl::Now();
  int64_t total_steps = 0;
  for (size_t i = 0; i < slots.size();) {
    const int steps = slots[i]->steps;
    size_t j = i;
    chunks.clear();
    for (; j < slots.size() && slots[j]->steps == steps; ++j) {
      Slot* s = slots[j];
      chunks.push_back({s->entry, s->x, s->y, s->received, int64_t{0}});
    }
    SessionManager::Entry::RunBatch(absl::MakeSpan(chunks), steps);
    for (size_t k = i; k < j; ++k) slots[k]->result = std::move(chunks[k - i].result);
    total_steps += static_cast<int64_t>(j - i) * steps;
    i = j;
  }
  const absl::Time end = absl::Now();
  {
    absl::MutexLock lock(&mu_);
    const int64_t ns = absl::ToInt64Nanoseconds(end - start) / std::max<int64_t>(total_steps, 1);
    // Quick to follow a faster pass, slow to follow a slower one (a pass
    // merely preempted should not send the next ones off this thread).
    if (g->ns_per_step <= 0 || ns < g->ns_per_step) {
      g->ns_per_step = std::max<int64_t>(ns, 1);
    } else {
      g->ns_per_step += (ns - g->ns_per_step) / 8;
    }
    ++stats_.passes;
    stats_.chunks += slots.size();
  }
  ++completing;
  for (Slot* s : slots) {
    if (s != own) s->waiter->StepDone();  // s may be handed in again at once
  }
  --completing;
}

void StepBatcher::Loop() {
  std::vector<Slot*> taken;
  mu_.Lock();
  while (true) {
    if (!closed_.empty()) {
      Pass pass = std::move(closed_.front());
      closed_.pop_front();
      mu_.Unlock();
      Run(pass.group, pass.slots, nullptr);
      mu_.Lock();
      continue;
    }
    const absl::Time now = absl::Now();
    Group* due = nullptr;
    absl::Time earliest = absl::InfiniteFuture();
    for (Group* g : open_) {
      const absl::Time deadline = g->first_at + options_.window;
      if (deadline <= now || stopping_) {
        due = g;
        break;
      }
      earliest = std::min(earliest, deadline);
    }
    if (due != nullptr) {
      TakeLocked(due, now, &taken);
      mu_.Unlock();
      Run(due, taken, nullptr);
      mu_.Lock();
      continue;
    }
    if (stopping_) break;  // nothing gathered, nothing closed
    cv_.WaitWithDeadline(&mu_, earliest);
  }
  mu_.Unlock();
}

}  // namespace ssm::server
