// The client side of security (issue 11) against the real binary: the C++
// library's TLS, mTLS and token options on every call, stream and resume;
// its refusals of options that cannot work; and the ssm_client CLI's
// --ca/--cert/--key/--token/--token_file/SSM_TOKEN on every subcommand
// that talks to the server, with the server's exact codes on stderr.
// Certificates come from make_test_pki.sh at test time.
#include <gmock/gmock.h>
#include <grpcpp/generic/async_generic_service.h>
#include <grpcpp/grpcpp.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "client/bench.h"
#include "client/ssm_client.h"
#include "client/tensor_io.h"
#include "gtest/gtest.h"
#include "ssm/v1/ssm_service.grpc.pb.h"
#include "tests/e2e/e2e_util.h"

namespace ssm::e2e {
namespace {

using client::Client;
using client::ClientOptions;
using client::Tensor;
namespace v1 = ::ssm::v1;
using ::testing::HasSubstr;
using ::testing::Not;

std::string ReadText(const std::string& path) {
  std::ifstream in(path);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

void WriteText(const std::string& path, const std::string& text) {
  std::ofstream(path) << text;
}

// A fresh folder under /tmp (the tests' files: PKI, callers, keys),
// removed when the test binary exits.
std::vector<std::string>* made_dirs = nullptr;
void RemoveMadeDirs() {
  for (const std::string& dir : *made_dirs) std::filesystem::remove_all(dir);
}
std::string TempDir(const char* prefix) {
  if (made_dirs == nullptr) {
    made_dirs = new std::vector<std::string>;
    std::atexit(RemoveMadeDirs);
  }
  std::string tmpl = absl::StrCat("/tmp/", prefix, "-XXXXXX");
  made_dirs->push_back(mkdtemp(tmpl.data()));
  return made_dirs->back();
}

// The test PKI (make_test_pki.sh), made once per test binary.
const std::string& Pki() {
  static const std::string* dir = [] {
    auto* d = new std::string(TempDir("ssm-client-pki"));
    const int rc =
        std::system(absl::StrCat(SSM_TEST_PKI_SCRIPT, " ", *d, " >/dev/null").c_str());
    EXPECT_EQ(rc, 0) << "make_test_pki.sh failed";
    return d;
  }();
  return *dir;
}
std::string PkiPath(const std::string& name) { return absl::StrCat(Pki(), "/", name); }

std::string Sha256Hex(const std::string& text) {
  const std::string file = absl::StrCat(Pki(), "/hash-input");
  WriteText(file, text);
  FILE* pipe = popen(absl::StrCat("sha256sum < ", file).c_str(), "r");
  char hex[65] = {0};
  EXPECT_EQ(std::fread(hex, 1, 64, pipe), 64u);
  pclose(pipe);
  std::remove(file.c_str());
  return hex;
}

constexpr char kAliceToken[] = "alice-s3cret-token";
constexpr char kBobToken[] = "bob-s3cret-token";

// alice (token) may do everything; bob (token) may only run legt-*;
// svc-a is whoever presents client.pem (SAN client-a.test).
std::string CallersJson() {
  return absl::StrCat(
      R"({"callers": [)",
      R"({"principal": "alice", "token_sha256": [")", Sha256Hex(kAliceToken),
      R"("], "scopes": ["run:*", "list", "state", "math"]},)",
      R"({"principal": "bob", "token_sha256": [")", Sha256Hex(kBobToken),
      R"("], "scopes": ["run:legt-*"]},)",
      R"({"principal": "svc-a", "cert_san": ["client-a.test"], "scopes": ["run:*", "list"]}]})");
}

// The flags of a server with everything on: TLS (client certificates
// verified when sent), callers, signed snapshots, a plaintext health port.
std::vector<std::string> SecureFlags(const std::string& dir, int health_port) {
  return {"--tls_cert=" + PkiPath("server.pem"),
          "--tls_key=" + PkiPath("server.key"),
          "--tls_client_ca=" + PkiPath("ca.pem"),
          "--tls_client_auth=request",
          "--auth_callers=" + dir + "/callers.json",
          "--snapshot_keys=" + dir + "/keys",
          absl::StrCat("--health_address=127.0.0.1:", health_port)};
}

std::string MakeSecureFiles() {
  const std::string dir = TempDir("ssm-client-auth");
  WriteText(dir + "/callers.json", CallersJson());
  WriteText(dir + "/keys", "0f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c4b5a69788796a5b4c3d2e1f0\n");
  return dir;
}

