// ssm_client: the command-line client of ssm_server.
//
//   ssm_client [--address=HOST:PORT] [--ca=F [--cert=F --key=F]]
//              [--token_file=F] SUBCOMMAND [flags]
//
// Exit status: 0 on success, 1 when the call failed (the gRPC code and the
// server's message go to stderr) or, for `health`, when the server is not
// SERVING; 2 for a usage error.
#include <bit>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <optional>
#include <string>
#include <vector>

#include <google/protobuf/text_format.h>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/time/time.h"
#include "client/bench.h"
#include "client/ssm_client.h"
#include "client/tensor_io.h"

// Connection.
ABSL_FLAG(std::string, address, "127.0.0.1:50051",
          "server address (any gRPC target, e.g. ipv4:127.0.0.1:50051,"
          "127.0.0.1:50052 with --load_balancing=round_robin)");
ABSL_FLAG(absl::Duration, deadline, absl::Seconds(30),
          "deadline of each unary call");
ABSL_FLAG(int, max_message_bytes, 64 << 20, "largest message, bytes");
ABSL_FLAG(std::string, load_balancing, "", "gRPC policy: '' or round_robin");
// Security (README "Security").
ABSL_FLAG(std::string, ca, "",
          "TLS: the CA certificate (PEM) the server's certificate must chain "
          "to; turns TLS on");
ABSL_FLAG(bool, tls, false,
          "TLS with gRPC's default roots (implied by --ca, --cert, --key)");
ABSL_FLAG(std::string, cert, "",
          "mTLS: a client certificate (PEM) to present, with --key");
ABSL_FLAG(std::string, key, "", "mTLS: the private key (PEM) of --cert");
ABSL_FLAG(std::string, server_name, "",
          "TLS: the name the server's certificate must carry when it is not "
          "the host in --address (an IP address, a proxy)");
ABSL_FLAG(std::string, token, "",
          "bearer token, sent with every call except health (default: the "
          "environment variable SSM_TOKEN). Other users can read a process's "
          "arguments: prefer SSM_TOKEN or --token_file");
ABSL_FLAG(std::string, token_file, "",
          "a file holding the bearer token (instead of --token)");
// Models and inference.
ABSL_FLAG(std::string, model, "", "model name");
ABSL_FLAG(int64_t, version, 0, "model version (0: newest)");
ABSL_FLAG(std::string, input, "-",
          "input sequence: .csv (rows = steps), .npy ([L, d] or [B, L, d]) "
          "or - for CSV on stdin");
ABSL_FLAG(std::string, output, "-", "output: .csv, .npy or - (CSV, stdout)");
ABSL_FLAG(int, chunk, 1, "stream: steps per chunk; bench: steps per chunk");
ABSL_FLAG(std::string, save_state, "",
          "write the session state after the last step to this file");
ABSL_FLAG(std::string, resume_state, "",
          "stream: continue from a state file written by --save_state");
ABSL_FLAG(std::string, session_id, "",
          "stream: reattach to this detached session");
ABSL_FLAG(bool, detach, false,
          "stream: leave the session detached (not ended) at the end and "
          "print its id to stderr");
// Math.
ABSL_FLAG(std::string, measure, "legs", "HiPPO measure: legs, legt, lmu, "
          "lagt, fout");
ABSL_FLAG(int, n, 8, "state size N");
ABSL_FLAG(double, theta, 1.0, "hippo: LMU window");
ABSL_FLAG(double, dt, 0.1, "hippo: discretization step");
ABSL_FLAG(std::string, discretization, "bilinear",
          "bilinear or zoh (hippo, kernel)");
ABSL_FLAG(std::string, alpha, "",
          "hippo: GBT alpha instead of --discretization (0 forward Euler, "
          "0.5 bilinear, 1 backward Euler)");
ABSL_FLAG(std::string, init, "s4",
          "kernel: s4 (DPLR from --measure), s4d-legs, s4d-lin, s4d-inv");
ABSL_FLAG(int, channels, 1, "kernel: channels H");
ABSL_FLAG(int, length, 64, "kernel: length L; bench unary: sequence length");
ABSL_FLAG(std::string, method, "",
          "kernel: dplr, diagonal or naive (default: by the system)");
