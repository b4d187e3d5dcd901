#include "ssm/fft_conv.h"

#include <algorithm>
#include <atomic>
#include <bit>
#include <cmath>
#include <complex>
#include <cstdint>
#include <utility>

#include "absl/strings/str_cat.h"
#include "check.h"
#include "fftw_plans.h"
#include "parallel.h"

namespace ssm {
namespace {

using internal::FftPlan;
using internal::FftType;
using internal::FftwBuffer;
using internal::GetFftPlan;
using internal::ParallelFor;

// About this many FFT samples per block before another thread is worth
// waking (a block of this size takes ~100 us).
constexpr int64_t kSamplesPerBlock = 1 << 16;

// Transforms (kernel rows in Create, row pairs in Apply) per block.
int64_t TransformsPerBlock(int fft_size) {
  return std::max<int64_t>(1, kSamplesPerBlock / fft_size);
}

// Finite iff the exponent bits are not all ones. Integer work on the bit
// patterns vectorizes; a floating-point test (isfinite, x - x == 0) would be
// kept scalar by strict IEEE semantics.
bool AllFinite(const float* x, int64_t count) {
  uint32_t bad = 0;
  for (int64_t i = 0; i < count; ++i) {
    bad |= static_cast<uint32_t>((std::bit_cast<uint32_t>(x[i]) & 0x7f800000u) == 0x7f800000u);
  }
  return bad == 0;
}

bool AllFinite(const double* x, int64_t count) {
  uint64_t bad = 0;
  for (int64_t i = 0; i < count; ++i) {
    constexpr uint64_t kExp = 0x7ff0000000000000ull;
    bad |= static_cast<uint64_t>((std::bit_cast<uint64_t>(x[i]) & kExp) == kExp);
  }
  return bad == 0;
}

// Two real rows a, b are transformed as one complex signal z = a + i b. In
// flops one complex FFT costs what the two real ones do, but FFTW's complex
// plans are the better vectorized (its real-data ones run an SSE2 pass): on
// the development machine this takes half the time of r2c + c2r per row.
// With A = FFT(a), B = FFT(b) Hermitian, Z[j] + conj Z[n-j] = 2 A[j] and
// (Z[j] - conj Z[n-j]) / i = 2 B[j]. This turns Z in place into
//   W = A Ka + i B Kb,
// whose inverse FFT is (a * ka) + i (b * kb): the real part is row a's
// convolution and the imaginary part row b's. W's upper half is written as
// the conjugate of its lower half, so the real and imaginary parts separate
// exactly; only the FFTs round. ka, kb: the half spectra (n/2 + 1 bins) of
// the rows' kernels, scaled by 1/(2n) (the 2 of 2A, 2B and the inverse FFT's
// n). Plain loops over real and imaginary parts, which GCC vectorizes at -O3
// (std::complex's operator* takes an Annex G path for NaN/inf instead).
template <typename T>
void CombineSpectra(std::complex<T>* spectrum, const std::complex<T>* kernel_a,
                    const std::complex<T>* kernel_b, int n) {
  T* __restrict z = reinterpret_cast<T*>(spectrum);
  const T* __restrict ka = reinterpret_cast<const T*>(kernel_a);
  const T* __restrict kb = reinterpret_cast<const T*>(kernel_b);
  // j = 0 and, for even n, j = n/2 pair with themselves; their kernel bins
  // are real.
  z[0] = 2 * z[0] * ka[0];
  z[1] = 2 * z[1] * kb[0];
  if (n % 2 == 0) {
    z[n] = 2 * z[n] * ka[n];
    z[n + 1] = 2 * z[n + 1] * kb[n];
  }
  for (int j = 1; j < (n + 1) / 2; ++j) {
    const int m = n - j;
    const T ar = z[2 * j], ai = z[2 * j + 1], br = z[2 * m], bi = z[2 * m + 1];
    const T uar = ar + br, uai = ai - bi;  // 2 A[j]
    const T ubr = ai + bi, ubi = br - ar;  // 2 B[j]
    const T kar = ka[2 * j], kai = ka[2 * j + 1], kbr = kb[2 * j], kbi = kb[2 * j + 1];
    const T yar = uar * kar - uai * kai, yai = uar * kai + uai * kar;
    const T ybr = ubr * kbr - ubi * kbi, ybi = ubr * kbi + ubi * kbr;
    z[2 * j] = yar - ybi;
    z[2 * j + 1] = yai + ybr;
    z[2 * m] = yar + ybi;
    z[2 * m + 1] = ybr - yai;
  }
}

}  // namespace

template <typename T>
struct FftConvolver<T>::Rep {
  int channels = 0;
  int length = 0;
  int fft_size = 0;
  int bins = 0;    // fft_size / 2 + 1
  int stride = 0;  // bins rounded up to a cache line, spectra row stride
  std::shared_ptr<const FftPlan<T>> forward, backward;  // complex
  FftwBuffer<std::complex<T>> spectra;  // H x stride, half spectra / (2n)
  Vector d;
};

template <typename T>
absl::StatusOr<FftConvolver<T>> FftConvolver<T>::Create(
    const Eigen::Ref<const Matrix>& kernel, const Eigen::Ref<const Vector>& d,
    int length) {
  if (length < 1 || length > kMaxFftConvLength) {
    return absl::InvalidArgumentError(absl::StrCat(
        "length must be in [1, ", kMaxFftConvLength, "], got ", length));
  }
  if (kernel.rows() < 1 || kernel.cols() < length) {
    return internal::ShapeError(
        "K", absl::StrCat("H x Lk with H >= 1 and Lk >= length = ", length),
        kernel.rows(), kernel.cols());
  }
  if (d.size() != kernel.rows()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "D must have H = ", kernel.rows(), " entries (one per row of K), got ",
        d.size()));
  }
  // Only the taps in use: a longer kernel's tail is ignored, values included.
  if (auto s = internal::CheckAllFinite(kernel.leftCols(length), "K"); !s.ok()) return s;
  if (auto s = internal::CheckAllFinite(d, "D"); !s.ok()) return s;

  auto rep = std::make_shared<Rep>();
  rep->channels = static_cast<int>(kernel.rows());
  rep->length = length;
  rep->fft_size = static_cast<int>(internal::NextSmoothSize(2 * int64_t{length}));
  rep->bins = rep->fft_size / 2 + 1;
  constexpr int kPerLine = 64 / sizeof(std::complex<T>);
  rep->stride = (rep->bins + kPerLine - 1) / kPerLine * kPerLine;
  absl::StatusOr<std::shared_ptr<const FftPlan<T>>> r2c =
      GetFftPlan<T>(rep->fft_size, FftType::kR2c);
  if (!r2c.ok()) return r2c.status();
  absl::StatusOr<std::shared_ptr<const FftPlan<T>>> forward =
      GetFftPlan<T>(rep->fft_size, FftType::kC2cForward);
  if (!forward.ok()) return forward.status();
  absl::StatusOr<std::shared_ptr<const FftPlan<T>>> backward =
      GetFftPlan<T>(rep->fft_size, FftType::kC2cBackward);
  if (!backward.ok()) return backward.status();
  rep->forward = *std::move(forward);
  rep->backward = *std::move(backward);
  rep->spectra = FftwBuffer<std::complex<T>>(size_t(rep->channels) * rep->stride);
  rep->d = d;

  const Rep& r = *rep;
  const FftPlan<T>& r2c_plan = **r2c;
  const T scale = T(1) / (2 * static_cast<T>(r.fft_size));
  ParallelFor(r.channels, TransformsPerBlock(r.fft_size), [&](int64_t begin, int64_t end) {
    // FFTW writes only to arrays aligned as at planning time, so it goes
    // through scratch rather than straight into a row of the spectra.
    FftwBuffer<T> padded(r.fft_size);
    FftwBuffer<std::complex<T>> spectrum(r.bins);
    std::fill(padded.data() + length, padded.data() + r.fft_size, T(0));
    for (int64_t h = begin; h < end; ++h) {
      std::copy_n(kernel.row(h).data(), length, padded.data());
      r2c_plan.R2c(padded.data(), spectrum.data());
      std::complex<T>* row = r.spectra.data() + h * r.stride;
      for (int j = 0; j < r.bins; ++j) row[j] = spectrum[j] * scale;
      std::fill(row + r.bins, row + r.stride, std::complex<T>(0));
    }
  });
  return FftConvolver(std::move(rep));
}

