#include "parallel.h"

#include <pthread.h>
#include <sched.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <deque>
#include <memory>
#include <mutex>
#include <string_view>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "ssm/threads.h"

namespace ssm {
namespace internal {
namespace {

thread_local bool in_parallel_region = false;
// ThreadLimit's cap for loops started from this thread; 0: none.
thread_local int thread_limit = 0;

// One ParallelFor call: blocks are claimed through an atomic counter, so the
// caller and any number of workers share them without a queue per block.
struct Job {
  const absl::FunctionRef<void(int64_t, int64_t)>* fn;
  int64_t n, block, blocks;
  std::atomic<int64_t> next{0};
  std::atomic<int64_t> done{0};
  std::mutex mu;
  std::condition_variable cv;

  // Runs blocks until none are left; returns true if this call finished the
  // last block.
  void RunBlocks() {
    for (int64_t b; (b = next.fetch_add(1)) < blocks;) {
      const int64_t begin = b * block;
      (*fn)(begin, std::min(n, begin + block));
      if (done.fetch_add(1) + 1 == blocks) {
        std::lock_guard<std::mutex> lock(mu);
        cv.notify_all();
      }
    }
  }
};

class Pool {
 public:
  explicit Pool(int workers) {
    for (int i = 0; i < workers; ++i) {
      threads_.emplace_back([this] {
        NameThisThread("ssm-core");
        Loop();
      });
    }
  }
  // Runs what is queued (jobs whose blocks are all claimed return at once),
  // then joins. Never called from a worker: workers hold no reference to
  // their pool, only the callers of ParallelFor do.
  ~Pool() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    for (std::thread& t : threads_) t.join();
  }

  int workers() const { return static_cast<int>(threads_.size()); }

  void Submit(const std::shared_ptr<Job>& job, int copies) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      for (int i = 0; i < copies; ++i) queue_.push_back(job);
    }
    cv_.notify_all();
  }

 private:
  void Loop() {
    in_parallel_region = true;
    for (;;) {
      std::shared_ptr<Job> job;
      {
        std::unique_lock<std::mutex> lock(mu_);
        cv_.wait(lock, [this] { return stop_ || !queue_.empty(); });
        if (stop_ && queue_.empty()) return;
        job = std::move(queue_.front());
        queue_.pop_front();
      }
      job->RunBlocks();
    }
  }

  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::shared_ptr<Job>> queue_;
  bool stop_ = false;
  std::vector<std::thread> threads_;
};

// The current pool, replaced by SetThreads. A ParallelFor holds its own
// reference while it runs, so a replaced pool lives (and its workers serve
// that call) until the last call using it returns. Copying the pointer
// allocates nothing: the streaming step's no-allocation guarantee holds.
struct Shared {
  std::mutex mu;
  std::shared_ptr<Pool> pool;   // null until first needed or set
  std::atomic<int> threads{0};  // 0: not decided yet
};

Shared& State() {
  static Shared* shared = new Shared;
  return *shared;
}

int EnsureThreads() {
  Shared& s = State();
  int t = s.threads.load(std::memory_order_acquire);
  if (t > 0) return t;
  std::lock_guard<std::mutex> lock(s.mu);
  if (s.threads.load() == 0) s.threads.store(DefaultThreads(), std::memory_order_release);
  return s.threads.load();
}

std::shared_ptr<Pool> CurrentPool() {
  Shared& s = State();
  std::lock_guard<std::mutex> lock(s.mu);
  const int t = s.threads.load();
  if (s.pool == nullptr || s.pool->workers() != t - 1) s.pool = std::make_shared<Pool>(t - 1);
  return s.pool;
}

// Whole CPUs of a cgroup quota, rounded up; 0 when none is set or readable.
int CgroupCpuLimit() {
  double quota = -1, period = 0;
  if (std::FILE* f = std::fopen("/sys/fs/cgroup/cpu.max", "r")) {
    char q[32] = {0};
    if (std::fscanf(f, "%31s %lf", q, &period) == 2 && std::string_view(q) != "max") {
      quota = std::atof(q);
    }
    std::fclose(f);
  } else if (std::FILE* fq = std::fopen("/sys/fs/cgroup/cpu/cpu.cfs_quota_us", "r")) {
    if (std::fscanf(fq, "%lf", &quota) != 1) quota = -1;
    std::fclose(fq);
    if (std::FILE* fp = std::fopen("/sys/fs/cgroup/cpu/cpu.cfs_period_us", "r")) {
      if (std::fscanf(fp, "%lf", &period) != 1) period = 0;
      std::fclose(fp);
    }
  }
  if (quota <= 0 || period <= 0) return 0;
  return std::max(1, static_cast<int>(std::ceil(quota / period)));
}

}  // namespace

int Parallelism() { return EnsureThreads(); }

void ParallelFor(int64_t n, int64_t min_block, absl::FunctionRef<void(int64_t, int64_t)> fn) {
  if (n <= 0) return;
  min_block = std::max<int64_t>(1, min_block);
  if (in_parallel_region || n < 2 * min_block || EnsureThreads() == 1 || thread_limit == 1) {
    fn(0, n);
    return;
  }
  const std::shared_ptr<Pool> pool = CurrentPool();
  int threads = pool->workers() + 1;
  if (thread_limit > 0) threads = std::min(threads, thread_limit);
  if (threads == 1) {  // set to 1 meanwhile
    fn(0, n);
    return;
  }
  // A few blocks per thread balance uneven blocks without much overhead.
  const int64_t block = std::max(min_block, (n + 4 * threads - 1) / (4 * threads));
  auto job = std::make_shared<Job>();
  job->fn = &fn;
  job->n = n;
  job->block = block;
  job->blocks = (n + block - 1) / block;
  pool->Submit(job, static_cast<int>(std::min<int64_t>(threads - 1, job->blocks - 1)));
  in_parallel_region = true;
  job->RunBlocks();
  in_parallel_region = false;
  std::unique_lock<std::mutex> lock(job->mu);
  job->cv.wait(lock, [&] { return job->done.load() == job->blocks; });
}

}  // namespace internal

absl::Status SetThreads(int threads) {
  if (threads < 1) {
    return absl::InvalidArgumentError(absl::StrCat("threads must be >= 1, got ", threads));
  }
  internal::Shared& s = internal::State();
  std::shared_ptr<internal::Pool> old;
  {
    std::lock_guard<std::mutex> lock(s.mu);
    s.threads.store(threads, std::memory_order_release);
    // The next loop builds a pool of the new size; the old one is joined
    // here (outside the lock) unless a running loop still holds it.
    old = std::move(s.pool);
  }
  return absl::OkStatus();
}

int Threads() { return internal::EnsureThreads(); }

ThreadLimit::ThreadLimit(int threads) : previous_(internal::thread_limit) {
  internal::thread_limit = std::max(1, threads);
}

ThreadLimit::~ThreadLimit() { internal::thread_limit = previous_; }

int DefaultThreads() {
  int cpus = 0;
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof(set), &set) == 0) cpus = CPU_COUNT(&set);
  if (cpus <= 0) cpus = static_cast<int>(std::thread::hardware_concurrency());
  const int quota = internal::CgroupCpuLimit();
  if (quota > 0) cpus = std::min(cpus, quota);
  return std::max(1, cpus);
}

void NameThisThread(const char* name) {
  char cut[16];  // the kernel's limit, the terminating NUL included
  std::snprintf(cut, sizeof(cut), "%s", name);
  pthread_setname_np(pthread_self(), cut);
}

}  // namespace ssm
