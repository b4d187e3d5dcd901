#include "ssm/kernel.h"

#include <algorithm>
#include <cmath>
#include <numbers>
#include <vector>

#include <Eigen/Dense>
#include <unsupported/Eigen/MatrixFunctions>

#include "absl/strings/str_cat.h"
#include "check.h"
#include "kernel_internal.h"
#include "parallel.h"
#include "stopper.h"

namespace ssm {
namespace internal {

FullState MakeFullState(const DplrSystem& s, int h) {
  const int m = s.modes(), n = 2 * m, r = s.rank();
  FullState f;
  Eigen::VectorXcd lam(n);
  lam << s.lambda.row(h).transpose(), s.lambda.row(h).transpose().conjugate();
  Eigen::MatrixXcd pf(n, r);
  for (int a = 0; a < r; ++a) {
    pf.col(a) << s.P[a].row(h).transpose(), s.P[a].row(h).transpose().conjugate();
  }
  f.A = Eigen::MatrixXcd(lam.asDiagonal()) - pf * pf.adjoint();
  f.B.resize(n);
  f.B << s.B.row(h).transpose(), s.B.row(h).transpose().conjugate();
  f.C.resize(n);
  f.C << s.C.row(h).transpose(), s.C.row(h).transpose().conjugate();
  return f;
}

DiscreteFull DiscretizeFull(const FullState& f, double dt, Discretization method) {
  const Eigen::Index n = f.A.rows();
  if (method.kind == Discretization::Kind::kZoh) {
    Eigen::MatrixXcd aug = Eigen::MatrixXcd::Zero(n + 1, n + 1);
    aug.topLeftCorner(n, n) = dt * f.A;
    aug.topRightCorner(n, 1) = dt * f.B;
    const Eigen::MatrixXcd e = aug.exp();
    return {e.topLeftCorner(n, n), e.topRightCorner(n, 1)};
  }
  const double a = method.alpha;
  const Eigen::MatrixXcd id = Eigen::MatrixXcd::Identity(n, n);
  const Eigen::PartialPivLU<Eigen::MatrixXcd> lu(id - (a * dt) * f.A);
  return {lu.solve(id + ((1 - a) * dt) * f.A), lu.solve(dt * f.B)};
}

Eigen::MatrixXcd MatrixPower(const Eigen::MatrixXcd& a, int64_t p, Stopper* stop) {
  Eigen::MatrixXcd result = Eigen::MatrixXcd::Identity(a.rows(), a.cols());
  Eigen::MatrixXcd base = a;
  while (p > 0) {
    if (stop != nullptr && stop->Stop()) return result;
    if (p & 1) result = result * base;
    p >>= 1;
    if (p > 0) base = base * base;
  }
  return result;
}

}  // namespace internal

namespace {

using internal::DiscreteFull;
using internal::FullState;

absl::Status CheckCommon(const DplrSystem& s, int length, absl::string_view what) {
  if (length < 1) {
    return absl::InvalidArgumentError(absl::StrCat("length must be >= 1, got ", length));
  }
  if (auto st = ValidateDplr(s); !st.ok()) return st;
  if (s.rank() > kMaxRank) {
    return absl::InvalidArgumentError(absl::StrCat(
        what, ": rank must be <= ", kMaxRank, ", got ", s.rank()));
  }
  return absl::OkStatus();
}

absl::Status CheckMethod(Discretization method) {
  if (method.kind == Discretization::Kind::kGbt &&
      !(method.alpha >= 0 && method.alpha <= 1)) {
    return absl::InvalidArgumentError(
        absl::StrCat("alpha must be in [0, 1], got ", method.alpha));
  }
  return absl::OkStatus();
}

// Ab^L for channel h with the bilinear discretization. Meaningless once
// `stop` has stopped (the caller checks).
Eigen::MatrixXcd BilinearPower(const DplrSystem& s, int h, int64_t length,
                               FullState* full = nullptr,
                               internal::Stopper* stop = nullptr) {
  FullState f = internal::MakeFullState(s, h);
  const DiscreteFull d = internal::DiscretizeFull(f, s.dt(h), Discretization::Bilinear());
  if (full != nullptr) *full = std::move(f);
  return internal::MatrixPower(d.A, length, stop);
}

// Time steps of an n x n dense recurrence between two polls: about 2^20
// complex multiply-adds, a millisecond or less.
int StepsPerPoll(int64_t n) {
  return static_cast<int>(std::max<int64_t>(1, (int64_t{1} << 20) / (n * n)));
}

}  // namespace

absl::StatusOr<RowMatrixXd> NaiveKernel(const DplrSystem& s, int length,
                                        Discretization method, StopCheck stop) {
  if (auto st = CheckCommon(s, length, "NaiveKernel"); !st.ok()) return st;
  if (auto st = CheckMethod(method); !st.ok()) return st;
  internal::Stopper stopper(stop);
  const int steps_per_poll = StepsPerPoll(2 * int64_t{s.modes()});
  RowMatrixXd k(s.channels(), length);
  internal::ParallelFor(s.channels(), 1, [&](int64_t begin, int64_t end) {
    for (int64_t h = begin; h < end; ++h) {
      if (stopper.Stop()) return;
      const FullState f = internal::MakeFullState(s, static_cast<int>(h));
      const DiscreteFull d = internal::DiscretizeFull(f, s.dt(h), method);
      Eigen::VectorXcd x = d.B, next(x.size());
      for (int l = 0; l < length; ++l) {
        if (l % steps_per_poll == steps_per_poll - 1 && stopper.Stop()) return;
        k(h, l) = f.C.cwiseProduct(x).sum().real();  // Cf^T x: no conjugation
        next.noalias() = d.A * x;
        x.swap(next);
      }
    }
  });
  if (stopper.stopped()) return stopper.status();
  return k;
}

absl::StatusOr<RowMatrixXcd> CTilde(const DplrSystem& s, int length, StopCheck stop) {
  if (auto st = CheckCommon(s, length, "CTilde"); !st.ok()) return st;
  internal::Stopper stopper(stop);
  const int m = s.modes();
  RowMatrixXcd out(s.channels(), m);
  for (int h = 0; h < s.channels(); ++h) {
    if (stopper.Stop()) return stopper.status();
    FullState f;
    const Eigen::MatrixXcd p = BilinearPower(s, h, length, &f, &stopper);
    if (stopper.stopped()) return stopper.status();
    const Eigen::VectorXcd ct = f.C - p.transpose() * f.C;
    out.row(h) = ct.head(m).transpose();
  }
  return out;
}

absl::StatusOr<RowMatrixXcd> CFromCTilde(const DplrSystem& s, int length, StopCheck stop) {
  if (auto st = CheckCommon(s, length, "CFromCTilde"); !st.ok()) return st;
  internal::Stopper stopper(stop);
  const int m = s.modes(), n = 2 * m;
  RowMatrixXcd out(s.channels(), m);
  for (int h = 0; h < s.channels(); ++h) {
    if (stopper.Stop()) return stopper.status();
    FullState f;
    const Eigen::MatrixXcd p = BilinearPower(s, h, length, &f, &stopper);
    if (stopper.stopped()) return stopper.status();
    const Eigen::PartialPivLU<Eigen::MatrixXcd> lu(
        (Eigen::MatrixXcd::Identity(n, n) - p).transpose());
    if (!(lu.rcond() > 1e-12)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "channel ", h, ": I - Ab^", length,
          " is singular (a mode that never decays), so C cannot be recovered from C~"));
    }
    const Eigen::VectorXcd c = lu.solve(f.C);
    out.row(h) = c.head(m).transpose();
  }
  return out;
}

