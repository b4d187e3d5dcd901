#include "server/services.h"

#include <algorithm>
#include <chrono>
#include <deque>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/functional/any_invocable.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "server/log.h"
#include "server/math_handlers.h"
#include "server/model_config.h"
#include "server/status.h"
#include "server/tensor_codec.h"

namespace ssm::server {
namespace {

namespace v1 = ::ssm::v1;

bool Draining(const ServiceEnv& env) {
  return env.draining != nullptr && env.draining->load(std::memory_order_acquire);
}

absl::Status DrainingError() {
  return absl::UnavailableError("server is draining; retry on another replica");
}

absl::Status BusyError(const WorkerPool& pool) {
  return absl::ResourceExhaustedError(absl::StrCat(
      "server busy: ", pool.threads(), " workers are busy and --max_queue=", pool.max_queue(),
      " jobs are already waiting; retry later"));
}

// Why a call that is still queued should not run: its client cancelled or
// its deadline passed. OK when it should run.
absl::Status CallStillWanted(grpc::CallbackServerContext* context) {
  if (!context->IsCancelled()) return absl::OkStatus();
  if (context->deadline() <= std::chrono::system_clock::now()) {
    return absl::DeadlineExceededError("the deadline passed before the work started");
  }
  return absl::CancelledError("the call was cancelled");
}

// Why a running call should stop between two pieces of its work, with how
// far it got. OK when it should go on.
absl::Status CallStopped(grpc::CallbackServerContext* context, int64_t done, int64_t total,
                         const char* unit) {
  if (!context->IsCancelled()) return absl::OkStatus();
  const std::string progress = absl::StrCat("; stopped after ", done, " of ", total, " ", unit);
  if (context->deadline() <= std::chrono::system_clock::now()) {
    return absl::DeadlineExceededError(absl::StrCat("the deadline passed", progress));
  }
  return absl::CancelledError(absl::StrCat("the call was cancelled", progress));
}

// Forward runs an Infer in pieces of whole sequences of at most this many
// (sequence x step) rows, the bound a session applies to its own slices of
// time (which serve return_state): the model's scratch (about 7 x rows x
// d_model doubles for an S4 stack) stays bounded whatever the batch, and a
// cancelled call or a passed deadline stops the work between pieces instead
// of after the whole call. 8 x 4096 is one piece, so the benchmark's call
// is unchanged.
constexpr int64_t kInferPieceRows = ssm::Session::kMaxRowsPerPass;

void SnapshotToProto(const SessionSnapshot& snapshot, v1::StateSnapshot* out) {
  out->set_data(snapshot.data);
  out->set_model(snapshot.model);
  out->set_version(snapshot.version);
  out->set_fingerprint(snapshot.fingerprint);
  out->set_position(snapshot.position);
  out->set_batch(snapshot.batch);
}

absl::Status CheckBatchLimit(int64_t batch, absl::string_view field, const RequestLimits& limits) {
  if (batch > limits.max_batch) {
    return absl::ResourceExhaustedError(
        absl::StrCat(field, " = ", batch, " exceeds --max_batch=", limits.max_batch));
  }
  return absl::OkStatus();
}

// Refuses a response gRPC would refuse to send anyway, before computing it.
absl::Status CheckResponseBytes(int64_t bytes, absl::string_view what,
                                const RequestLimits& limits) {
  if (bytes > limits.max_message_bytes) {
    return absl::ResourceExhaustedError(absl::StrCat(what, " would take ", bytes,
                                                     " bytes, more than --max_message_bytes=",
                                                     limits.max_message_bytes));
  }
  return absl::OkStatus();
}

// The reactor of one unary call: its start time for the latency metric,
// the single exit through ToGrpcStatus, and the hand-off to the pool.
class UnaryCall final : public grpc::ServerUnaryReactor {
 public:
  UnaryCall(grpc::CallbackServerContext* context, const ServiceEnv* env, const char* rpc)
      : context_(context), env_(env), rpc_(rpc), start_(absl::Now()) {
    env_->calls->Enter();
  }

  // Finishes the call. Exactly once per call; the reactor may be deleted
  // (OnDone) as soon as this returns, so it is the caller's last use.
  void Complete(const absl::Status& status) {
    if (!status.ok()) {
      Logf("rpc %s failed: %s: %s (peer %s)", rpc_, absl::StatusCodeToString(status.code()),
           status.message(), context_->peer());
    }
    env_->metrics->RecordRpc(rpc_, status.code(), absl::Now() - start_);
    Finish(ToGrpcStatus(status));
  }

  // While the server drains, completes the call with UNAVAILABLE and returns
  // true (the call is finished: the handler's only move left is to return
  // it). The drain policy for new unary calls lives here, in one place.
  bool RefuseIfDraining() {
    if (!Draining(*env_)) return false;
    Complete(DrainingError());
    return true;
  }

