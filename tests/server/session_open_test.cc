// The session layer's one opening policy (session_open.h): new, resumed and
// reattached sessions, attached (a stream's) or detached (ImportState's),
// with the exact codes every wire protocol reports.

#include "server/session_open.h"

#include <memory>
#include <string>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "server/log.h"
#include "server/model_catalog.h"
#include "server/session_manager.h"
#include "ssm/model.h"
#include "ssm/model_spec.h"
#include "ssm/session.h"

namespace ssm::server {
namespace {

using ::testing::HasSubstr;

// A LegT memory of window `window`: versions with different windows have
// different fingerprints, so a snapshot belongs to exactly one of them.
std::shared_ptr<const Model> Memory(const std::string& name, double window) {
  ModelSpec spec;
  spec.name = name;
  spec.d_input = 1;
  spec.d_output = 4;
  spec.max_length = 4096;
  HippoMemorySpec hippo;
  hippo.measure = HippoMemorySpec::Measure::kLegT;
  hippo.n = 4;
  hippo.window = window;
  hippo.output = HippoMemorySpec::Output::kCoefficients;
  spec.architecture = hippo;
  absl::StatusOr<std::shared_ptr<const Model>> model = LoadModel(spec, nullptr);
  EXPECT_TRUE(model.ok()) << model.status();
  return *model;
}

LoadedRepository Repository() {
  LoadedRepository repo;
  repo.models["mem"][1] = Memory("mem", 8);
  repo.models["mem"][2] = Memory("mem", 16);
  repo.models["other"][1] = Memory("other", 8);
  return repo;
}

class SessionOpenTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() { SetLogEnabled(false); }
  static void TearDownTestSuite() { SetLogEnabled(true); }

  SessionOpenTest() : catalog_(Repository()), sessions_(SessionManager::Options{}) {
    limits_.max_batch = 4;
  }

  absl::StatusOr<std::shared_ptr<SessionManager::Entry>> Open(const OpenSessionRequest& r) {
    return OpenSession(r, catalog_, sessions_, limits_);
  }

  // A snapshot of version `version` of "mem" after `steps` steps.
  std::string Snapshot(int64_t version, int steps, int batch = 1) {
    absl::StatusOr<ServedModel> served = catalog_.Find("mem", version);
    absl::StatusOr<Session> session = Session::Create(served->model, batch);
    std::vector<double> x(static_cast<size_t>(batch) * steps, 0.5);
    std::vector<double> y(static_cast<size_t>(batch) * steps * 4);
    EXPECT_TRUE(session->Run(x, steps, absl::MakeSpan(y)).ok());
    return session->ExportState();
  }

