#include "server/model_config.h"

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <ostream>
#include <string>
#include <utility>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"

namespace ssm::server {
namespace {

using ::testing::HasSubstr;
using ::testing::StartsWith;

// Every S4 field set, none of them to its default.
constexpr char kFullS4[] = R"pb(
  name: "s4_full"
  description: "An S4D stack with every field set."
  d_input: 3
  d_output: 5
  max_length: 1024
  s4 {
    n_layers: 4
    d_model: 16
    d_state: 32
    kernel: KERNEL_KIND_DIAGONAL
    discretization: DISCRETIZATION_KIND_BILINEAR
    rank: 0
    activation: ACTIVATION_IDENTITY
    output_linear: OUTPUT_LINEAR_LINEAR
    norm: NORM_PLACEMENT_PRE
    residual: true
    bidirectional: true
    encoder: true
    decoder: true
    layer_norm_eps: 1e-6
    weight_naming: WEIGHT_NAMING_S4_REFERENCE
  }
)pb";

// Only what has no default.
constexpr char kMinimalDplr[] = R"pb(
  name: "s4_min"
  d_input: 8
  d_output: 8
  max_length: 256
  s4 { n_layers: 1 d_model: 8 d_state: 64 kernel: KERNEL_KIND_DPLR rank: 1 }
)pb";

// A plain SSM layer: no encoder or decoder, so d_input = d_output = H.
constexpr char kPlainSsm[] = R"pb(
  name: "s4_plain"
  d_input: 8
  d_output: 8
  max_length: 256
  s4 { n_layers: 1 d_model: 8 d_state: 64 kernel: KERNEL_KIND_DPLR rank: 1
       encoder: false decoder: false }
)pb";

constexpr char kHippoDelayed[] = R"pb(
  name: "legt_delays"
  description: "Delay line."
  d_input: 1
  d_output: 3
  max_length: 4096
  hippo {
    measure: MEASURE_LEGT
    n: 32
    window: 100
    output: OUTPUT_DELAYED
    delays: [ 0, 37.5, 99.5 ]
  }
)pb";

constexpr char kHippoLegS[] = R"pb(
  name: "legs"
  d_input: 1
  d_output: 16
  max_length: 512
  hippo { measure: MEASURE_LEGS n: 16 output: OUTPUT_COEFFICIENTS }
)pb";

ModelSpec ParseOrDie(absl::string_view text) {
  absl::StatusOr<ModelSpec> spec = ParseModelConfigText(text, "test.pbtxt");
  EXPECT_TRUE(spec.ok()) << spec.status();
  return spec.ok() ? *std::move(spec) : ModelSpec();
}

