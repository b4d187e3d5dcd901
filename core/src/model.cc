#include "ssm/model.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"
#include "model_internal.h"
#include "model_weights.h"

namespace ssm {
namespace internal {

absl::Status CheckIoArgs(const Model& model, absl::Span<const double> x, int batch, int steps,
                         absl::Span<const double> y) {
  const size_t in = static_cast<size_t>(batch) * steps * model.d_input();
  const size_t out = static_cast<size_t>(batch) * steps * model.d_output();
  if (x.size() != in) {
    return absl::InvalidArgumentError(absl::StrCat(
        "input must have batch x steps x d_input = ", batch, " x ", steps, " x ",
        model.d_input(), " = ", in, " values, got ", x.size()));
  }
  if (y.size() != out) {
    return absl::InvalidArgumentError(absl::StrCat(
        "output must have batch x steps x d_output = ", out, " values, got ", y.size()));
  }
  for (size_t i = 0; i < x.size(); ++i) {
    if (!std::isfinite(x[i])) {
      return absl::InvalidArgumentError(absl::StrCat(
          "input has a non-finite value at index ", i, " (batch ", i / (in / batch), ", step ",
          i / model.d_input() % steps, ", feature ", i % model.d_input(), ")"));
    }
  }
  return absl::OkStatus();
}

absl::Status CheckForwardArgs(const Model& model, absl::Span<const double> x, int batch,
                              int length, absl::Span<const double> y) {
  if (batch < 1) {
    return absl::InvalidArgumentError(absl::StrCat("batch must be >= 1, got ", batch));
  }
  if (length < 1 || length > model.max_length()) {
    return absl::InvalidArgumentError(absl::StrCat("length must be in [1, max_length = ",
                                                   model.max_length(), "], got ", length));
  }
  return CheckIoArgs(model, x, batch, length, y);
}

uint64_t FingerprintOf(const ModelSpec& spec, const SafeTensors* file) {
  // The architecture, field by field (not the name or description: renaming
  // a model does not change what its state means).
  std::string arch = absl::StrCat(spec.d_input, "/", spec.d_output);
  if (const auto* s4 = std::get_if<S4StackSpec>(&spec.architecture)) {
    absl::StrAppend(&arch, "/s4/", s4->n_layers, "/", s4->d_model, "/", s4->d_state, "/",
                    static_cast<int>(s4->kernel), "/",
                    static_cast<int>(s4->discretization.kind), "/", s4->discretization.alpha,
                    "/", s4->rank, "/", static_cast<int>(s4->activation), "/",
                    static_cast<int>(s4->output_linear), "/", static_cast<int>(s4->norm), "/",
                    s4->residual, s4->bidirectional, s4->encoder, s4->decoder, "/",
                    s4->layer_norm_eps);
    // Later fields only when they differ from their defaults, so models that
    // do not use them keep the fingerprints (and snapshots) they had.
    const S4StackSpec defaults;
    if (s4->dss || s4->dt_transform != defaults.dt_transform ||
        s4->real_transform != defaults.real_transform ||
        s4->imag_transform != defaults.imag_transform || s4->dt_fast ||
        s4->output_activation != defaults.output_activation ||
        s4->norm_kind != defaults.norm_kind || s4->final_norm) {
      absl::StrAppend(&arch, "/x/", s4->dss, "/", static_cast<int>(s4->dt_transform), "/",
                      static_cast<int>(s4->real_transform), "/",
                      static_cast<int>(s4->imag_transform), "/", s4->dt_fast, "/",
                      static_cast<int>(s4->output_activation), "/",
                      static_cast<int>(s4->norm_kind), "/", s4->final_norm);
    }
  } else {
    const auto& h = std::get<HippoMemorySpec>(spec.architecture);
    absl::StrAppend(&arch, "/hippo/", static_cast<int>(h.measure), "/", h.n, "/", h.window,
                    "/", static_cast<int>(h.output));
    for (double d : h.delays) absl::StrAppend(&arch, "/", d);
  }
  uint64_t hash = Fnv1a(arch.data(), arch.size());
  if (file == nullptr) return hash;
  for (const std::string& name : file->names()) {
    hash = Fnv1a(name.data(), name.size() + 1, hash);
    const TensorInfo* info = file->info(name);
    hash = Fnv1a(info->shape.data(), info->shape.size() * sizeof(int64_t), hash);
    absl::StatusOr<std::vector<double>> v = file->ReadDoubles(name);
    if (v.ok()) hash = Fnv1a(v->data(), v->size() * sizeof(double), hash);
  }
  return hash;
}

}  // namespace internal

void Model::AdvanceShort(absl::Span<ShortChunk> chunks, int batch, int steps,
                         std::vector<double>& scratch) const {
  const size_t n = static_cast<size_t>(batch) * state_size();
  for (ShortChunk& c : chunks) {
    std::copy(c.state_in, c.state_in + n, c.state_out);
    c.status = Advance(c.x, batch, steps, c.position, absl::MakeSpan(c.state_out, n), c.y,
                       scratch);
  }
}

absl::StatusOr<std::shared_ptr<const Model>> LoadModel(const ModelSpec& spec,
                                                       const SafeTensors* weights) {
  if (auto st = ValidateModelSpec(spec); !st.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("model '", spec.name, "': config: ", st.message()));
  }
  if (const auto* s4 = std::get_if<S4StackSpec>(&spec.architecture)) {
    if (weights == nullptr) {
      return absl::InvalidArgumentError(
          absl::StrCat("model '", spec.name, "': an S4 stack needs a weights file"));
    }
    return internal::LoadS4Stack(spec, *s4, *weights);
  }
  return internal::LoadHippoMemory(spec, std::get<HippoMemorySpec>(spec.architecture), weights);
}

}  // namespace ssm
