// Fuzzes the unary request path without gRPC: arbitrary bytes parsed as an
// ssm.v1.InferRequest (as MessageCall::Parse does), the catalog lookup,
// the checks Infer makes before scheduling work (CheckSequenceShape, the
// limits, max_length, the response size, return_state on a bidirectional
// model), then ReadFiniteValues and the model run itself (Forward in pieces
// of whole sequences, or a Session for return_state), CheckWireValues and
// the response tensor, all on the tiny models.
//
// services.cc keeps its checks (CheckInfer) and the run in an anonymous
// namespace of a file that needs gRPC; CheckInferRequest below follows it
// step for step. Keep the two in step (or move CheckInfer to a gRPC-free
// file and call it from here).
//
// Contracts checked besides the sanitizers':
//   - every refusal is InvalidArgument, NotFound, ResourceExhausted or
//     FailedPrecondition, with a bounded message (it reaches the client
//     and the log);
//   - an accepted request's output has the promised shape, and a returned
//     state imports again.

#include <algorithm>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "fuzz_util.h"
#include "server/limits.h"
#include "server/session_manager.h"
#include "server/tensor_codec.h"
#include "ssm/session.h"
#include "ssm/v1/ssm_service.pb.h"

namespace ssm::fuzz {
namespace {

namespace v1 = ::ssm::v1;

// services.cc's CheckInfer.
absl::StatusOr<server::SequenceShape> CheckInferRequest(const v1::InferRequest& request,
                                                        const server::ServedModel& served,
                                                        const server::RequestLimits& limits) {
  const Model& model = *served.model;
  absl::StatusOr<server::SequenceShape> shape =
      server::CheckSequenceShape(request.input(), "input", model.d_input(), served.name);
  if (!shape.ok()) return shape.status();
  if (absl::Status s = server::CheckBatchLimit(shape->batch, "input.shape[0]", limits); !s.ok()) {
    return s;
  }
  if (shape->steps > limits.max_unary_length) {
    return absl::ResourceExhaustedError(
        absl::StrCat("input.shape[1] = ", shape->steps,
                     " steps exceeds --max_unary_length=", limits.max_unary_length));
  }
  if (shape->steps > model.max_length()) {
    return absl::InvalidArgumentError(
        absl::StrCat("input.shape[1] = ", shape->steps, " steps exceeds model's max_length"));
  }
  const int64_t out_values = shape->batch * shape->steps * model.d_output();
  if (absl::Status s = server::CheckResponseBytes(
          out_values * 4 + (request.return_state()
                                ? static_cast<int64_t>(model.state_bytes()) * shape->batch
                                : 0),
          "the output", limits);
      !s.ok()) {
    return s;
  }
  if (request.return_state() && !model.streamable()) {
    return absl::FailedPreconditionError("return_state: model is bidirectional");
  }
  return shape;
}

// services.cc's Infer work, minus the cancellation checks.
absl::Status RunInfer(const v1::InferRequest& request, const server::ServedModel& served,
                      const server::SequenceShape& shape, v1::InferResponse* response) {
  const server::SequenceShape out_shape{shape.batch, shape.steps, served.model->d_output()};
  std::vector<double> x;
  if (absl::Status s = server::ReadFiniteValues(request.input(), "input", &x); !s.ok()) return s;
  std::vector<double> y(out_shape.size());
  const int batch = static_cast<int>(shape.batch);
  const int steps = static_cast<int>(shape.steps);
  if (request.return_state()) {
    absl::StatusOr<Session> session = Session::Create(served.model, batch);
    if (!session.ok()) return session.status();
    session->set_output_limit(server::kMaxWireValue);
    if (absl::Status s = session->Run(x, steps, absl::MakeSpan(y)); !s.ok()) return s;
    server::WriteStateSnapshot(server::SnapshotOf(*session, served.name, served.version, nullptr),
                               response->mutable_state());
  } else {
    const int d_in = served.model->d_input(), d_out = served.model->d_output();
    const int rows = static_cast<int>(std::max<int64_t>(1, Session::kMaxRowsPerPass / steps));
    for (int b0 = 0; b0 < batch; b0 += rows) {
      const int n = std::min(rows, batch - b0);
      const size_t in_at = static_cast<size_t>(b0) * steps * d_in;
      const size_t out_at = static_cast<size_t>(b0) * steps * d_out;
      if (absl::Status s = served.model->Forward(
              absl::MakeConstSpan(&x[in_at], static_cast<size_t>(n) * steps * d_in), n, steps,
              absl::MakeSpan(&y[out_at], static_cast<size_t>(n) * steps * d_out));
          !s.ok()) {
        return s;
      }
    }
  }
  if (absl::Status s = server::CheckWireValues(y, out_shape, "output"); !s.ok()) return s;
  server::WriteSequenceTensor(y, out_shape, response->mutable_output());
  return absl::OkStatus();
}

absl::Status Infer(const v1::InferRequest& request, v1::InferResponse* response) {
  absl::StatusOr<server::ServedModel> served = Catalog().Find(request.model(), request.version());
  if (!served.ok()) return served.status();
  absl::StatusOr<server::SequenceShape> shape = CheckInferRequest(request, *served, Limits());
  if (!shape.ok()) return shape.status();
  absl::Status status = RunInfer(request, *served, *shape, response);
  if (!status.ok()) return status;
  // The response is what was promised.
  const v1::Tensor& out = response->output();
  Check(out.shape_size() == 3 && out.shape(0) == shape->batch && out.shape(1) == shape->steps &&
            out.shape(2) == served->model->d_output() &&
            out.values_size() == shape->batch * shape->steps * served->model->d_output(),
        "Infer output has the wrong shape");
  if (request.return_state()) {
    absl::StatusOr<Session> again = Session::Import(served->model, response->state().data());
    Check(again.ok() && again->position() == shape->steps, "a returned state does not import");
  }
  return status;
}

v1::InferRequest Request(const std::string& model, int64_t version, std::vector<int64_t> shape,
                         std::vector<float> values, bool return_state = false) {
  v1::InferRequest r;
  r.set_model(model);
  r.set_version(version);
  for (int64_t d : shape) r.mutable_input()->add_shape(d);
  for (float v : values) r.mutable_input()->add_values(v);
  r.set_return_state(return_state);
  return r;
}

std::vector<float> Floats(size_t n) {
  std::vector<float> out;
  for (double v : Wave(n)) out.push_back(static_cast<float>(v));
  return out;
}

void WriteSeeds(const std::string& dir) {
  const auto seed = [&](const std::string& name, const v1::InferRequest& r) {
    WriteSeed(dir, name, r.SerializeAsString());
  };
  seed("legt-ok", Request("legt", 0, {1, 8, 1}, Floats(8)));
  seed("legs-ok-state", Request("legs", 1, {2, 5, 1}, Floats(10), true));
  seed("delay-ok", Request("delay", 0, {3, 4, 1}, Floats(12)));
  seed("s4-v1-ok", Request("s4", 1, {2, 16, 1}, Floats(32)));
  seed("s4-v2-state", Request("s4", 2, {1, 64, 1}, Floats(64), true));
  seed("s4-bidi-ok", Request("s4-bidi", 0, {1, 7, 1}, Floats(7)));
  seed("s4-bidi-state", Request("s4-bidi", 0, {1, 7, 1}, Floats(7), true));
  seed("unknown-model", Request("nope", 0, {1, 1, 1}, {0.5f}));
  seed("broken-model", Request("broken", 0, {1, 1, 1}, {0.5f}));
  seed("unknown-version", Request("s4", 9, {1, 1, 1}, {0.5f}));
  seed("two-dims", Request("legt", 0, {4, 2}, Floats(8)));
  seed("wrong-features", Request("legt", 0, {1, 2, 2}, Floats(4)));
  seed("too-few-values", Request("legt", 0, {1, 3, 1}, Floats(2)));
  seed("overflowing-shape", Request("legt", 0, {int64_t{1} << 40, int64_t{1} << 40, 1}, Floats(1)));
  seed("past-max-length", Request("s4", 0, {1, 65, 1}, Floats(65)));
  seed("past-max-batch", Request("legt", 0, {65, 1, 1}, Floats(65)));
  std::vector<float> nan = Floats(4);
  nan[2] = std::numeric_limits<float>::quiet_NaN();
  seed("nan", Request("legt", 0, {1, 4, 1}, nan));
  seed("huge-input", Request("legs", 0, {1, 4, 1}, {3e38f, -3e38f, 3e38f, 1}));
  seed("empty", v1::InferRequest());
}

}  // namespace
}  // namespace ssm::fuzz

extern "C" int LLVMFuzzerInitialize(int* argc, char*** argv) {
  ssm::fuzz::HandleSeedFlag(argc, argv, ssm::fuzz::WriteSeeds);
  ssm::fuzz::Catalog();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace ssm::fuzz;
  ssm::v1::InferRequest request;
  if (!request.ParseFromArray(data, static_cast<int>(size))) return 0;
  ssm::v1::InferResponse response;
  const absl::Status status = Infer(request, &response);
  if (!status.ok()) {
    CheckCode(status,
              {absl::StatusCode::kInvalidArgument, absl::StatusCode::kNotFound,
               absl::StatusCode::kResourceExhausted, absl::StatusCode::kFailedPrecondition},
              "Infer");
    CheckBoundedMessage(status, "Infer");
  }
  return 0;
}