void ExpectSpecEq(const ModelSpec& a, const ModelSpec& b) {
  EXPECT_EQ(a.name, b.name);
  EXPECT_EQ(a.description, b.description);
  EXPECT_EQ(a.d_input, b.d_input);
  EXPECT_EQ(a.d_output, b.d_output);
  EXPECT_EQ(a.max_length, b.max_length);
  ASSERT_EQ(a.architecture.index(), b.architecture.index());
  if (const auto* sa = std::get_if<S4StackSpec>(&a.architecture)) {
    const auto& sb = std::get<S4StackSpec>(b.architecture);
    EXPECT_EQ(sa->n_layers, sb.n_layers);
    EXPECT_EQ(sa->d_model, sb.d_model);
    EXPECT_EQ(sa->d_state, sb.d_state);
    EXPECT_EQ(sa->kernel, sb.kernel);
    EXPECT_EQ(sa->discretization.kind, sb.discretization.kind);
    EXPECT_EQ(sa->discretization.alpha, sb.discretization.alpha);
    EXPECT_EQ(sa->rank, sb.rank);
    EXPECT_EQ(sa->activation, sb.activation);
    EXPECT_EQ(sa->output_linear, sb.output_linear);
    EXPECT_EQ(sa->norm, sb.norm);
    EXPECT_EQ(sa->residual, sb.residual);
    EXPECT_EQ(sa->bidirectional, sb.bidirectional);
    EXPECT_EQ(sa->encoder, sb.encoder);
    EXPECT_EQ(sa->decoder, sb.decoder);
    EXPECT_EQ(sa->layer_norm_eps, sb.layer_norm_eps);
    EXPECT_EQ(sa->dss, sb.dss);
    EXPECT_EQ(sa->dt_transform, sb.dt_transform);
    EXPECT_EQ(sa->real_transform, sb.real_transform);
    EXPECT_EQ(sa->imag_transform, sb.imag_transform);
    EXPECT_EQ(sa->dt_fast, sb.dt_fast);
    EXPECT_EQ(sa->output_activation, sb.output_activation);
    EXPECT_EQ(sa->norm_kind, sb.norm_kind);
    EXPECT_EQ(sa->final_norm, sb.final_norm);
  } else {
    const auto& ha = std::get<HippoMemorySpec>(a.architecture);
    const auto& hb = std::get<HippoMemorySpec>(b.architecture);
    EXPECT_EQ(ha.measure, hb.measure);
    EXPECT_EQ(ha.n, hb.n);
    EXPECT_EQ(ha.window, hb.window);
    EXPECT_EQ(ha.output, hb.output);
    EXPECT_EQ(ha.delays, hb.delays);
  }
}

TEST(ModelConfigTest, FullS4MapsEveryField) {
  const ModelSpec spec = ParseOrDie(kFullS4);
  EXPECT_EQ(spec.name, "s4_full");
  EXPECT_EQ(spec.description, "An S4D stack with every field set.");
  EXPECT_EQ(spec.d_input, 3);
  EXPECT_EQ(spec.d_output, 5);
  EXPECT_EQ(spec.max_length, 1024);
  ASSERT_TRUE(std::holds_alternative<S4StackSpec>(spec.architecture));
  const auto& s4 = std::get<S4StackSpec>(spec.architecture);
  EXPECT_EQ(s4.n_layers, 4);
  EXPECT_EQ(s4.d_model, 16);
  EXPECT_EQ(s4.d_state, 32);
  EXPECT_EQ(s4.kernel, KernelKind::kDiagonal);
  EXPECT_EQ(s4.discretization.kind, Discretization::Kind::kGbt);
  EXPECT_EQ(s4.discretization.alpha, 0.5);
  EXPECT_EQ(s4.rank, 0);
  EXPECT_EQ(s4.activation, ActivationKind::kIdentity);
  EXPECT_EQ(s4.output_linear, OutputLinearKind::kLinear);
  EXPECT_EQ(s4.norm, NormPlacement::kPre);
  EXPECT_TRUE(s4.residual);
  EXPECT_TRUE(s4.bidirectional);
  EXPECT_TRUE(s4.encoder);
  EXPECT_TRUE(s4.decoder);
  EXPECT_EQ(s4.layer_norm_eps, 1e-6);
}

TEST(ModelConfigTest, MinimalDplrGetsTheDocumentedDefaults) {
  const ModelSpec spec = ParseOrDie(kMinimalDplr);
  EXPECT_EQ(spec.name, "s4_min");
  EXPECT_EQ(spec.description, "");
  const auto& s4 = std::get<S4StackSpec>(spec.architecture);
  EXPECT_EQ(s4.kernel, KernelKind::kDplr);
  EXPECT_EQ(s4.rank, 1);
  EXPECT_EQ(s4.discretization.kind, Discretization::Kind::kGbt);  // bilinear
  EXPECT_EQ(s4.discretization.alpha, 0.5);
  EXPECT_EQ(s4.activation, ActivationKind::kGelu);
  EXPECT_EQ(s4.output_linear, OutputLinearKind::kGlu);
  EXPECT_EQ(s4.norm, NormPlacement::kPost);
  EXPECT_EQ(s4.layer_norm_eps, 1e-5);
  // residual, encoder and decoder have presence: omitted means true (the S4
  // block's usual shape); bidirectional is a plain bool (false).
  EXPECT_TRUE(s4.residual);
  EXPECT_FALSE(s4.bidirectional);
  EXPECT_TRUE(s4.encoder);
  EXPECT_TRUE(s4.decoder);
}

