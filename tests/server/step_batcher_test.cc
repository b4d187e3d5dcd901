// The step batcher (step_batcher.h) without gRPC: chunks of many sessions
// handed in from many threads are stepped together and each gets exactly
// what SessionManager::Entry::Run gives it alone; groups (model, batch)
// never mix; a failing chunk fails alone; a stream alone never waits; no
// chunk waits much past the window; Shutdown runs what is gathered.

#include "server/step_batcher.h"

#include <atomic>
#include <cstring>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "server/log.h"
#include "server/model_catalog.h"
#include "server/session_manager.h"
#include "tests/server/grpc_server_fixture.h"

namespace ssm::server {
namespace {

using ::testing::HasSubstr;

// A stream as the batcher sees it: a slot, its chunk's buffers, and a
// notification for StepDone.
class FakeStream final : public StepBatcher::Waiter {
 public:
  explicit FakeStream(std::shared_ptr<SessionManager::Entry> entry) : entry_(std::move(entry)) {
    slot_.entry = entry_.get();
    slot_.waiter = this;
  }

  // Hands in `x` (batch x steps x d_input) and waits until it is stepped.
  absl::StatusOr<int64_t> Step(StepBatcher& batcher, std::vector<double> x, int steps) {
    x_ = std::move(x);
    y_.assign(static_cast<size_t>(entry_->batch()) * steps * entry_->d_output(), 0.0);
    slot_.x = x_;
    slot_.y = absl::MakeSpan(y_);
    slot_.steps = steps;
    done_ = std::make_unique<absl::Notification>();
    if (!batcher.Submit(&slot_)) {
      if (!done_->WaitForNotificationWithTimeout(absl::Seconds(30))) {
        return absl::DeadlineExceededError("the batcher never reported the chunk");
      }
    }
    return slot_.result;
  }

  void StepDone() override { done_->Notify(); }

  const std::vector<double>& y() const { return y_; }
  StepBatcher::Slot& slot() { return slot_; }
  SessionManager::Entry& entry() { return *entry_; }

 private:
  std::shared_ptr<SessionManager::Entry> entry_;
  StepBatcher::Slot slot_;
  std::vector<double> x_, y_;
  std::unique_ptr<absl::Notification> done_;
};

class StepBatcherTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() { SetLogEnabled(false); }
  static void TearDownTestSuite() { SetLogEnabled(true); }

  std::shared_ptr<SessionManager::Entry> Open(const std::string& model, int batch = 1) {
    std::shared_ptr<const Model> m = testing::ShippedModel(model);
    absl::StatusOr<std::shared_ptr<SessionManager::Entry>> e = sessions_.Add(
        model, 1, *Session::Create(m, batch), /*attached=*/true, SessionManager::Origin::kNew);
    EXPECT_TRUE(e.ok()) << e.status();
    return *e;
  }

  static std::vector<double> Input(int stream, int64_t position, int rows) {
    std::vector<double> x(rows);
    for (int i = 0; i < rows; ++i) x[i] = std::sin(0.05 * (position + i) + 0.7 * stream);
    return x;
  }

