// Sessions across connections and processes: a snapshot continues in a
// fresh server process; a broken stream's session is reattachable within
// the TTL and gone after it; the client's resume-on-UNAVAILABLE moves a
// stream to another replica when its server dies.
#include <csignal>
#include <cstdio>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "client/ssm_client.h"
#include "gtest/gtest.h"
#include "tests/e2e/e2e_util.h"

namespace ssm::e2e {
namespace {

using client::Tensor;

class FreshProcessTest : public ::testing::TestWithParam<std::string> {};

// The portable-state promise: export mid-stream on one process, kill it,
// continue on a new process (ImportState + reattach, or resume_from) with
// the outputs the first would have produced.
TEST_P(FreshProcessTest, SnapshotContinuesIdentically) {
  const std::string model = GetParam();
  const Tensor input = MakeSequence(1, 300, 1, 8);
  const int64_t split = 137;

  ssm::v1::StateSnapshot snapshot;
  {
    absl::StatusOr<std::unique_ptr<ServerProcess>> first = ServerProcess::Start();
    ASSERT_OK(first);
    auto client = ClientFor(**first);
    absl::StatusOr<std::unique_ptr<client::Stream>> stream =
        client->OpenStream({.model = model});
    ASSERT_OK(stream);
    ASSERT_OK(StreamInChunks(**stream, SliceSteps(input, 0, split), {1, 20, 70}));
    absl::StatusOr<ssm::v1::StateSnapshot> exported =
        client->ExportState((*stream)->session_id());
    ASSERT_OK(exported);
    snapshot = *exported;
    EXPECT_EQ(snapshot.position(), split);
    (*first)->Signal(SIGKILL);  // nothing of the first process survives
    ASSERT_OK((*first)->WaitExit(absl::Seconds(10)));
  }

  absl::StatusOr<std::unique_ptr<ServerProcess>> second = ServerProcess::Start();
  ASSERT_OK(second);
  auto client = ClientFor(**second);
  absl::StatusOr<client::InferResult> whole = client->Infer(model, input);
  ASSERT_OK(whole);
  const Tensor want = SliceSteps(whole->output, split, 300);

  // ImportState, then reattach by id.
  absl::StatusOr<client::Client::Imported> imported =
      client->ImportState(snapshot, model);
  ASSERT_OK(imported);
  EXPECT_EQ(imported->position, split);
  absl::StatusOr<std::unique_ptr<client::Stream>> reattached =
      client->OpenStream({.model = model, .session_id = imported->session_id});
  ASSERT_OK(reattached);
  absl::StatusOr<Tensor> tail =
      StreamInChunks(**reattached, SliceSteps(input, split, 300), {1, 100});
  ASSERT_OK(tail);
  EXPECT_LE(MaxRelativeDiff(*tail, want), kWireTolerance);
  EXPECT_OK((*reattached)->Close());

  // Or straight from the snapshot in the open.
  absl::StatusOr<std::unique_ptr<client::Stream>> resumed =
      client->OpenStream({.model = model, .resume_from = snapshot});
  ASSERT_OK(resumed);
  EXPECT_EQ((*resumed)->opened().position(), split);
  tail = StreamInChunks(**resumed, SliceSteps(input, split, 300), {163});
  ASSERT_OK(tail);
  EXPECT_LE(MaxRelativeDiff(*tail, want), kWireTolerance);
  EXPECT_OK((*resumed)->Close());
}

INSTANTIATE_TEST_SUITE_P(Models, FreshProcessTest,
                         ::testing::Values("s4-demo", "legt-delay"),
                         [](const auto& info) {
                           std::string name = info.param;
                           for (char& c : name) {
                             if (c == '-') c = '_';
                           }
                           return name;
                         });

// Reattaching right after a cancel can race the server noticing it (the
// session is still attached: FAILED_PRECONDITION); retry briefly.
absl::StatusOr<std::unique_ptr<client::Stream>> Reattach(
    client::Client& client, const std::string& model, const std::string& id) {
  absl::StatusOr<std::unique_ptr<client::Stream>> stream;
  for (int i = 0; i < 100; ++i) {
    stream = client.OpenStream({.model = model, .session_id = id});
    if (stream.status().code() != absl::StatusCode::kFailedPrecondition) break;
    absl::SleepFor(absl::Milliseconds(20));
  }
  return stream;
}

TEST(SessionsTest, ReattachWithinTtlAndNotFoundAfterIt) {
  const absl::Duration ttl = absl::Seconds(2);
  absl::StatusOr<std::unique_ptr<ServerProcess>> server =
      ServerProcess::Start({"--session_ttl=2s"});
  ASSERT_OK(server);
  auto client = ClientFor(**server);
  const Tensor input = MakeSequence(1, 90, 1, 9);
  absl::StatusOr<client::InferResult> whole = client->Infer("s4-demo", input);
  ASSERT_OK(whole);

  std::string id;
  {
    absl::StatusOr<std::unique_ptr<client::Stream>> stream =
        client->OpenStream({.model = "s4-demo"});
    ASSERT_OK(stream);
    id = (*stream)->session_id();
    ASSERT_OK(StreamInChunks(**stream, SliceSteps(input, 0, 30), {4}));
    (*stream)->Detach();  // as if the connection broke
  }
  // Within the TTL: the same session, continuing where it was.
  absl::StatusOr<std::unique_ptr<client::Stream>> again =
      Reattach(*client, "s4-demo", id);
  ASSERT_OK(again);
  EXPECT_EQ((*again)->session_id(), id);
  EXPECT_EQ((*again)->opened().position(), 30);
  absl::StatusOr<Tensor> tail =
      StreamInChunks(**again, SliceSteps(input, 30, 60), {7});
  ASSERT_OK(tail);
  EXPECT_LE(MaxRelativeDiff(*tail, SliceSteps(whole->output, 30, 60)),
            kWireTolerance);
  // While attached, nobody else can take it.
  EXPECT_CODE(client->OpenStream({.model = "s4-demo", .session_id = id}),
              kFailedPrecondition);
  (*again)->Detach();
  again->reset();

  // ExportState counts as activity; after that, one idle TTL ends it.
  absl::StatusOr<ssm::v1::StateSnapshot> state;
  for (int i = 0; i < 100; ++i) {  // the detach may still be on its way
    state = client->ExportState(id);
    if (state.ok() || state.status().code() != absl::StatusCode::kNotFound) break;
    absl::SleepFor(absl::Milliseconds(20));
  }
  ASSERT_OK(state);
  EXPECT_EQ(state->position(), 60);
  absl::SleepFor(ttl + absl::Milliseconds(1500));
  EXPECT_CODE(client->OpenStream({.model = "s4-demo", .session_id = id}),
              kNotFound);
  EXPECT_CODE(client->ExportState(id), kNotFound);
  EXPECT_CODE(client->OpenStream({.model = "s4-demo",
                                  .session_id = "0123456789abcdef0123456789abcdef"}),
              kNotFound);
}

// Two replicas behind round_robin; the one holding the stream is killed
// mid-stream; the stream reopens on the other from its last checkpoint,
// replays, and the caller sees Infer's outputs, each exactly once.
TEST(SessionsTest, ResumeOnUnavailableMovesToAnotherReplica) {
  absl::StatusOr<std::unique_ptr<ServerProcess>> a = ServerProcess::Start();
  ASSERT_OK(a);
  absl::StatusOr<std::unique_ptr<ServerProcess>> b = ServerProcess::Start();
  ASSERT_OK(b);
  client::ClientOptions options;
  options.address =
      absl::StrCat("ipv4:", (*a)->address(), ",", (*b)->address());
  options.load_balancing = "round_robin";
  options.deadline = absl::Seconds(20);
  options.reconnect_backoff = absl::Milliseconds(50);
  options.max_reconnect_backoff = absl::Milliseconds(200);
  client::Client client(options);

  const Tensor input = MakeSequence(1, 200, 1, 10);
  absl::StatusOr<client::InferResult> whole = client.Infer("s4-demo", input);
  ASSERT_OK(whole);

  client::StreamOptions open{.model = "s4-demo"};
  open.resume.enabled = true;
  open.resume.checkpoint_steps = 16;
  open.resume.backoff = absl::Milliseconds(20);
  absl::StatusOr<std::unique_ptr<client::Stream>> stream = client.OpenStream(open);
  ASSERT_OK(stream);
  Tensor got;
  auto run = [&](int64_t t0, int64_t t1) -> absl::Status {
    for (int64_t t = t0; t < t1; t += 5) {
      const Tensor chunk = SliceSteps(input, t, t + 5);
      absl::StatusOr<client::StreamResult> r = (*stream)->RunChunk(chunk.values, 5);
      if (!r.ok()) return r.status();
      if (r->position != t + 5) return absl::InternalError("bad position");
      EXPECT_FALSE(r->state.has_value());  // checkpoints stay internal
      AppendSteps(&got, r->output);
    }
    return absl::OkStatus();
  };
  // Checkpoints land every 16 steps (after steps 20, 40, 60, 80): the
  // resume below replays the chunks to 85 and 90 from the last one.
  ASSERT_OK(run(0, 90));

  // Which replica holds the session? Ask each one directly.
  const std::string id = (*stream)->session_id();
  ServerProcess* holder = nullptr;
  for (ServerProcess* s : {a->get(), b->get()}) {
    if (ClientFor(*s)->ExportState(id).ok()) holder = s;
  }
  ASSERT_NE(holder, nullptr);
  holder->Signal(SIGKILL);
  ASSERT_OK(holder->WaitExit(absl::Seconds(10)));

  ASSERT_OK(run(90, 200));
  EXPECT_NE((*stream)->session_id(), id);  // a new session on the survivor
  EXPECT_LE(MaxRelativeDiff(got, whole->output), kWireTolerance);
  EXPECT_OK((*stream)->Close());
}

// One server, killed and restarted on the same port: the stream waits for
// it (ResumePolicy's attempts) and continues from its last checkpoint.
TEST(SessionsTest, ResumeOnUnavailableWaitsForARestartedServer) {
  absl::StatusOr<std::unique_ptr<ServerProcess>> server = ServerProcess::Start();
  ASSERT_OK(server);
  const int port = (*server)->port();
  client::ClientOptions options;
  options.address = (*server)->address();
  options.reconnect_backoff = absl::Milliseconds(50);
  options.max_reconnect_backoff = absl::Milliseconds(200);
  client::Client client(options);
  const Tensor input = MakeSequence(1, 120, 1, 15);
  absl::StatusOr<client::InferResult> whole = client.Infer("legt-delay", input);
  ASSERT_OK(whole);

  client::StreamOptions open{.model = "legt-delay"};
  open.resume.enabled = true;
  open.resume.checkpoint_steps = 25;
  open.resume.connect_timeout = absl::Seconds(4);
  open.resume.max_attempts = 6;
  absl::StatusOr<std::unique_ptr<client::Stream>> stream = client.OpenStream(open);
  ASSERT_OK(stream);
  absl::StatusOr<Tensor> head =
      StreamInChunks(**stream, SliceSteps(input, 0, 60), {6});
  ASSERT_OK(head);

  (*server)->Signal(SIGKILL);
  ASSERT_OK((*server)->WaitExit(absl::Seconds(10)));
  server->reset();

  // The stream goes on at once, finds no server, and retries; the server
  // comes back a second later. (This thread restarts it: the child dies
  // with the thread that forked it.)
  absl::StatusOr<Tensor> tail;
  std::thread feeder([&] {
    tail = StreamInChunks(**stream, SliceSteps(input, 60, 120), {6});
  });
  absl::SleepFor(absl::Seconds(1));
  server = ServerProcess::Start({}, port);
  const absl::Time restarted = absl::Now();
  feeder.join();
  ASSERT_OK(server);
  ASSERT_OK(tail);
  std::printf("stream done %s after the new server was SERVING\n",
              absl::FormatDuration(absl::Now() - restarted).c_str());
  AppendSteps(&*head, *tail);
  EXPECT_LE(MaxRelativeDiff(*head, whole->output), kWireTolerance);
  EXPECT_OK((*stream)->Close());
}

}  // namespace
}  // namespace ssm::e2e
