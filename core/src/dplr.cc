#include "ssm/dplr.h"

#include <algorithm>
#include <cmath>
#include <numbers>
#include <random>

#include <Eigen/Eigenvalues>
#include <Eigen/SVD>

#include "absl/strings/str_cat.h"
#include "check.h"

namespace ssm {
namespace {

using Eigen::MatrixXcd;
using Eigen::MatrixXd;
using Eigen::VectorXcd;
using Eigen::VectorXd;

absl::Status CheckShape(const RowMatrixXcd& m, absl::string_view name,
                        Eigen::Index rows, Eigen::Index cols) {
  if (m.rows() != rows || m.cols() != cols) {
    return internal::ShapeError(name, absl::StrCat(rows, " x ", cols), m.rows(),
                                m.cols());
  }
  return internal::CheckAllFinite(m, name);
}

// Standard normal samples from mt19937_64 by Box-Muller: unlike
// std::normal_distribution, the sequence is the same on every platform, so
// a seed names the same weights everywhere.
class Normal {
 public:
  explicit Normal(uint64_t seed) : gen_(seed) {}
  double operator()() {
    if (has_spare_) {
      has_spare_ = false;
      return spare_;
    }
    // 53-bit uniforms in (0, 1].
    const double u1 = (static_cast<double>(gen_() >> 11) + 1.0) * 0x1.0p-53;
    const double u2 = static_cast<double>(gen_() >> 11) * 0x1.0p-53;
    const double r = std::sqrt(-2.0 * std::log(u1));
    spare_ = r * std::sin(2 * std::numbers::pi * u2);
    has_spare_ = true;
    return r * std::cos(2 * std::numbers::pi * u2);
  }