  SessionManager sessions_{SessionManager::Options{}};
};

// Many streams of one model, each a thread handing in single steps in
// lock-step: every output and position is the one a twin session stepped
// alone through Entry::Run gives, bit for bit; and the chunks were gathered
// (fewer passes than chunks).
TEST_F(StepBatcherTest, GatheredStreamsGetWhatEachGetsAlone) {
  StepBatcher::Options o;
  o.window = absl::Milliseconds(2);
  StepBatcher batcher(o);
  constexpr int kStreams = 24, kSteps = 40;
  std::vector<std::unique_ptr<FakeStream>> streams;
  std::vector<std::shared_ptr<SessionManager::Entry>> twins;
  for (int i = 0; i < kStreams; ++i) {
    streams.push_back(std::make_unique<FakeStream>(Open("s4-demo")));
    twins.push_back(Open("s4-demo"));
  }
  std::vector<std::vector<double>> outputs(kStreams);
  std::vector<std::thread> threads;
  std::atomic<int> failures{0};
  for (int i = 0; i < kStreams; ++i) {
    threads.emplace_back([&, i] {
      for (int t = 0; t < kSteps; ++t) {
        // Steps of 1, and now and then 3 (chunks of another length).
        const int steps = t % 7 == 3 ? 3 : 1;
        absl::StatusOr<int64_t> r =
            streams[i]->Step(batcher, Input(i, streams[i]->entry().position(), steps), steps);
        if (!r.ok()) {
          ++failures;
          return;
        }
        outputs[i].insert(outputs[i].end(), streams[i]->y().begin(), streams[i]->y().end());
      }
    });
  }
  for (std::thread& t : threads) t.join();
  ASSERT_EQ(failures.load(), 0);
  for (int i = 0; i < kStreams; ++i) {
    std::vector<double> alone;
    for (int t = 0; t < kSteps; ++t) {
      const int steps = t % 7 == 3 ? 3 : 1;
      std::vector<double> y(steps);
      ASSERT_TRUE(twins[i]->Run(Input(i, twins[i]->position(), steps), steps,
                                absl::MakeSpan(y), nullptr)
                      .ok());
      alone.insert(alone.end(), y.begin(), y.end());
    }
    ASSERT_EQ(outputs[i].size(), alone.size());
    EXPECT_EQ(std::memcmp(outputs[i].data(), alone.data(), alone.size() * sizeof(double)), 0)
        << "stream " << i;
    EXPECT_EQ(streams[i]->entry().position(), twins[i]->position());
    EXPECT_EQ(streams[i]->entry().Export().data, twins[i]->Export().data) << "stream " << i;
  }
  for (auto& s : streams) batcher.Leave(&s->slot());
  const StepBatcher::Stats stats = batcher.stats();
  EXPECT_EQ(stats.chunks, uint64_t{kStreams * kSteps});
  EXPECT_LT(stats.passes, stats.chunks);
}

// A stream alone never waits for company: once its cost is known its
// chunks run on the calling thread (Submit returns true), well inside the
// window.
TEST_F(StepBatcherTest, AStreamAloneRunsAtOnceOnItsThread) {
  StepBatcher::Options o;
  o.window = absl::Seconds(1);
  StepBatcher batcher(o);
  FakeStream s(Open("s4-demo"));
  ASSERT_TRUE(s.Step(batcher, Input(0, 0, 1), 1).ok());  // the cost is measured
  const absl::Time start = absl::Now();
  for (int t = 1; t < 20; ++t) ASSERT_TRUE(s.Step(batcher, Input(0, t, 1), 1).ok());
  EXPECT_LT(absl::Now() - start, absl::Milliseconds(500));
  EXPECT_GE(batcher.stats().inline_passes, 19u);
  batcher.Leave(&s.slot());
}

// With company expected that does not come (another member stream that is
// idle), a chunk waits at most about the window.
TEST_F(StepBatcherTest, NoChunkWaitsMuchPastTheWindow) {
  StepBatcher::Options o;
  o.window = absl::Milliseconds(50);
  StepBatcher batcher(o);
  FakeStream busy(Open("s4-demo")), idle(Open("s4-demo"));
  ASSERT_TRUE(idle.Step(batcher, Input(1, 0, 1), 1).ok());  // a member from now on
  ASSERT_TRUE(busy.Step(batcher, Input(0, 0, 1), 1).ok());
  // Arrivals close together (the batcher then expects company).
  for (int t = 1; t < 5; ++t) ASSERT_TRUE(busy.Step(batcher, Input(0, t, 1), 1).ok());
  const absl::Time start = absl::Now();
  ASSERT_TRUE(busy.Step(batcher, Input(0, 5, 1), 1).ok());
  EXPECT_LT(absl::Now() - start, absl::Milliseconds(50) + absl::Seconds(2));  // scheduling slack
  // Once the idle stream leaves, the busy one is everyone: no waiting.
  batcher.Leave(&idle.slot());
  const absl::Time after = absl::Now();
  for (int t = 6; t < 16; ++t) ASSERT_TRUE(busy.Step(batcher, Input(0, t, 1), 1).ok());
  EXPECT_LT(absl::Now() - after, absl::Milliseconds(10 * 50));
  batcher.Leave(&busy.slot());
}

// Sessions of two models, and of two batch sizes of one model, never share
// a pass; all step correctly.
TEST_F(StepBatcherTest, ModelsAndBatchesNeverMix) {
  StepBatcher::Options o;
  o.window = absl::Milliseconds(5);
  StepBatcher batcher(o);
  std::vector<std::unique_ptr<FakeStream>> streams;
  streams.push_back(std::make_unique<FakeStream>(Open("s4-demo")));
  streams.push_back(std::make_unique<FakeStream>(Open("s4-demo")));
  streams.push_back(std::make_unique<FakeStream>(Open("s4-demo", 2)));
  streams.push_back(std::make_unique<FakeStream>(Open("legt-delay")));
  std::vector<std::thread> threads;
  std::atomic<int> failures{0};
  for (size_t i = 0; i < streams.size(); ++i) {
    threads.emplace_back([&, i] {
      FakeStream& s = *streams[i];
      for (int t = 0; t < 10; ++t) {
        const int rows = s.entry().batch() * 2;
        if (!s.Step(batcher, Input(static_cast<int>(i), t * 2, rows), 2).ok()) ++failures;
      }
    });
  }
  for (std::thread& t : threads) t.join();
  EXPECT_EQ(failures.load(), 0);
  // Each pass holds one group's chunks: at least one pass for every round
  // of each of the three groups that has company (s4-demo batch 1) or not.
  const StepBatcher::Stats stats = batcher.stats();
  EXPECT_EQ(stats.chunks, 40u);
  EXPECT_GE(stats.passes, 30u);  // legt-delay's 10 and s4-demo batch 2's 10 always alone
  for (auto& s : streams) {
    EXPECT_EQ(s->entry().position(), 20);
    batcher.Leave(&s->slot());
  }
}

// A chunk that fails (a non-finite value inside the model) fails alone, in
// the same pass as the others, its session as it was; the others step.
TEST_F(StepBatcherTest, AFailingChunkFailsAlone) {
  StepBatcher::Options o;
  o.window = absl::Milliseconds(500);
  StepBatcher batcher(o);
  std::vector<std::unique_ptr<FakeStream>> streams;
  for (int i = 0; i < 4; ++i) streams.push_back(std::make_unique<FakeStream>(Open("s4-demo")));
  // One round: the four hand in together; huge: the stream whose input is
  // 1e308 (it overflows inside the model).
  auto round = [&](int huge) {
    std::vector<absl::StatusOr<int64_t>> results(4, int64_t{0});
    std::vector<std::thread> threads;
    std::atomic<int> ready{0};
    for (int i = 0; i < 4; ++i) {
      threads.emplace_back([&, i] {
        ++ready;
        while (ready.load() < 4) std::this_thread::yield();
        std::vector<double> x = Input(i, streams[i]->entry().position(), 1);
        if (i == huge) x[0] = 1e308;
        results[i] = streams[i]->Step(batcher, x, 1);
      });
    }
    for (std::thread& t : threads) t.join();
    return results;
  };
  // Rounds until the four are members that come together (the first ones
  // may run apart).
  for (int r = 0; r < 8; ++r) {
    for (const absl::StatusOr<int64_t>& result : round(-1)) ASSERT_TRUE(result.ok());
  }
  const std::string before = streams[2]->entry().Export().data;
  const uint64_t passes = batcher.stats().passes;
  std::vector<absl::StatusOr<int64_t>> results = round(2);
  for (int i : {0, 1, 3}) EXPECT_TRUE(results[i].ok()) << i << ": " << results[i].status();
  ASSERT_FALSE(results[2].ok());
  EXPECT_EQ(results[2].status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(results[2].status().message(), HasSubstr("non-finite"));
  EXPECT_EQ(streams[2]->entry().Export().data, before);
  EXPECT_EQ(streams[2]->entry().position(), 8);
  EXPECT_EQ(batcher.stats().passes, passes + 1);  // everyone was in: one pass
  for (auto& s : streams) batcher.Leave(&s->slot());
}

// Shutdown steps what is gathered (nobody waits forever), and a chunk
// handed in after it runs on the caller's thread.
TEST_F(StepBatcherTest, ShutdownRunsWhatIsGathered) {
  StepBatcher::Options o;
  o.window = absl::Seconds(30);
  StepBatcher batcher(o);
  FakeStream a(Open("s4-demo")), b(Open("s4-demo"));
  // b alone (at once, every time); then a joins, and b is expected back.
  for (int t = 0; t < 4; ++t) ASSERT_TRUE(b.Step(batcher, Input(1, t, 1), 1).ok());
  absl::StatusOr<int64_t> r = absl::UnknownError("not run");
  std::thread waiting([&] { r = a.Step(batcher, Input(0, 0, 1), 1); });
  absl::SleepFor(absl::Milliseconds(100));  // a waits for company (a window of 30 s)
  batcher.Shutdown();
  waiting.join();
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(*r, 1);
  EXPECT_TRUE(a.Step(batcher, Input(0, 1, 1), 1).ok());
  EXPECT_EQ(a.entry().position(), 2);
}

}  // namespace
}  // namespace ssm::server
