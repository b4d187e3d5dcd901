// Durable sessions against the real binaries (issue 12): three replicas
// share a real redis-server (--session_store); clients that know only their
// session id (no snapshots: raw stubs, as a Python or Node client written
// against the proto would be) move to another replica when theirs goes
// away, replay the chunks after StreamOpened.position, and every output
// reaches them exactly once, equal to Infer's.
//
//  - KillTheBusiestReplica: 64 lock-step streams; the replica holding the
//    most is SIGKILLed; the steps recomputed per stream are only those of
//    the last checkpoint interval.
//  - RollingRestart: each replica in turn is drained (SIGTERM) and started
//    again while the streams run.
//  - TwoClientsRaceForOneSession: one wins, the other gets
//    FAILED_PRECONDITION; after the winner's replica dies, the loser takes
//    over once the lease expires.
//  - TheStoreRestarts: redis-server (with its append-only file) is stopped
//    and started again mid-run; nothing checkpointed is lost and the
//    metrics say what happened.
//  - TheClientLibraryResumesByIdWithChunksInFlight: the C++ client's
//    resume, pipelined, through a SIGKILL and a drain.
#include <grpcpp/grpcpp.h>
#include <signal.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "client/ssm_client.h"
#include "gtest/gtest.h"
#include "ssm/v1/ssm_service.grpc.pb.h"
#include "tests/common/redis_process.h"
#include "tests/e2e/e2e_util.h"

namespace ssm::e2e {
namespace {

namespace v1 = ::ssm::v1;
using client::Tensor;
using ssm::testing::RedisProcess;

constexpr absl::Duration kLease = absl::Seconds(2);
constexpr absl::Duration kCheckpoint = absl::Milliseconds(500);

// Three replicas on fixed ports (so a restarted one comes back where
// clients look), sharing `redis`.
class Replicas {
 public:
  explicit Replicas(const RedisProcess& redis, int count = 3) : redis_url_(redis.url()) {
    for (int i = 0; i < count; ++i) {
      absl::StatusOr<int> port = PickFreePort();
      EXPECT_TRUE(port.ok());
      ports_.push_back(*port);
      servers_.emplace_back();
      Start(i);
    }
  }
  void Start(int i) {
    absl::StatusOr<std::unique_ptr<ServerProcess>> s = ServerProcess::Start(
        {"--session_store=" + redis_url_,
         absl::StrCat("--session_lease=", absl::FormatDuration(kLease)),
         absl::StrCat("--session_checkpoint=", absl::FormatDuration(kCheckpoint)),
         "--drain_timeout=1s", "--session_store_timeout=500ms"},
        ports_[i]);
    ASSERT_TRUE(s.ok()) << s.status();
    servers_[i] = *std::move(s);
  }
  ServerProcess& server(int i) { return *servers_[i]; }
  std::string address(int i) const { return absl::StrCat("127.0.0.1:", ports_[i]); }
  int size() const { return static_cast<int>(ports_.size()); }

 private:
  std::string redis_url_;
  std::vector<int> ports_;
  std::vector<std::unique_ptr<ServerProcess>> servers_;
};

std::unique_ptr<v1::Inference::Stub> StubFor(const std::string& address) {
  grpc::ChannelArguments args;
  args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
  args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 50);
  args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 200);
  return v1::Inference::NewStub(
      grpc::CreateCustomChannel(address, grpc::InsecureChannelCredentials(), args));
}

// One stream of single steps over `input`, knowing only its session id
// when it has to move: on a failure it reopens by id on the next replica
// (waiting out a lease that a dead replica still holds), replays the steps
// after opened.position, checks the recomputed outputs equal the ones it
// already had, and goes on.
class DurableStream {
 public:
  // `pace`: a pause after each step, so the stream lasts while the test
  // restarts things around it.
  DurableStream(Replicas& replicas, int first_replica, Tensor input,
                absl::Duration pace = absl::ZeroDuration())
      : replicas_(replicas), replica_(first_replica), input_(std::move(input)), pace_(pace) {}

