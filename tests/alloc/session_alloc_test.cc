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
