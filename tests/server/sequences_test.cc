// Client-named sequences over the session registry (sequences.h): Triton's
// start / continue / end rules, their codes, idle expiry, owners, and chunk
// invariance against a whole Forward.

#include "server/sequences.h"

#include <cmath>
#include <memory>
#include <string>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "absl/strings/str_cat.h"
#include "grpc_server_fixture.h"
#include "server/log.h"
#include "server/model_catalog.h"
#include "server/session_manager.h"

namespace ssm::server {
namespace {

using ::testing::HasSubstr;

class FakeClock {
 public:
  absl::Time Now() const { return now_; }
  void Advance(absl::Duration d) { now_ += d; }

 private:
  absl::Time now_ = absl::FromUnixSeconds(1'700'000'000);
};

// batch x steps x 1 of sines, a different phase per sequence.
std::vector<double> Input(int batch, int steps, double phase = 0) {
  std::vector<double> x;
  for (int b = 0; b < batch; ++b) {
    for (int t = 0; t < steps; ++t) x.push_back(std::sin(0.07 * t + 0.9 * b + phase));
  }
  return x;
}

// Steps [t0, t1) of a [batch, steps, d] buffer.
std::vector<double> Steps(const std::vector<double>& x, int batch, int steps, int d, int t0,
                          int t1) {
  std::vector<double> out;
  for (int b = 0; b < batch; ++b) {
    for (int t = t0; t < t1; ++t) {
      for (int f = 0; f < d; ++f) out.push_back(x[(static_cast<size_t>(b) * steps + t) * d + f]);
    }
  }
  return out;
}

class SequencesTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() { SetLogEnabled(false); }
  static void TearDownTestSuite() { SetLogEnabled(true); }

  SequencesTest()
      : catalog_(testing::ShippedRepository()),
        sessions_(Options()),
        table_(&catalog_, &sessions_, Limits()) {
    s4_ = *catalog_.Find("s4-demo", 0);
    legt_ = *catalog_.Find("legt-delay", 0);
  }

  SessionManager::Options Options() {
    SessionManager::Options o;
    o.max_sessions = 8;
    o.ttl = absl::Seconds(10);
    o.clock = [this] { return clock_.Now(); };
    return o;
  }
  static RequestLimits Limits() {
    RequestLimits limits;
    limits.max_batch = 4;
    return limits;
  }

  // One request of a sequence; its outputs in *y.
  absl::StatusOr<int64_t> Run(const SequenceId& id, bool start, bool end,
                              const std::vector<double>& x, int batch, std::vector<double>* y,
                              const ServedModel* served = nullptr,
                              absl::string_view owner = "") {
    served = served != nullptr ? served : &s4_;
    const int d_in = served->model->d_input();
    const int steps = static_cast<int>(x.size()) / batch / d_in;
    y->assign(static_cast<size_t>(batch) * steps * served->model->d_output(), 0.0);
    SequenceRequest r;
    r.id = id;
    r.start = start;
    r.end = end;
    r.owner = owner;
    r.served = served;
    r.batch = batch;
    r.steps = steps;
    r.x = x;
    r.y = absl::MakeSpan(*y);
    r.batch_field = "inputs[0].shape[0]";
    return table_.Run(r);
  }

  int Sessions() const {
    const SessionManager::Stats s = sessions_.GetStats();
    return s.attached + s.detached;
  }

