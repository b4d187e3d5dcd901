// Limits and load: a chunk over --max_chunk_steps, a deadline that stops
// a long call, a full pool saying "server busy", and short chunks that go
// on while the pool is full.

#include <chrono>
#include <memory>
#include <utility>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "grpc_server_fixture.h"

namespace ssm::server::testing {
namespace {

using ::testing::HasSubstr;

// One worker and no queue: a call that finds the worker busy is refused at
// once, so a test can tell whether the worker is free.
void OneWorkerNoQueue(ServerOptions& o) {
  o.threads = 1;
  o.max_queue = 0;
}

TEST_F(GrpcServerTest, ChunkLimits) {
  OpenedStream s = Open(OpenModel("legt-delay"));
  v1::StreamResponse ignored;
  SendChunk(s.stream.get(), MakeInput(1, 4097), &ignored);
  const grpc::Status status = FinishAfterError(s.stream.get());
  EXPECT_EQ(status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_THAT(status.error_message(), HasSubstr("--max_chunk_steps=4096"));
}

// A passed deadline stops a long Infer between pieces: the lone worker is
// free again long before the whole call would have ended (~3 s of work).
TEST_F(GrpcServerTest, DeadlineStopsALongInferBetweenPieces) {
  StartServerWith([](ServerOptions& o) {
    OneWorkerNoQueue(o);
    o.limits.max_batch = 64;
    o.limits.max_message_bytes = 8 << 20;
  });
  WaitForAnIdleWorker();
  const v1::InferRequest small = InferRequestFor("legt-delay", MakeInput(1, 5));
  v1::InferResponse response;
  // 32 pieces of 2 sequences.
  const v1::InferRequest big = InferRequestFor("s4-demo", MakeInput(64, 12000));
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(150));
  const grpc::Status late = inference_->Infer(&context, big, &response);
  EXPECT_EQ(late.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED) << late.error_message();
  const absl::Time expired = absl::Now();
  // With --max_queue=0 a small call is refused (RESOURCE_EXHAUSTED) while
  // the worker is busy; it must be served within a piece or two.
  grpc::Status status;
  do {
    status = Infer(small, &response);
  } while (status.error_code() == grpc::StatusCode::RESOURCE_EXHAUSTED &&
           absl::Now() - expired < absl::Seconds(10));
  EXPECT_TRUE(status.ok()) << status.error_message();
  EXPECT_LT(absl::Now() - expired, absl::Seconds(1.5))
      << "the worker went on with the expired call";
}

TEST_F(GrpcServerTest, BusyServerSaysSo) {
  StartServerWith(OneWorkerNoQueue);
  WaitForAnIdleWorker();
  // Many concurrent long calls against one worker and no queue: some are
  // refused with RESOURCE_EXHAUSTED "server busy", none fails otherwise.
  constexpr int kCalls = 8;
  const v1::InferRequest request = InferRequestFor("s4-demo", MakeInput(8, 4000));
  std::vector<grpc::ClientContext> contexts(kCalls);
  std::vector<v1::InferResponse> responses(kCalls);
  std::vector<grpc::Status> statuses(kCalls);
  absl::Mutex mu;
  int done = 0;
  for (int i = 0; i < kCalls; ++i) {
    SetDeadline(&contexts[i]);
    inference_->async()->Infer(&contexts[i], &request, &responses[i], [&, i](grpc::Status s) {
      absl::MutexLock lock(&mu);
      statuses[i] = std::move(s);
      ++done;
    });
  }
  {
    absl::MutexLock lock(&mu);
    mu.Await(absl::Condition(+[](int* d) { return *d == kCalls; }, &done));
  }
  int ok = 0, busy = 0;
  for (const grpc::Status& s : statuses) {
    if (s.ok()) ++ok;
    if (s.error_code() == grpc::StatusCode::RESOURCE_EXHAUSTED) {
      ++busy;
      EXPECT_THAT(s.error_message(), HasSubstr("server busy"));
    }
  }
  EXPECT_GE(ok, 1);
  EXPECT_GE(busy, 1);
  EXPECT_EQ(ok + busy, kCalls);
}

// Short chunks run on gRPC's threads, so a stream of single steps goes on
// while every worker is busy; a chunk that needs the pool then gets the
// documented "server busy".
TEST_F(GrpcServerTest, ShortChunksDoNotWaitForABusyPool) {
  StartServerWith(OneWorkerNoQueue);
  const v1::Tensor input = MakeInput(1, 200);
  // The lone worker may still be starting, or just finishing the job before
  // (a job is taken only by an idle one): retry the open and the first
  // chunks, which go to the worker, until they go through.
  OpenedStream s;
  grpc::Status status;
  v1::StreamResponse response;
  // The first chunks measure the session's step cost (the first one on the
  // worker; the estimate follows the fastest of them).
  constexpr int kWarm = 10;
  bool warm = false;
  const absl::Time open_deadline = absl::Now() + absl::Seconds(20);
  while (!warm && absl::Now() < open_deadline) {
    s = Open(OpenModel("s4-demo"), &status);
    if (!status.ok()) continue;
    warm = true;
    for (int t = 0; t < kWarm && warm; ++t) {
      warm = SendChunk(s.stream.get(), Slice(input, t, t + 1), &response);
    }
    if (!warm) Cancel(s);
  }
  ASSERT_TRUE(warm) << status.error_message();

  // Occupy the worker with a long Infer. Nothing else runs: once a small
  // call has gone through, the worker is idle; then a small call refused
  // while the long one is still going proves the long one holds it.
  const v1::InferRequest probe = InferRequestFor("legt-delay", MakeInput(1, 5));
  v1::InferResponse probe_response;
  // s4-demo's max_length is 16384.
  const v1::InferRequest long_request = InferRequestFor("s4-demo", MakeInput(8, 16000));
  struct LongCall {
    grpc::ClientContext context;
    v1::InferResponse response;
    absl::Notification done;
  };
  std::unique_ptr<LongCall> long_call;
  bool holds_worker = false;
  const absl::Time busy_deadline = absl::Now() + absl::Seconds(20);
  while (!holds_worker && absl::Now() < busy_deadline) {
    while (!Infer(probe, &probe_response).ok() && absl::Now() < busy_deadline) {
    }
    long_call = std::make_unique<LongCall>();
    SetDeadline(&long_call->context);
    inference_->async()->Infer(&long_call->context, &long_request, &long_call->response,
                               [c = long_call.get()](grpc::Status) { c->done.Notify(); });
    while (!long_call->done.HasBeenNotified()) {
      if (Infer(probe, &probe_response).error_code() == grpc::StatusCode::RESOURCE_EXHAUSTED) {
        holds_worker = !long_call->done.HasBeenNotified();
        break;
      }
    }
    if (!holds_worker) long_call->done.WaitForNotification();
  }
  ASSERT_TRUE(holds_worker);

  // Single steps go on meanwhile, on gRPC's threads.
  for (int t = kWarm; t < kWarm + 5; ++t) {
    ASSERT_TRUE(SendChunk(s.stream.get(), Slice(input, t, t + 1), &response)) << t;
    EXPECT_EQ(response.position(), t + 1);
  }
  // A long chunk needs the worker.
  SendChunk(s.stream.get(), Slice(input, kWarm + 5, kWarm + 105), &response);
  s.stream->WritesDone();
  status = FinishAfterError(s.stream.get());
  if (!long_call->done.HasBeenNotified()) {
    // The worker was busy throughout: the long chunk was refused.
    EXPECT_EQ(status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
    EXPECT_THAT(status.error_message(), HasSubstr("server busy"));
    ASSERT_TRUE(WaitForDetached(1));
  }
  long_call->done.WaitForNotification();
}

// A Math call whose deadline passes stops inside its work (the stop check
// reaches the core's loops) and frees Math's worker: a NAIVE kernel of
// seconds, admitted by a raised --max_math_work, with a 200 ms deadline.
TEST_F(GrpcServerTest, MathWorkStopsAtItsDeadline) {
  StartServerWith([](ServerOptions& o) {
    o.threads = 2;
    o.math_threads = 1;
    o.limits.max_math_work = int64_t{1} << 50;
  });
  v1::ComputeKernelRequest slow;
  slow.set_length(4096);
  slow.mutable_init()->set_kind(v1::SsmInit::KIND_S4);
  slow.mutable_init()->set_measure(v1::HIPPO_MEASURE_LEGS);
  slow.mutable_init()->set_n(512);
  slow.mutable_init()->set_channels(4);
  slow.set_method(v1::KERNEL_METHOD_NAIVE);
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(200));
  v1::ComputeKernelResponse response;
  const absl::Time start = absl::Now();
  EXPECT_EQ(math_->ComputeKernel(&context, slow, &response).error_code(),
            grpc::StatusCode::DEADLINE_EXCEEDED);
  // The worker is free again well before the seconds the kernel needs: a
  // small Math call gets through at once after.
  v1::ComputeKernelRequest small = slow;
  small.set_length(16);
  small.mutable_init()->set_n(8);
  small.mutable_init()->set_channels(1);
  const absl::Time deadline = absl::Now() + absl::Seconds(30);
  grpc::Status status;
  do {
    grpc::ClientContext quick;
    SetDeadline(&quick);
    status = math_->ComputeKernel(&quick, small, &response);
  } while (status.error_code() == grpc::StatusCode::RESOURCE_EXHAUSTED && absl::Now() < deadline);
  EXPECT_TRUE(status.ok()) << status.error_message();
  const absl::Duration freed_after = absl::Now() - start;
  std::printf("a stopped NAIVE kernel freed Math's worker after %s\n",
              absl::FormatDuration(freed_after).c_str());
  EXPECT_LT(freed_after, absl::Seconds(3));
}

}  // namespace
}  // namespace ssm::server::testing
