// StreamInfer: chunks equal one Infer however they are cut, the protocol
// errors that end a stream (and keep its session), pipelined chunks (order,
// flow control, an error or a cancel in the middle).

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <memory>
#include <vector>

#include "grpc_server_fixture.h"

namespace ssm::server::testing {
namespace {

using ::testing::HasSubstr;

TEST_F(GrpcServerTest, StreamedChunksEqualOneInfer) {
  const v1::Tensor input = MakeInput(2, 400);
  v1::InferResponse whole;
  ASSERT_TRUE(Infer(InferRequestFor("s4-demo", input), &whole).ok());

  OpenedStream s = Open(OpenModel("s4-demo", 2));
  EXPECT_EQ(s.opened.session_id().size(), 32u);
  EXPECT_EQ(s.opened.model(), "s4-demo");
  EXPECT_EQ(s.opened.version(), 1);
  EXPECT_EQ(s.opened.batch(), 2);
  EXPECT_EQ(s.opened.d_input(), 1);
  EXPECT_EQ(s.opened.d_output(), 1);
  EXPECT_EQ(s.opened.position(), 0);
  EXPECT_EQ(server_->sessions().GetStats().attached, 1);

  // Steps and short chunks run recurrently, long ones as convolutions.
  const int cuts[] = {0, 1, 2, 9, 73, 200, 201, 400};
  for (int i = 0; i + 1 < 8; ++i) {
    v1::StreamResponse response;
    ASSERT_TRUE(SendChunk(s.stream.get(), Slice(input, cuts[i], cuts[i + 1]), &response));
    EXPECT_EQ(response.position(), cuts[i + 1]);
    ExpectClose(response.output(), Slice(whole.output(), cuts[i], cuts[i + 1]));
  }
  // A clean end closes the session.
  ASSERT_TRUE(Close(s).ok());
  v1::ExportStateResponse exported;
  EXPECT_EQ(ExportState(s.opened.session_id(), &exported).error_code(),
            grpc::StatusCode::NOT_FOUND);
  EXPECT_EQ(server_->sessions().GetStats().attached, 0);
  EXPECT_EQ(server_->sessions().GetStats().detached, 0);
}

TEST_F(GrpcServerTest, GarbageEndsTheStreamAndKeepsTheSession) {
  // A chunk before open.
  {
    grpc::ClientContext context;
    SetDeadline(&context);
    std::unique_ptr<Stream> stream = inference_->StreamInfer(&context);
    ASSERT_TRUE(stream->Write(ChunkRequest(MakeInput(1, 3))));
    const grpc::Status status = FinishAfterError(stream.get());
    EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
    EXPECT_THAT(status.error_message(), HasSubstr("must be `open`"));
  }
  // An empty request.
  {
    grpc::ClientContext context;
    SetDeadline(&context);
    std::unique_ptr<Stream> stream = inference_->StreamInfer(&context);
    ASSERT_TRUE(stream->Write(v1::StreamRequest()));
    EXPECT_EQ(FinishAfterError(stream.get()).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  }
  // Open errors.
  grpc::Status status;
  Open(OpenModel("no-such-model"), &status);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::NOT_FOUND);
  Open(OpenModel("legt-delay", 9), &status);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_THAT(status.error_message(), HasSubstr("--max_batch=8"));
  v1::StreamOpen both = OpenModel("legt-delay");
  both.set_session_id("abc");
  both.mutable_resume_from()->set_data("x");
  Open(both, &status);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  v1::StreamOpen unknown;
  unknown.set_session_id("00000000000000000000000000000000");
  Open(unknown, &status);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::NOT_FOUND);

  // A good session, then a bad chunk: the stream ends, the session stays
  // detached with its state as it was.
  const v1::Tensor input = MakeInput(1, 20);
  OpenedStream s = Open(OpenModel("legt-delay"));
  v1::StreamResponse ok;
  ASSERT_TRUE(SendChunk(s.stream.get(), Slice(input, 0, 10), &ok));
  v1::Tensor bad = Slice(input, 10, 20);
  bad.set_values(4, std::numeric_limits<float>::infinity());
  v1::StreamResponse ignored;
  SendChunk(s.stream.get(), bad, &ignored);
  status = FinishAfterError(s.stream.get());
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(status.error_message(), "chunk.values[4] is +Inf");
  ASSERT_TRUE(WaitForDetached(1));

