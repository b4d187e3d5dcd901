// Fuzzes config.pbtxt -> model spec: server::ParseModelConfigText (protobuf
// text format, the schema's defaults, ValidateModelSpec), then, for specs
// small enough to build in well under a millisecond, the model itself
// (LoadModel: a HiPPO memory from its spec, an S4 stack from
// InitS4StackWeights through the safetensors writer and reader) and a
// short Forward and Session run.
//
// Contracts checked besides the sanitizers':
//   - parsing fails with InvalidArgument only;
//   - a parsed spec written back (ModelConfigFromSpec, ModelConfigToText)
//     parses to the same text again (the repository tools rewrite configs);
//   - a valid spec builds: InitS4StackWeights and LoadModel succeed for it,
//     or refuse with InvalidArgument (numerically unusable values, e.g. a
//     window so small the discretization overflows), never crash.

#include <cstdint>
#include <string>
#include <variant>
#include <vector>

#include "absl/strings/str_cat.h"
#include "fuzz_util.h"
#include "server/model_config.h"
#include "ssm/model.h"
#include "ssm/session.h"

namespace ssm::fuzz {
namespace {

// Small enough that LoadModel and a short run take well under a
// millisecond (the fuzzer explores sizes through the parser; building a
// d_model 4096 stack would only slow it down).
bool Cheap(const ModelSpec& spec) {
  if (spec.max_length > 256 || spec.d_input > 8 || spec.d_output > 8) return false;
  if (const auto* s4 = std::get_if<S4StackSpec>(&spec.architecture)) {
    return s4->n_layers <= 2 && s4->d_model <= 4 && s4->d_state <= 8;
  }
  return std::get<HippoMemorySpec>(spec.architecture).n <= 8;
}

void Build(const ModelSpec& spec) {
  std::string weights_bytes;
  absl::StatusOr<SafeTensors> weights = absl::UnknownError("unset");
  if (std::holds_alternative<S4StackSpec>(spec.architecture)) {
    absl::StatusOr<std::vector<TensorToWrite>> init = InitS4StackWeights(spec, 1, DType::kF64);
    if (!init.ok()) {
      CheckCode(init.status(), {absl::StatusCode::kInvalidArgument}, "InitS4StackWeights");
      return;
    }
    absl::StatusOr<std::string> bytes = SerializeSafeTensors(*init);
    if (!bytes.ok()) Fail(absl::StrCat("init weights do not serialize: ", bytes.status().ToString()));
    weights = SafeTensors::Parse(*std::move(bytes), "init.safetensors");
    if (!weights.ok()) Fail(absl::StrCat("init weights do not parse: ", weights.status().ToString()));
  }
  absl::StatusOr<std::shared_ptr<const Model>> model =
      LoadModel(spec, weights.ok() ? &*weights : nullptr);
  if (!model.ok()) {
    CheckCode(model.status(), {absl::StatusCode::kInvalidArgument}, "LoadModel");
    return;
  }
  const int steps = std::min(spec.max_length, 5);
  const std::vector<double> x = Wave(static_cast<size_t>(steps) * spec.d_input);
  std::vector<double> y(static_cast<size_t>(steps) * spec.d_output);
  CheckCode((*model)->Forward(x, 1, steps, absl::MakeSpan(y)),
            {absl::StatusCode::kOk, absl::StatusCode::kInvalidArgument}, "Forward");
  if (!(*model)->streamable()) return;
  absl::StatusOr<Session> session = Session::Create(*model, 1);
  Check(session.ok(), "Session::Create of a streamable model failed");
  CheckCode(session->Run(x, steps, absl::MakeSpan(y)),
            {absl::StatusCode::kOk, absl::StatusCode::kInvalidArgument}, "Session::Run");
}

// The shipped repository's configs (written by ssm_make_repo) come from the
// repo's models/ folder (scripts/fuzz.sh copies them); these are the tiny
// models' own and a few refused ones.
void WriteSeeds(const std::string& dir) {
  for (const ModelSpec& spec : {LegtSpec(), LegsSpec(), DelaySpec(), S4Spec(),
                                S4Spec(KernelKind::kDiagonal), S4Spec(KernelKind::kDplr, true)}) {
    WriteSeed(dir, absl::StrCat(spec.name,
                                std::holds_alternative<S4StackSpec>(spec.architecture) &&
                                        std::get<S4StackSpec>(spec.architecture).kernel ==
                                            KernelKind::kDiagonal
                                    ? "-diag"
                                    : "",
                                ".pbtxt"),
              server::ModelConfigToText(server::ModelConfigFromSpec(spec)));
  }
  WriteSeed(dir, "minimal-s4.pbtxt",
            "name: \"m\" d_input: 1 d_output: 1 max_length: 16\n"
            "s4 { n_layers: 1 d_model: 2 d_state: 2 kernel: KERNEL_KIND_DIAGONAL }\n");
  WriteSeed(dir, "unknown-field.pbtxt", "name: \"x\" colour: 3\n");
  WriteSeed(dir, "no-architecture.pbtxt", "name: \"x\" d_input: 1 d_output: 1 max_length: 8\n");
  WriteSeed(dir, "bad-delay.pbtxt",
            "name: \"d\" d_input: 1 d_output: 1 max_length: 8\n"
            "hippo { measure: MEASURE_LEGT n: 2 window: 1e-300 output: OUTPUT_DELAYED "
            "delays: 0 }\n");
  WriteSeed(dir, "enum-number.pbtxt",
            "name: \"e\" d_input: 1 d_output: 2 max_length: 8\n"
            "s4 { n_layers: 1 d_model: 2 d_state: 4 kernel: 7 }\n");
}

}  // namespace
}  // namespace ssm::fuzz

extern "C" int LLVMFuzzerInitialize(int* argc, char*** argv) {
  ssm::fuzz::HandleSeedFlag(argc, argv, ssm::fuzz::WriteSeeds);
  ssm::fuzz::SetUp();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace ssm;
  using namespace ssm::fuzz;
  const absl::string_view text(reinterpret_cast<const char*>(data), size);
  absl::StatusOr<ModelSpec> spec = server::ParseModelConfigText(text, "config.pbtxt");
  if (!spec.ok()) {
    CheckCode(spec.status(), {absl::StatusCode::kInvalidArgument}, "ParseModelConfigText");
    return 0;
  }
  const std::string written = server::ModelConfigToText(server::ModelConfigFromSpec(*spec));
  absl::StatusOr<ModelSpec> again = server::ParseModelConfigText(written, "rewritten");
  if (!again.ok()) {
    Fail(absl::StrCat("a parsed config does not parse after writing back: ",
                      again.status().ToString(), "\n", written));
  }
  Check(server::ModelConfigToText(server::ModelConfigFromSpec(*again)) == written,
        "a config changes when written back twice");
  if (Cheap(*spec)) Build(*spec);
  return 0;
}