TEST(ModelConfigTest, DiagonalDefaultsToZoh) {
  const ModelSpec spec = ParseOrDie(R"pb(
    name: "s4d"
    d_input: 8
    d_output: 8
    max_length: 16
    s4 { n_layers: 2 d_model: 8 d_state: 4 kernel: KERNEL_KIND_DIAGONAL }
  )pb");
  const auto& s4 = std::get<S4StackSpec>(spec.architecture);
  EXPECT_EQ(s4.kernel, KernelKind::kDiagonal);
  EXPECT_EQ(s4.discretization.kind, Discretization::Kind::kZoh);
  EXPECT_EQ(s4.rank, 0);
  EXPECT_EQ(s4.n_layers, 2);
}

// The values neither the full nor the minimal config uses.
TEST(ModelConfigTest, RemainingEnumValues) {
  const ModelSpec spec = ParseOrDie(R"pb(
    name: "rest"
    d_input: 8
    d_output: 8
    max_length: 16
    s4 {
      n_layers: 1
      d_model: 8
      d_state: 4
      kernel: KERNEL_KIND_DIAGONAL
      rank: 0
      discretization: DISCRETIZATION_KIND_ZOH
      activation: ACTIVATION_GELU
      output_linear: OUTPUT_LINEAR_NONE
      norm: NORM_PLACEMENT_NONE
    }
  )pb");
  const auto& s4 = std::get<S4StackSpec>(spec.architecture);
  EXPECT_EQ(s4.discretization.kind, Discretization::Kind::kZoh);
  EXPECT_EQ(s4.activation, ActivationKind::kGelu);
  EXPECT_EQ(s4.output_linear, OutputLinearKind::kNone);
  EXPECT_EQ(s4.norm, NormPlacement::kNone);

  const ModelSpec glu_post = ParseOrDie(R"pb(
    name: "rest"
    d_input: 8
    d_output: 8
    max_length: 16
    s4 {
      n_layers: 1
      d_model: 8
      d_state: 4
      kernel: KERNEL_KIND_DPLR
      rank: 4
      output_linear: OUTPUT_LINEAR_GLU
      norm: NORM_PLACEMENT_POST
    }
  )pb");
  const auto& s4b = std::get<S4StackSpec>(glu_post.architecture);
  EXPECT_EQ(s4b.rank, 4);
  EXPECT_EQ(s4b.output_linear, OutputLinearKind::kGlu);
  EXPECT_EQ(s4b.norm, NormPlacement::kPost);
}

// The training script's parameterizations and layouts.
constexpr char kTrainingScriptS4[] = R"pb(
  name: "s4_training"
  d_input: 3
  d_output: 2
  max_length: 64
  s4 {
    n_layers: 2
    d_model: 8
    d_state: 4
    kernel: KERNEL_KIND_DIAGONAL
    discretization: DISCRETIZATION_KIND_DSS
    activation: ACTIVATION_SILU
    output_linear: OUTPUT_LINEAR_LINEAR
    output_activation: ACTIVATION_TANH
    norm: NORM_PLACEMENT_PRE
    norm_kind: NORM_KIND_BATCH
    final_norm: true
    dt_transform: PARAM_TRANSFORM_SOFTPLUS
    real_transform: PARAM_TRANSFORM_RELU
    imag_transform: PARAM_TRANSFORM_SIGMOID
    dt_fast: true
  }
)pb";

