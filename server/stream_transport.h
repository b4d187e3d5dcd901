// A pipelined bidirectional stream of protobuf messages, with everything
// about the transport and nothing about what the messages mean: the read
// window, the write queue, where a request runs (gRPC's thread or the
// worker pool), the locking, and the one final status. What a request does
// is the Protocol's (StreamInfer's today, stream_call.cc; another wire
// protocol's streaming RPC can reuse this unchanged).
//
// Requests arrive as raw bytes (gRPC's raw callback method) and are parsed
// here, so a request that is not a valid Protocol::Request is told apart
// from a half-close: it ends the stream with INVALID_ARGUMENT naming the
// message type, like any other failed request (gRPC's typed reactor would
// report the parse failure as a failed read, indistinguishable from the
// client closing its side).
//
// Protocol, a class with:
//   using Request, Response;                  protobuf messages
//   static constexpr const char* kRpc;        the method, for logs and metrics
//   Protocol(grpc::CallbackServerContext*, const ServiceEnv*);
//   bool RunsInline(const Request&) const;    cheap enough for gRPC's thread
//   absl::Status Handle(const Request&, absl::Time arrived, Response*);
//       one request's response (into a reused message: overwrite it all),
//       or why the stream must end
//   std::string End(const absl::Status& status, bool clean);
//       the stream is over (clean: the client closed its side after every
//       response was written): release what the protocol holds; returns
//       what the failure log line should name (e.g. "session s-1a2b...")
// RunsInline and Handle are called by one thread at a time (the
// processor); End once, after the last Handle returned.
//
// A Protocol may also finish some requests later (StreamInfer's gathered
// chunks, step_batcher.h), with
//   RequestStart Start(const Request&, absl::Time arrived, Response*,
//                      absl::Status* status, RequestResumer* resumer);
// used instead of Handle: kDone is Handle's contract (the result in
// *status); kPending means the protocol keeps the request and, once the
// response is filled in, calls resumer->Resume(status) exactly once, from
// any thread, which then carries on as the stream's processor. Until then
// the stream runs nothing else (its later requests wait, in order), and
// after returning kPending the protocol's caller touches nothing.
//
// Pipelining. While the client has several requests in flight the stream
// keeps one read outstanding (up to a window of kMaxWindow requests read
// and not yet answered, and kMaxWindowBytes of them), runs the requests one
// at a time in arrival order, and writes the responses in the same order,
// one write at a time (gRPC allows one outstanding write per stream). So a
// stream's requests overlap with the network and with each other's
// bookkeeping instead of paying a full round trip each, and the window
// bounds the memory a client that sends without reading can pin (beyond it
// gRPC's flow control pushes back).
//
// Where a request runs. A request the protocol calls cheap runs right on
// the gRPC callback thread that received it: for a ~20 us model step a hop
// to the pool (a wake-up, two context switches, another wake-up for the
// write) costs several times the step itself. The event thread is held for
// at most kInlineSlice per callback; what is left then moves to the pool. A
// pool job likewise yields after kPoolSlice when other jobs wait, so one
// busy stream cannot monopolise a worker. A request of more than
// kMaxInlineParseBytes is not even parsed on gRPC's thread: the pool does.
// When the pool refuses, cheap requests go on inline and only one that
// needs the pool ends the stream with "server busy".
//
// Contract: one response per request, in order; a failed request ends the
// stream after the responses of the requests before it have been written;
// requests read after a failed one are dropped unrun; a request that runs
// when the stream breaks completes before the stream ends; queued requests
// not yet started when the stream breaks are dropped unrun.
//
// Locking. gRPC may run OnReadDone and OnWriteDone concurrently, and a pool
// job runs alongside both, so the queues and flags live under mu_. Exactly
// one thread at a time is the processor (processing_): it alone touches the
// protocol, the request it took (current_) and the reused messages, outside
// mu_. StartRead and StartWrite are issued with mu_ held: their completions
// are never run inline (gRPC's tags for them are not inlineable), and
// holding mu_ makes "no operation after Finish" a plain check of finished_.
// (A StartWrite may run gRPC's send inline, so this holds mu_ for a
// syscall; issuing the operations after releasing mu_ instead, with a count
// of operations being started that Finish waits for, measured worse: twice
// the context switches, 10-15% fewer steps/s for one pipelined stream.)
// Finish is called without mu_, as the very last use of `this` (OnDone may
// delete the object at once).