  // Runs `work` on a worker and completes the call with its status, unless
  // the pool is full (RESOURCE_EXHAUSTED now) or the call is cancelled or
  // past its deadline by the time a worker is free.
  void CompleteOnPool(absl::AnyInvocable<absl::Status() &&> work) {
    WorkerPool& pool = *env_->pool;
    if (!pool.TrySchedule([this, work = std::move(work)]() mutable {
          absl::Status status = CallStillWanted(context_);
          if (status.ok()) status = std::move(work)();
          Complete(status);
        })) {
      Complete(BusyError(pool));
    }
  }

  void OnDone() override {
    CallCounter* calls = env_->calls;
    delete this;
    calls->Exit();
  }

 private:
  grpc::CallbackServerContext* const context_;
  const ServiceEnv* const env_;
  const char* const rpc_;
  const absl::Time start_;
};

// The reactor of one StreamInfer call, one session.
//
// Pipelined. While the client has several chunks in flight the reactor
// keeps one read outstanding (up to a window of kMaxWindow requests read
// and not yet answered, and kMaxWindowBytes of them), runs the requests one
// at a time in arrival order, and writes the responses in the same order,
// one write at a time (gRPC allows one outstanding write per stream). So a
// stream's chunks overlap with the network and with each other's
// bookkeeping instead of paying a full round trip each, and the window
// bounds the memory a client that sends without reading can pin (beyond
// it gRPC's flow control pushes back).
//
// Where a request runs. `open`, long chunks (>= the core's convolution
// threshold) and chunks whose estimated cost is above kInlineBudgetNs run on
// the worker pool. Short recurrent chunks of a session whose measured step
// cost is small run right on the gRPC callback thread that received them:
// for a ~20 us model step a hop to the pool (a wake-up, two context switches,
// another wake-up for the write) costs several times the step itself. The
// event thread is held for at most kInlineSlice per callback; what is left
// then moves to the pool. A pool job likewise yields after kPoolSlice when
// other jobs wait, so one busy stream cannot monopolise a worker.
//
// Contract, unchanged: one response per request, in order; a failed request
// ends the stream after the responses of the requests before it have been
// written; requests read after a failed one are dropped unrun; a chunk that
// runs when the stream breaks completes (the state advances) before the
// session is detached; queued chunks not yet started when the stream breaks
// are dropped unrun (the next `opened.position` says what was applied).
//
// Locking. gRPC may run OnReadDone and OnWriteDone concurrently, and a pool
// job runs alongside both, so the queues and flags live under mu_. Exactly
// one thread at a time is the processor (processing_): it alone touches the
// session, the scratch buffers and the request it took, outside mu_.
// StartRead and StartWrite are issued with mu_ held: their completions are
// never run inline (gRPC's tags for them are not inlineable), and holding
// mu_ makes "no operation after Finish" a plain check of finished_. (A
// StartWrite may run gRPC's send inline, so this holds mu_ for a syscall;
// issuing the operations after releasing mu_ instead, with a count of
// operations being started that Finish waits for, measured worse: twice
// the context switches, 10-15% fewer steps/s for one pipelined stream.)
// Finish is called without mu_, as the very last use of `this` (OnDone may
// delete the reactor at once).
class StreamCall final
    : public grpc::ServerBidiReactor<v1::StreamRequest, v1::StreamResponse> {
 public:
  StreamCall(grpc::CallbackServerContext* context, const ServiceEnv* env)
      : context_(context), env_(env), read_buffer_(std::make_unique<v1::StreamRequest>()) {
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
        // once everything read is answered; the session ends with it) or
        // the stream broke (kept, detached).
        reads_done_ = true;
        if (context_->IsCancelled()) {
          BreakLocked(absl::CancelledError("the stream was cancelled or broke"));
        } else {
          MaybeEndCleanlyLocked();
        }
      } else if (!ending_) {
        const int64_t bytes = RequestBytes(*read_buffer_);
        pending_.push_back(Pending{std::move(read_buffer_), absl::Now(), bytes});
        read_buffer_ = TakeSpareRequestLocked();
        ++window_;
        window_bytes_ += bytes;
        if (!processing_) {
          // This thread runs it. The next read starts once its response
          // is queued (Process), so that gRPC sends the response and the
          // read's flow-control update in one write.
          process_here = processing_ = true;
        } else {
          StartReadLocked();  // the processor is busy: keep the window filling
        }
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
      Unsent written = std::move(unsent_.front());
      unsent_.pop_front();
      --window_;
      window_bytes_ -= written.bytes;
      RecycleResponseLocked(std::move(written.response));
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
    // FinishNow releases the session on every path; this only guards the
    // invariant that a finished stream never holds one.
    if (session_ != nullptr) env_->sessions->Detach(session_->id(), "stream ended");
    CallCounter* calls = env_->calls;
    delete this;
    calls->Exit();
  }

 private:
  enum class Disposition { kClose, kDetach };

  // Requests read and not yet answered (written), and their bytes; past
  // either bound the reactor stops reading until responses go out. One
  // request is always admitted, however large (gRPC's own message limit
  // bounds it).
  static constexpr int kMaxWindow = 64;
  static constexpr int64_t kMaxWindowBytes = 4 << 20;
  // A chunk estimated to take longer than this goes to the worker pool.
  static constexpr int64_t kInlineBudgetNs = 250'000;
  // How long one callback may run chunks on a gRPC thread before handing
  // the rest to the pool, and how long a pool job runs before yielding.
  static constexpr absl::Duration kInlineSlice = absl::Milliseconds(1);
  static constexpr absl::Duration kPoolSlice = absl::Milliseconds(5);
  // Spare messages kept for reuse, and the largest one worth keeping.
  static constexpr size_t kMaxSpares = 8;
  static constexpr int kMaxSpareValues = 1 << 14;

  struct Pending {
    std::unique_ptr<v1::StreamRequest> request;
    absl::Time arrived;
    int64_t bytes = 0;
  };
  struct Unsent {
    std::unique_ptr<v1::StreamResponse> response;
    int64_t bytes = 0;
  };

  // What a message holds, roughly (its tensor and snapshot payloads), for
  // the window's byte bound: cheaper than ByteSizeLong, and close enough.
  static int64_t RequestBytes(const v1::StreamRequest& r) {
    return 4 * static_cast<int64_t>(r.chunk().values_size()) +
           static_cast<int64_t>(r.open().resume_from().data().size());
  }
  static int64_t ResponseBytes(const v1::StreamResponse& r) {
    return 4 * static_cast<int64_t>(r.output().values_size()) +
           static_cast<int64_t>(r.state().data().size());
  }

  void StartReadLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (reading_ || reads_done_ || ending_ || finished_) return;
    if (window_ > 0 && (window_ >= kMaxWindow || window_bytes_ >= kMaxWindowBytes)) return;
    reading_ = true;
    StartRead(read_buffer_.get());
  }