template <typename T>
int FftConvolver<T>::channels() const {
  return rep_->channels;
}

template <typename T>
int FftConvolver<T>::length() const {
  return rep_->length;
}

template <typename T>
int FftConvolver<T>::fft_size() const {
  return rep_->fft_size;
}

template <typename T>
absl::Status FftConvolver<T>::Apply(absl::Span<const T> u, int batch, int steps,
                                    absl::Span<T> y) const {
  const Rep& r = *rep_;
  if (batch < 0) {
    return absl::InvalidArgumentError(absl::StrCat("batch must be >= 0, got ", batch));
  }
  if (steps < 1 || steps > r.length) {
    return absl::InvalidArgumentError(absl::StrCat(
        "steps must be in [1, length = ", r.length, "], got ", steps));
  }
  const int h_count = r.channels;
  const int64_t rows = int64_t{batch} * h_count;
  const int64_t count = rows * steps;
  for (const auto& [name, size] : {std::pair<const char*, size_t>{"u", u.size()},
                                   std::pair<const char*, size_t>{"y", y.size()}}) {
    if (size != static_cast<size_t>(count)) {
      return absl::InvalidArgumentError(absl::StrCat(
          name, " must hold batch x H x steps = ", batch, " x ", h_count, " x ", steps,
          " = ", count, " values, got ", size));
    }
  }
  if (count == 0) return absl::OkStatus();
  {
    const auto u0 = reinterpret_cast<uintptr_t>(u.data());
    const auto y0 = reinterpret_cast<uintptr_t>(y.data());
    const uintptr_t bytes = static_cast<uintptr_t>(count) * sizeof(T);
    if (u0 < y0 + bytes && y0 < u0 + bytes) {
      return absl::InvalidArgumentError("y must not overlap u");
    }
  }

  // Every input is checked before any output is written, so a bad value
  // leaves y untouched. A separate pass over u costs a few percent.
  std::atomic<bool> finite{true};
  ParallelFor(rows, std::max<int64_t>(1, kSamplesPerBlock / steps),
              [&](int64_t begin, int64_t end) {
                if (!AllFinite(u.data() + begin * steps, (end - begin) * steps)) {
                  finite.store(false, std::memory_order_relaxed);
                }
              });
  if (!finite.load()) {
    for (int64_t i = 0; i < count; ++i) {
      if (!std::isfinite(u[i])) {
        const int64_t row = i / steps;
        return absl::InvalidArgumentError(absl::StrCat(
            "u has a non-finite value ", u[i], " at (b, h, t) = (", row / h_count, ", ",
            row % h_count, ", ", i % steps, ")"));
      }
    }
  }

  // Rows in channel-major order, i = h * batch + b, go through the FFTs two
  // at a time (CombineSpectra); consecutive rows mostly share a kernel
  // spectrum (32 KB for float at L = 4096) while it is still in cache.
  const int n = r.fft_size;
  const int64_t pairs = (rows + 1) / 2;
  ParallelFor(pairs, TransformsPerBlock(n), [&](int64_t begin, int64_t end) {
    // Per-block scratch from fftw_malloc: new-array execution needs the
    // planning-time alignment. The input's zero padding is written once per
    // block, since the transforms never write to their input.
    FftwBuffer<std::complex<T>> in(n), spectrum(n), out(n);
    std::fill(in.data() + steps, in.data() + n, std::complex<T>(0));
    T* z = reinterpret_cast<T*>(in.data());
    const T* w = reinterpret_cast<const T*>(out.data());
    for (int64_t p = begin; p < end; ++p) {
      const int64_t ia = 2 * p, ib = std::min(2 * p + 1, rows - 1);
      const int64_t ha = ia / batch, hb = ib / batch;
      const int64_t offset_a = (ia % batch * h_count + ha) * steps;
      const int64_t offset_b = (ib % batch * h_count + hb) * steps;
      const T* ua = u.data() + offset_a;
      // An odd row count leaves the last row alone: pair it with zeros.
      const bool alone = ib == ia;
      if (alone) {
        for (int t = 0; t < steps; ++t) z[2 * t] = ua[t], z[2 * t + 1] = 0;
      } else {
        const T* ub = u.data() + offset_b;
        for (int t = 0; t < steps; ++t) z[2 * t] = ua[t], z[2 * t + 1] = ub[t];
      }
      r.forward->C2c(in.data(), spectrum.data());
      CombineSpectra(spectrum.data(), r.spectra.data() + ha * r.stride,
                     r.spectra.data() + hb * r.stride, n);
      r.backward->C2c(spectrum.data(), out.data());
      T* ya = y.data() + offset_a;
      const T da = r.d(ha);
      for (int t = 0; t < steps; ++t) ya[t] = w[2 * t] + da * ua[t];
      if (!alone) {
        const T* ub = u.data() + offset_b;
        T* yb = y.data() + offset_b;
        const T db = r.d(hb);
        for (int t = 0; t < steps; ++t) yb[t] = w[2 * t + 1] + db * ub[t];
      }
    }
  });
  return absl::OkStatus();
}

