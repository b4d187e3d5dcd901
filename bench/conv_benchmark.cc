// FFT causal convolution (fft_conv.h). Argument order is fixed so figures
// stay comparable across commits:
//   BM_ConvForward/<B>/<H>/<L>        float32 Apply, kernel already transformed
//   BM_ConvForwardDouble/<B>/<H>/<L>  the same in double
//   BM_ConvKernelPrep/<H>/<L>         float32 Create: the kernel's spectra
// Times are wall-clock (the work runs on the core's worker pool).

#include <cmath>
#include <random>
#include <string>
#include <vector>

#include <benchmark/benchmark.h>

#include "ssm/fft_conv.h"

namespace ssm {
namespace {

template <typename T>
typename FftConvolver<T>::Matrix RandomKernel(int h, int length) {
  std::mt19937_64 gen(7);
  std::uniform_real_distribution<T> dist(-1, 1);
  typename FftConvolver<T>::Matrix k(h, length);
  // An S4-like decaying kernel; the values do not change the cost.
  for (int i = 0; i < h; ++i)
    for (int l = 0; l < length; ++l) k(i, l) = dist(gen) * std::exp(T(-1e-3) * l);
  return k;
}

template <typename T>
void BM_ConvForwardImpl(benchmark::State& state) {
  const int batch = static_cast<int>(state.range(0));
  const int h = static_cast<int>(state.range(1));
  const int length = static_cast<int>(state.range(2));
  const FftConvolver<T> conv = *FftConvolver<T>::Create(
      RandomKernel<T>(h, length), FftConvolver<T>::Vector::Constant(h, T(0.5)), length);
  std::mt19937_64 gen(3);
  std::uniform_real_distribution<T> dist(-1, 1);
  std::vector<T> u(size_t(batch) * h * length), y(u.size());
  for (T& v : u) v = dist(gen);
  for (auto _ : state) {
    const absl::Status s = conv.Apply(u, batch, absl::MakeSpan(y));
    if (!s.ok()) state.SkipWithError(s.ToString().c_str());
    benchmark::DoNotOptimize(y.data());
    benchmark::ClobberMemory();
  }
  state.SetItemsProcessed(state.iterations() * int64_t{batch} * h * length);
  state.SetLabel("n=" + std::to_string(conv.fft_size()));
}

void BM_ConvForward(benchmark::State& state) { BM_ConvForwardImpl<float>(state); }
BENCHMARK(BM_ConvForward)
    ->Args({1, 256, 1024})
    ->Args({8, 256, 1024})
    ->Args({8, 256, 4096})
    ->Args({1, 256, 16384})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();

void BM_ConvForwardDouble(benchmark::State& state) { BM_ConvForwardImpl<double>(state); }
BENCHMARK(BM_ConvForwardDouble)
    ->Args({8, 256, 4096})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();

void BM_ConvKernelPrep(benchmark::State& state) {
  const int h = static_cast<int>(state.range(0));
  const int length = static_cast<int>(state.range(1));
  const RowMatrixXf k = RandomKernel<float>(h, length);
  const Eigen::VectorXf d = Eigen::VectorXf::Constant(h, 0.5f);
  for (auto _ : state) {
    absl::StatusOr<FftConvolver<float>> conv = FftConvolver<float>::Create(k, d, length);
    if (!conv.ok()) state.SkipWithError(conv.status().ToString().c_str());
    benchmark::DoNotOptimize(conv);
  }
}
BENCHMARK(BM_ConvKernelPrep)
    ->Args({256, 4096})
    ->Args({256, 16384})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();

}  // namespace
}  // namespace ssm
