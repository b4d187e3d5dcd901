// Three replicas of ssm_server on loopback behind one round_robin channel
// (`ipv4:127.0.0.1:p1,127.0.0.1:p2,127.0.0.1:p3`, what a client gets from a
// headless Service in Kubernetes), carrying a dozen streams (legt-delay and
// s4-demo) with the client library's resume-on-UNAVAILABLE:
//
//  - KillOneReplicaMidStream: the replica holding the most sessions is
//    SIGKILLed while every stream is running (paced chunks, one after
//    another);
//  - RollingRestart: each replica in turn gets SIGTERM (drains, exits 0),
//    is started again on the same port and waited for until SERVING, then
//    the next one, while the streams keep going.
//  - ConnectionAgeMovesStreams: every replica runs with
//    --max_connection_age (what deploy/ sets so long-lived connections
//    rebalance): each connection gets GOAWAY, its streams are cut after
//    the grace and resume on a fresh connection, again and again.
//
// Every stream must end with the outputs of an uninterrupted run (Infer
// over the same input, to float32 rounding): each step once, none lost,
// none repeated;
// the streams whose replica went away must have moved to another session,
// the others must not have noticed.
//
// All servers are started and stopped by the test thread (a child dies with
// the thread that forked it, PR_SET_PDEATHSIG); the streams run on their
// own threads. Each test takes a few seconds and is bounded well below 60 s.
#include <algorithm>
#include <atomic>
#include <csignal>
#include <cstdio>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "client/ssm_client.h"
#include "gtest/gtest.h"
#include "tests/e2e/e2e_util.h"

namespace ssm::e2e {
namespace {

using client::Tensor;

constexpr int kReplicas = 3;
constexpr int kStreams = 12;
// The resume checkpoint: the state is asked for every this many steps, and
// a resume replays the chunks since the last one.
constexpr int64_t kCheckpointSteps = 32;
// Chunk lengths, cycled: recurrent steps of several sizes and one chunk long
// enough (>= 64 steps) to run as a convolution from the carried state.
const std::vector<int>& ChunkPattern() {
  static const auto* pattern = new std::vector<int>{3, 8, 5, 70, 1, 13};
  return *pattern;
}

// One worker thread per replica (three servers and the test share a small
// machine) and a short drain, so that a rolling restart takes seconds (in
// Kubernetes the default 20 s drain is the right one).
std::vector<std::string> ReplicaFlags() {
  return {"--threads=1", "--drain_timeout=1s"};
}

// Three ssm_server processes and what the test needs to see inside them.
class Replicas {
 public:
  // `extra_flags` go to every replica after ReplicaFlags().
  explicit Replicas(std::vector<std::string> extra_flags = {})
      : flags_(ReplicaFlags()) {
    flags_.insert(flags_.end(), extra_flags.begin(), extra_flags.end());
  }

  absl::Status Start() {
    for (int i = 0; i < kReplicas; ++i) {
      absl::StatusOr<std::unique_ptr<ServerProcess>> server =
          ServerProcess::Start(flags_);
      if (!server.ok()) return server.status();
      servers_.push_back(*std::move(server));
    }
    return absl::OkStatus();
  }

  // "ipv4:127.0.0.1:p1,127.0.0.1:p2,127.0.0.1:p3".
  std::string Target() const {
    std::vector<std::string> addresses;
    for (const auto& s : servers_) addresses.push_back(s->address());
    return absl::StrCat("ipv4:", absl::StrJoin(addresses, ","));
  }

  ServerProcess& replica(int i) { return *servers_[i]; }