  ModelCatalog catalog_;
  SessionManager sessions_;
  RequestLimits limits_;
};

TEST_F(SessionOpenTest, NewSessionOfTheNewestVersionWithBatchOneByDefault) {
  OpenSessionRequest r;
  r.model = "mem";
  absl::StatusOr<std::shared_ptr<SessionManager::Entry>> entry = Open(r);
  ASSERT_TRUE(entry.ok()) << entry.status();
  EXPECT_EQ((*entry)->version(), 2);
  EXPECT_EQ((*entry)->batch(), 1);
  EXPECT_EQ((*entry)->position(), 0);
  EXPECT_EQ(sessions_.GetStats().attached, 1);
}

TEST_F(SessionOpenTest, NewSessionRefusals) {
  OpenSessionRequest r;
  r.field_prefix = "open.";
  EXPECT_EQ(Open(r).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(Open(r).status().message(), HasSubstr("open.model must be set"));
  r.model = "nope";
  EXPECT_EQ(Open(r).status().code(), absl::StatusCode::kNotFound);
  r.model = "mem";
  r.version = 7;
  EXPECT_EQ(Open(r).status().code(), absl::StatusCode::kNotFound);
  r.version = 0;
  r.batch = -1;
  EXPECT_EQ(Open(r).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(Open(r).status().message(), HasSubstr("open.batch must be >= 1"));
  r.batch = 5;
  EXPECT_EQ(Open(r).status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(Open(r).status().message(), HasSubstr("--max_batch=4"));
  EXPECT_EQ(sessions_.GetStats().attached + sessions_.GetStats().detached, 0);
}

TEST_F(SessionOpenTest, ResumeFindsTheVersionWhoseWeightsTheSnapshotHas) {
  OpenSessionRequest r;
  r.has_snapshot = true;
  const std::string snapshot = Snapshot(1, 5, 2);
  r.snapshot = snapshot;
  r.snapshot_model = "mem";  // the model is the snapshot message's
  absl::StatusOr<std::shared_ptr<SessionManager::Entry>> entry = Open(r);
  ASSERT_TRUE(entry.ok()) << entry.status();
  EXPECT_EQ((*entry)->version(), 1);
  EXPECT_EQ((*entry)->batch(), 2);
  EXPECT_EQ((*entry)->position(), 5);
  EXPECT_EQ(sessions_.GetStats().attached, 1);
}

TEST_F(SessionOpenTest, ImportRegistersTheSessionDetached) {
  OpenSessionRequest r;
  r.has_snapshot = true;
  const std::string snapshot = Snapshot(2, 3);
  r.snapshot = snapshot;
  r.model = "mem";
  r.attach = false;
  absl::StatusOr<std::shared_ptr<SessionManager::Entry>> entry = Open(r);
  ASSERT_TRUE(entry.ok()) << entry.status();
  EXPECT_EQ(sessions_.GetStats().detached, 1);
  // ...and a stream can take it over.
  OpenSessionRequest again;
  again.session_id = (*entry)->id();
  absl::StatusOr<std::shared_ptr<SessionManager::Entry>> reattached = Open(again);
  ASSERT_TRUE(reattached.ok()) << reattached.status();
  EXPECT_EQ(reattached->get(), entry->get());
  EXPECT_EQ((*reattached)->position(), 3);
}

TEST_F(SessionOpenTest, ResumeRefusals) {
  const std::string v1 = Snapshot(1, 4, 2);
  OpenSessionRequest r;
  r.field_prefix = "open.";
  r.has_snapshot = true;
  r.snapshot = v1;
  // No model anywhere.
  EXPECT_EQ(Open(r).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(Open(r).status().message(), HasSubstr("open.model must be set (or "
                                                    "open.resume_from.model)"));
  // Another model's snapshot.
  r.model = "other";
  EXPECT_EQ(Open(r).status().code(), absl::StatusCode::kFailedPrecondition);
  // Of a version that is not the one asked for.
  r.model = "mem";
  r.version = 2;
  EXPECT_EQ(Open(r).status().code(), absl::StatusCode::kFailedPrecondition);
  r.version = 0;
  // A batch that is not the snapshot's.
  r.batch = 1;
  EXPECT_EQ(Open(r).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(Open(r).status().message(), HasSubstr("the snapshot has batch 2"));
  r.batch = 0;
  // Corrupted.
  std::string bad = v1;
  bad[bad.size() / 2] ^= 0x40;
  r.snapshot = bad;
  EXPECT_EQ(Open(r).status().code(), absl::StatusCode::kDataLoss);
  // Empty.
  r.snapshot = "";
  EXPECT_EQ(Open(r).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(Open(r).status().message(), HasSubstr("open.resume_from.data must be set"));
  // Both a snapshot and a session id.
  r.snapshot = v1;
  r.session_id = "0123";
  EXPECT_EQ(Open(r).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(Open(r).status().message(), HasSubstr("set at most one of"));
  // Past --max_batch (the snapshot's own batch counts).
  limits_.max_batch = 1;
  r.session_id = "";
  EXPECT_EQ(Open(r).status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(sessions_.GetStats().attached + sessions_.GetStats().detached, 0);
}

TEST_F(SessionOpenTest, ReattachRules) {
  OpenSessionRequest r;
  r.model = "mem";
  r.batch = 2;
  absl::StatusOr<std::shared_ptr<SessionManager::Entry>> entry = Open(r);
  ASSERT_TRUE(entry.ok());
  const std::string id = (*entry)->id();

  OpenSessionRequest again;
  again.session_id = id;
  // Still attached to its first stream.
  EXPECT_EQ(Open(again).status().code(), absl::StatusCode::kFailedPrecondition);
  sessions_.Detach(id, "test");
  again.model = "other";
  EXPECT_EQ(Open(again).status().code(), absl::StatusCode::kFailedPrecondition);
  again.model = "";
  again.batch = 1;
  EXPECT_EQ(Open(again).status().code(), absl::StatusCode::kInvalidArgument);
  again.batch = 0;
  // ImportState cannot reattach: only a stream attaches.
  again.attach = false;
  EXPECT_EQ(Open(again).status().code(), absl::StatusCode::kInvalidArgument);
  again.attach = true;
  again.session_id = "ffffffffffffffffffffffffffffffff";
  EXPECT_EQ(Open(again).status().code(), absl::StatusCode::kNotFound);
  again.session_id = id;
  ASSERT_TRUE(Open(again).ok());
}

TEST_F(SessionOpenTest, SessionsBelongToTheirOwner) {
  OpenSessionRequest r;
  r.model = "mem";
  r.owner = "alice";
  absl::StatusOr<std::shared_ptr<SessionManager::Entry>> entry = Open(r);
  ASSERT_TRUE(entry.ok());
  EXPECT_EQ((*entry)->owner(), "alice");
  const std::string id = (*entry)->id();
  sessions_.Detach(id, "test");
  // Bob gets exactly what an unknown id gets.
  OpenSessionRequest bob;
  bob.session_id = id;
  bob.owner = "bob";
  const absl::Status as_bob = Open(bob).status();
  OpenSessionRequest unknown = bob;
  unknown.session_id = "ffffffffffffffffffffffffffffffff";
  EXPECT_EQ(as_bob.code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(sessions_.Find(id, "bob").status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(sessions_.Peek(id, "bob").status().code(), absl::StatusCode::kNotFound);
  // Alice's own calls find it.
  EXPECT_TRUE(sessions_.Find(id, "alice").ok());
  OpenSessionRequest alice;
  alice.session_id = id;
  alice.owner = "alice";
  EXPECT_TRUE(Open(alice).ok());
}

TEST_F(SessionOpenTest, MayRunIsAskedWithTheModelBeforeAnythingIsMade) {
  std::vector<std::string> asked;
  auto refuse = [&](absl::string_view model) {
    asked.emplace_back(model);
    return absl::PermissionDeniedError("no");
  };
  OpenSessionRequest fresh;
  fresh.model = "mem";
  fresh.may_run = refuse;
  EXPECT_EQ(Open(fresh).status().code(), absl::StatusCode::kPermissionDenied);
  OpenSessionRequest resume;
  const std::string snapshot = Snapshot(1, 2);
  resume.has_snapshot = true;
  resume.snapshot = snapshot;
  resume.snapshot_model = "mem";
  resume.may_run = refuse;
  EXPECT_EQ(Open(resume).status().code(), absl::StatusCode::kPermissionDenied);
  OpenSessionRequest made;
  made.model = "other";
  absl::StatusOr<std::shared_ptr<SessionManager::Entry>> other = Open(made);
  ASSERT_TRUE(other.ok());
  sessions_.Detach((*other)->id(), "test");
  OpenSessionRequest reattach;
  reattach.session_id = (*other)->id();
  reattach.may_run = refuse;
  EXPECT_EQ(Open(reattach).status().code(), absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(asked, (std::vector<std::string>{"mem", "mem", "other"}));
  // Nothing was made or attached.
  EXPECT_EQ(sessions_.GetStats().attached, 0);
  EXPECT_EQ(sessions_.GetStats().detached, 1);
}

TEST_F(SessionOpenTest, QuotaOfSessionsIsPerOwner) {
  SessionManager::Options options;
  options.quota_sessions = 2;
  SessionManager sessions(options);
  OpenSessionRequest r;
  r.model = "mem";
  r.owner = "alice";
  EXPECT_TRUE(OpenSession(r, catalog_, sessions, limits_).ok());
  absl::StatusOr<std::shared_ptr<SessionManager::Entry>> second =
      OpenSession(r, catalog_, sessions, limits_);
  ASSERT_TRUE(second.ok());
  const absl::Status third = OpenSession(r, catalog_, sessions, limits_).status();
  EXPECT_EQ(third.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(third.message(), HasSubstr("--quota_sessions=2"));
  r.owner = "bob";
  EXPECT_TRUE(OpenSession(r, catalog_, sessions, limits_).ok());
  sessions.Close((*second)->id());
  r.owner = "alice";
  EXPECT_TRUE(OpenSession(r, catalog_, sessions, limits_).ok());
}

}  // namespace
}  // namespace ssm::server
