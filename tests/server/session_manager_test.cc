// The session registry: ids, attach/detach/reattach, TTL eviction on an
// injected clock, the max_sessions limit, snapshots, concurrent use.

#include <atomic>
#include <memory>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "absl/synchronization/mutex.h"
#include "server/log.h"
#include "server/model_catalog.h"
#include "server/session_manager.h"
#include "ssm/model.h"
#include "ssm/model_spec.h"

namespace ssm::server {
namespace {

using ::testing::HasSubstr;

// A LegT memory: loads without weights, streams, 8 outputs per step.
std::shared_ptr<const Model> MemoryModel(const std::string& name, int n = 8) {
  ModelSpec spec;
  spec.name = name;
  spec.d_input = 1;
  spec.d_output = n;
  spec.max_length = 4096;
  HippoMemorySpec hippo;
  hippo.measure = HippoMemorySpec::Measure::kLegT;
  hippo.n = n;
  hippo.window = 16;
  hippo.output = HippoMemorySpec::Output::kCoefficients;
  spec.architecture = hippo;
  absl::StatusOr<std::shared_ptr<const Model>> model = LoadModel(spec, nullptr);
  EXPECT_TRUE(model.ok()) << model.status();
  return *model;
}

// A clock the test moves by hand.
class FakeClock {
 public:
  absl::Time Now() {
    absl::MutexLock lock(&mu_);
    return now_;
  }
  void Advance(absl::Duration d) {
    absl::MutexLock lock(&mu_);
    now_ += d;
  }

 private:
  absl::Mutex mu_;
  absl::Time now_ = absl::FromUnixSeconds(1700000000);
};

class SessionManagerTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() { SetLogEnabled(false); }
  static void TearDownTestSuite() { SetLogEnabled(true); }

  SessionManager::Options Options(int max_sessions = 8) {
    SessionManager::Options o;
    o.max_sessions = max_sessions;
    o.ttl = absl::Minutes(5);
    o.clock = [this] { return clock_.Now(); };
    return o;
  }

  std::shared_ptr<SessionManager::Entry> Open(SessionManager& manager, bool attached = true,
                                              int batch = 1) {
    absl::StatusOr<std::shared_ptr<SessionManager::Entry>> entry =
        manager.Add("mem", 1, *Session::Create(model_, batch), attached,
                    SessionManager::Origin::kNew);
    EXPECT_TRUE(entry.ok()) << entry.status();
    return entry.ok() ? *entry : nullptr;
  }