#ifndef SSM_SERVER_STREAM_TRANSPORT_H_
#define SSM_SERVER_STREAM_TRANSPORT_H_

#include <google/protobuf/arena.h>
#include <grpcpp/server_context.h>
#include <grpcpp/support/byte_buffer.h>
#include <grpcpp/support/server_callback.h>

#include <concepts>
#include <cstdint>
#include <deque>
#include <string>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "server/log.h"
#include "server/service_env.h"
#include "server/status.h"
#include "server/unary_call.h"

namespace ssm::server {

enum class RequestStart { kDone, kPending };

// Carries a stream on once a pending request's response is ready.
class RequestResumer {
 public:
  virtual void Resume(absl::Status status) = 0;

 protected:
  ~RequestResumer() = default;
};

template <typename Protocol>
class PipelinedStream final : public grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer>,
                              public RequestResumer {
 public:
  PipelinedStream(grpc::CallbackServerContext* context, const ServiceEnv* env)
      : context_(context), env_(env), protocol_(context, env) {
    env_->calls->Enter();
    absl::MutexLock lock(&mu_);
    StartReadLocked();
  }

  void OnReadDone(bool ok) override {
    bool process_here = false;
    bool finish = false;
    {
      absl::MutexLock lock(&mu_);
      reading_ = false;
      if (!ok) {
        // No more requests: the client either closed its side (a clean end
        // once everything read is answered) or the stream broke.
        reads_done_ = true;
        if (context_->IsCancelled()) {
          BreakLocked(absl::CancelledError("the stream was cancelled or broke"));
        } else {
          MaybeEndCleanlyLocked();
        }
      } else if (!ending_) {
        pending_.emplace_back();
        Pending& p = pending_.back();
        p.bytes.Swap(&read_buffer_);
        p.size = static_cast<int64_t>(p.bytes.Length());
        p.arrived = absl::Now();
        ++window_;
        window_bytes_ += p.size;
        if (!processing_) {
          // This thread runs it. The next read starts once its response
          // is queued (Process), so that gRPC sends the response and the
          // read's flow-control update in one write.
          process_here = processing_ = true;
        } else {
          StartReadLocked();  // the processor is busy: keep the window filling
        }
      } else {
        read_buffer_.Clear();  // ending: requests read now are dropped
      }
      if (!process_here) finish = TakeFinishLocked();
    }
    if (process_here) {
      Process(/*on_pool=*/false);
    } else if (finish) {
      FinishNow();
    }
  }

  void OnWriteDone(bool ok) override {
    bool finish = false;
    {
      absl::MutexLock lock(&mu_);
      writing_ = false;
      window_bytes_ -= unsent_.front().size;
      unsent_.pop_front();
      --window_;
      if (!ok) {
        BreakLocked(absl::CancelledError("the stream broke while sending a response"));
      } else {
        StartWriteLocked();
        StartReadLocked();  // the window may have room again
        MaybeEndCleanlyLocked();
      }
      finish = TakeFinishLocked();
    }
    if (finish) FinishNow();
  }

  void OnDone() override {
    CallCounter* calls = env_->calls;
    delete this;
    calls->Exit();
  }

  // A pending request's response is ready (Protocol::Start): this thread
  // is the processor from here on.
  void Resume(absl::Status status) override { RunProcessor(/*on_pool=*/false, &status); }

 private:
  using Request = typename Protocol::Request;
  using Response = typename Protocol::Response;

  // Requests read and not yet answered (written), and their bytes; past
  // either bound the stream stops reading until responses go out. One
  // request is always admitted, however large (gRPC's own message limit
  // bounds it).
  static constexpr int kMaxWindow = 64;
  static constexpr int64_t kMaxWindowBytes = 4 << 20;
  // How long one callback may run requests on a gRPC thread before handing
  // the rest to the pool, and how long a pool job runs before yielding.
  static constexpr absl::Duration kInlineSlice = absl::Milliseconds(1);
  static constexpr absl::Duration kPoolSlice = absl::Milliseconds(5);
  // Larger requests are parsed on the pool, not on gRPC's thread.
  static constexpr size_t kMaxInlineParseBytes = 64 << 10;

  struct Pending {
    grpc::ByteBuffer bytes;
    absl::Time arrived;
    int64_t size = 0;
  };
  struct Unsent {
    grpc::ByteBuffer bytes;
    int64_t size = 0;
  };

  void StartReadLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (reading_ || reads_done_ || ending_ || finished_) return;
    if (window_ > 0 && (window_ >= kMaxWindow || window_bytes_ >= kMaxWindowBytes)) return;
    reading_ = true;
    StartRead(&read_buffer_);
  }