// One secure server for the suite.
class ClientSecurityTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new std::string(MakeSecureFiles());
    absl::StatusOr<int> health = PickFreePort();
    ASSERT_OK(health);
    health_port_ = *health;
    absl::StatusOr<std::unique_ptr<ServerProcess>> started =
        ServerProcess::Start(SecureFlags(*dir_, health_port_), 0, absl::Seconds(30), health_port_);
    ASSERT_OK(started);
    server_ = started->release();
  }
  static void TearDownTestSuite() {
    delete server_;
    server_ = nullptr;
  }
  void SetUp() override { ASSERT_NE(server_, nullptr); }

  // TLS trusting the test CA, as alice unless `token` says otherwise.
  static ClientOptions Secure(const std::string& token = kAliceToken) {
    ClientOptions o;
    o.address = server_->address();
    o.deadline = absl::Seconds(20);
    o.ca_file = PkiPath("ca.pem");
    o.token = token;
    return o;
  }
  static std::string HealthAddress() { return absl::StrCat("127.0.0.1:", health_port_); }

  static std::string* dir_;
  static int health_port_;
  static ServerProcess* server_;
};
std::string* ClientSecurityTest::dir_ = nullptr;
int ClientSecurityTest::health_port_ = 0;
ServerProcess* ClientSecurityTest::server_ = nullptr;

v1::BuildHippoRequest SmallHippo() {
  v1::BuildHippoRequest r;
  r.set_measure(v1::HIPPO_MEASURE_LEGS);
  r.set_n(3);
  r.set_dt(0.1);
  return r;
}

// Every call of the library over TLS with a token: unary, Math, a stream
// that asks for its state, export, import, a stream resumed from a signed
// snapshot, and a reattach.
TEST_F(ClientSecurityTest, EveryCallWorksOverTlsWithAToken) {
  Client client(Secure());
  ASSERT_OK(client.status());
  absl::StatusOr<std::vector<v1::ModelStatus>> models = client.ListModels();
  ASSERT_OK(models);
  EXPECT_EQ(models->size(), 3u);
  EXPECT_OK(client.GetModel("s4-demo"));
  const Tensor input = MakeSequence(1, 40, 1, 21);
  absl::StatusOr<client::InferResult> whole = client.Infer("s4-demo", input, 0, true);
  ASSERT_OK(whole);
  ASSERT_TRUE(whole->state.has_value());
  EXPECT_EQ(whole->state->signature().size(), 32u);
  EXPECT_OK(client.BuildHippo(SmallHippo()));
  v1::ComputeKernelRequest kernel;
  kernel.mutable_init()->set_kind(v1::SsmInit::KIND_S4D_LIN);
  kernel.mutable_init()->set_n(4);
  kernel.mutable_init()->set_channels(1);
  kernel.mutable_init()->set_dt_min(1e-3);
  kernel.mutable_init()->set_dt_max(1e-1);
  kernel.set_length(8);
  EXPECT_OK(client.ComputeKernel(kernel));
  absl::StatusOr<Client::ServingStatus> health = client.Health();
  ASSERT_OK(health);
  EXPECT_EQ(*health, Client::ServingStatus::kServing);

  absl::StatusOr<std::unique_ptr<client::Stream>> stream =
      client.OpenStream({.model = "s4-demo"});
  ASSERT_OK(stream);
  absl::StatusOr<Tensor> head = StreamInChunks(**stream, SliceSteps(input, 0, 25), {4, 7});
  ASSERT_OK(head);
  absl::StatusOr<v1::StateSnapshot> state = client.ExportState((*stream)->session_id());
  ASSERT_OK(state);
  EXPECT_EQ(state->signature().size(), 32u);
  EXPECT_OK((*stream)->Close());

  // A signed snapshot goes on through a new stream and through an import.
  client::StreamOptions resume{.model = "s4-demo"};
  resume.resume_from = *state;
  absl::StatusOr<std::unique_ptr<client::Stream>> resumed = client.OpenStream(resume);
  ASSERT_OK(resumed);
  absl::StatusOr<Tensor> tail = StreamInChunks(**resumed, SliceSteps(input, 25, 40), {5});
  ASSERT_OK(tail);
  AppendSteps(&*head, *tail);
  EXPECT_LE(MaxRelativeDiff(*head, whole->output), kWireTolerance);
  EXPECT_OK((*resumed)->Close());
  absl::StatusOr<Client::Imported> imported = client.ImportState(*state, "s4-demo");
  ASSERT_OK(imported);
  EXPECT_EQ(imported->position, 25);
  absl::StatusOr<std::unique_ptr<client::Stream>> reattached =
      client.OpenStream({.model = "s4-demo", .session_id = imported->session_id});
  ASSERT_OK(reattached);
  EXPECT_EQ((*reattached)->opened().position(), 25);
  EXPECT_OK((*reattached)->Close());
}

