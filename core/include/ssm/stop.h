// Stopping a long computation early: a caller's check that the core's long
// functions (the kernels and C~ maps of kernel.h, the Cauchy sums of
// cauchy.h) poll while they work. A server passes one that fails once the
// call is cancelled or its deadline has passed, so abandoned work frees its
// threads.
//
// Contract, for the check:
// - It returns OK to go on. Any other status stops the computation, which
//   then returns exactly that status (the first one seen, if several
//   threads are stopped at once) and no partial result.
// - It is polled between units of work: a channel, a block of time steps
//   or of Cauchy points, one dense N x N product. A unit is never cut, so
//   after a stop each thread finishes at most the unit it is in; the
//   largest units are one channel's dense discretization (an N x N LU or
//   matrix exponential, O(N^3)).
// - It is called from any of the core's worker threads (ssm/threads.h),
//   several at once, so it must be thread-safe. It should be cheap (an
//   atomic load, a clock read): it runs once per unit.
// - Once it has returned non-OK, the computation does not ask it again
//   except from threads already polling at that moment.
// Polling never changes a result: a computation that is not stopped
// returns bit-identical output with or without a check.
//
// The check is borrowed for the call (absl::FunctionRef): a lambda written
// in the argument list lives long enough.

#ifndef SSM_STOP_H_
#define SSM_STOP_H_

#include "absl/functional/function_ref.h"
#include "absl/status/status.h"

namespace ssm {

using StopCheck = absl::FunctionRef<absl::Status()>;

// The default check: never stops.
inline absl::Status NeverStop() { return absl::OkStatus(); }

}  // namespace ssm

#endif  // SSM_STOP_H_
