// Argument validation shared by the core's public entry points. Each helper
// returns InvalidArgument with a message that names the offending argument,
// so callers can surface it unchanged to users.

#ifndef SSM_CORE_SRC_CHECK_H_
#define SSM_CORE_SRC_CHECK_H_

#include <cmath>
#include <cstdint>

#include <Eigen/Core>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"

namespace ssm::internal {

inline absl::Status CheckStateSize(int64_t n, absl::string_view name = "N") {
  if (n < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat(name, " must be >= 1, got ", n));
  }
  return absl::OkStatus();
}

inline absl::Status CheckPositiveFinite(double v, absl::string_view name) {
  if (!std::isfinite(v) || !(v > 0)) {
    return absl::InvalidArgumentError(
        absl::StrCat(name, " must be finite and > 0, got ", v));
  }
  return absl::OkStatus();
}

// Every entry finite (works for real and complex Eigen expressions).
template <typename Derived>
absl::Status CheckAllFinite(const Eigen::DenseBase<Derived>& m,
                            absl::string_view name) {
  for (Eigen::Index j = 0; j < m.cols(); ++j) {
    for (Eigen::Index i = 0; i < m.rows(); ++i) {
      const auto v = m(i, j);
      if (!std::isfinite(std::real(v)) || !std::isfinite(std::imag(v))) {
        return absl::InvalidArgumentError(absl::StrCat(
            name, " has a non-finite entry at (", i, ", ", j, ")"));
      }
    }
  }
  return absl::OkStatus();
}

inline absl::Status ShapeError(absl::string_view name, absl::string_view want,
                               Eigen::Index rows, Eigen::Index cols) {
  return absl::InvalidArgumentError(absl::StrCat(
      name, " must be ", want, ", got ", rows, " x ", cols));
}

}  // namespace ssm::internal

#endif  // SSM_CORE_SRC_CHECK_H_
