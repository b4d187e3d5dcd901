#include "ssm/discretize.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <Eigen/Eigenvalues>
#include <cmath>
#include <complex>
#include <limits>

#include "core/test_util.h"

namespace ssm {
namespace {

using Eigen::MatrixXcd;
using Eigen::MatrixXd;
using Eigen::VectorXd;
using ::testing::HasSubstr;
using testing::MatrixXld;
using testing::RelMaxError;
using cd = std::complex<double>;
using cld = std::complex<long double>;

constexpr double kInf = std::numeric_limits<double>::infinity();

ContinuousSystem Hippo(Measure m, int n) { return *MakeHippo(m, n); }

DiscreteSystem Disc(const ContinuousSystem& s, double dt, Discretization d) {
  absl::StatusOr<DiscreteSystem> r = Discretize(s, dt, d);
  EXPECT_TRUE(r.ok()) << r.status();
  return *r;
}

ContinuousSystem RandomSystem(int n, uint64_t seed) {
  return {testing::RandomMatrix(n, n, seed), testing::RandomMatrix(n, 1, seed + 1)};
}

double SpectralRadius(const MatrixXd& a) { return testing::Eigenvalues(a).cwiseAbs().maxCoeff(); }

TEST(DiscretizeTest, GbtEndpointsAreTheEulerMethods) {
  const ContinuousSystem s = Hippo(Measure::kLegS, 7);
  const double dt = 0.03;
  const MatrixXd id = MatrixXd::Identity(7, 7);

  const DiscreteSystem fwd = Disc(s, dt, Discretization::ForwardEuler());
  const DiscreteSystem gbt0 = Disc(s, dt, Discretization::Gbt(0.0));
  EXPECT_LT(RelMaxError(fwd.A, MatrixXd(id + dt * s.A)), 1e-15);
  EXPECT_LT(RelMaxError(fwd.B, VectorXd(dt * s.B)), 1e-15);
  EXPECT_EQ(gbt0.A, fwd.A);
  EXPECT_EQ(gbt0.B, fwd.B);

  const MatrixXd inv = (id - dt * s.A).inverse();
  const DiscreteSystem bwd = Disc(s, dt, Discretization::BackwardEuler());
  const DiscreteSystem gbt1 = Disc(s, dt, Discretization::Gbt(1.0));
  EXPECT_LT(RelMaxError(bwd.A, inv), 1e-14);
  EXPECT_LT(RelMaxError(bwd.B, VectorXd(dt * inv * s.B)), 1e-14);
  EXPECT_EQ(gbt1.A, bwd.A);
  EXPECT_EQ(gbt1.B, bwd.B);

  const DiscreteSystem bil = Disc(s, dt, Discretization::Bilinear());
  const MatrixXd half = (id - dt / 2 * s.A).inverse();
  EXPECT_LT(RelMaxError(bil.A, MatrixXd(half * (id + dt / 2 * s.A))), 1e-14);
  EXPECT_LT(RelMaxError(bil.B, VectorXd(dt * half * s.B)), 1e-14);
}

// The matrix exponential against a long-double Taylor series with scaling
// and squaring, on matrices chosen to stress different parts of it.
TEST(DiscretizeTest, MatrixExpMatchesLongDoubleReference) {
  std::vector<std::pair<std::string, MatrixXd>> cases;
  cases.emplace_back("random 6x6", testing::RandomMatrix(6, 6, 7));
  cases.emplace_back("legs N=8 dt=0.5", 0.5 * Hippo(Measure::kLegS, 8).A);
  cases.emplace_back("lmu N=12 (non-normal)", Hippo(Measure::kLmu, 12).A * 0.1);
  cases.emplace_back("large norm 5x5", testing::RandomMatrix(5, 5, 11, 20.0));
  MatrixXd jordan = MatrixXd::Zero(4, 4);
  jordan.diagonal().setConstant(-0.7);
  jordan.diagonal(1).setConstant(1.0);
  cases.emplace_back("defective Jordan block", jordan);
  cases.emplace_back("fout N=9 (singular)", Hippo(Measure::kFouT, 9).A);
  for (const auto& [name, a] : cases) {
    const MatrixXd e = *MatrixExp(a);
    const MatrixXld ref = testing::ExpLongDouble(a.cast<long double>());
    EXPECT_LT(RelMaxError(e, MatrixXd(ref.cast<double>())), 1e-13) << name;
  }
}

TEST(DiscretizeTest, MatrixExpClosedForms) {
  const double t = 1.3;
  MatrixXd rot(2, 2);
  rot << 0, -t, t, 0;
  MatrixXd want(2, 2);
  want << std::cos(t), -std::sin(t), std::sin(t), std::cos(t);
  EXPECT_LT(RelMaxError(*MatrixExp(rot), want), 1e-15);

  MatrixXd nil = MatrixXd::Zero(3, 3);  // strictly upper: exp = I + N + N^2/2
  nil(0, 1) = 2;
  nil(1, 2) = 3;
  nil(0, 2) = 5;
  const MatrixXd want_nil = MatrixXd::Identity(3, 3) + nil + nil * nil / 2;
  EXPECT_LT(RelMaxError(*MatrixExp(nil), want_nil), 1e-15);

  EXPECT_EQ(MatrixExp(MatrixXd(0, 0))->size(), 0);
}

TEST(DiscretizeTest, ZohOfDiagonalIsElementwiseExp) {
  VectorXd lam(4);
  lam << -0.5, -3.0, 0.0, 1.25;  // includes a singular (0) and unstable mode
  const VectorXd b = VectorXd::LinSpaced(4, 1.0, 2.0);
  const double dt = 0.37;
  const DiscreteSystem d = Disc({MatrixXd(lam.asDiagonal()), b}, dt, Discretization::Zoh());
  for (int i = 0; i < 4; ++i) {
    EXPECT_NEAR(d.A(i, i), std::exp(dt * lam(i)), 1e-15);
    const double bb = lam(i) == 0 ? dt * b(i) : std::expm1(dt * lam(i)) / lam(i) * b(i);
    EXPECT_NEAR(d.B(i), bb, 2e-16 * std::abs(bb) + 1e-16);
  }
  EXPECT_EQ((d.A - MatrixXd(d.A.diagonal().asDiagonal())).cwiseAbs().maxCoeff(), 0.0);
}

// For small dt the ZOH matrices are the truncated series
//   Ab = sum dt^k A^k / k!,  Bb = sum dt^(k+1) A^k B / (k+1)!.
TEST(DiscretizeTest, ZohMatchesTaylorSeriesForSmallSteps) {
  for (const ContinuousSystem& s :
       {Hippo(Measure::kLegS, 16), Hippo(Measure::kFouT, 16), RandomSystem(9, 3)}) {
    for (double dt : {1e-3, 1e-4}) {
      const int n = s.A.rows();
      MatrixXd ab = MatrixXd::Identity(n, n), term = ab;
      VectorXd bb = dt * s.B;
      VectorXd bterm = bb;
      for (int k = 1; k <= 8; ++k) {
        term = term * s.A * (dt / k);
        ab += term;
        bterm = s.A * bterm * (dt / (k + 1));
        bb += bterm;
      }
      const DiscreteSystem d = Disc(s, dt, Discretization::Zoh());
      EXPECT_LT(RelMaxError(d.A, ab), 1e-14) << "dt=" << dt;
      EXPECT_LT(RelMaxError(d.B, bb), 1e-14) << "dt=" << dt;
    }
  }
}

TEST(DiscretizeTest, ZohWorksForSingularA) {
  const ContinuousSystem zero{MatrixXd::Zero(3, 3), VectorXd::Ones(3)};
  const DiscreteSystem d = Disc(zero, 0.25, Discretization::Zoh());
  EXPECT_EQ(d.A, MatrixXd::Identity(3, 3));
  EXPECT_LT(RelMaxError(d.B, VectorXd::Constant(3, 0.25)), 1e-16);

  // FouT has an exact zero eigenvalue; compare with the long-double
  // exponential of the augmented matrix.
  const ContinuousSystem fout = Hippo(Measure::kFouT, 8);
  const double dt = 0.2;
  MatrixXld aug = MatrixXld::Zero(9, 9);
  aug.topLeftCorner(8, 8) = (dt * fout.A).cast<long double>();
  aug.topRightCorner(8, 1) = (dt * fout.B).cast<long double>();
  const MatrixXd ref = testing::ExpLongDouble(aug).cast<double>();
  const DiscreteSystem f = Disc(fout, dt, Discretization::Zoh());
  EXPECT_LT(RelMaxError(f.A, MatrixXd(ref.topLeftCorner(8, 8))), 1e-14);
  EXPECT_LT(RelMaxError(f.B, VectorXd(ref.topRightCorner(8, 1))), 1e-14);
}

// A-stable methods keep every HiPPO system stable at any step. FouT's
// decoupled zero mode (even N) maps to exactly one eigenvalue 1, allowed.
TEST(DiscretizeTest, DiscretizedHippoSystemsAreStable) {
  const Measure measures[] = {Measure::kLegS, Measure::kLegT, Measure::kLmu, Measure::kLagT,
                              Measure::kFouT};
  const Discretization methods[] = {Discretization::Bilinear(), Discretization::Zoh(),
                                    Discretization::BackwardEuler(), Discretization::Gbt(0.75)};
  for (Measure m : measures) {
    for (int n : {1, 7, 16, 64}) {
      const ContinuousSystem s = Hippo(m, n);
      for (const Discretization& method : methods) {
        for (double dt : {1e-3, 1e-2, 0.1, 1.0, 10.0}) {
          const MatrixXd ab = Disc(s, dt, method).A;
          const Eigen::VectorXcd ev = testing::Eigenvalues(ab);
          int unit = 0;
          for (Eigen::Index i = 0; i < ev.size(); ++i) {
            if (m == Measure::kFouT && std::abs(ev(i) - cd(1.0)) < 1e-12) {
              ++unit;
              continue;
            }
            EXPECT_LT(std::abs(ev(i)), 1.0)
                << MeasureName(m) << " N=" << n << " alpha=" << method.alpha
                << " zoh=" << (method.kind == Discretization::Kind::kZoh) << " dt=" << dt;
          }
          EXPECT_EQ(unit, m == Measure::kFouT && n % 2 == 0 ? 1 : 0);
        }
      }
    }
  }
}

// Forward Euler is only conditionally stable: LegS's eigenvalues are
// -1..-N, so it is stable iff dt < 2/N. Shown on the spectrum and on the
// state itself: past the limit an impulse response grows without bound.
TEST(DiscretizeTest, ForwardEulerIsOnlyConditionallyStable) {
  const int n = 32;
  const ContinuousSystem s = Hippo(Measure::kLegS, n);
  const DiscreteSystem ok = Disc(s, 1.9 / n, Discretization::ForwardEuler());
  const DiscreteSystem bad = Disc(s, 2.1 / n, Discretization::ForwardEuler());
  EXPECT_NEAR(SpectralRadius(ok.A), 1 - 1.9 / n, 1e-12);  // slowest mode
  EXPECT_NEAR(SpectralRadius(bad.A), 1.1, 1e-12);         // fastest mode
  VectorXd x_ok = ok.B, x_bad = bad.B;
  for (int k = 0; k < 3000; ++k) {
    x_ok = ok.A * x_ok;
    x_bad = bad.A * x_bad;
  }
  EXPECT_LT(x_ok.norm(), 1e-6 * ok.B.norm());
  EXPECT_GT(x_bad.norm(), 1e6 * bad.B.norm());
}

TEST(DiscretizeTest, PerChannelStepsMatchSingleSteps) {
  const ContinuousSystem s = Hippo(Measure::kLegT, 6);
  VectorXd dt(3);
  dt << 1e-3, 0.1, 2.0;
  for (const Discretization& m : {Discretization::Bilinear(), Discretization::Zoh()}) {
    absl::StatusOr<std::vector<DiscreteSystem>> all = Discretize(s, dt, m);
    ASSERT_TRUE(all.ok()) << all.status();
    ASSERT_EQ(all->size(), 3u);
    for (int h = 0; h < 3; ++h) {
      const DiscreteSystem one = Disc(s, dt(h), m);
      EXPECT_EQ((*all)[h].A, one.A);
      EXPECT_EQ((*all)[h].B, one.B);
    }
  }
}

// A complex mode lambda = a + ib is the real 2x2 block [[a, -b], [b, a]]
// acting on (Re x, Im x); the dense real path must give the same result.
TEST(DiscretizeTest, DiagonalMatchesDenseOnRealBlocks) {
  MatrixXcd lam(2, 3), b(2, 3);
  lam << cd(-0.5, 3.0), cd(-0.01, 40.0), cd(-2.0, 0.0),  //
      cd(-1.5, -0.7), cd(0.0, 0.0), cd(-0.5, 100.0);
  b << cd(1, 0.5), cd(-0.3, 2), cd(0.7, 0),  //
      cd(0, 1), cd(1, 1), cd(2, -1);
  VectorXd dt(2);
  dt << 0.05, 0.3;
  for (const Discretization& m :
       {Discretization::Zoh(), Discretization::Bilinear(), Discretization::ForwardEuler(),
        Discretization::BackwardEuler(), Discretization::Gbt(0.3)}) {
    absl::StatusOr<DiagonalSystem> d = DiscretizeDiagonal({lam, b}, dt, m);
    ASSERT_TRUE(d.ok()) << d.status();
    for (int h = 0; h < 2; ++h) {
      for (int n = 0; n < 3; ++n) {
        MatrixXd a2(2, 2);
        a2 << lam(h, n).real(), -lam(h, n).imag(), lam(h, n).imag(), lam(h, n).real();
        const VectorXd b2 = Eigen::Vector2d(b(h, n).real(), b(h, n).imag());
        const DiscreteSystem dense = Disc({a2, b2}, dt(h), m);
        const cd ab = d->A(h, n), bb = d->B(h, n);
        EXPECT_NEAR(ab.real(), dense.A(0, 0), 1e-14) << h << n;
        EXPECT_NEAR(ab.imag(), dense.A(1, 0), 1e-14) << h << n;
        EXPECT_NEAR(bb.real(), dense.B(0), 1e-14) << h << n;
        EXPECT_NEAR(bb.imag(), dense.B(1), 1e-14) << h << n;
      }
    }
  }
}

// Diagonal ZOH against long double, including modes near zero where
// (exp(z) - 1)/z cancels catastrophically if computed naively.
TEST(DiscretizeTest, DiagonalZohNearZeroIsAccurate) {
  MatrixXcd lam(1, 5), b = MatrixXcd::Ones(1, 5);
  lam << cd(1e-12, 0), cd(-1e-9, 1e-9), cd(0, 1e-6), cd(-0.4, 0.2), cd(-7, 300);
  const VectorXd dt = VectorXd::Constant(1, 0.01);
  const DiagonalSystem d = *DiscretizeDiagonal({lam, b}, dt, Discretization::Zoh());
  for (int n = 0; n < 5; ++n) {
    const cld z = cld(lam(0, n)) * 0.01L;
    // Series in long double: sum z^k/(k+1)!, to full long-double accuracy
    // for |z| < 4.
    cld term = 1, sum = 1;
    for (int k = 1; k < 40; ++k) {
      term *= z / static_cast<long double>(k + 1);
      sum += term;
    }
    const cd want = cd(0.01L * sum);
    EXPECT_LT(std::abs(d.B(0, n) - want), 1e-15 * std::abs(want)) << n;
    EXPECT_LT(std::abs(d.A(0, n) - std::exp(cd(z))), 1e-15) << n;
  }
}

TEST(DiscretizeTest, ParsesNames) {
  EXPECT_EQ(ParseDiscretization("zoh")->kind, Discretization::Kind::kZoh);
  EXPECT_EQ(ParseDiscretization("bilinear")->alpha, 0.5);
  EXPECT_EQ(ParseDiscretization("forward")->alpha, 0.0);
  EXPECT_EQ(ParseDiscretization("backward")->alpha, 1.0);
  EXPECT_EQ(ParseDiscretization("gbt:0.25")->alpha, 0.25);
  for (const char* bad : {"gbt:1.5", "gbt:x", "trapezoid", ""}) {
    EXPECT_EQ(ParseDiscretization(bad).status().code(), absl::StatusCode::kInvalidArgument) << bad;
  }
  EXPECT_THAT(ParseDiscretization("gbt:1.5").status().message(), HasSubstr("alpha"));
}

TEST(DiscretizeTest, RejectsBadArguments) {
  const ContinuousSystem s = Hippo(Measure::kLegS, 4);
  auto expect_invalid = [](const absl::Status& st, const std::string& word) {
    EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument) << st;
    EXPECT_THAT(std::string(st.message()), HasSubstr(word));
  };
  for (double dt : {0.0, -0.1, std::nan(""), kInf}) {
    expect_invalid(Discretize(s, dt, Discretization::Zoh()).status(), "dt");
  }
  for (double alpha : {-0.1, 1.1, std::nan("")}) {
    expect_invalid(Discretize(s, 0.1, Discretization::Gbt(alpha)).status(), "alpha");
  }
  expect_invalid(
      Discretize({MatrixXd::Zero(3, 4), VectorXd::Zero(3)}, 0.1, Discretization::Zoh()).status(),
      "A must be square");
  expect_invalid(
      Discretize({MatrixXd::Zero(0, 0), VectorXd::Zero(0)}, 0.1, Discretization::Zoh()).status(),
      "A must be square");
  expect_invalid(
      Discretize({MatrixXd::Zero(3, 3), VectorXd::Zero(2)}, 0.1, Discretization::Zoh()).status(),
      "B must have N = 3");
  ContinuousSystem nan_a = s;
  nan_a.A(2, 1) = std::nan("");
  expect_invalid(Discretize(nan_a, 0.1, Discretization::Zoh()).status(), "A has a non-finite");
  ContinuousSystem inf_b = s;
  inf_b.B(0) = -kInf;
  expect_invalid(Discretize(inf_b, 0.1, Discretization::Bilinear()).status(), "B has a non-finite");
  // I - alpha dt A singular: A = 2, alpha = 1, dt = 1/2.
  expect_invalid(Discretize({MatrixXd::Constant(1, 1, 2.0), VectorXd::Ones(1)}, 0.5,
                            Discretization::BackwardEuler())
                     .status(),
                 "singular");

