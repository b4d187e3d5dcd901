// StreamInfer's gathering path (step_batcher.h) end to end: many
// concurrent lock-step streams, their chunks stepped together, each get
// exactly the outputs of stepping their session alone in the core (the
// float32 the wire carries, bit for bit) and close to one Infer; a stream
// cancelled while its chunk is gathered ends cleanly; --step_batch_window=0
// turns the gathering off.

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <atomic>
#include <cmath>
#include <cstring>
#include <memory>
#include <thread>
#include <vector>

#include "grpc_server_fixture.h"
#include "ssm/session.h"

namespace ssm::server::testing {
namespace {

class GatheringTest : public GrpcServerTest {
 protected:
  ServerOptions Options() const override {
    ServerOptions o = DefaultOptions();
    o.step_batch_window = absl::Milliseconds(2);
    return o;
  }

  // What a stream of `steps` single steps of `input` (batch 1) gets when
  // its session is stepped alone in the core, as the wire's float32.
  static std::vector<float> Alone(const v1::Tensor& input, const std::vector<int>& cuts) {
    Session s = *Session::Create(ShippedModel("s4-demo"), 1);
    std::vector<float> out;
    for (size_t i = 0; i + 1 < cuts.size(); ++i) {
      const int len = cuts[i + 1] - cuts[i];
      std::vector<double> x(len), y(len);
      for (int t = 0; t < len; ++t) x[t] = input.values(cuts[i] + t);
      EXPECT_TRUE(s.Run(x, len, absl::MakeSpan(y)).ok());
      for (double v : y) out.push_back(static_cast<float>(v));
    }
    return out;
  }

  double Metric(const std::string& name) {
    return MetricValue(server_->metrics().Text(), name);
  }
};

// 32 streams in lock-step, single steps and now and then a chunk of 3 (a
// chunk of another length, stepped in its own core call), each its own
// input: every stream's outputs are its session's alone, bit for bit.
TEST_F(GatheringTest, ConcurrentLockStepStreamsGetTheirOwnOutputsExactly) {
  constexpr int kStreams = 32;
  std::vector<int> cuts = {0};
  while (cuts.back() < 60) cuts.push_back(cuts.back() + (cuts.size() % 9 == 4 ? 3 : 1));
  const int total = cuts.back();
  const double passes0 = Metric("ssm_step_batches_total");
  const double chunks0 = Metric("ssm_step_batch_chunks_total");
  std::vector<v1::Tensor> inputs;
  for (int i = 0; i < kStreams; ++i) inputs.push_back(MakeInput(1, total, 0.37 * i));
  std::vector<std::vector<float>> got(kStreams);
  std::vector<OpenedStream> streams;
  for (int i = 0; i < kStreams; ++i) streams.push_back(Open(OpenModel("s4-demo")));
  std::atomic<int> failures{0};
  std::vector<std::thread> threads;
  for (int i = 0; i < kStreams; ++i) {
    threads.emplace_back([&, i] {
      for (size_t k = 0; k + 1 < cuts.size(); ++k) {
        v1::StreamResponse response;
        if (!SendChunk(streams[i].stream.get(), Slice(inputs[i], cuts[k], cuts[k + 1]),
                       &response) ||
            response.position() != cuts[k + 1]) {
          ++failures;
          return;
        }
        got[i].insert(got[i].end(), response.output().values().begin(),
                      response.output().values().end());
      }
    });
  }
  for (std::thread& t : threads) t.join();
  ASSERT_EQ(failures.load(), 0);
  for (OpenedStream& s : streams) EXPECT_TRUE(Close(s).ok());
  for (int i = 0; i < kStreams; ++i) {
    const std::vector<float> want = Alone(inputs[i], cuts);
    ASSERT_EQ(got[i].size(), want.size());
    EXPECT_EQ(std::memcmp(got[i].data(), want.data(), want.size() * sizeof(float)), 0)
        << "stream " << i;
  }
  // They were gathered: fewer passes than chunks.
  const double chunks = Metric("ssm_step_batch_chunks_total") - chunks0;
  const double passes = Metric("ssm_step_batches_total") - passes0;
  EXPECT_EQ(chunks, kStreams * (cuts.size() - 1.0));
  EXPECT_LT(passes, chunks);
  // And close to one Infer of the whole input (the convolutional mode).
  v1::InferResponse whole;
  ASSERT_TRUE(Infer(InferRequestFor("s4-demo", inputs[5]), &whole).ok());
  v1::Tensor streamed;
  streamed.add_shape(1);
  streamed.add_shape(total);
  streamed.add_shape(1);
  for (float v : got[5]) streamed.add_values(v);
  ExpectClose(streamed, whole.output());
}

// A stream cancelled while its chunk waits for company (a long window and
// another member stream that stays quiet) ends, its session detached; the
// server carries on.
TEST_F(GatheringTest, AStreamCancelledWhileGatheredEndsCleanly) {
  StartServerWith([](ServerOptions& o) { o.step_batch_window = absl::Milliseconds(400); });
  OpenedStream quiet = Open(OpenModel("s4-demo"));
  OpenedStream busy = Open(OpenModel("s4-demo"));
  v1::StreamResponse response;
  // Both become members of the group, so each chunk of `busy` waits for
  // `quiet`'s (up to the window).
  ASSERT_TRUE(SendChunk(quiet.stream.get(), MakeInput(1, 1), &response));
  ASSERT_TRUE(SendChunk(busy.stream.get(), MakeInput(1, 1), &response));
  ASSERT_TRUE(busy.stream->Write(ChunkRequest(MakeInput(1, 1))));
  absl::SleepFor(absl::Milliseconds(50));
  Cancel(busy);
  EXPECT_TRUE(WaitForDetached(1));
  // The quiet one still works, and a new stream too.
  ASSERT_TRUE(SendChunk(quiet.stream.get(), MakeInput(1, 1), &response));
  EXPECT_EQ(response.position(), 2);
  EXPECT_TRUE(Close(quiet).ok());
  OpenedStream fresh = Open(OpenModel("s4-demo"));
  ASSERT_TRUE(SendChunk(fresh.stream.get(), MakeInput(1, 2), &response));
  EXPECT_EQ(response.position(), 2);
  EXPECT_TRUE(Close(fresh).ok());
}

// --step_batch_window=0: no gathering; streams step as before.
TEST_F(GatheringTest, AZeroWindowTurnsGatheringOff) {
  StartServerWith([](ServerOptions& o) { o.step_batch_window = absl::ZeroDuration(); });
  OpenedStream a = Open(OpenModel("s4-demo")), b = Open(OpenModel("s4-demo"));
  v1::StreamResponse response;
  for (int t = 0; t < 5; ++t) {
    ASSERT_TRUE(SendChunk(a.stream.get(), MakeInput(1, 1), &response));
    ASSERT_TRUE(SendChunk(b.stream.get(), MakeInput(1, 1), &response));
  }
  EXPECT_EQ(response.position(), 5);
  EXPECT_EQ(Metric("ssm_step_batches_total"), 0);
  EXPECT_TRUE(Close(a).ok());
  EXPECT_TRUE(Close(b).ok());
}

}  // namespace
}  // namespace ssm::server::testing