  // Which replica holds each session id (-1: none), asked of each replica
  // directly (ExportState answers for attached sessions, waiting for a
  // running chunk, and NOT_FOUND elsewhere).
  std::vector<int> Holders(const std::vector<std::string>& ids) {
    std::vector<int> holders(ids.size(), -1);
    for (int r = 0; r < kReplicas; ++r) {
      if (!servers_[r]->Running()) continue;
      std::unique_ptr<client::Client> direct = ClientFor(*servers_[r]);
      for (size_t i = 0; i < ids.size(); ++i) {
        if (direct->ExportState(ids[i]).ok()) holders[i] = r;
      }
    }
    return holders;
  }

  // SIGTERM to replica i, which must drain and exit 0; then a new process
  // on the same port, returned once it is SERVING.
  absl::Status RollOne(int i, absl::Duration* drained) {
    ServerProcess& old = *servers_[i];
    const int port = old.port();
    const absl::Time signalled = absl::Now();
    old.Signal(SIGTERM);
    absl::StatusOr<int> code = old.WaitExit(absl::Seconds(15));
    if (!code.ok()) return code.status();
    *drained = absl::Now() - signalled;
    if (*code != 0) {
      return absl::InternalError(absl::StrCat(
          "replica ", i, " exited with ", *code, " after SIGTERM; log:\n",
          old.Log()));
    }
    servers_[i].reset();
    absl::StatusOr<std::unique_ptr<ServerProcess>> again =
        ServerProcess::Start(flags_, port);
    if (!again.ok()) return again.status();
    servers_[i] = *std::move(again);
    return absl::OkStatus();
  }

 private:
  std::vector<std::string> flags_;
  std::vector<std::unique_ptr<ServerProcess>> servers_;
};

std::unique_ptr<client::Client> RoundRobinClient(const Replicas& replicas) {
  client::ClientOptions options;
  options.address = replicas.Target();
  options.load_balancing = "round_robin";
  options.deadline = absl::Seconds(20);
  options.reconnect_backoff = absl::Milliseconds(50);
  options.max_reconnect_backoff = absl::Milliseconds(200);
  return std::make_unique<client::Client>(options);
}

client::StreamOptions ResumableStream(const std::string& model) {
  client::StreamOptions open{.model = model};
  open.resume.enabled = true;
  open.resume.checkpoint_steps = kCheckpointSteps;
  open.resume.max_attempts = 8;  // backoffs 20 ms .. 2.6 s: 5 s in all
  open.resume.backoff = absl::Milliseconds(20);
  open.resume.connect_timeout = absl::Seconds(3);
  return open;
}

// What the test thread tells the stream threads.
struct Control {
  // Set once every stream stands at its pause point: go on.
  absl::Notification go;
  // Set when the disruption is over: finish with `tail_chunks` more chunks.
  std::atomic<bool> wind_down{false};
  // Set when the test gives up (a failed assertion): stop at once.
  std::atomic<bool> abort{false};
  std::atomic<int> paused{0};
  std::atomic<int> opened{0};
};

// How a stream runs.
struct Plan {
  int64_t length = 0;          // input steps available
  int64_t pause_at = -1;       // wait for Control::go at this position (-1: no)
  absl::Duration pace;         // sleep between chunks (after the pause, if any)
  int tail_chunks = -1;        // >= 0: end this many chunks after wind_down
};

// One stream on its own thread: its input, what came back, and the session
// ids it went through (a new one after each resume).
class StreamRun {
 public:
  StreamRun(int index, client::Client& client, Control& control,
            const Plan& plan)
      : model_(index % 2 == 0 ? "legt-delay" : "s4-demo"),
        input_(MakeSequence(1, plan.length, 1, 100 + index)),
        client_(client),
        control_(control),
        plan_(plan) {}

  ~StreamRun() {
    control_.abort = true;
    if (thread_.joinable()) thread_.join();
  }

  void Start() { thread_ = std::thread([this] { status_ = Run(); }); }
  void Join() {
    if (thread_.joinable()) thread_.join();
  }

