#include "ssm/recurrent.h"

#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "core/ssm_systems.h"
#include "core/test_util.h"
#include "ssm/kernel.h"

namespace ssm {
namespace {

using ::testing::HasSubstr;
using Eigen::VectorXd;
using testing::RandomInput;
using testing::RelError;


std::vector<double> RunAll(const SsmStepper& st, const std::vector<double>& u,
                           int batch, int steps) {
  std::vector<double> state(batch * st.state_size(), 0.0), y(u.size());
  const absl::Status s = st.Run(u, batch, steps, absl::MakeSpan(state), absl::MakeSpan(y));
  EXPECT_TRUE(s.ok()) << s;
  return y;
}

// y[b,h,t] = sum_{s<=t} K[h,s] u[b,h,t-s] + D[h] u[b,h,t], in long double.
std::vector<double> DirectConv(const RowMatrixXd& k, const VectorXd& d,
                               const std::vector<double>& u, int batch, int steps) {
  const int h_count = static_cast<int>(k.rows());
  std::vector<double> y(u.size());
  for (int b = 0; b < batch; ++b)
    for (int h = 0; h < h_count; ++h) {
      const double* in = &u[(b * h_count + h) * steps];
      for (int t = 0; t < steps; ++t) {
        long double acc = static_cast<long double>(d(h)) * in[t];
        for (int s = 0; s <= t; ++s) acc += static_cast<long double>(k(h, s)) * in[t - s];
        y[(b * h_count + h) * steps + t] = static_cast<double>(acc);
      }
    }
  return y;
}

std::vector<testing::NamedSystem> Systems(int n, int h) {
  return testing::NamedSystems(n, h, {S4dInit::kLegS, S4dInit::kLin, S4dInit::kInv},
                               {Measure::kLegS, Measure::kLegT, Measure::kFouT}, 11);
}

// Recurrent outputs equal the convolution with the naive kernel, for every
// measure and both S4 and S4D, fast and dense steppers alike.
TEST(RecurrentTest, StepsEqualConvolutionWithTheKernel) {
  const int h = 3, batch = 2, steps = 400;
  // M = N/2 modes: 1, 3 and 11 run only the scalar tail or mix it with
  // 4-wide vectors; 8 and 32 are whole vectors.
  for (int n : {2, 6, 16, 22, 64}) {
    for (const testing::NamedSystem& sys : Systems(n, h)) {
      const VectorXd d = VectorXd::LinSpaced(h, -0.5, 0.7);
      const RowMatrixXd k = *NaiveKernel(sys.s, steps, sys.method);
      const std::vector<double> u = RandomInput(batch * h * steps, n);
      const std::vector<double> ref = DirectConv(k, d, u, batch, steps);
      for (SsmStepper::Kind kind : {SsmStepper::Kind::kFast, SsmStepper::Kind::kDense}) {
        const SsmStepper st = *SsmStepper::Create(sys.s, d, sys.method, kind);
        EXPECT_LT(RelError(RunAll(st, u, batch, steps), ref), 1e-9)
            << sys.name << " N=" << n << " dense=" << (kind == SsmStepper::Kind::kDense);
      }
    }
  }
}

// 10^5 steps: the fast O(M r) steppers stay on the dense reference.
TEST(RecurrentTest, LongStreamsStayOnTheReference) {
  const int h = 2, steps = 100000, n = 16;
  for (const testing::NamedSystem& sys : Systems(n, h)) {
    const VectorXd d = VectorXd::Constant(h, 0.25);
    const std::vector<double> u = RandomInput(h * steps, 99);
    const std::vector<double> fast = RunAll(
        *SsmStepper::Create(sys.s, d, sys.method, SsmStepper::Kind::kFast), u, 1, steps);
    const std::vector<double> dense = RunAll(
        *SsmStepper::Create(sys.s, d, sys.method, SsmStepper::Kind::kDense), u, 1, steps);
    EXPECT_LT(RelError(fast, dense), 1e-9) << sys.name;
    for (double v : fast) ASSERT_TRUE(std::isfinite(v)) << sys.name;
  }
}

// Any split of a stream into Run calls gives bit-identical outputs.
TEST(RecurrentTest, ChunkingDoesNotChangeOutputs) {
  const int h = 3, batch = 2, steps = 100;
  for (const testing::NamedSystem& sys : Systems(8, h)) {
    const SsmStepper st = *SsmStepper::Create(sys.s, VectorXd::Ones(h), sys.method);
    const std::vector<double> u = RandomInput(batch * h * steps, 5);
    const std::vector<double> whole = RunAll(st, u, batch, steps);
    std::vector<double> state(batch * st.state_size(), 0.0), pieces(u.size());
    int t0 = 0;
    for (int chunk : {1, 7, 1, 50, 41}) {
      std::vector<double> in(batch * h * chunk), out(in.size());
      for (int r = 0; r < batch * h; ++r)
        for (int t = 0; t < chunk; ++t) in[r * chunk + t] = u[r * steps + t0 + t];
      ASSERT_TRUE(st.Run(in, batch, chunk, absl::MakeSpan(state), absl::MakeSpan(out)).ok());
      for (int r = 0; r < batch * h; ++r)
        for (int t = 0; t < chunk; ++t) pieces[r * steps + t0 + t] = out[r * chunk + t];
      t0 += chunk;
    }
    ASSERT_EQ(t0, steps);
    EXPECT_EQ(pieces, whole) << sys.name;
  }
}

TEST(RecurrentTest, RejectsBadInputAndKeepsState) {
  const DplrSystem s = *MakeS4Init(Measure::kLegS, 8, 2, 1e-3, 1e-1, 0);
  const SsmStepper st = *SsmStepper::Create(s, VectorXd::Zero(2), Discretization::Bilinear());
  auto invalid = [](const absl::Status& status, const std::string& word) {
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << status;
    EXPECT_THAT(std::string(status.message()), HasSubstr(word));
  };
  std::vector<double> state(st.state_size(), 0.0), y(2 * 3);
  std::vector<double> u = {1, 2, 3, 4, 5, 6};
  ASSERT_TRUE(st.Run(u, 1, 3, absl::MakeSpan(state), absl::MakeSpan(y)).ok());
  const std::vector<double> saved_state = state, saved_y = y;

  u[4] = std::numeric_limits<double>::quiet_NaN();
  invalid(st.Run(u, 1, 3, absl::MakeSpan(state), absl::MakeSpan(y)), "u has a non-finite value at index 4");
  EXPECT_EQ(state, saved_state);
  EXPECT_EQ(y, saved_y);
  u[4] = 0;
  invalid(st.Run(u, 1, 2, absl::MakeSpan(state), absl::MakeSpan(y)), "u must have");
  invalid(st.Run(u, 0, 3, absl::MakeSpan(state), absl::MakeSpan(y)), "batch");
  std::vector<double> short_state(3);
  invalid(st.Run(u, 1, 3, absl::MakeSpan(short_state), absl::MakeSpan(y)), "state must have");
  std::vector<double> short_y(5);
  invalid(st.Run(u, 1, 3, absl::MakeSpan(state), absl::MakeSpan(short_y)), "y must have");

  invalid(SsmStepper::Create(s, VectorXd::Zero(3), Discretization::Bilinear()).status(), "D must have H = 2");
  VectorXd bad_d = VectorXd::Zero(2);
  bad_d(1) = std::numeric_limits<double>::infinity();
  invalid(SsmStepper::Create(s, bad_d, Discretization::Bilinear()).status(), "D has a non-finite");
  invalid(SsmStepper::Create(s, VectorXd::Zero(2), Discretization::Zoh()).status(), "bilinear only");
  DplrSystem bad = s;
  bad.dt(0) = 0;
  invalid(SsmStepper::Create(bad, VectorXd::Zero(2), Discretization::Bilinear()).status(), "dt[0]");
}

}  // namespace
}  // namespace ssm