 private:
  std::mt19937_64 gen_;
  double spare_ = 0;
  bool has_spare_ = false;
};

absl::Status CheckInitArgs(int h, double dt_min, double dt_max) {
  if (auto st = internal::CheckStateSize(h, "H"); !st.ok()) return st;
  if (auto st = internal::CheckPositiveFinite(dt_min, "dt_min"); !st.ok()) return st;
  if (auto st = internal::CheckPositiveFinite(dt_max, "dt_max"); !st.ok()) return st;
  if (dt_max < dt_min) {
    return absl::InvalidArgumentError(
        absl::StrCat("dt_max (", dt_max, ") must be >= dt_min (", dt_min, ")"));
  }
  return absl::OkStatus();
}

absl::Status CheckBClip(double b_clip) {
  if (!(b_clip > 0)) {
    return absl::InvalidArgumentError(
        absl::StrCat("b_clip must be > 0 (+infinity: no clip), got ", b_clip));
  }
  return absl::OkStatus();
}

// The reference's B_clip: B.real + 1j * clamp(B.imag, -b_clip, b_clip).
Eigen::VectorXcd ClipImag(const Eigen::VectorXcd& b, double b_clip) {
  Eigen::VectorXcd out = b;
  for (Eigen::Index i = 0; i < out.size(); ++i) {
    out(i) = cdouble(out(i).real(), std::clamp(out(i).imag(), -b_clip, b_clip));
  }
  return out;
}

// Shared tail of the initializers: C, dt.
void FillCAndDt(DplrSystem& s, int h, int m, double dt_min, double dt_max,
                uint64_t seed) {
  Normal normal(seed);
  s.C.resize(h, m);
  const double sd = std::sqrt(0.5);
  for (int i = 0; i < h; ++i)
    for (int j = 0; j < m; ++j) {
      // Two statements, not two arguments of one call (whose order C++
      // leaves open): imaginary part first, as GCC evaluated the old
      // cdouble(sd * normal(), sd * normal()), so seeds keep their weights.
      const double imag = sd * normal();
      const double real = sd * normal();
      s.C(i, j) = cdouble(real, imag);
    }
  s.dt.resize(h);
  const double lo = std::log(dt_min), hi = std::log(dt_max);
  for (int i = 0; i < h; ++i) {
    s.dt(i) = std::exp(lo + (hi - lo) * (i + 0.5) / h);
  }
}

}  // namespace

absl::Status ValidateDplr(const DplrSystem& s) {
  const Eigen::Index h = s.lambda.rows(), m = s.lambda.cols();
  if (h < 1 || m < 1) {
    return internal::ShapeError("Lambda", "H x M with H, M >= 1", h, m);
  }
  if (auto st = internal::CheckAllFinite(s.lambda, "Lambda"); !st.ok()) return st;
  for (size_t a = 0; a < s.P.size(); ++a) {
    if (auto st = CheckShape(s.P[a], absl::StrCat("P[", a, "]"), h, m); !st.ok()) return st;
  }
  if (auto st = CheckShape(s.B, "B", h, m); !st.ok()) return st;
  if (auto st = CheckShape(s.C, "C", h, m); !st.ok()) return st;
  if (s.dt.size() != h) {
    return absl::InvalidArgumentError(
        absl::StrCat("dt must have H = ", h, " entries, got ", s.dt.size()));
  }
  for (Eigen::Index i = 0; i < h; ++i) {
    if (auto st = internal::CheckPositiveFinite(s.dt(i), absl::StrCat("dt[", i, "]"));
        !st.ok()) {
      return st;
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<Nplr> MakeNplr(Measure measure, int n, const HippoOptions& options) {
  if (n < 2 || n % 2 != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "N must be even and >= 2 for a DPLR decomposition (modes come in "
        "conjugate pairs), got ", n));
  }
  absl::StatusOr<ContinuousSystem> sys = MakeHippo(measure, n, options);
  if (!sys.ok()) return sys.status();
  absl::StatusOr<LowRankCorrection> lr = MakeLowRankCorrection(measure, n);
  if (!lr.ok()) return lr.status();
  const int m = n / 2;

  const MatrixXd skew = sys->A + lr->P * lr->P.transpose() -
                        lr->shift * MatrixXd::Identity(n, n);
  // -i S is Hermitian for skew-symmetric S; its eigenvalues w give S's i w.
  const MatrixXcd herm = cdouble(0, -1) * skew.cast<cdouble>();
  Eigen::SelfAdjointEigenSolver<MatrixXcd> es(herm);
  if (es.info() != Eigen::Success) {
    return absl::InternalError("NPLR: Hermitian eigensolver did not converge");
  }
  const VectorXd& w = es.eigenvalues();  // ascending
  const double tol = 1e-9 * std::max(1.0, w.cwiseAbs().maxCoeff());
  int negative = 0, zero = 0;
  for (int i = 0; i < n; ++i) {
    if (w(i) < -tol) ++negative;
    else if (w(i) <= tol) ++zero;
  }
  // Real skew matrices pair i w with -i w, so zeros come in an even number.
  if (zero % 2 != 0 || negative + zero / 2 != m) {
    return absl::InternalError(absl::StrCat(
        "NPLR: unexpected spectrum (", negative, " negative, ", zero, " zero)"));
  }

  MatrixXcd v_half(n, m);
  VectorXcd lambda(m);
  for (int i = 0; i < negative; ++i) {
    v_half.col(i) = es.eigenvectors().col(i);
    lambda(i) = cdouble(lr->shift, w(i));
  }
  if (zero > 0) {
    // The zero eigenspace is real-spannable: take a real orthonormal basis
    // r_1..r_z of it and pair (r_2k +- i r_2k+1)/sqrt2, so the kept vector
    // and its conjugate are orthonormal and together span the space.
    const MatrixXcd u0 = es.eigenvectors().middleCols(negative, zero);
    MatrixXd re_im(n, 2 * zero);
    re_im << u0.real(), u0.imag();
    Eigen::JacobiSVD<MatrixXd> svd(re_im, Eigen::ComputeThinU);
    for (int k = 0; k < zero / 2; ++k) {
      v_half.col(negative + k) =
          (svd.matrixU().col(2 * k).cast<cdouble>() +
           cdouble(0, 1) * svd.matrixU().col(2 * k + 1).cast<cdouble>()) /
          std::numbers::sqrt2;
      lambda(negative + k) = cdouble(lr->shift, 0.0);
    }
  }

  Nplr out;
  out.lambda = lambda;
  out.P = v_half.adjoint() * lr->P.cast<cdouble>();
  out.B = v_half.adjoint() * sys->B.cast<cdouble>();
  out.V.resize(n, n);
  out.V << v_half, v_half.conjugate();
  return out;
}

absl::StatusOr<DplrSystem> MakeS4Init(Measure measure, int n, int h,
                                      double dt_min, double dt_max,
                                      uint64_t seed, double b_clip) {
  if (auto st = CheckInitArgs(h, dt_min, dt_max); !st.ok()) return st;
  if (auto st = CheckBClip(b_clip); !st.ok()) return st;
  absl::StatusOr<Nplr> nplr = MakeNplr(measure, n);
  if (!nplr.ok()) return nplr.status();
  const int m = n / 2;
  DplrSystem s;
  s.lambda = nplr->lambda.transpose().replicate(h, 1);
  s.B = ClipImag(nplr->B, b_clip).transpose().replicate(h, 1);
  for (Eigen::Index a = 0; a < nplr->P.cols(); ++a) {
    s.P.push_back(nplr->P.col(a).transpose().replicate(h, 1));
  }
  FillCAndDt(s, h, m, dt_min, dt_max, seed);
  return s;
}

absl::StatusOr<DplrSystem> MakeS4dInit(S4dInit init, int n, int h, double dt_min,
                                       double dt_max, uint64_t seed, double b_clip) {
  if (auto st = CheckInitArgs(h, dt_min, dt_max); !st.ok()) return st;
  if (auto st = CheckBClip(b_clip); !st.ok()) return st;
  if (n < 2 || n % 2 != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("N must be even and >= 2 (conjugate pairs), got ", n));
  }
  const int m = n / 2;
  DplrSystem s;
  if (init == S4dInit::kLegS) {
    absl::StatusOr<Nplr> nplr = MakeNplr(Measure::kLegS, n);
    if (!nplr.ok()) return nplr.status();
    s.lambda = nplr->lambda.transpose().replicate(h, 1);
    s.B = ClipImag(nplr->B, b_clip).transpose().replicate(h, 1);
  } else {
    s.lambda.resize(h, m);
    for (int j = 0; j < m; ++j) {
      const double imag =
          init == S4dInit::kLin
              ? std::numbers::pi * j
              : n / std::numbers::pi * (n / (2.0 * j + 1) - 1);
      s.lambda.col(j).setConstant(cdouble(-0.5, -imag));
    }
    s.B = RowMatrixXcd::Ones(h, m);
  }
  FillCAndDt(s, h, m, dt_min, dt_max, seed);
  return s;
}

}  // namespace ssm