TEST(ModelConfigTest, TrainingScriptFieldsMap) {
  const ModelSpec spec = ParseOrDie(kTrainingScriptS4);
  const auto& s4 = std::get<S4StackSpec>(spec.architecture);
  EXPECT_TRUE(s4.dss);
  EXPECT_EQ(s4.activation, ActivationKind::kSilu);
  EXPECT_EQ(s4.output_activation, ActivationKind::kTanh);
  EXPECT_EQ(s4.norm_kind, NormKind::kBatch);
  EXPECT_TRUE(s4.final_norm);
  EXPECT_EQ(s4.dt_transform, ParamTransform::kSoftplus);
  EXPECT_EQ(s4.real_transform, ParamTransform::kRelu);
  EXPECT_EQ(s4.imag_transform, ParamTransform::kSigmoid);
  EXPECT_TRUE(s4.dt_fast);
  // The defaults: exp, exp, none; identity after a plain linear; LayerNorm.
  const ModelSpec minimal = ParseOrDie(kMinimalDplr);
  const auto& d = std::get<S4StackSpec>(minimal.architecture);
  EXPECT_FALSE(d.dss);
  EXPECT_EQ(d.dt_transform, ParamTransform::kExp);
  EXPECT_EQ(d.real_transform, ParamTransform::kExp);
  EXPECT_EQ(d.imag_transform, ParamTransform::kNone);
  EXPECT_FALSE(d.dt_fast);
  EXPECT_EQ(d.output_activation, ActivationKind::kIdentity);
  EXPECT_EQ(d.norm_kind, NormKind::kLayer);
  EXPECT_FALSE(d.final_norm);

  for (const char* bad : {"discretization: DISCRETIZATION_KIND_DSS",  // DPLR
                          "output_activation: ACTIVATION_TANH",       // GLU
                          "norm: NORM_PLACEMENT_NONE final_norm: true"}) {
    const std::string text =
        absl::StrCat("name: \"x\" d_input: 8 d_output: 8 max_length: 8 s4 { n_layers: 1 "
                     "d_model: 8 d_state: 4 kernel: KERNEL_KIND_DPLR rank: 1 ",
                     bad, " }");
    const absl::Status st = ParseModelConfigText(text, "t.pbtxt").status();
    EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument) << bad;
  }
  for (const char* unknown : {"dt_transform: 9", "norm_kind: 7", "output_activation: 40"}) {
    const std::string text = absl::StrCat(
        "name: \"x\" d_input: 8 d_output: 8 max_length: 8 s4 { n_layers: 1 d_model: 8 "
        "d_state: 4 kernel: KERNEL_KIND_DIAGONAL rank: 0 ",
        unknown, " }");
    const absl::Status st = ParseModelConfigText(text, "t.pbtxt").status();
    EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument) << unknown;
    EXPECT_THAT(std::string(st.message()), HasSubstr("unknown value")) << st;
  }
}

TEST(ModelConfigTest, HippoDelayedMapsEveryField) {
  const ModelSpec spec = ParseOrDie(kHippoDelayed);
  EXPECT_EQ(spec.name, "legt_delays");
  EXPECT_EQ(spec.description, "Delay line.");
  EXPECT_EQ(spec.d_input, 1);
  EXPECT_EQ(spec.d_output, 3);
  EXPECT_EQ(spec.max_length, 4096);
  ASSERT_TRUE(std::holds_alternative<HippoMemorySpec>(spec.architecture));
  const auto& hippo = std::get<HippoMemorySpec>(spec.architecture);
  EXPECT_EQ(hippo.measure, HippoMemorySpec::Measure::kLegT);
  EXPECT_EQ(hippo.n, 32);
  EXPECT_EQ(hippo.window, 100);
  EXPECT_EQ(hippo.output, HippoMemorySpec::Output::kDelayed);
  EXPECT_EQ(hippo.delays, (std::vector<double>{0, 37.5, 99.5}));
}

