#include "ssm/discretize.h"

#include <cmath>
#include <complex>
#include <limits>
#include <unsupported/Eigen/MatrixFunctions>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "check.h"

namespace ssm {
namespace {

using Eigen::MatrixXd;
using Eigen::VectorXd;
using cd = std::complex<double>;

absl::Status CheckMethod(Discretization method) {
  if (method.kind == Discretization::Kind::kGbt && !(method.alpha >= 0.0 && method.alpha <= 1.0)) {
    return absl::InvalidArgumentError(absl::StrCat("alpha must be in [0, 1], got ", method.alpha));
  }
  return absl::OkStatus();
}

absl::Status CheckSystem(const ContinuousSystem& s) {
  if (s.A.rows() < 1 || s.A.rows() != s.A.cols()) {
    return internal::ShapeError("A", "square and non-empty", s.A.rows(), s.A.cols());
  }
  if (s.B.size() != s.A.rows()) {
    return absl::InvalidArgumentError(
        absl::StrCat("B must have N = ", s.A.rows(), " entries to match A, got ", s.B.size()));
  }
  if (auto st = internal::CheckAllFinite(s.A, "A"); !st.ok()) return st;
  return internal::CheckAllFinite(s.B, "B");
}

// A discrete system that overflowed (dt A past what the method can carry:
// exp of a large positive eigenvalue, Euler's I + dt A with dt near
// DBL_MAX) would make every later step Inf or NaN; refused, naming dt.
template <typename MA, typename MB>
absl::Status CheckDiscreteFinite(const MA& a, const MB& b, absl::string_view dt_name, double dt) {
  for (const absl::Status& st :
       {internal::CheckAllFinite(a, "Ab"), internal::CheckAllFinite(b, "Bb")}) {
    if (!st.ok()) {
      return absl::InvalidArgumentError(absl::StrCat("the discretized system overflows at ",
                                                     dt_name, " = ", dt, " (", st.message(),
                                                     "); choose a smaller step"));
    }
  }
  return absl::OkStatus();
}

// The validated core of the dense discretization; arguments already checked.
absl::StatusOr<DiscreteSystem> DiscretizeChecked(const ContinuousSystem& s, double dt,
                                                 Discretization method) {
  const Eigen::Index n = s.A.rows();
  if (method.kind == Discretization::Kind::kZoh) {
    // exp(dt [[A, B], [0, 0]]) = [[exp(dt A), int_0^dt exp(tA) dt B], [0, 1]].
    MatrixXd aug = MatrixXd::Zero(n + 1, n + 1);
    aug.topLeftCorner(n, n) = dt * s.A;
    aug.topRightCorner(n, 1) = dt * s.B;
    const MatrixXd e = aug.exp();
    DiscreteSystem out{e.topLeftCorner(n, n), e.topRightCorner(n, 1)};
    if (absl::Status st = CheckDiscreteFinite(out.A, out.B, "dt", dt); !st.ok()) return st;
    return out;
  }
  const double a = method.alpha;
  const MatrixXd id = MatrixXd::Identity(n, n);
  const Eigen::PartialPivLU<MatrixXd> lu(id - (a * dt) * s.A);
  // rcond is an estimate; below ~eps the solve returns noise, not an answer.
  if (!(lu.rcond() > 4 * std::numeric_limits<double>::epsilon())) {
    return absl::InvalidArgumentError(absl::StrCat("I - alpha*dt*A is singular (alpha = ", a,
                                                   ", dt = ", dt,
                                                   "); choose another dt or discretization"));
  }
  DiscreteSystem out{lu.solve(id + ((1 - a) * dt) * s.A), lu.solve(dt * s.B)};
  if (absl::Status st = CheckDiscreteFinite(out.A, out.B, "dt", dt); !st.ok()) return st;
  return out;
}

// (exp(z) - 1) / z without the 0/0 at z = 0 or the cancellation near it.
cd Phi1(cd z) {
  if (std::abs(z) < 0.5) {
    // sum_k z^k / (k+1)!; 20 terms leave < 0.5^20/21! of the sum.
    cd term = 1.0, sum = 1.0;
    for (int k = 1; k < 20; ++k) {
      term *= z / static_cast<double>(k + 1);
      sum += term;
    }
    return sum;
  }
  return (std::exp(z) - 1.0) / z;
}

}  // namespace

absl::StatusOr<Discretization> ParseDiscretization(absl::string_view text) {
  const std::string t = absl::AsciiStrToLower(text);
  if (t == "forward" || t == "euler") return Discretization::ForwardEuler();
  if (t == "backward") return Discretization::BackwardEuler();
  if (t == "bilinear" || t == "tustin") return Discretization::Bilinear();
  if (t == "zoh") return Discretization::Zoh();
  double alpha = 0;
  if (absl::StartsWith(t, "gbt:") && absl::SimpleAtod(absl::string_view(t).substr(4), &alpha)) {
    const Discretization d = Discretization::Gbt(alpha);
    if (auto st = CheckMethod(d); !st.ok()) return st;
    return d;
  }
  return absl::InvalidArgumentError(
      absl::StrCat("discretization: unknown '", text,
                   "' (expected forward, backward, bilinear, zoh or gbt:<alpha>)"));
}

absl::StatusOr<DiscreteSystem> Discretize(const ContinuousSystem& system, double dt,
                                          Discretization method) {
  if (auto st = CheckSystem(system); !st.ok()) return st;
  if (auto st = CheckMethod(method); !st.ok()) return st;
  if (auto st = internal::CheckPositiveFinite(dt, "dt"); !st.ok()) return st;
  return DiscretizeChecked(system, dt, method);
}

absl::StatusOr<std::vector<DiscreteSystem>> Discretize(const ContinuousSystem& system,
                                                       const VectorXd& dt, Discretization method) {
  if (auto st = CheckSystem(system); !st.ok()) return st;
  if (auto st = CheckMethod(method); !st.ok()) return st;
  if (dt.size() < 1) {
    return absl::InvalidArgumentError("dt must have one entry per channel, got 0");
  }
  for (Eigen::Index h = 0; h < dt.size(); ++h) {
    if (auto st = internal::CheckPositiveFinite(dt(h), absl::StrCat("dt[", h, "]")); !st.ok()) {
      return st;
    }
  }
  std::vector<DiscreteSystem> out;
  out.reserve(dt.size());
  for (Eigen::Index h = 0; h < dt.size(); ++h) {
    absl::StatusOr<DiscreteSystem> d = DiscretizeChecked(system, dt(h), method);
    if (!d.ok()) {
      return absl::InvalidArgumentError(absl::StrCat("channel ", h, ": ", d.status().message()));
    }
    out.push_back(*std::move(d));
  }
  return out;
}

absl::StatusOr<DiagonalSystem> DiscretizeDiagonal(const DiagonalSystem& system, const VectorXd& dt,
                                                  Discretization method) {
  const Eigen::MatrixXcd& lambda = system.A;
  const Eigen::MatrixXcd& b = system.B;
  if (lambda.rows() < 1 || lambda.cols() < 1) {
    return internal::ShapeError("Lambda", "H x N with H, N >= 1", lambda.rows(), lambda.cols());
  }
  if (b.rows() != lambda.rows() || b.cols() != lambda.cols()) {
    return internal::ShapeError(
        "B", absl::StrCat(lambda.rows(), " x ", lambda.cols(), " (as Lambda)"), b.rows(), b.cols());
  }
  if (dt.size() != lambda.rows()) {
    return absl::InvalidArgumentError(
        absl::StrCat("dt must have H = ", lambda.rows(), " entries, got ", dt.size()));
  }
  if (auto st = internal::CheckAllFinite(lambda, "Lambda"); !st.ok()) return st;
  if (auto st = internal::CheckAllFinite(b, "B"); !st.ok()) return st;
  if (auto st = CheckMethod(method); !st.ok()) return st;
  for (Eigen::Index h = 0; h < dt.size(); ++h) {
    if (auto st = internal::CheckPositiveFinite(dt(h), absl::StrCat("dt[", h, "]")); !st.ok()) {
      return st;
    }
  }

  DiagonalSystem out{Eigen::MatrixXcd(lambda.rows(), lambda.cols()),
                     Eigen::MatrixXcd(lambda.rows(), lambda.cols())};
  for (Eigen::Index h = 0; h < lambda.rows(); ++h) {
    const double d = dt(h);
    for (Eigen::Index n = 0; n < lambda.cols(); ++n) {
      const cd z = d * lambda(h, n);
      if (method.kind == Discretization::Kind::kZoh) {
        out.A(h, n) = std::exp(z);
        out.B(h, n) = d * Phi1(z) * b(h, n);
      } else {
        const double a = method.alpha;
        const cd denom = 1.0 - a * z;
        if (std::abs(denom) == 0.0) {
          return absl::InvalidArgumentError(
              absl::StrCat("1 - alpha*dt*Lambda is zero at channel ", h, ", mode ", n));
        }
        out.A(h, n) = (1.0 + (1.0 - a) * z) / denom;
        out.B(h, n) = d * b(h, n) / denom;
      }
    }
    if (absl::Status st =
            CheckDiscreteFinite(out.A.row(h), out.B.row(h), absl::StrCat("dt[", h, "]"), d);
        !st.ok()) {
      return st;
    }
  }
  return out;
}

absl::StatusOr<MatrixXd> MatrixExp(const MatrixXd& a) {
  if (a.rows() != a.cols()) {
    return internal::ShapeError("matrix", "square", a.rows(), a.cols());
  }
  if (auto st = internal::CheckAllFinite(a, "matrix"); !st.ok()) return st;
  if (a.size() == 0) return MatrixXd(0, 0);
  return MatrixXd(a.exp());
}

}  // namespace ssm
