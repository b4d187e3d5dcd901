// Durable sessions (session_store.h, the store side of session_manager.h)
// against a real redis-server started by the tests: the record format, the
// lease and its fencing, expiry, and two in-process "replicas" (two
// session managers sharing one store) handing sessions to each other.

#include "server/session_store.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "server/log.h"
#include "server/model_catalog.h"
#include "server/sequences.h"
#include "server/session_manager.h"
#include "server/session_open.h"
#include "ssm/model.h"
#include "ssm/model_spec.h"
#include "ssm/session.h"
#include "tests/common/redis_process.h"

namespace ssm::server {
namespace {

using ssm::testing::RedisProcess;
using ::testing::HasSubstr;

TEST(StoredSessionTest, RecordsRoundTripAndBadOnesAreDataLoss) {
  StoredSession s{"alice", "mem", 3, 17, std::string("SSMSNAP\0 bytes", 14)};
  const std::string bytes = EncodeStoredSession(s);
  absl::StatusOr<StoredSession> back = DecodeStoredSession(bytes);
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->owner, "alice");
  EXPECT_EQ(back->model, "mem");
  EXPECT_EQ(back->version, 3);
  EXPECT_EQ(back->position, 17);
  EXPECT_EQ(back->snapshot, s.snapshot);
  for (const std::string& bad :
       {std::string(), std::string("garbage"), bytes.substr(0, bytes.size() - 1), bytes + "x",
        std::string("SSMREC1\0\xff\xff\xff\xff", 12)}) {
    EXPECT_EQ(DecodeStoredSession(bad).status().code(), absl::StatusCode::kDataLoss);
  }
}

TEST(RedisUrlTest, BadUrlsAndAnUnreachableStoreAreRefused) {
  for (const char* url :
       {"http://x:1", "redis://", "redis://host", "redis://h:0", "redis://h:1/x"}) {
    EXPECT_EQ(OpenRedisStore(url, absl::Seconds(1)).status().code(),
              absl::StatusCode::kInvalidArgument)
        << url;
  }
  // A port nobody listens on (the store is refused at start-up).
  absl::StatusOr<std::unique_ptr<RedisProcess>> redis = RedisProcess::Start();
  ASSERT_TRUE(redis.ok()) << redis.status();
  const std::string url = (*redis)->url();
  (*redis)->Stop();
  EXPECT_EQ(OpenRedisStore(url, absl::Seconds(1)).status().code(), absl::StatusCode::kUnavailable);
}

class RedisStoreTest : public ::testing::Test {
 protected:
  void SetUp() override {
    absl::StatusOr<std::unique_ptr<RedisProcess>> redis = RedisProcess::Start();
    ASSERT_TRUE(redis.ok()) << redis.status();
    redis_ = *std::move(redis);
    absl::StatusOr<std::unique_ptr<SessionStore>> store =
        OpenRedisStore(redis_->url(), absl::Seconds(1));
    ASSERT_TRUE(store.ok()) << store.status();
    store_ = *std::move(store);
  }

  // A redis-cli command against the test's server.
  int Cli(const std::string& args) {
    return std::system(
        absl::StrCat("redis-cli -p ", redis_->port(), " ", args, " >/dev/null").c_str());
  }
  // Its output, trailing newline dropped.
  std::string CliOutput(const std::string& args) {
    FILE* out = popen(absl::StrCat("redis-cli -p ", redis_->port(), " ", args).c_str(), "r");
    if (out == nullptr) return "popen failed";
    std::string text;
    char buffer[256];
    while (fgets(buffer, sizeof(buffer), out) != nullptr) text += buffer;
    pclose(out);
    while (!text.empty() && text.back() == '\n') text.pop_back();
    return text;
  }

