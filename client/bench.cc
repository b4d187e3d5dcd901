#include "client/bench.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <memory>
#include <thread>
#include <utility>
#include <vector>

#include <grpcpp/alarm.h>
#include <grpcpp/grpcpp.h>
#include <nlohmann/json.hpp>
#include <sys/resource.h>
#include <unistd.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "ssm/v1/ssm_service.grpc.pb.h"

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

// ---------------------------------------------------------------------------
// The stream workload: every stream is an async StreamInfer call on the
// client's channel, all driven by one CompletionQueue loop on the calling
// thread. No thread exists per stream and nothing is shared between
// threads, so there are no locks: a completion fills the one preallocated
// request of its stream and starts the write, or takes a response's time,
// checks it and starts the next read. Client CPU per chunk on the 2-core
// development VM (s4-demo, 64 lock-step streams / 1 stream with 32 in
// flight): this loop 16 / 25 us; gRPC's callback API, whose reactions run
// on its two `nexting` threads and hand off between them, 20 / 34 us; the
// synchronous API with a writer and a reader thread per stream 57 / 36 us.
// A channel per group of streams (a distinct channel argument each) cost
// more CPU and gained nothing, so all streams share the client's.

using ssm::v1::StreamRequest;
using ssm::v1::StreamResponse;

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

// CPU time (user + system) a local process has used, from
// /proc/<pid>/stat; negative if unreadable.
absl::Duration ProcessCpu(int pid) {
  std::FILE* f = std::fopen(absl::StrCat("/proc/", pid, "/stat").c_str(), "r");
  if (f == nullptr) return -absl::Seconds(1);
  char buf[1024];
  const size_t n = std::fread(buf, 1, sizeof(buf) - 1, f);
  std::fclose(f);
  buf[n] = '\0';
  // The command name (field 2) may hold spaces: count fields after its ')'.
  const char* p = std::strrchr(buf, ')');
  unsigned long long utime = 0, stime = 0;
  if (p == nullptr ||
      std::sscanf(p + 1, " %*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &utime,
                  &stime) != 2) {
    return -absl::Seconds(1);
  }
  return absl::Seconds(static_cast<double>(utime + stime) / sysconf(_SC_CLK_TCK));
}

// This process's CPU time (user + system, every thread).
absl::Duration SelfCpu() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return absl::DurationFromTimeval(u.ru_utime) + absl::DurationFromTimeval(u.ru_stime);
}

// After --max_seconds the streams stop sending, collect what is in flight
// and close cleanly (so the server ends their sessions instead of keeping
// them detached for --session_ttl). Those still running this long after
// that are cancelled and counted as errors.
constexpr absl::Duration kDrainGrace = absl::Seconds(5);

class BenchStream {
 public:
  // A completion's tag is the stream's address with the operation in its
  // low bits.
  enum Op : uintptr_t { kStart, kRead, kWrite, kWritesDone, kFinish, kAlarm };
  static constexpr uintptr_t kOpMask = 7;

  // `epoch`: when the run started (paced streams' schedule counts from it).
  BenchStream(const BenchOptions& o, int index, const Client& client, absl::Time epoch)
      : o_(o),
        index_(index),
        epoch_(epoch),
        phase_(static_cast<double>(index) / o.concurrency),
        n_chunks_((o.steps + o.chunk - 1) / o.chunk),
        window_(static_cast<int>(std::min<int64_t>(o.inflight, n_chunks_))),
        in_flight_(window_) {
    context_.set_wait_for_ready(client.options().wait_for_ready);
    client.AuthorizeContext(&context_);
    // (Capped: a run that --max_seconds ends may have asked for billions.)
    result_.latencies.reserve(
        static_cast<size_t>(std::min<int64_t>(n_chunks_, int64_t{1} << 14)));
    ssm::v1::StreamOpen* open = request_.mutable_open();
    open->set_model(o.model);
    open->set_batch(1);
  }

  static std::pair<BenchStream*, Op> FromTag(void* tag) {
    const uintptr_t bits = reinterpret_cast<uintptr_t>(tag);
    return {reinterpret_cast<BenchStream*>(bits & ~kOpMask),
            static_cast<Op>(bits & kOpMask)};
  }

  // Opens the stream now, or (paced) at its place in the schedule.
  void Start(ssm::v1::Inference::Stub* stub, grpc::CompletionQueue* cq) {
    stub_ = stub;
    cq_ = cq;
    if (o_.rate > 0) {
      SetAlarm(Due(-1));
      return;
    }
    StartCall();
  }