  void StartWriteLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (writing_ || unsent_.empty() || finished_) return;
    writing_ = true;
    StartWrite(unsent_.front().response.get());
  }

  // Records why and how the stream ends (the first reason wins): nothing
  // new is read or run, requests not yet run are dropped, the running
  // chunk (if any) completes, and the responses already made are still
  // written; then TakeFinishLocked lets one thread finish the call.
  void EndLocked(absl::Status status, Disposition disposition)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (ending_) return;
    ending_ = true;
    end_status_ = std::move(status);
    end_disposition_ = disposition;
    for (Pending& p : pending_) RecycleRequestLocked(std::move(p.request));
    pending_.clear();
  }

  // The stream broke (cancelled, or a write failed): ends it as EndLocked
  // does, but nothing more can be sent, so the responses not yet written
  // are dropped, and a clean end still sending its last responses becomes
  // a broken one (the client did not get every output: the session is
  // kept, detached). An error end keeps its own status.
  void BreakLocked(absl::Status status) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (finished_) return;  // a read failing after Finish: nothing to do
    if (ending_ && end_status_.ok()) {
      end_status_ = std::move(status);
      end_disposition_ = Disposition::kDetach;
    } else {
      EndLocked(std::move(status), Disposition::kDetach);
    }
    // Keep only the write gRPC still holds.
    while (unsent_.size() > (writing_ ? 1u : 0u)) {
      RecycleResponseLocked(std::move(unsent_.back().response));
      unsent_.pop_back();
    }
  }

  // The clean end: the client closed its side and every request it sent
  // has been answered.
  void MaybeEndCleanlyLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (!ending_ && reads_done_ && pending_.empty() && !processing_ && unsent_.empty()) {
      EndLocked(absl::OkStatus(), Disposition::kClose);
    }
  }

  // True (once) when the call should be finished now: it is ending, no
  // chunk runs and no write is outstanding. The caller then calls
  // FinishNow without mu_.
  bool TakeFinishLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (!ending_ || finished_ || processing_ || writing_ || !unsent_.empty()) return false;
    finished_ = true;
    return true;
  }

  std::unique_ptr<v1::StreamRequest> TakeSpareRequestLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (spare_requests_.empty()) return std::make_unique<v1::StreamRequest>();
    std::unique_ptr<v1::StreamRequest> r = std::move(spare_requests_.back());
    spare_requests_.pop_back();
    return r;
  }
  void RecycleRequestLocked(std::unique_ptr<v1::StreamRequest> r)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (r == nullptr || spare_requests_.size() >= kMaxSpares || !r->has_chunk()) return;
    // gRPC parses into it from scratch; only the object itself is reused.
    spare_requests_.push_back(std::move(r));
  }
  std::unique_ptr<v1::StreamResponse> TakeSpareResponseLocked()
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (spare_responses_.empty()) return std::make_unique<v1::StreamResponse>();
    std::unique_ptr<v1::StreamResponse> r = std::move(spare_responses_.back());
    spare_responses_.pop_back();
    return r;
  }
  void RecycleResponseLocked(std::unique_ptr<v1::StreamResponse> r)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    // Only chunk outputs of modest size: their tensor's buffer is reused
    // by the next output (HandleChunk overwrites it in place).
    if (r == nullptr || spare_responses_.size() >= kMaxSpares || !r->has_output() ||
        r->output().values_size() > kMaxSpareValues) {
      return;
    }
    r->clear_state();
    spare_responses_.push_back(std::move(r));
  }

  // Whether `request` is cheap enough to run on a gRPC thread: protocol
  // errors are; `open` is not (it may parse a snapshot or build a
  // session); a chunk is when it is short enough to run recurrently and
  // its estimated time (the session's measured cost per step, plus a
  // snapshot's bytes at ~1 ns each) is within kInlineBudgetNs. A session's
  // first chunk goes to the pool: its cost is not known yet.
  bool RunsInline(const v1::StreamRequest& request) const {
    switch (request.kind_case()) {
      case v1::StreamRequest::kOpen:
        return false;
      case v1::StreamRequest::kChunk:
        break;
      default:
        return true;
    }
    const v1::Tensor& chunk = request.chunk();
    if (session_ == nullptr || chunk.shape_size() != 3) return true;  // an error
    const int64_t steps = chunk.shape(1);
    if (steps >= ssm::Session::kConvChunkThreshold || step_cost_ns_ <= 0) return false;
    const int64_t cost =
        std::max<int64_t>(steps, 1) * step_cost_ns_ +
        (request.want_state() ? session_->state_bytes() : 0);
    return cost <= kInlineBudgetNs;
  }

  // The processor: runs the queued requests in order until none is left
  // or the stream ends. Called by the thread that set processing_; on a
  // gRPC thread (on_pool false) it runs only what RunsInline allows, for
  // at most kInlineSlice, and hands the rest to the pool.
  void Process(bool on_pool) {
    const absl::Time slice_end = absl::Now() + (on_pool ? kPoolSlice : kInlineSlice);
    bool pool_refused = false;
    mu_.Lock();
    while (!ending_ && !pending_.empty()) {
      bool to_pool = false;
      if (!on_pool) {
        if (!RunsInline(*pending_.front().request)) {
          if (pool_refused) {
            EndLocked(BusyError(*env_->pool), Disposition::kDetach);
            break;
          }
          to_pool = true;
        } else {
          // Past the slice, short chunks may go on here only if the pool
          // is full: they are short, and refusing them would be silly.
          to_pool = !pool_refused && absl::Now() >= slice_end;
        }
      } else if (!pool_refused && absl::Now() >= slice_end && env_->pool->queued() > 0) {
        to_pool = true;  // yield the worker: other jobs are waiting
      }
      if (to_pool) {
        StartReadLocked();  // keep reading while the pool runs it
        mu_.Unlock();
        // processing_ stays set: the job takes it over.
        if (env_->pool->TrySchedule([this] { Process(/*on_pool=*/true); })) return;
        pool_refused = true;
        mu_.Lock();
        continue;
      }

      Pending item = std::move(pending_.front());
      pending_.pop_front();
      std::unique_ptr<v1::StreamResponse> response = TakeSpareResponseLocked();
      mu_.Unlock();
      absl::Status status = CallStillWanted(context_);
      if (status.ok()) status = Handle(*item.request, item.arrived, response.get());
      mu_.Lock();

      window_bytes_ -= item.bytes;
      RecycleRequestLocked(std::move(item.request));
      if (!status.ok()) {
        --window_;
        RecycleResponseLocked(std::move(response));
        EndLocked(std::move(status), Disposition::kDetach);
      } else if (ending_) {
        // The stream broke while this chunk ran: its output is lost (the
        // state has advanced; the next `opened.position` says so).
        --window_;
        RecycleResponseLocked(std::move(response));
      } else {
        const int64_t bytes = ResponseBytes(*response);
        window_bytes_ += bytes;
        unsent_.push_back(Unsent{std::move(response), bytes});
        StartWriteLocked();
        StartReadLocked();
      }
    }
    processing_ = false;
    StartReadLocked();
    MaybeEndCleanlyLocked();
    const bool finish = TakeFinishLocked();
    mu_.Unlock();
    if (finish) FinishNow();
  }

  // One request in, its response filled in (or why the stream must end).
  absl::Status Handle(const v1::StreamRequest& request, absl::Time arrived,
                      v1::StreamResponse* response) {
    switch (request.kind_case()) {
      case v1::StreamRequest::kOpen:
        response->Clear();
        return HandleOpen(request.open(), response);
      case v1::StreamRequest::kChunk:
        return HandleChunk(request.chunk(), request.want_state(), arrived, response);
      default:
        return absl::InvalidArgumentError("a request must carry `open` or `chunk`");
    }
  }

  absl::Status HandleOpen(const v1::StreamOpen& open, v1::StreamResponse* response) {
    if (session_ != nullptr) {
      return absl::InvalidArgumentError(absl::StrCat(
          "`open` must be the first request and only the first; this stream already runs "
          "session ",
          session_->id()));
    }
    if (Draining(*env_)) return DrainingError();
    if (open.has_resume_from() && !open.session_id().empty()) {
      return absl::InvalidArgumentError(
          "open: set at most one of resume_from and session_id");
    }
    if (open.batch() < 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("open.batch must be >= 1 (0 means 1), got ", open.batch()));
    }
    const RequestLimits& limits = env_->limits;
    std::shared_ptr<SessionManager::Entry> entry;
    if (!open.session_id().empty()) {
      absl::StatusOr<std::shared_ptr<SessionManager::Entry>> reattached =
          env_->sessions->Reattach(open.session_id(), open.model(), open.batch());
      if (!reattached.ok()) return reattached.status();
      entry = *std::move(reattached);
    } else if (open.has_resume_from()) {
      const std::string& name =
          open.model().empty() ? open.resume_from().model() : open.model();
      if (name.empty()) {
        return absl::InvalidArgumentError("open.model must be set (or open.resume_from.model)");
      }
      // The version is the snapshot's: the newest whose weights it matches.
      absl::StatusOr<ModelCatalog::Resumed> resumed =
          env_->catalog->ResumeSession(name, 0, open.resume_from().data());
      if (!resumed.ok()) return resumed.status();
      const int batch = resumed->session.batch();
      if (absl::Status s = CheckBatchLimit(batch, "open.resume_from's batch", limits); !s.ok()) {
        return s;
      }
      if (open.batch() != 0 && open.batch() != batch) {
        return absl::InvalidArgumentError(absl::StrCat(
            "open.batch = ", open.batch(), " but the snapshot has batch ", batch));
      }
      absl::StatusOr<std::shared_ptr<SessionManager::Entry>> added = env_->sessions->Add(
          name, resumed->served.version, std::move(resumed->session), /*attached=*/true,
          SessionManager::Origin::kResumed);
      if (!added.ok()) return added.status();
      entry = *std::move(added);
    } else {
      if (open.model().empty()) return absl::InvalidArgumentError("open.model must be set");
      absl::StatusOr<ServedModel> served = env_->catalog->Find(open.model(), open.version());
      if (!served.ok()) return served.status();
      const int batch = open.batch() == 0 ? 1 : open.batch();
      if (absl::Status s = CheckBatchLimit(batch, "open.batch", limits); !s.ok()) return s;
      absl::StatusOr<ssm::Session> session = ssm::Session::Create(served->model, batch);
      if (!session.ok()) return session.status();
      absl::StatusOr<std::shared_ptr<SessionManager::Entry>> added =
          env_->sessions->Add(served->name, served->version, *std::move(session),
                              /*attached=*/true, SessionManager::Origin::kNew);
      if (!added.ok()) return added.status();
      entry = *std::move(added);
    }
    session_ = std::move(entry);
    handles_ = env_->metrics->ForModel(session_->model_name());

    v1::StreamOpened* opened = response->mutable_opened();
    opened->set_session_id(session_->id());
    opened->set_model(session_->model_name());
    opened->set_version(session_->version());
    opened->set_batch(session_->batch());
    opened->set_d_input(session_->d_input());
    opened->set_d_output(session_->d_output());
    const int64_t position = session_->position();
    opened->set_position(position);
    response->set_position(position);
    return absl::OkStatus();
  }

  absl::Status HandleChunk(const v1::Tensor& chunk, bool want_state, absl::Time arrived,
                           v1::StreamResponse* response) {
    if (session_ == nullptr) {
      return absl::InvalidArgumentError(
          "the first request of a stream must be `open`; got a chunk");
    }
    const SessionManager::Entry& entry = *session_;
    absl::StatusOr<SequenceShape> shape =
        CheckSequenceShape(chunk, "chunk", entry.d_input(), entry.model_name());
    if (!shape.ok()) return shape.status();
    if (shape->batch != entry.batch()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "chunk.shape[0] = ", shape->batch, " but the session's batch is ", entry.batch()));
    }
    const RequestLimits& limits = env_->limits;
    if (shape->steps > limits.max_chunk_steps) {
      return absl::ResourceExhaustedError(absl::StrCat("chunk.shape[1] = ", shape->steps,
                                                       " steps exceeds --max_chunk_steps=",
                                                       limits.max_chunk_steps));
    }
    const SequenceShape out_shape{shape->batch, shape->steps, entry.d_output()};
    if (absl::Status s = CheckResponseBytes(
            out_shape.size() * 4 + (want_state ? entry.state_bytes() : 0), "the chunk's output",
            limits);
        !s.ok()) {
      return s;
    }
    if (absl::Status s = ReadFiniteValues(chunk, "chunk", &x_); !s.ok()) return s;
    y_.resize(out_shape.size());
    SessionSnapshot snapshot;
    const absl::Time run_start = absl::Now();
    absl::StatusOr<int64_t> position = session_->Run(x_, static_cast<int>(shape->steps),
                                                     absl::MakeSpan(y_),
                                                     want_state ? &snapshot : nullptr);
    if (!position.ok()) return position.status();
    if (shape->steps < ssm::Session::kConvChunkThreshold && !want_state) {
      NoteStepCost(absl::ToInt64Nanoseconds(absl::Now() - run_start) / shape->steps);
    }
    // The previous output's tensor (a reused response) is overwritten in
    // place, keeping its buffer; any other kind is replaced.
    WriteSequenceTensor(y_, out_shape, response->mutable_output());
    response->set_position(*position);
    if (want_state) {
      SnapshotToProto(snapshot, response->mutable_state());
    } else {
      response->clear_state();
    }
    handles_.steps->Increment(static_cast<double>(shape->steps));
    handles_.chunk_latency->Observe(absl::ToDoubleSeconds(absl::Now() - arrived));
    return absl::OkStatus();
  }

  // The session's cost of one recurrent step, for RunsInline: quick to
  // follow a faster measurement, slow to follow a slower one, so a step
  // that was merely preempted does not send the stream to the pool for long.
  void NoteStepCost(int64_t ns) {
    if (step_cost_ns_ <= 0 || ns < step_cost_ns_) {
      step_cost_ns_ = std::max<int64_t>(ns, 1);
    } else {
      step_cost_ns_ += (ns - step_cost_ns_) / 8;
    }
  }

  // Releases the session (closed after a clean end, detached otherwise) and
  // finishes the call. Called once, by the thread TakeFinishLocked chose,
  // without mu_: OnDone may follow at once and delete this.
  void FinishNow() {
    const absl::Status status = end_status_;
    std::string session_id = "none";
    if (session_ != nullptr) {
      session_id = session_->id();
      if (end_disposition_ == Disposition::kClose) {
        env_->sessions->Close(session_id);
      } else {
        env_->sessions->Detach(session_id,
                               status.ok() ? std::string("stream ended")
                                           : absl::StrCat(absl::StatusCodeToString(status.code()),
                                                          ": ", status.message()));
      }
      session_.reset();
    }
    if (!status.ok()) {
      Logf("rpc StreamInfer failed: %s: %s (session %s, peer %s)",
           absl::StatusCodeToString(status.code()), status.message(), session_id,
           context_->peer());
    }
    env_->metrics->RecordRpc("StreamInfer", status.code(), absl::InfiniteDuration());
    Finish(ToGrpcStatus(status));
  }

  grpc::CallbackServerContext* const context_;
  const ServiceEnv* const env_;

  absl::Mutex mu_;
  // The target of the outstanding read (reading_); replaced when a read
  // completes.
  std::unique_ptr<v1::StreamRequest> read_buffer_ ABSL_GUARDED_BY(mu_);
  std::deque<Pending> pending_ ABSL_GUARDED_BY(mu_);  // read, not yet run
  std::deque<Unsent> unsent_ ABSL_GUARDED_BY(mu_);    // front: being written if writing_
  int window_ ABSL_GUARDED_BY(mu_) = 0;               // read and not yet answered
  int64_t window_bytes_ ABSL_GUARDED_BY(mu_) = 0;
  bool reading_ ABSL_GUARDED_BY(mu_) = false;
  bool writing_ ABSL_GUARDED_BY(mu_) = false;
  bool processing_ ABSL_GUARDED_BY(mu_) = false;
  bool reads_done_ ABSL_GUARDED_BY(mu_) = false;
  bool ending_ ABSL_GUARDED_BY(mu_) = false;
  bool finished_ ABSL_GUARDED_BY(mu_) = false;
  // Set with ending_, read by FinishNow.
  absl::Status end_status_;
  Disposition end_disposition_ = Disposition::kDetach;
  std::vector<std::unique_ptr<v1::StreamRequest>> spare_requests_ ABSL_GUARDED_BY(mu_);
  std::vector<std::unique_ptr<v1::StreamResponse>> spare_responses_ ABSL_GUARDED_BY(mu_);

  // The processor's (see Process), and FinishNow's once no chunk runs.
  std::shared_ptr<SessionManager::Entry> session_;
  Metrics::StreamHandles handles_;
  int64_t step_cost_ns_ = 0;  // 0: not measured yet
  // Reused across chunks: a stream of small chunks allocates no buffers.
  std::vector<double> x_;
  std::vector<double> y_;
};

}  // namespace