TEST(ModelConfigTest, HippoLegSCoefficients) {
  const ModelSpec spec = ParseOrDie(kHippoLegS);
  const auto& hippo = std::get<HippoMemorySpec>(spec.architecture);
  EXPECT_EQ(hippo.measure, HippoMemorySpec::Measure::kLegS);
  EXPECT_EQ(hippo.n, 16);
  EXPECT_EQ(hippo.window, 0);
  EXPECT_EQ(hippo.output, HippoMemorySpec::Output::kCoefficients);
  EXPECT_TRUE(hippo.delays.empty());
  EXPECT_EQ(spec.d_output, 16);
}

TEST(ModelConfigTest, RoundTripsThroughText) {
  for (const char* text :
       {kFullS4, kMinimalDplr, kTrainingScriptS4, kHippoDelayed, kHippoLegS}) {
    SCOPED_TRACE(text);
    const ModelSpec spec = ParseOrDie(text);
    const ssm::v1::ModelConfig config = ModelConfigFromSpec(spec);
    absl::StatusOr<ModelSpec> direct = ModelSpecFromConfig(config);
    ASSERT_TRUE(direct.ok()) << direct.status();
    ExpectSpecEq(*direct, spec);

    const std::string written = ModelConfigToText(config);
    const ModelSpec reread = ParseOrDie(written);
    ExpectSpecEq(reread, spec);
    // Idempotent: a rewritten file does not drift.
    EXPECT_EQ(ModelConfigToText(ModelConfigFromSpec(reread)), written);
  }
}

TEST(ModelConfigTest, WrittenConfigSpellsOutDefaults) {
  const std::string text = ModelConfigToText(ModelConfigFromSpec(ParseOrDie(kMinimalDplr)));
  EXPECT_THAT(text, HasSubstr("kernel: KERNEL_KIND_DPLR\n"));
  EXPECT_THAT(text, HasSubstr("discretization: DISCRETIZATION_KIND_BILINEAR\n"));
  EXPECT_THAT(text, HasSubstr("activation: ACTIVATION_GELU\n"));
  EXPECT_THAT(text, HasSubstr("output_linear: OUTPUT_LINEAR_GLU\n"));
  EXPECT_THAT(text, HasSubstr("norm: NORM_PLACEMENT_POST\n"));
  EXPECT_THAT(text, HasSubstr("layer_norm_eps: 1e-05\n"));
  EXPECT_THAT(text, HasSubstr("dt_transform: PARAM_TRANSFORM_EXP\n"));
  EXPECT_THAT(text, HasSubstr("real_transform: PARAM_TRANSFORM_EXP\n"));
  EXPECT_THAT(text, HasSubstr("imag_transform: PARAM_TRANSFORM_NONE\n"));
  EXPECT_THAT(text, HasSubstr("norm_kind: NORM_KIND_LAYER\n"));
  EXPECT_THAT(text, HasSubstr("weight_naming: WEIGHT_NAMING_S4_REFERENCE\n"));
  EXPECT_THAT(text, StartsWith("name: \"s4_min\"\n"));
}

TEST(ModelConfigTest, SpecBuiltInCodeRoundTrips) {
  ModelSpec spec;
  spec.name = "built";
  spec.d_input = 2;
  spec.d_output = 6;
  spec.max_length = 100;
  S4StackSpec s4;
  s4.n_layers = 3;
  s4.d_model = 6;
  s4.d_state = 8;
  s4.kernel = KernelKind::kDplr;
  s4.rank = 2;
  s4.encoder = true;
  s4.decoder = false;
  s4.layer_norm_eps = 0.25;
  spec.architecture = s4;
  ASSERT_TRUE(ValidateModelSpec(spec).ok());
  const ModelSpec reread = ParseOrDie(ModelConfigToText(ModelConfigFromSpec(spec)));
  ExpectSpecEq(reread, spec);
}

// Error cases. Each gives InvalidArgument, and the message leads with the
// source and names the field.