  void StartCall() {
    call_ = stub_->PrepareAsyncStreamInfer(&context_, cq_);
    // StartCall sends the headers with the write operation set: the open
    // is written once it completes.
    call_->StartCall(Tag(kStart));
    ++pending_;
    write_busy_ = true;
  }

  // Handles the completion of `op`; true once the stream is over (its
  // status known, none of its operations pending). `stop`: send nothing
  // more, finish what is in flight.
  bool Handle(Op op, bool ok, bool stop) {
    --pending_;
    switch (op) {
      case kAlarm:
        alarm_set_ = false;
        if (call_ == nullptr) {  // the paced open's time
          if (stop) {
            finished_ = true;  // never opened: nothing to conclude
            break;
          }
          StartCall();
          return false;
        }
        break;
      case kStart:
        if (ok) {
          StartWrite();  // the open
        } else {
          write_busy_ = false;
          broken_ = true;
        }
        break;
      case kWrite:
        write_busy_ = false;
        if (!ok) broken_ = true;  // the call is over; Finish says why
        break;
      case kRead:
        read_busy_ = false;
        if (!ok) {
          broken_ = true;  // the call is over; Finish says why
        } else if (!opened_) {
          OnOpened();
        } else {
          OnOutput();
        }
        break;
      case kWritesDone:
        break;
      case kFinish:
        finished_ = true;
        break;
    }
    if (!broken_ && !finished_) {
      Next(stop);
      if (!read_busy_ && !writes_done_ && received_ < n_chunks_) {
        read_busy_ = true;
        call_->Read(&response_, Tag(kRead));
        ++pending_;
      }
    }
    // Finish once nothing more can be read: every response is in and the
    // writes are done, or a read failed, or this side gave up.
    if (call_ != nullptr && !finish_called_ && !read_busy_ && (broken_ || writes_done_)) {
      finish_called_ = true;
      call_->Finish(&status_, Tag(kFinish));
      ++pending_;
    }
    if (!finished_ || pending_ > 0) return false;
    Conclude();
    return true;
  }

  // Ends a stream still running kDrainGrace after --max_seconds.
  void CancelStraggler() {
    cancelled_ = true;
    context_.TryCancel();
  }

  // The run stops: a paced stream waiting for its next chunk's time stops
  // waiting (the alarm completes at once, not ok).
  void StopPacing() {
    if (alarm_set_) alarm_.Cancel();
  }

  WorkerResult& result() { return result_; }

 private:
  struct InFlight {
    int64_t steps = 0;
    absl::Time sent;
  };

  void* Tag(Op op) {
    return reinterpret_cast<void*>(reinterpret_cast<uintptr_t>(this) | op);
  }

  void StartWrite() {
    call_->Write(request_, Tag(kWrite));
    ++pending_;
  }

  // When chunk `i` is due on a paced stream (-1: the open).
  absl::Time Due(int64_t i) const {
    return epoch_ + absl::Seconds((static_cast<double>(i + 1) + phase_) / o_.rate);
  }

  void SetAlarm(absl::Time when) {
    alarm_.Set(cq_, absl::ToChronoTime(when), Tag(kAlarm));
    alarm_set_ = true;
    ++pending_;
  }

  // A broken protocol: keep the reason and cancel the call; the failed
  // read (or its absence) leads to Finish.
  void Fail(absl::Status status) {
    if (result_.error.ok()) result_.error = std::move(status);
    broken_ = true;
    context_.TryCancel();
  }

  void OnOpened() {
    if (response_.kind_case() != StreamResponse::kOpened ||
        response_.opened().d_input() < 1 ||
        response_.opened().d_output() < 1) {
      return Fail(absl::InternalError(absl::StrCat(
          "stream ", index_,
          ": the server's first response is not a valid `opened`")));
    }
    d_input_ = response_.opened().d_input();
    d_output_ = response_.opened().d_output();
    position_ = response_.position();
    opened_ = true;
  }