void CallCounter::Enter() {
  absl::MutexLock lock(&mu_);
  ++running_;
}

void CallCounter::Exit() {
  absl::MutexLock lock(&mu_);
  --running_;
}

int CallCounter::running() const {
  absl::MutexLock lock(&mu_);
  return running_;
}

bool CallCounter::WaitForIdle(absl::Time deadline) {
  absl::MutexLock lock(&mu_);
  auto idle = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return running_ == 0; };
  return mu_.AwaitWithDeadline(absl::Condition(&idle), deadline);
}

grpc::ServerUnaryReactor* InferenceService::Infer(grpc::CallbackServerContext* context,
                                                  const v1::InferRequest* request,
                                                  v1::InferResponse* response) {
  auto* call = new UnaryCall(context, env_, "Infer");
  if (call->RefuseIfDraining()) return call;
  absl::StatusOr<ServedModel> served = env_->catalog->Find(request->model(), request->version());
  if (!served.ok()) {
    call->Complete(served.status());
    return call;
  }
  const ssm::Model& model = *served->model;
  absl::StatusOr<SequenceShape> shape =
      CheckSequenceShape(request->input(), "input", model.d_input(), served->name);
  if (!shape.ok()) {
    call->Complete(shape.status());
    return call;
  }
  const RequestLimits& limits = env_->limits;
  absl::Status status = CheckBatchLimit(shape->batch, "input.shape[0]", limits);
  if (status.ok() && shape->steps > limits.max_unary_length) {
    status = absl::ResourceExhaustedError(absl::StrCat("input.shape[1] = ", shape->steps,
                                                       " steps exceeds --max_unary_length=",
                                                       limits.max_unary_length));
  }
  if (status.ok() && shape->steps > model.max_length()) {
    status = absl::InvalidArgumentError(absl::StrCat(
        "input.shape[1] = ", shape->steps, " steps exceeds model '", served->name,
        "''s max_length ", model.max_length(), " (StreamInfer takes sequences of any length)"));
  }
  const SequenceShape out_shape{shape->batch, shape->steps, model.d_output()};
  if (status.ok()) {
    status = CheckResponseBytes(
        out_shape.size() * 4 + (request->return_state() ? served->state_bytes * shape->batch : 0),
        "the output", limits);
  }
  if (status.ok() && request->return_state() && !model.streamable()) {
    status = absl::FailedPreconditionError(absl::StrCat(
        "return_state: model '", served->name, "' has no state to continue from: ",
        model.not_streamable_reason()));
  }
  if (!status.ok()) {
    call->Complete(status);
    return call;
  }
  call->CompleteOnPool([context, served = *std::move(served), shape = *shape, out_shape,
                        request, response]() -> absl::Status {
    std::vector<double> x;
    if (absl::Status s = ReadFiniteValues(request->input(), "input", &x); !s.ok()) return s;
    std::vector<double> y(out_shape.size());
    const int batch = static_cast<int>(shape.batch);
    const int steps = static_cast<int>(shape.steps);
    if (request->return_state()) {
      // The session's chunked convolution gives Forward's outputs (to
      // rounding) and, unlike Forward, the state after the last step. It
      // runs in slices of time of at most kMaxRowsPerPass rows; the call
      // stops between two if it is no longer wanted.
      absl::StatusOr<ssm::Session> session = ssm::Session::Create(served.model, batch);
      if (!session.ok()) return session.status();
      if (absl::Status s = session->Run(x, steps, absl::MakeSpan(y),
                                        [&](int done) {
                                          return CallStopped(context, done, steps, "steps");
                                        });
          !s.ok()) {
        return s;
      }
      v1::StateSnapshot* state = response->mutable_state();
      state->set_data(session->ExportState());
      state->set_model(served.name);
      state->set_version(served.version);
      state->set_fingerprint(served.model->fingerprint());
      state->set_position(session->position());
      state->set_batch(batch);
    } else {
      // Sequences are independent: pieces of whole sequences.
      const int d_in = served.model->d_input(), d_out = served.model->d_output();
      const int rows = static_cast<int>(std::max<int64_t>(1, kInferPieceRows / steps));
      for (int b0 = 0; b0 < batch; b0 += rows) {
        if (absl::Status s = CallStopped(context, b0, batch, "sequences"); !s.ok()) return s;
        const int n = std::min(rows, batch - b0);
        const size_t in_at = static_cast<size_t>(b0) * steps * d_in;
        const size_t out_at = static_cast<size_t>(b0) * steps * d_out;
        if (absl::Status s = served.model->Forward(
                absl::MakeConstSpan(&x[in_at], static_cast<size_t>(n) * steps * d_in), n, steps,
                absl::MakeSpan(&y[out_at], static_cast<size_t>(n) * steps * d_out));
            !s.ok()) {
          return s;
        }
      }
    }
    WriteSequenceTensor(y, out_shape, response->mutable_output());
    response->set_model(served.name);
    response->set_version(served.version);
    return absl::OkStatus();
  });
  return call;
}

