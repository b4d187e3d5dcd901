// Test fixtures shared by the recurrent and convolutional mode suites: the
// systems they sweep, random inputs, and the error measure they assert on.

#ifndef SSM_TESTS_CORE_SSM_SYSTEMS_H_
#define SSM_TESTS_CORE_SSM_SYSTEMS_H_

#include <algorithm>
#include <cmath>
#include <initializer_list>
#include <string>
#include <vector>

#include "core/test_util.h"
#include "ssm/discretize.h"
#include "ssm/dplr.h"

namespace ssm::testing {

inline std::vector<double> RandomInput(size_t n, uint64_t seed) {
  const Eigen::MatrixXd m = RandomMatrix(static_cast<int>(n), 1, seed);
  return std::vector<double>(m.data(), m.data() + n);
}

// max |a - b| / max |b|.
inline double RelError(const std::vector<double>& a, const std::vector<double>& b) {
  double err = 0, scale = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    err = std::max(err, std::abs(a[i] - b[i]));
    scale = std::max(scale, std::abs(b[i]));
  }
  return scale == 0 ? err : err / scale;
}

struct NamedSystem {
  std::string name;
  DplrSystem s;
  Discretization method;
};

// S4D systems for each init under ZOH and bilinear, then S4 (DPLR,
// bilinear) systems for each measure; N is the state size, H the channels,
// steps log-spaced over S4's default [1e-3, 1e-1].
inline std::vector<NamedSystem> NamedSystems(int n, int h,
                                             std::initializer_list<S4dInit> inits,
                                             std::initializer_list<Measure> measures,
                                             uint64_t seed) {
  std::vector<NamedSystem> out;
  for (S4dInit init : inits) {
    for (const Discretization& m : {Discretization::Zoh(), Discretization::Bilinear()}) {
      out.push_back({"s4d" + std::to_string(static_cast<int>(init)) +
                         (m.kind == Discretization::Kind::kZoh ? "/zoh" : "/bilinear"),
                     *MakeS4dInit(init, n, h, 1e-3, 1e-1, seed), m});
    }
  }
  for (Measure meas : measures) {
    out.push_back({"s4/" + std::string(MeasureName(meas)),
                   *MakeS4Init(meas, n, h, 1e-3, 1e-1, seed + 1), Discretization::Bilinear()});
  }
  return out;
}

}  // namespace ssm::testing

#endif  // SSM_TESTS_CORE_SSM_SYSTEMS_H_
