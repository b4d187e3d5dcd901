// The resume bookkeeping of a stream (client/resume.h) without a server:
// when checkpoints are asked for, what is kept for replay, what a reopen
// sends, and how many failures in a row it tolerates. The end-to-end
// behaviour (a killed replica, a restarted server) is in tests/e2e.
#include <optional>
#include <utility>
#include <vector>

#include "client/resume.h"
#include "gtest/gtest.h"

namespace ssm::client::internal {
namespace {

ResumePolicy Enabled(int64_t checkpoint_steps, int max_attempts = 5) {
  ResumePolicy p;
  p.enabled = true;
  p.checkpoint_steps = checkpoint_steps;
  p.max_attempts = max_attempts;
  return p;
}

SentChunk Chunk(int steps, float value) {
  SentChunk c;
  c.steps = steps;
  c.input.assign(steps, value);
  return c;
}

ssm::v1::StateSnapshot Snapshot(int64_t position) {
  ssm::v1::StateSnapshot s;
  s.set_data("state@" + std::to_string(position));
  s.set_position(position);
  return s;
}

ssm::v1::StreamOpened Opened() {
  ssm::v1::StreamOpened o;
  o.set_session_id("abc");
  o.set_model("s4-demo");
  o.set_version(3);
  o.set_batch(2);
  return o;
}

TEST(ResumeLogTest, DisabledDoesNothing) {
  ResumeLog log(ResumePolicy{});
  log.Start(Snapshot(4), 4, Opened());
  EXPECT_FALSE(log.CheckpointDue(4, 1000));
  log.Answered(Chunk(2, 1), nullptr, -1);
  EXPECT_TRUE(log.answered().empty());
}

// A checkpoint is due at the first chunk that reaches position + k; the
// next one k steps after that chunk's end (not after the due point).
TEST(ResumeLogTest, CheckpointsEveryKStepsFromWhereAChunkEnds) {
  ResumeLog log(Enabled(10));
  log.Start(std::nullopt, 5, Opened());    // due once 15 steps are sent
  EXPECT_FALSE(log.CheckpointDue(5, 4));   // 5..9
  EXPECT_FALSE(log.CheckpointDue(9, 5));   // ..14
  EXPECT_TRUE(log.CheckpointDue(14, 3));   // ..17: next due at 27
  EXPECT_FALSE(log.CheckpointDue(17, 9));  // ..26
  EXPECT_TRUE(log.CheckpointDue(26, 1));   // ..27
  EXPECT_TRUE(log.CheckpointDue(27, 25));  // ..52, longer than k
  EXPECT_FALSE(log.CheckpointDue(52, 9));
}

TEST(ResumeLogTest, ASnapshotReplacesTheChunksItCovers) {
  ResumeLog log(Enabled(100));
  log.Start(std::nullopt, 0, Opened());
  log.Answered(Chunk(2, 1), nullptr, -1);
  log.Answered(Chunk(3, 2), nullptr, -1);
  ASSERT_EQ(log.answered().size(), 2u);
  EXPECT_EQ(log.answered()[1].input, std::vector<float>(3, 2));
  // Without a snapshot, a reopen starts a fresh session of the version the
  // outputs came from, at 0, and replays both.
  ssm::v1::StreamOpen open = log.ReopenMessage(Opened());
  EXPECT_EQ(open.model(), "s4-demo");
  EXPECT_EQ(open.batch(), 2);
  EXPECT_EQ(open.version(), 3);
  EXPECT_FALSE(open.has_resume_from());
  EXPECT_EQ(open.session_id(), "");
  EXPECT_EQ(log.ReopenPosition(), 0);

  ssm::v1::StateSnapshot s = Snapshot(9);
  log.Answered(Chunk(4, 3), &s, -1);
  EXPECT_TRUE(log.answered().empty());
  log.Answered(Chunk(1, 4), nullptr, -1);
  ASSERT_EQ(log.answered().size(), 1u);
  EXPECT_EQ(log.answered()[0].steps, 1);
  open = log.ReopenMessage(Opened());
  ASSERT_TRUE(open.has_resume_from());
  EXPECT_EQ(open.resume_from().data(), "state@9");
  EXPECT_EQ(open.version(), 0);  // the snapshot says which
  EXPECT_EQ(log.ReopenPosition(), 9);
}

TEST(ResumeLogTest, StartsFromTheGivenBase) {
  ResumeLog log(Enabled(8));
  log.Start(Snapshot(40), 40, Opened());
  EXPECT_EQ(log.ReopenPosition(), 40);
  EXPECT_EQ(log.ReopenMessage(Opened()).resume_from().data(), "state@40");
  EXPECT_FALSE(log.CheckpointDue(40, 7));
  EXPECT_TRUE(log.CheckpointDue(47, 1));
}

TEST(ResumeLogTest, FailuresWithoutAnAnswerAreBounded) {
  ResumeLog log(Enabled(8, /*max_attempts=*/2));
  log.Start(std::nullopt, 0, Opened());
  EXPECT_TRUE(log.MayRecover());
  EXPECT_TRUE(log.MayRecover());
  EXPECT_FALSE(log.MayRecover());
  log.Answered(Chunk(1, 0), nullptr, -1);  // progress resets the count
  EXPECT_TRUE(log.MayRecover());
}

// Against a server with a session store the session is found again by its
// id; the log keeps only the chunks the store does not have yet and never
// asks for a snapshot.
TEST(ResumeLogTest, ADurableSessionKeepsOnlyWhatTheStoreLacks) {
  ssm::v1::StreamOpened opened = Opened();
  opened.set_durable(true);
  ResumeLog log(Enabled(4));
  log.Start(Snapshot(10), 10, opened);  // a base is not needed
  EXPECT_FALSE(log.CheckpointDue(10, 100));
  log.Answered(Chunk(2, 1), nullptr, -1);  // 10..12, nothing stored yet
  log.Answered(Chunk(3, 2), nullptr, 10);  // 12..15
  ASSERT_EQ(log.answered().size(), 2u);
  EXPECT_EQ(log.ReopenPosition(), 10);
  log.Answered(Chunk(4, 3), nullptr, 12);  // 15..19: the first is stored
  ASSERT_EQ(log.answered().size(), 2u);
  EXPECT_EQ(log.answered()[0].input, std::vector<float>(3, 2));
  EXPECT_EQ(log.ReopenPosition(), 12);
  // A store position inside a chunk keeps the chunk (chunks replay whole).
  log.Answered(Chunk(1, 4), nullptr, 17);
  ASSERT_EQ(log.answered().size(), 2u);
  EXPECT_EQ(log.ReopenPosition(), 15);
  log.Answered(Chunk(1, 5), nullptr, 20);  // 20..21 is not stored yet
  ASSERT_EQ(log.answered().size(), 1u);
  EXPECT_EQ(log.answered()[0].input, std::vector<float>(1, 5));
  EXPECT_EQ(log.ReopenPosition(), 20);
  log.Answered(Chunk(1, 6), nullptr, 22);  // everything is stored
  EXPECT_TRUE(log.answered().empty());
  EXPECT_EQ(log.ReopenPosition(), 22);

  const ssm::v1::StreamOpen open = log.ReopenMessage(opened);
  EXPECT_EQ(open.session_id(), "abc");
  EXPECT_FALSE(open.has_resume_from());
  EXPECT_EQ(open.version(), 0);
  EXPECT_EQ(open.model(), "s4-demo");
  EXPECT_EQ(open.batch(), 2);
}

}  // namespace
}  // namespace ssm::client::internal