ABSL_FLAG(double, dt_min, 1e-3, "kernel: smallest initial step");
ABSL_FLAG(double, dt_max, 1e-1, "kernel: largest initial step");
ABSL_FLAG(uint64_t, seed, 0, "kernel: initialization seed");
ABSL_FLAG(std::string, out, "",
          "hippo, kernel: write the result to this file instead of printing it: "
          ".npy (float64; hippo [2, N, N+1] = [A | B], [A_bar | B_bar]; kernel "
          "[H, L]) or anything else as CSV");
// Health.
ABSL_FLAG(std::string, service, "", "health: service name ('' = server)");
// Bench.
ABSL_FLAG(std::string, mode, "stream", "bench: stream, unary or idle");
ABSL_FLAG(double, hold_seconds, 2, "bench idle: how long to hold the sessions open");
ABSL_FLAG(int, server_pid, 0,
          "bench: a local server's PID, to report its CPU time and resident memory");
ABSL_FLAG(int, concurrency, 4, "bench: streams or concurrent callers");
ABSL_FLAG(int64_t, steps, 1000, "bench stream: steps per stream");
ABSL_FLAG(int, inflight, 1,
          "bench stream: chunks in flight per stream (1 = lock-step)");
ABSL_FLAG(double, rate, 0,
          "bench stream: chunks per second per stream, on a fixed schedule (0: as fast as "
          "--inflight allows)");
ABSL_FLAG(int64_t, calls, 100, "bench unary: total Infer calls");
ABSL_FLAG(int, batch, 1, "bench unary: batch");
ABSL_FLAG(double, max_seconds, 60, "bench: stop sending after this long");
ABSL_FLAG(bool, json, false, "bench: print one JSON object instead of a table");

namespace {

using ssm::client::Client;
using ssm::client::Tensor;

constexpr char kUsage[] = R"(ssm_client: talk to an ssm_server.

usage: ssm_client [--address=HOST:PORT] SUBCOMMAND [flags]

subcommands:
  models                     list the served models (and load errors)
  model NAME                 one model's config and metadata
  infer --model M [--input F|-] [--output F] [--save_state F]
                             one unary call over a whole sequence
  stream --model M [--input F|-] [--chunk T] [--save_state F]
         [--resume_state F | --session_id ID] [--detach]
                             a session fed chunk by chunk; prints outputs as
                             CSV rows as they arrive
  hippo --measure legs --n 8 --dt 0.1 [--discretization bilinear|zoh]
        [--out F.npy|F.csv]  a HiPPO system and its discretization
  kernel --init s4|s4d-legs|s4d-lin|s4d-inv --n N --channels H --length L
         [--method dplr|diagonal|naive] [--out F.npy|F.csv]
                             an SSM convolution kernel, one CSV row per channel
  health [--service NAME]    exit 0 iff the server is SERVING
  bench --mode stream|unary|idle [--concurrency C] [--steps S] [--chunk T]
        [--inflight K] [--rate R] [--calls U] [--batch B] [--length L]
        [--max_seconds X] [--hold_seconds H] [--server_pid PID]
        [--json]             a bounded load test

security (any subcommand):
  --ca F [--cert F --key F] [--server_name NAME]
                             TLS, verifying the server against the CA in F;
                             with --cert/--key, a client certificate (mTLS)
  --token_file F | --token T a bearer token for every call but health;
                             without either, $SSM_TOKEN if set. health needs
                             none, so `--address=HOST:HEALTH_PORT health`
                             asks a server's plaintext --health_address

Files: .npy (float32/float64, C order) or CSV (one row per step, batch 1).
State files hold the server's portable snapshot bytes (with its signature,
when the server signs snapshots).)";

int Fail(const absl::Status& status) {
  std::cerr << "error: " << status << "\n";
  return 1;
}

int Usage(const std::string& message) {
  std::cerr << "usage error: " << message << "\n(ssm_client --help)\n";
  return 2;
}

