#include "client/bench.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <memory>
#include <cstdio>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/synchronization/mutex.h"

namespace ssm::client {
namespace {

struct WorkerResult {
  std::vector<absl::Duration> latencies;
  int64_t steps = 0;
  absl::Status error;
};

// Deterministic input: a sine, phase-shifted per stream.
float Signal(int64_t step, int stream, int feature) {
  return static_cast<float>(
      std::sin(0.05 * static_cast<double>(step) + 0.7 * stream + feature));
}

void StreamWorker(Client& client, const BenchOptions& o, absl::Time deadline,
                  int index, WorkerResult* out) {
  StreamOptions open;
  open.model = o.model;
  open.max_in_flight = o.inflight;
  absl::StatusOr<std::unique_ptr<Stream>> opened = client.OpenStream(open);
  if (!opened.ok()) {
    out->error = opened.status();
    return;
  }
  Stream& stream = **opened;
  const int d_input = stream.opened().d_input();
  const int64_t n_chunks = (o.steps + o.chunk - 1) / o.chunk;

  // The writer sends as fast as the in-flight limit allows; this thread
  // receives. `sent` tells the reader how many responses to expect, so it
  // never waits for a chunk the writer decided not to send.
  absl::Mutex mu;
  int64_t sent = 0;
  bool writer_done = false;
  absl::Status write_error;
  std::thread writer([&] {
    std::vector<float> chunk;
    for (int64_t i = 0; i < n_chunks && absl::Now() < deadline; ++i) {
      const int64_t t0 = i * o.chunk;
      const int t = static_cast<int>(std::min<int64_t>(o.chunk, o.steps - t0));
      chunk.resize(static_cast<size_t>(t) * d_input);
      for (int k = 0; k < t; ++k) {
        for (int f = 0; f < d_input; ++f) {
          chunk[k * d_input + f] = Signal(t0 + k, index, f);
        }
      }
      absl::Status s = stream.Send(chunk, t);
      if (!s.ok()) {
        write_error = s;
        break;
      }
      absl::MutexLock lock(&mu);
      ++sent;
    }
    absl::MutexLock lock(&mu);
    writer_done = true;
  });

  int64_t received = 0;
  while (true) {
    {
      absl::MutexLock lock(&mu);
      auto ready = [&]() { return sent > received || writer_done; };
      mu.Await(absl::Condition(&ready));
      if (received == sent && writer_done) break;
    }
    absl::StatusOr<StreamResult> r = stream.Receive();
    if (!r.ok()) {
      out->error = r.status();
      stream.Detach();  // unblocks a writer waiting for a slot
      break;
    }
    out->latencies.push_back(r->round_trip);
    out->steps += r->output.shape[1];
    ++received;
  }
  writer.join();
  if (out->error.ok()) out->error = write_error;
  if (out->error.ok()) out->error = stream.Close();
}

void UnaryWorker(Client& client, const BenchOptions& o, int d_input,
                 absl::Time deadline, std::atomic<int64_t>* next,
                 WorkerResult* out) {
  Tensor input{{o.batch, o.length, d_input},
               std::vector<float>(static_cast<size_t>(o.batch) * o.length *
                                  d_input)};
  for (int b = 0; b < o.batch; ++b) {
    for (int t = 0; t < o.length; ++t) {
      for (int f = 0; f < d_input; ++f) {
        input.values[(static_cast<size_t>(b) * o.length + t) * d_input + f] =
            Signal(t, b, f);
      }
    }
  }
  while (absl::Now() < deadline && next->fetch_add(1) < o.calls) {
    const absl::Time start = absl::Now();
    absl::StatusOr<InferResult> r = client.Infer(o.model, input);
    if (!r.ok()) {
      // One failed call is reported; the first error stops this caller
      // (a dead server would otherwise be hammered until the deadline).
      out->error = r.status();
      return;
    }
    out->latencies.push_back(absl::Now() - start);
    out->steps += static_cast<int64_t>(o.batch) * o.length;
  }
}

absl::Duration Percentile(const std::vector<absl::Duration>& sorted,
                          double p) {
  if (sorted.empty()) return absl::ZeroDuration();
  size_t rank = static_cast<size_t>(std::ceil(p * sorted.size()));
  return sorted[std::clamp<size_t>(rank, 1, sorted.size()) - 1];
}

// VmRSS of a local process in KiB, -1 if unreadable.
int64_t ResidentKb(int pid) {
  std::FILE* f = std::fopen(absl::StrCat("/proc/", pid, "/status").c_str(), "r");
  if (f == nullptr) return -1;
  char line[256];
  int64_t kb = -1;
  while (std::fgets(line, sizeof(line), f) != nullptr) {
    long long v = 0;
    if (std::sscanf(line, "VmRSS: %lld kB", &v) == 1) kb = v;
  }
  std::fclose(f);
  return kb;
}

// Opens the sessions one at a time on this thread (the sync API holds no
// thread per open stream), one step each, then holds them.
void IdleSessions(Client& client, const BenchOptions& o, absl::Time deadline,
                  BenchReport* report, WorkerResult* out) {
  std::vector<std::unique_ptr<Stream>> held;
  held.reserve(o.concurrency);
  for (int i = 0; i < o.concurrency && absl::Now() < deadline; ++i) {
    const absl::Time t0 = absl::Now();
    StreamOptions open;
    open.model = o.model;
    absl::StatusOr<std::unique_ptr<Stream>> s = client.OpenStream(open);
    if (!s.ok()) {
      out->error = s.status();
      break;
    }
    std::vector<float> x((*s)->opened().d_input(), static_cast<float>(Signal(0, i, 0)));
    absl::StatusOr<StreamResult> r = (*s)->RunChunk(x, 1);
    if (!r.ok()) {
      out->error = r.status();
      break;
    }
    out->latencies.push_back(absl::Now() - t0);
    out->steps += 1;
    held.push_back(*std::move(s));
  }
  absl::SleepFor(std::min(o.hold, std::max(absl::ZeroDuration(), deadline - absl::Now())));
  if (o.server_pid > 0) report->rss_held_kb = ResidentKb(o.server_pid);
  for (std::unique_ptr<Stream>& s : held) s->Close().IgnoreError();
}

std::string Ms(absl::Duration d) {
  return absl::StrFormat("%.3f", absl::ToDoubleMilliseconds(d));
}

}  // namespace

absl::StatusOr<BenchReport> RunBench(Client& client,
                                     const BenchOptions& options) {
  const BenchOptions& o = options;
  if (o.mode != "stream" && o.mode != "unary" && o.mode != "idle") {
    return absl::InvalidArgumentError(
        absl::StrCat("--mode must be stream, unary or idle, got '", o.mode, "'"));
  }
  if (o.concurrency < 1 || o.steps < 1 || o.chunk < 1 || o.inflight < 1 ||
      o.calls < 1 || o.batch < 1 || o.length < 1) {
    return absl::InvalidArgumentError(
        "--concurrency, --steps, --chunk, --inflight, --calls, --batch and "
        "--length must be >= 1");
  }
  if (o.max_duration <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError("--max_seconds must be > 0");
  }
  // Also checks that the server is there and knows the model before any
  // thread starts.
  absl::StatusOr<ssm::v1::GetModelResponse> model = client.GetModel(o.model);
  if (!model.ok()) return model.status();

  std::vector<WorkerResult> results(o.concurrency);
  std::vector<std::thread> workers;
  std::atomic<int64_t> next_call{0};
  const absl::Time start = absl::Now();
  const absl::Time deadline = start + o.max_duration;
  BenchReport report;
  if (o.mode == "idle") {
    if (o.server_pid > 0) report.rss_before_kb = ResidentKb(o.server_pid);
    IdleSessions(client, o, deadline, &report, &results[0]);
  }
  for (int i = 0; i < o.concurrency && o.mode != "idle"; ++i) {
    if (o.mode == "stream") {
      workers.emplace_back(StreamWorker, std::ref(client), std::cref(o),
                           deadline, i, &results[i]);
    } else {
      workers.emplace_back(UnaryWorker, std::ref(client), std::cref(o),
                           model->config().d_input(), deadline, &next_call,
                           &results[i]);
    }
  }
  for (std::thread& t : workers) t.join();

  report.options = o;
  report.elapsed = absl::Now() - start;
  report.hit_max_duration = absl::Now() >= deadline;
  std::vector<absl::Duration> all;
  for (WorkerResult& r : results) {
    all.insert(all.end(), r.latencies.begin(), r.latencies.end());
    report.steps += r.steps;
    if (!r.error.ok()) {
      if (report.errors++ == 0) report.first_error = r.error.ToString();
    }
  }
  report.completed = static_cast<int64_t>(all.size());
  std::sort(all.begin(), all.end());
  report.p50 = Percentile(all, 0.50);
  report.p90 = Percentile(all, 0.90);
  report.p99 = Percentile(all, 0.99);
  report.max = Percentile(all, 1.0);
  return report;
}

std::string FormatBenchTable(const BenchReport& r) {
  const BenchOptions& o = r.options;
  const double seconds = absl::ToDoubleSeconds(r.elapsed);
  const bool stream = o.mode == "stream";
  std::string out;
  if (o.mode == "idle") {
    absl::StrAppend(&out, "bench idle: model ", o.model, ", ", r.completed,
                    " sessions opened (one step each) and held ",
                    absl::FormatDuration(o.hold), "\n");
    if (r.rss_before_kb >= 0 && r.rss_held_kb >= 0) {
      absl::StrAppend(&out, absl::StrFormat(
          "  server RSS %.1f MiB before, %.1f MiB held: %.1f KiB per session\n",
          r.rss_before_kb / 1024.0, r.rss_held_kb / 1024.0,
          r.completed ? double(r.rss_held_kb - r.rss_before_kb) / r.completed : 0.0));
    }
  } else if (stream) {
    absl::StrAppend(&out, "bench stream: model ", o.model, ", ", o.concurrency,
                    " streams x ", o.steps, " steps, chunk ", o.chunk,
                    ", in flight ", o.inflight, "\n");
  } else {
    absl::StrAppend(&out, "bench unary: model ", o.model, ", ", o.calls,
                    " calls of [", o.batch, ", ", o.length, "], ",
                    o.concurrency, " callers\n");
  }
  const char* unit = o.mode == "idle" ? "sessions" : stream ? "chunks" : "calls";
  absl::StrAppend(
      &out,
      absl::StrFormat("  completed  %d %s (%d steps) in %.3f s%s\n",
                      r.completed, unit, r.steps, seconds,
                      r.hit_max_duration ? ", stopped by --max_seconds" : ""));
  absl::StrAppend(&out, absl::StrFormat("  throughput %.1f steps/s, %.1f %s/s\n",
                                        r.steps / seconds,
                                        r.completed / seconds, unit));
  absl::StrAppend(&out, absl::StrFormat("  errors     %d%s\n", r.errors,
                                        r.errors ? " (first: " + r.first_error + ")"
                                                 : ""));
  absl::StrAppend(&out, "  latency (ms, per ",
                  o.mode == "idle" ? "open + first step" : stream ? "chunk round trip" : "call",
                  ")\n");
  absl::StrAppend(&out, absl::StrFormat("  %10s %10s %10s %10s\n", "p50", "p90",
                                        "p99", "max"));
  absl::StrAppend(&out, absl::StrFormat("  %10s %10s %10s %10s\n", Ms(r.p50),
                                        Ms(r.p90), Ms(r.p99), Ms(r.max)));
  return out;
}

std::string FormatBenchJson(const BenchReport& r) {
  const BenchOptions& o = r.options;
  const double seconds = absl::ToDoubleSeconds(r.elapsed);
  std::string error;  // JSON-escaped first error
  for (char c : r.first_error) {
    if (c == '"' || c == '\\') {
      error.push_back('\\');
      error.push_back(c);
    } else if (static_cast<unsigned char>(c) < 0x20) {
      absl::StrAppend(&error, absl::StrFormat("\\u%04x", c));
    } else {
      error.push_back(c);
    }
  }
  auto us = [](absl::Duration d) { return absl::ToDoubleMicroseconds(d); };
  return absl::StrFormat(
      "{\"mode\": \"%s\", \"model\": \"%s\", \"concurrency\": %d, "
      "\"steps_per_stream\": %d, \"chunk\": %d, \"inflight\": %d, "
      "\"calls\": %d, \"batch\": %d, \"length\": %d, "
      "\"completed\": %d, \"steps\": %d, \"seconds\": %.6f, "
      "\"steps_per_second\": %.3f, \"completed_per_second\": %.3f, "
      "\"latency_us\": {\"p50\": %.1f, \"p90\": %.1f, \"p99\": %.1f, "
      "\"max\": %.1f}, \"errors\": %d, \"first_error\": \"%s\", "
      "\"stopped_by_max_seconds\": %s}\n",
      o.mode, o.model, o.concurrency, o.steps, o.chunk, o.inflight, o.calls,
      o.batch, o.length, r.completed, r.steps, seconds, r.steps / seconds,
      r.completed / seconds, us(r.p50), us(r.p90), us(r.p99), us(r.max),
      r.errors, error, r.hit_max_duration ? "true" : "false");
}

}  // namespace ssm::client