void ExpectInvalid(absl::string_view text, absl::string_view fragment) {
  absl::StatusOr<ModelSpec> spec = ParseModelConfigText(text, "m/config.pbtxt");
  ASSERT_FALSE(spec.ok());
  EXPECT_EQ(spec.status().code(), absl::StatusCode::kInvalidArgument) << spec.status();
  EXPECT_THAT(std::string(spec.status().message()), StartsWith("m/config.pbtxt:"));
  EXPECT_THAT(std::string(spec.status().message()), HasSubstr(std::string(fragment)));
}

TEST(ModelConfigTest, SyntaxErrorGivesLineAndColumn) {
  const std::string text = "name: \"x\"\nd_input: 1\ns4 {\n  d_model 4\n}\n";
  ExpectInvalid(text, "m/config.pbtxt:4:11: ");
}

TEST(ModelConfigTest, UnterminatedMessageIsAnError) {
  ExpectInvalid("name: \"x\"\ns4 {\n  d_model: 4\n", "m/config.pbtxt:4:");
}

TEST(ModelConfigTest, UnknownFieldIsAnError) {
  // protobuf reports the token after the unknown name.
  ExpectInvalid("name: \"x\"\n  colour: 3\n", "m/config.pbtxt:2:9: ");
  ExpectInvalid("name: \"x\"\n  colour: 3\n", "colour");
  ExpectInvalid("s4 { d_model: 4 d_modle: 4 }", "d_modle");
}

TEST(ModelConfigTest, WrongEnumNameIsAnError) {
  ExpectInvalid("s4 { kernel: KERNEL_KIND_FFT }", "KERNEL_KIND_FFT");
  ExpectInvalid("s4 { kernel: KERNEL_KIND_FFT }", "\"kernel\"");
  ExpectInvalid("hippo { measure: LEGT }", "\"measure\"");
}

TEST(ModelConfigTest, TwoArchitecturesAreAnError) {
  ExpectInvalid("s4 { d_model: 4 }\nhippo { n: 4 }", "m/config.pbtxt:2:");
  ExpectInvalid("s4 { d_model: 4 }\nhippo { n: 4 }", "architecture");
}

TEST(ModelConfigTest, RepeatedSingularFieldIsAnError) {
  ExpectInvalid("name: \"a\"\nname: \"b\"\n", "\"name\"");
}

