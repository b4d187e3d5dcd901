// Many sessions stepped in one pass (Session::RunBatch) against the same
// sessions stepped one at a time (Session::Run): bit for bit the same
// outputs, states, positions and statuses, for every architecture, odd
// counts of sessions (1 to 65, across the passes' boundaries), batches and
// chunk lengths; a failing session fails alone and is left as it was. And
// the linear layer the streaming pass uses (row_linear.h), whose rows must
// not depend on one another.

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "row_linear.h"
#include "ssm/model.h"
#include "ssm/session.h"
#include "core/test_models.h"

namespace ssm {
namespace {

using ::testing::HasSubstr;
using testing::HippoSpec;
using testing::Load;
using testing::S4Spec;
using testing::Variants;

// ---- RowLinear ----

// The sum RowLinear promises, written plainly: over the inputs in order,
// one rounding per term (fused where the CPU fuses), then the bias.
double ReferenceOutput(const RowMatrixXd& w, const Eigen::VectorXd& b, const double* x, int o) {
  double acc = 0;
  for (int k = 0; k < w.cols(); ++k) {
#ifdef __FMA__
    acc = std::fma(x[k], w(o, k), acc);
#else
    acc = acc + x[k] * w(o, k);
#endif
  }
  return acc + b(o);
}

TEST(RowLinearTest, EveryRowIsItsOwnWhateverTheRowsAround) {
  std::mt19937_64 rng(11);
  std::normal_distribution<double> normal;
  for (int in : {1, 3, 7, 64}) {
    for (int out : {1, 3, 4, 5, 8, 13, 33, 128}) {
      RowMatrixXd w(out, in);
      Eigen::VectorXd b(out);
      for (int i = 0; i < w.size(); ++i) w.data()[i] = normal(rng);
      for (int i = 0; i < out; ++i) b(i) = normal(rng);
      const internal::RowLinear lin(w, b);
      ASSERT_EQ(lin.in(), in);
      ASSERT_EQ(lin.out(), out);
      const int rows = 9;
      std::vector<double> x(rows * in);
      for (double& v : x) v = normal(rng);
      // Each row alone is the reference exactly, and close to Eigen's.
      for (int r = 0; r < rows; ++r) {
        std::vector<double> y(out);
        lin.Apply(&x[r * in], 1, y.data());
        const Eigen::VectorXd eigen =
            w * Eigen::Map<const Eigen::VectorXd>(&x[r * in], in) + b;
        for (int o = 0; o < out; ++o) {
          ASSERT_EQ(y[o], ReferenceOutput(w, b, &x[r * in], o))
              << "in " << in << " out " << out << " row " << r << " output " << o;
          EXPECT_NEAR(y[o], eigen(o), 1e-12 * (1 + std::abs(eigen(o))));
        }
      }
      // Any run of rows gives every row those same bits, wherever it sits.
      for (int first = 0; first < rows; ++first) {
        for (int count = 1; first + count <= rows; ++count) {
          std::vector<double> y(count * out);
          lin.Apply(&x[first * in], count, y.data());
          for (int r = 0; r < count; ++r) {
            for (int o = 0; o < out; ++o) {
              ASSERT_EQ(y[r * out + o], ReferenceOutput(w, b, &x[(first + r) * in], o))
                  << "in " << in << " out " << out << " rows [" << first << ", "
                  << first + count << ") row " << first + r << " output " << o;
            }
          }
        }
      }
    }
  }
}

// ---- RunBatch against Run ----

// An S4 stack like the shipped s4-demo (encoder 1 -> 64, two DPLR rank-1
// blocks of N = 64, pre-LayerNorm, GLU, decoder 64 -> 1).
ModelSpec DemoLike() {
  S4StackSpec s4;
  s4.n_layers = 2;
  s4.d_model = 64;
  s4.d_state = 64;
  s4.norm = NormPlacement::kPre;
  return S4Spec(s4, 1, 1, 256);
}

// A layer whose mode count is not a multiple of the step's vector width,
// with rank 2 (the other loops' tails).
ModelSpec OddModes() {
  S4StackSpec s4;
  s4.n_layers = 2;
  s4.d_model = 6;
  s4.d_state = 10;
  s4.rank = 2;
  return S4Spec(s4, 2, 3, 256);
}

std::vector<std::pair<std::string, std::shared_ptr<const Model>>> Models() {
  std::vector<std::pair<std::string, std::shared_ptr<const Model>>> models;
  for (const auto& [name, s4] : Variants()) models.push_back({name, Load(S4Spec(s4))});
  models.push_back({"demo-like", Load(DemoLike())});
  models.push_back({"odd-modes", Load(OddModes())});
  HippoMemorySpec legt;
  legt.measure = HippoMemorySpec::Measure::kLegT;
  legt.n = 6;
  legt.window = 16;
  legt.output = HippoMemorySpec::Output::kDelayed;
  legt.delays = {0, 3, 7.5};
  models.push_back({"hippo-legt-delay", *LoadModel(HippoSpec(legt, 3), nullptr)});
  HippoMemorySpec legs;
  legs.measure = HippoMemorySpec::Measure::kLegS;
  legs.n = 5;
  models.push_back({"hippo-legs", *LoadModel(HippoSpec(legs, 5), nullptr)});
  return models;
}

std::vector<double> Normal(std::mt19937_64& rng, size_t n, double scale = 1.0) {
  std::normal_distribution<double> normal(0.0, scale);
  std::vector<double> v(n);
  for (double& x : v) x = normal(rng);
  return v;
}

// `count` sessions with different histories (a few steps of their own
// each), and an exact copy of each (through a snapshot).
void MakePairs(const std::shared_ptr<const Model>& model, int count, int batch,
               std::mt19937_64& rng, std::vector<Session>* alone, std::vector<Session>* batched) {
  for (int i = 0; i < count; ++i) {
    Session s = *Session::Create(model, batch);
    const int warm = i % 4;  // some sessions are fresh
    if (warm > 0) {
      const std::vector<double> x = Normal(rng, size_t(batch) * warm * model->d_input());
      std::vector<double> y(size_t(batch) * warm * model->d_output());
      EXPECT_TRUE(s.Run(x, warm, absl::MakeSpan(y)).ok());
    }
    batched->push_back(*Session::Import(model, s.ExportState()));
    alone->push_back(std::move(s));
  }
}

// Rounds of chunks of `steps_per_round`: each session's chunk through Run
// on one copy and through RunBatch on the other, compared bit for bit.
void ExpectBatchEqualsAlone(const std::string& name, const std::shared_ptr<const Model>& model,
                            int count, int batch, const std::vector<int>& steps_per_round) {
  SCOPED_TRACE(name + ", " + std::to_string(count) + " sessions of batch " +
               std::to_string(batch));
  std::mt19937_64 rng(count * 131 + batch);
  std::vector<Session> alone, batched;
  MakePairs(model, count, batch, rng, &alone, &batched);
  const int din = model->d_input(), dout = model->d_output();
  for (int steps : steps_per_round) {
    SCOPED_TRACE("chunks of " + std::to_string(steps) + " steps");
    std::vector<std::vector<double>> xs, ya(count), yb(count);
    std::vector<Session::Chunk> chunks(count);
    for (int i = 0; i < count; ++i) {
      xs.push_back(Normal(rng, size_t(batch) * steps * din));
      ya[i].assign(size_t(batch) * steps * dout, 0.0);
      yb[i].assign(size_t(batch) * steps * dout, 0.0);
      chunks[i] = {&batched[i], xs[i], absl::MakeSpan(yb[i]), absl::OkStatus()};
    }
    Session::RunBatch(absl::MakeSpan(chunks), steps);
    for (int i = 0; i < count; ++i) {
      const absl::Status want = alone[i].Run(xs[i], steps, absl::MakeSpan(ya[i]));
      ASSERT_TRUE(want.ok()) << want;
      ASSERT_TRUE(chunks[i].status.ok()) << "session " << i << ": " << chunks[i].status;
      ASSERT_EQ(std::memcmp(ya[i].data(), yb[i].data(), ya[i].size() * sizeof(double)), 0)
          << "session " << i << ": outputs differ";
    }
  }
  for (int i = 0; i < count; ++i) {
    EXPECT_EQ(alone[i].position(), batched[i].position());
    ASSERT_EQ(alone[i].ExportState(), batched[i].ExportState()) << "session " << i;
  }
}

TEST(SessionBatchTest, EveryArchitectureStepsInABatchAsAlone) {
  for (const auto& [name, model] : Models()) {
    ASSERT_NE(model, nullptr) << name;
    for (int count : {1, 2, 3, 17}) {
      ExpectBatchEqualsAlone(name, model, count, 1, {1, 2, 1, 5, 63, 1});
    }
    ExpectBatchEqualsAlone(name, model, 5, 3, {1, 4, 63});
  }
}

// Counts around a pass's size (Session::kMaxSessionsPerPass) and the
// streaming server's 64 streams, on the model they are for.
TEST(SessionBatchTest, OddCountsOfSessionsAcrossPasses) {
  const std::shared_ptr<const Model> model = Load(DemoLike());
  ASSERT_NE(model, nullptr);
  const int pass = Session::kMaxSessionsPerPass;
  for (int count : {pass - 1, pass, pass + 1, 2 * pass + 3, 63, 64, 65}) {
    ExpectBatchEqualsAlone("demo-like", model, count, 1, {1, 1, 3});
  }
  ExpectBatchEqualsAlone("demo-like", model, 7, 2, {2, 1});
}

// Below the convolution threshold a stream's bits do not depend on how it
// is cut into chunks (each row of a short pass is computed on its own).
TEST(SessionBatchTest, AnyShortChunkingGivesTheSameBits) {
  for (const auto& [name, model] : Models()) {
    SCOPED_TRACE(name);
    const int total = 60, din = model->d_input(), dout = model->d_output();
    std::mt19937_64 rng(5);
    const std::vector<double> x = Normal(rng, size_t(2) * total * din);
    std::vector<std::vector<double>> outs;
    for (const std::vector<int>& cuts :
         {std::vector<int>{60}, {1, 1, 1, 57}, {7, 13, 40}, {2, 3, 5, 7, 11, 13, 19}}) {
      Session s = *Session::Create(model, 2);
      std::vector<double> y;
      int t0 = 0;
      std::vector<double> all(size_t(2) * total * dout);
      for (int len : cuts) {
        const std::vector<double> part = testing::RunRange(s, x, total, t0, len);
        for (int b = 0; b < 2; ++b) {
          std::copy(&part[size_t(b) * len * dout], &part[size_t(b + 1) * len * dout],
                    &all[(size_t(b) * total + t0) * dout]);
        }
        t0 += len;
      }
      outs.push_back(all);
    }
    for (size_t k = 1; k < outs.size(); ++k) {
      EXPECT_EQ(std::memcmp(outs[0].data(), outs[k].data(), outs[0].size() * sizeof(double)), 0)
          << "chunking " << k;
    }
  }
}

// The position a forged snapshot puts a session at (session_limits_test's
// forger: fields, then the CRC made right again).
std::string AtPosition(std::string snapshot, int64_t position) {
  constexpr size_t kNameAt = 8 + 4 + 4 + 8 + 4;
  uint32_t name_len = 0;
  std::memcpy(&name_len, snapshot.data() + kNameAt - 4, 4);
  std::memcpy(&snapshot[kNameAt + name_len], &position, 8);
  const uint32_t crc = Crc32c(std::string_view(snapshot).substr(0, snapshot.size() - 4));
  std::memcpy(&snapshot[snapshot.size() - 4], &crc, 4);
  return snapshot;
}

// A failing chunk fails alone, with Run's status, its session as it was;
// the others step as if it were not there.
TEST(SessionBatchTest, FailuresStayWithTheirSession) {
  for (const char* name : {"demo-like", "dplr-post-glu", "hippo-legt-delay"}) {
    SCOPED_TRACE(name);
    std::shared_ptr<const Model> model;
    for (const auto& [n, m] : Models()) {
      if (n == name) model = m;
    }
    ASSERT_NE(model, nullptr);
    const int count = 9, steps = 2, din = model->d_input(), dout = model->d_output();
    std::mt19937_64 rng(3);
    std::vector<Session> alone, batched;
    MakePairs(model, count, 1, rng, &alone, &batched);
    std::vector<std::vector<double>> xs;
    for (int i = 0; i < count; ++i) xs.push_back(Normal(rng, size_t(steps) * din));
    xs[1].assign(xs[1].size(), 1e308);         // huge: non-finite on the way or out
    xs[4][0] = std::nan("");                   // refused before it runs
    alone[6].set_output_limit(1e-12);          // every output is beyond it
    batched[6].set_output_limit(1e-12);
    const std::string end = AtPosition(alone[7].ExportState(), Session::kMaxPosition - 1);
    alone[7] = *Session::Import(model, end);   // one step from the last position
    batched[7] = *Session::Import(model, end);
    std::vector<double> wrong(size_t(steps + 1) * din, 0.5);  // a shape that disagrees
    std::vector<std::string> before;
    for (const Session& s : batched) before.push_back(s.ExportState());

    std::vector<std::vector<double>> ya(count), yb(count);
    std::vector<Session::Chunk> chunks(count);
    for (int i = 0; i < count; ++i) {
      ya[i].assign(size_t(steps) * dout, 0.0);
      yb[i].assign(size_t(steps) * dout, 0.0);
      chunks[i] = {&batched[i], i == 8 ? absl::MakeConstSpan(wrong) : absl::MakeConstSpan(xs[i]),
                   absl::MakeSpan(yb[i]), absl::OkStatus()};
    }
    Session::RunBatch(absl::MakeSpan(chunks), steps);
    for (int i = 0; i < count; ++i) {
      SCOPED_TRACE("session " + std::to_string(i));
      const absl::Status want =
          alone[i].Run(i == 8 ? absl::MakeConstSpan(wrong) : absl::MakeConstSpan(xs[i]), steps,
                       absl::MakeSpan(ya[i]));
      EXPECT_EQ(chunks[i].status, want);
      if (want.ok()) {
        EXPECT_EQ(std::memcmp(ya[i].data(), yb[i].data(), ya[i].size() * sizeof(double)), 0);
        EXPECT_NE(batched[i].ExportState(), before[i]);
      } else {
        EXPECT_EQ(batched[i].ExportState(), before[i]);  // as it was
      }
      EXPECT_EQ(batched[i].ExportState(), alone[i].ExportState());
    }
    if (std::string(name) == "demo-like") {
      // The pre-norm's mean overflows: NaN reaches the first SSM.
      EXPECT_THAT(chunks[1].status.message(), HasSubstr("u has a non-finite value"));
    }
    EXPECT_EQ(chunks[4].status.code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(chunks[6].status.message(), HasSubstr("beyond the output limit"));
    EXPECT_EQ(chunks[7].status.code(), absl::StatusCode::kOutOfRange);
    EXPECT_EQ(chunks[8].status.code(), absl::StatusCode::kInvalidArgument);
    for (int i : {0, 2, 3, 5}) EXPECT_TRUE(chunks[i].status.ok()) << chunks[i].status;
  }
}

// Sessions of other models or batches, and chunks long enough for the
// convolutional mode, run through Run; a session named twice runs once.
TEST(SessionBatchTest, MixedChunksRunOnTheirOwnAndRepeatsAreRefused) {
  const std::shared_ptr<const Model> a = Load(DemoLike());
  const std::shared_ptr<const Model> b = Load(OddModes());
  ASSERT_NE(a, nullptr);
  ASSERT_NE(b, nullptr);
  for (int steps : {3, 70}) {
    SCOPED_TRACE(std::to_string(steps) + " steps");
    std::mt19937_64 rng(steps);
    std::vector<Session> alone, batched;
    MakePairs(a, 2, 1, rng, &alone, &batched);
    MakePairs(b, 2, 1, rng, &alone, &batched);
    MakePairs(a, 2, 2, rng, &alone, &batched);
    std::vector<std::vector<double>> xs, ya, yb;
    std::vector<Session::Chunk> chunks;
    for (size_t i = 0; i < batched.size(); ++i) {
      const Model& m = batched[i].model();
      const size_t rows = size_t(batched[i].batch()) * steps;
      xs.push_back(Normal(rng, rows * m.d_input()));
      ya.emplace_back(rows * m.d_output(), 0.0);
      yb.emplace_back(rows * m.d_output(), 0.0);
    }
    for (size_t i = 0; i < batched.size(); ++i) {
      chunks.push_back({&batched[i], xs[i], absl::MakeSpan(yb[i]), absl::OkStatus()});
    }
    std::vector<double> extra(yb[0].size());
    chunks.push_back({&batched[0], xs[0], absl::MakeSpan(extra), absl::OkStatus()});  // a repeat
    Session::RunBatch(absl::MakeSpan(chunks), steps);
    for (size_t i = 0; i < batched.size(); ++i) {
      ASSERT_TRUE(alone[i].Run(xs[i], steps, absl::MakeSpan(ya[i])).ok());
      ASSERT_TRUE(chunks[i].status.ok()) << i << ": " << chunks[i].status;
      EXPECT_EQ(ya[i], yb[i]) << i;
      EXPECT_EQ(alone[i].ExportState(), batched[i].ExportState()) << i;
    }
    EXPECT_EQ(chunks.back().status.code(), absl::StatusCode::kFailedPrecondition);
    EXPECT_THAT(chunks.back().status.message(), HasSubstr("more than once"));
  }
}

}  // namespace
}  // namespace ssm