grpc::ServerBidiReactor<v1::StreamRequest, v1::StreamResponse>* InferenceService::StreamInfer(
    grpc::CallbackServerContext* context) {
  return new StreamCall(context, env_);
}

grpc::ServerUnaryReactor* InferenceService::ExportState(grpc::CallbackServerContext* context,
                                                        const v1::ExportStateRequest* request,
                                                        v1::ExportStateResponse* response) {
  auto* call = new UnaryCall(context, env_, "ExportState");
  // Allowed while draining: that is exactly when a client moves its session
  // to another replica.
  if (request->session_id().empty()) {
    call->Complete(absl::InvalidArgumentError("session_id must be set"));
    return call;
  }
  absl::StatusOr<std::shared_ptr<SessionManager::Entry>> entry =
      env_->sessions->Find(request->session_id());
  if (!entry.ok()) {
    call->Complete(entry.status());
    return call;
  }
  // On a worker: the session's lock may be held by a running chunk.
  call->CompleteOnPool([entry = *std::move(entry), response]() -> absl::Status {
    SnapshotToProto(entry->Export(), response->mutable_state());
    return absl::OkStatus();
  });
  return call;
}

grpc::ServerUnaryReactor* InferenceService::ImportState(grpc::CallbackServerContext* context,
                                                        const v1::ImportStateRequest* request,
                                                        v1::ImportStateResponse* response) {
  auto* call = new UnaryCall(context, env_, "ImportState");
  if (call->RefuseIfDraining()) return call;
  if (request->state().data().empty()) {
    call->Complete(absl::InvalidArgumentError("state.data must be set"));
    return call;
  }
  const std::string& name = request->model().empty() ? request->state().model() : request->model();
  if (name.empty()) {
    call->Complete(absl::InvalidArgumentError("model must be set (or state.model)"));
    return call;
  }
  call->CompleteOnPool([env = env_, name, request, response]() -> absl::Status {
    absl::StatusOr<ModelCatalog::Resumed> resumed =
        env->catalog->ResumeSession(name, request->version(), request->state().data());
    if (!resumed.ok()) return resumed.status();
    if (absl::Status s = CheckBatchLimit(resumed->session.batch(), "the snapshot's batch",
                                         env->limits);
        !s.ok()) {
      return s;
    }
    const int64_t position = resumed->session.position();
    absl::StatusOr<std::shared_ptr<SessionManager::Entry>> entry =
        env->sessions->Add(name, resumed->served.version, std::move(resumed->session),
                           /*attached=*/false, SessionManager::Origin::kImported);
    if (!entry.ok()) return entry.status();
    response->set_session_id((*entry)->id());
    response->set_position(position);
    return absl::OkStatus();
  });
  return call;
}

