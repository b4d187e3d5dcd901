// Graceful drain on SIGTERM: health turns NOT_SERVING, new calls get
// UNAVAILABLE, the running stream finishes its work, and the process exits
// 0 within the drain timeout.
#include <csignal>
#include <string>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "client/ssm_client.h"
#include "gtest/gtest.h"
#include "tests/e2e/e2e_util.h"

namespace ssm::e2e {
namespace {

using client::Tensor;

TEST(ShutdownTest, SigtermDrainsGracefully) {
  const absl::Duration drain = absl::Seconds(8);
  absl::StatusOr<std::unique_ptr<ServerProcess>> server =
      ServerProcess::Start({"--drain_timeout=8s"});
  ASSERT_OK(server);
  auto client = ClientFor(**server);

  const Tensor input = MakeSequence(8, 4096, 1, 12);
  absl::StatusOr<client::InferResult> whole = client->Infer("s4-demo", input);
  ASSERT_OK(whole);
  absl::StatusOr<std::unique_ptr<client::Stream>> stream =
      client->OpenStream({.model = "s4-demo", .batch = 8});
  ASSERT_OK(stream);
  const Tensor head = SliceSteps(input, 0, 10);
  ASSERT_OK((*stream)->RunChunk(head.values, 10));

  // A large chunk (8 x 4086 steps through two S4 layers) is on its way
  // when the signal lands.
  const Tensor big = SliceSteps(input, 10, 4096);
  ASSERT_OK((*stream)->Send(big.values, 4086));
  const absl::Time signalled = absl::Now();
  (*server)->Signal(SIGTERM);

  // Health flips (polled on the existing connection: the listener may be
  // closing).
  bool saw_not_serving = false;
  std::string seen;
  for (int i = 0; i < 200 && !saw_not_serving; ++i) {
    absl::StatusOr<client::Client::ServingStatus> health = client->Health();
    if (health.ok() && *health == client::Client::ServingStatus::kNotServing) {
      saw_not_serving = true;
    } else {
      absl::StrAppend(&seen, health.ok() ? client::ServingStatusName(*health)
                                         : health.status().ToString(),
                      "\n");
      absl::SleepFor(absl::Milliseconds(10));
    }
  }
  EXPECT_TRUE(saw_not_serving) << "health answered:\n" << seen;

  // The in-flight chunk completes, with the right outputs.
  absl::StatusOr<client::StreamResult> r = (*stream)->Receive();
  ASSERT_OK(r);
  Tensor got = SliceSteps(whole->output, 0, 10);
  AppendSteps(&got, r->output);
  EXPECT_LE(MaxRelativeDiff(got, whole->output), kWireTolerance);
  EXPECT_EQ(r->position, 4096);

  // New calls and new streams are refused while it drains, by the server
  // itself (it keeps listening so that clients learn why).
  absl::StatusOr<client::InferResult> refused =
      client->Infer("s4-demo", MakeSequence(1, 8, 1));
  EXPECT_CODE(refused, kUnavailable);
  EXPECT_TRUE(absl::StrContains(refused.status().message(), "draining"))
      << refused.status();
  EXPECT_CODE(client->OpenStream({.model = "legt-delay"}), kUnavailable);
  EXPECT_CODE(client->ListModels(), kUnavailable);

  // The running stream ends cleanly; then the process exits 0 in time.
  EXPECT_OK((*stream)->Close());
  absl::StatusOr<int> code = (*server)->WaitExit(drain + absl::Seconds(5));
  ASSERT_OK(code);
  EXPECT_EQ(*code, 0) << (*server)->Log();
  EXPECT_LT(absl::Now() - signalled, drain + absl::Seconds(5));
}

// A stream still open when the drain timeout passes does not hold the
// process: it is cancelled and the server exits 0 anyway.
TEST(ShutdownTest, DrainTimeoutCancelsIdleStreams) {
  absl::StatusOr<std::unique_ptr<ServerProcess>> server =
      ServerProcess::Start({"--drain_timeout=1s"});
  ASSERT_OK(server);
  auto client = ClientFor(**server);
  absl::StatusOr<std::unique_ptr<client::Stream>> stream =
      client->OpenStream({.model = "legt-delay"});
  ASSERT_OK(stream);
  const absl::Time signalled = absl::Now();
  (*server)->Signal(SIGTERM);
  absl::StatusOr<int> code = (*server)->WaitExit(absl::Seconds(10));
  ASSERT_OK(code);
  EXPECT_EQ(*code, 0) << (*server)->Log();
  EXPECT_LT(absl::Now() - signalled, absl::Seconds(6));
  // The client learns that its stream is gone.
  const Tensor x = MakeSequence(1, 2, 1);
  absl::StatusOr<client::StreamResult> r = (*stream)->RunChunk(x.values, 2);
  EXPECT_FALSE(r.ok());
}

}  // namespace
}  // namespace ssm::e2e
