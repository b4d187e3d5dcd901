#include "server/model_config.h"

#include <climits>
#include <utility>
#include <variant>

#include <google/protobuf/io/tokenizer.h>
#include <google/protobuf/io/zero_copy_stream_impl_lite.h>
#include <google/protobuf/text_format.h>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "ssm/file_io.h"

namespace ssm::server {
namespace {

namespace v1 = ::ssm::v1;

// Far above any real config (a few hundred bytes; a HiPPO model's delays
// are at most a few thousand numbers), low enough that a weights file
// misnamed config.pbtxt is refused instead of read into memory.
constexpr size_t kMaxConfigBytes = size_t{1} << 20;

// PyTorch's LayerNorm default; the schema reads 0 as "unset".
constexpr double kDefaultLayerNormEps = 1e-5;

absl::Status UnknownEnum(absl::string_view field, int value) {
  return absl::InvalidArgumentError(
      absl::StrCat(field, ": unknown value ", value, " (not in the schema)"));
}

// UNSPECIFIED is the field's documented default, which differs per field.
absl::StatusOr<ssm::ActivationKind> ActivationFromConfig(v1::Activation a,
                                                         ssm::ActivationKind unspecified,
                                                         absl::string_view field) {
  switch (a) {
    case v1::ACTIVATION_UNSPECIFIED:
      return unspecified;
    case v1::ACTIVATION_GELU:
      return ssm::ActivationKind::kGelu;
    case v1::ACTIVATION_IDENTITY:
      return ssm::ActivationKind::kIdentity;
    case v1::ACTIVATION_TANH:
      return ssm::ActivationKind::kTanh;
    case v1::ACTIVATION_RELU:
      return ssm::ActivationKind::kRelu;
    case v1::ACTIVATION_SILU:
      return ssm::ActivationKind::kSilu;
    case v1::ACTIVATION_SIGMOID:
      return ssm::ActivationKind::kSigmoid;
    case v1::ACTIVATION_ELU:
      return ssm::ActivationKind::kElu;
    case v1::ACTIVATION_SOFTPLUS:
      return ssm::ActivationKind::kSoftplus;
    default:
      return UnknownEnum(field, a);
  }
}

v1::Activation ActivationToConfig(ssm::ActivationKind a) {
  switch (a) {
    case ssm::ActivationKind::kGelu:
      return v1::ACTIVATION_GELU;
    case ssm::ActivationKind::kIdentity:
      return v1::ACTIVATION_IDENTITY;
    case ssm::ActivationKind::kTanh:
      return v1::ACTIVATION_TANH;
    case ssm::ActivationKind::kRelu:
      return v1::ACTIVATION_RELU;
    case ssm::ActivationKind::kSilu:
      return v1::ACTIVATION_SILU;
    case ssm::ActivationKind::kSigmoid:
      return v1::ACTIVATION_SIGMOID;
    case ssm::ActivationKind::kElu:
      return v1::ACTIVATION_ELU;
    case ssm::ActivationKind::kSoftplus:
      return v1::ACTIVATION_SOFTPLUS;
  }
  return v1::ACTIVATION_UNSPECIFIED;
}

absl::StatusOr<ssm::ParamTransform> TransformFromConfig(v1::ParamTransform t,
                                                        ssm::ParamTransform unspecified,
                                                        absl::string_view field) {
  switch (t) {
    case v1::PARAM_TRANSFORM_UNSPECIFIED:
      return unspecified;
    case v1::PARAM_TRANSFORM_NONE:
      return ssm::ParamTransform::kNone;
    case v1::PARAM_TRANSFORM_EXP:
      return ssm::ParamTransform::kExp;
    case v1::PARAM_TRANSFORM_RELU:
      return ssm::ParamTransform::kRelu;
    case v1::PARAM_TRANSFORM_SIGMOID:
      return ssm::ParamTransform::kSigmoid;
    case v1::PARAM_TRANSFORM_SOFTPLUS:
      return ssm::ParamTransform::kSoftplus;
    default:
      return UnknownEnum(field, t);
  }
}

v1::ParamTransform TransformToConfig(ssm::ParamTransform t) {
  switch (t) {
    case ssm::ParamTransform::kNone:
      return v1::PARAM_TRANSFORM_NONE;
    case ssm::ParamTransform::kExp:
      return v1::PARAM_TRANSFORM_EXP;
    case ssm::ParamTransform::kRelu:
      return v1::PARAM_TRANSFORM_RELU;
    case ssm::ParamTransform::kSigmoid:
      return v1::PARAM_TRANSFORM_SIGMOID;
    case ssm::ParamTransform::kSoftplus:
      return v1::PARAM_TRANSFORM_SOFTPLUS;
  }
  return v1::PARAM_TRANSFORM_UNSPECIFIED;
}

absl::StatusOr<ssm::S4StackSpec> S4FromConfig(const v1::S4Stack& s4) {
  ssm::S4StackSpec spec;
  spec.n_layers = s4.n_layers();
  spec.d_model = s4.d_model();
  spec.d_state = s4.d_state();
  spec.rank = s4.rank();
  // Omitted means true (the S4 block's usual shape), not proto3's false.
  spec.residual = s4.has_residual() ? s4.residual() : true;
  spec.bidirectional = s4.bidirectional();
  spec.encoder = s4.has_encoder() ? s4.encoder() : true;
  spec.decoder = s4.has_decoder() ? s4.decoder() : true;
  spec.layer_norm_eps = s4.layer_norm_eps() == 0 ? kDefaultLayerNormEps : s4.layer_norm_eps();

  // No default: the two kinds need different weights, so guessing would only
  // move the error to weight loading.
  switch (s4.kernel()) {
    case v1::KERNEL_KIND_DPLR:
      spec.kernel = ssm::KernelKind::kDplr;
      break;
    case v1::KERNEL_KIND_DIAGONAL:
      spec.kernel = ssm::KernelKind::kDiagonal;
      break;
    case v1::KERNEL_KIND_UNSPECIFIED:
      return absl::InvalidArgumentError(
          "s4.kernel: must be set (KERNEL_KIND_DPLR or KERNEL_KIND_DIAGONAL)");
    default:
      return UnknownEnum("s4.kernel", s4.kernel());
  }

  switch (s4.discretization()) {
    case v1::DISCRETIZATION_KIND_UNSPECIFIED:
      spec.discretization = spec.kernel == ssm::KernelKind::kDplr ? ssm::Discretization::Bilinear()
                                                                  : ssm::Discretization::Zoh();
      break;
    case v1::DISCRETIZATION_KIND_BILINEAR:
      spec.discretization = ssm::Discretization::Bilinear();
      break;
    case v1::DISCRETIZATION_KIND_ZOH:
      spec.discretization = ssm::Discretization::Zoh();
      break;
    case v1::DISCRETIZATION_KIND_DSS:
      // The DSS kernel has no discretization of its own; ZOH's is the one
      // a diagonal spec would otherwise carry.
      spec.discretization = ssm::Discretization::Zoh();
      spec.dss = true;
      break;
    default:
      return UnknownEnum("s4.discretization", s4.discretization());
  }

  absl::StatusOr<ssm::ActivationKind> activation =
      ActivationFromConfig(s4.activation(), ssm::ActivationKind::kGelu, "s4.activation");
  if (!activation.ok()) return activation.status();
  spec.activation = *activation;
  absl::StatusOr<ssm::ActivationKind> output_activation = ActivationFromConfig(
      s4.output_activation(), ssm::ActivationKind::kIdentity, "s4.output_activation");
  if (!output_activation.ok()) return output_activation.status();
  spec.output_activation = *output_activation;

  struct TransformField {
    v1::ParamTransform value;
    ssm::ParamTransform unspecified;
    const char* name;
    ssm::ParamTransform* out;
  };
  for (const TransformField& f :
       {TransformField{s4.dt_transform(), ssm::ParamTransform::kExp, "s4.dt_transform",
                       &spec.dt_transform},
        TransformField{s4.real_transform(), ssm::ParamTransform::kExp, "s4.real_transform",
                       &spec.real_transform},
        TransformField{s4.imag_transform(), ssm::ParamTransform::kNone, "s4.imag_transform",
                       &spec.imag_transform}}) {
    absl::StatusOr<ssm::ParamTransform> t = TransformFromConfig(f.value, f.unspecified, f.name);
    if (!t.ok()) return t.status();
    *f.out = *t;
  }
  spec.dt_fast = s4.dt_fast();
  spec.final_norm = s4.final_norm();

  switch (s4.norm_kind()) {
    case v1::NORM_KIND_UNSPECIFIED:
    case v1::NORM_KIND_LAYER:
      spec.norm_kind = ssm::NormKind::kLayer;
      break;
    case v1::NORM_KIND_BATCH:
      spec.norm_kind = ssm::NormKind::kBatch;
      break;
    default:
      return UnknownEnum("s4.norm_kind", s4.norm_kind());
  }

  switch (s4.output_linear()) {
    case v1::OUTPUT_LINEAR_UNSPECIFIED:
    case v1::OUTPUT_LINEAR_GLU:
      spec.output_linear = ssm::OutputLinearKind::kGlu;
      break;
    case v1::OUTPUT_LINEAR_LINEAR:
      spec.output_linear = ssm::OutputLinearKind::kLinear;
      break;
    case v1::OUTPUT_LINEAR_NONE:
      spec.output_linear = ssm::OutputLinearKind::kNone;
      break;
    default:
      return UnknownEnum("s4.output_linear", s4.output_linear());
  }

  switch (s4.norm()) {
    case v1::NORM_PLACEMENT_UNSPECIFIED:
    case v1::NORM_PLACEMENT_POST:
      spec.norm = ssm::NormPlacement::kPost;
      break;
    case v1::NORM_PLACEMENT_NONE:
      spec.norm = ssm::NormPlacement::kNone;
      break;
    case v1::NORM_PLACEMENT_PRE:
      spec.norm = ssm::NormPlacement::kPre;
      break;
    default:
      return UnknownEnum("s4.norm", s4.norm());
  }

  // The spec has no field for it: S4_REFERENCE is the only naming there is,
  // so the check is all that is left to do.
  switch (s4.weight_naming()) {
    case v1::WEIGHT_NAMING_UNSPECIFIED:
    case v1::WEIGHT_NAMING_S4_REFERENCE:
      break;
    default:
      return UnknownEnum("s4.weight_naming", s4.weight_naming());
  }
  return spec;
}

absl::StatusOr<ssm::HippoMemorySpec> HippoFromConfig(const v1::HippoMemory& hippo) {
  ssm::HippoMemorySpec spec;
  spec.n = hippo.n();
  spec.window = hippo.window();
  spec.delays.assign(hippo.delays().begin(), hippo.delays().end());

  // Neither has a documented default: the measure decides what the model
  // computes and the output decides d_output.
  switch (hippo.measure()) {
    case v1::HippoMemory::MEASURE_LEGT:
      spec.measure = ssm::HippoMemorySpec::Measure::kLegT;
      break;
    case v1::HippoMemory::MEASURE_LEGS:
      spec.measure = ssm::HippoMemorySpec::Measure::kLegS;
      break;
    case v1::HippoMemory::MEASURE_UNSPECIFIED:
      return absl::InvalidArgumentError(
          "hippo.measure: must be set (MEASURE_LEGT or MEASURE_LEGS)");
    default:
      return UnknownEnum("hippo.measure", hippo.measure());
  }

  switch (hippo.output()) {
    case v1::HippoMemory::OUTPUT_COEFFICIENTS:
      spec.output = ssm::HippoMemorySpec::Output::kCoefficients;
      break;
    case v1::HippoMemory::OUTPUT_DELAYED:
      spec.output = ssm::HippoMemorySpec::Output::kDelayed;
      break;
    case v1::HippoMemory::OUTPUT_UNSPECIFIED:
      return absl::InvalidArgumentError(
          "hippo.output: must be set (OUTPUT_COEFFICIENTS or OUTPUT_DELAYED)");
    default:
      return UnknownEnum("hippo.output", hippo.output());
  }
  return spec;
}

// Keeps the first error only: the parser stops there, and what follows an
// error is usually a consequence of it.
class FirstErrorCollector : public google::protobuf::io::ErrorCollector {
 public:
  explicit FirstErrorCollector(absl::string_view source) : source_(source) {}