  // Runs to the end of the input; the status of the first unrecoverable
  // failure otherwise.
  absl::Status Run(const std::atomic<bool>& stop) {
    const int total = static_cast<int>(input_.shape[1]);
    const absl::Time deadline = absl::Now() + absl::Seconds(60);
    while (static_cast<int>(outputs_.size()) < total && !stop.load()) {
      if (absl::Now() > deadline) return absl::DeadlineExceededError("the stream never finished");
      absl::Status status = Segment(total, stop);
      if (status.ok()) continue;
      if (status.code() != absl::StatusCode::kUnavailable &&
          status.code() != absl::StatusCode::kCancelled &&
          status.code() != absl::StatusCode::kFailedPrecondition) {
        return status;  // not a replica going away
      }
      absl::MutexLock lock(&mu_);
      if (status.code() != absl::StatusCode::kFailedPrecondition) {
        replica_ = (replica_ + 1) % replicas_.size();
        ++moves_;
      }
      absl::SleepFor(absl::Milliseconds(100));
    }
    return absl::OkStatus();
  }

  const std::vector<float>& outputs() const { return outputs_; }
  const std::vector<absl::Time>& acked_at() const { return acked_at_; }
  int64_t recomputed() const { return recomputed_; }
  int64_t recomputed_max() const { return recomputed_max_; }
  int moves() const { return moves_; }
  int replica() const {
    absl::MutexLock lock(&mu_);
    return replica_;
  }
  const std::string& id() const { return id_; }
  int64_t durable_position() const { return durable_position_; }

 private:
  absl::Status Segment(int total, const std::atomic<bool>& stop) {
    int replica;
    {
      absl::MutexLock lock(&mu_);
      replica = replica_;
    }
    auto stub = StubFor(replicas_.address(replica));
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
    auto stream = stub->StreamInfer(&context);
    v1::StreamRequest open;
    if (id_.empty()) {
      open.mutable_open()->set_model("s4-demo");
    } else {
      open.mutable_open()->set_session_id(id_);
    }
    v1::StreamResponse response;
    if (!stream->Write(open) || !stream->Read(&response)) return Finish(stream.get());
    if (!response.opened().durable()) return absl::InternalError("the session is not durable");
    id_ = response.opened().session_id();
    int64_t position = response.opened().position();
    if (position > static_cast<int64_t>(outputs_.size())) {
      return absl::InternalError("the store is ahead of what the client received");
    }
    const int64_t replay = static_cast<int64_t>(outputs_.size()) - position;
    recomputed_ += replay;
    recomputed_max_ = std::max(recomputed_max_, replay);
    while (position < total && !stop.load()) {
      v1::StreamRequest chunk;
      for (int64_t d : {1, 1, 1}) chunk.mutable_chunk()->add_shape(d);
      chunk.mutable_chunk()->add_values(input_.values[position]);
      if (!stream->Write(chunk) || !stream->Read(&response)) return Finish(stream.get());
      if (response.position() != position + 1) return absl::InternalError("a step was skipped");
      const float y = response.output().values(0);
      if (position < static_cast<int64_t>(outputs_.size())) {
        // A replayed step: its output was delivered already; it must be
        // recomputed exactly.
        if (y != outputs_[position]) return absl::InternalError("a replayed step differs");
      } else {
        outputs_.push_back(y);
        acked_at_.push_back(absl::Now());
      }
      durable_position_ = response.durable_position();
      ++position;
      if (pace_ > absl::ZeroDuration()) absl::SleepFor(pace_);
    }
    stream->WritesDone();
    return Finish(stream.get());
  }

  static absl::Status Finish(grpc::ClientReaderWriter<v1::StreamRequest, v1::StreamResponse>* s) {
    return client::StatusFromGrpc(s->Finish());
  }

  Replicas& replicas_;
  mutable absl::Mutex mu_;
  int replica_ ABSL_GUARDED_BY(mu_);
  Tensor input_;
  const absl::Duration pace_;
  std::string id_;
  std::vector<float> outputs_;
  std::vector<absl::Time> acked_at_;
  int64_t recomputed_ = 0, recomputed_max_ = 0, durable_position_ = -1;
  int moves_ = 0;
};

