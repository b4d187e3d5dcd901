// Convolutional mode of one SSM layer (H channels): a whole chunk of T
// steps at once,
//   y = K * u + D u  (causal FFT convolution)  + Re(Cf^T Ab^(l+1) x0),
// starting from a carried state x0 and, on request, returning the state after
// the chunk, so a sequence split into chunks of any sizes gives the same
// outputs as one call, and the recurrent mode (recurrent.h) can take over
// mid-sequence from the returned state (same layout: batch x H x 2M).
//
// The kernel is built once for max_length (DplrKernel for rank > 0,
// bilinear; DiagonalKernel for rank 0). The carried-state terms cost a GEMM
// per channel for diagonal systems and O(T M r) steps for low-rank ones.
//
// Errors: InvalidArgument naming the argument (bad system, T outside
// [1, max_length], sizes that disagree, non-finite input or state); outputs
// and state are untouched then. Thread safety: Forward is const and may run
// concurrently.

#ifndef SSM_CONV_MODE_H_
#define SSM_CONV_MODE_H_

#include <cstdint>
#include <memory>

#include <Eigen/Core>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "ssm/discretize.h"
#include "ssm/dplr.h"
#include "ssm/recurrent.h"
#include "ssm/types.h"

namespace ssm {

class ConvMode {
 public:
  // system.C is C (not C~). d has H entries.
  static absl::StatusOr<ConvMode> Create(const DplrSystem& system,
                                         const Eigen::VectorXd& d,
                                         Discretization method, int max_length);

  int channels() const;
  int max_length() const;
  int state_size() const;  // doubles per session, H x 2M
  const RowMatrixXd& kernel() const;  // H x max_length

  // The FFT convolvers' cache (one per rung of chunk lengths): lookups that
  // found one, lookups that built one, and the bytes of kernel spectra held.
  struct CacheStats {
    int64_t hits = 0;
    int64_t misses = 0;
    int64_t spectra_bytes = 0;
  };
  CacheStats cache_stats() const;

  // u, y: batch x H x steps. state_in: empty (zero state) or
  // batch x state_size(); state_out: empty (not wanted) or the same size
  // (may alias state_in).
  absl::Status Forward(absl::Span<const double> u, int batch, int steps,
                       absl::Span<const double> state_in, absl::Span<double> y,
                       absl::Span<double> state_out) const;

  ConvMode(ConvMode&&) noexcept;
  ConvMode& operator=(ConvMode&&) noexcept;
  ~ConvMode();

 private:
  struct Rep;
  explicit ConvMode(std::unique_ptr<Rep> rep);
  std::unique_ptr<Rep> rep_;
};

}  // namespace ssm

#endif  // SSM_CONV_MODE_H_
