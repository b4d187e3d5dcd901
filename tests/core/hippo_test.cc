#include "ssm/hippo.h"

#include <cmath>
#include <limits>
#include <numbers>

#include <Eigen/Eigenvalues>
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "core/test_util.h"

namespace ssm {
namespace {

using ::testing::HasSubstr;
using Eigen::MatrixXd;
using Eigen::VectorXd;

constexpr Measure kAllMeasures[] = {Measure::kLegS, Measure::kLegT,
                                    Measure::kLmu, Measure::kLagT,
                                    Measure::kFouT};

ContinuousSystem Make(Measure m, int n, HippoOptions o = {}) {
  absl::StatusOr<ContinuousSystem> s = MakeHippo(m, n, o);
  EXPECT_TRUE(s.ok()) << s.status();
  return *s;
}

TEST(HippoTest, LegSSmallIsTheHandWrittenMatrix) {
  const ContinuousSystem s = Make(Measure::kLegS, 3);
  const double r3 = std::sqrt(3.0), r5 = std::sqrt(5.0), r15 = std::sqrt(15.0);
  MatrixXd a(3, 3);
  a << -1, 0, 0,  //
      -r3, -2, 0,  //
      -r5, -r15, -3;
  EXPECT_EQ(s.A, a);
  EXPECT_EQ(s.B, Eigen::Vector3d(1, r3, r5));
}

// The S4 reference builds LegS as T M T^-1 with M[n,k] = -(2k+1) for n >= k
// plus diag(n) and T = diag(sqrt(2n+1)); rebuild it that way.
TEST(HippoTest, LegSMatchesTheReferenceConstruction) {
  for (int n : {1, 2, 5, 17, 64}) {
    MatrixXd m = MatrixXd::Zero(n, n);
    for (int i = 0; i < n; ++i) {
      for (int k = 0; k <= i; ++k) m(i, k) = -(2.0 * k + 1);
      m(i, i) += i;
    }
    VectorXd t(n);
    for (int i = 0; i < n; ++i) t(i) = std::sqrt(2.0 * i + 1);
    const MatrixXd ref = t.asDiagonal() * m * t.cwiseInverse().asDiagonal();
    const ContinuousSystem s = Make(Measure::kLegS, n);
    EXPECT_LT(testing::RelMaxError(s.A, ref), 1e-15) << "N=" << n;
    EXPECT_EQ(s.B, t);
  }
}

TEST(HippoTest, LegTAndLmuEntriesMatchTheirClosedForms) {
  const int n = 9;
  const double theta = 2.5;
  const ContinuousSystem legt = Make(Measure::kLegT, n);
  const ContinuousSystem lmu = Make(Measure::kLmu, n, {.theta = theta});
  for (int i = 0; i < n; ++i) {
    EXPECT_DOUBLE_EQ(legt.B(i), 0.5 * std::sqrt(2.0 * i + 1));
    EXPECT_DOUBLE_EQ(lmu.B(i), (2.0 * i + 1) * std::pow(-1.0, i) / theta);
    for (int k = 0; k < n; ++k) {
      // LMU paper: A[i,j] = (2i+1)/theta * (-1 if i < j else (-1)^(i-j+1)).
      const double lmu_ref =
          (2.0 * i + 1) / theta * (i < k ? -1.0 : std::pow(-1.0, i - k + 1));
      EXPECT_DOUBLE_EQ(lmu.A(i, k), lmu_ref) << i << "," << k;
      const double legt_ref = -0.5 * std::sqrt((2.0 * i + 1) * (2.0 * k + 1)) *
                              (i < k ? std::pow(-1.0, i - k) : 1.0);
      EXPECT_DOUBLE_EQ(legt.A(i, k), legt_ref) << i << "," << k;
    }
  }
}

TEST(HippoTest, LagTAndFouTEntries) {
  const ContinuousSystem lagt = Make(Measure::kLagT, 4, {.beta = 0.5});
  MatrixXd a(4, 4);
  a << -0.5, 0, 0, 0,  //
      -1, -0.5, 0, 0,  //
      -1, -1, -0.5, 0,  //
      -1, -1, -1, -0.5;
  EXPECT_EQ(lagt.A, a);
  EXPECT_EQ(lagt.B, VectorXd::Constant(4, 0.5));

  const ContinuousSystem fout = Make(Measure::kFouT, 6);
  const double s2 = std::numbers::sqrt2, pi = std::numbers::pi;
  VectorXd b(6);
  b << 1, 0, s2, 0, s2, 0;
  EXPECT_EQ(fout.B, b);
  MatrixXd j = MatrixXd::Zero(6, 6);
  j(2, 3) = -pi;
  j(3, 2) = pi;
  j(4, 5) = -2 * pi;
  j(5, 4) = 2 * pi;
  EXPECT_LT(testing::RelMaxError(fout.A, MatrixXd(j - b * b.transpose())), 1e-16);

  // Odd N drops the dead sin(0) slot: 1, cos 1, sin 1, cos 2, sin 2.
  const ContinuousSystem odd = Make(Measure::kFouT, 5);
  VectorXd bo(5);
  bo << 1, s2, 0, s2, 0;
  EXPECT_EQ(odd.B, bo);
  MatrixXd jo = MatrixXd::Zero(5, 5);
  jo(1, 2) = -pi;
  jo(2, 1) = pi;
  jo(3, 4) = -2 * pi;
  jo(4, 3) = 2 * pi;
  EXPECT_LT(testing::RelMaxError(odd.A, MatrixXd(jo - bo * bo.transpose())), 1e-16);
  EXPECT_EQ(Make(Measure::kFouT, 1).A, MatrixXd::Constant(1, 1, -1.0));
}

// A + P P^T - shift I must be skew-symmetric: the normal-plus-low-rank form.
TEST(HippoTest, LowRankCorrectionLeavesShiftedSkewPart) {
  struct Case {
    Measure m;
    int rank;
    double shift;
  };
  for (const Case& c : {Case{Measure::kLegS, 1, -0.5}, Case{Measure::kLegT, 2, 0.0},
                        Case{Measure::kLagT, 1, 0.0}, Case{Measure::kFouT, 1, 0.0}}) {
    for (int n : {1, 2, 3, 8, 31, 64, 256}) {
      const ContinuousSystem s = Make(c.m, n);
      absl::StatusOr<LowRankCorrection> p = MakeLowRankCorrection(c.m, n);
      ASSERT_TRUE(p.ok()) << p.status();
      EXPECT_EQ(p->P.rows(), n);
      EXPECT_EQ(p->P.cols(), c.rank);
      EXPECT_EQ(p->shift, c.shift);
      const MatrixXd normal = s.A + p->P * p->P.transpose();
      const MatrixXd skew =
          normal - p->shift * MatrixXd::Identity(n, n);
      // Entries are sums of two roundings of sqrt products: a few ulps of
      // the largest entry (2N for LegS) is all that may remain.
      const double tol = 8 * std::numeric_limits<double>::epsilon() *
                         s.A.cwiseAbs().maxCoeff();
      EXPECT_LE((skew + skew.transpose()).cwiseAbs().maxCoeff(), tol)
          << MeasureName(c.m) << " N=" << n;
    }
  }
}

// Every eigenvalue of A has a negative real part. For the normal-plus-low-
// rank forms a second, rounding-proof check: every eigenvalue's real part is
// at most the top eigenvalue of the symmetric part (A + A^T)/2 = shift I -
// P P^T, which is <= 0. LMU is only similar to LegT through a non-orthogonal
// scaling, so its symmetric part is indefinite and only the first check
// applies to it.
TEST(HippoTest, AllMeasuresAreStable) {
  for (Measure m : kAllMeasures) {
    for (int n : {1, 2, 3, 4, 7, 16, 33, 64, 128, 255, 256}) {
      const ContinuousSystem s = Make(m, n);
      const Eigen::VectorXcd ev = testing::Eigenvalues(s.A);
      int zero_modes = 0;
      for (Eigen::Index i = 0; i < ev.size(); ++i) {
        if (m == Measure::kFouT && std::abs(ev(i)) < 1e-9) {
          ++zero_modes;
          continue;
        }
        EXPECT_LT(ev(i).real(), -1e-6)
            << MeasureName(m) << " N=" << n << " eigenvalue " << ev(i);
      }
      // Even-N FouT has its sin(0 t) slot (index 1): one decoupled zero mode.
      EXPECT_EQ(zero_modes, (m == Measure::kFouT && n % 2 == 0) ? 1 : 0)
          << MeasureName(m) << " N=" << n;

      if (m == Measure::kLmu) continue;
      const MatrixXd sym = 0.5 * (s.A + s.A.transpose());
      const double top =
          Eigen::SelfAdjointEigenSolver<MatrixXd>(sym).eigenvalues().maxCoeff();
      // A symmetric eigensolver is backward stable: its eigenvalues are off
      // by a small multiple of eps * ||sym||.
      const double tol = 16 * std::numeric_limits<double>::epsilon() * sym.norm();
      EXPECT_LE(top, tol) << MeasureName(m) << " N=" << n;
    }
  }
}

TEST(HippoTest, FouTZeroModeIsDecoupled) {
  const ContinuousSystem s = Make(Measure::kFouT, 10);
  EXPECT_EQ(s.A.row(1).cwiseAbs().maxCoeff(), 0.0);
  EXPECT_EQ(s.A.col(1).cwiseAbs().maxCoeff(), 0.0);
  EXPECT_EQ(s.B(1), 0.0);
}

// legt = T lmu(theta = 2) T^-1 with T = diag((-1)^n / sqrt(2n+1)).
TEST(HippoTest, LegTIsSimilarToLmuWithWindowTwo) {
  for (int n : {1, 2, 5, 16, 64, 255}) {
    const ContinuousSystem legt = Make(Measure::kLegT, n);
    const ContinuousSystem lmu = Make(Measure::kLmu, n, {.theta = 2.0});
    VectorXd t(n);
    for (int i = 0; i < n; ++i) t(i) = std::pow(-1.0, i) / std::sqrt(2.0 * i + 1);
    const MatrixXd a = t.asDiagonal() * lmu.A * t.cwiseInverse().asDiagonal();
    const VectorXd b = t.asDiagonal() * lmu.B;
    EXPECT_LT(testing::RelMaxError(a, legt.A), 1e-14) << "N=" << n;
    EXPECT_LT(testing::RelMaxError(b, legt.B), 1e-15) << "N=" << n;
  }
}

TEST(HippoTest, LmuWindowScalesTheSystem) {
  const ContinuousSystem one = Make(Measure::kLmu, 12, {.theta = 1.0});
  const ContinuousSystem four = Make(Measure::kLmu, 12, {.theta = 4.0});
  EXPECT_LT(testing::RelMaxError(MatrixXd(4 * four.A), one.A), 1e-16);
  EXPECT_LT(testing::RelMaxError(VectorXd(4 * four.B), one.B), 1e-16);
}

TEST(HippoTest, NamesRoundTrip) {
  for (Measure m : kAllMeasures) {
    absl::StatusOr<Measure> parsed = ParseMeasure(MeasureName(m));
    ASSERT_TRUE(parsed.ok());
    EXPECT_EQ(*parsed, m);
  }
  EXPECT_EQ(*ParseMeasure("LegS"), Measure::kLegS);
  const absl::Status bad = ParseMeasure("legendre").status();
  EXPECT_EQ(bad.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(bad.message(), HasSubstr("'legendre'"));
}

TEST(HippoTest, RejectsBadSizesAndOptions) {
  for (Measure m : kAllMeasures) {
    for (int n : {0, -1, std::numeric_limits<int>::min()}) {
      const absl::Status st = MakeHippo(m, n).status();
      EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument) << MeasureName(m);
      EXPECT_THAT(st.message(), HasSubstr("N must be >= 1"));
    }
  }
  for (double theta : {0.0, -1.0, std::nan(""), std::numeric_limits<double>::infinity()}) {
    const absl::Status st = MakeHippo(Measure::kLmu, 4, {.theta = theta}).status();
    EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument) << theta;
    EXPECT_THAT(st.message(), HasSubstr("theta"));
  }
  for (double beta : {0.0, std::nan("")}) {
    const absl::Status st = MakeHippo(Measure::kLagT, 4, {.beta = beta}).status();
    EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(st.message(), HasSubstr("beta"));
  }
  // Options a measure does not use are ignored, not rejected.
  EXPECT_TRUE(MakeHippo(Measure::kLegS, 4, {.theta = -1}).ok());

  EXPECT_EQ(MakeLowRankCorrection(Measure::kLegS, 0).status().code(),
            absl::StatusCode::kInvalidArgument);
  const absl::Status lmu = MakeLowRankCorrection(Measure::kLmu, 4).status();
  EXPECT_EQ(lmu.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(lmu.message(), HasSubstr("lmu"));
}

}  // namespace
}  // namespace ssm
