// A linear layer over rows whose every row is computed on its own:
// y[r] = w x[r] + b, each output summed over the inputs in order with one
// fused multiply-add per term (a multiply then an add on a CPU without
// FMA), the bias added last. A row's outputs therefore do not depend on how
// many rows are computed together or where the row sits among them, which
// Eigen's products do not promise (one row takes a GEMV, several a blocked
// GEMM, each summing in its own order). The streaming pass relies on it:
// a session stepped in a batch with others gets the very bits it gets
// alone (s4_model.cc).
//
// Speed: several rows and up to 32 outputs at a time in registers, so a
// row costs about what Eigen's GEMV does (the sum's latency hidden by
// independent outputs, not by splitting the sum).
// Thread safety: Apply is const and may run concurrently.

#ifndef SSM_CORE_SRC_ROW_LINEAR_H_
#define SSM_CORE_SRC_ROW_LINEAR_H_

#include <cstdint>
#include <vector>

#include "ssm/types.h"

namespace ssm::internal {

class RowLinear {
 public:
  RowLinear() = default;
  // w: out x in, b: out entries.
  RowLinear(const RowMatrixXd& w, const Eigen::VectorXd& b);

  int in() const { return in_; }
  int out() const { return out_; }
  // x: rows x in, y: rows x out (row-major; not overlapping).
  void Apply(const double* x, int64_t rows, double* y) const;

 private:
  int in_ = 0, out_ = 0, padded_ = 0;  // padded_: out rounded up to 4
  std::vector<double> wt_;  // in x padded_: w transposed, zero columns past out
  std::vector<double> b_;
};

}  // namespace ssm::internal

#endif  // SSM_CORE_SRC_ROW_LINEAR_H_