// No token, a wrong one, a token without the scope: the server's codes,
// on unary calls and on a stream's open alike.
TEST_F(ClientSecurityTest, MissingOrWrongTokensGetTheServersCodes) {
  for (const char* token : {"", "not-a-token-anyone-knows"}) {
    SCOPED_TRACE(token);
    Client client(Secure(token));
    ASSERT_OK(client.status());
    EXPECT_CODE(client.ListModels(), kUnauthenticated);
    EXPECT_CODE(client.Infer("legt-delay", MakeSequence(1, 4, 1)), kUnauthenticated);
    EXPECT_CODE(client.BuildHippo(SmallHippo()), kUnauthenticated);
    absl::StatusOr<std::unique_ptr<client::Stream>> stream =
        client.OpenStream({.model = "legt-delay"});
    EXPECT_CODE(stream, kUnauthenticated);
    EXPECT_THAT(std::string(stream.status().message()), Not(HasSubstr("not-a-token")));
    // Health stays open.
    EXPECT_OK(client.Health());
  }
  Client bob(Secure(kBobToken));
  EXPECT_OK(bob.Infer("legt-delay", MakeSequence(1, 4, 1)));
  absl::StatusOr<client::InferResult> denied = bob.Infer("s4-demo", MakeSequence(1, 4, 1));
  EXPECT_CODE(denied, kPermissionDenied);
  EXPECT_THAT(std::string(denied.status().message()), HasSubstr("run:s4-demo"));
  EXPECT_CODE(bob.OpenStream({.model = "s4-demo"}), kPermissionDenied);
  EXPECT_CODE(bob.ListModels(), kPermissionDenied);
}

// mTLS: the client certificate is the caller (no token); the CA, the
// server's name and a certificate the server does not trust decide the
// handshake.
TEST_F(ClientSecurityTest, ClientCertificatesAndServerVerification) {
  ClientOptions o = Secure("");
  o.cert_file = PkiPath("client.pem");
  o.key_file = PkiPath("client.key");
  Client svc_a(o);
  ASSERT_OK(svc_a.status());
  EXPECT_OK(svc_a.ListModels());
  absl::StatusOr<std::unique_ptr<client::Stream>> stream =
      svc_a.OpenStream({.model = "legt-delay"});
  ASSERT_OK(stream);
  EXPECT_OK((*stream)->RunChunk(std::vector<float>{0.5f}, 1));
  EXPECT_OK((*stream)->Close());
  // svc-a has no math scope; client-b.test is verified but no caller.
  EXPECT_CODE(svc_a.BuildHippo(SmallHippo()), kPermissionDenied);
  o.cert_file = PkiPath("client-b.pem");
  o.key_file = PkiPath("client-b.key");
  EXPECT_CODE(Client(o).ListModels(), kUnauthenticated);

  // By IP, the certificate's IP SAN matches; by a name it lacks, or
  // trusting another CA, there is no connection.
  ClientOptions named = Secure();
  named.server_name = "localhost";
  EXPECT_OK(Client(named).ListModels());
  named.server_name = "elsewhere.test";
  named.deadline = absl::Seconds(5);
  EXPECT_CODE(Client(named).ListModels(), kUnavailable);
  ClientOptions other = Secure();
  other.ca_file = PkiPath("other-ca.pem");
  other.deadline = absl::Seconds(5);
  EXPECT_CODE(Client(other).ListModels(), kUnavailable);
  // Plaintext to the TLS port: nothing either.
  ClientOptions plain = Secure();
  plain.ca_file.clear();
  plain.deadline = absl::Seconds(5);
  EXPECT_CODE(Client(plain).ListModels(), kUnavailable);
}