template class FftConvolver<float>;
template class FftConvolver<double>;

namespace {

template <typename T>
absl::Status CausalConvImpl(const Eigen::Ref<const typename FftConvolver<T>::Matrix>& kernel,
                            const Eigen::Ref<const typename FftConvolver<T>::Vector>& d,
                            absl::Span<const T> u, int batch, int steps, absl::Span<T> y) {
  // Checked here so that the message names steps, not Create's length.
  if (steps < 1 || steps > kMaxFftConvLength) {
    return absl::InvalidArgumentError(absl::StrCat(
        "steps must be in [1, ", kMaxFftConvLength, "], got ", steps));
  }
  absl::StatusOr<FftConvolver<T>> conv = FftConvolver<T>::Create(kernel, d, steps);
  if (!conv.ok()) return conv.status();
  return conv->Apply(u, batch, steps, y);
}

}  // namespace

absl::Status CausalConv(const Eigen::Ref<const RowMatrixXf>& kernel,
                        const Eigen::Ref<const Eigen::VectorXf>& d,
                        absl::Span<const float> u, int batch, int steps,
                        absl::Span<float> y) {
  return CausalConvImpl<float>(kernel, d, u, batch, steps, y);
}

absl::Status CausalConv(const Eigen::Ref<const RowMatrixXd>& kernel,
                        const Eigen::Ref<const Eigen::VectorXd>& d,
                        absl::Span<const double> u, int batch, int steps,
                        absl::Span<double> y) {
  return CausalConvImpl<double>(kernel, d, u, batch, steps, y);
}

}  // namespace ssm
