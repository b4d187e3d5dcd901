// A server on a Unix-domain socket (--address=unix:PATH), for co-located
// clients: it serves as it does on TCP (the same outputs, bit for bit, in
// a stream and in Infer), says where it listens without a plaintext
// warning, and its connection guard counts the socket's connections.
#include <unistd.h>

#include <cmath>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "client/ssm_client.h"
#include "gtest/gtest.h"
#include "tests/e2e/e2e_util.h"

namespace ssm::e2e {
namespace {

using client::Client;
using client::Tensor;

std::unique_ptr<Client> ClientAt(const std::string& address) {
  client::ClientOptions options;
  options.address = address;
  options.deadline = absl::Seconds(20);
  options.wait_for_ready = true;
  return std::make_unique<Client>(options);
}

// The outputs of `input` streamed one step per chunk, lock-step.
absl::StatusOr<Tensor> LockStepOutputs(Client& client, const Tensor& input) {
  absl::StatusOr<std::unique_ptr<client::Stream>> stream = client.OpenStream({.model = "s4-demo"});
  if (!stream.ok()) return stream.status();
  absl::StatusOr<Tensor> out = (*stream)->Run(input, /*chunk_steps=*/1);
  if (!out.ok()) return out.status();
  if (absl::Status closed = (*stream)->Close(); !closed.ok()) return closed;
  return out;
}

TEST(UnixSocketTest, ServesLikeTcpAndItsConnectionsAreCounted) {
  const std::string path = absl::StrCat(::testing::TempDir(), "/ssm-e2e-", getpid(), ".sock");
  absl::StatusOr<int> health = PickFreePort();
  absl::StatusOr<int> metrics = PickFreePort();
  ASSERT_OK(health);
  ASSERT_OK(metrics);
  // Health on TCP: ServerProcess waits for SERVING there.
  absl::StatusOr<std::unique_ptr<ServerProcess>> server = ServerProcess::Start(
      {"--address=unix:" + path, absl::StrCat("--health_address=127.0.0.1:", *health),
       absl::StrCat("--metrics_port=", *metrics)},
      /*port=*/0, absl::Seconds(30), *health);
  ASSERT_OK(server);
  const std::string log = (*server)->Log();
  EXPECT_TRUE(absl::StrContains(log, "ssm_server started on unix:" + path)) << log;
  EXPECT_TRUE(absl::StrContains(log, "listening on unix:" + path)) << log;
  EXPECT_FALSE(absl::StrContains(log, "WARNING: plaintext")) << log;

  std::unique_ptr<Client> local = ClientAt("unix:" + path);
  std::unique_ptr<Client> tcp = ClientFor(SharedServer());
  const Tensor input = MakeSequence(1, 40, 1, 11);
  absl::StatusOr<Tensor> over_unix = LockStepOutputs(*local, input);
  absl::StatusOr<Tensor> over_tcp = LockStepOutputs(*tcp, input);
  ASSERT_OK(over_unix);
  ASSERT_OK(over_tcp);
  EXPECT_EQ(over_unix->values, over_tcp->values);  // the same bits
  absl::StatusOr<client::InferResult> whole = local->Infer("s4-demo", input);
  ASSERT_OK(whole);
  EXPECT_LE(MaxRelativeDiff(*over_unix, whole->output), kWireTolerance);

  // The guard scans every 200 ms; the one connection is the local client's
  // (the health and metrics listeners are not the gRPC socket).
  double open = -1;
  for (const absl::Time deadline = absl::Now() + absl::Seconds(5);
       open != 1 && absl::Now() < deadline; absl::SleepFor(absl::Milliseconds(50))) {
    absl::StatusOr<std::string> text = HttpGet(*metrics, "/metrics");
    ASSERT_OK(text);
    open = MetricValue(*text, "ssm_connections_open");
  }
  EXPECT_EQ(open, 1);
}

}  // namespace
}  // namespace ssm::e2e
