// The worker pool runs jobs, refuses past its queue bound, drains on
// shutdown, and keeps Math within its share of workers and queue.

#include "server/worker_pool.h"

#include <gtest/gtest.h>

#include <atomic>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"

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

using JobClass = WorkerPool::JobClass;

// Schedules a Math job that signals `started` and blocks until `release`.
void BlockingMath(WorkerPool& pool, absl::Notification& started, absl::Notification& release) {
  ASSERT_TRUE(pool.TrySchedule(
      [&] {
        started.Notify();
        release.WaitForNotification();
      },
      JobClass::kMath));
}

TEST(WorkerPoolTest, MathNeverTakesMoreThanItsShare) {
  WorkerPool pool(2, 10, /*math_threads=*/1, /*max_math_queue=*/4);
  absl::Notification first_started, second_started, release;
  BlockingMath(pool, first_started, release);
  first_started.WaitForNotification();
  BlockingMath(pool, second_started, release);
  // The second Math job waits though a worker is free...
  absl::SleepFor(absl::Milliseconds(50));
  EXPECT_FALSE(second_started.HasBeenNotified());
  // ...which inference gets at once.
  absl::Notification inference_ran;
  ASSERT_TRUE(pool.TrySchedule([&] { inference_ran.Notify(); }));
  EXPECT_TRUE(inference_ran.WaitForNotificationWithTimeout(absl::Seconds(10)));
  release.Notify();
  EXPECT_TRUE(second_started.WaitForNotificationWithTimeout(absl::Seconds(10)));
}

TEST(WorkerPoolTest, MathHasItsOwnQueueBound) {
  WorkerPool pool(2, /*max_queue=*/2, /*math_threads=*/1, /*max_math_queue=*/1);
  absl::Notification started, unused, release;
  BlockingMath(pool, started, release);
  started.WaitForNotification();
  BlockingMath(pool, unused, release);  // waits: the share is in use
  const uint64_t rejected = pool.rejected();
  EXPECT_FALSE(pool.TrySchedule([] {}, JobClass::kMath));
  EXPECT_EQ(pool.rejected(), rejected + 1);
  // Inference's places are untouched by the Math queue.
  absl::Notification ran;
  EXPECT_TRUE(pool.TrySchedule([&] { ran.Notify(); }));
  EXPECT_TRUE(ran.WaitForNotificationWithTimeout(absl::Seconds(10)));
  release.Notify();
}

TEST(WorkerPoolTest, ShutdownRunsQueuedMathToo) {
  std::atomic<int> done{0};
  {
    WorkerPool pool(2, 100, /*math_threads=*/1, /*max_math_queue=*/100);
    for (int i = 0; i < 50; ++i) {
      ASSERT_TRUE(pool.TrySchedule([&] { ++done; }, JobClass::kMath));
      ASSERT_TRUE(pool.TrySchedule([&] { ++done; }));
    }
  }
  EXPECT_EQ(done.load(), 100);
}

TEST(WorkerPoolTest, TheOldestRunnableJobGoesFirst) {
  WorkerPool pool(1, 10, /*math_threads=*/1, /*max_math_queue=*/10);
  absl::Notification started, release;
  ASSERT_TRUE(pool.TrySchedule([&] {
    started.Notify();
    release.WaitForNotification();
  }));
  started.WaitForNotification();
  absl::Mutex mu;
  std::vector<int> order;
  auto record = [&](int i) {
    absl::MutexLock lock(&mu);
    order.push_back(i);
  };
  ASSERT_TRUE(pool.TrySchedule([&] { record(1); }, JobClass::kMath));
  ASSERT_TRUE(pool.TrySchedule([&] { record(2); }));
  ASSERT_TRUE(pool.TrySchedule([&] { record(3); }, JobClass::kMath));
  ASSERT_TRUE(pool.TrySchedule([&] { record(4); }));
  release.Notify();
  pool.Shutdown();
  EXPECT_EQ(order, (std::vector<int>{1, 2, 3, 4}));
}

}  // namespace
}  // namespace ssm::server