absl::StatusOr<RowMatrixXcd> ResizeCTilde(const DplrSystem& s, int from, int to) {
  if (auto st = CheckCommon(s, from, "ResizeCTilde"); !st.ok()) return st;
  if (to < 1) {
    return absl::InvalidArgumentError(absl::StrCat("to must be >= 1, got ", to));
  }
  if (to % from != 0) {
    absl::StatusOr<RowMatrixXcd> c = CFromCTilde(s, from);
    if (!c.ok()) return c.status();
    DplrSystem with_c = s;
    with_c.C = *std::move(c);
    return CTilde(with_c, to);
  }
  // I - Ab^(kL) = (I - Ab^L)(I + Ab^L + ... + Ab^((k-1)L)): no inverse needed,
  // so this also works when I - Ab^L is singular.
  const int m = s.modes(), n = 2 * m;
  const int k = to / from;
  RowMatrixXcd out(s.channels(), m);
  for (int h = 0; h < s.channels(); ++h) {
    FullState f;
    const Eigen::MatrixXcd p = BilinearPower(s, h, from, &f);
    Eigen::MatrixXcd sum = Eigen::MatrixXcd::Identity(n, n), term = sum;
    for (int i = 1; i < k; ++i) {
      term = term * p;
      sum += term;
    }
    const Eigen::VectorXcd ct = sum.transpose() * f.C;
    out.row(h) = ct.head(m).transpose();
  }
  return out;
}

}  // namespace ssm
