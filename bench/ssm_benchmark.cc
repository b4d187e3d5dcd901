// Kernels and recurrent steps of one SSM layer. Argument order is fixed so
// figures stay comparable across commits (README's table):
//   BM_Cauchy/<H>/<M>/<J>/<S>     folded Cauchy sums (S sets, J points)
//   BM_KernelDplr/<H>/<N>/<L>     S4 kernel from C~ (Cauchy + Woodbury + iFFT)
//   BM_KernelDiag/<H>/<N>/<L>     S4D kernel (Vandermonde GEMM), ZOH
//   BM_Step/<H>/<N>               one diagonal step, batch 1, float32
//   BM_StepDouble/<H>/<N>         the same in double
//   BM_StepDplr/<H>/<N>           one low-rank (Woodbury) step, batch 1
//   BM_StepBatch/<B>/<H>/<N>      one diagonal step for B sessions

#include <vector>

#include <benchmark/benchmark.h>

#include "ssm/cauchy.h"
#include "ssm/dplr.h"
#include "ssm/kernel.h"
#include "ssm/recurrent.h"

namespace ssm {
namespace {

// The DPLR kernel's hot loop alone: H channels, M pole pairs, J points on
// the imaginary axis, S numerator sets (4 for rank 1, 9 for rank 2).
void BM_Cauchy(benchmark::State& state) {
  const int h = static_cast<int>(state.range(0)), m = static_cast<int>(state.range(1));
  const int j = static_cast<int>(state.range(2)), sets = static_cast<int>(state.range(3));
  const DplrSystem s = *MakeS4Init(Measure::kLegS, 2 * m, h, 1e-3, 1e-1, 1);
  std::vector<RowMatrixXcd> v(sets, s.B.cwiseProduct(s.C));
  RowMatrixXcd z(h, j);
  for (int i = 0; i < h; ++i)
    for (int k = 0; k < j; ++k) z(i, k) = cdouble(0, 2.0 / s.dt(i) * std::tan(3.14159265 * k / (2.0 * j)));
  for (auto _ : state) {
    absl::StatusOr<std::vector<RowMatrixXcd>> out = CauchyConjugateSums(s.lambda, v, z);
    benchmark::DoNotOptimize(out->data());
  }
  state.SetItemsProcessed(state.iterations() * int64_t{h} * m * j);
}
BENCHMARK(BM_Cauchy)->Args({256, 32, 2049, 4})->Args({256, 32, 2049, 9})
    ->Args({256, 32, 8193, 4})->Unit(benchmark::kMillisecond)->UseRealTime();

// Kernel from stored C~, as the S4 reference's forward pass (its setup of
// C~ is not timed there either).
void BM_KernelDplr(benchmark::State& state) {
  const int h = static_cast<int>(state.range(0)), n = static_cast<int>(state.range(1));
  const int length = static_cast<int>(state.range(2));
  const DplrSystem s = *MakeS4Init(Measure::kLegS, n, h, 1e-3, 1e-1, 1);
  for (auto _ : state) {
    absl::StatusOr<RowMatrixXd> k = DplrKernel(s, length);
    benchmark::DoNotOptimize(k->data());
  }
}
BENCHMARK(BM_KernelDplr)->Args({256, 64, 4096})->Args({256, 64, 16384})
    ->Unit(benchmark::kMillisecond)->UseRealTime();

void BM_KernelDiag(benchmark::State& state) {
  const int h = static_cast<int>(state.range(0)), n = static_cast<int>(state.range(1));
  const int length = static_cast<int>(state.range(2));
  const DplrSystem s = *MakeS4dInit(S4dInit::kLegS, n, h, 1e-3, 1e-1, 1);
  for (auto _ : state) {
    absl::StatusOr<RowMatrixXd> k = DiagonalKernel(s, length, Discretization::Zoh());
    benchmark::DoNotOptimize(k->data());
  }
}
BENCHMARK(BM_KernelDiag)->Args({256, 64, 4096})->Args({256, 64, 16384})
    ->Unit(benchmark::kMillisecond)->UseRealTime();

template <int kRank>
void BM_StepImpl(benchmark::State& state, int batch, int h, int n) {
  const DplrSystem s = kRank == 0 ? *MakeS4dInit(S4dInit::kLegS, n, h, 1e-3, 1e-1, 1)
                                  : *MakeS4Init(Measure::kLegS, n, h, 1e-3, 1e-1, 1);
  const SsmStepper st = *SsmStepper::Create(s, Eigen::VectorXd::Ones(h),
                                            Discretization::Bilinear());
  std::vector<double> u(batch * h, 0.5), y(batch * h), x(batch * st.state_size(), 0.0);
  for (auto _ : state) {
    benchmark::DoNotOptimize(st.Run(u, batch, 1, absl::MakeSpan(x), absl::MakeSpan(y)));
    benchmark::ClobberMemory();
  }
  state.SetItemsProcessed(state.iterations() * batch);
}

// The streaming step at batch 1 in float32 (the precision the S4
// reference's step runs in).
void BM_Step(benchmark::State& state) {
  const int h = static_cast<int>(state.range(0)), n = static_cast<int>(state.range(1));
  const DplrSystem s = *MakeS4dInit(S4dInit::kLegS, n, h, 1e-3, 1e-1, 1);
  const DiagonalStepperF32 st =
      *DiagonalStepperF32::Create(s, Eigen::VectorXd::Ones(h), Discretization::Zoh());
  std::vector<float> u(h, 0.5f), y(h), x(st.state_size(), 0.0f);
  for (auto _ : state) {
    benchmark::DoNotOptimize(st.Run(u, 1, 1, absl::MakeSpan(x), absl::MakeSpan(y)));
    benchmark::ClobberMemory();
  }
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_Step)->Args({256, 64})->Args({16, 64});

// The same step in double (the models' serving precision).
void BM_StepDouble(benchmark::State& state) {
  BM_StepImpl<0>(state, 1, static_cast<int>(state.range(0)), static_cast<int>(state.range(1)));
}
BENCHMARK(BM_StepDouble)->Args({256, 64});

void BM_StepDplr(benchmark::State& state) {
  BM_StepImpl<1>(state, 1, static_cast<int>(state.range(0)), static_cast<int>(state.range(1)));
}
BENCHMARK(BM_StepDplr)->Args({256, 64});

void BM_StepBatch(benchmark::State& state) {
  BM_StepImpl<0>(state, static_cast<int>(state.range(0)), static_cast<int>(state.range(1)),
                 static_cast<int>(state.range(2)));
}
BENCHMARK(BM_StepBatch)->Args({64, 256, 64})->UseRealTime();

}  // namespace
}  // namespace ssm