Client MakeClient() {
  ssm::client::ClientOptions options;
  options.address = absl::GetFlag(FLAGS_address);
  options.deadline = absl::GetFlag(FLAGS_deadline);
  options.max_message_bytes = absl::GetFlag(FLAGS_max_message_bytes);
  options.load_balancing = absl::GetFlag(FLAGS_load_balancing);
  options.tls = absl::GetFlag(FLAGS_tls);
  options.ca_file = absl::GetFlag(FLAGS_ca);
  options.cert_file = absl::GetFlag(FLAGS_cert);
  options.key_file = absl::GetFlag(FLAGS_key);
  options.server_name = absl::GetFlag(FLAGS_server_name);
  options.token = absl::GetFlag(FLAGS_token);
  options.token_file = absl::GetFlag(FLAGS_token_file);
  if (options.token.empty() && options.token_file.empty()) {
    if (const char* env = std::getenv("SSM_TOKEN"); env != nullptr) {
      options.token = env;
    }
  }
  // A bad option (an unreadable certificate, say) comes back from the
  // first call, which Fail() prints; the token never appears in it.
  return Client(options);
}

std::string RequireModel() { return absl::GetFlag(FLAGS_model); }

int CmdModels() {
  Client client = MakeClient();
  auto models = client.ListModels();
  if (!models.ok()) return Fail(models.status());
  std::printf("%-24s %-12s %s\n", "MODEL", "VERSIONS", "STATUS");
  for (const ssm::v1::ModelStatus& m : *models) {
    std::vector<int64_t> versions(m.versions().begin(), m.versions().end());
    std::string v = versions.empty() ? "-" : absl::StrJoin(versions, ",");
    std::printf("%-24s %-12s %s\n", m.name().c_str(), v.c_str(),
                m.error().empty() ? "ready" : m.error().c_str());
  }
  return 0;
}

int CmdModel(const std::string& name) {
  Client client = MakeClient();
  auto model = client.GetModel(name, absl::GetFlag(FLAGS_version));
  if (!model.ok()) return Fail(model.status());
  std::string config;
  google::protobuf::TextFormat::PrintToString(model->config(), &config);
  std::printf("# model %s, version %lld\n", model->config().name().c_str(),
              static_cast<long long>(model->version()));
  std::printf("# fingerprint %016llx, streamable %s\n",
              static_cast<unsigned long long>(model->fingerprint()),
              model->streamable() ? "yes" : "no");
  std::printf("# memory %llu bytes, state of one stream %lld bytes\n",
              static_cast<unsigned long long>(model->memory_bytes()),
              static_cast<long long>(model->state_bytes()));
  std::printf("%s", config.c_str());
  return 0;
}

int CmdInfer() {
  const std::string model = RequireModel();
  if (model.empty()) return Usage("infer needs --model");
  auto input = ssm::client::ReadSequence(absl::GetFlag(FLAGS_input));
  if (!input.ok()) return Fail(input.status());
  Client client = MakeClient();
  const std::string save = absl::GetFlag(FLAGS_save_state);
  auto result = client.Infer(model, *input, absl::GetFlag(FLAGS_version),
                             /*return_state=*/!save.empty());
  if (!result.ok()) return Fail(result.status());
  if (absl::Status s =
          ssm::client::WriteSequence(absl::GetFlag(FLAGS_output), result->output);
      !s.ok()) {
    return Fail(s);
  }
  if (!save.empty()) {
    if (!result->state.has_value()) {
      return Fail(absl::InternalError("the server returned no state"));
    }
    if (absl::Status s = ssm::client::WriteFileBytes(
            save, ssm::client::StateFileBytes(*result->state));
        !s.ok()) {
      return Fail(s);
    }
  }
  return 0;
}

// Reads CSV rows from stdin as they come: up to `rows` rows, fewer at end of
// input; nullopt at end of input.
std::optional<std::string> ReadCsvRows(int rows) {
  std::string text, line;
  int got = 0;
  while (got < rows && std::getline(std::cin, line)) {
    absl::string_view trimmed = absl::StripAsciiWhitespace(line);
    if (trimmed.empty() || trimmed.front() == '#') continue;
    text += line + "\n";
    ++got;
  }
  if (got == 0) return std::nullopt;
  return text;
}