// The plaintext health port answers a plain Client; nothing else there.
TEST_F(ClientSecurityTest, HealthOnThePlaintextHealthPort) {
  ClientOptions o;
  o.address = HealthAddress();
  o.token = kAliceToken;  // not sent with Health (see RecordingServer below)
  Client health(o);
  absl::StatusOr<Client::ServingStatus> serving = health.Health("ssm.v1.Inference/s4-demo");
  ASSERT_OK(serving);
  EXPECT_EQ(*serving, Client::ServingStatus::kServing);
  EXPECT_CODE(health.ListModels(), kUnimplemented);
}

// The same security on a Unix-domain socket (co-located clients): TLS
// verified against the CA (gRPC's authority for a unix: target is
// "localhost", a name the server's certificate carries), tokens and scopes,
// client certificates as principals; a call without a token, or a client
// that does not speak TLS, gets nothing.
TEST(ClientSecurityUnixSocketTest, TlsTokensAndCertificatesWorkOnASocket) {
  const std::string dir = MakeSecureFiles();
  absl::StatusOr<int> health = PickFreePort();
  ASSERT_OK(health);
  const std::string socket = dir + "/ssm.sock";
  std::vector<std::string> flags = SecureFlags(dir, *health);
  flags.push_back("--address=unix:" + socket);
  absl::StatusOr<std::unique_ptr<ServerProcess>> server =
      ServerProcess::Start(flags, 0, absl::Seconds(30), *health);
  ASSERT_OK(server);

  ClientOptions o;
  o.address = "unix:" + socket;
  o.deadline = absl::Seconds(20);
  o.ca_file = PkiPath("ca.pem");
  o.token = kAliceToken;
  Client alice(o);
  EXPECT_OK(alice.ListModels());
  absl::StatusOr<client::InferResult> r = alice.Infer("legt-delay", MakeSequence(1, 8, 1));
  EXPECT_OK(r);
  absl::StatusOr<std::unique_ptr<client::Stream>> stream =
      alice.OpenStream({.model = "legt-delay"});
  ASSERT_OK(stream);
  EXPECT_OK((*stream)->RunChunk(std::vector<float>{0.5f}, 1));
  EXPECT_OK((*stream)->Close());

  o.token = kBobToken;
  EXPECT_CODE(Client(o).Infer("s4-demo", MakeSequence(1, 4, 1)), kPermissionDenied);
  o.token.clear();
  EXPECT_CODE(Client(o).ListModels(), kUnauthenticated);
  o.cert_file = PkiPath("client.pem");
  o.key_file = PkiPath("client.key");
  EXPECT_OK(Client(o).ListModels());  // svc-a, by its certificate
  ClientOptions plain;
  plain.address = o.address;
  plain.deadline = absl::Seconds(5);
  EXPECT_CODE(Client(plain).ListModels(), kUnavailable);
}

