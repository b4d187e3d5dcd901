#include "ssm/kernel.h"

#include <cmath>
#include <limits>
#include <string>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "core/test_util.h"

namespace ssm {
namespace {

using ::testing::HasSubstr;
using Eigen::MatrixXd;
using Eigen::VectorXd;

// max |a - b| / max |b| over the whole kernel.
double KernelError(const RowMatrixXd& a, const RowMatrixXd& b) {
  return testing::RelMaxError(a, b);
}

// One-channel DPLR system from a HiPPO NPLR with a real output row c:
// y = c x_real = c V x~, so the kept half of Cf is V_half^T c.
DplrSystem FromNplr(Measure m, int n, const VectorXd& c, double dt) {
  const Nplr d = *MakeNplr(m, n);
  DplrSystem s;
  s.lambda = d.lambda.transpose();
  for (Eigen::Index a = 0; a < d.P.cols(); ++a) s.P.push_back(d.P.col(a).transpose());
  s.B = d.B.transpose();
  s.C = (d.V.leftCols(n / 2).transpose() * c.cast<cdouble>()).transpose();
  s.dt = VectorXd::Constant(1, dt);
  return s;
}

// The naive DPLR kernel (complex, conjugate-doubled state) equals the kernel
// of the real HiPPO system it came from, computed with real dense powers:
// this ties the whole DPLR representation (V, Pt, Bt, Ct) to the matrices.
TEST(KernelTest, NaiveDplrKernelEqualsRealHippoKernel) {
  for (Measure m : {Measure::kLegS, Measure::kLegT, Measure::kFouT}) {
    for (int n : {2, 4, 16, 64}) {
      for (const Discretization& method : {Discretization::Bilinear(), Discretization::Zoh()}) {
        const double dt = 0.05;
        const int length = 300;
        const VectorXd c = testing::RandomMatrix(n, 1, 17 + n);
        const ContinuousSystem sys = *MakeHippo(m, n);
        const DiscreteSystem disc = *Discretize(sys, dt, method);
        RowMatrixXd ref(1, length);
        VectorXd x = disc.B;
        for (int l = 0; l < length; ++l) {
          ref(0, l) = c.dot(x);
          x = disc.A * x;
        }
        const RowMatrixXd k = *NaiveKernel(FromNplr(m, n, c, dt), length, method);
        EXPECT_LT(KernelError(k, ref), 1e-10) << MeasureName(m) << " N=" << n;
      }
    }
  }
}

struct Case {
  int h, n, length;
};
std::string Name(const Case& c) {
  return "H=" + std::to_string(c.h) + " N=" + std::to_string(c.n) + " L=" + std::to_string(c.length);
}

// The grid: H in {1, 3}, N in {2, 4, 16, 64}, L in {1, 2, 7, 64,
// 1000, 4096}. Naive references cost O(N^2 L); the largest cases run once.
std::vector<Case> Grid() {
  std::vector<Case> out;
  for (int h : {1, 3})
    for (int n : {2, 4, 16, 64})
      for (int length : {1, 2, 7, 64, 1000, 4096}) {
        if (n == 64 && length == 4096 && h == 3) continue;  // covered with H=1
        out.push_back({h, n, length});
      }
  return out;
}

TEST(KernelTest, DiagonalKernelMatchesNaive) {
  for (S4dInit init : {S4dInit::kLegS, S4dInit::kLin, S4dInit::kInv}) {
    for (const Case& c : Grid()) {
      // Steps from 1e-3 to 1e-1 across channels (S4's default range).
      const DplrSystem s = *MakeS4dInit(init, c.n, c.h, 1e-3, 1e-1, 7);
      for (const Discretization& method : {Discretization::Zoh(), Discretization::Bilinear()}) {
        const RowMatrixXd fast = *DiagonalKernel(s, c.length, method);
        const RowMatrixXd ref = *NaiveKernel(s, c.length, method);
        EXPECT_LT(KernelError(fast, ref), 1e-9)
            << Name(c) << " init=" << static_cast<int>(init) << " zoh="
            << (method.kind == Discretization::Kind::kZoh);
      }
    }
  }
}

TEST(KernelTest, DiagonalKernelAtLargeSteps) {
  // Large dt: fast-decaying modes and, for bilinear, poles near z = -1.
  const DplrSystem s = *MakeS4dInit(S4dInit::kLin, 16, 3, 0.5, 4.0, 3);
  for (const Discretization& method : {Discretization::Zoh(), Discretization::Bilinear()}) {
    EXPECT_LT(KernelError(*DiagonalKernel(s, 333, method), *NaiveKernel(s, 333, method)), 1e-9);
  }
}

TEST(KernelTest, CTildeRoundTripsAndResizes) {
  const DplrSystem s = *MakeS4Init(Measure::kLegS, 16, 2, 1e-2, 1e-1, 5);
  const int length = 50;
  DplrSystem with_ct = s;
  with_ct.C = *CTilde(s, length);
  EXPECT_LT(testing::RelMaxError(*CFromCTilde(with_ct, length), s.C), 1e-12);

  // Doubling (the S4 reference's (I + Ab^L)) and an arbitrary resize both
  // agree with C~ computed directly for the new length.
  const RowMatrixXcd direct_100 = *CTilde(s, 100);
  EXPECT_LT(testing::RelMaxError(*ResizeCTilde(with_ct, 50, 100), direct_100), 1e-12);
  const RowMatrixXcd direct_77 = *CTilde(s, 77);
  EXPECT_LT(testing::RelMaxError(*ResizeCTilde(with_ct, 50, 77), direct_77), 1e-12);
}

TEST(KernelTest, CFromCTildeRefusesASingularSystem) {
  // Even-N FouT has a mode with Ab = 1: I - Ab^L is singular.
  const DplrSystem s = *MakeS4Init(Measure::kFouT, 8, 1, 1e-2, 1e-2, 5);
  const absl::Status st = CFromCTilde(s, 64).status();
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(st.message(), HasSubstr("singular"));
  // Doubling needs no inverse and still works.
  EXPECT_TRUE(ResizeCTilde(s, 64, 128).ok());
}

TEST(KernelTest, RejectsBadArguments) {
  const DplrSystem diag = *MakeS4dInit(S4dInit::kLin, 8, 2, 1e-3, 1e-1, 0);
  const DplrSystem dplr = *MakeS4Init(Measure::kLegS, 8, 2, 1e-3, 1e-1, 0);
  auto invalid = [](const absl::Status& st, const std::string& word) {
    EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument) << st;
    EXPECT_THAT(std::string(st.message()), HasSubstr(word));
  };
  for (int length : {0, -3}) {
    invalid(NaiveKernel(diag, length, Discretization::Zoh()).status(), "length");
    invalid(DiagonalKernel(diag, length, Discretization::Zoh()).status(), "length");
    invalid(CTilde(dplr, length).status(), "length");
  }
  invalid(DiagonalKernel(dplr, 8, Discretization::Zoh()).status(), "rank 0");
  DplrSystem bad = diag;
  bad.dt(0) = std::numeric_limits<double>::quiet_NaN();
  invalid(DiagonalKernel(bad, 8, Discretization::Zoh()).status(), "dt[0]");
  invalid(NaiveKernel(bad, 8, Discretization::Zoh()).status(), "dt[0]");
  bad = diag;
  bad.lambda(1, 1) = cdouble(std::numeric_limits<double>::infinity(), 0);
  invalid(DiagonalKernel(bad, 8, Discretization::Bilinear()).status(), "Lambda");
  invalid(NaiveKernel(diag, 8, Discretization::Gbt(1.5)).status(), "alpha");
  DplrSystem high = dplr;
  for (int i = 0; i < kMaxRank; ++i) high.P.push_back(dplr.P[0]);
  invalid(CTilde(high, 8).status(), "rank must be <= 4");
  invalid(ResizeCTilde(dplr, 8, 0).status(), "to");
}

}  // namespace
}  // namespace ssm