// Every stream's outputs equal Infer over its input (float32 on the wire).
// (`live`: a replica that still runs.)
void ExpectOutputsEqualInfer(Replicas& replicas, int live, const std::vector<Tensor>& inputs,
                             const std::vector<Tensor>& outputs) {
  client::ClientOptions options;
  options.address = replicas.address(live);
  options.deadline = absl::Seconds(30);
  client::Client client(options);
  for (size_t i = 0; i < outputs.size(); ++i) {
    SCOPED_TRACE(i);
    absl::StatusOr<client::InferResult> want = client.Infer("s4-demo", inputs[i]);
    ASSERT_OK(want);
    EXPECT_LE(MaxRelativeDiff(outputs[i], want->output), kWireTolerance);
  }
}

void ExpectOutputsEqualInfer(Replicas& replicas, int live, const std::vector<Tensor>& inputs,
                             const std::vector<std::unique_ptr<DurableStream>>& streams) {
  std::vector<Tensor> outputs;
  for (size_t i = 0; i < streams.size(); ++i) {
    outputs.push_back(Tensor{inputs[i].shape, streams[i]->outputs()});
  }
  ExpectOutputsEqualInfer(replicas, live, inputs, outputs);
}

struct StreamsRun {
  std::vector<Tensor> inputs;
  std::vector<std::unique_ptr<DurableStream>> streams;
  std::vector<std::thread> threads;
  std::vector<absl::Status> results;
  std::atomic<bool> stop{false};

  StreamsRun(Replicas& replicas, int count, int steps, absl::Duration pace = absl::ZeroDuration())
      : results(count) {
    for (int i = 0; i < count; ++i) {
      inputs.push_back(MakeSequence(1, steps, 1, 100 + i));
      streams.push_back(
          std::make_unique<DurableStream>(replicas, i % replicas.size(), inputs[i], pace));
    }
    for (int i = 0; i < count; ++i) {
      threads.emplace_back([this, i] { results[i] = streams[i]->Run(stop); });
    }
  }
  // Waits until every stream has run `steps` steps.
  void WaitForProgress(int steps) {
    const absl::Time deadline = absl::Now() + absl::Seconds(30);
    for (auto& s : streams) {
      while (static_cast<int>(s->outputs().size()) < steps && absl::Now() < deadline) {
        absl::SleepFor(absl::Milliseconds(20));
      }
    }
  }
  void Join() {
    for (std::thread& t : threads) t.join();
    for (size_t i = 0; i < results.size(); ++i) {
      SCOPED_TRACE(absl::StrCat("stream ", i));
      EXPECT_OK(results[i]);
    }
  }
};

TEST(DurableTest, KillTheBusiestReplica) {
  absl::StatusOr<std::unique_ptr<RedisProcess>> redis = RedisProcess::Start();
  ASSERT_OK(redis);
  Replicas replicas(**redis);
  constexpr int kStreams = 64, kSteps = 400;
  StreamsRun run(replicas, kStreams, kSteps);
  run.WaitForProgress(100);
  // The busiest: stream i started on replica i % 3, and nothing moved yet.
  std::vector<int> held(replicas.size(), 0);
  for (auto& s : run.streams) ++held[s->replica()];
  const int victim = static_cast<int>(std::max_element(held.begin(), held.end()) - held.begin());
  const absl::Time killed_at = absl::Now();
  replicas.server(victim).Signal(SIGKILL);
  run.Join();
  ExpectOutputsEqualInfer(replicas, (victim + 1) % replicas.size(), run.inputs, run.streams);
  int moved = 0;
  int64_t recomputed = 0, worst = 0;
  for (auto& s : run.streams) {
    if (s->moves() > 0) {
      ++moved;
      // Every replayed step had been acknowledged within the last
      // checkpoint interval (plus the checkpointer's tick and a margin)
      // before the kill: older ones were in the store.
      const auto& at = s->acked_at();
      const int64_t first_replayed = static_cast<int64_t>(at.size()) - s->recomputed();
      for (int64_t k = first_replayed; k < static_cast<int64_t>(at.size()) && k >= 0; ++k) {
        if (at[k] > killed_at) break;
        EXPECT_GE(at[k], killed_at - kCheckpoint - absl::Milliseconds(600)) << "step " << k;
      }
    }
    recomputed += s->recomputed();
    worst = std::max(worst, s->recomputed_max());
  }
  EXPECT_EQ(moved, held[victim]);
  std::printf(
      "killed replica %d holding %d of %d streams: all moved by id and finished; steps "
      "recomputed %lld in all, at most %lld in one stream\n",
      victim, held[victim], kStreams, static_cast<long long>(recomputed),
      static_cast<long long>(worst));
}