// Options that cannot work are refused when the Client is made, by every
// call alike, naming the option and the file, never the token, and
// without falling back to plaintext.
TEST(ClientOptionsTest, UnusableOptionsAreClearErrors) {
  const std::string dir = TempDir("ssm-client-opts");
  // The Client's status; when not OK, every call says the same, without
  // a channel.
  auto made = [](ClientOptions o) {
    o.address = "127.0.0.1:1";  // never reached
    Client client(o);
    const absl::Status s = client.status();
    if (s.ok()) {
      EXPECT_NE(client.channel(), nullptr);
    } else {
      EXPECT_EQ(client.ListModels().status(), s);
      EXPECT_EQ(client.Health().status(), s);
      EXPECT_EQ(client.OpenStream({.model = "x"}).status(), s);
      EXPECT_EQ(client.channel(), nullptr);
      EXPECT_FALSE(client.WaitForConnected(absl::Seconds(1)));
    }
    return s;
  };
  ClientOptions o;
  o.ca_file = dir + "/missing.pem";
  absl::Status s = made(o);
  EXPECT_EQ(s.code(), absl::StatusCode::kNotFound) << s;
  EXPECT_THAT(std::string(s.message()), HasSubstr("ca_file " + o.ca_file)) << s;

  o.ca_file = PkiPath("ca.key");  // a key, not a certificate
  s = made(o);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_THAT(std::string(s.message()), HasSubstr(o.ca_file)) << s;

  o.ca_file = PkiPath("ca.pem");
  o.cert_file = PkiPath("client.pem");
  s = made(o);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_THAT(std::string(s.message()), HasSubstr("key_file")) << s;
  o.key_file = PkiPath("client.pem");  // a certificate, not a key
  s = made(o);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_THAT(std::string(s.message()), HasSubstr("key_file " + o.key_file)) << s;
  const std::string unreadable = dir + "/unreadable.key";
  WriteText(unreadable, ReadText(PkiPath("client.key")));
  ASSERT_EQ(chmod(unreadable.c_str(), 0), 0);
  o.key_file = unreadable;
  s = made(o);
  if (geteuid() != 0) {  // root reads anything
    EXPECT_EQ(s.code(), absl::StatusCode::kPermissionDenied) << s;
    EXPECT_THAT(std::string(s.message()), HasSubstr(unreadable)) << s;
  }
  o.key_file = PkiPath("client.key");
  EXPECT_OK(made(o));

  ClientOptions named;
  named.server_name = "localhost";
  s = made(named);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_THAT(std::string(s.message()), HasSubstr("needs TLS")) << s;

  ClientOptions token;
  token.token = "line-one\nline-two";
  s = made(token);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_THAT(std::string(s.message()), Not(HasSubstr("line-one"))) << s;
  token.token_file = dir + "/token";
  s = made(token);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;  // both
  token.token.clear();
  s = made(token);
  EXPECT_EQ(s.code(), absl::StatusCode::kNotFound) << s;
  EXPECT_THAT(std::string(s.message()), HasSubstr("token_file " + token.token_file)) << s;
  WriteText(token.token_file, "  \n");
  s = made(token);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_THAT(std::string(s.message()), HasSubstr("holds no token")) << s;
  WriteText(token.token_file, "file-token\n");  // the newline is dropped
  EXPECT_OK(made(token));

  // Over a channel given, the token is still read (and refused).
  ClientOptions bad_token;
  bad_token.token = "tab\there";
  Client over(grpc::CreateChannel("127.0.0.1:1", grpc::InsecureChannelCredentials()), bad_token);
  EXPECT_EQ(over.status().code(), absl::StatusCode::kInvalidArgument);
  Client no_channel(nullptr, ClientOptions());
  EXPECT_EQ(no_channel.status().code(), absl::StatusCode::kInvalidArgument);
}

// A gRPC server in this process that answers every call UNIMPLEMENTED and
// records each call's method and `authorization` metadata: what the
// client puts on the wire, to the byte.
class RecordingServer : public grpc::CallbackGenericService {
 public:
  RecordingServer() {
    grpc::ServerBuilder builder;
    builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port_);
    builder.RegisterCallbackGenericService(this);
    server_ = builder.BuildAndStart();
  }
  ~RecordingServer() override { server_->Shutdown(); }
  std::string address() const { return absl::StrCat("127.0.0.1:", port_); }

  // method -> the authorization values it came with ("-" for none).
  std::multimap<std::string, std::string> calls() {
    absl::MutexLock lock(&mu_);
    return calls_;
  }

  grpc::ServerGenericBidiReactor* CreateReactor(
      grpc::GenericCallbackServerContext* context) override {
    const auto& metadata = context->client_metadata();
    auto found = metadata.find("authorization");
    {
      absl::MutexLock lock(&mu_);
      calls_.emplace(context->method(), found == metadata.end()
                                            ? std::string("-")
                                            : std::string(found->second.data(),
                                                          found->second.size()));
    }
    class Refuse : public grpc::ServerGenericBidiReactor {
     public:
      Refuse() { Finish(grpc::Status(grpc::StatusCode::UNIMPLEMENTED, "recorded")); }
      void OnDone() override { delete this; }
    };
    return new Refuse;
  }

 private:
  int port_ = 0;
  std::unique_ptr<grpc::Server> server_;
  absl::Mutex mu_;
  std::multimap<std::string, std::string> calls_ ABSL_GUARDED_BY(mu_);
};

