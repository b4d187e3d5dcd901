// `ssm_client bench`: a bounded load generator for an ssm_server.
//
// Three workloads, each bounded by counts and by a wall-clock cap, so a run
// always ends by itself:
//   stream: `concurrency` streams (batch 1) of `steps` steps each, sent in
//           chunks of `chunk` steps with up to `inflight` chunks outstanding
//           per stream (1 = strict lock-step); latency is each chunk's round
//           trip (per step with chunk = 1), from the start of its write to
//           its response. With `rate` > 0 each stream sends at most `rate`
//           chunks per second on a fixed schedule (stream i offset by
//           i / (concurrency x rate), so the streams' chunks and opens are
//           spread evenly over time), as many slow clients do; a chunk whose
//           time has come waits only for the window. All streams share the client's channel and one
//           completion-queue loop on the calling thread (no thread per
//           stream, so the client costs little CPU next to the server).
//           Every response is checked: [1, T, d_output] at the expected
//           position, so none may be dropped, repeated or reordered. At the
//           cap the streams stop sending, collect the chunks in flight and
//           close cleanly; one still running 5 s later is cancelled and
//           counted as an error, like any stream that ends with a non-OK
//           status.
//   unary:  `calls` Infer calls of [batch, length, d_input] spread over
//           `concurrency` callers; latency is each call's.
//   idle:   `concurrency` sessions opened one after another, each fed one
//           step (so the server has built its per-session buffers), then
//           held open without traffic for `hold`; latency is each open +
//           first step. With `server_pid` (a server on this machine) the
//           report carries the server's resident memory before the sessions
//           and while they are held.
// Inputs are a deterministic sine, so runs are comparable.
// Every report carries this process's CPU time over the run (user + system,
// all its threads: the bench loop and gRPC's own), and, with `server_pid`
// (a server on this machine), the server's CPU time over the run from
// /proc, so a reader can tell the two sides' shares of a chunk apart; with
// `server_pid` the stream workload also reports the server's resident
// memory before the streams and the largest seen while they run.
#ifndef SSMSERVE_CLIENT_BENCH_H_
#define SSMSERVE_CLIENT_BENCH_H_

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "client/ssm_client.h"

namespace ssm::client {

struct BenchOptions {
  std::string mode = "stream";  // "stream" or "unary"
  std::string model = "s4-demo";
  int concurrency = 4;
  int64_t steps = 1000;  // stream: steps per stream
  int chunk = 1;         // stream: steps per chunk
  int inflight = 1;      // stream: chunks outstanding per stream
  double rate = 0;       // stream: chunks per second per stream (0: no pacing)
  int64_t calls = 100;   // unary: total calls
  int batch = 1;         // unary
  int length = 1024;     // unary
  absl::Duration max_duration = absl::Seconds(60);
  absl::Duration hold = absl::Seconds(2);  // idle
  int server_pid = 0;  // a local server: read /proc/<pid>/{stat,status}
};

struct BenchReport {
  BenchOptions options;
  int64_t completed = 0;  // stream: chunks; unary: calls
  int64_t steps = 0;      // time steps processed (per sequence, all batch)
  absl::Duration elapsed;
  int64_t errors = 0;
  std::string first_error;
  bool hit_max_duration = false;
  // With server_pid (idle, stream): the server's VmRSS in KiB before the
  // sessions and while they are held (stream: the largest seen); -1: not
  // measured.
  int64_t rss_before_kb = -1, rss_held_kb = -1;
  // CPU time (user + system) over the run: this process's, and with
  // server_pid the server's (negative: not measured).
  absl::Duration client_cpu;
  absl::Duration server_cpu = -absl::Seconds(1);
  // Latency percentiles (nearest rank) of chunks or calls.
  absl::Duration p50, p90, p99, max;
};

// Runs the workload against `client`. Errors of single calls or streams
// are counted in the report; the returned status fails only when the run
// could not start (bad options, unknown model).
absl::StatusOr<BenchReport> RunBench(Client& client,
                                     const BenchOptions& options);

std::string FormatBenchTable(const BenchReport& report);
// One JSON object on one line (and a newline): every option and result,
// under the names of the CLI's flags where there is one; durations in
// seconds, latencies in microseconds (latency_us), server memory in KiB
// or null when not measured; a rate of a zero-length run is null.
std::string FormatBenchJson(const BenchReport& report);

}  // namespace ssm::client

#endif  // SSMSERVE_CLIENT_BENCH_H_