namespace ssm {
namespace {

TEST(KernelDplrTest, DplrKernelMatchesNaive) {
  for (Measure m : {Measure::kLegS, Measure::kLegT, Measure::kLagT}) {
    for (const Case& c : Grid()) {
      const DplrSystem s = *MakeS4Init(m, c.n, c.h, 1e-3, 1e-1, 9);
      DplrSystem with_ct = s;
      with_ct.C = *CTilde(s, c.length);
      const RowMatrixXd fast = *DplrKernel(with_ct, c.length);
      const RowMatrixXd ref = *NaiveKernel(s, c.length, Discretization::Bilinear());
      EXPECT_LT(KernelError(fast, ref), 1e-9) << MeasureName(m) << " " << Name(c);
    }
  }
}

}  // namespace
}  // namespace ssm

namespace ssm {
namespace {

// Even-N FouT keeps the S4 layout's dead sin(0) slot: its DPLR form has a
// mode at Lambda = 0, a pole at w = 1 that the generating function cannot
// evaluate. The error says so; the naive kernel still works.
TEST(KernelDplrTest, RefusesAZeroMode) {
  const DplrSystem s = *MakeS4Init(Measure::kFouT, 8, 2, 1e-3, 1e-1, 9);
  const absl::Status st = DplrKernel(s, 16).status();
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(st.message(), HasSubstr("Lambda = 0"));
  EXPECT_TRUE(NaiveKernel(s, 16, Discretization::Bilinear()).ok());
}

TEST(KernelDplrTest, RejectsBadArguments) {
  const DplrSystem s = *MakeS4Init(Measure::kLegS, 8, 2, 1e-3, 1e-1, 9);
  EXPECT_EQ(DplrKernel(s, 0).status().code(), absl::StatusCode::kInvalidArgument);
  DplrSystem bad = s;
  bad.P[0](0, 0) = cdouble(std::nan(""), 0);
  EXPECT_THAT(DplrKernel(bad, 8).status().message(), HasSubstr("P[0]"));
  DplrSystem high = s;
  for (int i = 0; i < kMaxRank; ++i) high.P.push_back(s.P[0]);
  EXPECT_THAT(DplrKernel(high, 8).status().message(), HasSubstr("rank must be <= 4"));
}

}  // namespace
}  // namespace ssm
