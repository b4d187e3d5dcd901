// ssm_bench: the Math service's requests, one thread, against their work
// estimate (server/math_handlers.h's EstimateWork), over a sweep of sizes
// that exercises every term of the estimate:
//   BM_MathKernel/<system>/<method>/N=<N>/H=<H>/L=<L>
//   BM_MathHippo/<measure>/<method>/N=<N>/dt=<dt>
// Counters: est_ms is the estimate in milliseconds (work units at
// kWorkUnitsPerSecond); est/meas is the estimate over the measured CPU time
// (> 1: the estimate is high). The core runs on one thread (SetThreads(1)),
// so CPU time is all of a request's work.

#include <complex>
#include <cstdint>
#include <limits>
#include <string>

#include <benchmark/benchmark.h>

#include "absl/strings/str_cat.h"
#include "server/math_handlers.h"
#include "ssm/dplr.h"
#include "ssm/kernel.h"
#include "ssm/threads.h"

namespace ssm::server {
namespace {

namespace v1 = ::ssm::v1;

void SetComplex(const RowMatrixXcd& m, v1::ComplexMatrix* out) {
  out->set_rows(static_cast<int>(m.rows()));
  out->set_cols(static_cast<int>(m.cols()));
  for (Eigen::Index i = 0; i < m.size(); ++i) {
    out->add_real(m.data()[i].real());
    out->add_imag(m.data()[i].imag());
  }
}

// An S4D-Lin system with `rank` extra random low-rank terms, as an explicit
// system whose C holds C~ (so DPLR runs no C~ map: the Cauchy path alone).
v1::SsmSystem ExplicitSystem(int n, int h, int rank, bool c_is_c_tilde) {
  DplrSystem s = *MakeS4dInit(S4dInit::kLin, n, h, 1e-3, 1e-1, 1);
  for (int a = 0; a < rank; ++a) s.P.push_back(RowMatrixXcd::Random(h, n / 2) * 0.1);
  v1::SsmSystem out;
  SetComplex(s.lambda, out.mutable_lambda());
  for (const RowMatrixXcd& p : s.P) SetComplex(p, out.add_p());
  SetComplex(s.B, out.mutable_b());
  SetComplex(s.C, out.mutable_c());
  for (Eigen::Index i = 0; i < s.dt.size(); ++i) out.add_dt(s.dt(i));
  out.set_c_is_c_tilde(c_is_c_tilde);
  return out;
}

v1::ComputeKernelRequest Init(v1::SsmInit::Kind kind, v1::HippoMeasure measure, int n, int h,
                              v1::KernelMethod method, int length, bool zoh = false) {
  v1::ComputeKernelRequest r;
  r.mutable_init()->set_kind(kind);
  r.mutable_init()->set_measure(measure);
  r.mutable_init()->set_n(n);
  r.mutable_init()->set_channels(h);
  r.mutable_init()->set_seed(1);
  r.set_method(method);
  r.set_length(length);
  if (zoh) r.mutable_discretization()->set_kind(v1::DISCRETIZATION_KIND_ZOH);
  return r;
}

v1::ComputeKernelRequest Explicit(int n, int h, int rank, v1::KernelMethod method, int length,
                                  bool c_is_c_tilde, bool zoh = false) {
  v1::ComputeKernelRequest r;
  *r.mutable_explicit_system() = ExplicitSystem(n, h, rank, c_is_c_tilde);
  r.set_method(method);
  r.set_length(length);
  if (zoh) r.mutable_discretization()->set_kind(v1::DISCRETIZATION_KIND_ZOH);
  return r;
}

template <typename Request>
void RunRequest(benchmark::State& state, const Request& request) {
  const int threads = Threads();
  (void)SetThreads(1);
  MathLimits limits;
  limits.max_work = std::numeric_limits<int64_t>::max();
  limits.max_message_bytes = int64_t{1} << 40;
  const absl::StatusOr<MathWork> work = EstimateWork(request);
  if (!work.ok()) {
    state.SkipWithError(std::string(work.status().message()).c_str());
    return;
  }
  for (auto _ : state) {
    if constexpr (std::is_same_v<Request, v1::ComputeKernelRequest>) {
      auto r = ComputeKernel(request, limits);
      if (!r.ok()) state.SkipWithError(std::string(r.status().message()).c_str());
      benchmark::DoNotOptimize(r);
    } else {
      auto r = BuildHippo(request, limits);
      if (!r.ok()) state.SkipWithError(std::string(r.status().message()).c_str());
      benchmark::DoNotOptimize(r);
    }
  }
  (void)SetThreads(threads);
  const double seconds = work->total() / kWorkUnitsPerSecond;
  state.counters["est_ms"] = seconds * 1e3;
  state.counters["est/meas"] =
      benchmark::Counter(seconds, benchmark::Counter::kIsIterationInvariantRate);
}

void Kernel(const std::string& name, const v1::ComputeKernelRequest& request) {
  const int64_t h = request.has_init() ? request.init().channels()
                                       : request.explicit_system().lambda().rows();
  const int64_t n = request.has_init() ? request.init().n()
                                       : 2 * request.explicit_system().lambda().cols();
  benchmark::RegisterBenchmark(
      absl::StrCat("BM_MathKernel/", name, "/N=", n, "/H=", h, "/L=", request.length()).c_str(),
      [request](benchmark::State& state) { RunRequest(state, request); })
      ->Unit(benchmark::kMillisecond);
}

void Hippo(v1::HippoMeasure measure, int n, double dt, bool zoh) {
  v1::BuildHippoRequest r;
  r.set_measure(measure);
  r.set_n(n);
  r.set_dt(dt);
  if (zoh) r.mutable_discretization()->set_kind(v1::DISCRETIZATION_KIND_ZOH);
  benchmark::RegisterBenchmark(
      absl::StrCat("BM_MathHippo/", v1::HippoMeasure_Name(measure), zoh ? "/zoh" : "/bilinear",
                   "/N=", n, "/dt=", dt)
          .c_str(),
      [r](benchmark::State& state) { RunRequest(state, r); })
      ->Unit(benchmark::kMillisecond);
}

const bool registered = [] {
  using K = v1::SsmInit;
  constexpr auto kLegS = v1::HIPPO_MEASURE_LEGS;
  constexpr auto kDplr = v1::KERNEL_METHOD_DPLR;
  constexpr auto kDiag = v1::KERNEL_METHOD_DIAGONAL;
  constexpr auto kNaive = v1::KERNEL_METHOD_NAIVE;
  // Inits: the NPLR eigensolve (S4D-LegS + DIAGONAL leaves little else),
  // and drawing C for many channels.
  for (int n : {128, 512, 1024}) Kernel("S4D_LEGS/DIAGONAL", Init(K::KIND_S4D_LEGS, kLegS, n, 1, kDiag, 64));
  Kernel("S4D_LIN/DIAGONAL", Init(K::KIND_S4D_LIN, kLegS, 2, 100000, kDiag, 1));
  Kernel("S4D_LIN/DIAGONAL", Init(K::KIND_S4D_LIN, kLegS, 64, 10000, kDiag, 16));
  // S4 inits with DPLR: eigensolve + C~ (dense powers) + Cauchy.
  for (int n : {64, 256}) {
    for (int l : {1024, 16384}) Kernel("S4_LEGS/DPLR", Init(K::KIND_S4, kLegS, n, 4, kDplr, l));
  }
  Kernel("S4_LEGS/DPLR", Init(K::KIND_S4, kLegS, 512, 1, kDplr, 4096));
  Kernel("S4_LEGT/DPLR", Init(K::KIND_S4, v1::HIPPO_MEASURE_LEGT, 128, 8, kDplr, 65536));
  // Explicit C~ + DPLR: the Cauchy sums and the per-point work, by rank.
  for (int rank : {0, 1, 2, 4}) {
    for (int n : {32, 512}) {
      for (int l : {4096, 65536, 65521}) {
        Kernel(absl::StrCat("EXPLICIT_R", rank, "/DPLR"), Explicit(n, 16, rank, kDplr, l, true));
      }
    }
  }
  Kernel("EXPLICIT_R1/DPLR", Explicit(2, 128, 1, kDplr, 65536, true));
  // Explicit C + DIAGONAL from C~ (CFromCTilde), and S4D + DIAGONAL.
  Kernel("EXPLICIT_R0_CTILDE/DIAGONAL", Explicit(256, 2, 0, kDiag, 1000, true));
  for (int n : {2, 32, 1024}) {
    for (int l : {256, 65536}) {
      for (bool zoh : {false, true}) {
        Kernel(zoh ? "S4D_LIN/DIAGONAL_ZOH" : "S4D_LIN/DIAGONAL",
               Init(K::KIND_S4D_LIN, kLegS, n, 16, kDiag, l, zoh));
      }
    }
  }
  // NAIVE: dense discretization (LU or exponential) and steps.
  for (int n : {16, 128, 512}) {
    for (int l : {16, 4096}) {
      Kernel("EXPLICIT_R1/NAIVE", Explicit(n, 2, 1, kNaive, l, false));
      Kernel("EXPLICIT_R0/NAIVE_ZOH", Explicit(n, 2, 0, kNaive, l, false, true));
    }
  }
  Kernel("S4_LEGS/NAIVE_ZOH", Init(K::KIND_S4, kLegS, 256, 2, kNaive, 256, true));
  Kernel("S4D_INV/NAIVE_ZOH", Init(K::KIND_S4D_INV, kLegS, 256, 2, kNaive, 256, true));
  Kernel("EXPLICIT_R1/NAIVE", Explicit(1024, 1, 1, kNaive, 512, false));
  // The example: NAIVE, N = 1024, L = 1024 from an S4 init.
  Kernel("S4_LEGS/NAIVE", Init(K::KIND_S4, kLegS, 1024, 1, kNaive, 1024));
  // BuildHippo: a real LU, or a real exponential whose squarings grow with
  // dt |A|.
  for (int n : {256, 1024}) {
    for (double dt : {1e-3, 1.0}) {
      for (bool zoh : {false, true}) Hippo(kLegS, n, dt, zoh);
    }
  }
  Hippo(v1::HIPPO_MEASURE_LMU, 512, 100.0, true);
  Hippo(v1::HIPPO_MEASURE_FOUT, 512, 0.01, true);
  return true;
}();

}  // namespace
}  // namespace ssm::server
