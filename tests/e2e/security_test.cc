// Security against the real binary (issue 11): TLS and mTLS with
// certificates made by the openssl command at test time, rotation while a
// stream runs, the plaintext health-only port, bearer tokens and scopes
// with their exact codes, sessions owned by their caller, signed
// snapshots, and per-caller quotas.
#include <gmock/gmock.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/security/credentials.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "client/ssm_client.h"
#include "gtest/gtest.h"
#include "ssm/v1/ssm_service.grpc.pb.h"
#include "tests/e2e/e2e_util.h"

namespace ssm::e2e {
namespace {

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
  const std::string next = path + ".next";
  std::ofstream(next) << text;
  std::rename(next.c_str(), path.c_str());
}

std::string Sha256Hex(const std::string& text) {
  // The callers file stores only hashes: make them the way a user would.
  const std::string file = absl::StrCat(::testing::TempDir(), "/token-", getpid());
  WriteText(file, text);
  FILE* pipe = popen(absl::StrCat("sha256sum < ", file).c_str(), "r");
  char hex[65] = {0};
  EXPECT_EQ(std::fread(hex, 1, 64, pipe), 64u);
  pclose(pipe);
  std::remove(file.c_str());
  return hex;
}

// The test PKI (make_test_pki.sh) in a fresh folder, made once per binary.
const std::string& Pki() {
  static const std::string* dir = [] {
    char tmpl[] = "/tmp/ssm-pki-XXXXXX";
    auto* d = new std::string(mkdtemp(tmpl));
    const int rc = std::system(absl::StrCat(SSM_TEST_PKI_SCRIPT, " ", *d, " >/dev/null").c_str());
    EXPECT_EQ(rc, 0) << "make_test_pki.sh failed";
    return d;
  }();
  return *dir;
}
std::string Pem(const std::string& name) { return ReadText(absl::StrCat(Pki(), "/", name)); }
std::string PkiPath(const std::string& name) { return absl::StrCat(Pki(), "/", name); }

// A channel to `address` over TLS trusting `ca`, with a client
// certificate when `client` names one ("client" -> client.pem/.key).
std::shared_ptr<grpc::Channel> TlsChannel(const std::string& address, const std::string& ca,
                                          const std::string& client = "") {
  grpc::SslCredentialsOptions options;
  options.pem_root_certs = Pem(ca + ".pem");
  if (!client.empty()) {
    options.pem_cert_chain = Pem(client + ".pem");
    options.pem_private_key = Pem(client + ".key");
  }
  grpc::ChannelArguments args;
  // A new subchannel per channel: each test's channel gets its own
  // handshake (rotation must be seen by a new connection).
  args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
  return grpc::CreateCustomChannel(address, grpc::SslCredentials(options), args);
}

std::shared_ptr<grpc::Channel> PlainChannel(const std::string& address) {
  grpc::ChannelArguments args;
  args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
  return grpc::CreateCustomChannel(address, grpc::InsecureChannelCredentials(), args);
}

// A context with a deadline and, when given, the bearer token.
std::unique_ptr<grpc::ClientContext> Context(const std::string& token = "") {
  auto context = std::make_unique<grpc::ClientContext>();
  context->set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
  if (!token.empty()) context->AddMetadata("authorization", "Bearer " + token);
  return context;
}

grpc::Status ListModels(grpc::Channel& channel, const std::string& token = "") {
  auto stub = v1::Inference::NewStub(std::shared_ptr<grpc::Channel>(&channel, [](auto*) {}));
  v1::ListModelsResponse response;
  return stub->ListModels(Context(token).get(), v1::ListModelsRequest(), &response);
}

v1::InferRequest SmallInfer(const std::string& model) {
  v1::InferRequest request;
  request.set_model(model);
  for (int64_t d : {1, 4, 1}) request.mutable_input()->add_shape(d);
  for (int i = 0; i < 4; ++i) request.mutable_input()->add_values(0.5f * i);
  return request;
}

grpc::Status Infer(v1::Inference::Stub& stub, const std::string& model,
                   const std::string& token = "") {
  v1::InferResponse response;
  return stub.Infer(Context(token).get(), SmallInfer(model), &response);
}

// The server's TLS files live in a folder of their own, so a test can
// rotate them.
struct ServerFiles {
  std::string dir;
  std::string cert, key;
  ServerFiles() {
    char tmpl[] = "/tmp/ssm-tls-XXXXXX";
    dir = mkdtemp(tmpl);
    cert = dir + "/server.pem";
    key = dir + "/server.key";
    WriteText(cert, Pem("server.pem"));
    WriteText(key, Pem("server.key"));
  }
};

TEST(SecurityTest, TlsServesOnlyTrustingClientsAndHealthStaysPlaintext) {
  ServerFiles files;
  absl::StatusOr<int> health_port = PickFreePort();
  ASSERT_OK(health_port);
  absl::StatusOr<std::unique_ptr<ServerProcess>> server =
      ServerProcess::Start({"--tls_cert=" + files.cert, "--tls_key=" + files.key,
                            absl::StrCat("--health_address=127.0.0.1:", *health_port)},
                           0, absl::Seconds(30), /*health_port=*/*health_port);
  ASSERT_OK(server);
  const std::string address = (*server)->address();
  EXPECT_THAT((*server)->Log(), HasSubstr("(gRPC, TLS)"));

  EXPECT_TRUE(ListModels(*TlsChannel(address, "ca")).ok());
  // A client that trusts another CA, and a plaintext client, get nothing.
  EXPECT_EQ(ListModels(*TlsChannel(address, "other-ca")).error_code(),
            grpc::StatusCode::UNAVAILABLE);
  EXPECT_EQ(ListModels(*PlainChannel(address)).error_code(), grpc::StatusCode::UNAVAILABLE);

  // The health port: plaintext, health only.
  client::ClientOptions options;
  options.address = absl::StrCat("127.0.0.1:", *health_port);
  client::Client health(options);
  absl::StatusOr<client::Client::ServingStatus> serving = health.Health();
  ASSERT_OK(serving);
  EXPECT_EQ(*serving, client::Client::ServingStatus::kServing);
  const grpc::Status other = ListModels(*PlainChannel(options.address));
  EXPECT_EQ(other.error_code(), grpc::StatusCode::UNIMPLEMENTED);
  EXPECT_THAT(other.error_message(), HasSubstr("grpc.health.v1.Health only"));
}

TEST(SecurityTest, PlaintextOnANonLoopbackAddressWarns) {
  absl::StatusOr<int> port = PickFreePort();
  ASSERT_OK(port);
  absl::StatusOr<std::unique_ptr<ServerProcess>> server =
      ServerProcess::Start({absl::StrCat("--address=0.0.0.0:", *port)}, *port);
  ASSERT_OK(server);
  EXPECT_THAT((*server)->Log(), HasSubstr("WARNING: plaintext gRPC on 0.0.0.0:"));
}

TEST(SecurityTest, MutualTlsRefusesWhatItCannotVerify) {
  ServerFiles files;
  absl::StatusOr<int> health_port = PickFreePort();
  ASSERT_OK(health_port);
  absl::StatusOr<std::unique_ptr<ServerProcess>> server = ServerProcess::Start(
      {"--tls_cert=" + files.cert, "--tls_key=" + files.key, "--tls_client_ca=" + PkiPath("ca.pem"),
       "--tls_client_auth=require", absl::StrCat("--health_address=127.0.0.1:", *health_port)},
      0, absl::Seconds(30), *health_port);
  ASSERT_OK(server);
  const std::string address = (*server)->address();
  EXPECT_TRUE(ListModels(*TlsChannel(address, "ca", "client")).ok());
  for (const char* refused : {"", "expired", "stranger"}) {
    SCOPED_TRACE(refused);
    EXPECT_EQ(ListModels(*TlsChannel(address, "ca", refused)).error_code(),
              grpc::StatusCode::UNAVAILABLE);
  }
}

// With mTLS, a client certificate's identity (its SAN) can be the caller:
// no token needed, its scopes apply; a verified certificate the callers
// file does not know is UNAUTHENTICATED.
TEST(SecurityTest, AClientCertificateCanBeTheCaller) {
  ServerFiles files;
  const std::string callers = files.dir + "/callers.json";
  WriteText(callers, R"({"callers": [
      {"principal": "svc-a", "cert_san": ["client-a.test"], "scopes": ["run:legt-*"]}]})");
  absl::StatusOr<int> health_port = PickFreePort();
  ASSERT_OK(health_port);
  absl::StatusOr<std::unique_ptr<ServerProcess>> server = ServerProcess::Start(
      {"--tls_cert=" + files.cert, "--tls_key=" + files.key, "--tls_client_ca=" + PkiPath("ca.pem"),
       "--tls_client_auth=require", "--auth_callers=" + callers,
       absl::StrCat("--health_address=127.0.0.1:", *health_port)},
      0, absl::Seconds(30), *health_port);
  ASSERT_OK(server);
  auto as_a = v1::Inference::NewStub(TlsChannel((*server)->address(), "ca", "client"));
  EXPECT_TRUE(Infer(*as_a, "legt-delay").ok());
  const grpc::Status denied = Infer(*as_a, "s4-demo");
  EXPECT_EQ(denied.error_code(), grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_THAT(denied.error_message(), HasSubstr("'svc-a'"));
  auto as_b = v1::Inference::NewStub(TlsChannel((*server)->address(), "ca", "client-b"));
  const grpc::Status unknown = Infer(*as_b, "legt-delay");
  EXPECT_EQ(unknown.error_code(), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_THAT(unknown.error_message(), HasSubstr("client-b.test"));
}

// The server's certificate is replaced (by one of another CA) while a
// stream runs: a new connection sees the new one, and the stream, on its
// old connection, keeps going.
TEST(SecurityTest, CertificatesRotateWithoutARestart) {
  ServerFiles files;
  absl::StatusOr<int> health_port = PickFreePort();
  ASSERT_OK(health_port);
  absl::StatusOr<std::unique_ptr<ServerProcess>> server = ServerProcess::Start(
      {"--tls_cert=" + files.cert, "--tls_key=" + files.key, "--tls_refresh=1s",
       absl::StrCat("--health_address=127.0.0.1:", *health_port)},
      0, absl::Seconds(30), *health_port);
  ASSERT_OK(server);
  const std::string address = (*server)->address();

  std::shared_ptr<grpc::Channel> old_channel = TlsChannel(address, "ca");
  auto stub = v1::Inference::NewStub(old_channel);
  auto context = Context();
  context->set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(60));
  auto stream = stub->StreamInfer(context.get());
  v1::StreamRequest open;
  open.mutable_open()->set_model("legt-delay");
  ASSERT_TRUE(stream->Write(open));
  v1::StreamResponse response;
  ASSERT_TRUE(stream->Read(&response));
  v1::StreamRequest chunk;
  for (int64_t d : {1, 1, 1}) chunk.mutable_chunk()->add_shape(d);
  chunk.mutable_chunk()->add_values(0.25f);
  ASSERT_TRUE(stream->Write(chunk) && stream->Read(&response));

  WriteText(files.key, Pem("server2.key"));
  WriteText(files.cert, Pem("server2.pem"));
  bool rotated = false;
  const absl::Time deadline = absl::Now() + absl::Seconds(20);
  while (!rotated && absl::Now() < deadline) {
    absl::SleepFor(absl::Milliseconds(200));
    rotated = ListModels(*TlsChannel(address, "other-ca")).ok();
  }
  EXPECT_TRUE(rotated) << "a new connection never saw the new certificate";
  EXPECT_EQ(ListModels(*TlsChannel(address, "ca")).error_code(), grpc::StatusCode::UNAVAILABLE);
  // The stream still runs on its connection.
  for (int i = 0; i < 5; ++i) {
    ASSERT_TRUE(stream->Write(chunk) && stream->Read(&response)) << i;
    EXPECT_EQ(response.position(), 2 + i);
  }
  stream->WritesDone();
  EXPECT_TRUE(stream->Finish().ok());
}

