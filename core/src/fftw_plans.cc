#include "fftw_plans.h"

#include <fftw3.h>

#include <algorithm>
#include <cassert>
#include <map>
#include <mutex>
#include <new>
#include <utility>

#include "absl/strings/str_cat.h"

namespace ssm::internal {
namespace {

// One mutex for both precisions: planning is rare, and one lock is simpler
// to reason about than two. Recursive because a plan's deleter takes it too,
// and a plan may be released while it is held (an exception between planning
// and caching). Leaked so that a plan released during static destruction
// still finds it.
std::recursive_mutex& PlannerMutex() {
  static auto* mu = new std::recursive_mutex;
  return *mu;
}

template <typename T>
struct CachedPlan {
  std::shared_ptr<const FftPlan<T>> plan;
  uint64_t last_used = 0;  // PlanCache::clock at the latest request
};

template <typename T>
struct PlanCache {
  std::map<std::pair<int, FftType>, CachedPlan<T>> plans;
  uint64_t clock = 0;
};

// Guarded by PlannerMutex(). Leaked like the worker pool: a plan handed out
// stays valid even for threads still running at exit.
template <typename T>
PlanCache<T>& Cache() {
  static auto* cache = new PlanCache<T>;
  return *cache;
}

// Plans on scratch arrays allocated like the ones it will run on. With
// FFTW_ESTIMATE the planner reads neither array; only their alignment counts.
fftw_plan_s* MakePlan(double*, int n, FftType type) {
  FftwBuffer<std::complex<double>> a(n), b(n);
  auto* ca = reinterpret_cast<fftw_complex*>(a.data());
  auto* cb = reinterpret_cast<fftw_complex*>(b.data());
  auto* real = reinterpret_cast<double*>(a.data());
  switch (type) {
    case FftType::kR2c:
      return fftw_plan_dft_r2c_1d(n, real, cb, FFTW_ESTIMATE);
    case FftType::kC2r:
      return fftw_plan_dft_c2r_1d(n, cb, real, FFTW_ESTIMATE);
    case FftType::kC2cForward:
      return fftw_plan_dft_1d(n, ca, cb, FFTW_FORWARD, FFTW_ESTIMATE);
    case FftType::kC2cBackward:
      return fftw_plan_dft_1d(n, ca, cb, FFTW_BACKWARD, FFTW_ESTIMATE);
  }
  return nullptr;
}

fftwf_plan_s* MakePlan(float*, int n, FftType type) {
  FftwBuffer<std::complex<float>> a(n), b(n);
  auto* ca = reinterpret_cast<fftwf_complex*>(a.data());
  auto* cb = reinterpret_cast<fftwf_complex*>(b.data());
  auto* real = reinterpret_cast<float*>(a.data());
  switch (type) {
    case FftType::kR2c:
      return fftwf_plan_dft_r2c_1d(n, real, cb, FFTW_ESTIMATE);
    case FftType::kC2r:
      return fftwf_plan_dft_c2r_1d(n, cb, real, FFTW_ESTIMATE);
    case FftType::kC2cForward:
      return fftwf_plan_dft_1d(n, ca, cb, FFTW_FORWARD, FFTW_ESTIMATE);
    case FftType::kC2cBackward:
      return fftwf_plan_dft_1d(n, ca, cb, FFTW_BACKWARD, FFTW_ESTIMATE);
  }
  return nullptr;
}

const char* TypeName(FftType type) {
  switch (type) {
    case FftType::kR2c:
      return "r2c";
    case FftType::kC2r:
      return "c2r";
    case FftType::kC2cForward:
      return "forward c2c";
    case FftType::kC2cBackward:
      return "backward c2c";
  }
  return "?";
}

}  // namespace

int64_t NextSmoothSize(int64_t min_size) {
  min_size = std::max<int64_t>(min_size, 1);
  int64_t best = 1;
  while (best < min_size) best *= 2;
  // Every 2^a 3^b 5^c 7^d >= min_size: for each odd part below `best`, the
  // smallest power-of-two multiple that reaches min_size.
  for (int64_t p7 = 1; p7 < best; p7 *= 7) {
    for (int64_t p5 = p7; p5 < best; p5 *= 5) {
      for (int64_t p3 = p5; p3 < best; p3 *= 3) {
        int64_t p = p3;
        while (p < min_size) p *= 2;
        best = std::min(best, p);
      }
    }
  }
  return best;
}

void* FftwMalloc(size_t bytes) {
  void* p = fftw_malloc(bytes);
  if (p == nullptr && bytes != 0) throw std::bad_alloc();
  return p;
}

void FftwFree(void* p) { fftw_free(p); }

void FftwPlanDeleter::operator()(fftw_plan_s* plan) const {
  std::lock_guard<std::recursive_mutex> lock(PlannerMutex());
  fftw_destroy_plan(plan);
}

void FftwPlanDeleter::operator()(fftwf_plan_s* plan) const {
  std::lock_guard<std::recursive_mutex> lock(PlannerMutex());
  fftwf_destroy_plan(plan);
}

// FFTW's execute functions take non-const inputs; out-of-place r2c and c2c
// plans made without FFTW_DESTROY_INPUT preserve them, so the const_casts
// are safe.
template <>
void FftPlan<double>::R2c(const double* in, Complex* out) const {
  assert(type_ == FftType::kR2c);
  fftw_execute_dft_r2c(plan_.get(), const_cast<double*>(in), reinterpret_cast<fftw_complex*>(out));
}

template <>
void FftPlan<float>::R2c(const float* in, Complex* out) const {
  assert(type_ == FftType::kR2c);
  fftwf_execute_dft_r2c(plan_.get(), const_cast<float*>(in), reinterpret_cast<fftwf_complex*>(out));
}

template <>
void FftPlan<double>::C2r(Complex* in, double* out) const {
  assert(type_ == FftType::kC2r);
  fftw_execute_dft_c2r(plan_.get(), reinterpret_cast<fftw_complex*>(in), out);
}

template <>
void FftPlan<float>::C2r(Complex* in, float* out) const {
  assert(type_ == FftType::kC2r);
  fftwf_execute_dft_c2r(plan_.get(), reinterpret_cast<fftwf_complex*>(in), out);
}

template <>
void FftPlan<double>::C2c(const Complex* in, Complex* out) const {
  assert(type_ == FftType::kC2cForward || type_ == FftType::kC2cBackward);
  fftw_execute_dft(plan_.get(), reinterpret_cast<fftw_complex*>(const_cast<Complex*>(in)),
                   reinterpret_cast<fftw_complex*>(out));
}

template <>
void FftPlan<float>::C2c(const Complex* in, Complex* out) const {
  assert(type_ == FftType::kC2cForward || type_ == FftType::kC2cBackward);
  fftwf_execute_dft(plan_.get(), reinterpret_cast<fftwf_complex*>(const_cast<Complex*>(in)),
                    reinterpret_cast<fftwf_complex*>(out));
}

template <typename T>
absl::StatusOr<std::shared_ptr<const FftPlan<T>>> GetFftPlan(int size, FftType type) {
  if (size < 1 || size > (1 << 30)) {
    return absl::InvalidArgumentError(absl::StrCat("FFT size must be in [1, 2^30], got ", size));
  }
  std::lock_guard<std::recursive_mutex> lock(PlannerMutex());
  PlanCache<T>& cache = Cache<T>();
  const auto key = std::make_pair(size, type);
  if (auto it = cache.plans.find(key); it != cache.plans.end()) {
    it->second.last_used = ++cache.clock;
    return it->second.plan;
  }
  std::unique_ptr<typename FftPlan<T>::Plan, FftwPlanDeleter> plan(
      MakePlan(static_cast<T*>(nullptr), size, type));
  if (plan == nullptr) {
    return absl::InternalError(
        absl::StrCat("FFTW returned no ", TypeName(type), " plan for size ", size));
  }
  auto shared = std::make_shared<const FftPlan<T>>(size, type, std::move(plan));
  if (static_cast<int>(cache.plans.size()) >= kMaxCachedFftPlans) {
    // The least recently used goes; whoever holds it keeps a working plan
    // (the shared_ptr), destroyed when the last holder lets go.
    auto oldest = std::min_element(
        cache.plans.begin(), cache.plans.end(),
        [](const auto& a, const auto& b) { return a.second.last_used < b.second.last_used; });
    cache.plans.erase(oldest);
  }
  cache.plans.emplace(key, CachedPlan<T>{shared, ++cache.clock});
  return shared;
}

template <typename T>
int CachedFftPlans() {
  std::lock_guard<std::recursive_mutex> lock(PlannerMutex());
  return static_cast<int>(Cache<T>().plans.size());
}

template absl::StatusOr<std::shared_ptr<const FftPlan<float>>> GetFftPlan<float>(int, FftType);
template absl::StatusOr<std::shared_ptr<const FftPlan<double>>> GetFftPlan<double>(int, FftType);
template int CachedFftPlans<float>();
template int CachedFftPlans<double>();

}  // namespace ssm::internal
