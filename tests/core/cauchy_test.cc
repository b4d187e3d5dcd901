#include "ssm/cauchy.h"

#include <cmath>
#include <complex>
#include <limits>
#include <string>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "core/test_util.h"

namespace ssm {
namespace {

using ::testing::HasSubstr;
using cld = std::complex<long double>;

// The unfolded sum over all 2M poles, in long double.
std::vector<RowMatrixXcd> Reference(const RowMatrixXcd& lambda,
                                    const std::vector<RowMatrixXcd>& v,
                                    const RowMatrixXcd& z) {
  std::vector<RowMatrixXcd> out;
  for (const RowMatrixXcd& vs : v) {
    RowMatrixXcd o(z.rows(), z.cols());
    for (Eigen::Index h = 0; h < z.rows(); ++h)
      for (Eigen::Index j = 0; j < z.cols(); ++j) {
        cld acc = 0;
        for (Eigen::Index n = 0; n < lambda.cols(); ++n) {
          const cld zz = z(h, j), l = lambda(h, n), vv = vs(h, n);
          acc += vv / (zz - l) + std::conj(vv) / (zz - std::conj(l));
        }
        o(h, j) = cdouble(acc);
      }
    out.push_back(o);
  }
  return out;
}

RowMatrixXcd RandomComplex(int rows, int cols, uint64_t seed, double re_lo,
                           double re_hi, double im_scale) {
  const Eigen::MatrixXd a = testing::RandomMatrix(rows, cols, seed);
  const Eigen::MatrixXd b = testing::RandomMatrix(rows, cols, seed + 1);
  RowMatrixXcd out(rows, cols);
  for (int i = 0; i < rows; ++i)
    for (int j = 0; j < cols; ++j)
      out(i, j) = cdouble(re_lo + (re_hi - re_lo) * (a(i, j) + 1) / 2, im_scale * b(i, j));
  return out;
}

// Stable poles (Re < 0) against points on the imaginary axis (S4's case)
// and general points; every size awkward; up to 9 sets (rank-2 Woodbury).
// The tolerance is relative to the largest |out| of each set: the folded
// form keeps full accuracy there (measured < 1e-14), so 1e-12 leaves room.
TEST(CauchyTest, MatchesTheExplicitSum) {
  for (int h : {1, 3})
    for (int m : {1, 2, 7, 32})
      for (int j : {1, 2, 5, 129, 1000})
        for (int sets : {1, 4, 5, 9}) {
          for (bool imaginary_points : {true, false}) {
            const uint64_t seed = 1000 * h + 100 * m + j + sets;
            const RowMatrixXcd lambda = RandomComplex(h, m, seed, -1e3, -1e-3, 1e4);
            std::vector<RowMatrixXcd> v;
            for (int s = 0; s < sets; ++s) v.push_back(RandomComplex(h, m, seed + 7 * s, -1, 1, 1));
            RowMatrixXcd z = RandomComplex(h, j, seed + 99, imaginary_points ? 0 : 0.1,
                                           imaginary_points ? 0 : 50, 1e4);
            absl::StatusOr<std::vector<RowMatrixXcd>> out = CauchyConjugateSums(lambda, v, z);
            ASSERT_TRUE(out.ok()) << out.status();
            const std::vector<RowMatrixXcd> ref = Reference(lambda, v, z);
            ASSERT_EQ(out->size(), ref.size());
            for (int s = 0; s < sets; ++s) {
              EXPECT_LT(testing::RelMaxError((*out)[s], ref[s]), 1e-12)
                  << "H=" << h << " M=" << m << " J=" << j << " S=" << sets << " s=" << s
                  << " imaginary=" << imaginary_points;
            }
          }
        }
}

// z = i y with y up to 1e16: the bilinear transform's Nyquist point.
TEST(CauchyTest, HugePointsStayAccurate) {
  const RowMatrixXcd lambda = RandomComplex(2, 8, 5, -10, -0.1, 100);
  std::vector<RowMatrixXcd> v = {RandomComplex(2, 8, 6, -1, 1, 1)};
  RowMatrixXcd z(2, 3);
  z << cdouble(0, 1e8), cdouble(0, 1.6e16), cdouble(0, -3e12),  //
      cdouble(0, 2e16), cdouble(0, 1e3), cdouble(0, 7e15);
  const std::vector<RowMatrixXcd> out = *CauchyConjugateSums(lambda, v, z);
  const std::vector<RowMatrixXcd> ref = Reference(lambda, v, z);
  for (int h = 0; h < 2; ++h)
    for (int j = 0; j < 3; ++j)
      EXPECT_LT(std::abs(out[0](h, j) - ref[0](h, j)), 1e-13 * std::abs(ref[0](h, j)));
}

// How the work is split across threads and calls must not change the math.
TEST(CauchyTest, ChannelsAloneEqualChannelsTogether) {
  const RowMatrixXcd lambda = RandomComplex(5, 32, 11, -5, -0.01, 300);
  std::vector<RowMatrixXcd> v;
  for (int s = 0; s < 4; ++s) v.push_back(RandomComplex(5, 32, 20 + s, -1, 1, 1));
  const RowMatrixXcd z = RandomComplex(5, 1025, 30, 0, 0, 1e3);
  const std::vector<RowMatrixXcd> all = *CauchyConjugateSums(lambda, v, z);
  for (int h = 0; h < 5; ++h) {
    std::vector<RowMatrixXcd> vh;
    for (const RowMatrixXcd& vs : v) vh.push_back(vs.row(h));
    const std::vector<RowMatrixXcd> one =
        *CauchyConjugateSums(lambda.row(h), vh, z.row(h));
    for (int s = 0; s < 4; ++s) EXPECT_EQ(one[s], all[s].row(h)) << h << " " << s;
  }
}

TEST(CauchyTest, RejectsBadArguments) {
  const RowMatrixXcd lambda = RowMatrixXcd::Constant(2, 3, cdouble(-1, 1));
  const std::vector<RowMatrixXcd> v = {RowMatrixXcd::Ones(2, 3)};
  const RowMatrixXcd z = RowMatrixXcd::Constant(2, 4, cdouble(0, 2));
  auto invalid = [](const absl::Status& st, const std::string& word) {
    EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument) << st;
    EXPECT_THAT(std::string(st.message()), HasSubstr(word));
  };
  invalid(CauchyConjugateSums(lambda, {}, z).status(), "v");
  invalid(CauchyConjugateSums(lambda, {RowMatrixXcd::Ones(2, 2)}, z).status(), "v");
  invalid(CauchyConjugateSums(lambda, v, RowMatrixXcd::Ones(3, 4)).status(), "z");
  invalid(CauchyConjugateSums(RowMatrixXcd(0, 3), v, z).status(), "lambda");
  RowMatrixXcd bad = lambda;
  bad(1, 2) = cdouble(std::numeric_limits<double>::quiet_NaN(), 0);
  invalid(CauchyConjugateSums(bad, v, z).status(), "lambda");
  RowMatrixXcd bad_z = z;
  bad_z(0, 1) = cdouble(0, std::numeric_limits<double>::infinity());
  invalid(CauchyConjugateSums(lambda, v, bad_z).status(), "z");
  // A point on a pole.
  RowMatrixXcd on_pole = z;
  on_pole(1, 3) = cdouble(-1, 1);
  invalid(CauchyConjugateSums(lambda, v, on_pole).status(), "pole");
}

}  // namespace
}  // namespace ssm
