// The pieces model.cc shares with the architectures' implementations.

#ifndef SSM_CORE_SRC_MODEL_INTERNAL_H_
#define SSM_CORE_SRC_MODEL_INTERNAL_H_

#include <cstdint>
#include <memory>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "ssm/hippo.h"
#include "ssm/model.h"

namespace ssm::internal {

// Shapes (batch x steps x d_input in, batch x steps x d_output out) and
// finite inputs (InvalidArgument naming the index, step and feature).
absl::Status CheckIoArgs(const Model& model, absl::Span<const double> x, int batch, int steps,
                         absl::Span<const double> y);
// Forward's checks: CheckIoArgs plus batch >= 1 and 1 <= length <= max_length.
absl::Status CheckForwardArgs(const Model& model, absl::Span<const double> x, int batch,
                              int length, absl::Span<const double> y);

// A hash of the architecture and, when given, every tensor's name, shape
// and values.
uint64_t FingerprintOf(const ModelSpec& spec, const SafeTensors* file);

// The continuous HiPPO matrices a memory's spec names (LegT in its LMU form
// with the window as theta, or LegS): what `hippo.A`/`hippo.B` hold.
absl::StatusOr<ContinuousSystem> HippoMatrices(const HippoMemorySpec& hippo);

absl::StatusOr<std::shared_ptr<const Model>> LoadS4Stack(const ModelSpec& spec,
                                                         const S4StackSpec& s4,
                                                         const SafeTensors& file);
absl::StatusOr<std::shared_ptr<const Model>> LoadHippoMemory(const ModelSpec& spec,
                                                             const HippoMemorySpec& hippo,
                                                             const SafeTensors* file);

}  // namespace ssm::internal

#endif  // SSM_CORE_SRC_MODEL_INTERNAL_H_