TEST(ClientTokenTest, EveryCallButHealthCarriesTheToken) {
  RecordingServer recorder;
  const std::string dir = TempDir("ssm-client-token");
  ClientOptions o;
  o.address = recorder.address();
  o.deadline = absl::Seconds(10);
  o.token_file = dir + "/token";
  WriteText(o.token_file, "from-a-file\n");
  Client client(o);
  ASSERT_OK(client.status());
  EXPECT_CODE(client.ListModels(), kUnimplemented);
  EXPECT_CODE(client.ExportState("s"), kUnimplemented);
  EXPECT_CODE(client.BuildHippo(SmallHippo()), kUnimplemented);
  EXPECT_CODE(client.OpenStream({.model = "m"}), kUnimplemented);
  EXPECT_CODE(client.Health(), kUnimplemented);
  // A stream whose open is retried by its resume policy carries it every time.
  client::StreamOptions resume{.model = "m"};
  resume.resume.enabled = true;
  resume.resume_from = v1::StateSnapshot();
  EXPECT_CODE(client.OpenStream(resume), kUnimplemented);
  // bench asks for the model first (its streams' contexts, made by hand,
  // are shown to carry the token by the CLI tests against the real server).
  client::BenchOptions bench;
  bench.concurrency = 1;
  absl::StatusOr<client::BenchReport> report = client::RunBench(client, bench);
  EXPECT_CODE(report, kUnimplemented);  // its GetModel

  const std::multimap<std::string, std::string> calls = recorder.calls();
  const std::multimap<std::string, std::string> want = {
      {"/ssm.v1.Inference/ListModels", "Bearer from-a-file"},
      {"/ssm.v1.Inference/ExportState", "Bearer from-a-file"},
      {"/ssm.v1.Math/BuildHippo", "Bearer from-a-file"},
      {"/ssm.v1.Inference/StreamInfer", "Bearer from-a-file"},
      {"/ssm.v1.Inference/StreamInfer", "Bearer from-a-file"},
      {"/grpc.health.v1.Health/Check", "-"},
      {"/ssm.v1.Inference/GetModel", "Bearer from-a-file"},
  };
  EXPECT_EQ(calls, want);

  grpc::ClientContext context;
  client.AuthorizeContext(&context);
  auto stub = v1::Inference::NewStub(client.channel());
  v1::ListModelsResponse response;
  stub->ListModels(&context, v1::ListModelsRequest(), &response);
  const std::multimap<std::string, std::string> after = recorder.calls();
  EXPECT_EQ(after.count("/ssm.v1.Inference/ListModels"), 2u);
  auto range = after.equal_range("/ssm.v1.Inference/ListModels");
  for (auto it = range.first; it != range.second; ++it) {
    EXPECT_EQ(it->second, "Bearer from-a-file");
  }
}

// A resumable stream over TLS with a token moves to a restarted server:
// the reopen carries the token, and the signed snapshot it resumes from
// verifies under the same key.
TEST(ClientSecurityResumeTest, ResumeCarriesTheTokenAndTheSignature) {
  const std::string dir = MakeSecureFiles();
  absl::StatusOr<int> health = PickFreePort();
  ASSERT_OK(health);
  absl::StatusOr<std::unique_ptr<ServerProcess>> server =
      ServerProcess::Start(SecureFlags(dir, *health), 0, absl::Seconds(30), *health);
  ASSERT_OK(server);
  const int port = (*server)->port();
  ClientOptions o;
  o.address = (*server)->address();
  o.ca_file = PkiPath("ca.pem");
  o.token = kAliceToken;
  o.reconnect_backoff = absl::Milliseconds(50);
  o.max_reconnect_backoff = absl::Milliseconds(200);
  Client client(o);
  const Tensor input = MakeSequence(1, 120, 1, 17);
  absl::StatusOr<client::InferResult> whole = client.Infer("legt-delay", input);
  ASSERT_OK(whole);

  client::StreamOptions open{.model = "legt-delay"};
  open.resume.enabled = true;
  open.resume.checkpoint_steps = 25;
  open.resume.connect_timeout = absl::Seconds(4);
  open.resume.max_attempts = 6;
  absl::StatusOr<std::unique_ptr<client::Stream>> stream = client.OpenStream(open);
  ASSERT_OK(stream);
  absl::StatusOr<Tensor> head = StreamInChunks(**stream, SliceSteps(input, 0, 60), {6});
  ASSERT_OK(head);
  (*server)->Signal(SIGKILL);
  ASSERT_OK((*server)->WaitExit(absl::Seconds(10)));
  server->reset();

  absl::StatusOr<Tensor> tail;
  std::thread feeder([&] { tail = StreamInChunks(**stream, SliceSteps(input, 60, 120), {6}); });
  absl::SleepFor(absl::Milliseconds(500));
  server = ServerProcess::Start(SecureFlags(dir, *health), port, absl::Seconds(30), *health);
  feeder.join();
  ASSERT_OK(server);
  ASSERT_OK(tail);
  AppendSteps(&*head, *tail);
  EXPECT_LE(MaxRelativeDiff(*head, whole->output), kWireTolerance);
  EXPECT_OK((*stream)->Close());
  // It did move: the new server took the signed snapshot.
  EXPECT_THAT((*server)->Log(), HasSubstr("opened from a snapshot"));
}