  void AddError(int line, google::protobuf::io::ColumnNumber column,
                const std::string& message) override {
    if (!error_.empty()) return;
    // The parser reports 0-based positions, and line -1 for errors without
    // one; people and editors count from 1.
    error_ = line < 0 ? absl::StrCat(source_, ": ", message)
                      : absl::StrCat(source_, ":", line + 1, ":", column + 1, ": ", message);
  }

  // Empty if no error was reported.
  const std::string& error() const { return error_; }

 private:
  absl::string_view source_;
  std::string error_;
};

absl::Status WithSource(absl::string_view source, const absl::Status& status) {
  return absl::Status(status.code(), absl::StrCat(source, ": ", status.message()));
}

}  // namespace

absl::StatusOr<ssm::ModelSpec> ModelSpecFromConfig(const ssm::v1::ModelConfig& config) {
  ssm::ModelSpec spec;
  spec.name = config.name();
  spec.description = config.description();
  spec.d_input = config.d_input();
  spec.d_output = config.d_output();
  spec.max_length = config.max_length();

  switch (config.architecture_case()) {
    case v1::ModelConfig::kS4: {
      absl::StatusOr<ssm::S4StackSpec> s4 = S4FromConfig(config.s4());
      if (!s4.ok()) return s4.status();
      spec.architecture = *std::move(s4);
      break;
    }
    case v1::ModelConfig::kHippo: {
      absl::StatusOr<ssm::HippoMemorySpec> hippo = HippoFromConfig(config.hippo());
      if (!hippo.ok()) return hippo.status();
      spec.architecture = *std::move(hippo);
      break;
    }
    case v1::ModelConfig::ARCHITECTURE_NOT_SET:
      return absl::InvalidArgumentError("architecture: missing; set one of s4 or hippo");
  }

  absl::Status valid = ssm::ValidateModelSpec(spec);
  if (!valid.ok()) return valid;
  return spec;
}

absl::StatusOr<ssm::ModelSpec> ParseModelConfigText(absl::string_view text,
                                                    absl::string_view source) {
  if (text.size() > static_cast<size_t>(INT_MAX)) {
    return absl::InvalidArgumentError(
        absl::StrCat(source, ": ", text.size(), " bytes is too large for a model config"));
  }
  FirstErrorCollector errors(source);
  google::protobuf::TextFormat::Parser parser;
  parser.RecordErrorsTo(&errors);
  parser.AllowUnknownField(false);
  parser.AllowUnknownExtension(false);

  v1::ModelConfig config;
  google::protobuf::io::ArrayInputStream input(text.data(), static_cast<int>(text.size()));
  const bool parsed = parser.Parse(&input, &config);
  if (!errors.error().empty()) return absl::InvalidArgumentError(errors.error());
  if (!parsed) {
    return absl::InvalidArgumentError(
        absl::StrCat(source, ": not a ModelConfig in protobuf text format"));
  }
  absl::StatusOr<ssm::ModelSpec> spec = ModelSpecFromConfig(config);
  if (!spec.ok()) return WithSource(source, spec.status());
  return spec;
}

absl::StatusOr<ssm::ModelSpec> ReadModelConfig(const std::string& path) {
  ssm::ReadFileOptions options;
  options.max_bytes = kMaxConfigBytes;
  absl::StatusOr<std::string> text = ssm::ReadFileToString(path, options);
  if (!text.ok()) return text.status();
  return ParseModelConfigText(*text, path);
}

ssm::v1::ModelConfig ModelConfigFromSpec(const ssm::ModelSpec& spec) {
  v1::ModelConfig config;
  config.set_name(spec.name);
  config.set_description(spec.description);
  config.set_d_input(spec.d_input);
  config.set_d_output(spec.d_output);
  config.set_max_length(spec.max_length);

  if (const auto* s4_spec = std::get_if<ssm::S4StackSpec>(&spec.architecture)) {
    v1::S4Stack& s4 = *config.mutable_s4();
    s4.set_n_layers(s4_spec->n_layers);
    s4.set_d_model(s4_spec->d_model);
    s4.set_d_state(s4_spec->d_state);
    s4.set_kernel(s4_spec->kernel == ssm::KernelKind::kDplr ? v1::KERNEL_KIND_DPLR
                                                            : v1::KERNEL_KIND_DIAGONAL);
    const ssm::Discretization& d = s4_spec->discretization;
    if (s4_spec->dss) {
      s4.set_discretization(v1::DISCRETIZATION_KIND_DSS);
    } else if (d.kind == ssm::Discretization::Kind::kZoh) {
      s4.set_discretization(v1::DISCRETIZATION_KIND_ZOH);
    } else if (d.alpha == 0.5) {
      s4.set_discretization(v1::DISCRETIZATION_KIND_BILINEAR);
    } else {
      s4.set_discretization(v1::DISCRETIZATION_KIND_UNSPECIFIED);
    }
    s4.set_rank(s4_spec->rank);
    s4.set_activation(ActivationToConfig(s4_spec->activation));
    s4.set_output_activation(ActivationToConfig(s4_spec->output_activation));
    s4.set_dt_transform(TransformToConfig(s4_spec->dt_transform));
    s4.set_real_transform(TransformToConfig(s4_spec->real_transform));
    s4.set_imag_transform(TransformToConfig(s4_spec->imag_transform));
    s4.set_dt_fast(s4_spec->dt_fast);
    s4.set_norm_kind(s4_spec->norm_kind == ssm::NormKind::kBatch ? v1::NORM_KIND_BATCH
                                                                 : v1::NORM_KIND_LAYER);
    s4.set_final_norm(s4_spec->final_norm);
    switch (s4_spec->output_linear) {
      case ssm::OutputLinearKind::kGlu:
        s4.set_output_linear(v1::OUTPUT_LINEAR_GLU);
        break;
      case ssm::OutputLinearKind::kLinear:
        s4.set_output_linear(v1::OUTPUT_LINEAR_LINEAR);
        break;
      case ssm::OutputLinearKind::kNone:
        s4.set_output_linear(v1::OUTPUT_LINEAR_NONE);
        break;
    }
    switch (s4_spec->norm) {
      case ssm::NormPlacement::kNone:
        s4.set_norm(v1::NORM_PLACEMENT_NONE);
        break;
      case ssm::NormPlacement::kPre:
        s4.set_norm(v1::NORM_PLACEMENT_PRE);
        break;
      case ssm::NormPlacement::kPost:
        s4.set_norm(v1::NORM_PLACEMENT_POST);
        break;
    }
    s4.set_residual(s4_spec->residual);
    s4.set_bidirectional(s4_spec->bidirectional);
    s4.set_encoder(s4_spec->encoder);
    s4.set_decoder(s4_spec->decoder);
    s4.set_layer_norm_eps(s4_spec->layer_norm_eps);
    s4.set_weight_naming(v1::WEIGHT_NAMING_S4_REFERENCE);
  } else {
    const auto& hippo_spec = std::get<ssm::HippoMemorySpec>(spec.architecture);
    v1::HippoMemory& hippo = *config.mutable_hippo();
    hippo.set_measure(hippo_spec.measure == ssm::HippoMemorySpec::Measure::kLegT
                          ? v1::HippoMemory::MEASURE_LEGT
                          : v1::HippoMemory::MEASURE_LEGS);
    hippo.set_n(hippo_spec.n);
    hippo.set_window(hippo_spec.window);
    hippo.set_output(hippo_spec.output == ssm::HippoMemorySpec::Output::kCoefficients
                         ? v1::HippoMemory::OUTPUT_COEFFICIENTS
                         : v1::HippoMemory::OUTPUT_DELAYED);
    hippo.mutable_delays()->Assign(hippo_spec.delays.begin(), hippo_spec.delays.end());
  }
  return config;
}

std::string ModelConfigToText(const ssm::v1::ModelConfig& config) {
  std::string text;
  google::protobuf::TextFormat::Printer printer;
  // Cannot fail for a message of a known type; an empty result would say so.
  printer.PrintToString(config, &text);
  return text;
}

}  // namespace ssm::server