  std::unique_ptr<RedisProcess> redis_;
  std::unique_ptr<SessionStore> store_;
};

// A held session's record lives as long as its lease is renewed, even
// when nothing new is written; a renewal by anyone else extends nothing.
TEST_F(RedisStoreTest, RenewingTheLeaseKeepsTheRecord) {
  const std::string id = "00112233445566778899aabbccddeeff";
  ASSERT_TRUE(*store_->AcquireLease(id, "a", absl::Seconds(10)));
  ASSERT_TRUE(
      store_->Put(id, "a", StoredSession{"", "mem", 1, 5, "x"}, absl::Milliseconds(400)).ok());
  EXPECT_FALSE(*store_->RenewLease(id, "b", absl::Seconds(10), absl::Seconds(10)));
  absl::SleepFor(absl::Milliseconds(200));
  EXPECT_TRUE(*store_->RenewLease(id, "a", absl::Seconds(10), absl::Seconds(10)));
  absl::SleepFor(absl::Milliseconds(400));  // past the write's expiry
  EXPECT_TRUE(store_->Get(id)->has_value());
  ASSERT_TRUE(store_->ReleaseLease(id, "a").ok());
  // Without renewals the record goes with its expiry.
  const std::string other = "ffeeddccbbaa99887766554433221100";
  ASSERT_TRUE(*store_->AcquireLease(other, "a", absl::Seconds(10)));
  ASSERT_TRUE(
      store_->Put(other, "a", StoredSession{"", "mem", 1, 5, "x"}, absl::Milliseconds(200)).ok());
  absl::SleepFor(absl::Milliseconds(400));
  EXPECT_FALSE(store_->Get(other)->has_value());
}

TEST_F(RedisStoreTest, OneHolderAtATimeAndWritesAreFencedByTheLease) {
  const std::string id = "0123456789abcdef0123456789abcdef";
  const StoredSession record{"", "mem", 1, 5, "snapshot bytes"};
  EXPECT_TRUE(*store_->AcquireLease(id, "a", absl::Seconds(10)));
  EXPECT_TRUE(*store_->AcquireLease(id, "a", absl::Seconds(10)));  // ours: renewed
  EXPECT_FALSE(*store_->AcquireLease(id, "b", absl::Seconds(10)));
  EXPECT_TRUE(*store_->RenewLease(id, "a", absl::Seconds(10), absl::Seconds(10)));
  EXPECT_FALSE(*store_->RenewLease(id, "b", absl::Seconds(10), absl::Seconds(10)));
  EXPECT_EQ(store_->Put(id, "b", record, absl::Seconds(10)).code(),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_FALSE(store_->Get(id)->has_value());
  ASSERT_TRUE(store_->Put(id, "a", record, absl::Seconds(10)).ok());
  absl::StatusOr<std::optional<StoredSession>> got = store_->Get(id);
  ASSERT_TRUE(got.ok() && got->has_value());
  EXPECT_EQ((*got)->position, 5);
  EXPECT_EQ(store_->Delete(id, "b").code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_TRUE(store_->Get(id)->has_value());
  // b takes over once a lets go.
  ASSERT_TRUE(store_->ReleaseLease(id, "a").ok());
  EXPECT_TRUE(*store_->AcquireLease(id, "b", absl::Seconds(10)));
  EXPECT_EQ(store_->Put(id, "a", record, absl::Seconds(10)).code(),
            absl::StatusCode::kFailedPrecondition);
  ASSERT_TRUE(store_->Delete(id, "b").ok());
  EXPECT_FALSE(store_->Get(id)->has_value());
  EXPECT_TRUE(*store_->AcquireLease(id, "c", absl::Seconds(10)));  // the lease went too
}

TEST_F(RedisStoreTest, LeasesAndRecordsExpire) {
  const std::string id = "00000000000000000000000000000001";
  ASSERT_TRUE(*store_->AcquireLease(id, "a", absl::Milliseconds(300)));
  ASSERT_TRUE(
      store_->Put(id, "a", StoredSession{"", "m", 1, 0, "x"}, absl::Milliseconds(300)).ok());
  EXPECT_FALSE(*store_->AcquireLease(id, "b", absl::Seconds(10)));
  absl::SleepFor(absl::Milliseconds(500));
  EXPECT_FALSE(store_->Get(id)->has_value());
  EXPECT_TRUE(*store_->AcquireLease(id, "b", absl::Seconds(10)));  // a died: b takes over
}

TEST_F(RedisStoreTest, AForeignRecordIsDataLossAndAStoreThatComesBackIsUsedAgain) {
  ASSERT_EQ(Cli("SET ssm:session:00000000000000000000000000000002 not-a-record"), 0);
  EXPECT_EQ(store_->Get("00000000000000000000000000000002").status().code(),
            absl::StatusCode::kDataLoss);
  // Stopped and restarted on the same port: the next command reconnects.
  const int port = redis_->port();
  redis_->Stop();
  EXPECT_EQ(store_->Get("00000000000000000000000000000003").status().code(),
            absl::StatusCode::kUnavailable);
  absl::StatusOr<std::unique_ptr<RedisProcess>> again = RedisProcess::Start(port);
  ASSERT_TRUE(again.ok()) << again.status();
  redis_ = *std::move(again);
  EXPECT_TRUE(store_->Get("00000000000000000000000000000003").ok());
}

// --- Two replicas in one process ---------------------------------------------

std::shared_ptr<const Model> Memory() {
  ModelSpec spec;
  spec.name = "mem";
  spec.d_input = 1;
  spec.d_output = 4;
  spec.max_length = 4096;
  HippoMemorySpec hippo;
  hippo.measure = HippoMemorySpec::Measure::kLegT;
  hippo.n = 4;
  hippo.window = 8;
  hippo.output = HippoMemorySpec::Output::kCoefficients;
  spec.architecture = hippo;
  return *LoadModel(spec, nullptr);
}

LoadedRepository Repository() {
  LoadedRepository repo;
  repo.models["mem"][1] = Memory();
  return repo;
}

class ReplicasTest : public RedisStoreTest {
 protected:
  static void SetUpTestSuite() { SetLogEnabled(false); }
  static void TearDownTestSuite() { SetLogEnabled(true); }

  void SetUp() override {
    RedisStoreTest::SetUp();
    a_ = MakeReplica(store_.get());
    absl::StatusOr<std::unique_ptr<SessionStore>> second =
        OpenRedisStore(redis_->url(), absl::Seconds(1));
    ASSERT_TRUE(second.ok());
    store_b_ = *std::move(second);
    b_ = MakeReplica(store_b_.get());
  }
  void TearDown() override {
    a_.reset();
    b_.reset();
  }

  std::unique_ptr<SessionManager> MakeReplica(SessionStore* store) {
    SessionManager::Options o;
    o.store = store;
    // Longer than the store's pauses below: a lease that runs out while the
    // store is unreachable is lost for good (ALostLeaseStopsTheOldHolder).
    o.lease = absl::Seconds(10);
    o.checkpoint_interval = absl::Milliseconds(100);
    return std::make_unique<SessionManager>(o);
  }

  absl::StatusOr<std::shared_ptr<SessionManager::Entry>> Open(SessionManager& replica,
                                                              const std::string& id = "",
                                                              const std::string& owner = "") {
    OpenSessionRequest r;
    r.model = id.empty() ? "mem" : "";
    r.session_id = id;
    r.owner = owner;
    return OpenSession(r, catalog_, replica, limits_);
  }

  // `steps` single steps of input value 0.1 * (position + 1); the outputs.
  // `lag`: the client says it has the outputs of all but its last `lag`
  // steps (a pipelined client); -1: it says nothing (one that reads each
  // answer before it sends again).
  static std::vector<double> Step(SessionManager::Entry& e, int steps, int lag = -1) {
    std::vector<double> all;
    for (int i = 0; i < steps; ++i) {
      const int64_t position = e.position();
      std::vector<double> x = {0.1 * (position + 1)}, y(4);
      std::optional<int64_t> received;
      if (lag >= 0) received = std::max<int64_t>(position - lag, 0);
      EXPECT_TRUE(e.Run(x, 1, absl::MakeSpan(y), nullptr, received).ok());
      all.insert(all.end(), y.begin(), y.end());
    }
    return all;
  }

  // Single steps, paced, until the store has at least `position`.
  static std::vector<double> StepUntilDurable(SessionManager::Entry& e, int64_t position,
                                              int lag = -1) {
    std::vector<double> all;
    const absl::Time deadline = absl::Now() + absl::Seconds(10);
    while (e.durable_position() < position && absl::Now() < deadline) {
      const std::vector<double> y = Step(e, 1, lag);
      all.insert(all.end(), y.begin(), y.end());
      absl::SleepFor(absl::Milliseconds(5));
    }
    EXPECT_GE(e.durable_position(), position);
    return all;
  }

  static void WaitFor(const std::function<bool()>& done) {
    // `done` is called until it says so and never again: it may have
    // side effects (an open that succeeds).
    const absl::Time deadline = absl::Now() + absl::Seconds(10);
    bool ok = false;
    while (!(ok = done()) && absl::Now() < deadline) absl::SleepFor(absl::Milliseconds(20));
    EXPECT_TRUE(ok);
  }

  ModelCatalog catalog_{Repository()};
  RequestLimits limits_;
  std::unique_ptr<SessionStore> store_b_;
  std::unique_ptr<SessionManager> a_, b_;
};

TEST_F(ReplicasTest, ASessionMovesToAnotherReplicaByIdAndContinuesExactly) {
  // The reference: one session that never moves.
  absl::StatusOr<std::shared_ptr<SessionManager::Entry>> s = Open(*a_);
  ASSERT_TRUE(s.ok()) << s.status();
  const std::string id = (*s)->id();
  std::vector<double> got = StepUntilDurable(**s, 6);
  const int64_t last = (*s)->position();
  // Attached on a: b cannot take it.
  EXPECT_EQ(Open(*b_, id).status().code(), absl::StatusCode::kFailedPrecondition);
  // The stream breaks on a: its latest state whose outputs the client has
  // (all but the last step's: nothing said otherwise) goes to the store
  // and a lets go.
  a_->Detach(id, "test");
  WaitFor([&] { return a_->GetStats().detached == 0; });
  absl::StatusOr<std::shared_ptr<SessionManager::Entry>> moved = Open(*b_, id);
  ASSERT_TRUE(moved.ok()) << moved.status();
  const int64_t at = (*moved)->position();
  EXPECT_GE(at, 6);
  EXPECT_LT(at, last);
  EXPECT_EQ((*moved)->id(), id);
  // The client replays from there: the same outputs again.
  const std::vector<double> replayed = Step(**moved, static_cast<int>(last - at));
  EXPECT_EQ(replayed, std::vector<double>(got.begin() + at * 4, got.end()));
  const int total = static_cast<int>(last) + 10;
  const std::vector<double> rest = Step(**moved, total - static_cast<int>(last));
  got.insert(got.end(), rest.begin(), rest.end());
  // The reference: one session that never moved, as long.
  absl::StatusOr<std::shared_ptr<SessionManager::Entry>> ref = Open(*a_);
  ASSERT_TRUE(ref.ok());
  EXPECT_EQ(got, Step(**ref, total));  // bit for bit
  // Now a cannot take it back while b holds it; b closes it and it is gone.
  EXPECT_EQ(Open(*a_, id).status().code(), absl::StatusCode::kFailedPrecondition);
  b_->Close(id);
  WaitFor([&] { return !store_->Get(id)->has_value(); });
  EXPECT_EQ(Open(*a_, id).status().code(), absl::StatusCode::kNotFound);
}

TEST_F(ReplicasTest, OtherOwnersAndUnknownIdsAreNotFound) {
  absl::StatusOr<std::shared_ptr<SessionManager::Entry>> s = Open(*a_, "", "alice");
  ASSERT_TRUE(s.ok());
  const std::string id = (*s)->id();
  a_->Detach(id, "test");
  WaitFor([&] { return a_->GetStats().detached == 0; });
  EXPECT_EQ(Open(*b_, id, "bob").status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(b_->ExportStored(id, "bob").status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(Open(*b_, "ffffffffffffffffffffffffffffffff", "alice").status().code(),
            absl::StatusCode::kNotFound);
  EXPECT_EQ(Open(*b_, "not-an-id", "alice").status().code(), absl::StatusCode::kNotFound);
  // Bob's refused attempts left the lease free for alice.
  absl::StatusOr<SessionSnapshot> exported = b_->ExportStored(id, "alice");
  ASSERT_TRUE(exported.ok()) << exported.status();
  EXPECT_EQ(exported->model, "mem");
  EXPECT_TRUE(Open(*b_, id, "alice").ok());
}

TEST_F(ReplicasTest, AnImportedSessionIsInTheStoreAtOnce) {
  Session session = *Session::Create(catalog_.Find("mem", 0)->model, 1);
  absl::StatusOr<std::shared_ptr<SessionManager::Entry>> imported =
      a_->Add("mem", 1, std::move(session), /*attached=*/false, SessionManager::Origin::kImported);
  ASSERT_TRUE(imported.ok());
  EXPECT_EQ(a_->GetStats().detached, 0);  // it lives in the store
  EXPECT_TRUE(Open(*b_, (*imported)->id()).ok());
}

// A replica that loses its lease (here: the lease key is taken from under
// it, as after a long pause) stops stepping the session and never writes
// over the new holder's state.
TEST_F(ReplicasTest, ALostLeaseStopsTheOldHolder) {
  absl::StatusOr<std::shared_ptr<SessionManager::Entry>> s = Open(*a_);
  ASSERT_TRUE(s.ok());
  const std::string id = (*s)->id();
  StepUntilDurable(**s, 3);
  const int64_t durable = (*s)->durable_position();
  ASSERT_EQ(Cli(absl::StrCat("SET ssm:lease:", id, " someone-else")), 0);
  WaitFor([&] { return (*s)->lost(); });
  std::vector<double> x = {1}, y(4);
  EXPECT_EQ((*s)->Run(x, 1, absl::MakeSpan(y), nullptr).status().code(),
            absl::StatusCode::kUnavailable);
  ASSERT_EQ(Cli(absl::StrCat("DEL ssm:lease:", id)), 0);
  a_->Detach(id, "test");
  EXPECT_EQ(a_->GetStats().detached + a_->GetStats().attached, 0);
  absl::StatusOr<std::shared_ptr<SessionManager::Entry>> moved = Open(*b_, id);
  ASSERT_TRUE(moved.ok()) << moved.status();
  EXPECT_EQ((*moved)->position(), durable);
}

// The store stops answering (SIGSTOP): steps go on, unsaved and errors say
// so; it comes back and the store catches up.
TEST_F(ReplicasTest, AHungStoreNeverStopsSteppingAndIsCaughtUpAfter) {
  absl::StatusOr<std::shared_ptr<SessionManager::Entry>> s = Open(*a_);
  ASSERT_TRUE(s.ok());
  StepUntilDurable(**s, 2);
  redis_->Pause();
  const absl::Time start = absl::Now();
  Step(**s, 50);
  EXPECT_LT(absl::Now() - start, absl::Milliseconds(500));  // no step waited a 1 s timeout
  WaitFor([&] { return a_->GetStats().store_errors_total > 0; });
  EXPECT_EQ(a_->GetStats().unsaved, 1);
  EXPECT_FALSE(a_->GetStats().store_healthy);
  redis_->Resume();
  // The client says it has all 52 outputs; the store catches up.
  std::vector<double> x = {1}, y(4);
  ASSERT_TRUE((*s)->Run(x, 1, absl::MakeSpan(y), nullptr, (*s)->position()).ok());
  WaitFor([&] { return (*s)->durable_position() >= 52; });
  WaitFor([&] { return a_->GetStats().unsaved == 0; });
  EXPECT_TRUE(a_->GetStats().store_healthy);
}

// A client that keeps steps in flight says how many outputs it has: the
// store never gets a state past that, however the stream ends, so a
// reattach replays what the client lacks instead of skipping it.
TEST_F(ReplicasTest, TheStoreNeverGetsAStatePastWhatTheClientHas) {
  absl::StatusOr<std::shared_ptr<SessionManager::Entry>> s = Open(*a_);
  ASSERT_TRUE(s.ok());
  const std::string id = (*s)->id();
  constexpr int kLag = 7;
  const absl::Time deadline = absl::Now() + absl::Seconds(10);
  while ((*s)->durable_position() < 20 && absl::Now() < deadline) {
    Step(**s, 1, kLag);
    // The store's position is one the client had confirmed.
    EXPECT_LE((*s)->durable_position(), std::max<int64_t>((*s)->position() - 1 - kLag, 0));
    absl::SleepFor(absl::Milliseconds(2));
  }
  ASSERT_GE((*s)->durable_position(), 20);
  const int64_t confirmed = (*s)->position() - 1 - kLag;
  a_->Detach(id, "the connection broke");
  WaitFor([&] { return a_->GetStats().detached == 0; });
  absl::StatusOr<std::optional<StoredSession>> record = store_->Get(id);
  ASSERT_TRUE(record.ok() && record->has_value());
  EXPECT_LE((*record)->position, confirmed);
  absl::StatusOr<std::shared_ptr<SessionManager::Entry>> moved = Open(*b_, id);
  ASSERT_TRUE(moved.ok()) << moved.status();
  EXPECT_EQ((*moved)->position(), (*record)->position);
}

// Chunks stepped together (Entry::RunBatch, the streaming server's
// gathering) keep each session's bookkeeping as Run does: each store
// position is one its own client confirmed, whatever the others said, and a
// lost lease fails only its own session's chunk.
TEST_F(ReplicasTest, BatchedChunksKeepEachSessionsConfirmedState) {
  std::vector<std::shared_ptr<SessionManager::Entry>> s;
  for (int i = 0; i < 3; ++i) {
    absl::StatusOr<std::shared_ptr<SessionManager::Entry>> e = Open(*a_);
    ASSERT_TRUE(e.ok());
    s.push_back(*e);
  }
  const int lags[] = {-1, 3, 7};  // -1: the client says nothing
  auto step_all = [&](std::vector<absl::StatusOr<int64_t>>* results) {
    std::vector<std::vector<double>> x(3), y(3, std::vector<double>(4));
    std::vector<SessionManager::Entry::Chunk> chunks;
    for (int i = 0; i < 3; ++i) {
      const int64_t position = s[i]->position();
      x[i] = {0.1 * (position + 1) + i};
      std::optional<int64_t> received;
      if (lags[i] >= 0) received = std::max<int64_t>(position - lags[i], 0);
      chunks.push_back({s[i].get(), x[i], absl::MakeSpan(y[i]), received, int64_t{0}});
    }
    SessionManager::Entry::RunBatch(absl::MakeSpan(chunks), 1);
    results->clear();
    for (auto& c : chunks) results->push_back(c.result);
  };
  const absl::Time deadline = absl::Now() + absl::Seconds(10);
  std::vector<absl::StatusOr<int64_t>> results;
  while (absl::Now() < deadline) {
    step_all(&results);
    for (int i = 0; i < 3; ++i) {
      ASSERT_TRUE(results[i].ok()) << results[i].status();
      // The store's position is one this session's client confirmed.
      const int64_t confirmed =
          lags[i] < 0 ? s[i]->position() - 1 : std::max<int64_t>(s[i]->position() - 1 - lags[i], 0);
      EXPECT_LE(s[i]->durable_position(), confirmed) << "session " << i;
    }
    bool all = true;
    for (int i = 0; i < 3; ++i) all = all && s[i]->durable_position() >= 15;
    if (all) break;
    absl::SleepFor(absl::Milliseconds(2));
  }
  for (int i = 0; i < 3; ++i) ASSERT_GE(s[i]->durable_position(), 15) << "session " << i;

  // Another replica takes session 1's lease: its chunk fails, the others'
  // do not.
  ASSERT_EQ(Cli(absl::StrCat("SET ssm:lease:", s[1]->id(), " someone-else")), 0);
  WaitFor([&] { return s[1]->lost(); });
  step_all(&results);
  EXPECT_TRUE(results[0].ok());
  EXPECT_EQ(results[1].status().code(), absl::StatusCode::kUnavailable);
  EXPECT_TRUE(results[2].ok());
  ASSERT_EQ(Cli(absl::StrCat("DEL ssm:lease:", s[1]->id())), 0);
  for (auto& e : s) a_->Detach(e->id(), "test");
}

// A stream that breaks before the first checkpoint, with nothing answered
// that the client confirmed, leaves the session where it started.
TEST_F(ReplicasTest, ABrokenStreamBeforeAnyCheckpointLeavesItsStart) {
  SessionManager::Options o;
  o.store = store_.get();
  o.checkpoint_interval = absl::Hours(1);
  auto slow = std::make_unique<SessionManager>(o);
  absl::StatusOr<std::shared_ptr<SessionManager::Entry>> s = Open(*slow);
  ASSERT_TRUE(s.ok());
  const std::string id = (*s)->id();
  Step(**s, 5, /*lag=*/100);  // five answers in flight
  slow->Detach(id, "the connection broke");
  WaitFor([&] { return slow->GetStats().detached == 0; });
  absl::StatusOr<std::shared_ptr<SessionManager::Entry>> moved = Open(*b_, id);
  ASSERT_TRUE(moved.ok()) << moved.status();
  EXPECT_EQ((*moved)->position(), 0);
}

// A new session is in the store before its id is handed out (a client
// that has the id can reattach it anywhere, even if this replica dies the
// next moment); the checkpointer's tick is only its unprompted pace: a
// detached session is written and let go at once, a closed one's record
// goes at once. With an hour's tick, nothing here could happen by the tick.
TEST_F(ReplicasTest, OpensDetachesAndClosesDoNotWaitForTheTick) {
  SessionManager::Options o;
  o.store = store_.get();
  o.lease = absl::Hours(24);
  o.checkpoint_interval = absl::Hours(1);
  o.checkpoint_tick = absl::Hours(1);
  auto lazy = std::make_unique<SessionManager>(o);

  absl::StatusOr<std::shared_ptr<SessionManager::Entry>> s = Open(*lazy);
  ASSERT_TRUE(s.ok()) << s.status();
  const std::string id = (*s)->id();
  EXPECT_EQ((*s)->durable_position(), 0);
  absl::StatusOr<std::optional<StoredSession>> record = store_->Get(id);
  ASSERT_TRUE(record.ok()) << record.status();
  ASSERT_TRUE(record->has_value());
  EXPECT_EQ((*record)->position, 0);
  EXPECT_EQ((*record)->model, "mem");
  Step(**s, 7);
  lazy->Detach(id, "the connection broke");
  // Its lease is released at once (else: FailedPrecondition for a day).
  WaitFor([&] { return lazy->GetStats().detached == 0; });
  absl::StatusOr<std::shared_ptr<SessionManager::Entry>> moved = Open(*b_, id);
  ASSERT_TRUE(moved.ok()) << moved.status();
  // No pass asked for a state while it ran, so the store has its start:
  // the client, told durable_position 0, still holds the 7 chunks.
  EXPECT_EQ((*moved)->position(), 0);

  absl::StatusOr<std::shared_ptr<SessionManager::Entry>> other = Open(*lazy);
  ASSERT_TRUE(other.ok()) << other.status();
  const std::string other_id = (*other)->id();
  WaitFor([&] { return store_->Get(other_id)->has_value(); });
  lazy->Close(other_id);
  WaitFor([&] { return !store_->Get(other_id)->has_value(); });
  b_->Detach(id, "test");
}

// A new session refused by a limit leaves nothing in the store, though it
// was written before its registration.
TEST_F(ReplicasTest, ARefusedNewSessionLeavesNoRecord) {
  SessionManager::Options o;
  o.store = store_.get();
  o.max_sessions = 1;
  auto full = std::make_unique<SessionManager>(o);
  absl::StatusOr<std::shared_ptr<SessionManager::Entry>> first = Open(*full);
  ASSERT_TRUE(first.ok()) << first.status();
  const int64_t writes = full->GetStats().store_writes_total;
  EXPECT_EQ(Open(*full).status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(full->GetStats().store_writes_total, writes + 1);  // written, then deleted
  EXPECT_EQ(CliOutput("DBSIZE"), "2");  // the first session's record and lease only
  full->Close((*first)->id());
}

// The same replica: a reattach by id right after the stream broke waits for
// the last write (the lease) and continues from the confirmed state.
TEST_F(ReplicasTest, AReattachOnTheSameReplicaContinuesFromTheConfirmedState) {
  absl::StatusOr<std::shared_ptr<SessionManager::Entry>> s = Open(*a_);
  ASSERT_TRUE(s.ok());
  const std::string id = (*s)->id();
  StepUntilDurable(**s, 4);
  Step(**s, 3, /*lag=*/3);  // the last three answers never arrived
  const int64_t confirmed = (*s)->position() - 3;
  a_->Detach(id, "the connection broke");
  absl::StatusOr<std::shared_ptr<SessionManager::Entry>> again;
  WaitFor([&] {
    again = Open(*a_, id);
    return again.ok() || again.status().code() != absl::StatusCode::kFailedPrecondition;
  });
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_LE((*again)->position(), confirmed);
  EXPECT_GE((*again)->position(), 4);
}

// The Open Inference Protocol's sequences are named by this replica's
// table: their sessions stay in its registry between requests (a store
// would take a detached session out of it) and are never written, and a
// drain does not wait for them.
TEST_F(ReplicasTest, SequencesStayOnTheirReplicaAndOutOfTheStore) {
  SequenceTable table(&catalog_, a_.get(), limits_);
  absl::StatusOr<ServedModel> served = catalog_.Find("mem", 0);
  ASSERT_TRUE(served.ok());
  auto run = [&](bool start, bool end) {
    std::vector<double> x = {0.5}, y(4);
    SequenceRequest r;
    r.id = SequenceId::Number(7);
    r.start = start;
    r.end = end;
    r.served = &*served;
    r.batch = 1;
    r.steps = 1;
    r.x = x;
    r.y = absl::MakeSpan(y);
    absl::StatusOr<int64_t> position = table.Run(r);
    EXPECT_TRUE(position.ok()) << position.status();
    return position.ok() ? *position : -1;
  };
  ASSERT_EQ(run(true, false), 1);
  absl::SleepFor(absl::Milliseconds(350));  // a few checkpointer ticks
  ASSERT_EQ(run(false, false), 2);
  EXPECT_EQ(a_->GetStats().detached, 1);
  EXPECT_EQ(a_->GetStats().store_writes_total, 0u);
  EXPECT_EQ(a_->GetStats().unsaved, 0);
  const absl::Time start = absl::Now();
  EXPECT_TRUE(a_->FlushAll(start + absl::Seconds(5)));
  EXPECT_LT(absl::Now() - start, absl::Seconds(1));
  ASSERT_EQ(run(false, true), 3);
  EXPECT_EQ(a_->GetStats().detached, 0);
}

}  // namespace
}  // namespace ssm::server
