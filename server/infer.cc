#include "server/infer.h"

#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/types/span.h"
#include "server/forward.h"
#include "ssm/session.h"

namespace ssm::server {

namespace v1 = ::ssm::v1;

absl::StatusOr<SequenceShape> CheckInfer(const v1::InferRequest& request, const ServedModel& served,
                                         const RequestLimits& limits) {
  const ssm::Model& model = *served.model;
  absl::StatusOr<SequenceShape> shape =
      CheckSequenceShape(request.input(), "input", model.d_input(), served.name);
  if (!shape.ok()) return shape.status();
  if (absl::Status s = CheckBatchLimit(shape->batch, "input.shape[0]", limits); !s.ok()) {
    return s;
  }
  if (shape->steps > limits.max_unary_length) {
    return absl::ResourceExhaustedError(
        absl::StrCat("input.shape[1] = ", shape->steps,
                     " steps exceeds --max_unary_length=", limits.max_unary_length));
  }
  if (shape->steps > model.max_length()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "input.shape[1] = ", shape->steps, " steps exceeds model '", served.name, "''s max_length ",
        model.max_length(), " (StreamInfer takes sequences of any length)"));
  }
  const int64_t out_values = shape->batch * shape->steps * model.d_output();
  if (absl::Status s = CheckResponseBytes(
          out_values * 4 + (request.return_state()
                                ? static_cast<int64_t>(model.state_bytes()) * shape->batch
                                : 0),
          "the output", limits);
      !s.ok()) {
    return s;
  }
  if (request.return_state() && !model.streamable()) {
    return absl::FailedPreconditionError(
        absl::StrCat("return_state: model '", served.name,
                     "' has no state to continue from: ", model.not_streamable_reason()));
  }
  return shape;
}

absl::Status RunInfer(
    const v1::InferRequest& request, const ServedModel& served, const SequenceShape& shape,
    const SnapshotSigner* signer,
    absl::FunctionRef<absl::Status(int64_t done, int64_t total, const char* unit)> stop,
    v1::InferResponse* response) {
  const SequenceShape out_shape{shape.batch, shape.steps, served.model->d_output()};
  std::vector<double> x;
  if (absl::Status s = ReadFiniteValues(request.input(), "input", &x); !s.ok()) return s;
  std::vector<double> y(out_shape.size());
  const int batch = static_cast<int>(shape.batch);
  const int steps = static_cast<int>(shape.steps);
  if (request.return_state()) {
    // The session's chunked convolution gives Forward's outputs (to
    // rounding) and, unlike Forward, the state after the last step. It
    // runs in slices of time of at most kMaxRowsPerPass rows; the call
    // stops between two if it is no longer wanted.
    absl::StatusOr<ssm::Session> session = ssm::Session::Create(served.model, batch);
    if (!session.ok()) return session.status();
    session->set_output_limit(kMaxWireValue);
    if (absl::Status s = session->Run(x, steps, absl::MakeSpan(y),
                                      [&](int done) { return stop(done, steps, "steps"); });
        !s.ok()) {
      return s;
    }
    WriteStateSnapshot(SnapshotOf(*session, served.name, served.version, signer),
                       response->mutable_state());
  } else if (absl::Status s = ForwardInPieces(*served.model, x, batch, steps, absl::MakeSpan(y),
                                              [&](int done) {
                                                return stop(done, batch, "sequences");
                                              });
             !s.ok()) {
    return s;
  }
  if (absl::Status s = CheckWireValues(y, out_shape, "output"); !s.ok()) return s;
  WriteSequenceTensor(y, out_shape, response->mutable_output());
  response->set_model(served.name);
  response->set_version(served.version);
  return absl::OkStatus();
}

}  // namespace ssm::server