  FakeClock clock_;
  ModelCatalog catalog_;
  SessionManager sessions_;
  SequenceTable table_;
  ServedModel s4_;
  ServedModel legt_;
};

TEST_F(SequencesTest, AnySplitIntoRequestsGivesForwardsOutputs) {
  const int batch = 2, steps = 300;
  const std::vector<double> x = Input(batch, steps);
  std::vector<double> want(static_cast<size_t>(batch) * steps);
  ASSERT_TRUE(s4_.model->Forward(x, batch, steps, absl::MakeSpan(want)).ok());
  double scale = 0;
  for (double v : want) scale = std::max(scale, std::abs(v));

  // Single steps, short uneven chunks, chunks past the convolution
  // threshold, and one chunk with start and end together.
  const std::vector<std::vector<int>> splits = {
      {1, 1, 1, 5, 292}, {7, 64, 3, 100, 126}, {150, 150}, {300}, {2, 298}};
  uint64_t id = 1;
  for (const std::vector<int>& split : splits) {
    std::vector<double> got;
    int t = 0;
    for (size_t i = 0; i < split.size(); ++i) {
      const int t1 = t + split[i];
      std::vector<double> y;
      absl::StatusOr<int64_t> position =
          Run(SequenceId::Number(id), i == 0, i + 1 == split.size(),
              Steps(x, batch, steps, 1, t, t1), batch, &y);
      ASSERT_TRUE(position.ok()) << position.status();
      EXPECT_EQ(*position, t1);
      // Outputs come back per request: stitch them in time.
      std::vector<double> joined;
      for (int b = 0; b < batch; ++b) {
        for (int s = 0; s < steps; ++s) {
          if (s < t) {
            joined.push_back(got[static_cast<size_t>(b) * t + s]);
          } else if (s < t1) {
            joined.push_back(y[static_cast<size_t>(b) * (t1 - t) + (s - t)]);
          }
        }
      }
      got = joined;
      t = t1;
    }
    ASSERT_EQ(got.size(), want.size());
    for (size_t i = 0; i < want.size(); ++i) {
      ASSERT_NEAR(got[i], want[i], 1e-9 * scale) << "split " << id << " at " << i;
    }
    ++id;
  }
  // Every sequence ended: no session is left.
  EXPECT_EQ(Sessions(), 0);
  EXPECT_EQ(table_.size(), 0);
}

TEST_F(SequencesTest, StringAndNumberIdsAreDistinctSequences) {
  std::vector<double> y;
  ASSERT_TRUE(Run(SequenceId::Number(42), true, false, Input(1, 5), 1, &y).ok());
  ASSERT_TRUE(Run(SequenceId::String("42"), true, false, Input(1, 3), 1, &y).ok());
  EXPECT_EQ(Sessions(), 2);
  absl::StatusOr<int64_t> number = Run(SequenceId::Number(42), false, false, Input(1, 1), 1, &y);
  absl::StatusOr<int64_t> text = Run(SequenceId::String("42"), false, true, Input(1, 1), 1, &y);
  ASSERT_TRUE(number.ok() && text.ok());
  EXPECT_EQ(*number, 6);
  EXPECT_EQ(*text, 4);
  EXPECT_EQ(Sessions(), 1);
}

TEST_F(SequencesTest, AContinueOrEndOfAnUnknownSequenceIsInvalidArgument) {
  std::vector<double> y;
  for (bool end : {false, true}) {
    absl::StatusOr<int64_t> r = Run(SequenceId::Number(9), false, end, Input(1, 4), 1, &y);
    EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(r.status().message(), HasSubstr("sequence 9 of model 's4-demo' version 1 is not "
                                                "active"));
    EXPECT_THAT(r.status().message(), HasSubstr("must set sequence_start"));
  }
  absl::StatusOr<int64_t> s =
      Run(SequenceId::String("a\nb"), false, false, Input(1, 4), 1, &y);
  EXPECT_EQ(s.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.status().message(), HasSubstr("sequence \"a\\nb\""));  // echoed, escaped
  EXPECT_EQ(Sessions(), 0);

  // Ended is as unknown.
  ASSERT_TRUE(Run(SequenceId::Number(3), true, false, Input(1, 4), 1, &y).ok());
  ASSERT_TRUE(Run(SequenceId::Number(3), false, true, Input(1, 4), 1, &y).ok());
  EXPECT_EQ(Run(SequenceId::Number(3), false, false, Input(1, 4), 1, &y).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST_F(SequencesTest, AStartOnALiveIdEndsThePreviousSequence) {
  std::vector<double> y1, y2, fresh;
  ASSERT_TRUE(Run(SequenceId::Number(5), true, false, Input(1, 50, 1.0), 1, &y1).ok());
  ASSERT_EQ(Sessions(), 1);
  // The restart runs from a zero state: its outputs are those of a fresh
  // sequence, not a continuation.
  absl::StatusOr<int64_t> restarted =
      Run(SequenceId::Number(5), true, false, Input(1, 20, 2.0), 1, &y2);
  ASSERT_TRUE(restarted.ok()) << restarted.status();
  EXPECT_EQ(*restarted, 20);
  EXPECT_EQ(Sessions(), 1);  // the previous one is closed
  ASSERT_TRUE(Run(SequenceId::Number(77), true, true, Input(1, 20, 2.0), 1, &fresh).ok());
  EXPECT_EQ(y2, fresh);
  absl::StatusOr<int64_t> next = Run(SequenceId::Number(5), false, false, Input(1, 3), 1, &y2);
  ASSERT_TRUE(next.ok());
  EXPECT_EQ(*next, 23);
}

TEST_F(SequencesTest, StartAndEndTogetherHoldNoSessionAndEndALiveOne) {
  std::vector<double> y;
  ASSERT_TRUE(Run(SequenceId::Number(8), true, true, Input(1, 10), 1, &y).ok());
  EXPECT_EQ(Sessions(), 0);
  ASSERT_TRUE(Run(SequenceId::Number(8), true, false, Input(1, 10), 1, &y).ok());
  EXPECT_EQ(Sessions(), 1);
  ASSERT_TRUE(Run(SequenceId::Number(8), true, true, Input(1, 10), 1, &y).ok());
  EXPECT_EQ(Sessions(), 0);
  EXPECT_EQ(Run(SequenceId::Number(8), false, false, Input(1, 1), 1, &y).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST_F(SequencesTest, IdleSequencesExpireAfterTheTtl) {
  std::vector<double> y;
  ASSERT_TRUE(Run(SequenceId::Number(1), true, false, Input(1, 4), 1, &y).ok());
  clock_.Advance(absl::Seconds(9));
  ASSERT_TRUE(Run(SequenceId::Number(1), false, false, Input(1, 4), 1, &y).ok());  // restarts the clock
  clock_.Advance(absl::Seconds(9));
  ASSERT_TRUE(Run(SequenceId::Number(1), false, false, Input(1, 4), 1, &y).ok());
  clock_.Advance(absl::Seconds(10));
  absl::StatusOr<int64_t> late = Run(SequenceId::Number(1), false, false, Input(1, 4), 1, &y);
  EXPECT_EQ(late.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(late.status().message(), HasSubstr("idle longer than --session_ttl=10s"));
  EXPECT_EQ(Sessions(), 0);
  EXPECT_EQ(table_.size(), 0);
  // The id may start again.
  EXPECT_TRUE(Run(SequenceId::Number(1), true, false, Input(1, 4), 1, &y).ok());
}

TEST_F(SequencesTest, ExpiredSequencesArePrunedFromTheTable) {
  SessionManager::Options o = Options();
  o.max_sessions = 1000;
  SessionManager sessions(o);
  SequenceTable table(&catalog_, &sessions, Limits());
  auto start = [&](uint64_t id) {
    const std::vector<double> x = Input(1, 1);
    std::vector<double> y(3);
    SequenceRequest r;
    r.id = SequenceId::Number(id);
    r.start = true;
    r.served = &legt_;
    r.batch = 1;
    r.steps = 1;
    r.x = x;
    r.y = absl::MakeSpan(y);
    return table.Run(r);
  };
  for (uint64_t id = 1; id <= 63; ++id) ASSERT_TRUE(start(id).ok());
  EXPECT_EQ(table.size(), 63);
  clock_.Advance(absl::Seconds(11));  // all of them expire
  for (uint64_t id = 100; id < 110; ++id) ASSERT_TRUE(start(id).ok());
  EXPECT_EQ(table.size(), 10);
}

TEST_F(SequencesTest, PositionIsTheLiveSequencesAndDoesNotCountAsActivity) {
  std::vector<double> y;
  const SequenceId id = SequenceId::String("p");
  EXPECT_EQ(table_.Position("", s4_, id), std::nullopt);
  ASSERT_TRUE(Run(id, true, false, Input(2, 7), 2, &y).ok());
  EXPECT_EQ(table_.Position("", s4_, id), 7);
  ASSERT_TRUE(Run(id, false, false, Input(2, 5), 2, &y).ok());
  EXPECT_EQ(table_.Position("", s4_, id), 12);
  // A refused continue (the wrong batch) moves nothing.
  ASSERT_FALSE(Run(id, false, false, Input(1, 5), 1, &y).ok());
  EXPECT_EQ(table_.Position("", s4_, id), 12);
  // Another caller's, another model's and another id's are not this one.
  EXPECT_EQ(table_.Position("bob", s4_, id), std::nullopt);
  EXPECT_EQ(table_.Position("", legt_, id), std::nullopt);
  EXPECT_EQ(table_.Position("", s4_, SequenceId::Number(1)), std::nullopt);
  // Asking does not keep the sequence alive.
  clock_.Advance(absl::Seconds(9));
  EXPECT_EQ(table_.Position("", s4_, id), 12);
  clock_.Advance(absl::Seconds(1));
  EXPECT_EQ(table_.Position("", s4_, id), std::nullopt);
  // An ended sequence has none.
  ASSERT_TRUE(Run(id, true, false, Input(2, 3), 2, &y).ok());
  ASSERT_TRUE(Run(id, false, true, Input(2, 3), 2, &y).ok());
  EXPECT_EQ(table_.Position("", s4_, id), std::nullopt);
}

TEST_F(SequencesTest, AFailedRequestChangesNothing) {
  // legt-delay reads its input back: an input beyond float32's range (the
  // sessions run in double) gives an output float32 cannot carry, which
  // the session refuses without advancing.
  std::vector<double> y, good;
  ASSERT_TRUE(Run(SequenceId::Number(4), true, false, Input(1, 70), 1, &y, &legt_).ok());
  const std::vector<double> huge(100, 1e300);
  // A failing continue: the state is as before.
  absl::StatusOr<int64_t> failed = Run(SequenceId::Number(4), false, false, huge, 1, &y, &legt_);
  ASSERT_FALSE(failed.ok());
  EXPECT_EQ(failed.status().code(), absl::StatusCode::kInvalidArgument);
  // A failing restart: the live sequence is left as it was.
  failed = Run(SequenceId::Number(4), true, false, huge, 1, &y, &legt_);
  ASSERT_FALSE(failed.ok());
  EXPECT_EQ(Sessions(), 1);
  absl::StatusOr<int64_t> next =
      Run(SequenceId::Number(4), false, false, Input(1, 30, 0.5), 1, &y, &legt_);
  ASSERT_TRUE(next.ok()) << next.status();
  EXPECT_EQ(*next, 100);
  // ...with the outputs of the sequence that never saw the failures.
  ASSERT_TRUE(Run(SequenceId::Number(6), true, false, Input(1, 70), 1, &good, &legt_).ok());
  ASSERT_TRUE(Run(SequenceId::Number(6), false, false, Input(1, 30, 0.5), 1, &good, &legt_).ok());
  EXPECT_EQ(y, good);
}

TEST_F(SequencesTest, BatchIsFixedByTheStart) {
  std::vector<double> y;
  ASSERT_TRUE(Run(SequenceId::Number(2), true, false, Input(2, 5), 2, &y).ok());
  absl::StatusOr<int64_t> r = Run(SequenceId::Number(2), false, false, Input(1, 5), 1, &y);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(r.status().message(),
              HasSubstr("inputs[0].shape[0] = 1 but sequence 2 started with batch 2"));
  EXPECT_EQ(Run(SequenceId::Number(3), true, false, Input(5, 5), 5, &y).status().code(),
            absl::StatusCode::kResourceExhausted);
}

TEST_F(SequencesTest, CallersHaveTheirOwnSequences) {
  std::vector<double> y;
  ASSERT_TRUE(Run(SequenceId::Number(1), true, false, Input(1, 5), 1, &y, nullptr, "alice").ok());
  // bob's sequence 1 is not alice's: unknown to him, and his own start does
  // not end hers.
  EXPECT_EQ(Run(SequenceId::Number(1), false, false, Input(1, 5), 1, &y, nullptr, "bob")
                .status()
                .code(),
            absl::StatusCode::kInvalidArgument);
  ASSERT_TRUE(Run(SequenceId::Number(1), true, false, Input(1, 2), 1, &y, nullptr, "bob").ok());
  absl::StatusOr<int64_t> hers =
      Run(SequenceId::Number(1), false, false, Input(1, 1), 1, &y, nullptr, "alice");
  ASSERT_TRUE(hers.ok());
  EXPECT_EQ(*hers, 6);
  EXPECT_EQ(Sessions(), 2);
}

TEST_F(SequencesTest, ModelsHaveTheirOwnSequences) {
  std::vector<double> y;
  ASSERT_TRUE(Run(SequenceId::Number(1), true, false, Input(1, 5), 1, &y, &s4_).ok());
  EXPECT_EQ(Run(SequenceId::Number(1), false, false, Input(1, 5), 1, &y, &legt_).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST_F(SequencesTest, SessionLimitsApplyToStarts) {
  std::vector<double> y;
  for (uint64_t id = 1; id <= 8; ++id) {
    ASSERT_TRUE(Run(SequenceId::Number(id), true, false, Input(1, 1), 1, &y).ok());
  }
  absl::StatusOr<int64_t> r = Run(SequenceId::Number(9), true, false, Input(1, 1), 1, &y);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(r.status().message(), HasSubstr("--max_sessions=8"));
  // A one-request sequence needs no session: it still runs.
  EXPECT_TRUE(Run(SequenceId::Number(9), true, true, Input(1, 1), 1, &y).ok());
}

TEST_F(SequencesTest, MalformedRequests) {
  std::vector<double> y;
  EXPECT_EQ(Run(SequenceId::Number(0), true, false, Input(1, 1), 1, &y).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Run(SequenceId::String(""), true, false, Input(1, 1), 1, &y).status().code(),
            absl::StatusCode::kInvalidArgument);
  absl::StatusOr<int64_t> long_id = Run(SequenceId::String(std::string(kMaxSequenceIdBytes + 1, 'x')),
                                        true, false, Input(1, 1), 1, &y);
  EXPECT_EQ(long_id.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(long_id.status().message(), HasSubstr("at most 256"));
  EXPECT_EQ(Sessions(), 0);
}

}  // namespace
}  // namespace ssm::server
