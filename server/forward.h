// A whole-sequence inference (the convolutional mode) in pieces, shared by
// every protocol's unary call (ssm.v1 Infer, the Open Inference Protocol's
// ModelInfer and REST infer), so the same input gives the same bits
// whichever way it came.
//
// Pieces hold whole sequences of at most Session::kMaxRowsPerPass
// (sequence x step) rows (max(1, rows / steps) sequences each): the model's
// scratch (about 7 x rows x d_model doubles for an S4 stack) stays bounded
// whatever the batch, and a call that is no longer wanted stops between
// two pieces instead of after the whole batch.
//
// Thread safety: as Model::Forward (any number of concurrent calls).

#ifndef SSM_SERVER_FORWARD_H_
#define SSM_SERVER_FORWARD_H_

#include "absl/functional/function_ref.h"
#include "absl/status/status.h"
#include "absl/types/span.h"
#include "ssm/model.h"

namespace ssm::server {

// y (batch x steps x d_output) = model.Forward(x) (batch x steps x
// d_input). `stop(done)` is asked before each piece with the sequences
// done so far; its first non-OK answer is returned, y then incomplete.
// Errors: Forward's (shapes, lengths), or stop's.
absl::Status ForwardInPieces(const ssm::Model& model, absl::Span<const double> x, int batch,
                             int steps, absl::Span<double> y,
                             absl::FunctionRef<absl::Status(int done)> stop);

}  // namespace ssm::server

#endif  // SSM_SERVER_FORWARD_H_