TEST(ModelConfigTest, MissingArchitecture) {
  ExpectInvalid("name: \"x\" d_input: 1 d_output: 1 max_length: 8", "architecture");
  ssm::v1::ModelConfig config;
  config.set_name("x");
  EXPECT_EQ(ModelSpecFromConfig(config).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(ModelConfigTest, EnumsWithoutDefaultMustBeSet) {
  ExpectInvalid("name: \"x\" d_input: 4 d_output: 4 max_length: 8 s4 { d_model: 4 d_state: 4 }",
                "s4.kernel");
  ExpectInvalid(
      "name: \"x\" d_input: 1 d_output: 4 max_length: 8 "
      "hippo { n: 4 window: 4 output: OUTPUT_COEFFICIENTS }",
      "hippo.measure");
  ExpectInvalid(
      "name: \"x\" d_input: 1 d_output: 4 max_length: 8 "
      "hippo { n: 4 window: 4 measure: MEASURE_LEGT }",
      "hippo.output");
}

TEST(ModelConfigTest, EnumNumbersOutsideTheSchemaAreRefused) {
  const ssm::v1::ModelConfig base = ModelConfigFromSpec(ParseOrDie(kMinimalDplr));
  struct Case {
    const char* field;
    void (*mutate)(ssm::v1::S4Stack&);
  };
  const Case cases[] = {
      {"s4.kernel", [](ssm::v1::S4Stack& s) { s.set_kernel(static_cast<ssm::v1::KernelKind>(9)); }},
      {"s4.discretization",
       [](ssm::v1::S4Stack& s) {
         s.set_discretization(static_cast<ssm::v1::DiscretizationKind>(9));
       }},
      {"s4.activation",
       [](ssm::v1::S4Stack& s) { s.set_activation(static_cast<ssm::v1::Activation>(9)); }},
      {"s4.output_linear",
       [](ssm::v1::S4Stack& s) { s.set_output_linear(static_cast<ssm::v1::OutputLinear>(9)); }},
      {"s4.norm", [](ssm::v1::S4Stack& s) { s.set_norm(static_cast<ssm::v1::NormPlacement>(9)); }},
      {"s4.weight_naming",
       [](ssm::v1::S4Stack& s) { s.set_weight_naming(static_cast<ssm::v1::WeightNaming>(9)); }},
  };
  for (const Case& c : cases) {
    ssm::v1::ModelConfig config = base;
    c.mutate(*config.mutable_s4());
    const absl::Status status = ModelSpecFromConfig(config).status();
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << c.field;
    EXPECT_THAT(std::string(status.message()), HasSubstr(c.field));
  }

  ssm::v1::ModelConfig hippo = ModelConfigFromSpec(ParseOrDie(kHippoLegS));
  hippo.mutable_hippo()->set_measure(static_cast<ssm::v1::HippoMemory::Measure>(7));
  EXPECT_EQ(ModelSpecFromConfig(hippo).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(ModelSpecFromConfig(hippo).status().message()),
              HasSubstr("hippo.measure"));
  hippo = ModelConfigFromSpec(ParseOrDie(kHippoLegS));
  hippo.mutable_hippo()->set_output(static_cast<ssm::v1::HippoMemory::Output>(7));
  EXPECT_THAT(std::string(ModelSpecFromConfig(hippo).status().message()),
              HasSubstr("hippo.output"));
}

// Values the syntax allows but ValidateModelSpec refuses: one substitution
// into a valid config each.
struct InvalidValueCase {
  const char* base;
  const char* from;
  const char* to;
  const char* field;
};

// Readable test names in ctest instead of the struct's bytes.
void PrintTo(const InvalidValueCase& c, std::ostream* os) { *os << c.from << " -> " << c.to; }

class InvalidValueTest : public ::testing::TestWithParam<InvalidValueCase> {};

TEST_P(InvalidValueTest, RefusedNamingTheField) {
  const InvalidValueCase& c = GetParam();
  const std::string text = absl::StrReplaceAll(c.base, {{c.from, c.to}});
  ASSERT_NE(text, c.base) << "substitution did not apply: " << c.from;
  ExpectInvalid(text, c.field);
}

INSTANTIATE_TEST_SUITE_P(
    ModelConfigTest, InvalidValueTest,
    ::testing::Values(
        InvalidValueCase{kMinimalDplr, "d_model: 8", "d_model: 0", "s4.d_model"},
        InvalidValueCase{kMinimalDplr, "d_state: 64", "d_state: 63", "s4.d_state"},
        InvalidValueCase{kMinimalDplr, "n_layers: 1", "n_layers: 0", "s4.n_layers"},
        InvalidValueCase{kMinimalDplr, "rank: 1", "rank: 0", "s4.rank"},
        InvalidValueCase{kMinimalDplr, "rank: 1", "rank: 5", "s4.rank"},
        InvalidValueCase{kMinimalDplr, "rank: 1", "rank: 1 discretization: DISCRETIZATION_KIND_ZOH",
                         "s4.discretization"},
        InvalidValueCase{kMinimalDplr, "rank: 1", "rank: 1 layer_norm_eps: -1",
                         "s4.layer_norm_eps"},
        InvalidValueCase{kPlainSsm, "d_input: 8", "d_input: 7", "d_input"},
        InvalidValueCase{kPlainSsm, "d_output: 8", "d_output: 9", "d_output"},
        InvalidValueCase{kMinimalDplr, "max_length: 256", "max_length: 0", "max_length"},
        InvalidValueCase{kMinimalDplr, "max_length: 256", "max_length: -3", "max_length"},
        InvalidValueCase{kMinimalDplr, "name: \"s4_min\"", "name: \"\"", "name"},
        InvalidValueCase{kFullS4, "rank: 0", "rank: 3", "s4.rank"},
        InvalidValueCase{kHippoDelayed, "d_input: 1", "d_input: 2", "d_input"},
        InvalidValueCase{kHippoDelayed, "d_output: 3", "d_output: 2", "d_output"},
        InvalidValueCase{kHippoDelayed, "37.5", "137.5", "hippo.delays"},
        InvalidValueCase{kHippoDelayed, "37.5", "-1", "hippo.delays"},
        // The oldest whole sample sits half a step inside the window.
        InvalidValueCase{kHippoDelayed, "99.5", "100", "hippo.delays"},
        InvalidValueCase{kHippoDelayed, "window: 100", "window: 0", "hippo.window"},
        InvalidValueCase{kHippoDelayed, "n: 32", "n: 0", "hippo.n"},
        InvalidValueCase{kHippoDelayed, "MEASURE_LEGT", "MEASURE_LEGS", "hippo.output"},
        InvalidValueCase{kHippoLegS, "d_output: 16", "d_output: 15", "d_output"}),
    [](const ::testing::TestParamInfo<InvalidValueCase>& info) {
      std::string name = absl::StrCat(info.index, "_", info.param.field);
      absl::StrReplaceAll({{".", "_"}}, &name);
      return name;
    });

// ReadModelConfig against real files.

class ReadModelConfigTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char pattern[] = "/tmp/ssm_model_config_test.XXXXXX";
    ASSERT_NE(mkdtemp(pattern), nullptr);
    dir_ = pattern;
  }
  void TearDown() override {
    std::error_code error;
    std::filesystem::remove_all(dir_, error);
  }
  std::string Write(const std::string& name, absl::string_view text) {
    const std::string path = absl::StrCat(dir_, "/", name);
    std::FILE* file = std::fopen(path.c_str(), "wb");
    EXPECT_NE(file, nullptr) << path;
    if (file != nullptr) {
      std::fwrite(text.data(), 1, text.size(), file);
      std::fclose(file);
    }
    return path;
  }
  std::string dir_;
};