struct TestCaller {
  std::string principal, token, scopes;  // scopes: a JSON list
};

// The callers file for `callers`, storing their tokens' hashes.
std::string CallersFile(const std::vector<TestCaller>& callers) {
  std::string json = R"({"callers": [)";
  for (size_t i = 0; i < callers.size(); ++i) {
    absl::StrAppend(&json, i == 0 ? "" : ",", R"({"principal": ")", callers[i].principal,
                    R"(", "token_sha256": [")", Sha256Hex(callers[i].token), R"("], "scopes": )",
                    callers[i].scopes, "}");
  }
  return json + "]}";
}

// Dave and erin are the quota test's alone, so their counts start at 0.
std::vector<TestCaller> Callers() {
  return {{"alice", "alice-token", R"(["run:*", "list", "state"])"},
          {"bob", "bob-token", R"(["run:legt-*", "state"])"},
          {"dave", "dave-token", R"(["run:*"])"},
          {"erin", "erin-token", R"(["run:*"])"}};
}

// Callers with tokens and scopes, on a plaintext loopback server (tokens
// over plaintext only for the test: the server does not refuse them).
class TokensTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    char tmpl[] = "/tmp/ssm-auth-XXXXXX";
    dir_ = new std::string(mkdtemp(tmpl));
    callers_ = new std::string(*dir_ + "/callers.json");
    keys_ = new std::string(*dir_ + "/keys");
    WriteText(*callers_, CallersFile(Callers()));
    WriteText(*keys_, "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff\n");
    absl::StatusOr<std::unique_ptr<ServerProcess>> started =
        ServerProcess::Start({"--auth_callers=" + *callers_, "--snapshot_keys=" + *keys_,
                              "--auth_refresh=100ms", "--quota_calls=3", "--quota_sessions=4"});
    ASSERT_OK(started);
    server_ = started->release();
  }
  static void TearDownTestSuite() {
    delete server_;
    server_ = nullptr;
  }
  void SetUp() override {
    ASSERT_NE(server_, nullptr);
    channel_ = PlainChannel(server_->address());
    stub_ = v1::Inference::NewStub(channel_);
  }

  // Opens a legt-delay stream as `token`; the session id, or "" with the
  // status in *status.
  std::string OpenAs(const std::string& token, grpc::Status* status,
                     const v1::StreamOpen& open_fields = {}) {
    auto context = Context(token);
    auto stream = stub_->StreamInfer(context.get());
    v1::StreamRequest open;
    *open.mutable_open() = open_fields;
    if (open.open().model().empty()) open.mutable_open()->set_model("legt-delay");
    stream->Write(open);
    v1::StreamResponse response;
    const bool opened = stream->Read(&response);
    if (opened) {
      v1::StreamRequest chunk;
      for (int64_t d : {1, 3, 1}) chunk.mutable_chunk()->add_shape(d);
      for (int i = 0; i < 3; ++i) chunk.mutable_chunk()->add_values(0.5f);
      stream->Write(chunk);
      v1::StreamResponse out;
      stream->Read(&out);
      // Cancel: the session stays, detached, for its owner.
      context->TryCancel();
    }
    *status = stream->Finish();
    if (opened && status->error_code() == grpc::StatusCode::CANCELLED) *status = grpc::Status::OK;
    return opened ? response.opened().session_id() : "";
  }

  static std::string* dir_;
  static std::string* callers_;
  static std::string* keys_;
  static ServerProcess* server_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::Inference::Stub> stub_;
};
std::string* TokensTest::dir_ = nullptr;
std::string* TokensTest::callers_ = nullptr;
std::string* TokensTest::keys_ = nullptr;
ServerProcess* TokensTest::server_ = nullptr;