int CmdStream() {
  const std::string model = RequireModel();
  if (model.empty()) return Usage("stream needs --model");
  const int chunk = absl::GetFlag(FLAGS_chunk);
  if (chunk < 1) return Usage("--chunk must be >= 1");
  const std::string input_path = absl::GetFlag(FLAGS_input);
  const std::string output_path = absl::GetFlag(FLAGS_output);
  const bool to_stdout = output_path == "-";

  // A file is read whole (it tells the batch); stdin is read as it comes,
  // so `stream` can sit at the end of a pipe.
  std::optional<Tensor> whole;
  int batch = 1;
  if (input_path != "-") {
    auto input = ssm::client::ReadSequence(input_path);
    if (!input.ok()) return Fail(input.status());
    whole = *std::move(input);
    batch = static_cast<int>(whole->shape[0]);
  }
  if (to_stdout && batch != 1) {
    return Usage("CSV output holds batch 1; use --output=FILE.npy");
  }

  Client client = MakeClient();
  ssm::client::StreamOptions open;
  open.model = model;
  open.version = absl::GetFlag(FLAGS_version);
  open.batch = batch;
  open.session_id = absl::GetFlag(FLAGS_session_id);
  if (const std::string resume = absl::GetFlag(FLAGS_resume_state);
      !resume.empty()) {
    auto bytes = ssm::client::ReadFileBytes(resume);
    if (!bytes.ok()) return Fail(bytes.status());
    open.resume_from = ssm::client::ParseStateFile(*bytes);
  }
  auto stream = client.OpenStream(open);
  if (!stream.ok()) return Fail(stream.status());
  const ssm::v1::StreamOpened info = (*stream)->opened();
  std::fprintf(stderr, "# session %s: model %s version %lld, position %lld\n",
               info.session_id().c_str(), info.model().c_str(),
               static_cast<long long>(info.version()),
               static_cast<long long>(info.position()));

  std::vector<float> collected;  // for a file output
  int64_t steps_done = 0;
  auto run = [&](const std::vector<float>& values, int steps) -> absl::Status {
    auto r = (*stream)->RunChunk(values, steps);
    if (!r.ok()) return r.status();
    if (to_stdout) {
      std::fputs(ssm::client::FormatCsv(r->output).c_str(), stdout);
      std::fflush(stdout);
    } else {
      collected.insert(collected.end(), r->output.values.begin(),
                       r->output.values.end());
    }
    steps_done += steps;
    return absl::OkStatus();
  };

  if (whole.has_value()) {
    const int64_t length = whole->shape[1], d = whole->shape[2];
    std::vector<float> values;
    for (int64_t t0 = 0; t0 < length; t0 += chunk) {
      const int64_t t = std::min<int64_t>(chunk, length - t0);
      values.resize(batch * t * d);
      for (int64_t b = 0; b < batch; ++b) {
        std::copy_n(whole->values.begin() + (b * length + t0) * d, t * d,
                    values.begin() + b * t * d);
      }
      if (absl::Status s = run(values, static_cast<int>(t)); !s.ok()) {
        return Fail(s);
      }
    }
  } else {
    while (std::optional<std::string> rows = ReadCsvRows(chunk)) {
      auto parsed = ssm::client::ParseCsv(*rows);
      if (!parsed.ok()) return Fail(parsed.status());
      if (absl::Status s = run(parsed->values, static_cast<int>(parsed->shape[1]));
          !s.ok()) {
        return Fail(s);
      }
    }
  }

  if (!to_stdout) {
    // Chunks arrive [batch, T, d]; the file wants [batch, L, d].
    const int64_t d_out = info.d_output();
    Tensor out{{batch, steps_done, d_out},
               std::vector<float>(collected.size())};
    int64_t t0 = 0, at = 0;
    const int64_t step = chunk;
    while (t0 < steps_done) {
      const int64_t t = std::min<int64_t>(step, steps_done - t0);
      for (int64_t b = 0; b < batch; ++b) {
        std::copy_n(collected.begin() + at, t * d_out,
                    out.values.begin() + (b * steps_done + t0) * d_out);
        at += t * d_out;
      }
      t0 += t;
    }
    if (absl::Status s = ssm::client::WriteSequence(output_path, out); !s.ok()) {
      return Fail(s);
    }
  }
  if (const std::string save = absl::GetFlag(FLAGS_save_state); !save.empty()) {
    auto state = client.ExportState((*stream)->session_id());
    if (!state.ok()) return Fail(state.status());
    if (absl::Status s = ssm::client::WriteFileBytes(
            save, ssm::client::StateFileBytes(*state));
        !s.ok()) {
      return Fail(s);
    }
  }
  if (absl::GetFlag(FLAGS_detach)) {
    (*stream)->Detach();
    std::fprintf(stderr, "# detached session %s at position %lld\n",
                 info.session_id().c_str(),
                 static_cast<long long>((*stream)->position()));
    return 0;
  }
  if (absl::Status s = (*stream)->Close(); !s.ok()) return Fail(s);
  return 0;
}

