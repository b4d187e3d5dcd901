// The core's parallelism: how many threads its data-parallel loops
// (kernels across channels, FFT convolutions and model blocks across rows)
// may use, the calling thread included. It is the embedding program's
// choice, not the machine's: a container limited to 2 CPUs on a 64-core
// node must not start 63 workers and be throttled. ssm_server sets it from
// --threads.
//
// Until SetThreads is called the core uses DefaultThreads(). Loops run
// inline (no worker) when the count is 1.
//
// Thread safety: every function may be called from any thread at any time.
// A SetThreads while loops run lets them finish on the workers they started
// with; the old workers exit once those are done, and later loops use the
// new count.

#ifndef SSM_THREADS_H_
#define SSM_THREADS_H_

#include "absl/status/status.h"

namespace ssm {

// threads >= 1 (InvalidArgument otherwise, nothing changed).
absl::Status SetThreads(int threads);

// The count loops use now (>= 1).
int Threads();

// Within its scope, loops started from the constructing thread use at most
// `threads` threads (the caller included; >= 1), whatever Threads() is: a
// server runs work it must keep to a share of the CPUs (Math calls) under
// one. Scopes nest (the innermost wins). Not movable; destroy it on the
// thread that made it.
class ThreadLimit {
 public:
  explicit ThreadLimit(int threads);
  ~ThreadLimit();
  ThreadLimit(const ThreadLimit&) = delete;
  ThreadLimit& operator=(const ThreadLimit&) = delete;

 private:
  int previous_;
};

// The CPUs this process may run on: its affinity mask, capped by a cgroup
// CPU quota when one is set (cgroup v2 cpu.max or v1 cfs_quota_us, rounded
// up). At least 1.
int DefaultThreads();

// Names the calling thread for `top -H`, `perf` and gdb (Linux keeps the
// first 15 bytes of `name`). Best effort: a system that cannot name
// threads leaves the name as it was.
void NameThisThread(const char* name);

}  // namespace ssm

#endif  // SSM_THREADS_H_
