// The core's FFTW plan cache and SIMD-aligned buffers. Every FFTW plan the
// core uses comes from here.
//
// FFTW's planner (plan creation and destruction, in either precision) is not
// thread-safe, but executing a plan on new arrays (fftw_execute_dft,
// _dft_r2c, _dft_c2r) is. So plans are made once per (precision, size, type)
// under one process-wide mutex, shared, and executed concurrently without a
// lock.
// Code that plans with FFTW outside this file would race with it: don't.
//
// New-array execution requires arrays with the alignment the plan was made
// for. Plans here are made on fftw_malloc'd arrays (SIMD-aligned), out of
// place, so every execution must use distinct, fftw_malloc'd (FftwBuffer)
// arrays too: never a pointer into a std::vector, nor one at an offset into
// an FftwBuffer (fftw_malloc's alignment, 16 to 64 bytes, depends on the SIMD
// FFTW was built with).
//
// Transforms follow FFTW's manual: forward X_j = sum_t x_t e^(-2 pi i jt/n);
// backward x_t = sum_j X_j e^(+2 pi i jt/n), n times the inverse DFT
// (unnormalized). The real ones keep the n/2 + 1 bins j = 0..n/2 of a
// Hermitian spectrum; c2r overwrites its input.
//
// Plans use FFTW_ESTIMATE: planning takes at most a few ms and reads no
// data. FFTW_MEASURE finds plans ~25% faster at n = 8192 on the development
// machine, but costs 0.15-0.35 s per plan there (more for larger n), under
// the planner lock, and it picks plans by timing, so results could differ
// in the last bits from run to run; ESTIMATE's are reproducible. A wisdom
// file would give speed and reproducibility both, if it ever matters.

#ifndef SSM_CORE_SRC_FFTW_PLANS_H_
#define SSM_CORE_SRC_FFTW_PLANS_H_

#include <complex>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <type_traits>
#include <utility>

#include "absl/status/statusor.h"

// FFTW's opaque plan types (fftw_plan is fftw_plan_s*), so that including
// this header does not need <fftw3.h>.
struct fftw_plan_s;
struct fftwf_plan_s;

namespace ssm::internal {

// The smallest n >= min_size (clamped to >= 1) whose only prime factors are
// 2, 3, 5 and 7, FFTW's fast sizes. It is never above the next power of two.
int64_t NextSmoothSize(int64_t min_size);

// fftw_malloc / fftw_free: the same aligned allocator for both precisions.
// FftwMalloc throws std::bad_alloc when out of memory, like operator new.
void* FftwMalloc(size_t bytes);
void FftwFree(void* p);

// An owned, uninitialized, SIMD-aligned array of `size` values of T (float,
// double or their std::complex, which FFTW's manual guarantees is layout-
// compatible with fftw_complex / fftwf_complex). Movable, not copyable.
template <typename T>
class FftwBuffer {
  static_assert(std::is_trivially_copyable_v<T>);

 public:
  FftwBuffer() = default;
  explicit FftwBuffer(size_t size)
      : data_(size == 0 ? nullptr : static_cast<T*>(FftwMalloc(size * sizeof(T)))), size_(size) {}

  T* data() const { return data_.get(); }
  size_t size() const { return size_; }
  T& operator[](size_t i) const { return data_[i]; }

 private:
  struct Free {
    void operator()(T* p) const { FftwFree(p); }
  };
  std::unique_ptr<T[], Free> data_;
  size_t size_ = 0;
};

// The transforms, by FFTW's sign convention: forward is e^(-2 pi i jt/n),
// backward e^(+2 pi i jt/n), unnormalized.
enum class FftType {
  kR2c,          // n reals -> n/2 + 1 complex, forward
  kC2r,          // n/2 + 1 complex -> n reals, backward (overwrites input)
  kC2cForward,   // n complex -> n complex
  kC2cBackward,  // n complex -> n complex
};

template <typename T>
struct FftwPlanType;
template <>
struct FftwPlanType<double> {
  using type = fftw_plan_s;
};
template <>
struct FftwPlanType<float> {
  using type = fftwf_plan_s;
};

// Destroys a plan under the planner mutex (fftw_destroy_plan is part of the
// planner, so it must not run while another thread plans).
struct FftwPlanDeleter {
  void operator()(fftw_plan_s* plan) const;
  void operator()(fftwf_plan_s* plan) const;
};

// One plan: T = float or double, a size and a type. Execution is const and
// thread-safe; arrays as described above (distinct, fftw_malloc'd). Call the
// method of the plan's type (checked with assert only).
template <typename T>
class FftPlan {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>);

 public:
  using Plan = typename FftwPlanType<T>::type;
  using Complex = std::complex<T>;

  FftPlan(int size, FftType type, std::unique_ptr<Plan, FftwPlanDeleter> plan)
      : size_(size), type_(type), plan_(std::move(plan)) {}

  int size() const { return size_; }
  FftType type() const { return type_; }

  // kR2c: in (n reals, preserved) -> out (n/2 + 1).
  void R2c(const T* in, Complex* out) const;
  // kC2r: in (n/2 + 1, overwritten) -> out (n reals).
  void C2r(Complex* in, T* out) const;
  // kC2cForward or kC2cBackward: in (n, preserved) -> out (n).
  void C2c(const Complex* in, Complex* out) const;

 private:
  int size_;
  FftType type_;
  std::unique_ptr<Plan, FftwPlanDeleter> plan_;
};

template <>
void FftPlan<double>::R2c(const double* in, Complex* out) const;
template <>
void FftPlan<float>::R2c(const float* in, Complex* out) const;
template <>
void FftPlan<double>::C2r(Complex* in, double* out) const;
template <>
void FftPlan<float>::C2r(Complex* in, float* out) const;
template <>
void FftPlan<double>::C2c(const Complex* in, Complex* out) const;
template <>
void FftPlan<float>::C2c(const Complex* in, Complex* out) const;

// The shared plan for (T, size, type), planned on the first request and
// reused by later ones (the same object while it stays cached). Callers may
// keep the pointer as long as they like. The cache holds the
// kMaxCachedFftPlans most recently used plans per precision: sizes come
// from requests (sequence lengths, Math RPCs), and a plan's twiddles grow
// with its size, so an unbounded cache would let callers grow the process
// without limit; a server's working set of sizes is far smaller.
// Thread-safe. InvalidArgument for size < 1 or > 2^30; Internal if FFTW
// returns no plan (not expected with FFTW_ESTIMATE).
inline constexpr int kMaxCachedFftPlans = 64;
template <typename T>
absl::StatusOr<std::shared_ptr<const FftPlan<T>>> GetFftPlan(int size, FftType type);
// Plans of precision T the cache holds now (for tests).
template <typename T>
int CachedFftPlans();

}  // namespace ssm::internal

#endif  // SSM_CORE_SRC_FFTW_PLANS_H_