  const v1::StreamOpen reattach = Reattach(s.opened.session_id());
  OpenedStream again = Open(reattach);
  EXPECT_EQ(again.opened.position(), 10);
  // A chunk of the wrong batch, then a second open: each ends its stream.
  SendChunk(again.stream.get(), MakeInput(2, 3), &ignored);
  status = FinishAfterError(again.stream.get());
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(status.error_message(), HasSubstr("chunk.shape[0] = 2"));
  ASSERT_TRUE(WaitForDetached(1));

  OpenedStream third = Open(reattach);
  v1::StreamRequest second_open;
  *second_open.mutable_open() = OpenModel("legt-delay");
  ASSERT_TRUE(third.stream->Write(second_open));
  status = FinishAfterError(third.stream.get());
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(status.error_message(), HasSubstr("only the first"));
  ASSERT_TRUE(WaitForDetached(1));

  // Through all that the state never moved.
  v1::ExportStateResponse exported;
  ASSERT_TRUE(ExportState(s.opened.session_id(), &exported).ok());
  EXPECT_EQ(exported.state().position(), 10);
}

// Pipelining: a client may send any number of chunks before reading. The
// responses come back one per chunk, in order, equal to one Infer, whether
// a chunk ran on a gRPC thread (short ones, once the session's step cost
// is known) or on the pool (open, the first chunk, long ones, snapshots).
TEST_F(GrpcServerTest, PipelinedChunksKeepTheirOrderAndOutputs) {
  const v1::Tensor input = MakeInput(1, 700);
  v1::InferResponse whole;
  ASSERT_TRUE(Infer(InferRequestFor("s4-demo", input), &whole).ok());

  OpenedStream s = Open(OpenModel("s4-demo"));
  // 1-step chunks, short ones, long (convolution) ones, in any mix; some
  // ask for the state.
  std::vector<int> cuts = {0};
  for (int i = 0; i < 150; ++i) cuts.push_back(cuts.back() + 1);
  for (int len : {5, 64, 1, 1, 130, 2, 1, 63, 200, 1, 1, 1}) cuts.push_back(cuts.back() + len);
  while (cuts.back() < 700) cuts.push_back(cuts.back() + 1);
  ASSERT_EQ(cuts.back(), 700);
  const int chunks = static_cast<int>(cuts.size()) - 1;
  for (int i = 0; i < chunks; ++i) {
    ASSERT_TRUE(s.stream->Write(ChunkRequest(Slice(input, cuts[i], cuts[i + 1]), i % 37 == 5)))
        << i;
  }
  s.stream->WritesDone();
  for (int i = 0; i < chunks; ++i) {
    v1::StreamResponse response;
    ASSERT_TRUE(s.stream->Read(&response)) << i;
    ASSERT_TRUE(response.has_output()) << i;
    EXPECT_EQ(response.position(), cuts[i + 1]) << i;
    EXPECT_EQ(response.has_state(), i % 37 == 5) << i;
    if (response.has_state()) {
      EXPECT_EQ(response.state().position(), cuts[i + 1]);
    }
    ExpectClose(response.output(), Slice(whole.output(), cuts[i], cuts[i + 1]));
  }
  v1::StreamResponse extra;
  EXPECT_FALSE(s.stream->Read(&extra));
  EXPECT_TRUE(s.stream->Finish().ok());
  EXPECT_EQ(server_->sessions().GetStats().attached, 0);
  EXPECT_EQ(server_->sessions().GetStats().detached, 0);  // closed
  EXPECT_THAT(server_->metrics().Text(),
              HasSubstr("ssm_stream_steps_total{model=\"s4-demo\"} 700"));
}

// A client that sends far more chunks than the server reads ahead (its
// window) and only then reads: the server stops reading when its window is
// full and resumes as responses go out; nothing is lost or reordered.
TEST_F(GrpcServerTest, ManyChunksSentBeforeAnyIsRead) {
  constexpr int kChunks = 1000;
  const v1::Tensor input = MakeInput(1, kChunks);
  OpenedStream s = Open(OpenModel("legt-delay"));
  for (int i = 0; i < kChunks; ++i) {
    ASSERT_TRUE(s.stream->Write(ChunkRequest(Slice(input, i, i + 1)))) << i;
  }
  s.stream->WritesDone();
  v1::InferResponse whole;
  ASSERT_TRUE(Infer(InferRequestFor("legt-delay", input), &whole).ok());
  for (int i = 0; i < kChunks; ++i) {
    v1::StreamResponse response;
    ASSERT_TRUE(s.stream->Read(&response)) << i;
    ASSERT_EQ(response.position(), i + 1);
    ExpectClose(response.output(), Slice(whole.output(), i, i + 1));
  }
  EXPECT_TRUE(s.stream->Finish().ok());
}

// A bad chunk in the middle of a pipeline: the chunks before it are
// answered, the ones after it are dropped unrun, the stream ends with the
// bad chunk's error and the session is kept, detached, after the good ones.
TEST_F(GrpcServerTest, PipelinedErrorAnswersTheChunksBeforeIt) {
  const v1::Tensor input = MakeInput(1, 40);
  OpenedStream s = Open(OpenModel("legt-delay"));
  for (int i = 0; i < 10; ++i) {
    v1::StreamRequest chunk = ChunkRequest(Slice(input, 2 * i, 2 * i + 2));
    if (i == 6) chunk.mutable_chunk()->set_values(1, std::nanf(""));
    // Writes after the bad chunk may find the call already ended.
    const bool written = s.stream->Write(chunk);
    if (i <= 6) {
      ASSERT_TRUE(written) << i;
    }
  }
  s.stream->WritesDone();
  int answered = 0;
  v1::StreamResponse response;
  while (s.stream->Read(&response)) {
    ++answered;
    EXPECT_EQ(response.position(), 2 * answered);
  }
  EXPECT_EQ(answered, 6);
  const grpc::Status status = s.stream->Finish();
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(status.error_message(), "chunk.values[1] is NaN");
  ASSERT_TRUE(WaitForDetached(1));
  v1::ExportStateResponse exported;
  ASSERT_TRUE(ExportState(s.opened.session_id(), &exported).ok());
  EXPECT_EQ(exported.state().position(), 12);
}

// `received` says how many outputs the client has: a negative count is a
// bad request, named, and the session keeps the chunks before it; a count
// past the position is taken as the position (the answers are in flight).
TEST_F(GrpcServerTest, ANegativeReceivedCountIsInvalidArgument) {
  const v1::Tensor input = MakeInput(1, 8);
  OpenedStream s = Open(OpenModel("legt-delay"));
  v1::StreamRequest first = ChunkRequest(Slice(input, 0, 2));
  first.set_received(1000);  // more than it could have: harmless
  ASSERT_TRUE(s.stream->Write(first));
  v1::StreamResponse response;
  ASSERT_TRUE(s.stream->Read(&response));
  EXPECT_EQ(response.position(), 2);
  v1::StreamRequest bad = ChunkRequest(Slice(input, 2, 4));
  bad.set_received(-1);
  ASSERT_TRUE(s.stream->Write(bad));
  EXPECT_FALSE(s.stream->Read(&response));
  const grpc::Status status = s.stream->Finish();
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(status.error_message(),
            "received = -1: must be >= 0 (the steps of outputs this client has)");
  ASSERT_TRUE(WaitForDetached(1));
  v1::ExportStateResponse exported;
  ASSERT_TRUE(ExportState(s.opened.session_id(), &exported).ok());
  EXPECT_EQ(exported.state().position(), 2);
}

// Cancelling a stream with chunks in flight: whatever ran is applied
// whole, what did not run is not; the reattached session's position is a
// chunk boundary and the stream goes on exactly from there.
TEST_F(GrpcServerTest, CancelWithChunksInFlightLeavesAWholeNumberOfChunks) {
  constexpr int kStep = 3, kChunks = 60;
  const v1::Tensor input = MakeInput(1, kStep * kChunks + 30);
  v1::InferResponse whole;
  ASSERT_TRUE(Infer(InferRequestFor("s4-demo", input), &whole).ok());

  OpenedStream a = Open(OpenModel("s4-demo"));
  for (int i = 0; i < kChunks; ++i) {
    ASSERT_TRUE(a.stream->Write(ChunkRequest(Slice(input, kStep * i, kStep * i + kStep))));
  }
  v1::StreamResponse response;
  for (int i = 0; i < 5; ++i) ASSERT_TRUE(a.stream->Read(&response));
  Cancel(a);
  ASSERT_TRUE(WaitForDetached(1));

  OpenedStream b = Open(Reattach(a.opened.session_id()));
  const int position = static_cast<int>(b.opened.position());
  EXPECT_GE(position, 5 * kStep);
  EXPECT_LE(position, kStep * kChunks);
  EXPECT_EQ(position % kStep, 0) << position;
  ASSERT_TRUE(SendChunk(b.stream.get(), Slice(input, position, position + 30), &response));
  ExpectClose(response.output(), Slice(whole.output(), position, position + 30));
  EXPECT_TRUE(Close(b).ok());
}

}  // namespace
}  // namespace ssm::server::testing