grpc::ServerUnaryReactor* InferenceService::ListModels(grpc::CallbackServerContext* context,
                                                       const v1::ListModelsRequest* /*request*/,
                                                       v1::ListModelsResponse* response) {
  auto* call = new UnaryCall(context, env_, "ListModels");
  if (call->RefuseIfDraining()) return call;
  // A table lookup: cheaper than a hand-off to the pool.
  for (const ModelListing& listing : env_->catalog->List()) {
    v1::ModelStatus* status = response->add_models();
    status->set_name(listing.name);
    for (int64_t v : listing.versions) status->add_versions(v);
    status->set_error(listing.error);
  }
  call->Complete(absl::OkStatus());
  return call;
}

grpc::ServerUnaryReactor* InferenceService::GetModel(grpc::CallbackServerContext* context,
                                                     const v1::GetModelRequest* request,
                                                     v1::GetModelResponse* response) {
  auto* call = new UnaryCall(context, env_, "GetModel");
  if (call->RefuseIfDraining()) return call;
  absl::StatusOr<ServedModel> served = env_->catalog->Find(request->model(), request->version());
  if (served.ok()) {
    const ssm::Model& model = *served->model;
    *response->mutable_config() = ModelConfigFromSpec(model.spec());
    response->set_version(served->version);
    response->set_fingerprint(model.fingerprint());
    response->set_streamable(model.streamable());
    response->set_memory_bytes(model.memory_bytes());
    response->set_state_bytes(served->state_bytes);
  }
  call->Complete(served.status());
  return call;
}