  void OnOutput() {
    if (received_ == sent_) {
      return Fail(absl::InternalError(absl::StrCat(
          "stream ", index_, ": the server sent a response to no chunk")));
    }
    const InFlight& chunk = in_flight_[received_ % window_];
    const absl::Time now = absl::Now();
    // Exactly one [1, T, d_output] output per chunk, in order: the position
    // proves that none was dropped, repeated or reordered.
    const ssm::v1::Tensor& out = response_.output();
    if (response_.kind_case() != StreamResponse::kOutput ||
        out.shape_size() != 3 || out.shape(0) != 1 ||
        out.shape(1) != chunk.steps || out.shape(2) != d_output_ ||
        out.values_size() != chunk.steps * d_output_ ||
        response_.position() != position_ + chunk.steps) {
      return Fail(absl::InternalError(absl::StrCat(
          "stream ", index_, ", chunk ", received_, " (", chunk.steps,
          " steps): the server sent output of shape [",
          absl::StrJoin(out.shape(), ", "), "] with ", out.values_size(),
          " values at position ", response_.position(), "; expected [1, ",
          chunk.steps, ", ", d_output_, "] at position ",
          position_ + chunk.steps)));
    }
    result_.latencies.push_back(now - chunk.sent);
    result_.steps += chunk.steps;
    position_ += chunk.steps;
    ++received_;
  }

  // Starts the next write if the window and the one-write-at-a-time rule
  // allow, or the half-close once every response is in. request_ is
  // refilled here, when no write holds it.
  void Next(bool stop) {
    if (!opened_ || write_busy_ || writes_done_) return;
    if (!stop && sent_ < n_chunks_ && sent_ - received_ < window_) {
      if (o_.rate > 0) {
        const absl::Time due = Due(sent_);
        if (absl::Now() < due) {
          if (!alarm_set_) SetAlarm(due);
          return;
        }
      }
      const int64_t t0 = sent_ * o_.chunk;
      const int64_t t = std::min<int64_t>(o_.chunk, o_.steps - t0);
      ssm::v1::Tensor* chunk = request_.mutable_chunk();  // drops `open`
      if (chunk->shape_size() != 3) {
        chunk->clear_shape();
        chunk->add_shape(1);
        chunk->add_shape(t);
        chunk->add_shape(d_input_);
      } else {
        chunk->set_shape(1, t);
      }
      google::protobuf::RepeatedField<float>* values = chunk->mutable_values();
      values->Resize(static_cast<int>(t * d_input_), 0.0f);
      float* v = values->mutable_data();
      for (int64_t k = 0; k < t; ++k) {
        for (int f = 0; f < d_input_; ++f) {
          v[k * d_input_ + f] = Signal(t0 + k, index_, f);
        }
      }
      in_flight_[sent_ % window_] = {t, absl::Now()};
      ++sent_;
      write_busy_ = true;
      StartWrite();
      return;
    }
    if (received_ == sent_ && (stop || sent_ == n_chunks_)) {
      // A clean half-close: the server ends the session, then the call.
      writes_done_ = true;
      call_->WritesDone(Tag(kWritesDone));
      ++pending_;
    }
  }

  void Conclude() {
    absl::Status& error = result_.error;
    if (error.ok() && !status_.ok()) {
      error = cancelled_ && status_.error_code() == grpc::StatusCode::CANCELLED
                  ? absl::DeadlineExceededError(absl::StrCat(
                        "stream ", index_, " still running ",
                        absl::FormatDuration(kDrainGrace),
                        " after --max_seconds; cancelled"))
                  : StatusFromGrpc(status_);
    }
    if (error.ok() && received_ != sent_) {
      error = absl::InternalError(absl::StrCat(
          "stream ", index_, " ended with ", sent_ - received_,
          " chunks unanswered"));
    }
  }

  const BenchOptions& o_;
  const int index_;
  const absl::Time epoch_;
  const double phase_;  // paced: this stream's offset, in periods
  const int64_t n_chunks_;
  const int window_;  // chunks in flight at most
  grpc::ClientContext context_;
  ssm::v1::Inference::Stub* stub_ = nullptr;
  grpc::CompletionQueue* cq_ = nullptr;
  std::unique_ptr<grpc::ClientAsyncReaderWriter<StreamRequest, StreamResponse>>
      call_;
  grpc::Alarm alarm_;  // paced streams: the next chunk's (or the open's) time
  bool alarm_set_ = false;
  // The one request being written (one write at a time) and the one
  // response being read, each reused for the whole stream.
  StreamRequest request_;
  StreamResponse response_;
  grpc::Status status_;
  int pending_ = 0;  // operations started, not completed
  bool write_busy_ = false, read_busy_ = false;
  bool opened_ = false, writes_done_ = false;
  bool broken_ = false;  // the call failed or this side gave up
  bool finish_called_ = false, finished_ = false, cancelled_ = false;
  int d_input_ = 0, d_output_ = 0;
  int64_t sent_ = 0, received_ = 0;
  int64_t position_ = 0;  // after the last response
  // The chunks in flight, chunk i in slot i % window_.
  std::vector<InFlight> in_flight_;
  WorkerResult result_;
};

