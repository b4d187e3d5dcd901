#include "ssm/hippo_memory.h"

#include <cmath>
#include <utility>

#include "absl/strings/str_cat.h"
#include "check.h"
#include "legendre.h"

namespace ssm {

using Eigen::MatrixXd;
using Eigen::VectorXd;

HippoMemory::HippoMemory(Kind kind, Discretization method, double window,
                         ContinuousSystem system)
    : kind_(kind),
      method_(method),
      window_(window),
      system_(std::move(system)),
      c_(VectorXd::Zero(system_.B.size())),
      scratch_(VectorXd::Zero(system_.B.size())) {}

absl::StatusOr<HippoMemory> HippoMemory::LegS(int n, Discretization method) {
  if (auto st = internal::CheckStateSize(n); !st.ok()) return st;
  if (method.kind != Discretization::Kind::kGbt) {
    return absl::InvalidArgumentError(
        "discretization: the LegS memory supports GBT methods (forward, "
        "backward, bilinear, gbt:<alpha>), not zoh");
  }
  if (!(method.alpha >= 0 && method.alpha <= 1)) {
    return absl::InvalidArgumentError(
        absl::StrCat("alpha must be in [0, 1], got ", method.alpha));
  }
  absl::StatusOr<ContinuousSystem> sys = MakeHippo(Measure::kLegS, n);
  if (!sys.ok()) return sys.status();
  return HippoMemory(Kind::kLegS, method, 0.0, *std::move(sys));
}

absl::StatusOr<HippoMemory> HippoMemory::LegT(int n, double window,
                                              Discretization method) {
  if (auto st = internal::CheckStateSize(n); !st.ok()) return st;
  if (auto st = internal::CheckPositiveFinite(window, "window"); !st.ok()) {
    return st;
  }
  // The window is measured in samples, so the step is one time unit.
  absl::StatusOr<ContinuousSystem> sys =
      MakeHippo(Measure::kLmu, n, HippoOptions{.theta = window});
  if (!sys.ok()) return sys.status();
  absl::StatusOr<DiscreteSystem> d = Discretize(*sys, 1.0, method);
  if (!d.ok()) return d.status();
  return HippoMemory(Kind::kLegT, method, window,
                     ContinuousSystem{std::move(d->A), std::move(d->B)});
}

void HippoMemory::Step(double f) {
  ++steps_;
  if (kind_ == Kind::kLegT) {
    scratch_.noalias() = system_.A * c_;
    c_ = scratch_ + system_.B * f;
    return;
  }
  if (steps_ == 1) {
    // One sample's history is a constant: its projection is f e_0. Starting
    // GBT from c = 0 instead leaves a start-up error that decays only like
    // 1/k. Because A e_0 = -B, every later GBT step keeps constants exact.
    c_.setZero();
    c_(0) = f;
    return;
  }
  // Step k uses (A/k, B/k); A is lower triangular, so the implicit part of
  // GBT is one forward substitution, O(N^2) and allocation-free. Both loops
  // walk A by columns, its storage order.
  const double inv_k = 1.0 / static_cast<double>(steps_);
  const double a = method_.alpha;
  const MatrixXd& A = system_.A;
  const Eigen::Index n = c_.size();
  scratch_.noalias() = A.triangularView<Eigen::Lower>() * c_;
  c_ += ((1 - a) * inv_k) * scratch_ + (inv_k * f) * system_.B;
  if (a == 0) return;
  const double g = a * inv_k;
  for (Eigen::Index j = 0; j < n; ++j) {
    c_(j) /= 1 - g * A(j, j);
    c_.tail(n - j - 1) += (g * c_(j)) * A.col(j).tail(n - j - 1);
  }
}

absl::Status HippoMemory::Update(double f) {
  if (!std::isfinite(f)) {
    return absl::InvalidArgumentError(
        absl::StrCat("sample must be finite, got ", f));
  }
  Step(f);
  return absl::OkStatus();
}

absl::Status HippoMemory::Update(absl::Span<const double> f) {
  for (size_t i = 0; i < f.size(); ++i) {
    if (!std::isfinite(f[i])) {
      return absl::InvalidArgumentError(
          absl::StrCat("sample ", i, " must be finite, got ", f[i]));
    }
  }
  for (double v : f) Step(v);
  return absl::OkStatus();
}

absl::StatusOr<MatrixXd> HippoMemory::EvalMatrix(
    absl::Span<const double> ages) const {
  const int n = size();
  MatrixXd e(ages.size(), n);
  VectorXd p(n);
  for (size_t j = 0; j < ages.size(); ++j) {
    const double r = ages[j];
    if (!(r >= 0.0 && r <= 1.0)) {
      return absl::InvalidArgumentError(
          absl::StrCat("ages[", j, "] must be in [0, 1], got ", r));
    }
    if (kind_ == Kind::kLegS) {
      internal::LegendreValues(1.0 - 2.0 * r, n, p.data());
      for (int k = 0; k < n; ++k) p(k) *= std::sqrt(2.0 * k + 1);
    } else {
      internal::LegendreValues(2.0 * r - 1.0, n, p.data());
    }
    e.row(j) = p.transpose();
  }
  return e;
}

absl::StatusOr<VectorXd> HippoMemory::Reconstruct(
    absl::Span<const double> ages) const {
  absl::StatusOr<MatrixXd> e = EvalMatrix(ages);
  if (!e.ok()) return e.status();
  return VectorXd(*e * c_);
}

double HippoMemory::SampleAge(double steps_back) const {
  const double window =
      kind_ == Kind::kLegT ? window_ : static_cast<double>(steps_);
  return window > 0 ? (steps_back + 0.5) / window : 0.0;
}

void HippoMemory::Reset() {
  c_.setZero();
  steps_ = 0;
}

absl::Status HippoMemory::Restore(absl::Span<const double> c, int64_t steps) {
  if (c.size() != static_cast<size_t>(c_.size())) {
    return absl::InvalidArgumentError(
        absl::StrCat("coefficients must have N = ", c_.size(), " values, got ", c.size()));
  }
  if (steps < 0) {
    return absl::InvalidArgumentError(absl::StrCat("steps must be >= 0, got ", steps));
  }
  for (size_t i = 0; i < c.size(); ++i) {
    if (!std::isfinite(c[i])) {
      return absl::InvalidArgumentError(
          absl::StrCat("coefficient ", i, " is not finite: ", c[i]));
    }
  }
  c_ = Eigen::Map<const Eigen::VectorXd>(c.data(), c_.size());
  steps_ = steps;
  return absl::OkStatus();
}

}  // namespace ssm
