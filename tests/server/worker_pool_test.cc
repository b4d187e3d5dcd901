// The worker pool runs jobs, refuses past its queue bound, and drains on
// shutdown.

#include <atomic>
#include <vector>

#include <gtest/gtest.h>

#include "absl/synchronization/notification.h"
#include "server/worker_pool.h"

namespace ssm::server {
namespace {

TEST(WorkerPoolTest, RunsEveryJob) {
  std::atomic<int> done{0};
  {
    WorkerPool pool(2, 1000);
    EXPECT_EQ(pool.threads(), 2);
    for (int i = 0; i < 500; ++i) ASSERT_TRUE(pool.TrySchedule([&] { ++done; }));
  }  // the destructor drains
  EXPECT_EQ(done.load(), 500);
}

TEST(WorkerPoolTest, RefusesPastTheQueueBound) {
  WorkerPool pool(1, 2);
  absl::Notification started, release;
  ASSERT_TRUE(pool.TrySchedule([&] {
    started.Notify();
    release.WaitForNotification();
  }));
  started.WaitForNotification();  // the only worker is busy now
  std::atomic<int> ran{0};
  EXPECT_TRUE(pool.TrySchedule([&] { ++ran; }));
  EXPECT_TRUE(pool.TrySchedule([&] { ++ran; }));
  EXPECT_EQ(pool.queued(), 2);
  EXPECT_FALSE(pool.TrySchedule([&] { ++ran; }));
  EXPECT_EQ(pool.rejected(), 1u);
  release.Notify();
  pool.Shutdown();
  EXPECT_EQ(ran.load(), 2);
  // After shutdown nothing is accepted.
  EXPECT_FALSE(pool.TrySchedule([&] { ++ran; }));
}

TEST(WorkerPoolTest, ZeroQueueRunsOnlyOnIdleWorkers) {
  WorkerPool pool(1, 0);
  absl::Notification started, release;
  // Wait until the worker is idle and waiting, so the first job is taken.
  while (!pool.TrySchedule([&] {
    started.Notify();
    release.WaitForNotification();
  })) {
  }
  started.WaitForNotification();
  EXPECT_FALSE(pool.TrySchedule([] {}));
  release.Notify();
}

TEST(WorkerPoolTest, JobsMaySchedule) {
  std::atomic<int> done{0};
  WorkerPool pool(2, 10);
  absl::Notification finished;
  ASSERT_TRUE(pool.TrySchedule([&] {
    ++done;
    EXPECT_TRUE(pool.TrySchedule([&] {
      ++done;
      finished.Notify();
    }));
  }));
  finished.WaitForNotification();
  EXPECT_EQ(done.load(), 2);
}

}  // namespace
}  // namespace ssm::server