bool ParseMeasure(const std::string& name, ssm::v1::HippoMeasure* measure) {
  const std::string n = absl::AsciiStrToLower(name);
  if (n == "legs") *measure = ssm::v1::HIPPO_MEASURE_LEGS;
  else if (n == "legt") *measure = ssm::v1::HIPPO_MEASURE_LEGT;
  else if (n == "lmu") *measure = ssm::v1::HIPPO_MEASURE_LMU;
  else if (n == "lagt") *measure = ssm::v1::HIPPO_MEASURE_LAGT;
  else if (n == "fout") *measure = ssm::v1::HIPPO_MEASURE_FOUT;
  else return false;
  return true;
}

bool ParseDiscretization(ssm::v1::Discretization* d) {
  const std::string alpha = absl::GetFlag(FLAGS_alpha);
  if (!alpha.empty()) {
    double a;
    if (!absl::SimpleAtod(alpha, &a)) return false;
    d->set_alpha(a);
    return true;
  }
  const std::string kind =
      absl::AsciiStrToLower(absl::GetFlag(FLAGS_discretization));
  if (kind == "bilinear") d->set_kind(ssm::v1::DISCRETIZATION_KIND_BILINEAR);
  else if (kind == "zoh") d->set_kind(ssm::v1::DISCRETIZATION_KIND_ZOH);
  else return false;
  return true;
}

// A float64 array as NumPy's .npy (format 1.0, C order, little-endian,
// data 64-byte aligned as numpy.save writes it): the Math service's results
// are double, and stay so in the file.
std::string NpyFloat64(const std::vector<int64_t>& shape,
                       const std::vector<double>& values) {
  std::string dims;
  for (size_t i = 0; i < shape.size(); ++i) {
    absl::StrAppend(&dims, i ? ", " : "", shape[i]);
  }
  if (shape.size() == 1) dims += ",";
  std::string header = absl::StrCat(
      "{'descr': '<f8', 'fortran_order': False, 'shape': (", dims, "), }");
  const size_t prefix = 10;  // magic, version, header length
  const size_t total = (prefix + header.size() + 1 + 63) / 64 * 64;
  header.append(total - prefix - header.size() - 1, ' ');
  header.push_back('\n');
  std::string out("\x93NUMPY\x01\x00", 8);
  out.push_back(static_cast<char>(header.size() & 0xff));
  out.push_back(static_cast<char>(header.size() >> 8));
  out += header;
  for (double v : values) {
    const uint64_t bits = std::bit_cast<uint64_t>(v);
    for (int b = 0; b < 8; ++b) out.push_back(static_cast<char>((bits >> (8 * b)) & 0xff));
  }
  return out;
}

// Rows of a row-major matrix as CSV, every double round-tripping.
std::string CsvRows(const std::vector<double>& values, int64_t rows, int64_t cols) {
  std::string text;
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t c = 0; c < cols; ++c) {
      absl::StrAppend(&text, c ? "," : "", absl::StrFormat("%.17g", values[r * cols + c]));
    }
    text += "\n";
  }
  return text;
}

// Writes `--out` (a result the subcommand would print) and says so on
// stderr; 0, or 1 when the file cannot be written.
int WriteOut(const std::string& path, const std::string& bytes,
             const std::string& what) {
  if (absl::Status s = ssm::client::WriteFileBytes(path, bytes); !s.ok()) {
    return Fail(s);
  }
  std::fprintf(stderr, "wrote %s: %s\n", path.c_str(), what.c_str());
  return 0;
}

void PrintMatrix(const char* name, const ssm::v1::Matrix& m) {
  std::printf("%s (%d x %d)\n", name, m.rows(), m.cols());
  for (int r = 0; r < m.rows(); ++r) {
    for (int c = 0; c < m.cols(); ++c) {
      const int i = r * m.cols() + c;
      std::printf(" %12.6g", i < m.values_size() ? m.values(i) : 0.0);
    }
    std::printf("\n");
  }
}