grpc::ServerUnaryReactor* MathService::BuildHippo(grpc::CallbackServerContext* context,
                                                  const v1::BuildHippoRequest* request,
                                                  v1::BuildHippoResponse* response) {
  auto* call = new UnaryCall(context, env_, "BuildHippo");
  if (call->RefuseIfDraining()) return call;
  call->CompleteOnPool([request, response]() -> absl::Status {
    absl::StatusOr<v1::BuildHippoResponse> result = ::ssm::server::BuildHippo(*request);
    if (!result.ok()) return result.status();
    response->Swap(&*result);
    return absl::OkStatus();
  });
  return call;
}

grpc::ServerUnaryReactor* MathService::ComputeKernel(grpc::CallbackServerContext* context,
                                                     const v1::ComputeKernelRequest* request,
                                                     v1::ComputeKernelResponse* response) {
  auto* call = new UnaryCall(context, env_, "ComputeKernel");
  if (call->RefuseIfDraining()) return call;
  MathLimits limits;
  limits.max_length = env_->limits.max_unary_length;
  limits.max_message_bytes = env_->limits.max_message_bytes;
  call->CompleteOnPool([request, response, limits]() -> absl::Status {
    absl::StatusOr<v1::ComputeKernelResponse> result =
        ::ssm::server::ComputeKernel(*request, limits);
    if (!result.ok()) return result.status();
    response->Swap(&*result);
    return absl::OkStatus();
  });
  return call;
}

}  // namespace ssm::server
