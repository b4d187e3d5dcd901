// Writes the shipped default model repository (models/): three models that
// need no training, each as config.pbtxt + 1/weights.safetensors.
//   legt-delay   a LegT memory read back at fixed lags: a delay line
//   legs-memory  a LegS memory's coefficients: features of the whole history
//   s4-demo      a deterministic-init S4 stack (2 layers, H = 64, N = 64)
// Deterministic: running it again gives byte-identical files (a test checks
// the shipped folder against a fresh run).
//
//   ssm_make_repo --out=models

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "server/model_config.h"
#include "ssm/model.h"

ABSL_FLAG(std::string, out, "models", "repository folder to write (created if missing)");

namespace {

ssm::ModelSpec LegtDelay() {
  ssm::HippoMemorySpec h;
  h.measure = ssm::HippoMemorySpec::Measure::kLegT;
  h.n = 32;
  h.window = 64;
  h.output = ssm::HippoMemorySpec::Output::kDelayed;
  h.delays = {16, 32, 63.5};  // window/4, window/2, the oldest sample
  ssm::ModelSpec spec;
  spec.name = "legt-delay";
  spec.description =
      "A delay line from HiPPO alone: a LegT memory (N = 32 Legendre coefficients of the last "
      "64 samples) read back 16, 32 and 63.5 steps in the past. Input: 1 feature per step; "
      "output: the 3 delayed values. No training.";
  spec.d_input = 1;
  spec.d_output = 3;
  spec.max_length = 65536;
  spec.architecture = h;
  return spec;
}

ssm::ModelSpec LegsMemory() {
  ssm::HippoMemorySpec h;
  h.measure = ssm::HippoMemorySpec::Measure::kLegS;
  h.n = 32;
  h.output = ssm::HippoMemorySpec::Output::kCoefficients;
  ssm::ModelSpec spec;
  spec.name = "legs-memory";
  spec.description =
      "A LegS memory: 32 Legendre coefficients summarizing the whole history seen so far "
      "(scaled to its length), updated per sample. Input: 1 feature per step; output: the 32 "
      "coefficients, usable as features of the history. No training.";
  spec.d_input = 1;
  spec.d_output = 32;
  spec.max_length = 65536;
  spec.architecture = h;
  return spec;
}

ssm::ModelSpec S4Demo() {
  ssm::S4StackSpec s4;
  s4.n_layers = 2;
  s4.d_model = 64;
  s4.d_state = 64;
  s4.kernel = ssm::KernelKind::kDplr;
  s4.rank = 1;
  s4.norm = ssm::NormPlacement::kPre;
  ssm::ModelSpec spec;
  spec.name = "s4-demo";
  spec.description =
      "An untrained S4 stack, initialized as the S4 reference does (HiPPO-LegS DPLR, "
      "rank 1): encoder 1 -> 64, two blocks (N = 64, GELU, GLU, pre-LayerNorm, residual), "
      "decoder 64 -> 1. For trying the API and for benchmarks; its outputs mean nothing.";
  spec.d_input = 1;
  spec.d_output = 1;
  spec.max_length = 16384;
  spec.architecture = s4;
  return spec;
}

absl::Status Write(const std::string& repo, const ssm::ModelSpec& spec,
                   const std::vector<ssm::TensorToWrite>& tensors) {
  const std::filesystem::path dir = std::filesystem::path(repo) / spec.name;
  std::error_code ec;
  std::filesystem::create_directories(dir / "1", ec);
  if (ec) return absl::InternalError(absl::StrCat("cannot create ", (dir / "1").string()));
  std::ofstream config(dir / "config.pbtxt", std::ios::binary | std::ios::trunc);
  config << "# Written by ssm_make_repo; regenerate with: ssm_make_repo --out=models\n"
         << ssm::server::ModelConfigToText(ssm::server::ModelConfigFromSpec(spec));
  if (!config.good()) return absl::InternalError(absl::StrCat("cannot write ", dir.string()));
  return ssm::WriteSafeTensors((dir / "1" / "weights.safetensors").string(), tensors,
                               {{"generator", "ssm_make_repo"}, {"model", spec.name}});
}

}  // namespace

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  const std::string out = absl::GetFlag(FLAGS_out);
  for (const ssm::ModelSpec& spec : {LegtDelay(), LegsMemory(), S4Demo()}) {
    absl::StatusOr<std::vector<ssm::TensorToWrite>> tensors =
        std::holds_alternative<ssm::S4StackSpec>(spec.architecture)
            ? ssm::InitS4StackWeights(spec, /*seed=*/2024)
            : ssm::HippoMemoryWeights(spec);
    absl::Status st = tensors.ok() ? Write(out, spec, *tensors) : tensors.status();
    if (!st.ok()) {
      std::fprintf(stderr, "ssm_make_repo: %s: %s\n", spec.name.c_str(),
                   std::string(st.message()).c_str());
      return 1;
    }
    std::printf("wrote %s/%s\n", out.c_str(), spec.name.c_str());
  }
  return 0;
}