  // Finite arguments whose discrete system overflows: every step would be
  // Inf or NaN. ZOH of an unstable A, Euler with a huge dt, the per-channel
  // form naming its channel, and the diagonal one.
  expect_invalid(
      Discretize({MatrixXd::Constant(1, 1, 1000.0), VectorXd::Ones(1)}, 1.0, Discretization::Zoh())
          .status(),
      "overflows at dt = 1 (Ab");
  expect_invalid(Discretize(s, 1e308, Discretization::ForwardEuler()).status(),
                 "Ab has a non-finite entry");
  VectorXd steps(2);
  steps << 0.1, 1e308;
  expect_invalid(Discretize(s, steps, Discretization::ForwardEuler()).status(), "overflows");
  expect_invalid(DiscretizeDiagonal({MatrixXcd::Constant(2, 3, cd(800, 0)), MatrixXcd::Ones(2, 3)},
                                    VectorXd::Constant(2, 1.0), Discretization::Zoh())
                     .status(),
                 "overflows at dt[0] = 1");

  VectorXd dts(3);
  dts << 0.1, -1.0, 0.2;
  expect_invalid(Discretize(s, dts, Discretization::Zoh()).status(), "dt[1]");
  expect_invalid(Discretize(s, VectorXd(0), Discretization::Zoh()).status(), "dt");

