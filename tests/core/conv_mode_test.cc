#include "ssm/conv_mode.h"

#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "core/ssm_systems.h"
#include "core/test_util.h"
#include "ssm/kernel.h"
#include "ssm/recurrent.h"

namespace ssm {
namespace {

using ::testing::HasSubstr;
using Eigen::VectorXd;
using testing::RandomInput;
using testing::RelError;


// (Even-N FouT has a mode at Lambda = 0 that the generating function
// cannot evaluate; kernel_test.cc checks the error.)
std::vector<testing::NamedSystem> Systems(int n, int h) {
  return testing::NamedSystems(n, h, {S4dInit::kLegS, S4dInit::kLin},
                               {Measure::kLegS, Measure::kLegT, Measure::kLagT}, 21);
}

// Copies time steps [t0, t0 + len) of every (b, h) row.
std::vector<double> Slice(const std::vector<double>& x, int rows, int steps, int t0, int len) {
  std::vector<double> out(static_cast<size_t>(rows) * len);
  for (int r = 0; r < rows; ++r)
    for (int t = 0; t < len; ++t) out[r * len + t] = x[r * steps + t0 + t];
  return out;
}
void Paste(std::vector<double>& x, const std::vector<double>& part, int rows, int steps,
           int t0, int len) {
  for (int r = 0; r < rows; ++r)
    for (int t = 0; t < len; ++t) x[r * steps + t0 + t] = part[r * len + t];
}

std::vector<double> Forward(const ConvMode& conv, const std::vector<double>& u, int batch,
                            int steps, std::vector<double>* state = nullptr) {
  std::vector<double> y(u.size());
  absl::Span<double> out_state;
  absl::Span<const double> in_state;
  std::vector<double> next;
  if (state != nullptr) {
    in_state = *state;
    next.resize(state->size());
    out_state = absl::MakeSpan(next);
  }
  const absl::Status st = conv.Forward(u, batch, steps, in_state, absl::MakeSpan(y), out_state);
  EXPECT_TRUE(st.ok()) << st;
  if (state != nullptr) *state = next;
  return y;
}

// One call equals the recurrence (itself tested against the naive-kernel
// convolution) at awkward lengths.
TEST(ConvModeTest, EqualsTheRecurrence) {
  const int h = 3, batch = 2;
  for (const testing::NamedSystem& sys : Systems(16, h)) {
    for (int length : {1, 2, 7, 45, 1000}) {
      const VectorXd d = VectorXd::LinSpaced(h, -1, 1);
      const ConvMode conv = *ConvMode::Create(sys.s, d, sys.method, length);
      const SsmStepper st = *SsmStepper::Create(sys.s, d, sys.method);
      const std::vector<double> u = RandomInput(batch * h * length, length);
      std::vector<double> x(batch * st.state_size(), 0.0), ref(u.size());
      ASSERT_TRUE(st.Run(u, batch, length, absl::MakeSpan(x), absl::MakeSpan(ref)).ok());
      EXPECT_LT(RelError(Forward(conv, u, batch, length), ref), 1e-9)
          << sys.name << " L=" << length;
    }
  }
}

TEST(ConvModeTest, ZeroInputGivesZeroAndImpulseGivesTheKernel) {
  const int h = 2, length = 64;
  for (const testing::NamedSystem& sys : Systems(8, h)) {
    const VectorXd d = VectorXd::Constant(h, 0.5);
    const ConvMode conv = *ConvMode::Create(sys.s, d, sys.method, length);
    const std::vector<double> zero(h * length, 0.0);
    for (double v : Forward(conv, zero, 1, length)) EXPECT_EQ(v, 0.0);
    std::vector<double> impulse(h * length, 0.0);
    for (int c = 0; c < h; ++c) impulse[c * length] = 1.0;
    const std::vector<double> y = Forward(conv, impulse, 1, length);
    for (int c = 0; c < h; ++c)
      for (int l = 0; l < length; ++l)
        EXPECT_NEAR(y[c * length + l], conv.kernel()(c, l) + (l == 0 ? 0.5 : 0.0), 1e-12)
            << sys.name;
  }
}

// Splitting a sequence into chunks of any sizes, carrying the state, gives
// the outputs of one call.
TEST(ConvModeTest, ChunksWithCarriedStateEqualOneCall) {
  const int h = 2, batch = 2, steps = 300;
  for (const testing::NamedSystem& sys : Systems(16, h)) {
    const VectorXd d = VectorXd::Constant(h, -0.3);
    const ConvMode conv = *ConvMode::Create(sys.s, d, sys.method, steps);
    const std::vector<double> u = RandomInput(batch * h * steps, 3);
    const std::vector<double> whole = Forward(conv, u, batch, steps);
    std::vector<double> state(batch * conv.state_size(), 0.0), pieces(u.size());
    int t0 = 0;
    for (int chunk : {1, 7, 100, 1, 91, 100}) {
      const std::vector<double> part = Slice(u, batch * h, steps, t0, chunk);
      Paste(pieces, Forward(conv, part, batch, chunk, &state), batch * h, steps, t0, chunk);
      t0 += chunk;
    }
    ASSERT_EQ(t0, steps);
    EXPECT_LT(RelError(pieces, whole), 1e-9) << sys.name;
  }
}

// Convolutional mode for a prefix, then recurrent steps from its state.
TEST(ConvModeTest, RecurrentModeContinuesFromTheCarriedState) {
  const int h = 3, batch = 1, steps = 500, split = 317;
  for (const testing::NamedSystem& sys : Systems(16, h)) {
    const VectorXd d = VectorXd::Ones(h);
    const ConvMode conv = *ConvMode::Create(sys.s, d, sys.method, steps);
    const SsmStepper st = *SsmStepper::Create(sys.s, d, sys.method);
    const std::vector<double> u = RandomInput(batch * h * steps, 8);
    const std::vector<double> whole = Forward(conv, u, batch, steps);
    std::vector<double> state(batch * conv.state_size(), 0.0), joined(u.size());
    Paste(joined, Forward(conv, Slice(u, h, steps, 0, split), batch, split, &state), h, steps,
          0, split);
    const std::vector<double> rest = Slice(u, h, steps, split, steps - split);
    std::vector<double> y(rest.size());
    ASSERT_TRUE(st.Run(rest, batch, steps - split, absl::MakeSpan(state), absl::MakeSpan(y)).ok());
    Paste(joined, y, h, steps, split, steps - split);
    EXPECT_LT(RelError(joined, whole), 1e-9) << sys.name;
  }
}

// 10^5 steps: convolutional mode (one long kernel) and the recurrence agree.
TEST(ConvModeTest, LongSequenceMatchesTheRecurrence) {
  const int h = 2, steps = 100000;
  for (const testing::NamedSystem& sys : Systems(16, h)) {
    if (sys.name == "s4d0/bilinear" || sys.name == "s4/legt") continue;  // one of each kind suffices
    const VectorXd d = VectorXd::Zero(h);
    const ConvMode conv = *ConvMode::Create(sys.s, d, sys.method, steps);
    const SsmStepper st = *SsmStepper::Create(sys.s, d, sys.method);
    const std::vector<double> u = RandomInput(h * steps, 4);
    std::vector<double> x(st.state_size(), 0.0), ref(u.size());
    ASSERT_TRUE(st.Run(u, 1, steps, absl::MakeSpan(x), absl::MakeSpan(ref)).ok());
    EXPECT_LT(RelError(Forward(conv, u, 1, steps), ref), 1e-9) << sys.name;
  }
}

TEST(ConvModeTest, RejectsBadInputAndLeavesOutputsAlone) {
  const DplrSystem s = *MakeS4dInit(S4dInit::kLin, 8, 2, 1e-3, 1e-1, 0);
  const ConvMode conv = *ConvMode::Create(s, VectorXd::Zero(2), Discretization::Zoh(), 16);
  auto invalid = [](const absl::Status& st, const std::string& word) {
    EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument) << st;
    EXPECT_THAT(std::string(st.message()), HasSubstr(word));
  };
  std::vector<double> u(2 * 8, 1.0), y(2 * 8, 7.0), state(conv.state_size(), 0.0);
  const std::vector<double> y0 = y;
  invalid(conv.Forward(u, 1, 17, {}, absl::MakeSpan(y), {}), "steps must be in [1, 16]");
  invalid(conv.Forward(u, 1, 0, {}, absl::MakeSpan(y), {}), "steps");
  invalid(conv.Forward(u, 1, 4, {}, absl::MakeSpan(y), {}), "u and y must have");
  invalid(conv.Forward(u, 0, 8, {}, absl::MakeSpan(y), {}), "batch");
  std::vector<double> short_state(3);
  invalid(conv.Forward(u, 1, 8, short_state, absl::MakeSpan(y), {}), "state_in");
  invalid(conv.Forward(u, 1, 8, {}, absl::MakeSpan(y), absl::MakeSpan(short_state)), "state_out");
  u[5] = std::numeric_limits<double>::infinity();
  invalid(conv.Forward(u, 1, 8, {}, absl::MakeSpan(y), {}), "u has a non-finite value at index 5");
  u[5] = 1;
  state[2] = std::nan("");
  invalid(conv.Forward(u, 1, 8, state, absl::MakeSpan(y), {}), "state_in has a non-finite");
  EXPECT_EQ(y, y0);

  invalid(ConvMode::Create(s, VectorXd::Zero(2), Discretization::Zoh(), 0).status(), "max_length");
  invalid(ConvMode::Create(s, VectorXd::Zero(5), Discretization::Zoh(), 8).status(), "D must have");
  const DplrSystem dplr = *MakeS4Init(Measure::kLegS, 8, 2, 1e-3, 1e-1, 0);
  invalid(ConvMode::Create(dplr, VectorXd::Zero(2), Discretization::Zoh(), 8).status(), "bilinear");
}

}  // namespace
}  // namespace ssm