TEST(DurableTest, RollingRestart) {
  absl::StatusOr<std::unique_ptr<RedisProcess>> redis = RedisProcess::Start();
  ASSERT_OK(redis);
  Replicas replicas(**redis);
  StreamsRun run(replicas, 12, 2500, absl::Milliseconds(2));
  run.WaitForProgress(50);
  for (int i = 0; i < replicas.size(); ++i) {
    replicas.server(i).Signal(SIGTERM);
    absl::StatusOr<int> code = replicas.server(i).WaitExit(absl::Seconds(20));
    ASSERT_OK(code);
    EXPECT_EQ(*code, 0);
    replicas.Start(i);
    absl::SleepFor(absl::Milliseconds(300));
  }
  run.Join();
  ExpectOutputsEqualInfer(replicas, 0, run.inputs, run.streams);
  int moved = 0;
  for (auto& s : run.streams) moved += s->moves() > 0;
  EXPECT_GT(moved, 0);
}

// Opens a new s4-demo session on `replica` and cancels the stream (the
// session detaches), calling `answered` in between, as soon as the open is
// answered; that answer.
v1::StreamResponse OpenAndLeave(
    Replicas& replicas, int replica, const std::function<void()>& answered = [] {}) {
  auto stub = StubFor(replicas.address(replica));
  grpc::ClientContext context;
  auto stream = stub->StreamInfer(&context);
  v1::StreamRequest open;
  open.mutable_open()->set_model("s4-demo");
  v1::StreamResponse response;
  EXPECT_TRUE(stream->Write(open) && stream->Read(&response));
  answered();
  context.TryCancel();
  stream->Finish();
  return response;
}

// A session's id is durable from the moment the client has it: the
// replica that opened it dies the moment it has answered the open, before
// any checkpoint could run, and another replica continues it by id.
TEST(DurableTest, AReplicaKilledRightAfterTheOpenLosesNothing) {
  absl::StatusOr<std::unique_ptr<RedisProcess>> redis = RedisProcess::Start();
  ASSERT_OK(redis);
  Replicas replicas(**redis, 2);
  const v1::StreamResponse opened =
      OpenAndLeave(replicas, 0, [&] { replicas.server(0).Signal(SIGKILL); });
  const std::string id = opened.opened().session_id();
  ASSERT_FALSE(id.empty());
  EXPECT_EQ(opened.durable_position(), 0);
  // The dead replica's lease runs out; then the other one has the session.
  const absl::Time killed = absl::Now();
  bool taken = false;
  while (!taken && absl::Now() < killed + kLease + absl::Seconds(10)) {
    auto stub = StubFor(replicas.address(1));
    grpc::ClientContext context;
    auto stream = stub->StreamInfer(&context);
    v1::StreamRequest open;
    open.mutable_open()->set_session_id(id);
    v1::StreamResponse response;
    if (stream->Write(open) && stream->Read(&response)) {
      taken = true;
      EXPECT_EQ(response.opened().session_id(), id);
      EXPECT_EQ(response.opened().position(), 0);
      stream->WritesDone();
      EXPECT_TRUE(stream->Finish().ok());
      break;
    }
    const grpc::Status refused = stream->Finish();
    ASSERT_EQ(refused.error_code(), grpc::StatusCode::FAILED_PRECONDITION)
        << refused.error_message();
    absl::SleepFor(absl::Milliseconds(200));
  }
  EXPECT_TRUE(taken);
}