  const std::string& model() const { return model_; }
  const Tensor& input() const { return input_; }
  // After Join().
  const absl::Status& status() const { return status_; }
  const Tensor& output() const { return output_; }
  int64_t steps() const { return position_; }
  const std::vector<std::string>& sessions() const { return sessions_; }
  bool wound_down() const { return wound_down_; }
  // The slowest chunk, a resume (reconnect, reopen, replay) included.
  absl::Duration longest_chunk() const { return longest_chunk_; }
  // Any time.
  int64_t position() const { return position_; }
  std::string session_id() const {
    absl::MutexLock lock(&mu_);
    return current_session_;
  }

 private:
  absl::Status Run() {
    absl::StatusOr<std::unique_ptr<client::Stream>> stream =
        client_.OpenStream(ResumableStream(model_));
    if (!stream.ok()) return stream.status();
    NoteSession((*stream)->session_id());
    ++control_.opened;
    const std::vector<int>& pattern = ChunkPattern();
    bool paused = false;
    int tail = plan_.tail_chunks;
    int64_t t = 0;
    for (size_t k = 0; t < plan_.length; k = (k + 1) % pattern.size()) {
      if (control_.abort) return absl::AbortedError("the test gave up");
      if (plan_.pause_at >= 0 && !paused && t >= plan_.pause_at) {
        ++control_.paused;
        while (!control_.go.WaitForNotificationWithTimeout(
            absl::Milliseconds(50))) {
          if (control_.abort) return absl::AbortedError("the test gave up");
        }
        paused = true;
      }
      if (plan_.tail_chunks >= 0 && control_.wind_down) {
        wound_down_ = true;
        if (tail-- == 0) break;
      }
      const int64_t steps = std::min<int64_t>(pattern[k], plan_.length - t);
      const Tensor chunk = SliceSteps(input_, t, t + steps);
      const absl::Time sent = absl::Now();
      absl::StatusOr<client::StreamResult> r =
          (*stream)->RunChunk(chunk.values, static_cast<int>(steps));
      longest_chunk_ = std::max(longest_chunk_, absl::Now() - sent);
      if (!r.ok()) {
        return absl::Status(r.status().code(),
                            absl::StrCat("chunk at step ", t, ": ",
                                         r.status().message()));
      }
      if (r->position != t + steps || r->output.shape.size() != 3 ||
          r->output.shape[1] != steps) {
        return absl::InternalError(absl::StrCat(
            "chunk [", t, ", ", t + steps, ") answered with position ",
            r->position, " and ", r->output.shape.size() == 3
                                      ? r->output.shape[1] : -1,
            " steps"));
      }
      AppendSteps(&output_, r->output);
      t += steps;
      position_ = t;
      NoteSession((*stream)->session_id());
      if ((plan_.pause_at < 0 || paused) && plan_.pace > absl::ZeroDuration()) {
        absl::SleepFor(plan_.pace);
      }
    }
    return (*stream)->Close();
  }

  void NoteSession(const std::string& id) {
    absl::MutexLock lock(&mu_);
    if (sessions_.empty() || sessions_.back() != id) sessions_.push_back(id);
    current_session_ = id;
  }