// ---------------------------------------------------------------------------
// The CLI.

struct CliResult {
  int exit_code = -1;
  std::string out, err;
};

// Runs ssm_client with `args` (bounded by coreutils' timeout), stdout and
// stderr apart, with `env` (e.g. "SSM_TOKEN=...") in front and SSM_TOKEN
// otherwise unset.
CliResult RunCli(const std::string& args, const std::string& env = "") {
  static int n = 0;
  const std::string err_file = absl::StrCat(Pki(), "/cli-", getpid(), "-", ++n, ".err");
  const std::string command = absl::StrCat("env -u SSM_TOKEN ", env, " timeout 60 ",
                                           SSM_CLIENT_PATH, " ", args, " 2>", err_file);
  CliResult result;
  FILE* pipe = popen(command.c_str(), "r");
  if (pipe == nullptr) return result;
  char buffer[4096];
  size_t got;
  while ((got = fread(buffer, 1, sizeof(buffer), pipe)) > 0) result.out.append(buffer, got);
  const int status = pclose(pipe);
  result.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  result.err = ReadText(err_file);
  std::remove(err_file.c_str());
  return result;
}

class CliSecurityTest : public ClientSecurityTest {
 protected:
  // --address and --ca of the suite's server.
  static std::string Tls() {
    return absl::StrCat("--address=", server_->address(), " --ca=", PkiPath("ca.pem"));
  }
  static std::string Path(const std::string& name) {
    return absl::StrCat(*dir_, "/", name);
  }
};

// Every subcommand that talks to the server, over TLS with the token from
// --token_file, --token or SSM_TOKEN, or a client certificate.
TEST_F(CliSecurityTest, EverySubcommandWorksWithTlsAndATokenOrACertificate) {
  WriteText(Path("token"), absl::StrCat(kAliceToken, "\n"));
  const std::string as_alice = Tls() + " --token_file=" + Path("token");
  const std::string mtls = Tls() + " --cert=" + PkiPath("client.pem") +
                           " --key=" + PkiPath("client.key");
  const std::string env = absl::StrCat("SSM_TOKEN=", kAliceToken);
  auto ok = [](const CliResult& r) {
    return ::testing::AssertionResult(r.exit_code == 0) << r.out << r.err;
  };

  CliResult models = RunCli(as_alice + " models");
  EXPECT_TRUE(ok(models));
  EXPECT_THAT(models.out, HasSubstr("s4-demo"));
  EXPECT_TRUE(ok(RunCli(mtls + " models")));  // svc-a, by its certificate
  EXPECT_TRUE(ok(RunCli(Tls() + " model legt-delay", env)));
  EXPECT_TRUE(ok(RunCli(absl::StrCat(Tls(), " --token=", kAliceToken, " model s4-demo"))));

  const Tensor input = MakeSequence(1, 30, 1, 5);
  const std::string in = Path("in.npy"), out = Path("out.npy"), out2 = Path("out2.npy");
  const std::string state = Path("state.bin");
  ASSERT_OK(client::WriteSequence(in, input));
  EXPECT_TRUE(ok(RunCli(as_alice + " infer --model=s4-demo --input=" + in + " --output=" + out +
                        " --save_state=" + state)));
  // The state file keeps the signature, so a signing server takes it back.
  absl::StatusOr<std::string> bytes = client::ReadFileBytes(state);
  ASSERT_OK(bytes);
  EXPECT_EQ(client::ParseStateFile(*bytes).signature().size(), 32u);
  EXPECT_TRUE(ok(RunCli(Tls() + " stream --model=s4-demo --chunk=4 --input=" + in +
                        " --resume_state=" + state + " --output=" + out2 +
                        " --save_state=" + state, env)));
  EXPECT_TRUE(ok(RunCli(mtls + " stream --model=legt-delay --chunk=3 --input=" + in +
                        " --output=" + out2)));
  CliResult detached = RunCli(as_alice + " stream --model=legt-delay --input=" + in +
                              " --output=" + out2 + " --detach");
  EXPECT_TRUE(ok(detached));
  const size_t at = detached.err.find("# detached session ");
  ASSERT_NE(at, std::string::npos) << detached.err;
  const std::string id = detached.err.substr(at + 19, 32);
  EXPECT_TRUE(ok(RunCli(as_alice + " stream --model=legt-delay --input=" + in + " --output=" +
                        out2 + " --session_id=" + id)));

  EXPECT_TRUE(ok(RunCli(as_alice + " hippo --n=3")));
  EXPECT_TRUE(ok(RunCli(as_alice + " kernel --init=s4d-lin --n=4 --length=8 --out=" +
                        Path("k.npy"))));
  EXPECT_TRUE(ok(RunCli(Tls() + " health")));
  CliResult health = RunCli(absl::StrCat("--address=", HealthAddress(), " health"), env);
  EXPECT_TRUE(ok(health));
  EXPECT_EQ(health.out, "SERVING\n");

  for (const char* mode : {"--mode=stream --concurrency=3 --steps=50 --inflight=2",
                           "--mode=unary --concurrency=2 --calls=4 --length=64",
                           "--mode=idle --concurrency=3 --hold_seconds=0.1"}) {
    CliResult bench = RunCli(absl::StrCat(as_alice, " bench --json ", mode));
    ASSERT_TRUE(ok(bench)) << mode;
    const nlohmann::json report = nlohmann::json::parse(bench.out, nullptr, false);
    ASSERT_TRUE(report.is_object()) << bench.out;
    EXPECT_EQ(report["errors"], 0) << bench.out;
    EXPECT_GT(report["completed"], 0) << bench.out;
  }
  for (const std::string& f : {in, out, out2, state, Path("k.npy")}) std::remove(f.c_str());
}

