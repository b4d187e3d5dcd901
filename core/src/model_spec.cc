#include "ssm/model_spec.h"

#include <cmath>

#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "ssm/kernel.h"

namespace ssm {
namespace {

absl::Status Invalid(absl::string_view field, absl::string_view why) {
  return absl::InvalidArgumentError(absl::StrCat(field, ": ", why));
}

absl::Status ValidateS4(const ModelSpec& spec, const S4StackSpec& s4) {
  if (s4.n_layers < 1) return Invalid("s4.n_layers", absl::StrCat("must be >= 1, got ", s4.n_layers));
  if (s4.d_model < 1) return Invalid("s4.d_model", absl::StrCat("must be >= 1, got ", s4.d_model));
  if (s4.d_state < 2 || s4.d_state % 2 != 0) {
    return Invalid("s4.d_state", absl::StrCat("must be even and >= 2 (N/2 complex modes are "
                                              "kept), got ", s4.d_state));
  }
  if (s4.kernel == KernelKind::kDplr) {
    if (s4.rank < 1 || s4.rank > kMaxRank) {
      return Invalid("s4.rank", absl::StrCat("a DPLR kernel needs rank in [1, ", kMaxRank,
                                             "], got ", s4.rank));
    }
    const Discretization& d = s4.discretization;
    if (d.kind != Discretization::Kind::kGbt || d.alpha != 0.5 || s4.dss) {
      return Invalid("s4.discretization", "a DPLR kernel supports bilinear only");
    }
  } else {
    if (s4.rank != 0) {
      return Invalid("s4.rank", absl::StrCat("a diagonal kernel has rank 0, got ", s4.rank));
    }
    const Discretization& d = s4.discretization;
    const bool zoh = d.kind == Discretization::Kind::kZoh;
    const bool bilinear = d.kind == Discretization::Kind::kGbt && d.alpha == 0.5;
    if (!zoh && !bilinear) {
      return Invalid("s4.discretization", "a diagonal kernel supports ZOH or bilinear");
    }
  }
  if (s4.output_activation != ActivationKind::kIdentity &&
      s4.output_linear != OutputLinearKind::kLinear) {
    return Invalid("s4.output_activation", "applies to OUTPUT_LINEAR_LINEAR only");
  }
  if (s4.final_norm && s4.norm == NormPlacement::kNone) {
    return Invalid("s4.final_norm", "needs a norm (norm is NORM_PLACEMENT_NONE)");
  }
  if (!(s4.layer_norm_eps > 0) || !std::isfinite(s4.layer_norm_eps)) {
    return Invalid("s4.layer_norm_eps",
                   absl::StrCat("must be positive and finite, got ", s4.layer_norm_eps));
  }
  if (!s4.encoder && spec.d_input != s4.d_model) {
    return Invalid("d_input", absl::StrCat("without an encoder it must equal s4.d_model = ",
                                           s4.d_model, ", got ", spec.d_input));
  }
  if (!s4.decoder && spec.d_output != s4.d_model) {
    return Invalid("d_output", absl::StrCat("without a decoder it must equal s4.d_model = ",
                                            s4.d_model, ", got ", spec.d_output));
  }
  return absl::OkStatus();
}

absl::Status ValidateHippo(const ModelSpec& spec, const HippoMemorySpec& h) {
  using Measure = HippoMemorySpec::Measure;
  using Output = HippoMemorySpec::Output;
  if (h.n < 1) return Invalid("hippo.n", absl::StrCat("must be >= 1, got ", h.n));
  if (spec.d_input != 1) {
    return Invalid("d_input", absl::StrCat("a HiPPO memory takes a scalar input (1), got ",
                                           spec.d_input));
  }
  if (h.measure == Measure::kLegT && !(h.window > 0 && std::isfinite(h.window))) {
    return Invalid("hippo.window",
                   absl::StrCat("LegT needs a positive finite window (steps), got ", h.window));
  }
  if (h.output == Output::kCoefficients) {
    if (!h.delays.empty()) return Invalid("hippo.delays", "only with OUTPUT_DELAYED");
    if (spec.d_output != h.n) {
      return Invalid("d_output", absl::StrCat("coefficient outputs need d_output = n = ", h.n,
                                              ", got ", spec.d_output));
    }
    return absl::OkStatus();
  }
  if (h.measure != Measure::kLegT) {
    return Invalid("hippo.output", "delayed outputs need the LegT (sliding window) measure");
  }
  if (h.delays.empty()) return Invalid("hippo.delays", "OUTPUT_DELAYED needs at least one delay");
  for (size_t i = 0; i < h.delays.size(); ++i) {
    // The oldest whole sample of the window sits half a step inside it.
    if (!(h.delays[i] >= 0 && h.delays[i] <= h.window - 0.5)) {
      return Invalid("hippo.delays", absl::StrCat("delay ", i, " = ", h.delays[i],
                                                  " is outside [0, window - 1/2 = ",
                                                  h.window - 0.5, "]"));
    }
  }
  if (spec.d_output != static_cast<int>(h.delays.size())) {
    return Invalid("d_output", absl::StrCat("must equal the number of delays (",
                                            h.delays.size(), "), got ", spec.d_output));
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status ValidateModelSpec(const ModelSpec& spec) {
  if (spec.name.empty()) return Invalid("name", "must not be empty");
  if (spec.d_input < 1) return Invalid("d_input", absl::StrCat("must be >= 1, got ", spec.d_input));
  if (spec.d_output < 1) {
    return Invalid("d_output", absl::StrCat("must be >= 1, got ", spec.d_output));
  }
  if (spec.max_length < 1) {
    return Invalid("max_length", absl::StrCat("must be >= 1, got ", spec.max_length));
  }
  if (const auto* s4 = std::get_if<S4StackSpec>(&spec.architecture)) return ValidateS4(spec, *s4);
  return ValidateHippo(spec, std::get<HippoMemorySpec>(spec.architecture));
}

}  // namespace ssm
