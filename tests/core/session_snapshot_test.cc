// The session snapshot format of ssm/session.h: what Import makes of a
// snapshot that is exact, of another model, truncated or corrupted. (The
// tests kept their ModelTest names when they moved here from model_test.cc.)

#include "ssm/session.h"

#include <memory>
#include <string>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "core/ssm_systems.h"
#include "core/test_models.h"
#include "ssm/model.h"

namespace ssm {
namespace {

using ::testing::HasSubstr;
using testing::Load;
using testing::RandomInput;
using testing::RunRange;
using testing::S4Spec;
using testing::Variants;

TEST(ModelTest, SnapshotsContinueExactly) {
  const ModelSpec spec = S4Spec(Variants()[1].second);
  const std::shared_ptr<const Model> m = Load(spec);
  const std::vector<double> x = RandomInput(2 * 200 * 3, 5);
  Session a = *Session::Create(m, 2);
  RunRange(a, x, 200, 0, 120);
  const std::string snap = a.ExportState();
  const std::vector<double> rest = RunRange(a, x, 200, 120, 80);

  // A separately loaded copy of the same weights (another process, another
  // replica) takes the snapshot and continues bit for bit.
  const std::shared_ptr<const Model> again = Load(spec);
  ASSERT_EQ(again->fingerprint(), m->fingerprint());
  absl::StatusOr<Session> b = Session::Import(again, snap);
  ASSERT_TRUE(b.ok()) << b.status();
  EXPECT_EQ(b->position(), 120);
  EXPECT_EQ(b->batch(), 2);
  EXPECT_EQ(RunRange(*b, x, 200, 120, 80), rest);
}

TEST(ModelTest, SnapshotsOfAnotherModelOrCorruptedAreRefused) {
  const ModelSpec spec = S4Spec(Variants()[0].second);
  const std::shared_ptr<const Model> m = Load(spec, 7), other = Load(spec, 8);
  ASSERT_NE(m->fingerprint(), other->fingerprint());
  Session a = *Session::Create(m, 1);
  RunRange(a, RandomInput(10 * 3, 1), 10, 0, 10);
  const std::string snap = a.ExportState();

  absl::StatusOr<Session> wrong = Session::Import(other, snap);
  EXPECT_EQ(wrong.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(wrong.status().message()), HasSubstr("belongs to model 'test-s4'"));

  for (size_t i : {size_t{0}, size_t{9}, snap.size() / 2, snap.size() - 1}) {
    std::string bad = snap;
    bad[i] ^= 0x10;
    EXPECT_EQ(Session::Import(m, bad).status().code(), absl::StatusCode::kDataLoss) << i;
  }
  for (size_t len : {size_t{0}, size_t{5}, size_t{40}, snap.size() - 1}) {
    EXPECT_EQ(Session::Import(m, snap.substr(0, len)).status().code(),
              absl::StatusCode::kDataLoss)
        << len;
  }
  EXPECT_TRUE(Session::Import(m, snap).ok());
}

}  // namespace
}  // namespace ssm
