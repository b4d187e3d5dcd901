// Matrix types shared by the core's public headers. Per-channel data (H rows)
// is row-major so that one channel's values (over modes or time) are
// contiguous: kernels H x L feed FFTs row by row.

#ifndef SSM_TYPES_H_
#define SSM_TYPES_H_

#include <complex>

#include <Eigen/Core>

namespace ssm {

using cdouble = std::complex<double>;

using RowMatrixXd =
    Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using RowMatrixXf =
    Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using RowMatrixXcd =
    Eigen::Matrix<cdouble, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

}  // namespace ssm

#endif  // SSM_TYPES_H_
