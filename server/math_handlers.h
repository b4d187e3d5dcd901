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
//   (NaiveKernel, bounded by MathLimits::max_naive_work); UNSPECIFIED picks DPLR for rank > 0, else DIAGONAL. An
//   explicit system with c_is_c_tilde holds C~ (always the bilinear one,
//   kernel.h): DIAGONAL and NAIVE map it back to C first.
//
// Errors: InvalidArgument naming the field (the request's own, e.g.
// "explicit_system.lambda", or the core's); ResourceExhausted when the
// request or its result would pass a limit (MathLimits), naming the flag.
//
// Thread safety: pure functions (the core's kernels use its worker pool).

#ifndef SSM_SERVER_MATH_HANDLERS_H_
#define SSM_SERVER_MATH_HANDLERS_H_

#include <cstdint>

#include "absl/status/statusor.h"
#include "ssm/v1/ssm_service.pb.h"

namespace ssm::server {

// The largest HiPPO state size BuildHippo and SsmInit accept (the proto's
// documented range; dense N x N work beyond it is not a request but a job).
inline constexpr int kMaxHippoN = 1024;

struct MathLimits {
  int64_t max_length = 65536;            // ComputeKernel.length (--max_unary_length)
  int64_t max_message_bytes = 64 << 20;  // the response, and an init's system
  // NAIVE's channels x length x N^2 multiply-adds: 2^32 is a few seconds of
  // one core; past it DPLR or DIAGONAL give the same kernel far faster.
  int64_t max_naive_work = int64_t{1} << 32;
};

absl::StatusOr<ssm::v1::BuildHippoResponse> BuildHippo(const ssm::v1::BuildHippoRequest& request);

absl::StatusOr<ssm::v1::ComputeKernelResponse> ComputeKernel(
    const ssm::v1::ComputeKernelRequest& request, const MathLimits& limits);

}  // namespace ssm::server

#endif  // SSM_SERVER_MATH_HANDLERS_H_
