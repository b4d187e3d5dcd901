#include "ssm/hippo.h"

#include <cmath>
#include <numbers>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "check.h"

namespace ssm {
namespace {

using Eigen::MatrixXd;
using Eigen::VectorXd;

double Sign(int parity) { return (parity % 2 == 0) ? 1.0 : -1.0; }

ContinuousSystem LegS(int n) {
  ContinuousSystem s{MatrixXd::Zero(n, n), VectorXd(n)};
  for (int i = 0; i < n; ++i) {
    s.B(i) = std::sqrt(2.0 * i + 1);
    for (int k = 0; k < i; ++k) {
      s.A(i, k) = -std::sqrt((2.0 * i + 1) * (2.0 * k + 1));
    }
    s.A(i, i) = -(i + 1.0);
  }
  return s;
}

ContinuousSystem LegTS4(int n) {
  ContinuousSystem s{MatrixXd(n, n), VectorXd(n)};
  for (int i = 0; i < n; ++i) {
    const double ri = std::sqrt(2.0 * i + 1);
    s.B(i) = 0.5 * ri;
    for (int k = 0; k < n; ++k) {
      const double sign = (i >= k) ? 1.0 : Sign(k - i);
      s.A(i, k) = -0.5 * ri * std::sqrt(2.0 * k + 1) * sign;
    }
  }
  return s;
}

ContinuousSystem Lmu(int n, double theta) {
  ContinuousSystem s{MatrixXd(n, n), VectorXd(n)};
  for (int i = 0; i < n; ++i) {
    const double scale = (2.0 * i + 1) / theta;
    s.B(i) = scale * Sign(i);
    for (int k = 0; k < n; ++k) {
      s.A(i, k) = -scale * ((k <= i) ? Sign(i - k) : 1.0);
    }
  }
  return s;
}

ContinuousSystem LagT(int n, double beta) {
  ContinuousSystem s{MatrixXd::Zero(n, n), VectorXd::Constant(n, beta)};
  s.A.triangularView<Eigen::Lower>().setConstant(-1.0);
  s.A.diagonal().array() += 0.5;
  return s;
}

// FouT's basis: even N keeps the S4 reference's layout, (cos, sin) at
// frequency k on indices (2k, 2k+1), including the identically-zero sin(0)
// at index 1. Odd N drops that dead slot: 1, then (cos k, sin k) on
// (2k-1, 2k). Returns the index of frequency k's cosine.
int FouTCos(int n, int k) { return (n % 2 == 0) ? 2 * k : 2 * k - 1; }

VectorXd FouTInput(int n) {
  VectorXd b = VectorXd::Zero(n);
  b(0) = 1.0;
  for (int k = 1; FouTCos(n, k) < n; ++k) b(FouTCos(n, k)) = std::numbers::sqrt2;
  return b;
}

ContinuousSystem FouT(int n) {
  ContinuousSystem s{MatrixXd::Zero(n, n), FouTInput(n)};
  for (int k = 1; FouTCos(n, k) + 1 < n; ++k) {
    const int c = FouTCos(n, k);
    const double w = std::numbers::pi * k;
    s.A(c, c + 1) = -w;
    s.A(c + 1, c) = w;
  }
  s.A -= s.B * s.B.transpose();
  return s;
}

}  // namespace

absl::string_view MeasureName(Measure measure) {
  switch (measure) {
    case Measure::kLegS: return "legs";
    case Measure::kLegT: return "legt";
    case Measure::kLmu: return "lmu";
    case Measure::kLagT: return "lagt";
    case Measure::kFouT: return "fout";
  }
  return "unknown";
}

absl::StatusOr<Measure> ParseMeasure(absl::string_view name) {
  const std::string lower = absl::AsciiStrToLower(name);
  for (Measure m : {Measure::kLegS, Measure::kLegT, Measure::kLmu,
                    Measure::kLagT, Measure::kFouT}) {
    if (lower == MeasureName(m)) return m;
  }
  return absl::InvalidArgumentError(absl::StrCat(
      "measure: unknown name '", name,
      "' (expected one of legs, legt, lmu, lagt, fout)"));
}

absl::StatusOr<ContinuousSystem> MakeHippo(Measure measure, int n,
                                           const HippoOptions& options) {
  if (auto st = internal::CheckStateSize(n); !st.ok()) return st;
  switch (measure) {
    case Measure::kLegS:
      return LegS(n);
    case Measure::kLegT:
      return LegTS4(n);
    case Measure::kLmu:
      if (auto st = internal::CheckPositiveFinite(options.theta, "theta");
          !st.ok()) {
        return st;
      }
      return Lmu(n, options.theta);
    case Measure::kLagT:
      if (!std::isfinite(options.beta) || options.beta == 0) {
        return absl::InvalidArgumentError(absl::StrCat(
            "beta must be finite and nonzero, got ", options.beta));
      }
      return LagT(n, options.beta);
    case Measure::kFouT:
      return FouT(n);
  }
  return absl::InvalidArgumentError("measure: unknown enum value");
}

absl::StatusOr<LowRankCorrection> MakeLowRankCorrection(Measure measure,
                                                        int n) {
  if (auto st = internal::CheckStateSize(n); !st.ok()) return st;
  LowRankCorrection c;
  switch (measure) {
    case Measure::kLegS:
      c.P.resize(n, 1);
      for (int i = 0; i < n; ++i) c.P(i, 0) = std::sqrt(i + 0.5);
      c.shift = -0.5;
      return c;
    case Measure::kLegT:
      // The S4 reference orders the columns (odd entries, even entries).
      c.P = MatrixXd::Zero(n, 2);
      for (int i = 0; i < n; ++i) c.P(i, (i % 2 == 1) ? 0 : 1) = std::sqrt(i + 0.5);
      return c;
    case Measure::kLagT:
      c.P = MatrixXd::Constant(n, 1, std::sqrt(0.5));
      return c;
    case Measure::kFouT:
      c.P = FouTInput(n);
      return c;
    case Measure::kLmu:
      return absl::InvalidArgumentError(
          "measure: lmu has no symmetric low-rank correction (A + P Q^T with "
          "P != Q); use legt, which is similar to it");
  }
  return absl::InvalidArgumentError("measure: unknown enum value");
}

}  // namespace ssm
