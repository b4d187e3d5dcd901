// Slow, obviously-correct references and comparison helpers for the core
// tests. Nothing here is fast on purpose.

#ifndef SSM_TESTS_CORE_TEST_UTIL_H_
#define SSM_TESTS_CORE_TEST_UTIL_H_

#include <algorithm>
#include <cmath>
#include <complex>
#include <random>

#include <Eigen/Dense>
#include <Eigen/Eigenvalues>

namespace ssm::testing {

using MatrixXld = Eigen::Matrix<long double, Eigen::Dynamic, Eigen::Dynamic>;

// exp(a) in long double: scale by 2^-s until the norm is below 1/4, sum the
// Taylor series until terms stop changing the sum, then square s times.
inline MatrixXld ExpLongDouble(const MatrixXld& a) {
  const long double norm = a.cwiseAbs().rowwise().sum().maxCoeff();
  int s = 0;
  while (std::ldexp(norm, -s) > 0.25L) ++s;
  const MatrixXld x = a * std::ldexp(1.0L, -s);
  MatrixXld sum = MatrixXld::Identity(a.rows(), a.cols());
  MatrixXld term = sum;
  for (int k = 1; k < 60; ++k) {
    term = term * x / static_cast<long double>(k);
    sum += term;
    if (term.cwiseAbs().maxCoeff() == 0.0L) break;
  }
  for (int i = 0; i < s; ++i) sum = sum * sum;
  return sum;
}

// max |a - b| / max |b|: a relative error in the max norm.
template <typename A, typename B>
double RelMaxError(const A& a, const B& b) {
  const double scale = static_cast<double>(b.cwiseAbs().maxCoeff());
  const double err = static_cast<double>((a - b).cwiseAbs().maxCoeff());
  return scale == 0 ? err : err / scale;
}

// Eigenvalues of a real square matrix. A lower-triangular matrix (LegS,
// LagT and everything discretized from them) gives its diagonal exactly:
// those matrices are so far from normal that a general eigensolver's
// rounding moves their eigenvalues by more than the margins under test.
inline Eigen::VectorXcd Eigenvalues(const Eigen::MatrixXd& a) {
  if (a.triangularView<Eigen::StrictlyUpper>().toDenseMatrix().cwiseAbs().maxCoeff() == 0.0) {
    return a.diagonal().cast<std::complex<double>>();
  }
  return Eigen::EigenSolver<Eigen::MatrixXd>(a, false).eigenvalues();
}

inline Eigen::MatrixXd RandomMatrix(int rows, int cols, uint64_t seed,
                                    double scale = 1.0) {
  std::mt19937_64 gen(seed);
  std::uniform_real_distribution<double> dist(-scale, scale);
  Eigen::MatrixXd m(rows, cols);
  for (int j = 0; j < cols; ++j)
    for (int i = 0; i < rows; ++i) m(i, j) = dist(gen);
  return m;
}

}  // namespace ssm::testing

#endif  // SSM_TESTS_CORE_TEST_UTIL_H_