// Runs the stream workload to its counts or `deadline`; true if the
// deadline cut it short. With a server PID, samples the server's resident
// memory about every 250 ms into `rss_max_kb`.
bool RunStreams(Client& client, const BenchOptions& o, absl::Time deadline,
                std::vector<WorkerResult>* results, int64_t* rss_max_kb) {
  static_assert(alignof(BenchStream) > BenchStream::kOpMask);
  std::unique_ptr<ssm::v1::Inference::Stub> stub =
      ssm::v1::Inference::NewStub(client.channel());
  grpc::CompletionQueue cq;  // outlives the calls
  std::vector<std::unique_ptr<BenchStream>> streams;
  streams.reserve(o.concurrency);
  for (int i = 0; i < o.concurrency; ++i) {
    streams.push_back(std::make_unique<BenchStream>(o, i, client, absl::Now()));
  }
  for (std::unique_ptr<BenchStream>& s : streams) s->Start(stub.get(), &cq);

  int running = o.concurrency;
  bool stop = false;
  bool cancelled = false;
  absl::Time next_sample = absl::InfinitePast();
  while (running > 0) {
    // The clock, not only a wait's timeout, ends each phase: a queue that
    // always has an event ready never times out.
    const absl::Time now = absl::Now();
    if (o.server_pid > 0 && !stop && now >= next_sample) {
      *rss_max_kb = std::max(*rss_max_kb, ResidentKb(o.server_pid));
      next_sample = now + absl::Milliseconds(250);
    }
    if (!stop && now >= deadline) {
      // Every running stream has an operation pending, so each sees `stop`
      // at its next completion (paced ones waiting for their time at once).
      stop = true;
      for (std::unique_ptr<BenchStream>& s : streams) s->StopPacing();
    }
    if (stop && !cancelled && now >= deadline + kDrainGrace) {
      cancelled = true;
      for (std::unique_ptr<BenchStream>& s : streams) s->CancelStraggler();
    }
    void* tag = nullptr;
    bool ok = false;
    if (cancelled) {
      if (!cq.Next(&tag, &ok)) break;  // not before Shutdown
    } else {
      const absl::Time until = stop ? deadline + kDrainGrace : deadline;
      if (cq.AsyncNext(&tag, &ok, absl::ToChronoTime(until)) !=
          grpc::CompletionQueue::GOT_EVENT) {
        continue;  // TIMEOUT (SHUTDOWN comes only after Shutdown)
      }
    }
    auto [stream, op] = BenchStream::FromTag(tag);
    if (stream->Handle(op, ok, stop)) --running;
  }
  cq.Shutdown();
  void* tag;
  bool ok;
  while (cq.Next(&tag, &ok)) {
  }
  for (int i = 0; i < o.concurrency; ++i) {
    (*results)[i] = std::move(streams[i]->result());
  }
  return stop;
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
  if (!(o.rate >= 0) || !std::isfinite(o.rate)) {
    return absl::InvalidArgumentError("--rate must be a finite number >= 0");
  }
  if (o.max_duration <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError("--max_seconds must be > 0");
  }
  if (absl::Status s = client.status(); !s.ok()) return s;
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
  const absl::Duration client_cpu0 = SelfCpu();
  const absl::Duration server_cpu0 =
      o.server_pid > 0 ? ProcessCpu(o.server_pid) : -absl::Seconds(1);
  if (o.server_pid > 0 && o.mode != "unary") report.rss_before_kb = ResidentKb(o.server_pid);
  if (o.mode == "idle") IdleSessions(client, o, deadline, &report, &results[0]);
  bool stopped = false;
  if (o.mode == "stream") {
    stopped = RunStreams(client, o, deadline, &results, &report.rss_held_kb);
  }
  for (int i = 0; i < o.concurrency && o.mode == "unary"; ++i) {
    workers.emplace_back(UnaryWorker, std::ref(client), std::cref(o),
                         model->config().d_input(), deadline, &next_call,
                         &results[i]);
  }
  for (std::thread& t : workers) t.join();
  report.client_cpu = SelfCpu() - client_cpu0;
  if (server_cpu0 >= absl::ZeroDuration()) {
    const absl::Duration server_cpu1 = ProcessCpu(o.server_pid);
    if (server_cpu1 >= absl::ZeroDuration()) report.server_cpu = server_cpu1 - server_cpu0;
  }

  report.options = o;
  report.elapsed = absl::Now() - start;
  // Streams know whether the deadline cut them short; the other workloads
  // ran into it if it has passed.
  report.hit_max_duration =
      o.mode == "stream" ? stopped : absl::Now() >= deadline;
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
                    ", in flight ", o.inflight,
                    o.rate > 0 ? absl::StrFormat(", %g chunks/s each", o.rate) : "", "\n");
    if (r.rss_before_kb >= 0 && r.rss_held_kb >= 0) {
      absl::StrAppend(&out, absl::StrFormat(
          "  server RSS %.1f MiB before, %.1f MiB at most while streaming\n",
          r.rss_before_kb / 1024.0, r.rss_held_kb / 1024.0));
    }
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
  // CPU per completed chunk (call, session), microseconds.
  auto per = [&](absl::Duration d) {
    return r.completed > 0 ? absl::StrFormat("%.1f", absl::ToDoubleMicroseconds(d) / r.completed)
                           : std::string("-");
  };
  absl::StrAppend(&out, "  cpu        client ", per(r.client_cpu), " us, server ",
                  r.server_cpu >= absl::ZeroDuration() ? per(r.server_cpu) + " us"
                                                       : std::string("not measured"),
                  " per ", o.mode == "idle" ? "session" : stream ? "chunk" : "call",
                  " (user + system)\n");
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
  using Json = nlohmann::ordered_json;
  const BenchOptions& o = r.options;
  const double seconds = absl::ToDoubleSeconds(r.elapsed);
  // JSON has no inf or NaN (a run of zero length, an infinite cap): null.
  auto number = [](double x) { return std::isfinite(x) ? Json(x) : Json(nullptr); };
  auto us = [](absl::Duration d) { return absl::ToDoubleMicroseconds(d); };
  auto kib = [](int64_t kb) { return kb >= 0 ? Json(kb) : Json(nullptr); };
  const bool measured = r.server_cpu >= absl::ZeroDuration();
  Json report = {
      {"mode", o.mode},
      {"model", o.model},
      {"concurrency", o.concurrency},
      {"steps_per_stream", o.steps},
      {"chunk", o.chunk},
      {"inflight", o.inflight},
      {"rate", o.rate},
      {"calls", o.calls},
      {"batch", o.batch},
      {"length", o.length},
      {"max_seconds", number(absl::ToDoubleSeconds(o.max_duration))},
      {"hold_seconds", number(absl::ToDoubleSeconds(o.hold))},
      {"server_pid", o.server_pid},
      {"completed", r.completed},
      {"steps", r.steps},
      {"seconds", seconds},
      {"steps_per_second", number(r.steps / seconds)},
      {"completed_per_second", number(r.completed / seconds)},
      {"latency_us",
       {{"p50", us(r.p50)}, {"p90", us(r.p90)}, {"p99", us(r.p99)}, {"max", us(r.max)}}},
      {"errors", r.errors},
      {"first_error", r.first_error},
      {"stopped_by_max_seconds", r.hit_max_duration},
      // The server's resident memory (idle and stream with --server_pid),
      // null when not measured.
      {"server_rss_before_kib", kib(r.rss_before_kb)},
      {"server_rss_held_kib", kib(r.rss_held_kb)},
      // CPU time over the run (user + system): this process's, and the
      // server's with --server_pid (else null), in total and per completed
      // chunk (call, session).
      {"client_cpu_seconds", absl::ToDoubleSeconds(r.client_cpu)},
      {"server_cpu_seconds", measured ? Json(absl::ToDoubleSeconds(r.server_cpu)) : Json(nullptr)},
      {"client_cpu_us_per_completed", number(us(r.client_cpu) / r.completed)},
      {"server_cpu_us_per_completed",
       measured ? number(us(r.server_cpu) / r.completed) : Json(nullptr)},
  };
  // A server's error message may hold bytes that are not UTF-8: replaced
  // (U+FFFD) rather than thrown on.
  return report.dump(-1, ' ', /*ensure_ascii=*/false, Json::error_handler_t::replace) + "\n";
}

}  // namespace ssm::client
