// The S4 kernel through its generating function (Gu et al., S4, Alg. 1).
//
// With the bilinear discretization, the length-L kernel's DFT at the roots
// of unity w_j = exp(-2 pi i j / L) is
//   Khat_j = 2/(1 + w_j) * C~^T (z_j - A)^-1 B,   z_j = (2/dt)(1 - w_j)/(1 + w_j),
// and for w_j = exp(-i theta): (1 - w)/(1 + w) = i tan(theta/2) and
// 2/(1 + w) = 1 + i tan(theta/2). Writing them through tan keeps both finite
// (if huge) at the Nyquist point, where 1 + w = 0. With A = Lambda - P P^*,
// Woodbury turns the resolvent into Cauchy sums over the diagonal:
//   k = k_CB - k_CP (I + k_QP)^-1 k_QB,   k_XY = sum_n X_n Y_n / (z - lambda_n)
// over the conjugate-doubled modes, Q = P (so k_Q* uses conj P). K is real,
// so only j = 0..L/2 are needed; one inverse real FFT gives K.

#include <algorithm>
#include <cmath>
#include <numbers>
#include <vector>

#include <Eigen/Dense>

#include "absl/strings/str_cat.h"
#include "check.h"
#include "fftw_plans.h"
#include "kernel_internal.h"
#include "parallel.h"
#include "stopper.h"
#include "ssm/cauchy.h"
#include "ssm/kernel.h"

namespace ssm {
namespace {

// Channels per Cauchy call: bounds the (r+1)^2 x H x (L/2+1) intermediate
// (17 MB at rank 1, L = 16384) instead of materializing it for every channel.
constexpr int kChannelBlock = 32;

}  // namespace

absl::StatusOr<RowMatrixXd> DplrKernel(const DplrSystem& s, int length, StopCheck stop) {
  if (length < 1) {
    return absl::InvalidArgumentError(absl::StrCat("length must be >= 1, got ", length));
  }
  if (auto st = ValidateDplr(s); !st.ok()) return st;
  const int r = s.rank();
  if (r > kMaxRank) {
    return absl::InvalidArgumentError(
        absl::StrCat("DplrKernel: rank must be <= ", kMaxRank, ", got ", r));
  }
  const int h_count = s.channels(), m = s.modes();
  // z_0 = 0 (w = 1) is always a point, so a mode at lambda = 0 makes the
  // generating function singular there even when the mode is never excited
  // (even-N FouT's sin(0) pair). Say so instead of returning NaNs.
  for (int h = 0; h < h_count; ++h) {
    for (int n = 0; n < m; ++n) {
      if (s.lambda(h, n) == 0.0) {
        return absl::InvalidArgumentError(absl::StrCat(
            "DplrKernel: channel ", h, " has a mode at Lambda = 0, a pole at w = 1 "
            "where the generating function is singular (even-N FouT has one); use "
            "NaiveKernel or a system without a zero mode"));
      }
    }
  }
  const int points = length / 2 + 1;
  const int sets = (r + 1) * (r + 1);

  // tan(pi j / L) for the half spectrum; at j = L/2 this is tan(pi/2) ~ 1.6e16.
  Eigen::VectorXd tangent(points);
  for (int j = 0; j < points; ++j) {
    tangent(j) = std::tan(std::numbers::pi * j / length);
  }

  absl::StatusOr<std::shared_ptr<const internal::FftPlan<double>>> plan =
      internal::GetFftPlan<double>(length, internal::FftType::kC2r);
  if (!plan.ok()) return plan.status();

  internal::Stopper stopper(stop);
  RowMatrixXd kernel(h_count, length);
  for (int h0 = 0; h0 < h_count; h0 += kChannelBlock) {
    if (stopper.Stop()) return stopper.status();
    const int hb = std::min(kChannelBlock, h_count - h0);
    // Right factors [B, P_1..P_r], left factors [C~, conj P_1..conj P_r];
    // set (a, b) = left_b * right_a, stored at index a * (r + 1) + b.
    std::vector<RowMatrixXcd> v(sets, RowMatrixXcd(hb, m));
    auto right = [&](int a) -> auto {
      return (a == 0 ? s.B : s.P[a - 1]).middleRows(h0, hb);
    };
    for (int a = 0; a <= r; ++a) {
      for (int b = 0; b <= r; ++b) {
        const RowMatrixXcd left = b == 0 ? RowMatrixXcd(s.C.middleRows(h0, hb))
                                         : RowMatrixXcd(s.P[b - 1].middleRows(h0, hb).conjugate());
        v[a * (r + 1) + b] = left.cwiseProduct(right(a));
      }
    }
    RowMatrixXcd z(hb, points);
    for (int i = 0; i < hb; ++i) {
      const double scale = 2.0 / s.dt(h0 + i);
      for (int j = 0; j < points; ++j) z(i, j) = cdouble(0.0, scale * tangent(j));
    }
    // All (r+1)^2 sets in one call share each 1/(z - lambda) computation.
    absl::StatusOr<std::vector<RowMatrixXcd>> sums =
        CauchyConjugateSums(s.lambda.middleRows(h0, hb), v, z, stop);
    if (!sums.ok()) return sums.status();
    const std::vector<RowMatrixXcd>& k = *sums;

    internal::ParallelFor(hb, 1, [&](int64_t begin, int64_t end) {
      // FFTW executes new-array plans only on fftw_malloc'd (aligned) arrays.
      internal::FftwBuffer<cdouble> spectrum(points);
      internal::FftwBuffer<double> signal(length);
      using Small = Eigen::Matrix<cdouble, Eigen::Dynamic, Eigen::Dynamic, 0, kMaxRank, kMaxRank>;
      using SmallVec = Eigen::Matrix<cdouble, Eigen::Dynamic, 1, 0, kMaxRank, 1>;
      Small g(r, r);
      SmallVec u(r), w(r);
      for (int64_t i = begin; i < end; ++i) {
        if (stopper.Stop()) return;
        for (int j = 0; j < points; ++j) {
          cdouble value = k[0](i, j);  // k_CB
          if (r == 1) {
            // a / b as a conj(b) / |b|^2: std::complex's operator/ is a
            // library call with inf/NaN recovery, 10% of the kernel's time,
            // and 1 + k_QP is finite and far from 0 here.
            const cdouble b = 1.0 + k[3](i, j);
            value -= k[2](i, j) * k[1](i, j) * std::conj(b) / std::norm(b);
          } else if (r > 1) {
            for (int a = 0; a < r; ++a) {
              u(a) = k[(a + 1) * (r + 1)](i, j);  // k_{C P_a}
              w(a) = k[a + 1](i, j);              // k_{conj(P_a) B}
              for (int b = 0; b < r; ++b) {
                // Row a: conj(P_a); column b: P_b.
                g(a, b) = (a == b ? 1.0 : 0.0) + k[(b + 1) * (r + 1) + a + 1](i, j);
              }
            }
            const SmallVec x = g.partialPivLu().solve(w);
            value -= u.cwiseProduct(x).sum();
          }
          spectrum[j] = cdouble(1.0, tangent(j)) * value;
        }
        (*plan)->C2r(spectrum.data(), signal.data());  // unnormalized
        for (int l = 0; l < length; ++l) kernel(h0 + i, l) = signal[l] / length;
      }
    });
    if (stopper.stopped()) return stopper.status();
  }
  return kernel;
}

}  // namespace ssm
