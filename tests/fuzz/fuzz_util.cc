#include "fuzz_util.h"

#include <sys/stat.h>

#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <utility>

#include <google/protobuf/stubs/logging.h>

#include "absl/strings/str_cat.h"
#include "server/log.h"
#include "ssm/session.h"
#include "ssm/threads.h"

namespace ssm::fuzz {
namespace {

ModelSpec Hippo(std::string name, HippoMemorySpec h, int d_output) {
  ModelSpec spec;
  spec.name = std::move(name);
  spec.d_input = 1;
  spec.d_output = d_output;
  spec.max_length = 64;
  spec.architecture = std::move(h);
  return spec;
}

}  // namespace

ModelSpec LegtSpec() {
  HippoMemorySpec h;
  h.measure = HippoMemorySpec::Measure::kLegT;
  h.n = 4;
  h.window = 16;
  return Hippo("legt", h, 4);
}

ModelSpec LegsSpec() {
  HippoMemorySpec h;
  h.measure = HippoMemorySpec::Measure::kLegS;
  h.n = 4;
  return Hippo("legs", h, 4);
}

ModelSpec DelaySpec() {
  HippoMemorySpec h;
  h.measure = HippoMemorySpec::Measure::kLegT;
  h.n = 4;
  h.window = 8;
  h.output = HippoMemorySpec::Output::kDelayed;
  h.delays = {0, 3, 7.5};
  return Hippo("delay", h, 3);
}

ModelSpec S4Spec(KernelKind kernel, bool bidirectional) {
  S4StackSpec s4;
  s4.n_layers = 1;
  s4.d_model = 2;
  s4.d_state = 4;
  s4.kernel = kernel;
  if (kernel == KernelKind::kDiagonal) {
    s4.rank = 0;
    s4.discretization = Discretization::Zoh();
  }
  s4.bidirectional = bidirectional;
  ModelSpec spec;
  spec.name = bidirectional ? "s4-bidi" : "s4";
  spec.d_input = 1;
  spec.d_output = 1;
  spec.max_length = 64;
  spec.architecture = s4;
  return spec;
}

std::string S4WeightsFile(const ModelSpec& spec, uint64_t seed, DType dtype) {
  absl::StatusOr<std::vector<TensorToWrite>> weights = InitS4StackWeights(spec, seed, dtype);
  if (!weights.ok()) Fail(absl::StrCat("InitS4StackWeights: ", weights.status().ToString()));
  absl::StatusOr<std::string> bytes = SerializeSafeTensors(*weights);
  if (!bytes.ok()) Fail(absl::StrCat("SerializeSafeTensors: ", bytes.status().ToString()));
  return *std::move(bytes);
}

std::shared_ptr<const Model> LoadOrDie(const ModelSpec& spec, uint64_t seed) {
  absl::StatusOr<std::shared_ptr<const Model>> model;
  if (std::holds_alternative<HippoMemorySpec>(spec.architecture)) {
    model = LoadModel(spec, nullptr);
  } else {
    absl::StatusOr<SafeTensors> file =
        SafeTensors::Parse(S4WeightsFile(spec, seed, DType::kF32), spec.name);
    if (!file.ok()) Fail(absl::StrCat("SafeTensors::Parse: ", file.status().ToString()));
    model = LoadModel(spec, &*file);
  }
  if (!model.ok()) Fail(absl::StrCat("LoadModel ", spec.name, ": ", model.status().ToString()));
  return *std::move(model);
}

const server::ModelCatalog& Catalog() {
  static const server::ModelCatalog* const catalog = [] {
    SetUp();
    server::LoadedRepository repo;
    repo.models["legt"][1] = LoadOrDie(LegtSpec());
    repo.models["legs"][1] = LoadOrDie(LegsSpec());
    repo.models["delay"][1] = LoadOrDie(DelaySpec());
    repo.models["s4"][1] = LoadOrDie(S4Spec(), 1);
    repo.models["s4"][2] = LoadOrDie(S4Spec(), 2);
    repo.models["s4-bidi"][1] = LoadOrDie(S4Spec(KernelKind::kDplr, true), 1);
    repo.errors["broken"] = absl::InvalidArgumentError("broken/config.pbtxt: d_input: must be >= 1");
    return new server::ModelCatalog(std::move(repo));
  }();
  return *catalog;
}

void SetUp() {
  if (!SetThreads(1).ok()) Fail("SetThreads(1)");
  server::SetLogEnabled(false);
  // protobuf logs every string field that is not UTF-8 as it parses.
  google::protobuf::SetLogHandler(nullptr);
}

server::RequestLimits Limits() { return server::RequestLimits{}; }

void Fail(absl::string_view what) {
  std::fprintf(stderr, "\n*** fuzz contract broken: %.*s\n", static_cast<int>(what.size()),
               what.data());
  std::abort();
}

void CheckCode(const absl::Status& status, std::initializer_list<absl::StatusCode> codes,
               absl::string_view where) {
  for (absl::StatusCode code : codes) {
    if (status.code() == code) return;
  }
  Fail(absl::StrCat(where, ": unexpected status ", status.ToString()));
}

void CheckBoundedMessage(const absl::Status& status, absl::string_view where) {
  if (status.message().size() <= kMaxWireMessageBytes) return;
  Fail(absl::StrCat(where, ": a ", status.message().size(),
                    "-byte status message (echoes unbounded input): ",
                    status.message().substr(0, 300), "..."));
}

void CheckInferRefusal(const absl::Status& status, absl::string_view where) {
  CheckCode(status,
            {absl::StatusCode::kInvalidArgument, absl::StatusCode::kNotFound,
             absl::StatusCode::kResourceExhausted, absl::StatusCode::kFailedPrecondition},
            where);
  CheckBoundedMessage(status, where);
}

void FixSnapshotCrc(std::string& snapshot) {
  if (snapshot.size() < 4) return;
  const uint32_t crc = Crc32c(std::string_view(snapshot).substr(0, snapshot.size() - 4));
  std::memcpy(snapshot.data() + snapshot.size() - 4, &crc, 4);
}

std::vector<std::string_view> SplitFrames(std::string_view bytes) {
  std::vector<std::string_view> frames;
  while (bytes.size() >= 2) {
    const size_t len = static_cast<unsigned char>(bytes[0]) |
                       (static_cast<size_t>(static_cast<unsigned char>(bytes[1])) << 8);
    bytes.remove_prefix(2);
    const size_t take = std::min(len, bytes.size());
    frames.push_back(bytes.substr(0, take));
    bytes.remove_prefix(take);
  }
  return frames;
}

std::string JoinFrames(const std::vector<std::string>& frames) {
  std::string out;
  for (const std::string& f : frames) {
    if (f.size() > 0xFFFF) Fail("JoinFrames: a frame over 64 KiB");
    out.push_back(static_cast<char>(f.size() & 0xFF));
    out.push_back(static_cast<char>(f.size() >> 8));
    out += f;
  }
  return out;
}

std::vector<double> Wave(size_t n, double phase) {
  std::vector<double> out(n);
  for (size_t i = 0; i < n; ++i) out[i] = std::sin(0.37 * static_cast<double>(i) + phase);
  return out;
}

void HandleSeedFlag(int* argc, char*** argv,
                    const std::function<void(const std::string&)>& write) {
  constexpr std::string_view kFlag = "--write_seeds=";
  if (*argc != 2) return;
  const std::string_view arg = (*argv)[1];
  if (arg.substr(0, kFlag.size()) != kFlag) return;
  const std::string dir(arg.substr(kFlag.size()));
  if (dir.empty()) Fail("--write_seeds needs a folder");
  if (::mkdir(dir.c_str(), 0755) != 0 && errno != EEXIST) Fail(absl::StrCat("cannot create ", dir));
  write(dir);
  std::exit(0);
}

void WriteSeed(const std::string& dir, const std::string& name, std::string_view bytes) {
  const std::string path = absl::StrCat(dir, "/", name);
  std::FILE* f = std::fopen(path.c_str(), "wb");
  if (f == nullptr) Fail(absl::StrCat("cannot write ", path));
  const bool ok = std::fwrite(bytes.data(), 1, bytes.size(), f) == bytes.size();
  if (std::fclose(f) != 0 || !ok) Fail(absl::StrCat("cannot write ", path));
}

}  // namespace ssm::fuzz
