#include "legendre.h"

namespace ssm::internal {

void LegendreValues(double x, int n, double* out) {
  if (n <= 0) return;
  out[0] = 1.0;
  if (n == 1) return;
  out[1] = x;
  for (int k = 1; k + 1 < n; ++k) {
    out[k + 1] = ((2.0 * k + 1) * x * out[k] - k * out[k - 1]) / (k + 1);
  }
}

}  // namespace ssm::internal
