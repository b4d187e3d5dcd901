// Causal convolution by FFT, the heart of the S4 convolutional mode: for a
// batch of inputs u (batch x H x T), a kernel K (H x Lk) and a skip D (H),
//
//   y[b,h,t] = sum_{s=0..t} K[h,s] u[b,h,t-s] + D[h] u[b,h,t],   t < T.
//
// Layout: u and y are row-major and contiguous, one (b, h) row of T samples
// after another (index (b H + h) T + t), as in recurrent.h and conv_mode.h.
//
// Method: zero-padded FFTs of size n = fft_size(), the smallest n >= 2L
// (L = the convolver's length) with no prime factor above 7, FFTW's fast
// sizes. The linear convolution of T <= L inputs with L taps fits in n, so it
// never wraps around: the result is causal, never circular. Create
// transforms the kernel once (the inverse FFT's 1/n folded in). Apply takes
// the (b, h) rows in channel-major order two at a time as the real and
// imaginary parts of one complex signal, one complex FFT of size n each way
// per pair (with FFTW, half the time of a real FFT each way per row), pairs
// in parallel on the core's worker pool. The D term is added in the time
// domain, so it is as exact as the product D[h] u[b,h,t].
//
// Memory: the spectra take H (n/2 + 1) complex values of T (8.4 MB for float
// at H = 256, L = 4096); Apply adds 3n complex values of scratch per thread.
//
// Precision: T = float (the serving path) or double, all arithmetic in T.
// Against the exact convolution, relative to max |y| over the call, the tests
// measure at most 4.6e-16 (double) and 3.7e-7 (float) for random inputs and
// kernels up to L = 4097, and assert 1e-12 and 1e-5. Like any FFT method the
// error is absolute, at about that level times the scale of the rows that
// share the FFTs: a row of values 1e-8 times smaller than the row it is
// paired with has a relative error of 2e-8 (double) on its own scale.
//
// Errors: InvalidArgument, with a message naming the argument (length, K, D,
// batch, steps, u, y); on error the outputs are untouched.
//
// Thread safety: a convolver is immutable after Create. Apply is const and
// may run concurrently on the same or different convolvers from any number of
// threads. Copies are cheap and share the (immutable) kernel spectra.

#ifndef SSM_FFT_CONV_H_
#define SSM_FFT_CONV_H_

#include <memory>
#include <type_traits>
#include <utility>

#include <Eigen/Core>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "ssm/types.h"

namespace ssm {

// The largest supported length: n <= 2^30 keeps FFTW's int sizes safe.
inline constexpr int kMaxFftConvLength = 1 << 29;

template <typename T>  // float or double
class FftConvolver {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>,
                "FftConvolver<T>: T must be float or double");

 public:
  using Matrix = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  using Vector = Eigen::Matrix<T, Eigen::Dynamic, 1>;

  // Transforms the first `length` taps of each of K's H rows (any further
  // columns are ignored, as are their values). Errors: length outside
  // [1, kMaxFftConvLength]; K with no rows or fewer than `length` columns;
  // D without H entries; a non-finite entry in D or in K's first `length`
  // columns. Costs about one Apply with batch 2.
  static absl::StatusOr<FftConvolver> Create(const Eigen::Ref<const Matrix>& kernel,
                                             const Eigen::Ref<const Vector>& d,
                                             int length);

  int channels() const;  // H
  int length() const;    // L: the longest input a call takes
  int fft_size() const;  // n

  // u and y hold batch x H x steps values (steps in [1, length()], batch
  // >= 0; batch 0 does nothing). y must not overlap u. Errors: batch or
  // steps out of range, a size that disagrees, overlapping u and y, and a
  // non-finite value in u (the message gives its (b, h, t)). The FFT size is
  // the same for every steps: short inputs cost as much as length() ones.
  absl::Status Apply(absl::Span<const T> u, int batch, int steps,
                     absl::Span<T> y) const;
  // steps = length().
  absl::Status Apply(absl::Span<const T> u, int batch, absl::Span<T> y) const {
    return Apply(u, batch, length(), y);
  }

 private:
  struct Rep;
  explicit FftConvolver(std::shared_ptr<const Rep> rep) : rep_(std::move(rep)) {}
  std::shared_ptr<const Rep> rep_;
};

extern template class FftConvolver<float>;
extern template class FftConvolver<double>;

// One-shot: FftConvolver::Create(kernel, d, steps) then Apply. Use a
// convolver instead when the kernel is reused: this transforms it each call.
absl::Status CausalConv(const Eigen::Ref<const RowMatrixXf>& kernel,
                        const Eigen::Ref<const Eigen::VectorXf>& d,
                        absl::Span<const float> u, int batch, int steps,
                        absl::Span<float> y);
absl::Status CausalConv(const Eigen::Ref<const RowMatrixXd>& kernel,
                        const Eigen::Ref<const Eigen::VectorXd>& d,
                        absl::Span<const double> u, int batch, int steps,
                        absl::Span<double> y);

}  // namespace ssm

#endif  // SSM_FFT_CONV_H_
