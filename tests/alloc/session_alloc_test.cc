// A session's step allocates nothing: counts every malloc/calloc/realloc
// (operator new and Eigen's aligned allocations end there) while stepping a
// loaded S4 stack. Its own executable, since it replaces the C allocator.

#include <cstddef>
#include <cstdlib>
#include <vector>

#include <gtest/gtest.h>

#include "ssm/model.h"
#include "ssm/session.h"

extern "C" {
void* __libc_malloc(size_t);
void* __libc_calloc(size_t, size_t);
void* __libc_realloc(void*, size_t);

static thread_local bool g_counting = false;
static thread_local long g_allocations = 0;

void* malloc(size_t n) {
  if (g_counting) ++g_allocations;
  return __libc_malloc(n);
}
void* calloc(size_t n, size_t size) {
  if (g_counting) ++g_allocations;
  return __libc_calloc(n, size);
}
void* realloc(void* p, size_t n) {
  if (g_counting) ++g_allocations;
  return __libc_realloc(p, n);
}
}

namespace ssm {
namespace {

std::shared_ptr<const Model> Demo(KernelKind kind) {
  S4StackSpec s4;
  s4.n_layers = 2;
  s4.d_model = 64;
  s4.d_state = 64;
  s4.kernel = kind;
  s4.rank = kind == KernelKind::kDplr ? 1 : 0;
  s4.discretization = kind == KernelKind::kDplr ? Discretization::Bilinear()
                                                : Discretization::Zoh();
  s4.norm = NormPlacement::kPre;
  ModelSpec spec;
  spec.name = "alloc";
  spec.d_input = 1;
  spec.d_output = 1;
  spec.max_length = 256;
  spec.architecture = s4;
  const std::string bytes = *SerializeSafeTensors(*InitS4StackWeights(spec, 1));
  const SafeTensors file = *SafeTensors::Parse(bytes, "alloc");
  return *LoadModel(spec, &file);
}

TEST(SessionAllocTest, StepsAllocateNothing) {
  for (KernelKind kind : {KernelKind::kDplr, KernelKind::kDiagonal}) {
    for (int batch : {1, 4}) {
      Session s = *Session::Create(Demo(kind), batch);
      std::vector<double> x(batch, 0.25), y(batch);
      ASSERT_TRUE(s.Run(x, 1, absl::MakeSpan(y)).ok());  // scratch grows once
      g_allocations = 0;
      g_counting = true;
      for (int t = 0; t < 100; ++t) {
        x[0] = 0.01 * t;
        const absl::Status st = s.Run(x, 1, absl::MakeSpan(y));
        if (!st.ok()) {
          g_counting = false;
          FAIL() << st;
        }
      }
      g_counting = false;
      EXPECT_EQ(g_allocations, 0) << "kind " << static_cast<int>(kind) << " batch " << batch;
    }
  }
}

// Steps of many sessions in one pass (RunBatch: 64 sessions, several
// passes), alternating with single sessions of another model on the same
// thread: once the thread's buffers have grown, nothing is allocated.
TEST(SessionAllocTest, BatchedStepsAllocateNothing) {
  const std::shared_ptr<const Model> dplr = Demo(KernelKind::kDplr);
  const std::shared_ptr<const Model> diag = Demo(KernelKind::kDiagonal);
  std::vector<Session> sessions;
  for (int i = 0; i < 64; ++i) sessions.push_back(*Session::Create(dplr, 1));
  Session other = *Session::Create(diag, 2);
  std::vector<double> x(64, 0.25), y(64), ox(2, 0.5), oy(2);
  std::vector<Session::Chunk> chunks(64);
  auto round = [&](int t) {
    for (int i = 0; i < 64; ++i) {
      x[i] = 0.01 * t + 0.001 * i;
      chunks[i] = {&sessions[i], absl::MakeConstSpan(&x[i], 1), absl::MakeSpan(&y[i], 1),
                   absl::OkStatus()};
    }
    Session::RunBatch(absl::MakeSpan(chunks), 1);
    return other.Run(ox, 1, absl::MakeSpan(oy));
  };
  ASSERT_TRUE(round(0).ok());  // the thread's buffers grow
  g_allocations = 0;
  g_counting = true;
  for (int t = 1; t <= 20; ++t) {
    const absl::Status st = round(t);
    bool all_ok = st.ok();
    for (const Session::Chunk& c : chunks) all_ok = all_ok && c.status.ok();
    if (!all_ok) {
      g_counting = false;
      FAIL() << "round " << t << " failed";
    }
  }
  g_counting = false;
  EXPECT_EQ(g_allocations, 0);
}

// The counter itself works (the test above could not pass vacuously).
TEST(SessionAllocTest, CounterSeesAllocations) {
  g_allocations = 0;
  g_counting = true;
  std::vector<double>* v = new std::vector<double>(100);
  g_counting = false;
  delete v;
  EXPECT_GE(g_allocations, 1);
}

}  // namespace
}  // namespace ssm
