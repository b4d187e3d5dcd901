// ssm_bench: Google Benchmark workloads for the core. Names keep their
// arguments in a fixed order so figures can be compared across commits:
//   BM_MakeHippo/<measure>/<N>
//   BM_Discretize<Method>/<N>             dense (A, B), one step size
//   BM_DiscretizeDiagonal<Method>/<H>/<N> per-channel diagonal system
//   BM_MatrixExp/<N>
//   BM_MemoryUpdate<LegS|LegT>/<N>        one sample into an online memory

#include <complex>

#include <benchmark/benchmark.h>

#include "ssm/discretize.h"
#include "ssm/hippo.h"
#include "ssm/hippo_memory.h"

namespace ssm {
namespace {

void BM_MakeHippo(benchmark::State& state) {
  const auto measure = static_cast<Measure>(state.range(0));
  const int n = static_cast<int>(state.range(1));
  for (auto _ : state) {
    absl::StatusOr<ContinuousSystem> s = MakeHippo(measure, n);
    benchmark::DoNotOptimize(s->A.data());
  }
  state.SetLabel(std::string(MeasureName(measure)));
}
BENCHMARK(BM_MakeHippo)
    ->ArgsProduct({{static_cast<int>(Measure::kLegS), static_cast<int>(Measure::kLegT),
                    static_cast<int>(Measure::kFouT)},
                   {64, 256}});

template <int kMethod>
void BM_Discretize(benchmark::State& state) {
  const int n = static_cast<int>(state.range(0));
  const ContinuousSystem s = *MakeHippo(Measure::kLegS, n);
  const Discretization method =
      kMethod == 0 ? Discretization::Bilinear() : Discretization::Zoh();
  for (auto _ : state) {
    absl::StatusOr<DiscreteSystem> d = Discretize(s, 0.01, method);
    benchmark::DoNotOptimize(d->A.data());
  }
}
BENCHMARK(BM_Discretize<0>)->Name("BM_DiscretizeBilinear")->Arg(16)->Arg(64)->Arg(256);
BENCHMARK(BM_Discretize<1>)->Name("BM_DiscretizeZoh")->Arg(16)->Arg(64)->Arg(256);

template <int kMethod>
void BM_DiscretizeDiagonal(benchmark::State& state) {
  const int h = static_cast<int>(state.range(0));
  const int n = static_cast<int>(state.range(1));
  DiagonalSystem s{Eigen::MatrixXcd(h, n), Eigen::MatrixXcd::Ones(h, n)};
  for (int i = 0; i < h; ++i)
    for (int j = 0; j < n; ++j) s.A(i, j) = {-0.5, 3.14159 * j};  // S4D-Lin
  const Eigen::VectorXd dt = Eigen::VectorXd::LinSpaced(h, 1e-3, 1e-1);
  const Discretization method =
      kMethod == 0 ? Discretization::Bilinear() : Discretization::Zoh();
  for (auto _ : state) {
    absl::StatusOr<DiagonalSystem> d = DiscretizeDiagonal(s, dt, method);
    benchmark::DoNotOptimize(d->A.data());
  }
  state.SetItemsProcessed(state.iterations() * h * n);
}
BENCHMARK(BM_DiscretizeDiagonal<0>)->Name("BM_DiscretizeDiagonalBilinear")->Args({256, 32});
BENCHMARK(BM_DiscretizeDiagonal<1>)->Name("BM_DiscretizeDiagonalZoh")->Args({256, 32});

void BM_MatrixExp(benchmark::State& state) {
  const int n = static_cast<int>(state.range(0));
  const Eigen::MatrixXd a = 0.01 * MakeHippo(Measure::kLegT, n)->A;
  for (auto _ : state) {
    absl::StatusOr<Eigen::MatrixXd> e = MatrixExp(a);
    benchmark::DoNotOptimize(e->data());
  }
}
BENCHMARK(BM_MatrixExp)->Arg(16)->Arg(64)->Arg(256);

template <bool kLegS>
void BM_MemoryUpdate(benchmark::State& state) {
  const int n = static_cast<int>(state.range(0));
  HippoMemory mem = kLegS ? *HippoMemory::LegS(n) : *HippoMemory::LegT(n, 1000.0);
  double f = 0.0;
  for (auto _ : state) {
    f += 1e-3;
    benchmark::DoNotOptimize(mem.Update(f));
  }
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_MemoryUpdate<true>)->Name("BM_MemoryUpdateLegS")->Arg(16)->Arg(64)->Arg(256);
BENCHMARK(BM_MemoryUpdate<false>)->Name("BM_MemoryUpdateLegT")->Arg(16)->Arg(64)->Arg(256);

}  // namespace
}  // namespace ssm