  FakeClock clock_;
  std::shared_ptr<const Model> model_ = MemoryModel("mem");
};

TEST_F(SessionManagerTest, IdsAre128BitHexAndDistinct) {
  std::set<std::string> ids;
  for (int i = 0; i < 1000; ++i) {
    const std::string id = NewSessionId();
    ASSERT_EQ(id.size(), 32u);
    ASSERT_EQ(id.find_first_not_of("0123456789abcdef"), std::string::npos) << id;
    ids.insert(id);
  }
  EXPECT_EQ(ids.size(), 1000u);
}

TEST_F(SessionManagerTest, OpenRunsAndCounts) {
  SessionManager manager(Options());
  std::shared_ptr<SessionManager::Entry> entry = Open(manager, true, 2);
  ASSERT_NE(entry, nullptr);
  EXPECT_EQ(entry->model_name(), "mem");
  EXPECT_EQ(entry->version(), 1);
  EXPECT_EQ(entry->batch(), 2);
  EXPECT_EQ(entry->d_input(), 1);
  EXPECT_EQ(entry->d_output(), 8);
  EXPECT_EQ(entry->state_bytes(), 2 * 8 * 8);  // batch x N/2 complex = N doubles

  std::vector<double> x(2 * 3, 1.0), y(2 * 3 * 8);
  absl::StatusOr<int64_t> position = entry->Run(x, 3, absl::MakeSpan(y), nullptr);
  ASSERT_TRUE(position.ok()) << position.status();
  EXPECT_EQ(*position, 3);
  EXPECT_EQ(entry->position(), 3);

  const SessionManager::Stats stats = manager.GetStats();
  EXPECT_EQ(stats.attached, 1);
  EXPECT_EQ(stats.detached, 0);
  EXPECT_EQ(stats.state_bytes, entry->state_bytes());
}

TEST_F(SessionManagerTest, BadChunkLeavesTheStateAlone) {
  SessionManager manager(Options());
  std::shared_ptr<SessionManager::Entry> entry = Open(manager);
  std::vector<double> x(4, 0.5), y(4 * 8);
  ASSERT_TRUE(entry->Run(x, 4, absl::MakeSpan(y), nullptr).ok());
  const std::string before = entry->Export().data;
  std::vector<double> bad = {1.0, std::nan(""), 2.0};
  std::vector<double> y3(3 * 8);
  EXPECT_EQ(entry->Run(bad, 3, absl::MakeSpan(y3), nullptr).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(entry->Export().data, before);
  EXPECT_EQ(entry->position(), 4);
}

TEST_F(SessionManagerTest, DetachThenReattach) {
  SessionManager manager(Options());
  std::shared_ptr<SessionManager::Entry> entry = Open(manager);
  // Attached: a second stream may not take it.
  EXPECT_EQ(manager.Reattach(entry->id()).status().code(),
            absl::StatusCode::kFailedPrecondition);

  manager.Detach(entry->id(), "test");
  EXPECT_EQ(manager.GetStats().attached, 0);
  EXPECT_EQ(manager.GetStats().detached, 1);

  // A reattach naming another model or batch is refused and changes nothing.
  EXPECT_EQ(manager.Reattach(entry->id(), "other").status().code(),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(manager.Reattach(entry->id(), "", 3).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(manager.GetStats().detached, 1);

  absl::StatusOr<std::shared_ptr<SessionManager::Entry>> again =
      manager.Reattach(entry->id(), "mem", 1);
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ(again->get(), entry.get());  // the same session, state and all
  EXPECT_EQ(manager.GetStats().attached, 1);
  EXPECT_EQ(manager.Reattach(entry->id()).status().code(),
            absl::StatusCode::kFailedPrecondition);
}

TEST_F(SessionManagerTest, UnknownIdIsNotFound) {
  SessionManager manager(Options());
  EXPECT_EQ(manager.Reattach("0123").status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(manager.Find("0123").status().code(), absl::StatusCode::kNotFound);
  manager.Detach("0123", "nothing");  // no-ops
  manager.Close("0123");
}

TEST_F(SessionManagerTest, CloseEndsTheSession) {
  SessionManager manager(Options());
  std::shared_ptr<SessionManager::Entry> entry = Open(manager);
  manager.Close(entry->id());
  EXPECT_EQ(manager.Find(entry->id()).status().code(), absl::StatusCode::kNotFound);
  const SessionManager::Stats stats = manager.GetStats();
  EXPECT_EQ(stats.attached + stats.detached, 0);
  EXPECT_EQ(stats.state_bytes, 0);
  EXPECT_EQ(stats.evicted_total, 0u);
}

TEST_F(SessionManagerTest, DetachedSessionsExpireAfterTheTtl) {
  SessionManager manager(Options());
  std::shared_ptr<SessionManager::Entry> attached = Open(manager);
  std::shared_ptr<SessionManager::Entry> detached = Open(manager, /*attached=*/false);

  clock_.Advance(absl::Minutes(5) - absl::Seconds(1));
  EXPECT_EQ(manager.EvictExpired(), 0);
  // ExportState counts as activity: the TTL starts over.
  ASSERT_TRUE(manager.Find(detached->id()).ok());
  clock_.Advance(absl::Minutes(5) - absl::Seconds(1));
  EXPECT_EQ(manager.EvictExpired(), 0);
  ASSERT_TRUE(manager.Reattach(detached->id()).ok());
  manager.Detach(detached->id(), "again");

  // Attached sessions never expire; detached ones do at exactly the TTL,
  // and a lookup sees it before any sweep.
  clock_.Advance(absl::Minutes(5));
  EXPECT_EQ(manager.Reattach(detached->id()).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(manager.GetStats().evicted_total, 1u);
  EXPECT_EQ(manager.EvictExpired(), 0);
  EXPECT_TRUE(manager.Find(attached->id()).ok());

  // The sweep evicts what nobody asks about.
  manager.Detach(attached->id(), "broken");
  clock_.Advance(absl::Minutes(6));
  EXPECT_EQ(manager.EvictExpired(), 1);
  const SessionManager::Stats stats = manager.GetStats();
  EXPECT_EQ(stats.evicted_total, 2u);
  EXPECT_EQ(stats.attached + stats.detached, 0);
  EXPECT_EQ(stats.state_bytes, 0);
}

TEST_F(SessionManagerTest, MaxSessionsCountsAttachedAndDetached) {
  SessionManager manager(Options(/*max_sessions=*/2));
  Open(manager);
  std::shared_ptr<SessionManager::Entry> detached = Open(manager, /*attached=*/false);
  absl::StatusOr<std::shared_ptr<SessionManager::Entry>> third = manager.Add(
      "mem", 1, *Session::Create(model_, 1), true, SessionManager::Origin::kNew);
  EXPECT_EQ(third.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(third.status().message(), HasSubstr("--max_sessions=2"));

  // An expired session frees its place even before the sweep runs.
  clock_.Advance(absl::Minutes(5));
  third = manager.Add("mem", 1, *Session::Create(model_, 1), true, SessionManager::Origin::kNew);
  EXPECT_TRUE(third.ok()) << third.status();
  EXPECT_EQ(manager.GetStats().evicted_total, 1u);
}

TEST_F(SessionManagerTest, ExportImportContinuesExactly) {
  SessionManager manager(Options());
  std::shared_ptr<SessionManager::Entry> entry = Open(manager);
  std::vector<double> x(10), y(10 * 8);
  for (int i = 0; i < 10; ++i) x[i] = std::sin(0.3 * i);
  SessionSnapshot snapshot;
  ASSERT_TRUE(entry->Run(x, 10, absl::MakeSpan(y), &snapshot).ok());
  EXPECT_EQ(snapshot.model, "mem");
  EXPECT_EQ(snapshot.version, 1);
  EXPECT_EQ(snapshot.position, 10);
  EXPECT_EQ(snapshot.batch, 1);
  EXPECT_EQ(snapshot.fingerprint, model_->fingerprint());
  EXPECT_EQ(snapshot.data, entry->Export().data);

  // Continue once on the original, once on an imported copy: same outputs.
  LoadedRepository repo;
  repo.models["mem"][1] = model_;
  ModelCatalog catalog(std::move(repo));
  absl::StatusOr<ModelCatalog::Resumed> resumed = catalog.ResumeSession("mem", 0, snapshot.data);
  ASSERT_TRUE(resumed.ok()) << resumed.status();
  absl::StatusOr<std::shared_ptr<SessionManager::Entry>> imported =
      manager.Add("mem", resumed->served.version, std::move(resumed->session), false,
                  SessionManager::Origin::kImported);
  ASSERT_TRUE(imported.ok());
  EXPECT_EQ(manager.GetStats().detached, 1);
  EXPECT_EQ((*imported)->position(), 10);
  std::vector<double> x2(5, 0.7), y_a(5 * 8), y_b(5 * 8);
  ASSERT_TRUE(entry->Run(x2, 5, absl::MakeSpan(y_a), nullptr).ok());
  ASSERT_TRUE((*imported)->Run(x2, 5, absl::MakeSpan(y_b), nullptr).ok());
  EXPECT_EQ(y_a, y_b);
}

TEST_F(SessionManagerTest, CatalogPicksTheVersionTheSnapshotBelongsTo) {
  std::shared_ptr<const Model> v1 = MemoryModel("mem", 8);
  std::shared_ptr<const Model> v2 = MemoryModel("mem", 10);  // other weights
  LoadedRepository repo;
  repo.models["mem"][1] = v1;
  repo.models["mem"][2] = v2;
  repo.models["other"][1] = MemoryModel("other", 8);
  ModelCatalog catalog(std::move(repo));
  const std::string snapshot = Session::Create(v1, 1)->ExportState();

  absl::StatusOr<ModelCatalog::Resumed> resumed = catalog.ResumeSession("mem", 0, snapshot);
  ASSERT_TRUE(resumed.ok()) << resumed.status();
  EXPECT_EQ(resumed->served.version, 1);
  EXPECT_EQ(catalog.ResumeSession("mem", 2, snapshot).status().code(),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(catalog.ResumeSession("other", 0, snapshot).status().code(),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(catalog.ResumeSession("mem", 3, snapshot).status().code(),
            absl::StatusCode::kNotFound);
  EXPECT_EQ(catalog.ResumeSession("nope", 0, snapshot).status().code(),
            absl::StatusCode::kNotFound);
  std::string corrupted = snapshot;
  corrupted[corrupted.size() / 2] ^= 0x40;
  EXPECT_EQ(catalog.ResumeSession("mem", 0, corrupted).status().code(),
            absl::StatusCode::kDataLoss);
  EXPECT_EQ(catalog.ResumeSession("mem", 0, snapshot.substr(0, 20)).status().code(),
            absl::StatusCode::kDataLoss);
}

TEST_F(SessionManagerTest, ConcurrentStreamsExportsAndChurn) {
  SessionManager manager(Options(/*max_sessions=*/64));
  constexpr int kThreads = 4;
  constexpr int kRounds = 50;
  std::vector<std::shared_ptr<SessionManager::Entry>> shared;
  for (int i = 0; i < kThreads; ++i) shared.push_back(Open(manager));
  std::atomic<int> failures{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      std::vector<double> x(3, 0.1 * t), y(3 * 8);
      for (int r = 0; r < kRounds; ++r) {
        // Each thread streams into its own session while the others export it.
        if (!shared[t]->Run(x, 3, absl::MakeSpan(y), nullptr).ok()) ++failures;
        if (!manager.Find(shared[(t + 1) % kThreads]->id()).ok()) ++failures;
        (void)shared[(t + 1) % kThreads]->Export();
        // And sessions come and go.
        std::shared_ptr<SessionManager::Entry> e = Open(manager, true);
        if (e == nullptr) {
          ++failures;
          continue;
        }
        manager.Detach(e->id(), "churn");
        if (!manager.Reattach(e->id()).ok()) ++failures;
        manager.Close(e->id());
      }
    });
  }
  for (std::thread& t : threads) t.join();
  EXPECT_EQ(failures.load(), 0);
  for (const auto& e : shared) EXPECT_EQ(e->position(), 3 * kRounds);
  const SessionManager::Stats stats = manager.GetStats();
  EXPECT_EQ(stats.attached, kThreads);
  EXPECT_EQ(stats.detached, 0);
  EXPECT_EQ(stats.state_bytes, kThreads * shared[0]->state_bytes());
}

}  // namespace
}  // namespace ssm::server
