// A small shared worker pool for the core's data-parallel loops (kernels
// across channels, FFT convolutions across rows).
//
// ParallelFor splits [0, n) into contiguous blocks and runs fn(begin, end) on
// them, using the calling thread plus the pool's workers (ssm::Threads() - 1
// of them: the embedding program sets the count, see ssm/threads.h). It returns when every block is done. Safe to call from many
// threads at once (each call waits only for its own blocks) and from inside
// fn (nested calls run inline, so they never deadlock on a busy pool).

#ifndef SSM_CORE_SRC_PARALLEL_H_
#define SSM_CORE_SRC_PARALLEL_H_

#include <cstdint>

#include "absl/functional/function_ref.h"

namespace ssm::internal {

// min_block: the smallest block worth handing to another thread.
// fn is borrowed, never copied to the heap: a call that runs inline
// allocates nothing (the streaming step relies on it).
void ParallelFor(int64_t n, int64_t min_block,
                 absl::FunctionRef<void(int64_t begin, int64_t end)> fn);

// Number of threads ParallelFor may use (>= 1): ssm::Threads().
int Parallelism();

}  // namespace ssm::internal

#endif  // SSM_CORE_SRC_PARALLEL_H_