int CmdHippo() {
  ssm::v1::BuildHippoRequest request;
  ssm::v1::HippoMeasure measure;
  if (!ParseMeasure(absl::GetFlag(FLAGS_measure), &measure)) {
    return Usage("--measure must be legs, legt, lmu, lagt or fout");
  }
  request.set_measure(measure);
  request.set_n(absl::GetFlag(FLAGS_n));
  request.set_theta(absl::GetFlag(FLAGS_theta));
  request.set_dt(absl::GetFlag(FLAGS_dt));
  if (!ParseDiscretization(request.mutable_discretization())) {
    return Usage("--discretization must be bilinear or zoh; --alpha a number");
  }
  Client client = MakeClient();
  auto r = client.BuildHippo(request);
  if (!r.ok()) return Fail(r.status());
  if (const std::string out = absl::GetFlag(FLAGS_out); !out.empty()) {
    // [A | B] and [A_bar | B_bar], each N x (N + 1).
    const int64_t n = r->a().rows();
    std::vector<double> both;
    auto append = [&both, n](const ssm::v1::Matrix& a, const ssm::v1::Matrix& b) {
      for (int64_t i = 0; i < n; ++i) {
        both.insert(both.end(), a.values().begin() + i * n, a.values().begin() + (i + 1) * n);
        both.push_back(b.values(i));
      }
    };
    append(r->a(), r->b());
    append(r->a_bar(), r->b_bar());
    if (absl::EndsWith(out, ".npy")) {
      return WriteOut(out, NpyFloat64({2, n, n + 1}, both),
                      absl::StrCat("float64 [2, ", n, ", ", n + 1,
                                   "]: [0] = [A | B], [1] = [A_bar | B_bar]"));
    }
    const std::vector<double> cont(both.begin(), both.begin() + n * (n + 1));
    const std::vector<double> disc(both.begin() + n * (n + 1), both.end());
    return WriteOut(out,
                    absl::StrCat("# A | B\n", CsvRows(cont, n, n + 1),
                                 "# A_bar | B_bar\n", CsvRows(disc, n, n + 1)),
                    absl::StrCat("CSV, ", 2 * n, " rows of ", n + 1,
                                 ": [A | B], then [A_bar | B_bar]"));
  }
  PrintMatrix("A", r->a());
  PrintMatrix("B", r->b());
  PrintMatrix("A_bar", r->a_bar());
  PrintMatrix("B_bar", r->b_bar());
  return 0;
}

int CmdKernel() {
  ssm::v1::ComputeKernelRequest request;
  ssm::v1::SsmInit* init = request.mutable_init();
  const std::string kind = absl::AsciiStrToLower(absl::GetFlag(FLAGS_init));
  if (kind == "s4") {
    init->set_kind(ssm::v1::SsmInit::KIND_S4);
    ssm::v1::HippoMeasure measure;
    if (!ParseMeasure(absl::GetFlag(FLAGS_measure), &measure)) {
      return Usage("--measure must be legs, legt or fout for --init=s4");
    }
    init->set_measure(measure);
  } else if (kind == "s4d-legs") {
    init->set_kind(ssm::v1::SsmInit::KIND_S4D_LEGS);
  } else if (kind == "s4d-lin") {
    init->set_kind(ssm::v1::SsmInit::KIND_S4D_LIN);
  } else if (kind == "s4d-inv") {
    init->set_kind(ssm::v1::SsmInit::KIND_S4D_INV);
  } else {
    return Usage("--init must be s4, s4d-legs, s4d-lin or s4d-inv");
  }
  init->set_n(absl::GetFlag(FLAGS_n));
  init->set_channels(absl::GetFlag(FLAGS_channels));
  init->set_dt_min(absl::GetFlag(FLAGS_dt_min));
  init->set_dt_max(absl::GetFlag(FLAGS_dt_max));
  init->set_seed(absl::GetFlag(FLAGS_seed));
  request.set_length(absl::GetFlag(FLAGS_length));
  const std::string method = absl::AsciiStrToLower(absl::GetFlag(FLAGS_method));
  if (method == "dplr") request.set_method(ssm::v1::KERNEL_METHOD_DPLR);
  else if (method == "diagonal") request.set_method(ssm::v1::KERNEL_METHOD_DIAGONAL);
  else if (method == "naive") request.set_method(ssm::v1::KERNEL_METHOD_NAIVE);
  else if (!method.empty()) return Usage("--method must be dplr, diagonal or naive");
  // Only set when asked: DPLR kernels are bilinear whatever the default.
  if (!absl::GetFlag(FLAGS_alpha).empty() ||
      absl::GetFlag(FLAGS_discretization) != "bilinear") {
    if (!ParseDiscretization(request.mutable_discretization())) {
      return Usage("--discretization must be bilinear or zoh");
    }
  }
  Client client = MakeClient();
  auto r = client.ComputeKernel(request);
  if (!r.ok()) return Fail(r.status());
  const ssm::v1::Matrix& k = r->kernel();
  if (const std::string out = absl::GetFlag(FLAGS_out); !out.empty()) {
    const std::vector<double> values(k.values().begin(), k.values().end());
    const std::string shape = absl::StrCat("[", k.rows(), ", ", k.cols(), "]");
    return absl::EndsWith(out, ".npy")
               ? WriteOut(out, NpyFloat64({k.rows(), k.cols()}, values),
                          absl::StrCat("float64 ", shape, " (channel, lag)"))
               : WriteOut(out, CsvRows(values, k.rows(), k.cols()),
                          absl::StrCat("CSV ", shape, ", one row per channel"));
  }
  for (int h = 0; h < k.rows(); ++h) {
    for (int l = 0; l < k.cols(); ++l) {
      std::printf("%s%.17g", l ? "," : "", k.values(h * k.cols() + l));
    }
    std::printf("\n");
  }
  return 0;
}

