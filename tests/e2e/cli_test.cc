// The ssm_client CLI against a real server, and its file formats.
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <nlohmann/json.hpp>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "client/ssm_client.h"
#include "client/tensor_io.h"
#include "gtest/gtest.h"
#include "tests/e2e/e2e_util.h"

namespace ssm::e2e {
namespace {

using client::Tensor;

struct CommandResult {
  int exit_code = -1;
  std::string output;  // stdout and stderr
};

// Runs ssm_client with `args` (bounded by coreutils' timeout).
CommandResult RunCli(const std::string& args) {
  const std::string command =
      absl::StrCat("timeout 60 ", SSM_CLIENT_PATH, " ", args, " 2>&1");
  CommandResult result;
  FILE* pipe = popen(command.c_str(), "r");
  if (pipe == nullptr) return result;
  char buffer[4096];
  size_t n;
  while ((n = fread(buffer, 1, sizeof(buffer), pipe)) > 0) {
    result.output.append(buffer, n);
  }
  const int status = pclose(pipe);
  result.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return result;
}

std::string TempPath(const std::string& name) {
  const char* dir = std::getenv("TEST_TMPDIR");
  return absl::StrCat(dir != nullptr && *dir ? dir : "/tmp", "/ssm_cli_test_",
                      getpid(), "_", name);
}

TEST(TensorIoTest, NpyRoundTripsAndReadsNumpysLayouts) {
  const Tensor t = MakeSequence(2, 5, 3);
  absl::StatusOr<Tensor> back = client::ParseNpy(client::FormatNpy(t));
  ASSERT_OK(back);
  EXPECT_EQ(back->shape, t.shape);
  EXPECT_EQ(back->values, t.values);
  EXPECT_EQ(client::FormatNpy(t).size() % 64, (t.values.size() * 4) % 64);

  // What numpy.save writes for np.arange(6, dtype='>f8').reshape(3, 2),
  // byte for byte (format 1.0, data 64-byte aligned).
  std::string header =
      "{'descr': '>f8', 'fortran_order': False, 'shape': (3, 2), }";
  const size_t padded = (10 + header.size() + 1 + 63) / 64 * 64;
  header.append(padded - 10 - header.size() - 1, ' ');
  header.push_back('\n');
  std::string npy = std::string("\x93NUMPY\x01\x00", 8);
  npy.push_back(static_cast<char>(header.size()));
  npy.push_back('\0');
  npy += header;
  for (int i = 0; i < 6; ++i) {
    const double v = i;
    unsigned char bytes[8];
    std::memcpy(bytes, &v, 8);
    for (int b = 7; b >= 0; --b) npy.push_back(static_cast<char>(bytes[b]));
  }
  absl::StatusOr<Tensor> parsed = client::ParseNpy(npy);
  ASSERT_OK(parsed);
  EXPECT_EQ(parsed->shape, (std::vector<int64_t>{1, 3, 2}));
  EXPECT_EQ(parsed->values, (std::vector<float>{0, 1, 2, 3, 4, 5}));

  std::string fortran = npy;
  fortran.replace(fortran.find("False"), 5, "True ");
  EXPECT_CODE(client::ParseNpy(fortran), kInvalidArgument);
  std::string ints = npy;
  ints.replace(ints.find(">f8"), 3, "<i8");
  EXPECT_CODE(client::ParseNpy(ints), kInvalidArgument);
  EXPECT_CODE(client::ParseNpy(npy.substr(0, npy.size() - 1)), kInvalidArgument);
  EXPECT_CODE(client::ParseNpy("not numpy"), kInvalidArgument);
}

TEST(TensorIoTest, CsvParsesRowsAndNamesBadCells) {
  absl::StatusOr<Tensor> t =
      client::ParseCsv("a,b\n# comment\n1, 2\n\n3.5,-4e-1\n");
  ASSERT_OK(t);
  EXPECT_EQ(t->shape, (std::vector<int64_t>{1, 2, 2}));
  EXPECT_EQ(t->values, (std::vector<float>{1, 2, 3.5f, -0.4f}));
  EXPECT_EQ(client::FormatCsv(*t), "1,2\n3.5,-0.400000006\n");
  absl::StatusOr<Tensor> bad = client::ParseCsv("1,2\n3,x\n");
  EXPECT_CODE(bad, kInvalidArgument);
  EXPECT_TRUE(absl::StrContains(bad.status().message(), "line 2, column 2"))
      << bad.status();
  EXPECT_CODE(client::ParseCsv("1,2\n3\n"), kInvalidArgument);
  EXPECT_CODE(client::ParseCsv("# nothing\n"), kInvalidArgument);
}

// Why a file cannot be read is in the code (ssm/file_io.h): a missing file
// is NOT_FOUND, a directory is not (it used to be: every failure was).
TEST(TensorIoTest, UnreadableInputsSayWhy) {
  const std::string missing = TempPath("missing.csv");
  absl::StatusOr<Tensor> t = client::ReadSequence(missing);
  EXPECT_CODE(t, kNotFound);
  EXPECT_TRUE(absl::StrContains(t.status().message(), missing)) << t.status();

  const std::string dir = TempPath("dir.csv");
  ASSERT_EQ(mkdir(dir.c_str(), 0700), 0) << std::strerror(errno);
  t = client::ReadSequence(dir);
  EXPECT_CODE(t, kFailedPrecondition);
  EXPECT_TRUE(absl::StrContains(t.status().message(), "Is a directory"))
      << t.status();
  // The CLI says so before it connects anywhere.
  CommandResult infer =
      RunCli(absl::StrCat("infer --model=legt-delay --input=", dir));
  EXPECT_EQ(infer.exit_code, 1) << infer.output;
  EXPECT_TRUE(absl::StrContains(infer.output, "FAILED_PRECONDITION"))
      << infer.output;
  rmdir(dir.c_str());
}

TEST(CliTest, HealthModelsAndModel) {
  const std::string address = SharedServer().address();
  CommandResult health = RunCli(absl::StrCat("--address=", address, " health"));
  EXPECT_EQ(health.exit_code, 0) << health.output;
  EXPECT_EQ(health.output, "SERVING\n");
  health = RunCli(absl::StrCat("--address=", address,
                               " health --service=ssm.v1.Inference/s4-demo"));
  EXPECT_EQ(health.exit_code, 0) << health.output;

  CommandResult models = RunCli(absl::StrCat("--address=", address, " models"));
  EXPECT_EQ(models.exit_code, 0) << models.output;
  EXPECT_TRUE(absl::StrContains(models.output, "legt-delay"));
  EXPECT_TRUE(absl::StrContains(models.output, "s4-demo"));

  CommandResult model =
      RunCli(absl::StrCat("--address=", address, " model legt-delay"));
  EXPECT_EQ(model.exit_code, 0) << model.output;
  EXPECT_TRUE(absl::StrContains(model.output, "window: 64")) << model.output;

  CommandResult missing =
      RunCli(absl::StrCat("--address=", address, " model nope"));
  EXPECT_EQ(missing.exit_code, 1);
  EXPECT_TRUE(absl::StrContains(missing.output, "NOT_FOUND")) << missing.output;
}

TEST(CliTest, HealthFailsWithoutAServer) {
  absl::StatusOr<int> port = PickFreePort();
  ASSERT_OK(port);
  CommandResult health = RunCli(
      absl::StrCat("--address=127.0.0.1:", *port, " --deadline=2s health"));
  EXPECT_EQ(health.exit_code, 1) << health.output;
  EXPECT_TRUE(absl::StrContains(health.output, "UNAVAILABLE")) << health.output;
}

TEST(CliTest, InferAndStreamAgreeWithTheLibrary) {
  const std::string address = SharedServer().address();
  auto client = ClientFor(SharedServer());
  const Tensor input = MakeSequence(1, 150, 1, 13);
  absl::StatusOr<client::InferResult> want = client->Infer("s4-demo", input);
  ASSERT_OK(want);

  const std::string npy_in = TempPath("in.npy"), npy_out = TempPath("out.npy");
  const std::string csv_in = TempPath("in.csv"), csv_out = TempPath("out.csv");
  const std::string state = TempPath("state.bin");
  ASSERT_OK(client::WriteSequence(npy_in, input));
  ASSERT_OK(client::WriteSequence(csv_in, input));

  CommandResult infer = RunCli(absl::StrCat("--address=", address,
                                            " infer --model=s4-demo --input=",
                                            npy_in, " --output=", npy_out));
  ASSERT_EQ(infer.exit_code, 0) << infer.output;
  absl::StatusOr<Tensor> got = client::ReadSequence(npy_out);
  ASSERT_OK(got);
  EXPECT_EQ(MaxRelativeDiff(*got, want->output), 0.0);

  // CSV on stdin, chunks of 7, outputs as CSV rows; the state saved at the
  // end continues where the stream stopped.
  CommandResult stream = RunCli(absl::StrCat(
      "--address=", address, " stream --model=s4-demo --chunk=7 --input=- ",
      "--save_state=", state, " < ", csv_in, " > ", csv_out));
  ASSERT_EQ(stream.exit_code, 0) << stream.output;
  got = client::ReadSequence(csv_out);
  ASSERT_OK(got);
  EXPECT_LE(MaxRelativeDiff(*got, want->output), kWireTolerance);

  const Tensor more = MakeSequence(1, 40, 1, 14);
  ASSERT_OK(client::WriteSequence(npy_in, more));
  CommandResult resumed = RunCli(absl::StrCat(
      "--address=", address, " stream --model=s4-demo --chunk=100 --input=",
      npy_in, " --resume_state=", state, " --output=", npy_out));
  ASSERT_EQ(resumed.exit_code, 0) << resumed.output;
  Tensor joined = input;
  AppendSteps(&joined, more);
  absl::StatusOr<client::InferResult> joined_want = client->Infer("s4-demo", joined);
  ASSERT_OK(joined_want);
  got = client::ReadSequence(npy_out);
  ASSERT_OK(got);
  EXPECT_LE(MaxRelativeDiff(*got, SliceSteps(joined_want->output, 150, 190)),
            kWireTolerance);

  CommandResult bad = RunCli(absl::StrCat("--address=", address,
                                          " infer --model=nope --input=", npy_in));
  EXPECT_EQ(bad.exit_code, 1);
  EXPECT_TRUE(absl::StrContains(bad.output, "NOT_FOUND")) << bad.output;
  for (const std::string& f : {npy_in, npy_out, csv_in, csv_out, state}) {
    std::remove(f.c_str());
  }
}

TEST(CliTest, MathSubcommands) {
  const std::string address = SharedServer().address();
  CommandResult hippo = RunCli(absl::StrCat(
      "--address=", address, " hippo --measure=legs --n=3 --dt=0.1 "
      "--discretization=zoh"));
  ASSERT_EQ(hippo.exit_code, 0) << hippo.output;
  EXPECT_TRUE(absl::StrContains(hippo.output, "A_bar (3 x 3)")) << hippo.output;
  CommandResult kernel = RunCli(absl::StrCat(
      "--address=", address,
      " kernel --init=s4d-lin --n=8 --channels=2 --length=5 --method=diagonal"));
  ASSERT_EQ(kernel.exit_code, 0) << kernel.output;
  absl::StatusOr<Tensor> rows = client::ParseCsv(kernel.output);
  ASSERT_OK(rows);
  EXPECT_EQ(rows->shape, (std::vector<int64_t>{1, 2, 5}));
  CommandResult bad = RunCli(absl::StrCat("--address=", address,
                                          " hippo --measure=legs --n=0"));
  EXPECT_EQ(bad.exit_code, 1);
  EXPECT_TRUE(absl::StrContains(bad.output, "INVALID_ARGUMENT")) << bad.output;
  EXPECT_EQ(RunCli("frobnicate").exit_code, 2);
}

// A float64 .npy as the CLI writes it: the shape from the header, the
// values exactly. Fails the test (and returns empty) on anything else.
std::pair<std::vector<int64_t>, std::vector<double>> ReadNpyFloat64(
    const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  const std::string bytes((std::istreambuf_iterator<char>(in)),
                          std::istreambuf_iterator<char>());
  if (bytes.size() < 10 || bytes.compare(0, 8, std::string("\x93NUMPY\x01\x00", 8)) != 0) {
    ADD_FAILURE() << path << " is not a .npy 1.0 file";
    return {};
  }
  const size_t header_len = static_cast<unsigned char>(bytes[8]) |
                            static_cast<unsigned char>(bytes[9]) << 8;
  const std::string header = bytes.substr(10, header_len);
  EXPECT_EQ((10 + header_len) % 64, 0u) << "data not 64-byte aligned";
  EXPECT_TRUE(absl::StrContains(header, "'descr': '<f8'")) << header;
  EXPECT_TRUE(absl::StrContains(header, "'fortran_order': False")) << header;
  std::vector<int64_t> shape;
  const size_t open = header.find("'shape': (");
  if (open == std::string::npos) {
    ADD_FAILURE() << header;
    return {};
  }
  std::istringstream dims(header.substr(open + 10, header.find(')', open) - open - 10));
  for (std::string d; std::getline(dims, d, ',');) {
    if (d.find_first_not_of(' ') != std::string::npos) shape.push_back(std::stoll(d));
  }
  std::vector<double> values((bytes.size() - 10 - header_len) / 8);
  std::memcpy(values.data(), bytes.data() + 10 + header_len, values.size() * 8);
  return {shape, values};
}

// hippo and kernel write their results (double) to .npy or CSV with --out,
// for plotting: the same numbers as the Math service's, bit for bit in .npy.
TEST(CliTest, MathSubcommandsWriteFiles) {
  const std::string address = SharedServer().address();
  auto client = ClientFor(SharedServer());
  const std::string npy = TempPath("math.npy"), csv = TempPath("math.csv");

  ssm::v1::BuildHippoRequest hippo_request;
  hippo_request.set_measure(ssm::v1::HIPPO_MEASURE_LMU);
  hippo_request.set_n(5);
  hippo_request.set_theta(20);
  hippo_request.set_dt(0.5);
  hippo_request.mutable_discretization()->set_kind(ssm::v1::DISCRETIZATION_KIND_ZOH);
  absl::StatusOr<ssm::v1::BuildHippoResponse> hippo = client->BuildHippo(hippo_request);
  ASSERT_OK(hippo);
  CommandResult written = RunCli(absl::StrCat(
      "--address=", address, " hippo --measure=lmu --n=5 --theta=20 --dt=0.5 ",
      "--discretization=zoh --out=", npy));
  ASSERT_EQ(written.exit_code, 0) << written.output;
  EXPECT_TRUE(absl::StrContains(written.output, "float64 [2, 5, 6]")) << written.output;
  auto [shape, values] = ReadNpyFloat64(npy);
  ASSERT_EQ(shape, (std::vector<int64_t>{2, 5, 6}));
  for (int i = 0; i < 5; ++i) {
    for (int j = 0; j < 5; ++j) {
      EXPECT_EQ(values[i * 6 + j], hippo->a().values(i * 5 + j));
      EXPECT_EQ(values[30 + i * 6 + j], hippo->a_bar().values(i * 5 + j));
    }
    EXPECT_EQ(values[i * 6 + 5], hippo->b().values(i));
    EXPECT_EQ(values[30 + i * 6 + 5], hippo->b_bar().values(i));
  }
  // CSV: [A | B] rows, then [A_bar | B_bar] rows, each block after a comment.
  written = RunCli(absl::StrCat("--address=", address,
                                " hippo --measure=lmu --n=5 --theta=20 --dt=0.5 "
                                "--discretization=zoh --out=", csv));
  ASSERT_EQ(written.exit_code, 0) << written.output;
  absl::StatusOr<Tensor> rows = client::ReadSequence(csv);
  ASSERT_OK(rows);
  ASSERT_EQ(rows->shape, (std::vector<int64_t>{1, 10, 6}));
  EXPECT_FLOAT_EQ(rows->values[7 * 6 + 1], hippo->a_bar().values(2 * 5 + 1));

  ssm::v1::ComputeKernelRequest kernel_request;
  kernel_request.mutable_init()->set_kind(ssm::v1::SsmInit::KIND_S4);
  kernel_request.mutable_init()->set_measure(ssm::v1::HIPPO_MEASURE_LEGS);
  kernel_request.mutable_init()->set_n(8);
  kernel_request.mutable_init()->set_channels(3);
  kernel_request.mutable_init()->set_dt_min(1e-3);
  kernel_request.mutable_init()->set_dt_max(1e-1);
  kernel_request.set_length(37);
  absl::StatusOr<ssm::v1::ComputeKernelResponse> kernel = client->ComputeKernel(kernel_request);
  ASSERT_OK(kernel);
  written = RunCli(absl::StrCat("--address=", address,
                                " kernel --init=s4 --n=8 --channels=3 --length=37 --out=", npy));
  ASSERT_EQ(written.exit_code, 0) << written.output;
  std::tie(shape, values) = ReadNpyFloat64(npy);
  EXPECT_EQ(shape, (std::vector<int64_t>{3, 37}));
  EXPECT_EQ(values, std::vector<double>(kernel->kernel().values().begin(),
                                        kernel->kernel().values().end()));
  written = RunCli(absl::StrCat("--address=", address,
                                " kernel --init=s4 --n=8 --channels=3 --length=37 --out=", csv));
  ASSERT_EQ(written.exit_code, 0) << written.output;
  rows = client::ReadSequence(csv);
  ASSERT_OK(rows);
  EXPECT_EQ(rows->shape, (std::vector<int64_t>{1, 3, 37}));

  // An unwritable path fails with the path named, exit status 1.
  const std::string nowhere = TempPath("no/such/dir/k.npy");
  written = RunCli(absl::StrCat("--address=", address,
                                " kernel --init=s4d-lin --n=8 --length=4 --out=", nowhere));
  EXPECT_EQ(written.exit_code, 1) << written.output;
  EXPECT_TRUE(absl::StrContains(written.output, nowhere)) << written.output;
  std::remove(npy.c_str());
  std::remove(csv.c_str());
}

TEST(CliTest, BenchIsBoundedAndReports) {
  const std::string address = SharedServer().address();
  CommandResult stream = RunCli(absl::StrCat(
      "--address=", address,
      " bench --mode=stream --concurrency=2 --steps=200 --inflight=4 "
      "--max_seconds=20"));
  ASSERT_EQ(stream.exit_code, 0) << stream.output;
  EXPECT_TRUE(absl::StrContains(stream.output, "400 chunks (400 steps)"))
      << stream.output;
  EXPECT_TRUE(absl::StrContains(stream.output, "steps/s")) << stream.output;

  CommandResult unary = RunCli(absl::StrCat(
      "--address=", address,
      " bench --mode=unary --concurrency=2 --calls=6 --batch=2 --length=256 "
      "--json"));
  ASSERT_EQ(unary.exit_code, 0) << unary.output;
  // The report is the one line that is a JSON object (stderr is mixed in).
  const size_t at = unary.output.rfind('{', unary.output.find("\"mode\""));
  ASSERT_NE(at, std::string::npos) << unary.output;
  const std::string line = unary.output.substr(at, unary.output.find('\n', at) - at);
  const nlohmann::json report =
      nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
  ASSERT_TRUE(report.is_object()) << unary.output;
  EXPECT_EQ(report["mode"], "unary") << unary.output;
  EXPECT_EQ(report["model"], "s4-demo") << unary.output;
  EXPECT_EQ(report["completed"], 6) << unary.output;
  EXPECT_EQ(report["steps"], 3072) << unary.output;
  EXPECT_EQ(report["errors"], 0) << unary.output;

  // The wall-clock cap stops a run that its counts would not.
  CommandResult capped = RunCli(absl::StrCat(
      "--address=", address,
      " bench --mode=stream --concurrency=1 --steps=100000000 --max_seconds=1"));
  ASSERT_EQ(capped.exit_code, 0) << capped.output;
  EXPECT_TRUE(absl::StrContains(capped.output, "stopped by --max_seconds"))
      << capped.output;
}

// Idle sessions: opened, stepped once, held, and the server's memory read
// from /proc (the server runs on this machine).
TEST(CliTest, BenchIdleHoldsSessionsAndReadsServerMemory) {
  const ServerProcess& server = SharedServer();
  CommandResult idle = RunCli(absl::StrCat(
      "--address=", server.address(), " bench --mode=idle --model=legt-delay --concurrency=20 ",
      "--hold_seconds=0.2 --server_pid=", server.pid()));
  ASSERT_EQ(idle.exit_code, 0) << idle.output;
  EXPECT_TRUE(absl::StrContains(idle.output, "20 sessions opened")) << idle.output;
  EXPECT_TRUE(absl::StrContains(idle.output, "KiB per session")) << idle.output;
}

}  // namespace
}  // namespace ssm::e2e