// A missing or wrong token: the server's code on stderr, exit 1, nothing
// on stdout, and the token nowhere.
TEST_F(CliSecurityTest, MissingOrWrongTokensFailWithTheServersCode) {
  const std::string in = Path("in-refused.csv");
  ASSERT_OK(client::WriteSequence(in, MakeSequence(1, 5, 1)));
  const std::vector<std::string> commands = {
      "models", "model s4-demo", "infer --model=legt-delay --input=" + in,
      "stream --model=legt-delay --input=" + in, "hippo --n=3",
      "kernel --init=s4d-lin --n=4 --length=8", "bench --mode=stream --steps=10"};
  const std::string wrong = "wrong-s3cret-guess";
  for (const std::string& command : commands) {
    SCOPED_TRACE(command);
    for (const std::string& env : {std::string(), absl::StrCat("SSM_TOKEN=", wrong)}) {
      const CliResult r = RunCli(Tls() + " " + command, env);
      EXPECT_EQ(r.exit_code, 1) << r.err;
      EXPECT_THAT(r.err, HasSubstr("error: UNAUTHENTICATED: ")) << env;
      EXPECT_EQ(r.out.find("s4-demo"), std::string::npos) << r.out;
      EXPECT_THAT(r.err + r.out, Not(HasSubstr(wrong)));
    }
  }
  // A caller without the scope: PERMISSION_DENIED naming it.
  const CliResult denied = RunCli(absl::StrCat(Tls(), " --token=", kBobToken,
                                               " infer --model=s4-demo --input=", in));
  EXPECT_EQ(denied.exit_code, 1);
  EXPECT_THAT(denied.err, HasSubstr("error: PERMISSION_DENIED: "));
  EXPECT_THAT(denied.err, HasSubstr("run:s4-demo"));
  EXPECT_THAT(denied.err, Not(HasSubstr(kBobToken)));
  std::remove(in.c_str());
}

// Files that cannot be used are named; no connection is tried.
TEST_F(CliSecurityTest, UnusableFilesAreNamed) {
  const std::string missing = Path("no-such-ca.pem");
  CliResult r = RunCli(absl::StrCat("--address=", server_->address(), " --ca=", missing,
                                    " models"));
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_THAT(r.err, HasSubstr("error: NOT_FOUND: ca_file " + missing));
  r = RunCli(Tls() + " --cert=" + PkiPath("client.pem") + " models");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_THAT(r.err, HasSubstr("INVALID_ARGUMENT"));
  r = RunCli(Tls() + " --token_file=" + Path("no-such-token") + " models");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_THAT(r.err, HasSubstr("error: NOT_FOUND: token_file " + Path("no-such-token")));
  // Trusting another CA: the handshake fails.
  r = RunCli(absl::StrCat("--address=", server_->address(), " --ca=", PkiPath("other-ca.pem"),
                          " --deadline=5s health"));
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_THAT(r.err, HasSubstr("error: UNAVAILABLE: "));
}

}  // namespace
}  // namespace ssm::e2e