TEST(DurableTest, TwoClientsRaceForOneSession) {
  absl::StatusOr<std::unique_ptr<RedisProcess>> redis = RedisProcess::Start();
  ASSERT_OK(redis);
  Replicas replicas(**redis, 2);
  // A session, detached (its stream cancelled), in the store.
  const std::string id = OpenAndLeave(replicas, 0).opened().session_id();
  ASSERT_FALSE(id.empty());
  absl::SleepFor(absl::Milliseconds(500));  // written and let go
  auto attach = [&](int replica, grpc::ClientContext* context, v1::StreamResponse* response) {
    auto stub = StubFor(replicas.address(replica));
    auto stream = stub->StreamInfer(context);
    v1::StreamRequest open;
    open.mutable_open()->set_session_id(id);
    stream->Write(open);
    const bool ok = stream->Read(response);
    return std::make_pair(ok, std::move(stream));
  };
  grpc::ClientContext first_context, second_context;
  v1::StreamResponse first_response, second_response;
  auto [first_ok, first] = attach(0, &first_context, &first_response);
  ASSERT_TRUE(first_ok);
  auto [second_ok, second] = attach(1, &second_context, &second_response);
  EXPECT_FALSE(second_ok);
  const grpc::Status refused = second->Finish();
  EXPECT_EQ(refused.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_NE(refused.error_message().find("--session_lease"), std::string::npos);
  // The winner's replica dies without letting go: the loser takes over
  // once the lease has expired.
  replicas.server(0).Signal(SIGKILL);
  const absl::Time killed = absl::Now();
  bool taken = false;
  while (!taken && absl::Now() < killed + kLease + absl::Seconds(10)) {
    grpc::ClientContext context;
    v1::StreamResponse response;
    auto [ok, stream] = attach(1, &context, &response);
    if (ok) {
      taken = true;
      EXPECT_EQ(response.opened().session_id(), id);
      stream->WritesDone();
      EXPECT_TRUE(stream->Finish().ok());
    } else {
      stream->Finish();
      absl::SleepFor(absl::Milliseconds(200));
    }
  }
  EXPECT_TRUE(taken);
  EXPECT_GE(absl::Now() - killed, kLease - absl::Milliseconds(500));
  first_context.TryCancel();
  first->Finish();
}

TEST(DurableTest, TheStoreRestarts) {
  char dir[] = "/tmp/ssm-redis-aof-XXXXXX";
  ASSERT_NE(mkdtemp(dir), nullptr);
  absl::StatusOr<std::unique_ptr<RedisProcess>> redis = RedisProcess::Start(0, dir);
  ASSERT_OK(redis);
  const int redis_port = (*redis)->port();
  Replicas replicas(**redis, 1);
  StreamsRun run(replicas, 4, 2500, absl::Milliseconds(1));
  run.WaitForProgress(100);
  (*redis)->Stop();
  absl::SleepFor(absl::Seconds(1));  // the streams step on without it
  absl::StatusOr<std::unique_ptr<RedisProcess>> again = RedisProcess::Start(redis_port, dir);
  ASSERT_OK(again);
  run.WaitForProgress(1200);  // stepping with the store back
  run.Join();
  if (HasFailure()) std::printf("server log:\n%s\n", replicas.server(0).Log().c_str());
  ExpectOutputsEqualInfer(replicas, 0, run.inputs, run.streams);
  // The log says the store failed and came back.
  const std::string log = replicas.server(0).Log();
  SCOPED_TRACE(log);
  EXPECT_NE(log.find("failed"), std::string::npos);
  EXPECT_NE(log.find("answers again"), std::string::npos);
}

// The C++ client library against the store: it resumes by session id alone
// (no snapshots asked for), keeps several chunks in flight, and tells the
// server what it has received, so a replica killed or drained under it
// costs only replays; every output reaches the caller once, equal to
// Infer's, and the session keeps its id.
TEST(DurableTest, TheClientLibraryResumesByIdWithChunksInFlight) {
  absl::StatusOr<std::unique_ptr<RedisProcess>> redis = RedisProcess::Start();
  ASSERT_OK(redis);
  Replicas replicas(**redis);
  // Stream i's client lists the replicas starting at i % 3 and picks the
  // first that answers: each replica starts with a third of the streams
  // (round robin would put them all on whichever connected first), and a
  // stream whose replica goes away moves to the next.
  std::vector<std::unique_ptr<client::Client>> clients;
  for (int first = 0; first < replicas.size(); ++first) {
    std::string target = "ipv4:";
    for (int k = 0; k < replicas.size(); ++k) {
      absl::StrAppend(&target, k > 0 ? "," : "", replicas.address((first + k) % replicas.size()));
    }
    client::ClientOptions options;
    options.address = target;
    options.load_balancing = "pick_first";
    options.deadline = absl::Seconds(30);
    options.reconnect_backoff = absl::Milliseconds(50);
    options.max_reconnect_backoff = absl::Milliseconds(200);
    clients.push_back(std::make_unique<client::Client>(options));
  }

  constexpr int kStreams = 9, kSteps = 3000, kInFlight = 6;
  const std::vector<int> pattern = {1, 3, 2, 5, 1, 7};
  std::vector<Tensor> inputs, outputs(kStreams);
  std::vector<std::string> opened_ids(kStreams), final_ids(kStreams);
  std::vector<int64_t> last_opened_at(kStreams, 0);
  std::vector<absl::Status> results(kStreams);
  std::vector<std::atomic<int64_t>> progress(kStreams);
  std::vector<std::thread> threads;
  for (int i = 0; i < kStreams; ++i) inputs.push_back(MakeSequence(1, kSteps, 1, 300 + i));
  for (int i = 0; i < kStreams; ++i) {
    threads.emplace_back([&, i] {
      results[i] = [&]() -> absl::Status {
        client::StreamOptions open{.model = "s4-demo"};
        open.resume.enabled = true;
        open.resume.max_attempts = 8;
        open.resume.backoff = absl::Milliseconds(20);
        open.resume.connect_timeout = absl::Seconds(3);
        absl::StatusOr<std::unique_ptr<client::Stream>> stream =
            clients[i % clients.size()]->OpenStream(open);
        if (!stream.ok()) return stream.status();
        client::Stream& s = **stream;
        if (!s.opened().durable()) return absl::InternalError("the session is not durable");
        opened_ids[i] = s.session_id();
        outputs[i].shape = {1, kSteps, 1};
        int64_t sent = 0;
        size_t k = 0;
        int in_flight = 0;
        while (sent < kSteps || in_flight > 0) {
          while (sent < kSteps && in_flight < kInFlight) {
            const int64_t steps = std::min<int64_t>(pattern[k++ % pattern.size()], kSteps - sent);
            const Tensor chunk = SliceSteps(inputs[i], sent, sent + steps);
            absl::Status status = s.Send(chunk.values, static_cast<int>(steps));
            if (!status.ok()) return status;
            sent += steps;
            ++in_flight;
          }
          absl::StatusOr<client::StreamResult> r = s.Receive();
          if (!r.ok()) return r.status();
          --in_flight;
          outputs[i].values.insert(outputs[i].values.end(), r->output.values.begin(),
                                   r->output.values.end());
          if (r->position != static_cast<int64_t>(outputs[i].values.size())) {
            return absl::InternalError(absl::StrCat("position ", r->position, " after ",
                                                    outputs[i].values.size(), " outputs"));
          }
          progress[i] = r->position;
          absl::SleepFor(absl::Milliseconds(3));  // ~1000 steps/s: the test lasts
        }
        final_ids[i] = s.session_id();
        last_opened_at[i] = s.opened().position();
        return s.Close();
      }();
    });
  }
  auto wait_for = [&](int64_t steps) {
    const absl::Time deadline = absl::Now() + absl::Seconds(30);
    for (auto& p : progress) {
      while (p.load() < steps && absl::Now() < deadline) absl::SleepFor(absl::Milliseconds(10));
    }
  };
  // Past the first checkpoints (every 500 ms).
  wait_for(700);
  replicas.server(1).Signal(SIGTERM);  // drains: its streams move at once
  absl::StatusOr<int> code = replicas.server(1).WaitExit(absl::Seconds(20));
  ASSERT_OK(code);
  EXPECT_EQ(*code, 0);
  replicas.Start(1);
  wait_for(1400);
  replicas.server(0).Signal(SIGKILL);  // its streams wait out the lease
  for (std::thread& t : threads) t.join();
  int resumed = 0;
  for (int i = 0; i < kStreams; ++i) {
    SCOPED_TRACE(absl::StrCat("stream ", i));
    ASSERT_OK(results[i]);
    EXPECT_EQ(final_ids[i], opened_ids[i]);  // the same session throughout
    resumed += last_opened_at[i] > 0;
  }
  // The drained and the killed replica's streams were reopened, from a
  // stored position.
  EXPECT_GE(resumed, 6);
  ExpectOutputsEqualInfer(replicas, 2, inputs, outputs);
  std::printf("%d of %d streams resumed by id\n", resumed, kStreams);
}

}  // namespace
}  // namespace ssm::e2e
