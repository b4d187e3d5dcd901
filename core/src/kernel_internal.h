// Dense full-state views of a DplrSystem channel, shared by the reference
// (naive) kernels, the C~ maps and the dense recurrent step.

#ifndef SSM_CORE_SRC_KERNEL_INTERNAL_H_
#define SSM_CORE_SRC_KERNEL_INTERNAL_H_

#include <cstdint>

#include <Eigen/Dense>

#include "ssm/discretize.h"
#include "ssm/dplr.h"

namespace ssm::internal {

// Channel h over the full N = 2M state: A = diag(Lambda_f) - Pf Pf^*.
struct FullState {
  Eigen::MatrixXcd A;
  Eigen::VectorXcd B;
  Eigen::VectorXcd C;
};
FullState MakeFullState(const DplrSystem& s, int h);

struct DiscreteFull {
  Eigen::MatrixXcd A;
  Eigen::VectorXcd B;
};
// Arguments already validated.
DiscreteFull DiscretizeFull(const FullState& f, double dt, Discretization method);

class Stopper;
// a^p by squaring. With `stop`, polls it before each product and returns
// early (a meaningless value) once it has stopped.
Eigen::MatrixXcd MatrixPower(const Eigen::MatrixXcd& a, int64_t p,
                             Stopper* stop = nullptr);

}  // namespace ssm::internal

#endif  // SSM_CORE_SRC_KERNEL_INTERNAL_H_
