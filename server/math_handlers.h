// The logic of the ssm.v1.Math service, free of gRPC: request message in,
// response message or absl::Status out. The service (services.h) runs these
// on the worker pool; tests call them directly.
//
// BuildHippo: MakeHippo(measure, n, {theta}) then Discretize(dt, method).
//   n in [1, kMaxHippoN]; theta 0 means 1; dt > 0. Discretization: `alpha`
//   when set (GBT), else BILINEAR (also for UNSPECIFIED) or ZOH.
// ComputeKernel: the system from an SsmInit (MakeS4Init / MakeS4dInit;
//   dt_min 0 means 1e-3, dt_max 0 means 1e-1) or an explicit SsmSystem,
//   then the method: DPLR (DplrKernel; bilinear only; given C, C~ for
//   `length` is computed first), DIAGONAL (DiagonalKernel, rank 0) or NAIVE
//   (NaiveKernel); UNSPECIFIED picks DPLR for rank > 0, else DIAGONAL. An
//   explicit system with c_is_c_tilde holds C~ (always the bilinear one,
//   kernel.h): DIAGONAL and NAIVE map it back to C first.
//
// Admission: every request is checked from its fields alone, before
// anything is built: values and shapes, the init's system size and the
// response size against max_message_bytes, then its estimated work
// (EstimateWork) against max_work. Only then is the system built.
//
// Stopping: `stop` (ssm/stop.h) is polled before each step and inside the
// core's long loops; when it fails, that status is returned. The default
// never stops.
//
// Errors: InvalidArgument naming the field (the request's own, e.g.
// "explicit_system.lambda", or the core's); ResourceExhausted when the
// request, its result or its work would pass a limit (MathLimits), naming
// the flag; the stop check's status.
//
// Thread safety: pure functions (the core's kernels use its worker pool);
// `stop` is called from the core's worker threads (stop.h).

#ifndef SSM_SERVER_MATH_HANDLERS_H_
#define SSM_SERVER_MATH_HANDLERS_H_

#include <cstdint>

#include "absl/status/statusor.h"
#include "ssm/stop.h"
#include "ssm/v1/ssm_service.pb.h"

namespace ssm::server {

// The largest HiPPO state size BuildHippo and SsmInit accept (the proto's
// documented range; dense N x N work beyond it is not a request but a job).
inline constexpr int kMaxHippoN = 1024;

// Work is counted in work units: multiply-adds at the speed of a dense
// complex matrix product, 1e10 a second on one core of the development
// machine (bench/math_benchmark.cc). Slower operations count as several.
inline constexpr double kWorkUnitsPerSecond = 1e10;

struct MathLimits {
  int64_t max_length = 65536;            // ComputeKernel.length (--max_unary_length)
  int64_t max_message_bytes = 64 << 20;  // the response, and an init's system
  // A request's estimated work (--max_math_work), in work units. The
  // estimate ran up to 1.25x under the measured time in the calibration
  // sweep, so 8e9 (0.8 s at kWorkUnitsPerSecond) admits at most ~1 s of one
  // core.
  int64_t max_work = 8'000'000'000;
};

// The estimated work of a request, per step, in work units.
struct MathWork {
  double system = 0;   // an init (NPLR eigensolve, drawing C) or copying an explicit system
  double c_tilde = 0;  // CTilde or CFromCTilde, when the method needs it
  double kernel = 0;   // the kernel method (BuildHippo: MakeHippo and Discretize) and the response
  double total() const { return system + c_tilde + kernel; }
};

// From the request's fields alone; nothing is built. On the development
// machine it is 0.8 to 2.2 times the measured CPU time of every request
// over 1 ms in a sweep of all the steps' sizes (bench/README.md).
// Errors: the InvalidArgument that BuildHippo / ComputeKernel would return
// for the request's fields.
absl::StatusOr<MathWork> EstimateWork(const ssm::v1::BuildHippoRequest& request);
absl::StatusOr<MathWork> EstimateWork(const ssm::v1::ComputeKernelRequest& request);

absl::StatusOr<ssm::v1::BuildHippoResponse> BuildHippo(
    const ssm::v1::BuildHippoRequest& request, const MathLimits& limits,
    StopCheck stop = NeverStop);
// With the default MathLimits.
absl::StatusOr<ssm::v1::BuildHippoResponse> BuildHippo(
    const ssm::v1::BuildHippoRequest& request, StopCheck stop = NeverStop);

absl::StatusOr<ssm::v1::ComputeKernelResponse> ComputeKernel(
    const ssm::v1::ComputeKernelRequest& request, const MathLimits& limits,
    StopCheck stop = NeverStop);

}  // namespace ssm::server

#endif  // SSM_SERVER_MATH_HANDLERS_H_
