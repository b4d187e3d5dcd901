#include "server/tensor_codec.h"

#include <cmath>
#include <limits>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "server/limits.h"

namespace ssm::server {
namespace {

// At most this many of a shape's dimensions are echoed: a client may send
// millions (a packed repeated field), and the message goes back to it and
// into the log (echo.h's rule for client text).
constexpr int kMaxEchoedDims = 8;

std::string ShapeText(const ssm::v1::Tensor& tensor) {
  const auto& shape = tensor.shape();
  if (shape.size() <= kMaxEchoedDims) return absl::StrCat("[", absl::StrJoin(shape, ", "), "]");
  return absl::StrCat("[", absl::StrJoin(shape.begin(), shape.begin() + kMaxEchoedDims, ", "),
                      ", ... (", shape.size(), " dimensions)]");
}

}  // namespace

absl::StatusOr<SequenceShape> CheckSequenceShape(const ssm::v1::Tensor& tensor,
                                                 absl::string_view field,
                                                 int64_t features,
                                                 absl::string_view model_name) {
  if (tensor.shape_size() != 3) {
    return absl::InvalidArgumentError(absl::StrCat(
        field, ".shape must have 3 dimensions [batch, steps, features], got ",
        ShapeText(tensor)));
  }
  static constexpr const char* kNames[] = {"batch", "steps", "features"};
  for (int i = 0; i < 3; ++i) {
    if (tensor.shape(i) < 1) {
      return absl::InvalidArgumentError(absl::StrCat(field, ".shape[", i, "] (", kNames[i],
                                                     ") must be >= 1, got ", tensor.shape(i)));
    }
  }
  if (tensor.shape(2) != features) {
    return absl::InvalidArgumentError(absl::StrCat(field, ".shape[2] = ", tensor.shape(2),
                                                   " but model '", model_name,
                                                   "' takes d_input ", features));
  }
  SequenceShape shape{tensor.shape(0), tensor.shape(1), tensor.shape(2)};
  // Each dimension is >= 1, so the product only grows: saturate instead of
  // letting a hostile shape wrap around to a plausible count.
  int64_t needed = 1;
  bool overflow = false;
  for (int64_t d : tensor.shape()) {
    if (needed > std::numeric_limits<int64_t>::max() / d) {
      overflow = true;
      break;
    }
    needed *= d;
  }
  if (overflow || needed != tensor.values_size()) {
    return absl::InvalidArgumentError(absl::StrCat(
        field, ".values holds ", tensor.values_size(), " values but shape ", ShapeText(tensor),
        " needs ", overflow ? std::string("more than 2^63") : absl::StrCat(needed)));
  }
  return shape;
}

absl::Status ReadFiniteValues(const ssm::v1::Tensor& tensor, absl::string_view field,
                              std::vector<double>* out) {
  const int n = tensor.values_size();
  out->resize(n);
  const float* in = tensor.values().data();
  double* dst = out->data();
  for (int i = 0; i < n; ++i) {
    const float v = in[i];
    if (!std::isfinite(v)) {
      const char* what = std::isnan(v) ? "NaN" : (v > 0 ? "+Inf" : "-Inf");
      return absl::InvalidArgumentError(absl::StrCat(field, ".values[", i, "] is ", what));
    }
    dst[i] = v;
  }
  return absl::OkStatus();
}

absl::StatusOr<SequenceShape> ReadStreamChunk(const ssm::v1::Tensor& chunk, bool want_state,
                                              const SessionManager::Entry& session,
                                              const RequestLimits& limits, std::vector<double>* x) {
  absl::StatusOr<SequenceShape> shape =
      CheckSequenceShape(chunk, "chunk", session.d_input(), session.model_name());
  if (!shape.ok()) return shape.status();
  if (shape->batch != session.batch()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "chunk.shape[0] = ", shape->batch, " but the session's batch is ", session.batch()));
  }
  if (shape->steps > limits.max_chunk_steps) {
    return absl::ResourceExhaustedError(
        absl::StrCat("chunk.shape[1] = ", shape->steps,
                     " steps exceeds --max_chunk_steps=", limits.max_chunk_steps));
  }
  const SequenceShape out{shape->batch, shape->steps, session.d_output()};
  if (absl::Status s = CheckResponseBytes(out.size() * 4 + (want_state ? session.state_bytes() : 0),
                                          "the chunk's output", limits);
      !s.ok()) {
    return s;
  }
  if (absl::Status s = ReadFiniteValues(chunk, "chunk", x); !s.ok()) return s;
  return out;
}

absl::Status CheckWireValues(absl::Span<const double> values, const SequenceShape& shape,
                             absl::string_view field) {
  for (size_t i = 0; i < values.size(); ++i) {
    if (!(std::abs(values[i]) <= kMaxWireValue)) {  // NaN fails too
      const int64_t f = shape.features, t = shape.steps;
      const int64_t at = static_cast<int64_t>(i);
      return absl::InvalidArgumentError(absl::StrCat(
          field, "[", at / (t * f), ", ", at / f % t, ", ", at % f, "] would be ", values[i],
          ", which float32 cannot carry: the inputs are too large for this model"));
    }
  }
  return absl::OkStatus();
}

void WriteSequenceTensor(absl::Span<const double> values, const SequenceShape& shape,
                         ssm::v1::Tensor* tensor) {
  tensor->Clear();
  tensor->add_shape(shape.batch);
  tensor->add_shape(shape.steps);
  tensor->add_shape(shape.features);
  auto* out = tensor->mutable_values();
  out->Resize(static_cast<int>(values.size()), 0.0f);
  float* dst = out->mutable_data();
  for (size_t i = 0; i < values.size(); ++i) dst[i] = static_cast<float>(values[i]);
}

void WriteStateSnapshot(const SessionSnapshot& snapshot, ssm::v1::StateSnapshot* out) {
  out->set_data(snapshot.data);
  out->set_model(snapshot.model);
  out->set_version(snapshot.version);
  out->set_fingerprint(snapshot.fingerprint);
  out->set_position(snapshot.position);
  out->set_batch(snapshot.batch);
  out->set_signature(snapshot.signature);
}

}  // namespace ssm::server
