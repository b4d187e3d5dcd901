// The core's parallelism is the embedding program's choice (ssm/threads.h):
// SetThreads decides how many threads a parallel loop uses, the process's
// worker threads follow it, and it may change while loops run.

#include "ssm/threads.h"

#include <gtest/gtest.h>
#include <sched.h>

#include <atomic>
#include <filesystem>
#include <fstream>
#include <set>
#include <string>
#include <thread>

#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "parallel.h"

namespace ssm {
namespace {

// The threads that ran blocks of one loop whose blocks each take a while,
// so every thread the loop may use gets some.
std::set<std::thread::id> ThreadsOfOneLoop() {
  absl::Mutex mu;
  std::set<std::thread::id> ids;
  internal::ParallelFor(48, 1, [&](int64_t, int64_t) {
    {
      absl::MutexLock lock(&mu);
      ids.insert(std::this_thread::get_id());
    }
    absl::SleepFor(absl::Milliseconds(2));
  });
  return ids;
}

int TasksOfThisProcess() {
  int n = 0;
  for (const auto& unused : std::filesystem::directory_iterator("/proc/self/task")) {
    (void)unused;
    ++n;
  }
  return n;
}

// How many of this process's threads are named `name` now.
int TasksNamed(const std::string& name) {
  int n = 0;
  for (const auto& task : std::filesystem::directory_iterator("/proc/self/task")) {
    std::ifstream comm(task.path() / "comm");
    std::string line;
    if (std::getline(comm, line) && line == name) ++n;
  }
  return n;
}

class ThreadsTest : public ::testing::Test {
 protected:
  ~ThreadsTest() override { EXPECT_TRUE(SetThreads(DefaultThreads()).ok()); }
};

TEST_F(ThreadsTest, ALoopUsesExactlyTheThreadsSet) {
  for (int threads : {3, 1, 2, 4}) {
    ASSERT_TRUE(SetThreads(threads).ok());
    EXPECT_EQ(Threads(), threads);
    EXPECT_EQ(static_cast<int>(ThreadsOfOneLoop().size()), threads) << "threads " << threads;
  }
}

TEST_F(ThreadsTest, TheProcessHoldsOneWorkerPerThreadBeyondTheCaller) {
  ASSERT_TRUE(SetThreads(1).ok());
  ThreadsOfOneLoop();
  const int base = TasksOfThisProcess();
  ASSERT_TRUE(SetThreads(5).ok());
  ThreadsOfOneLoop();
  EXPECT_EQ(TasksOfThisProcess(), base + 4);
  // Shrinking joins the old workers.
  ASSERT_TRUE(SetThreads(2).ok());
  ThreadsOfOneLoop();
  EXPECT_EQ(TasksOfThisProcess(), base + 1);
}

TEST_F(ThreadsTest, RefusesFewerThanOneAndKeepsTheCount) {
  ASSERT_TRUE(SetThreads(3).ok());
  const absl::Status status = SetThreads(0);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(SetThreads(-4).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Threads(), 3);
}

TEST_F(ThreadsTest, ChangingTheCountWhileLoopsRunLosesNoBlock) {
  std::atomic<bool> stop{false};
  std::thread flipper([&] {
    for (int i = 0; !stop.load(); ++i) {
      EXPECT_TRUE(SetThreads(1 + i % 4).ok());
      absl::SleepFor(absl::Microseconds(300));
    }
  });
  for (int round = 0; round < 300; ++round) {
    std::atomic<int64_t> sum{0};
    internal::ParallelFor(1000, 7, [&](int64_t begin, int64_t end) {
      int64_t s = 0;
      for (int64_t i = begin; i < end; ++i) s += i;
      sum.fetch_add(s);
    });
    ASSERT_EQ(sum.load(), 999 * 1000 / 2) << "round " << round;
  }
  stop = true;
  flipper.join();
}

TEST_F(ThreadsTest, AThreadLimitCapsLoopsStartedFromItsThreadOnly) {
  ASSERT_TRUE(SetThreads(4).ok());
  {
    ThreadLimit one(1);
    EXPECT_EQ(ThreadsOfOneLoop().size(), 1u);
    {
      ThreadLimit two(2);
      EXPECT_EQ(ThreadsOfOneLoop().size(), 2u);
    }
    EXPECT_EQ(ThreadsOfOneLoop().size(), 1u);
    // Another thread is not limited.
    size_t elsewhere = 0;
    std::thread other([&] { elsewhere = ThreadsOfOneLoop().size(); });
    other.join();
    EXPECT_EQ(elsewhere, 4u);
  }
  EXPECT_EQ(ThreadsOfOneLoop().size(), 4u);
}

TEST_F(ThreadsTest, DefaultIsTheCpusThisThreadMayUse) {
  cpu_set_t saved;
  ASSERT_EQ(sched_getaffinity(0, sizeof(saved), &saved), 0);
  const int allowed = CPU_COUNT(&saved);
  EXPECT_GE(DefaultThreads(), 1);
  EXPECT_LE(DefaultThreads(), allowed);
  // Pinned to one CPU, the default is one thread.
  cpu_set_t one;
  CPU_ZERO(&one);
  for (int cpu = 0; cpu < CPU_SETSIZE; ++cpu) {
    if (CPU_ISSET(cpu, &saved)) {
      CPU_SET(cpu, &one);
      break;
    }
  }
  ASSERT_EQ(sched_setaffinity(0, sizeof(one), &one), 0);
  EXPECT_EQ(DefaultThreads(), 1);
  ASSERT_EQ(sched_setaffinity(0, sizeof(saved), &saved), 0);
}

TEST_F(ThreadsTest, WorkersAreNamedAndLongNamesAreCut) {
  ASSERT_TRUE(SetThreads(3).ok());
  ThreadsOfOneLoop();
  EXPECT_EQ(TasksNamed("ssm-core"), 2);

  std::string seen;
  std::thread named([&seen] {
    NameThisThread("ssm-a-name-longer-than-the-kernel-keeps");
    std::ifstream comm("/proc/thread-self/comm");
    std::getline(comm, seen);
  });
  named.join();
  EXPECT_EQ(seen, "ssm-a-name-long");  // 15 bytes
}

}  // namespace
}  // namespace ssm