  const std::string model_;
  const Tensor input_;
  client::Client& client_;
  Control& control_;
  const Plan plan_;
  std::thread thread_;
  absl::Status status_;
  Tensor output_;
  std::atomic<int64_t> position_{0};
  bool wound_down_ = false;
  absl::Duration longest_chunk_;
  mutable absl::Mutex mu_;
  std::vector<std::string> sessions_;  // written by the stream thread only
  std::string current_session_ ABSL_GUARDED_BY(mu_);
};

// kStreams streams of `plan`, each started on its own thread.
std::vector<std::unique_ptr<StreamRun>> StartStreams(client::Client& client, Control& control,
                                                     const Plan& plan) {
  std::vector<std::unique_ptr<StreamRun>> runs;
  for (int i = 0; i < kStreams; ++i) {
    runs.push_back(std::make_unique<StreamRun>(i, client, control, plan));
    runs.back()->Start();
  }
  return runs;
}

// Waits up to `timeout` for `done`.
template <typename F>
bool WaitFor(F done, absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  while (!done()) {
    if (absl::Now() >= deadline) return false;
    absl::SleepFor(absl::Milliseconds(5));
  }
  return true;
}

std::vector<std::string> SessionIds(
    const std::vector<std::unique_ptr<StreamRun>>& runs) {
  std::vector<std::string> ids;
  for (const auto& run : runs) ids.push_back(run->session_id());
  return ids;
}

absl::Duration LongestChunk(
    const std::vector<std::unique_ptr<StreamRun>>& runs) {
  absl::Duration longest;
  for (const auto& run : runs) longest = std::max(longest, run->longest_chunk());
  return longest;
}

std::string Distribution(const std::vector<int>& holders) {
  std::vector<int> count(kReplicas + 1, 0);
  for (int h : holders) ++count[h < 0 ? kReplicas : h];
  return absl::StrCat(count[0], "/", count[1], "/", count[2],
                      count[kReplicas] ? absl::StrCat(" (", count[kReplicas],
                                                      " nowhere)")
                                       : "");
}

// Every stream ended cleanly with Infer's outputs over the steps it ran:
// each step exactly once (a lost or repeated step shifts the sequence and
// shows far above the float32 tolerance).
void ExpectUninterruptedOutputs(
    client::Client& client,
    const std::vector<std::unique_ptr<StreamRun>>& runs) {
  for (size_t i = 0; i < runs.size(); ++i) {
    const StreamRun& run = *runs[i];
    SCOPED_TRACE(absl::StrCat("stream ", i, " (", run.model(), ")"));
    ASSERT_OK(run.status());
    ASSERT_GT(run.steps(), 0);
    // The reference call may meet a connection that is being rebalanced
    // (GOAWAY from --max_connection_age): retry what never ran.
    absl::StatusOr<client::InferResult> want;
    for (int attempt = 0; attempt < 5; ++attempt) {
      want = client.Infer(run.model(), SliceSteps(run.input(), 0, run.steps()));
      if (want.status().code() != absl::StatusCode::kUnavailable) break;
      absl::SleepFor(absl::Milliseconds(100));
    }
    ASSERT_OK(want);
    EXPECT_LE(MaxRelativeDiff(run.output(), want->output), kWireTolerance);
  }
}

TEST(ReplicasTest, KillOneReplicaMidStream) {
  const absl::Time start = absl::Now();
  Replicas replicas;
  ASSERT_OK(replicas.Start());
  std::unique_ptr<client::Client> client = RoundRobinClient(replicas);
  ASSERT_TRUE(client->WaitForConnected(absl::Seconds(10)));
  // Let round_robin connect to all three before the streams open, so that
  // they spread (and some stay on the survivors).
  for (int i = 0; i < 2 * kReplicas; ++i) ASSERT_OK(client->ListModels());

  // 600 steps each; at step 200 every stream waits, then all go on at
  // once, paced so that they are still running well after the kill.
  Control control;
  const Plan plan{.length = 600, .pause_at = 200,
                  .pace = absl::Milliseconds(8)};
  std::vector<std::unique_ptr<StreamRun>> runs = StartStreams(*client, control, plan);
  ASSERT_TRUE(WaitFor([&] { return control.paused == kStreams; },
                      absl::Seconds(20)))
      << control.paused << " of " << kStreams << " streams reached step 200";

  // The replica holding the most sessions goes.
  const std::vector<std::string> before = SessionIds(runs);
  const std::vector<int> holders = replicas.Holders(before);
  std::vector<int> held(kReplicas, 0);
  for (int h : holders) {
    ASSERT_GE(h, 0) << "a paused stream's session is on no replica";
    ++held[h];
  }
  const int victim = static_cast<int>(
      std::max_element(held.begin(), held.end()) - held.begin());
  std::printf("sessions per replica: %s; killing replica %d (%d sessions)\n",
              Distribution(holders).c_str(), victim, held[victim]);

  control.go.Notify();
  absl::SleepFor(absl::Milliseconds(20));  // every stream under way again
  std::vector<int64_t> at_kill;
  for (const auto& run : runs) at_kill.push_back(run->position());
  replicas.replica(victim).Signal(SIGKILL);
  ASSERT_OK(replicas.replica(victim).WaitExit(absl::Seconds(10)));
  const absl::Time killed = absl::Now();
  for (auto& run : runs) run->Join();
  std::printf("streams done %s after the kill\n",
              absl::FormatDuration(absl::Now() - killed).c_str());

  int moved = 0;
  for (size_t i = 0; i < runs.size(); ++i) {
    const StreamRun& run = *runs[i];
    SCOPED_TRACE(absl::StrCat("stream ", i, " (", run.model(), ")"));
    ASSERT_OK(run.status());
    EXPECT_EQ(run.steps(), plan.length);
    EXPECT_LT(at_kill[i], plan.length) << "finished before the kill";
    if (holders[i] == victim) {
      // Resumed on a survivor: a new session, once.
      ++moved;
      EXPECT_EQ(run.sessions().size(), 2u)
          << absl::StrJoin(run.sessions(), ", ");
    } else {
      // Its replica lives: the same session throughout.
      EXPECT_EQ(run.sessions().size(), 1u)
          << absl::StrJoin(run.sessions(), ", ");
    }
  }
  EXPECT_EQ(moved, held[victim]);
  ExpectUninterruptedOutputs(*client, runs);
  const absl::Duration took = absl::Now() - start;
  std::printf("%d streams moved; slowest chunk (a resume) %s; test took %s\n",
              moved, absl::FormatDuration(LongestChunk(runs)).c_str(),
              absl::FormatDuration(took).c_str());
  EXPECT_LT(took, absl::Seconds(60));
}

TEST(ReplicasTest, RollingRestart) {
  const absl::Time start = absl::Now();
  Replicas replicas;
  ASSERT_OK(replicas.Start());
  std::unique_ptr<client::Client> client = RoundRobinClient(replicas);
  ASSERT_TRUE(client->WaitForConnected(absl::Seconds(10)));
  // Let round_robin connect to all three before the streams open, so that
  // they spread.
  for (int i = 0; i < 2 * kReplicas; ++i) ASSERT_OK(client->ListModels());

  // Paced streams that run until the roll is over (then 10 chunks more);
  // the input is long enough for ~40 s at this pace.
  Control control;
  const Plan plan{.length = 12000, .pace = absl::Milliseconds(12),
                  .tail_chunks = 10};
  std::vector<std::unique_ptr<StreamRun>> runs = StartStreams(*client, control, plan);
  ASSERT_TRUE(WaitFor(
      [&] {
        for (const auto& run : runs) {
          if (run->position() < 2 * kCheckpointSteps) return false;
        }
        return true;
      },
      absl::Seconds(20)))
      << "the streams did not get going";

  // One replica at a time: which streams it holds, SIGTERM (drain: its
  // streams go on until --drain_timeout, then break and resume elsewhere),
  // a new process on its port, SERVING, next.
  std::vector<std::string> on_drained;  // sessions of a replica at its SIGTERM
  for (int r = 0; r < kReplicas; ++r) {
    const std::vector<std::string> ids = SessionIds(runs);
    const std::vector<int> holders = replicas.Holders(ids);
    int held = 0;
    for (size_t i = 0; i < ids.size(); ++i) {
      if (holders[i] == r) {
        ++held;
        on_drained.push_back(ids[i]);
      }
    }
    absl::Duration drained;
    ASSERT_OK(replicas.RollOne(r, &drained));
    std::printf("replica %d: held %d of %d sessions (spread %s); exited %s "
                "after SIGTERM; SERVING again at t = %s\n",
                r, held, kStreams, Distribution(holders).c_str(),
                absl::FormatDuration(drained).c_str(),
                absl::FormatDuration(absl::Now() - start).c_str());
  }
  control.wind_down = true;
  for (auto& run : runs) run->Join();

  // Every session that sat on a replica when it was told to go was left
  // behind: the stream went on in another one.
  int moves = 0;
  for (size_t i = 0; i < runs.size(); ++i) {
    const StreamRun& run = *runs[i];
    SCOPED_TRACE(absl::StrCat("stream ", i, " (", run.model(), ")"));
    ASSERT_OK(run.status());
    EXPECT_TRUE(run.wound_down())
        << "ran out of input (" << run.steps() << " steps) before the roll "
        << "was over";
    moves += static_cast<int>(run.sessions().size()) - 1;
    for (const std::string& id : on_drained) {
      EXPECT_NE(run.sessions().back(), id) << "still on a drained session";
    }
  }
  EXPECT_GE(moves, static_cast<int>(on_drained.size()));
  EXPECT_GT(on_drained.size(), 0u);
  ExpectUninterruptedOutputs(*client, runs);
  const absl::Duration took = absl::Now() - start;
  std::printf("%zu sessions drained away, %d moves in all; slowest chunk (a "
              "resume) %s; test took %s\n",
              on_drained.size(), moves,
              absl::FormatDuration(LongestChunk(runs)).c_str(),
              absl::FormatDuration(took).c_str());
  EXPECT_LT(took, absl::Seconds(60));
}

TEST(ReplicasTest, ConnectionAgeMovesStreams) {
  const absl::Time start = absl::Now();
  // deploy/ uses 10m and 30s; here a connection lives ~1 s (gRPC adds
  // +-10% jitter) and a stream outlives its GOAWAY by 300 ms at most.
  Replicas replicas({"--max_connection_age=1s", "--max_connection_age_grace=300ms"});
  ASSERT_OK(replicas.Start());
  std::unique_ptr<client::Client> client = RoundRobinClient(replicas);
  ASSERT_TRUE(client->WaitForConnected(absl::Seconds(10)));

  // Paced streams that run for ~4 s, several connection lifetimes, then
  // end with 10 chunks more.
  Control control;
  const Plan plan{.length = 12000, .pace = absl::Milliseconds(8),
                  .tail_chunks = 10};
  std::vector<std::unique_ptr<StreamRun>> runs = StartStreams(*client, control, plan);
  absl::SleepFor(absl::Seconds(4));
  control.wind_down = true;
  for (auto& run : runs) run->Join();

  int moves = 0, moved_streams = 0;
  for (size_t i = 0; i < runs.size(); ++i) {
    const StreamRun& run = *runs[i];
    SCOPED_TRACE(absl::StrCat("stream ", i, " (", run.model(), ")"));
    ASSERT_OK(run.status());
    EXPECT_TRUE(run.wound_down()) << "ran out of input after " << run.steps() << " steps";
    const int m = static_cast<int>(run.sessions().size()) - 1;
    moves += m;
    moved_streams += m > 0;
  }
  // Every stream lived through at least two connection lifetimes: each
  // was cut at least once, and went on from its last checkpoint.
  EXPECT_EQ(moved_streams, kStreams) << moves << " moves in all";
  ExpectUninterruptedOutputs(*client, runs);
  const absl::Duration took = absl::Now() - start;
  std::printf("max_connection_age 1s: %d streams, %d moves in all; slowest "
              "chunk (a resume) %s; test took %s\n",
              kStreams, moves, absl::FormatDuration(LongestChunk(runs)).c_str(),
              absl::FormatDuration(took).c_str());
  EXPECT_LT(took, absl::Seconds(60));
}

}  // namespace
}  // namespace ssm::e2e
