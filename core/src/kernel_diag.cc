// S4D kernels by a blocked Vandermonde product. With z_m = Ab_m and
// c_m = C_m Bb_m,
//   K[l] = 2 Re sum_m c_m z_m^l,   l = bT + t  (block b, offset t < T)
//        = 2 Re sum_m (c_m z_m^(bT)) (z_m^t),
// a product of an (L/T x M) matrix and an (M x T) matrix. Splitting the
// complex product into real parts makes it one real GEMM with inner size
// 2M, which runs near the machine's peak instead of a scalar power loop.
// Powers inside a block come from repeated multiplication (T - 1 products),
// block starts from powers of z^T = exp(T log z) (L/T products): rounding
// grows with the number of products, about sqrt(L) here instead of L for a
// plain recurrence, and there are only 2M complex exponentials per channel.

#include <algorithm>
#include <cmath>

#include <Eigen/Dense>

#include "absl/strings/str_cat.h"
#include "check.h"
#include "parallel.h"
#include "stopper.h"
#include "ssm/kernel.h"

namespace ssm {

absl::StatusOr<RowMatrixXd> DiagonalKernel(const DplrSystem& s, int length,
                                           Discretization method, StopCheck stop) {
  if (length < 1) {
    return absl::InvalidArgumentError(absl::StrCat("length must be >= 1, got ", length));
  }
  if (auto st = ValidateDplr(s); !st.ok()) return st;
  if (s.rank() != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "DiagonalKernel needs a diagonal (rank 0) system, got rank ", s.rank(),
        "; use DplrKernel"));
  }
  const DiagonalSystem cont{Eigen::MatrixXcd(s.lambda), Eigen::MatrixXcd(s.B)};
  absl::StatusOr<DiagonalSystem> disc = DiscretizeDiagonal(cont, s.dt, method);
  if (!disc.ok()) return disc.status();

  const int h_count = s.channels(), m = s.modes();
  const int block = std::min(length, std::max(16, static_cast<int>(std::sqrt(length))));
  const int blocks = (length + block - 1) / block;
  internal::Stopper stopper(stop);
  RowMatrixXd k(h_count, length);
  internal::ParallelFor(h_count, 1, [&](int64_t begin, int64_t end) {
    RowMatrixXd v(blocks, 2 * m), w(2 * m, block), out(blocks, block);
    for (int64_t h = begin; h < end; ++h) {
      if (stopper.Stop()) return;
      for (int j = 0; j < m; ++j) {
        const cdouble z = disc->A(h, j);
        // ZOH: log z = dt lambda exactly; bilinear: the principal log.
        const cdouble zt = method.kind == Discretization::Kind::kZoh
                               ? std::exp(double(block) * s.dt(h) * s.lambda(h, j))
                               : (z == 0.0 ? cdouble(0) : std::exp(double(block) * std::log(z)));
        cdouble p = 1.0;
        for (int t = 0; t < block; ++t, p *= z) {
          w(j, t) = p.real();
          w(m + j, t) = p.imag();
        }
        p = s.C(h, j) * disc->B(h, j);
        for (int b = 0; b < blocks; ++b, p *= zt) {
          v(b, j) = 2 * p.real();
          v(b, m + j) = -2 * p.imag();
        }
      }
      out.noalias() = v * w;
      // Row h of K is the first `length` entries of `out` read row by row.
      Eigen::Map<Eigen::RowVectorXd>(k.row(h).data(), length) =
          Eigen::Map<const Eigen::RowVectorXd>(out.data(), blocks * block).head(length);
    }
  });
  if (stopper.stopped()) return stopper.status();
  return k;
}

}  // namespace ssm