TEST_F(ReadModelConfigTest, ReadsAFile) {
  absl::StatusOr<ModelSpec> spec = ReadModelConfig(Write("config.pbtxt", kHippoDelayed));
  ASSERT_TRUE(spec.ok()) << spec.status();
  ExpectSpecEq(*spec, ParseOrDie(kHippoDelayed));
}

TEST_F(ReadModelConfigTest, MissingFileIsNotFoundNamingThePath) {
  const std::string path = absl::StrCat(dir_, "/absent/config.pbtxt");
  const absl::Status status = ReadModelConfig(path).status();
  EXPECT_EQ(status.code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(status.message()), HasSubstr(path));
}

TEST_F(ReadModelConfigTest, ErrorsNameThePath) {
  const std::string path = Write("config.pbtxt", "name: \"x\"\n\nd_state: 4\n");
  const absl::Status status = ReadModelConfig(path).status();
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(status.message()), StartsWith(absl::StrCat(path, ":3:8: ")));
  EXPECT_THAT(std::string(status.message()), HasSubstr("d_state"));
}

TEST_F(ReadModelConfigTest, OversizedFileIsRefused) {
  const std::string path = Write("config.pbtxt", std::string(2 << 20, ' '));
  const absl::Status status = ReadModelConfig(path).status();
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(status.message()), HasSubstr(path));
}

TEST_F(ReadModelConfigTest, DirectoryIsNotAConfig) {
  const absl::Status status = ReadModelConfig(dir_).status();
  EXPECT_EQ(status.code(), absl::StatusCode::kFailedPrecondition) << status;
  EXPECT_THAT(std::string(status.message()), HasSubstr(dir_));
}

}  // namespace
}  // namespace ssm::server