  // Writes the oldest unsent response. While the processor has more of
  // this stream's requests in hand, the write carries gRPC's buffer hint:
  // gRPC holds it (and completes it at once) until a write without the hint,
  // so a burst of answers goes out in one system call instead of one each
  // (the last answer of the burst, or the stream's end, flushes them).
  void StartWriteLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (writing_ || unsent_.empty() || finished_) return;
    writing_ = true;
    const bool more = unsent_.size() > 1 ||
                      (processing_ && !ending_ && (has_current_ || !pending_.empty()));
    StartWrite(&unsent_.front().bytes,
               more ? grpc::WriteOptions().set_buffer_hint() : grpc::WriteOptions());
  }

  // Records why and how the stream ends (the first reason wins): nothing
  // new is read or run, requests not yet run are dropped, the running one
  // (if any) completes, and the responses already made are still written;
  // then TakeFinishLocked lets one thread finish the call.
  void EndLocked(absl::Status status, bool clean) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (ending_) return;
    ending_ = true;
    end_status_ = std::move(status);
    end_clean_ = clean;
    pending_.clear();
  }

  // The stream broke (cancelled, or a write failed): ends it as EndLocked
  // does, but nothing more can be sent, so the responses not yet written
  // are dropped, and a clean end still sending its last responses becomes
  // a broken one (the client did not get every response). An error end
  // keeps its own status.
  void BreakLocked(absl::Status status) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (finished_) return;  // a read failing after Finish: nothing to do
    if (ending_ && end_status_.ok()) {
      end_status_ = std::move(status);
      end_clean_ = false;
    } else {
      EndLocked(std::move(status), /*clean=*/false);
    }
    // Keep only the write gRPC still holds.
    while (unsent_.size() > (writing_ ? 1u : 0u)) unsent_.pop_back();
  }

  // The clean end: the client closed its side and every request it sent
  // has been answered.
  void MaybeEndCleanlyLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (!ending_ && reads_done_ && pending_.empty() && !processing_ && unsent_.empty()) {
      EndLocked(absl::OkStatus(), /*clean=*/true);
    }
  }

  // True (once) when the call should be finished now: it is ending, no
  // request runs and no write is outstanding. The caller then calls
  // FinishNow without mu_.
  bool TakeFinishLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (!ending_ || finished_ || processing_ || writing_ || !unsent_.empty()) return false;
    finished_ = true;
    return true;
  }

  // Parses current_ into a fresh request_ (consuming its bytes), once. The
  // request lives on the stream's arena, reset for every request: a small
  // request (a chunk of a few steps) is built in the arena's first block,
  // which the stream owns, so parsing allocates nothing (a reused message
  // would not do: parsing clears a oneof, here `open` or `chunk`, by
  // deleting its message, and builds a new one).
  absl::Status ParseCurrent() {
    parsed_ = true;
    arena_.Reset();
    request_ = google::protobuf::Arena::CreateMessage<Request>(&arena_);
    if (ParseMessage(&current_.bytes, request_).ok()) return absl::OkStatus();
    return UnparsableRequest(request_->GetTypeName(), static_cast<size_t>(current_.size));
  }
  static google::protobuf::ArenaOptions ArenaIn(char* block, size_t size) {
    google::protobuf::ArenaOptions options;
    options.initial_block = block;
    options.initial_block_size = size;
    return options;
  }

  static constexpr bool kStartsLater =
      requires(Protocol p, const Request& r, absl::Time t, Response* out, absl::Status* st,
               RequestResumer* resumer) {
        { p.Start(r, t, out, st, resumer) } -> std::same_as<RequestStart>;
      };

  void Process(bool on_pool) { RunProcessor(on_pool, nullptr); }

  // The processor: runs the queued requests in order until none is left,
  // the stream ends or a request is pending (Protocol::Start). Called by
  // the thread that set processing_, or (`resumed`: the pending request's
  // result) by the one that resumes it; on a gRPC thread (on_pool false)
  // it runs only what the protocol calls cheap, for at most kInlineSlice,
  // and hands the rest to the pool.
  void RunProcessor(bool on_pool, const absl::Status* resumed) {
    const absl::Time slice_end = absl::Now() + (on_pool ? kPoolSlice : kInlineSlice);
    bool pool_refused = false;
    if (resumed != nullptr) {
      CompleteCurrent(*resumed);
    } else {
      mu_.Lock();
    }
    while (!ending_ && (has_current_ || !pending_.empty())) {
      if (!has_current_) {
        Pending& front = pending_.front();
        current_.bytes.Swap(&front.bytes);  // ByteBuffer has no move
        current_.arrived = front.arrived;
        current_.size = front.size;
        pending_.pop_front();
        has_current_ = true;
        parsed_ = false;
      }
      // current_ is the processor's alone from here on.
      mu_.Unlock();
      absl::Status status;
      if (!parsed_ && (on_pool || current_.bytes.Length() <= kMaxInlineParseBytes)) {
        status = ParseCurrent();
      }
      bool to_pool = false;
      if (status.ok()) {
        if (!on_pool) {
          if (!parsed_ || !protocol_.RunsInline(*request_)) {
            if (pool_refused) {
              status = BusyError(*env_->pool);
            } else {
              to_pool = true;
            }
          } else {
            // Past the slice, cheap requests may go on here only if the
            // pool is full: refusing them would be silly.
            to_pool = !pool_refused && absl::Now() >= slice_end;
          }
        } else if (!pool_refused && absl::Now() >= slice_end && env_->pool->queued() > 0) {
          to_pool = true;  // yield the worker: other jobs are waiting
        }
      }
      if (to_pool) {
        {
          absl::MutexLock lock(&mu_);
          StartReadLocked();  // keep reading while the pool runs it
        }
        // processing_ stays set: the job takes it over.
        if (env_->pool->TrySchedule([this] { Process(/*on_pool=*/true); })) return;
        pool_refused = true;
        mu_.Lock();
        continue;
      }

      if (status.ok()) status = CallStillWanted(context_);
      if (status.ok()) {
        if constexpr (kStartsLater) {
          if (protocol_.Start(*request_, current_.arrived, &response_, &status, this) ==
              RequestStart::kPending) {
            return;  // processing_ stays set: Resume carries on
          }
        } else {
          status = protocol_.Handle(*request_, current_.arrived, &response_);
        }
      }
      CompleteCurrent(std::move(status));
    }
    if (has_current_) {  // the stream ended before it ran: dropped
      has_current_ = false;
      window_bytes_ -= current_.size;
      --window_;
    }
    processing_ = false;
    StartReadLocked();
    MaybeEndCleanlyLocked();
    const bool finish = TakeFinishLocked();
    mu_.Unlock();
    if (finish) FinishNow();
  }

  // The current request is done (`status`: its result): its response is
  // serialized and queued for writing, or the stream ends with the
  // failure. Called by the processor without mu_; returns holding it.
  void CompleteCurrent(absl::Status status) ABSL_EXCLUSIVE_LOCK_FUNCTION(mu_) {
    Unsent out;
    if (status.ok()) status = SerializeMessage(response_, &out.bytes);
    out.size = static_cast<int64_t>(out.bytes.Length());
    mu_.Lock();
    has_current_ = false;
    window_bytes_ -= current_.size;
    if (!status.ok()) {
      --window_;
      EndLocked(std::move(status), /*clean=*/false);
    } else if (ending_) {
      // The stream broke while this request ran: its response is lost.
      --window_;
    } else {
      window_bytes_ += out.size;
      unsent_.emplace_back();
      unsent_.back().bytes.Swap(&out.bytes);
      unsent_.back().size = out.size;
      StartWriteLocked();
      StartReadLocked();
    }
  }

  // Lets the protocol release what it holds, records and logs the end, and
  // finishes the call. Called once, by the thread TakeFinishLocked chose,
  // without mu_: OnDone may follow at once and delete this.
  void FinishNow() {
    const absl::Status status = end_status_;
    const std::string context = protocol_.End(status, end_clean_);
    if (!status.ok()) {
      const std::string code = absl::StatusCodeToString(status.code());
      LogfLimited(absl::StrCat("rpc ", Protocol::kRpc, " ", code),
                  "rpc %s failed: %s: %s (%s, peer %s)", Protocol::kRpc, code, status.message(),
                  context, context_->peer());
    }
    env_->metrics->RecordRpc(Protocol::kRpc, status.code(), absl::InfiniteDuration());
    Finish(ToGrpcStatus(status));
  }

  grpc::CallbackServerContext* const context_;
  const ServiceEnv* const env_;

  absl::Mutex mu_;
  grpc::ByteBuffer read_buffer_ ABSL_GUARDED_BY(mu_);  // the outstanding read's target
  std::deque<Pending> pending_ ABSL_GUARDED_BY(mu_);   // read, not yet taken
  std::deque<Unsent> unsent_ ABSL_GUARDED_BY(mu_);     // front: being written if writing_
  int window_ ABSL_GUARDED_BY(mu_) = 0;                // read and not yet answered
  int64_t window_bytes_ ABSL_GUARDED_BY(mu_) = 0;
  bool reading_ ABSL_GUARDED_BY(mu_) = false;
  bool writing_ ABSL_GUARDED_BY(mu_) = false;
  bool processing_ ABSL_GUARDED_BY(mu_) = false;
  bool reads_done_ ABSL_GUARDED_BY(mu_) = false;
  bool ending_ ABSL_GUARDED_BY(mu_) = false;
  bool finished_ ABSL_GUARDED_BY(mu_) = false;
  bool has_current_ ABSL_GUARDED_BY(mu_) = false;
  // Set with ending_, read by FinishNow.
  absl::Status end_status_;
  bool end_clean_ = false;

  // The processor's (see Process), and FinishNow's once none runs.
  Pending current_;
  bool parsed_ = false;
  Protocol protocol_;
  // Every request is parsed onto the arena (ParseCurrent) and every
  // response written into the one reused message: a stream of small chunks
  // allocates nothing for its messages.
  alignas(8) char arena_block_[2048];
  google::protobuf::Arena arena_{ArenaIn(arena_block_, sizeof(arena_block_))};
  Request* request_ = nullptr;  // on arena_
  Response response_;
};

}  // namespace ssm::server

#endif  // SSM_SERVER_STREAM_TRANSPORT_H_
