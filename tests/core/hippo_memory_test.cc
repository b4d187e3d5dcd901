#include "ssm/hippo_memory.h"

#include <cmath>
#include <limits>
#include <numbers>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

namespace ssm {
namespace {

using ::testing::HasSubstr;

constexpr double kPi = std::numbers::pi;

// A smooth test signal on normalized time s in [0, 1]: a few sinusoids with
// up to nine periods over the interval.
double Signal(double s) {
  return std::sin(2 * kPi * 2 * s) + 0.5 * std::cos(2 * kPi * 5 * s + 0.3) +
         0.3 * std::sin(2 * kPi * 9 * s + 1.0);
}

// Streams L samples into a LegS memory and reconstructs the whole history at
// the sample points; returns the mean squared error.
double LegSReconstructionMse(int n, int length, Discretization method) {
  HippoMemory mem = *HippoMemory::LegS(n, method);
  std::vector<double> f(length), ages(length);
  for (int k = 1; k <= length; ++k) {
    // Sample k covers the step (k-1, k]: take the signal at its centre.
    f[k - 1] = Signal((k - 0.5) / length);
  }
  EXPECT_TRUE(mem.Update(f).ok());
  EXPECT_EQ(mem.steps(), length);
  for (int k = 1; k <= length; ++k) ages[k - 1] = mem.SampleAge(length - k);
  const Eigen::VectorXd rec = *mem.Reconstruct(ages);
  double se = 0;
  for (int k = 0; k < length; ++k) se += (rec(k) - f[k]) * (rec(k) - f[k]);
  return se / length;
}

// The approximation error must fall as N grows. Bounds: the values measured
// on this implementation (bilinear, L = 10^4: 1.45e-1, 6.24e-2, 1.22e-4,
// 2.58e-7) with a 1.5x margin. The fall is slow until N resolves the
// 9-period component, then steep.
TEST(HippoMemoryTest, LegSErrorFallsWithStateSize) {
  struct Case {
    int n;
    double bound;
  };
  const Case cases[] = {{8, 0.22}, {16, 0.094}, {32, 1.8e-4}, {64, 3.9e-7}};
  std::vector<double> mse;
  for (const Case& c : cases) {
    mse.push_back(LegSReconstructionMse(c.n, 10000, Discretization::Bilinear()));
    std::printf("LegS N=%d MSE=%.3e\n", c.n, mse.back());
    EXPECT_LT(mse.back(), c.bound) << "N=" << c.n;
    if (mse.size() > 1) {
      EXPECT_LT(mse.back(), mse[mse.size() - 2] / 2) << "N=" << c.n;
    }
  }
  EXPECT_LT(mse[3], mse[1] * 1e-4);
}

TEST(HippoMemoryTest, LegSEulerMethodsAlsoConverge) {
  for (const Discretization& m :
       {Discretization::ForwardEuler(), Discretization::BackwardEuler()}) {
    const double mse = LegSReconstructionMse(32, 10000, m);
    std::printf("LegS N=32 alpha=%.1f MSE=%.3e\n", m.alpha, mse);
    EXPECT_LT(mse, 1e-2) << "alpha=" << m.alpha;
  }
}

// A constant input is the first basis function: the memory holds it
// exactly from the first sample on, with every GBT method (A e_0 = -B).
TEST(HippoMemoryTest, LegSRemembersAConstantExactly) {
  for (const Discretization& m : {Discretization::Bilinear(), Discretization::ForwardEuler(),
                                  Discretization::BackwardEuler()}) {
    HippoMemory mem = *HippoMemory::LegS(8, m);
    for (int k = 1; k <= 1000; ++k) {
      ASSERT_TRUE(mem.Update(2.5).ok());
      if (k == 1 || k == 2 || k == 1000) {
        const Eigen::VectorXd rec = *mem.Reconstruct({0.0, 0.3, 0.9, 1.0});
        for (int i = 0; i < rec.size(); ++i) EXPECT_NEAR(rec(i), 2.5, 1e-12) << k;
      }
    }
    EXPECT_NEAR(mem.coefficients()(0), 2.5, 1e-13);
    EXPECT_LT(mem.coefficients().tail(7).cwiseAbs().maxCoeff(), 1e-13);
  }
}

// A LegT memory with a window of theta samples, read at the age of the
// sample theta/2 steps back, is a delay line. Bound: the value measured
// (N = 32, theta = 500, periods of 2000 and 700 samples: 6.0e-6) with a 1.5x
// margin.
TEST(HippoMemoryTest, LegTReconstructsTheDelayedSignal) {
  const int n = 32;
  const double theta = 500;
  HippoMemory mem = *HippoMemory::LegT(n, theta);
  auto g = [](double k) {
    return std::sin(2 * kPi * k / 2000) + 0.4 * std::cos(2 * kPi * k / 700 + 0.5);
  };
  double max_err = 0, se = 0;
  int count = 0;
  for (int k = 0; k < 10000; ++k) {
    ASSERT_TRUE(mem.Update(g(k)).ok());
    if (k < 2 * theta) continue;  // let the window fill with signal
    const double delayed = (*mem.Reconstruct({mem.SampleAge(theta / 2)}))(0);
    const double err = std::abs(delayed - g(k - theta / 2));
    max_err = std::max(max_err, err);
    se += err * err;
    ++count;
  }
  std::printf("LegT N=%d theta=%.0f delay theta/2: max err %.3e, rms %.3e\n", n,
              theta, max_err, std::sqrt(se / count));
  EXPECT_LT(max_err, 9e-6);
}

// Window 200 samples holding 2.5 periods of a sine. The delay error falls
// steeply with N until it meets the sampling floor: a sample stands for its
// whole step, which costs about f''/24 = (2 pi/80)^2/24 = 2.6e-4 here.
// Measured max errors: N=4 0.90, N=8 0.31, N=16 2.8e-4, N=32 4.7e-4.
TEST(HippoMemoryTest, LegTErrorFallsWithStateSize) {
  const double theta = 200, period = 80;
  std::vector<double> err;
  for (int n : {4, 8, 16, 32}) {
    HippoMemory mem = *HippoMemory::LegT(n, theta);
    double max_err = 0;
    for (int k = 0; k < 3000; ++k) {
      ASSERT_TRUE(mem.Update(std::sin(2 * kPi * k / period)).ok());
      if (k < 2 * theta) continue;
      const double ref = std::sin(2 * kPi * (k - theta / 4) / period);
      const double age = mem.SampleAge(theta / 4);
      max_err = std::max(max_err, std::abs((*mem.Reconstruct({age}))(0) - ref));
    }
    std::printf("LegT N=%d theta/4 delay max err %.3e\n", n, max_err);
    err.push_back(max_err);
  }
  EXPECT_LT(err[1], err[0] / 2.5);
  EXPECT_LT(err[2], err[1] / 500);
  EXPECT_LT(err[2], 4.2e-4);
  EXPECT_LT(err[3], 7e-4);  // at the floor: more coefficients cannot help
}

TEST(HippoMemoryTest, EvalMatrixUsesLegendrePolynomials) {
  HippoMemory legt = *HippoMemory::LegT(4, 10.0);
  HippoMemory legs = *HippoMemory::LegS(4);
  const double r = 0.2, x = 2 * r - 1;
  const Eigen::RowVector4d p(1, x, (3 * x * x - 1) / 2, (5 * x * x * x - 3 * x) / 2);
  const Eigen::MatrixXd et = *legt.EvalMatrix({r});
  const Eigen::MatrixXd es = *legs.EvalMatrix({1 - r});  // LegS uses P_n(1 - 2r)
  for (int k = 0; k < 4; ++k) {
    EXPECT_NEAR(et(0, k), p(k), 1e-15);
    EXPECT_NEAR(es(0, k), std::sqrt(2.0 * k + 1) * p(k), 1e-15);
  }
}

TEST(HippoMemoryTest, BadInputIsRejectedAndStateKept) {
  HippoMemory mem = *HippoMemory::LegS(6);
  ASSERT_TRUE(mem.Update({1.0, 2.0, 3.0}).ok());
  const Eigen::VectorXd before = mem.coefficients();

  absl::Status st = mem.Update(std::nan(""));
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(st.message(), HasSubstr("sample"));
  st = mem.Update({4.0, std::numeric_limits<double>::infinity(), 5.0});
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(st.message(), HasSubstr("sample 1"));
  EXPECT_EQ(mem.coefficients(), before);
  EXPECT_EQ(mem.steps(), 3);

  for (double age : {-0.01, 1.01, std::nan("")}) {
    const absl::Status rs = mem.Reconstruct({0.5, age}).status();
    EXPECT_EQ(rs.code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(rs.message(), HasSubstr("ages[1]"));
  }

  EXPECT_EQ(HippoMemory::LegS(0).status().code(), absl::StatusCode::kInvalidArgument);
  const absl::Status zoh = HippoMemory::LegS(4, Discretization::Zoh()).status();
  EXPECT_EQ(zoh.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(zoh.message(), HasSubstr("zoh"));
  EXPECT_EQ(HippoMemory::LegS(4, Discretization::Gbt(-1)).status().code(),
            absl::StatusCode::kInvalidArgument);
  for (double w : {0.0, -5.0, std::nan("")}) {
    const absl::Status ws = HippoMemory::LegT(4, w).status();
    EXPECT_EQ(ws.code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(ws.message(), HasSubstr("window"));
  }
  EXPECT_EQ(HippoMemory::LegT(-3, 10).status().code(), absl::StatusCode::kInvalidArgument);

  mem.Reset();
  EXPECT_EQ(mem.steps(), 0);
  EXPECT_EQ(mem.coefficients().cwiseAbs().maxCoeff(), 0.0);
}

}  // namespace
}  // namespace ssm
