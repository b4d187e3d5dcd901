// Fuzzes the unary request path without gRPC: arbitrary bytes parsed as an
// ssm.v1.InferRequest (as MessageCall::Parse does), the catalog lookup, then
// the server's own Infer (server/infer.h): CheckInfer (the shape, the
// limits, max_length, the response size, return_state on a bidirectional
// model) and RunInfer (the input's values, the model run in pieces of whole
// sequences or as a Session for return_state, the output tensor and the
// state), all on the tiny models. The transport (gRPC, the pool,
// cancellation) is out of scope: `stop` never stops.
//
// Contracts checked besides the sanitizers':
//   - every refusal is InvalidArgument, NotFound, ResourceExhausted or
//     FailedPrecondition, with a bounded message (it reaches the client
//     and the log);
//   - an accepted request's output has the promised shape, names the
//     model version that ran, and a returned state imports again.

#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "fuzz_util.h"
#include "server/infer.h"
#include "ssm/session.h"
#include "ssm/v1/ssm_service.pb.h"

namespace ssm::fuzz {
namespace {

namespace v1 = ::ssm::v1;

absl::Status Infer(const v1::InferRequest& request, v1::InferResponse* response) {
  absl::StatusOr<server::ServedModel> served = Catalog().Find(request.model(), request.version());
  if (!served.ok()) return served.status();
  absl::StatusOr<server::SequenceShape> shape = server::CheckInfer(request, *served, Limits());
  if (!shape.ok()) return shape.status();
  absl::Status status = server::RunInfer(
      request, *served, *shape, /*signer=*/nullptr,
      [](int64_t, int64_t, const char*) { return absl::OkStatus(); }, response);
  if (!status.ok()) return status;
  // The response is what was promised.
  const v1::Tensor& out = response->output();
  Check(out.shape_size() == 3 && out.shape(0) == shape->batch && out.shape(1) == shape->steps &&
            out.shape(2) == served->model->d_output() &&
            out.values_size() == shape->batch * shape->steps * served->model->d_output(),
        "Infer output has the wrong shape");
  Check(response->model() == served->name && response->version() == served->version,
        "Infer names another model version than the one that ran");
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
  if (!status.ok()) CheckInferRefusal(status, "Infer");
  return 0;
}
