// The load generator's stream workload (client/bench.h, RunBench) against
// a real ssm_server: every chunk answered once, in order (the bench checks
// each response's shape and position, so a dropped, repeated or reordered
// response is an error here), the counts and percentiles consistent, the
// wall-clock cap honoured, failures counted.
#include <cmath>
#include <csignal>
#include <cstdint>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "absl/status/statusor.h"
#include "absl/strings/match.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "client/bench.h"
#include "client/ssm_client.h"
#include "gtest/gtest.h"
#include "tests/e2e/e2e_util.h"

namespace ssm::e2e {
namespace {

using client::BenchOptions;
using client::BenchReport;
using client::RunBench;

int64_t CeilDiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

// The stream workload: `concurrency` streams of `steps` steps each, in
// chunks of `chunk` with up to `inflight` outstanding, capped at `cap`.
BenchOptions Streams(const std::string& model, int concurrency, int64_t steps, int chunk,
                     int inflight, absl::Duration cap) {
  BenchOptions o;
  o.mode = "stream";
  o.model = model;
  o.concurrency = concurrency;
  o.steps = steps;
  o.chunk = chunk;
  o.inflight = inflight;
  o.max_duration = cap;
  return o;
}

// The invariants of a run that its counts ended: every stream sent all its
// chunks and got every response, without errors.
void ExpectComplete(const BenchReport& r, const BenchOptions& o) {
  EXPECT_EQ(r.errors, 0) << r.first_error;
  EXPECT_EQ(r.first_error, "");
  EXPECT_FALSE(r.hit_max_duration);
  EXPECT_EQ(r.completed, o.concurrency * CeilDiv(o.steps, o.chunk));
  EXPECT_EQ(r.steps, o.concurrency * o.steps);
  EXPECT_GT(r.p50, absl::ZeroDuration());
  EXPECT_LE(r.p50, r.p90);
  EXPECT_LE(r.p90, r.p99);
  EXPECT_LE(r.p99, r.max);
  EXPECT_GT(r.elapsed, absl::ZeroDuration());
  EXPECT_EQ(r.options.mode, "stream");
  EXPECT_EQ(r.options.concurrency, o.concurrency);
}

TEST(BenchTest, StreamsPipelinedChunksWithAShortLastOne) {
  auto client = ClientFor(SharedServer());
  // 37 steps: 12 chunks of 3 and one of 1.
  BenchOptions o = Streams("legt-delay", 5, 37, 3, 4, absl::Seconds(30));
  absl::StatusOr<BenchReport> r = RunBench(*client, o);
  ASSERT_OK(r);
  ExpectComplete(*r, o);
  EXPECT_EQ(r->completed, 5 * 13);
  EXPECT_EQ(r->steps, 5 * 37);
}

TEST(BenchTest, StreamsInLockStep) {
  auto client = ClientFor(SharedServer());
  BenchOptions o = Streams("s4-demo", 3, 50, 1, 1, absl::Seconds(30));
  absl::StatusOr<BenchReport> r = RunBench(*client, o);
  ASSERT_OK(r);
  ExpectComplete(*r, o);
  EXPECT_EQ(r->completed, 150);
}

// A window wider than the stream, one chunk longer than the stream, and
// many streams on the one channel.
TEST(BenchTest, EdgeCasesOfChunkAndWindow) {
  auto client = ClientFor(SharedServer());
  BenchOptions o = Streams("legt-delay", 2, 5, 8, 3, absl::Seconds(30));
  absl::StatusOr<BenchReport> r = RunBench(*client, o);
  ASSERT_OK(r);
  ExpectComplete(*r, o);
  EXPECT_EQ(r->completed, 2);

  o = Streams("legt-delay", 40, 64, 2, 64, absl::Seconds(30));
  r = RunBench(*client, o);
  ASSERT_OK(r);
  ExpectComplete(*r, o);
  EXPECT_EQ(r->completed, 40 * 32);
}

TEST(BenchTest, UnknownModelIsNotFound) {
  auto client = ClientFor(SharedServer());
  EXPECT_CODE(RunBench(*client, Streams("no-such-model", 2, 10, 1, 1, absl::Seconds(60))),
              kNotFound);
}

TEST(BenchTest, BadOptionsAreInvalidArgument) {
  auto client = ClientFor(SharedServer());
  BenchOptions o;
  o.mode = "stream";
  o.model = "legt-delay";
  o.inflight = 0;
  EXPECT_CODE(RunBench(*client, o), kInvalidArgument);
  o.inflight = 1;
  o.max_duration = absl::ZeroDuration();
  EXPECT_CODE(RunBench(*client, o), kInvalidArgument);
  o.max_duration = absl::Seconds(10);
  o.rate = -1;
  EXPECT_CODE(RunBench(*client, o), kInvalidArgument);
  o.rate = std::nan("");
  EXPECT_CODE(RunBench(*client, o), kInvalidArgument);
}

// Paced streams (--rate) keep to their schedule: 6 chunks at 20 a second
// take at least 0.3 s, every one answered; the report carries both sides'
// CPU time and the server's memory.
TEST(BenchTest, PacedStreamsKeepTheirScheduleAndReportCpu) {
  const ServerProcess& server = SharedServer();
  auto client = ClientFor(server);
  BenchOptions o = Streams("legt-delay", 8, 6, 1, 1, absl::Seconds(30));
  o.rate = 20;
  o.server_pid = server.pid();
  absl::StatusOr<BenchReport> r = RunBench(*client, o);
  ASSERT_OK(r);
  ExpectComplete(*r, o);
  EXPECT_GE(r->elapsed, absl::Milliseconds(300));
  EXPECT_LT(r->elapsed, absl::Seconds(10));
  EXPECT_GT(r->client_cpu, absl::ZeroDuration());
  EXPECT_GE(r->server_cpu, absl::ZeroDuration());
  EXPECT_GT(r->rss_before_kb, 0);
  EXPECT_GE(r->rss_held_kb, 0);

  // Without a PID the server's side is not measured.
  o.server_pid = 0;
  r = RunBench(*client, o);
  ASSERT_OK(r);
  EXPECT_LT(r->server_cpu, absl::ZeroDuration());
  EXPECT_EQ(r->rss_held_kb, -1);
}

// The cap also ends paced streams that wait for their next chunk's time
// (one every 100 s here) or have not even opened yet: at once, cleanly.
TEST(BenchTest, MaxDurationStopsPacedStreamsWaitingForTheirTime) {
  auto client = ClientFor(SharedServer());
  BenchOptions o = Streams("legt-delay", 4, 10, 1, 1, absl::Milliseconds(300));
  o.rate = 0.01;
  const absl::Time start = absl::Now();
  absl::StatusOr<BenchReport> r = RunBench(*client, o);
  ASSERT_OK(r);
  EXPECT_LT(absl::Now() - start, absl::Seconds(3));
  EXPECT_TRUE(r->hit_max_duration);
  EXPECT_EQ(r->errors, 0) << r->first_error;
  EXPECT_EQ(r->completed, 0);
}

// The cap stops streams that their counts would keep going for hours: they
// stop sending, collect what is in flight and close cleanly (no errors).
TEST(BenchTest, MaxDurationStopsTheStreams) {
  auto client = ClientFor(SharedServer());
  BenchOptions o = Streams("legt-delay", 4, 100'000'000, 1, 4, absl::Milliseconds(1));
  const absl::Time start = absl::Now();
  absl::StatusOr<BenchReport> r = RunBench(*client, o);
  const absl::Duration took = absl::Now() - start;
  ASSERT_OK(r);
  EXPECT_TRUE(r->hit_max_duration);
  EXPECT_EQ(r->errors, 0) << r->first_error;
  EXPECT_LT(r->completed, o.concurrency * o.steps);
  EXPECT_EQ(r->steps, r->completed);  // chunk 1: every chunk whole
  EXPECT_LT(took, absl::Seconds(10));

  // A run of a few hundred milliseconds: the streams got going first.
  o.max_duration = absl::Milliseconds(300);
  r = RunBench(*client, o);
  ASSERT_OK(r);
  EXPECT_TRUE(r->hit_max_duration);
  EXPECT_EQ(r->errors, 0) << r->first_error;
  EXPECT_GT(r->completed, 0);
  EXPECT_LE(r->p50, r->p99);
  EXPECT_LE(r->p99, r->max);
  EXPECT_LT(r->elapsed, absl::Seconds(5));
}

// A capped run ends its sessions (a clean half-close, not a cancel that
// would leave them detached for --session_ttl): with room for exactly one
// run's sessions, run after run gets them all.
TEST(BenchTest, CappedRunsLeaveNoSessionsBehind) {
  absl::StatusOr<std::unique_ptr<ServerProcess>> server =
      ServerProcess::Start({"--max_sessions=4"});
  ASSERT_OK(server);
  auto client = ClientFor(**server);
  BenchOptions o = Streams("legt-delay", 4, 100'000'000, 2, 3, absl::Milliseconds(100));
  for (int run = 0; run < 3; ++run) {
    absl::StatusOr<BenchReport> r = RunBench(*client, o);
    ASSERT_OK(r);
    EXPECT_TRUE(r->hit_max_duration);
    EXPECT_EQ(r->errors, 0) << "run " << run << ": " << r->first_error;
    EXPECT_GT(r->completed, 0);
  }
}

// A stream the server refuses is an error of the run, not of RunBench; the
// others complete. With --max_sessions=2, two of four streams get sessions
// (each holds its own for the whole run, far longer than the opens take).
TEST(BenchTest, RefusedStreamsAreCountedAsErrors) {
  absl::StatusOr<std::unique_ptr<ServerProcess>> server =
      ServerProcess::Start({"--max_sessions=2"});
  ASSERT_OK(server);
  auto client = ClientFor(**server);
  BenchOptions o = Streams("legt-delay", 4, 3000, 1, 1, absl::Seconds(30));
  absl::StatusOr<BenchReport> r = RunBench(*client, o);
  ASSERT_OK(r);
  EXPECT_EQ(r->errors, 2);
  EXPECT_TRUE(absl::StrContains(r->first_error, "RESOURCE_EXHAUSTED"))
      << r->first_error;
  EXPECT_EQ(r->completed, 2 * 3000);
  EXPECT_EQ(r->steps, 2 * 3000);
  EXPECT_FALSE(r->hit_max_duration);
}

// A server that dies mid-run: every stream ends with an error, and the
// run still returns its report.
TEST(BenchTest, ServerDeathEndsTheRunWithErrors) {
  absl::StatusOr<std::unique_ptr<ServerProcess>> server =
      ServerProcess::Start();
  ASSERT_OK(server);
  auto client = ClientFor(**server);
  BenchOptions o = Streams("s4-demo", 3, 100'000'000, 1, 2, absl::Seconds(60));
  absl::StatusOr<BenchReport> r;
  std::thread runner([&] { r = RunBench(*client, o); });
  absl::SleepFor(absl::Milliseconds(300));
  (*server)->Signal(SIGKILL);
  runner.join();
  ASSERT_OK(r);
  EXPECT_EQ(r->errors, 3);
  EXPECT_TRUE(absl::StrContains(r->first_error, "UNAVAILABLE"))
      << r->first_error;
  EXPECT_FALSE(r->hit_max_duration);
  EXPECT_GT(r->completed, 0);
}

// The JSON report (no server needed): every field present under its name
// with the report's value, and strings that need escaping (quotes,
// backslashes, control characters) come back unchanged.
TEST(BenchJsonTest, EveryFieldRoundTrips) {
  BenchReport r;
  r.options.mode = "idle";
  r.options.model = std::string("s4 \"demo\" \\v2\\\n\ttab\x01\x1f\x7f end");
  r.options.concurrency = 3;
  r.options.steps = 1001;
  r.options.chunk = 5;
  r.options.inflight = 7;
  r.options.calls = 11;
  r.options.batch = 13;
  r.options.length = 17;
  r.options.max_duration = absl::Milliseconds(2500);
  r.options.hold = absl::Milliseconds(250);
  r.options.server_pid = 4242;
  r.completed = 19;
  r.steps = 23;
  r.elapsed = absl::Seconds(2);
  r.errors = 2;
  r.first_error = "UNAVAILABLE: \"peer\" said \\ no\r\n\x02";
  r.hit_max_duration = true;
  r.rss_before_kb = 1000;
  r.rss_held_kb = 3000;
  r.p50 = absl::Microseconds(10);
  r.p90 = absl::Microseconds(20);
  r.p99 = absl::Microseconds(30);
  r.max = absl::Microseconds(40);
  r.options.rate = 12.5;
  r.client_cpu = absl::Milliseconds(38);
  r.server_cpu = absl::Milliseconds(76);

  const std::string text = client::FormatBenchJson(r);
  ASSERT_FALSE(text.empty());
  EXPECT_EQ(text.back(), '\n');
  EXPECT_EQ(text.find('\n'), text.size() - 1) << "one line: " << text;
  const nlohmann::json j = nlohmann::json::parse(text);

  std::vector<std::string> keys;
  for (const auto& [key, value] : j.items()) keys.push_back(key);
  EXPECT_EQ(keys, (std::vector<std::string>{
                      "batch", "calls", "chunk", "client_cpu_seconds",
                      "client_cpu_us_per_completed", "completed", "completed_per_second",
                      "concurrency", "errors", "first_error", "hold_seconds", "inflight",
                      "latency_us", "length", "max_seconds", "mode", "model", "rate", "seconds",
                      "server_cpu_seconds", "server_cpu_us_per_completed", "server_pid",
                      "server_rss_before_kib", "server_rss_held_kib", "steps",
                      "steps_per_second", "steps_per_stream", "stopped_by_max_seconds"}));
  EXPECT_EQ(j["mode"], "idle");
  EXPECT_EQ(j["model"], r.options.model);
  EXPECT_EQ(j["concurrency"], 3);
  EXPECT_EQ(j["steps_per_stream"], 1001);
  EXPECT_EQ(j["chunk"], 5);
  EXPECT_EQ(j["inflight"], 7);
  EXPECT_EQ(j["calls"], 11);
  EXPECT_EQ(j["batch"], 13);
  EXPECT_EQ(j["length"], 17);
  EXPECT_EQ(j["max_seconds"], 2.5);
  EXPECT_EQ(j["hold_seconds"], 0.25);
  EXPECT_EQ(j["server_pid"], 4242);
  EXPECT_EQ(j["completed"], 19);
  EXPECT_EQ(j["steps"], 23);
  EXPECT_EQ(j["seconds"], 2.0);
  EXPECT_EQ(j["steps_per_second"], 11.5);
  EXPECT_EQ(j["completed_per_second"], 9.5);
  EXPECT_EQ(j["latency_us"],
            nlohmann::json::parse(R"({"p50": 10, "p90": 20, "p99": 30, "max": 40})"));
  EXPECT_EQ(j["errors"], 2);
  EXPECT_EQ(j["first_error"], r.first_error);
  EXPECT_EQ(j["stopped_by_max_seconds"], true);
  EXPECT_EQ(j["server_rss_before_kib"], 1000);
  EXPECT_EQ(j["server_rss_held_kib"], 3000);
  EXPECT_EQ(j["rate"], 12.5);
  EXPECT_DOUBLE_EQ(j["client_cpu_seconds"].get<double>(), 0.038);
  EXPECT_DOUBLE_EQ(j["server_cpu_seconds"].get<double>(), 0.076);
  EXPECT_DOUBLE_EQ(j["client_cpu_us_per_completed"].get<double>(), 2000);
  EXPECT_DOUBLE_EQ(j["server_cpu_us_per_completed"].get<double>(), 4000);
}

// What is not measured or not a number is null, and bytes that are not
// UTF-8 (a server's message may hold any) still give valid JSON.
TEST(BenchJsonTest, UnmeasuredIsNullAndAnyBytesAreValid) {
  BenchReport r;
  r.options.max_duration = absl::InfiniteDuration();
  r.first_error = "bad \xff\xfe bytes";
  const nlohmann::json j = nlohmann::json::parse(client::FormatBenchJson(r));
  EXPECT_TRUE(j["server_rss_before_kib"].is_null());
  EXPECT_TRUE(j["server_rss_held_kib"].is_null());
  EXPECT_TRUE(j["server_cpu_seconds"].is_null());
  EXPECT_TRUE(j["server_cpu_us_per_completed"].is_null());
  EXPECT_TRUE(j["client_cpu_us_per_completed"].is_null());  // nothing completed
  EXPECT_TRUE(j["max_seconds"].is_null());
  EXPECT_TRUE(j["steps_per_second"].is_null());  // zero elapsed
  EXPECT_EQ(j["first_error"], "bad \xEF\xBF\xBD\xEF\xBF\xBD bytes");  // U+FFFD each
}

}  // namespace
}  // namespace ssm::e2e
