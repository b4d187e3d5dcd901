// Whole models, loaded from the shipped repository (models/):
//   BM_ModelForward/s4-demo/<B>/<L>  convolutional mode, kernels cached
//   BM_SessionStep/s4-demo           one streaming step, batch 1
//   BM_SessionChunk/s4-demo/<T>      one chunk of T steps, batch 1
//   BM_SessionStepMany/s4-demo/<S>   one step of each of S sessions in turn
//                                    (what a server with S lock-step streams
//                                    did: S x 64 KiB of state cycles
//                                    through the caches); steps/s
//   BM_StepBatch/s4-demo/<S>         the same S steps in one call
//                                    (Session::RunBatch: what the server's
//                                    gathering does), on one thread; steps/s

#include <memory>
#include <string>
#include <vector>

#include <benchmark/benchmark.h>

#include "server/model_config.h"
#include "ssm/model.h"
#include "ssm/session.h"
#include "ssm/threads.h"

namespace ssm {
namespace {

std::shared_ptr<const Model> LoadShipped(const std::string& name) {
  const std::string dir = std::string(SSM_SOURCE_DIR) + "/models/" + name;
  absl::StatusOr<ModelSpec> spec = server::ReadModelConfig(dir + "/config.pbtxt");
  if (!spec.ok()) return nullptr;
  absl::StatusOr<SafeTensors> file = SafeTensors::ReadFile(dir + "/1/weights.safetensors");
  if (!file.ok()) return nullptr;
  absl::StatusOr<std::shared_ptr<const Model>> m = LoadModel(*spec, &*file);
  return m.ok() ? *m : nullptr;
}

const std::shared_ptr<const Model>& S4Demo() {
  static const std::shared_ptr<const Model> model = LoadShipped("s4-demo");
  return model;
}

void BM_ModelForward(benchmark::State& state) {
  const std::shared_ptr<const Model>& m = S4Demo();
  if (m == nullptr) return state.SkipWithError("cannot load models/s4-demo");
  const int batch = static_cast<int>(state.range(0)), length = static_cast<int>(state.range(1));
  std::vector<double> x(static_cast<size_t>(batch) * length * m->d_input());
  for (size_t i = 0; i < x.size(); ++i) x[i] = std::sin(0.01 * i);
  std::vector<double> y(static_cast<size_t>(batch) * length * m->d_output());
  // The first call builds the FFT convolvers for this length (cached after).
  if (!m->Forward(x, batch, length, absl::MakeSpan(y)).ok()) return state.SkipWithError("forward");
  for (auto _ : state) {
    benchmark::DoNotOptimize(m->Forward(x, batch, length, absl::MakeSpan(y)));
    benchmark::ClobberMemory();
  }
  state.SetItemsProcessed(state.iterations() * batch * length);
}
BENCHMARK(BM_ModelForward)->Name("BM_ModelForward/s4-demo")->Args({8, 4096})
    ->Unit(benchmark::kMillisecond)->UseRealTime();

void BM_SessionChunkImpl(benchmark::State& state, int steps) {
  const std::shared_ptr<const Model>& m = S4Demo();
  if (m == nullptr) return state.SkipWithError("cannot load models/s4-demo");
  Session s = *Session::Create(m, 1);
  std::vector<double> x(steps * m->d_input(), 0.25), y(steps * m->d_output());
  if (!s.Run(x, steps, absl::MakeSpan(y)).ok()) return state.SkipWithError("run");
  for (auto _ : state) {
    benchmark::DoNotOptimize(s.Run(x, steps, absl::MakeSpan(y)));
    benchmark::ClobberMemory();
  }
  state.SetItemsProcessed(state.iterations() * steps);
}

void BM_SessionStep(benchmark::State& state) { BM_SessionChunkImpl(state, 1); }
BENCHMARK(BM_SessionStep)->Name("BM_SessionStep/s4-demo");

void BM_SessionChunk(benchmark::State& state) {
  BM_SessionChunkImpl(state, static_cast<int>(state.range(0)));
}
BENCHMARK(BM_SessionChunk)->Name("BM_SessionChunk/s4-demo")->Arg(16)->Arg(256)
    ->Unit(benchmark::kMicrosecond);

void BM_SessionStepMany(benchmark::State& state) {
  const std::shared_ptr<const Model>& m = S4Demo();
  if (m == nullptr) return state.SkipWithError("cannot load models/s4-demo");
  const int count = static_cast<int>(state.range(0));
  std::vector<Session> sessions;
  for (int i = 0; i < count; ++i) sessions.push_back(*Session::Create(m, 1));
  std::vector<double> x(m->d_input(), 0.25), y(m->d_output());
  for (Session& s : sessions) {
    if (!s.Run(x, 1, absl::MakeSpan(y)).ok()) return state.SkipWithError("run");
  }
  for (auto _ : state) {
    for (Session& s : sessions) benchmark::DoNotOptimize(s.Run(x, 1, absl::MakeSpan(y)));
    benchmark::ClobberMemory();
  }
  // items_per_second: steps per second, comparable with BM_SessionStep's.
  state.SetItemsProcessed(state.iterations() * count);
}
BENCHMARK(BM_SessionStepMany)->Name("BM_SessionStepMany/s4-demo")->Arg(1)->Arg(16)->Arg(64)
    ->Unit(benchmark::kMicrosecond);

void BM_StepBatchModel(benchmark::State& state) {
  const std::shared_ptr<const Model>& m = S4Demo();
  if (m == nullptr) return state.SkipWithError("cannot load models/s4-demo");
  const int count = static_cast<int>(state.range(0));
  std::vector<Session> sessions;
  for (int i = 0; i < count; ++i) sessions.push_back(*Session::Create(m, 1));
  std::vector<double> x(count, 0.25), y(count);
  std::vector<Session::Chunk> chunks(count);
  for (int i = 0; i < count; ++i) {
    chunks[i] = {&sessions[i], absl::MakeConstSpan(&x[i], 1), absl::MakeSpan(&y[i], 1),
                 absl::OkStatus()};
  }
  // One core, as a server whose other cores serve its connections (and
  // comparable with BM_SessionStepMany, whose single steps are too small to
  // split): CPU time is then the whole cost.
  ThreadLimit one_thread(1);
  Session::RunBatch(absl::MakeSpan(chunks), 1);
  for (const Session::Chunk& c : chunks) {
    if (!c.status.ok()) return state.SkipWithError("run");
  }
  for (auto _ : state) {
    Session::RunBatch(absl::MakeSpan(chunks), 1);
    benchmark::ClobberMemory();
  }
  // items_per_second: steps per second, as BM_SessionStepMany's.
  state.SetItemsProcessed(state.iterations() * count);
}
BENCHMARK(BM_StepBatchModel)->Name("BM_StepBatch/s4-demo")->Arg(1)->Arg(16)->Arg(64)
    ->Unit(benchmark::kMicrosecond);

}  // namespace
}  // namespace ssm