namespace ssm {
namespace {

// The float32 diagonal step against the double one. Rounding the parameters
// and the state to float32 perturbs each mode by ~6e-8 relative per step; a
// mode with |Ab| = 1 - eps keeps such errors for ~1/eps steps, so the bound
// grows with the slowest mode's memory (dt_min = 1e-3, Re Lambda = -1/2
// here: ~2000 steps). Measured over 2e4 steps: at most 4.2e-5 (S4D-LegS,
// bilinear, N = 64), 1e-6 to 1e-5 elsewhere; the bound is 1e-4.
TEST(RecurrentTest, FloatStepTracksDouble) {
  const int h = 3, batch = 2, steps = 20000;
  for (int n : {2, 6, 18, 64}) {  // M = 1, 3, 9 (partial 8-blocks), 32
    for (const testing::NamedSystem& sys :
         testing::NamedSystems(n, h, {S4dInit::kLegS, S4dInit::kLin, S4dInit::kInv}, {}, 3)) {
      const VectorXd d = VectorXd::LinSpaced(h, -0.5, 0.7);
      const std::vector<double> u = RandomInput(batch * h * steps, n);
      const std::vector<double> ref =
          RunAll(*SsmStepper::Create(sys.s, d, sys.method), u, batch, steps);
      const DiagonalStepperF32 st = *DiagonalStepperF32::Create(sys.s, d, sys.method);
      ASSERT_EQ(st.state_size(), h * n);
      const std::vector<float> uf(u.begin(), u.end());
      std::vector<float> state(batch * st.state_size(), 0.0f), yf(uf.size());
      // Steps one at a time and in chunks: the same code path either way.
      int t0 = 0;
      for (int chunk : {1, 999, 19000}) {
        std::vector<float> in(batch * h * chunk), out(in.size());
        for (int r = 0; r < batch * h; ++r)
          for (int t = 0; t < chunk; ++t) in[r * chunk + t] = uf[r * steps + t0 + t];
        ASSERT_TRUE(st.Run(in, batch, chunk, absl::MakeSpan(state), absl::MakeSpan(out)).ok());
        for (int r = 0; r < batch * h; ++r)
          for (int t = 0; t < chunk; ++t) yf[r * steps + t0 + t] = out[r * chunk + t];
        t0 += chunk;
      }
      const std::vector<double> y(yf.begin(), yf.end());
      const double err = RelError(y, ref);
      EXPECT_LT(err, 1e-4) << sys.name << " N=" << n;
    }
  }
}

TEST(RecurrentTest, FloatStepRejectsBadInput) {
  auto invalid = [](const absl::Status& status, const std::string& word) {
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << status;
    EXPECT_THAT(std::string(status.message()), HasSubstr(word));
  };
  const DplrSystem s4 = *MakeS4Init(Measure::kLegS, 8, 2, 1e-3, 1e-1, 0);
  invalid(DiagonalStepperF32::Create(s4, VectorXd::Zero(2), Discretization::Bilinear()).status(),
          "diagonal only");
  const DplrSystem s4d = *MakeS4dInit(S4dInit::kLin, 8, 2, 1e-3, 1e-1, 0);
  invalid(DiagonalStepperF32::Create(s4d, VectorXd::Zero(3), Discretization::Zoh()).status(),
          "D must have H = 2");
  const DiagonalStepperF32 st = *DiagonalStepperF32::Create(s4d, VectorXd::Zero(2),
                                                            Discretization::Zoh());
  std::vector<float> state(st.state_size(), 0.5f), y(2);
  const std::vector<float> saved = state;
  std::vector<float> u = {1, std::numeric_limits<float>::infinity()};
  invalid(st.Run(u, 1, 1, absl::MakeSpan(state), absl::MakeSpan(y)),
          "u has a non-finite value at index 1");
  EXPECT_EQ(state, saved);
  invalid(st.Run(u, 1, 2, absl::MakeSpan(state), absl::MakeSpan(y)), "u must have");
}

}  // namespace
}  // namespace ssm
