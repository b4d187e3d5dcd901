#include "parallel.h"

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <deque>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

namespace ssm::internal {
namespace {

thread_local bool in_parallel_region = false;

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
    for (int i = 0; i < workers; ++i) threads_.emplace_back([this] { Loop(); });
  }
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

Pool& SharedPool() {
  static Pool* pool = new Pool(
      std::max(0, static_cast<int>(std::thread::hardware_concurrency()) - 1));
  return *pool;
}

}  // namespace

int Parallelism() { return SharedPool().workers() + 1; }

void ParallelFor(int64_t n, int64_t min_block,
                 absl::FunctionRef<void(int64_t, int64_t)> fn) {
  if (n <= 0) return;
  Pool& pool = SharedPool();
  const int threads = pool.workers() + 1;
  min_block = std::max<int64_t>(1, min_block);
  if (in_parallel_region || threads == 1 || n < 2 * min_block) {
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
  pool.Submit(job, static_cast<int>(std::min<int64_t>(pool.workers(), job->blocks - 1)));
  in_parallel_region = true;
  job->RunBlocks();
  in_parallel_region = false;
  std::unique_lock<std::mutex> lock(job->mu);
  job->cv.wait(lock, [&] { return job->done.load() == job->blocks; });
}

}  // namespace ssm::internal