TEST_F(TokensTest, CodesForNoTokenUnknownTokenAndMissingScope) {
  const grpc::Status none = Infer(*stub_, "legt-delay");
  EXPECT_EQ(none.error_code(), grpc::StatusCode::UNAUTHENTICATED);
  const grpc::Status unknown = Infer(*stub_, "legt-delay", "guessed-token");
  EXPECT_EQ(unknown.error_code(), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_THAT(unknown.error_message(), Not(HasSubstr("guessed-token")));
  EXPECT_TRUE(Infer(*stub_, "legt-delay", "alice-token").ok());
  EXPECT_TRUE(Infer(*stub_, "legt-delay", "bob-token").ok());
  const grpc::Status denied = Infer(*stub_, "s4-demo", "bob-token");
  EXPECT_EQ(denied.error_code(), grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_THAT(denied.error_message(), HasSubstr("\"run:s4-demo\""));
  EXPECT_THAT(denied.error_message(), Not(HasSubstr("bob-token")));
  EXPECT_EQ(ListModels(*channel_, "bob-token").error_code(), grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_TRUE(ListModels(*channel_, "alice-token").ok());
  // Math needs its scope, which neither has.
  auto math = v1::Math::NewStub(channel_);
  v1::BuildHippoRequest hippo;
  hippo.set_measure(v1::HIPPO_MEASURE_LEGS);
  hippo.set_n(4);
  hippo.set_dt(0.1);
  v1::BuildHippoResponse hippo_response;
  const grpc::Status math_denied =
      math->BuildHippo(Context("alice-token").get(), hippo, &hippo_response);
  EXPECT_EQ(math_denied.error_code(), grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_THAT(math_denied.error_message(), HasSubstr("\"math\""));
  // A stream's open needs the run scope too.
  grpc::Status status;
  v1::StreamOpen s4;
  s4.set_model("s4-demo");
  EXPECT_EQ(OpenAs("bob-token", &status, s4), "");
  EXPECT_EQ(status.error_code(), grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_EQ(OpenAs("", &status), "");
  EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAUTHENTICATED);
  // Health stays open.
  client::ClientOptions options;
  options.address = server_->address();
  EXPECT_OK(client::Client(options).Health());
}

TEST_F(TokensTest, SessionsBelongToTheirCaller) {
  grpc::Status status;
  const std::string id = OpenAs("alice-token", &status);
  ASSERT_TRUE(status.ok()) << status.error_message();
  ASSERT_FALSE(id.empty());
  // Bob may neither export nor reattach it: NOT_FOUND, as for no session.
  v1::ExportStateRequest request;
  request.set_session_id(id);
  v1::ExportStateResponse exported;
  grpc::Status bob_export = stub_->ExportState(Context("bob-token").get(), request, &exported);
  EXPECT_EQ(bob_export.error_code(), grpc::StatusCode::NOT_FOUND);
  v1::ExportStateRequest nobody;
  nobody.set_session_id("00000000000000000000000000000000");
  grpc::Status no_session = stub_->ExportState(Context("bob-token").get(), nobody, &exported);
  EXPECT_EQ(no_session.error_code(), grpc::StatusCode::NOT_FOUND);
  v1::StreamOpen reattach;
  reattach.set_session_id(id);
  EXPECT_EQ(OpenAs("bob-token", &status, reattach), "");
  EXPECT_EQ(status.error_code(), grpc::StatusCode::NOT_FOUND);
  // Alice can.
  EXPECT_TRUE(stub_->ExportState(Context("alice-token").get(), request, &exported).ok());
  EXPECT_EQ(exported.state().position(), 3);
  EXPECT_EQ(exported.state().signature().size(), 32u);
}

TEST_F(TokensTest, SnapshotsAreSignedAndImportsMustBe) {
  grpc::Status status;
  const std::string id = OpenAs("alice-token", &status);
  ASSERT_FALSE(id.empty()) << status.error_message();
  v1::ExportStateRequest request;
  request.set_session_id(id);
  v1::ExportStateResponse exported;
  ASSERT_TRUE(stub_->ExportState(Context("alice-token").get(), request, &exported).ok());

  v1::ImportStateRequest import;
  *import.mutable_state() = exported.state();
  v1::ImportStateResponse imported;
  ASSERT_TRUE(stub_->ImportState(Context("alice-token").get(), import, &imported).ok());
  // The importer owns the copy: bob's import of the same snapshot is his.
  v1::ImportStateResponse bobs;
  ASSERT_TRUE(stub_->ImportState(Context("bob-token").get(), import, &bobs).ok());
  request.set_session_id(bobs.session_id());
  EXPECT_TRUE(stub_->ExportState(Context("bob-token").get(), request, &exported).ok());

  // Unsigned, or signed by someone else, or changed after signing: refused.
  import.mutable_state()->clear_signature();
  grpc::Status unsigned_import =
      stub_->ImportState(Context("alice-token").get(), import, &imported);
  EXPECT_EQ(unsigned_import.error_code(), grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_THAT(unsigned_import.error_message(), HasSubstr("state.signature is not set"));
  import.mutable_state()->set_signature(std::string(32, 'x'));
  EXPECT_EQ(stub_->ImportState(Context("alice-token").get(), import, &imported).error_code(),
            grpc::StatusCode::PERMISSION_DENIED);
  *import.mutable_state() = exported.state();
  std::string data = import.state().data();
  data[data.size() / 2] ^= 1;
  import.mutable_state()->set_data(data);
  EXPECT_EQ(stub_->ImportState(Context("alice-token").get(), import, &imported).error_code(),
            grpc::StatusCode::PERMISSION_DENIED);
  // A stream that resumes from a forged snapshot gets the same.
  v1::StreamOpen resume;
  *resume.mutable_resume_from() = import.state();
  EXPECT_EQ(OpenAs("alice-token", &status, resume), "");
  EXPECT_EQ(status.error_code(), grpc::StatusCode::PERMISSION_DENIED);
}

TEST_F(TokensTest, QuotasArePerCaller) {
  // Sessions: dave may hold 4; the fifth is refused, naming the quota.
  grpc::Status status;
  for (int i = 0; i < 4; ++i) {
    EXPECT_FALSE(OpenAs("dave-token", &status).empty()) << i << ": " << status.error_message();
  }
  EXPECT_EQ(OpenAs("dave-token", &status), "");
  EXPECT_EQ(status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_THAT(status.error_message(), HasSubstr("--quota_sessions=4"));

  // Calls in flight: three open streams of erin's, then a fourth call of
  // hers is refused; dave's calls go on.
  std::vector<std::unique_ptr<grpc::ClientContext>> contexts;
  std::vector<std::unique_ptr<grpc::ClientReaderWriter<v1::StreamRequest, v1::StreamResponse>>>
      streams;
  for (int i = 0; i < 3; ++i) {
    contexts.push_back(Context("erin-token"));
    streams.push_back(stub_->StreamInfer(contexts.back().get()));
    v1::StreamRequest open;
    open.mutable_open()->set_model("legt-delay");
    streams.back()->Write(open);
    v1::StreamResponse response;
    ASSERT_TRUE(streams.back()->Read(&response)) << i;
  }
  const grpc::Status fourth = Infer(*stub_, "legt-delay", "erin-token");
  EXPECT_EQ(fourth.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_THAT(fourth.error_message(), HasSubstr("--quota_calls=3"));
  EXPECT_TRUE(Infer(*stub_, "legt-delay", "dave-token").ok());
  for (auto& context : contexts) context->TryCancel();
  for (auto& stream : streams) stream->Finish();
  const absl::Time deadline = absl::Now() + absl::Seconds(10);
  while (!Infer(*stub_, "legt-delay", "erin-token").ok() && absl::Now() < deadline) {
    absl::SleepFor(absl::Milliseconds(50));
  }
  EXPECT_TRUE(Infer(*stub_, "legt-delay", "erin-token").ok());
}

TEST_F(TokensTest, TheCallersFileIsReReadWhenItChanges) {
  const std::string before = ReadText(*callers_);
  std::vector<TestCaller> callers = Callers();
  callers.push_back({"carol", "carol-token", R"(["list"])"});
  WriteText(*callers_, CallersFile(callers));
  const absl::Time deadline = absl::Now() + absl::Seconds(10);
  while (!ListModels(*channel_, "carol-token").ok() && absl::Now() < deadline) {
    absl::SleepFor(absl::Milliseconds(50));
  }
  EXPECT_TRUE(ListModels(*channel_, "carol-token").ok());
  WriteText(*callers_, before);
}

// One caller floods (Infer and session churn from 8 threads, held to its
// --quota_calls=3); another caller's lock-step stream keeps its p99 under
// a stated bound while it runs.
constexpr double kOtherCallersP99BoundMs = 50;

TEST_F(TokensTest, OneCallerFloodingDoesNotHurtAnother) {
  client::ClientOptions options;
  options.address = server_->address();
  auto context = Context("alice-token");
  context->set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(60));
  auto stream = stub_->StreamInfer(context.get());
  v1::StreamRequest open;
  open.mutable_open()->set_model("s4-demo");
  ASSERT_TRUE(stream->Write(open));
  v1::StreamResponse response;
  ASSERT_TRUE(stream->Read(&response));
  v1::StreamRequest chunk;
  for (int64_t d : {1, 1, 1}) chunk.mutable_chunk()->add_shape(d);
  chunk.mutable_chunk()->add_values(0.5f);
  auto lock_step = [&](int n) {
    std::vector<double> ms;
    for (int i = 0; i < n; ++i) {
      const absl::Time start = absl::Now();
      if (!stream->Write(chunk) || !stream->Read(&response)) break;
      ms.push_back(absl::ToDoubleMilliseconds(absl::Now() - start));
    }
    return ms;
  };
  lock_step(200);
  std::vector<double> quiet = lock_step(500);

  std::atomic<bool> stop{false};
  std::atomic<int64_t> refused{0}, served{0};
  std::vector<std::thread> flood;
  for (int t = 0; t < 8; ++t) {
    flood.emplace_back([&, t] {
      auto channel = PlainChannel(server_->address());
      auto stub = v1::Inference::NewStub(channel);
      v1::InferRequest big = SmallInfer("s4-demo");
      big.mutable_input()->clear_shape();
      big.mutable_input()->clear_values();
      for (int64_t d : {4, 2048, 1}) big.mutable_input()->add_shape(d);
      for (int i = 0; i < 4 * 2048; ++i) big.mutable_input()->add_values(0.1f);
      while (!stop.load()) {
        v1::InferResponse out;
        const grpc::Status s =
            t % 2 == 0 ? stub->Infer(Context("dave-token").get(), big, &out)
                       : stub->Infer(Context("dave-token").get(), SmallInfer("legt-delay"), &out);
        (s.ok() ? served : refused)++;
      }
    });
  }
  absl::SleepFor(absl::Milliseconds(300));
  std::vector<double> flooded = lock_step(1000);
  stop = true;
  for (std::thread& t : flood) t.join();
  stream->WritesDone();
  EXPECT_TRUE(stream->Finish().ok());
  const double quiet_p99 = Quantile(quiet, 0.99), flooded_p99 = Quantile(flooded, 0.99);
  std::printf(
      "alice's lock-step p99: quiet %.2f ms, while dave floods %.2f ms (dave: %lld "
      "served, %lld refused by his quota)\n",
      quiet_p99, flooded_p99, static_cast<long long>(served.load()),
      static_cast<long long>(refused.load()));
  EXPECT_EQ(flooded.size(), 1000u);
  EXPECT_GT(refused.load(), 0);
  EXPECT_GT(served.load(), 0);
  EXPECT_LE(flooded_p99, kOtherCallersP99BoundMs);
}

}  // namespace
}  // namespace ssm::e2e