  const MatrixXcd lam = MatrixXcd::Constant(2, 3, cd(-1, 1));
  const MatrixXcd b = MatrixXcd::Ones(2, 3);
  const VectorXd dt2 = VectorXd::Constant(2, 0.1);
  expect_invalid(
      DiscretizeDiagonal({lam, MatrixXcd::Ones(3, 2)}, dt2, Discretization::Zoh()).status(),
      "B must be 2 x 3");
  expect_invalid(
      DiscretizeDiagonal({lam, b}, VectorXd::Constant(3, 0.1), Discretization::Zoh()).status(),
      "dt must have H = 2");
  expect_invalid(
      DiscretizeDiagonal({MatrixXcd(0, 3), MatrixXcd(0, 3)}, VectorXd(0), Discretization::Zoh())
          .status(),
      "Lambda");
  MatrixXcd lam_nan = lam;
  lam_nan(1, 2) = cd(0, std::nan(""));
  expect_invalid(DiscretizeDiagonal({lam_nan, b}, dt2, Discretization::Zoh()).status(),
                 "Lambda has a non-finite entry at (1, 2)");
  VectorXd dt_bad = dt2;
  dt_bad(1) = 0;
  expect_invalid(DiscretizeDiagonal({lam, b}, dt_bad, Discretization::Zoh()).status(), "dt[1]");
  expect_invalid(DiscretizeDiagonal({lam, b}, dt2, Discretization::Gbt(2)).status(), "alpha");
  expect_invalid(DiscretizeDiagonal({MatrixXcd::Constant(1, 1, cd(2, 0)), MatrixXcd::Ones(1, 1)},
                                    VectorXd::Constant(1, 0.5), Discretization::BackwardEuler())
                     .status(),
                 "zero");

  expect_invalid(MatrixExp(MatrixXd::Zero(2, 3)).status(), "square");
  MatrixXd inf_m = MatrixXd::Zero(2, 2);
  inf_m(0, 0) = kInf;
  expect_invalid(MatrixExp(inf_m).status(), "non-finite");
}

}  // namespace
}  // namespace ssm
