// Fuzzes the safetensors reader (ssm::SafeTensors::Parse) and what reads
// a parsed file: ReadDoubles of every tensor, and the weight loader
// (LoadModel) of the tiny model whose names the file carries, then a short
// Forward and Session run of what loaded.
//
// Contracts checked besides the sanitizers':
//   - Parse and ReadDoubles fail with InvalidArgument only (or
//     ResourceExhausted for a header too large to hold in memory);
//   - a parsed file's F32/F64 tensors, written back by SerializeSafeTensors
//     with the file's metadata, parse again to the same names, shapes,
//     metadata and bit-identical values (what the reader accepts, the
//     writer can express);
//   - LoadModel fails with InvalidArgument only.

#include <cstdint>
#include <cstring>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "fuzz_util.h"
#include "ssm/model.h"
#include "ssm/safetensors.h"
#include "ssm/session.h"

namespace ssm::fuzz {
namespace {

constexpr char kSource[] = "fuzz.safetensors";

// The tiny specs whose weight names `file` carries (the loader's own
// choice between layouts is by name too).
std::vector<ModelSpec> SpecsFor(const SafeTensors& file) {
  if (file.contains("hippo.A") || file.contains("hippo.B")) return {LegtSpec(), LegsSpec()};
  if (file.contains("s4_layers.0.kernel.log_dt")) return {S4Spec(KernelKind::kDiagonal)};
  const KernelKind kind = file.contains("s4_layers.0.layer.kernel.P") ? KernelKind::kDplr
                                                                       : KernelKind::kDiagonal;
  const TensorInfo* c = file.info("s4_layers.0.layer.kernel.C");
  const bool bidirectional = c != nullptr && !c->shape.empty() && c->shape[0] == 2;
  return {S4Spec(kind, bidirectional)};
}

void CheckRoundTrip(const SafeTensors& file, const std::vector<TensorToWrite>& tensors) {
  absl::StatusOr<std::string> bytes = SerializeSafeTensors(tensors, file.metadata());
  if (!bytes.ok()) Fail(absl::StrCat("a parsed file does not write back: ", bytes.status().ToString()));
  absl::StatusOr<SafeTensors> again = SafeTensors::Parse(*std::move(bytes), "rewritten");
  if (!again.ok()) Fail(absl::StrCat("a rewritten file does not parse: ", again.status().ToString()));
  Check(again->names() == file.names(), "rewritten file: other tensor names");
  Check(again->metadata() == file.metadata(), "rewritten file: other metadata");
  for (const TensorToWrite& t : tensors) {
    const TensorInfo* info = again->info(t.name);
    Check(info != nullptr && info->dtype == t.dtype && info->shape == t.shape,
          "rewritten file: a tensor's dtype or shape changed");
    absl::StatusOr<std::vector<double>> values = again->ReadDoubles(t.name);
    Check(values.ok() && values->size() == t.values.size(), "rewritten file: a tensor reads back differently");
    Check(t.values.empty() ||
              std::memcmp(values->data(), t.values.data(), 8 * t.values.size()) == 0,
          "rewritten file: values differ");
  }
}

void RunLoaded(const std::shared_ptr<const Model>& loaded) {
  const Model& model = *loaded;
  constexpr int kSteps = 6;
  const std::vector<double> x = Wave(kSteps * model.d_input());
  std::vector<double> y(kSteps * model.d_output());
  const absl::Status forward = model.Forward(x, 1, kSteps, absl::MakeSpan(y));
  CheckCode(forward, {absl::StatusCode::kOk, absl::StatusCode::kInvalidArgument}, "Forward");
  if (!model.streamable()) return;
  absl::StatusOr<Session> session = Session::Create(loaded, 1);
  Check(session.ok(), "Session::Create of a streamable model failed");
  const absl::Status run = session->Run(x, kSteps, absl::MakeSpan(y));
  CheckCode(run, {absl::StatusCode::kOk, absl::StatusCode::kInvalidArgument}, "Session::Run");
}

void WriteSeeds(const std::string& dir) {
  const auto file = [](const std::vector<TensorToWrite>& tensors,
                       const std::map<std::string, std::string>& metadata = {}) {
    absl::StatusOr<std::string> bytes = SerializeSafeTensors(tensors, metadata);
    if (!bytes.ok()) Fail(bytes.status().ToString());
    return *std::move(bytes);
  };
  WriteSeed(dir, "s4-dplr-f32.safetensors", S4WeightsFile(S4Spec(), 1, DType::kF32));
  WriteSeed(dir, "s4-dplr-f64.safetensors", S4WeightsFile(S4Spec(), 2, DType::kF64));
  WriteSeed(dir, "s4-diag-f32.safetensors",
            S4WeightsFile(S4Spec(KernelKind::kDiagonal), 3, DType::kF32));
  WriteSeed(dir, "s4-bidi-f32.safetensors",
            S4WeightsFile(S4Spec(KernelKind::kDplr, true), 4, DType::kF32));

  // C stored as C~ (l_kernel > 0), as checkpoints of the S4 reference do.
  absl::StatusOr<std::vector<TensorToWrite>> tilde = InitS4StackWeights(S4Spec(), 5, DType::kF64);
  if (!tilde.ok()) Fail(tilde.status().ToString());
  for (TensorToWrite& t : *tilde) {
    if (t.name == "s4_layers.0.layer.kernel.l_kernel") t.values = {64};
  }
  WriteSeed(dir, "s4-dplr-ctilde.safetensors", file(*tilde));

  // The minimal S4D block's layout (log_dt, log_A_real, conv1d output
  // linear), renamed from the diagonal init.
  absl::StatusOr<std::vector<TensorToWrite>> diag =
      InitS4StackWeights(S4Spec(KernelKind::kDiagonal), 6, DType::kF32);
  if (!diag.ok()) Fail(diag.status().ToString());
  std::vector<TensorToWrite> minimal;
  for (TensorToWrite t : *diag) {
    const std::string k = "s4_layers.0.layer.kernel.";
    if (t.name == k + "inv_dt") {
      t.name = "s4_layers.0.kernel.log_dt";
      t.shape = {2};
    } else if (t.name == k + "A_real") {
      t.name = "s4_layers.0.kernel.log_A_real";
    } else if (t.name == k + "A_imag") {
      t.name = "s4_layers.0.kernel.A_imag";
    } else if (t.name == k + "C") {
      t.name = "s4_layers.0.kernel.C";
      t.shape = {2, 2, 2};
    } else if (t.name == k + "B") {
      continue;  // the minimal block has B = 1
    } else if (t.name == "s4_layers.0.layer.D") {
      t.name = "s4_layers.0.D";
      t.shape = {2};
    } else if (t.name == "s4_layers.0.output_linear.0.weight") {
      t.shape.push_back(1);  // a Conv1d with kernel size 1
    }
    minimal.push_back(std::move(t));
  }
  WriteSeed(dir, "s4d-minimal-f32.safetensors", file(minimal));

  for (const ModelSpec& spec : {LegtSpec(), LegsSpec()}) {
    absl::StatusOr<std::vector<TensorToWrite>> w = HippoMemoryWeights(spec);
    if (!w.ok()) Fail(w.status().ToString());
    WriteSeed(dir, absl::StrCat(spec.name, ".safetensors"), file(*w, {{"format", "pt"}}));
  }
  // Every dtype, a scalar, an empty tensor and metadata.
  WriteSeed(dir, "dtypes.safetensors",
            file({{"a", DType::kF32, {2, 2}, {1, -2.5, 0, 3e38}},
                  {"b", DType::kF64, {}, {-1e-300}},
                  {"c", DType::kI64, {3}, {-9007199254740992.0, 0, 42}},
                  {"empty", DType::kF32, {0, 3}, {}}},
                 {{"format", "pt"}, {"note", "\xc3\xa9t\xc3\xa9"}}));
  // Hand-written headers the writer never produces: unsupported dtype,
  // overlap, gaps, unicode escapes.
  const auto raw = [](std::string header, std::string data) {
    std::string out(8, '\0');
    const uint64_t n = header.size();
    std::memcpy(out.data(), &n, 8);
    return out + header + data;
  };
  WriteSeed(dir, "bf16.safetensors",
            raw(R"({"w":{"dtype":"BF16","shape":[2],"data_offsets":[0,4]}})", "abcd"));
  WriteSeed(dir, "overlap.safetensors",
            raw(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                R"("b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})",
                std::string(8, '\0')));
  WriteSeed(dir, "gap-escape.safetensors",
            raw(R"({"\u00e9\n":{"dtype":"I64","shape":[1,1],"data_offsets":[8,16]},)"
                R"("__metadata__":{"k":"v"}})",
                std::string(16, '\x01')));
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
  absl::StatusOr<SafeTensors> file =
      SafeTensors::Parse(std::string(reinterpret_cast<const char*>(data), size), kSource);
  if (!file.ok()) {
    CheckCode(file.status(), {absl::StatusCode::kInvalidArgument, absl::StatusCode::kResourceExhausted},
              "SafeTensors::Parse");
    return 0;
  }
  std::vector<TensorToWrite> tensors;
  bool round_trip = true;
  for (const std::string& name : file->names()) {
    const TensorInfo* info = file->info(name);
    Check(info != nullptr && info->name == name, "names() and info() disagree");
    absl::StatusOr<std::vector<double>> values = file->ReadDoubles(name, info->shape);
    if (!values.ok()) {
      CheckCode(values.status(), {absl::StatusCode::kInvalidArgument}, "ReadDoubles");
      round_trip = false;
      continue;
    }
    Check(values->size() == static_cast<size_t>(info->num_elements()),
          "ReadDoubles: a count other than the shape's");
    // I64 beyond 2^53 is rounded when read (documented), so it need not
    // write back.
    if (info->dtype == DType::kI64) round_trip = false;
    tensors.push_back({name, info->dtype, info->shape, *std::move(values)});
  }
  if (round_trip) CheckRoundTrip(*file, tensors);

  for (const ModelSpec& spec : SpecsFor(*file)) {
    absl::StatusOr<std::shared_ptr<const Model>> model = LoadModel(spec, &*file);
    if (!model.ok()) {
      CheckCode(model.status(), {absl::StatusCode::kInvalidArgument}, "LoadModel");
      continue;
    }
    RunLoaded(*model);
  }
  return 0;
}