int CmdHealth() {
  Client client = MakeClient();
  auto status = client.Health(absl::GetFlag(FLAGS_service));
  if (!status.ok()) return Fail(status.status());
  std::printf("%s\n", ssm::client::ServingStatusName(*status));
  return *status == Client::ServingStatus::kServing ? 0 : 1;
}

int CmdBench() {
  ssm::client::BenchOptions o;
  o.mode = absl::GetFlag(FLAGS_mode);
  o.model = absl::GetFlag(FLAGS_model).empty() ? "s4-demo"
                                                : absl::GetFlag(FLAGS_model);
  o.concurrency = absl::GetFlag(FLAGS_concurrency);
  o.steps = absl::GetFlag(FLAGS_steps);
  o.chunk = absl::GetFlag(FLAGS_chunk);
  o.inflight = absl::GetFlag(FLAGS_inflight);
  o.rate = absl::GetFlag(FLAGS_rate);
  o.calls = absl::GetFlag(FLAGS_calls);
  o.batch = absl::GetFlag(FLAGS_batch);
  o.length = absl::GetFlag(FLAGS_length);
  o.max_duration = absl::Seconds(absl::GetFlag(FLAGS_max_seconds));
  o.hold = absl::Seconds(absl::GetFlag(FLAGS_hold_seconds));
  o.server_pid = absl::GetFlag(FLAGS_server_pid);
  Client client = MakeClient();
  auto report = ssm::client::RunBench(client, o);
  if (!report.ok()) return Fail(report.status());
  std::fputs(absl::GetFlag(FLAGS_json)
                 ? ssm::client::FormatBenchJson(*report).c_str()
                 : ssm::client::FormatBenchTable(*report).c_str(),
             stdout);
  return report->errors == 0 ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(kUsage);
  std::vector<char*> args = absl::ParseCommandLine(argc, argv);
  if (args.size() < 2) return Usage("no subcommand");
  const std::string command = args[1];
  const size_t extra = args.size() - 2;
  if (command == "model") {
    if (extra != 1) return Usage("model takes one NAME");
    return CmdModel(args[2]);
  }
  if (extra != 0) {
    return Usage(absl::StrCat("unexpected argument '", args[2], "'"));
  }
  if (command == "models") return CmdModels();
  if (command == "infer") return CmdInfer();
  if (command == "stream") return CmdStream();
  if (command == "hippo") return CmdHippo();
  if (command == "kernel") return CmdKernel();
  if (command == "health") return CmdHealth();
  if (command == "bench") return CmdBench();
  return Usage(absl::StrCat("unknown subcommand '", command, "'"));
}
