#ifndef SSM_CORE_SRC_LEGENDRE_H_
#define SSM_CORE_SRC_LEGENDRE_H_

namespace ssm::internal {

// out[k] = P_k(x) for k < n, by Bonnet's recurrence
// (k+1) P_{k+1} = (2k+1) x P_k - k P_{k-1}, which is stable on [-1, 1].
void LegendreValues(double x, int n, double* out);

}  // namespace ssm::internal

#endif  // SSM_CORE_SRC_LEGENDRE_H_
