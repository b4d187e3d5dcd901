// Callers, scopes and quotas (callers.h, auth.h), the snapshot keys
// (snapshot_keys.h) and the files they come from (watched_file.h).

#include "server/auth.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <string>
#include <vector>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "server/callers.h"
#include "server/log.h"
#include "server/snapshot_keys.h"

namespace ssm::server {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

std::string HexSha256(const std::string& token) { return absl::BytesToHexString(Sha256(token)); }

// A file in a fresh temporary folder; rewritten by Write.
class TempFile {
 public:
  TempFile() {
    char dir[] = "/tmp/ssm-auth-XXXXXX";
    dir_ = mkdtemp(dir);
    path_ = dir_ + "/file";
  }
  ~TempFile() {
    std::remove(path_.c_str());
    rmdir(dir_.c_str());
  }
  // Writes a new file and renames it over the old one, as a Secret update
  // does, so a reader never sees half a file.
  void Write(const std::string& text) {
    const std::string next = path_ + ".next";
    std::ofstream(next) << text;
    std::rename(next.c_str(), path_.c_str());
  }
  const std::string& path() const { return path_; }

 private:
  std::string dir_, path_;
};

std::string CallersJson(const std::string& alice_token) {
  return absl::StrCat(R"({"callers": [
    {"principal": "alice", "token_sha256": [")",
                      HexSha256(alice_token), R"("], "scopes": ["run:s4-*", "list"]},
    {"principal": "svc-b", "cert_san": ["client-b.test"], "scopes": ["run:*", "state", "math"]}
  ]})");
}

class AuthTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() { SetLogEnabled(false); }
  static void TearDownTestSuite() { SetLogEnabled(true); }
};

TEST_F(AuthTest, ScopesAndGlobs) {
  absl::StatusOr<std::shared_ptr<const CallerTable>> table =
      CallerTable::Parse(CallersJson("tok-a"), "callers.json");
  ASSERT_TRUE(table.ok()) << table.status();
  const Caller* alice = (*table)->ByTokenHash(Sha256("tok-a"));
  ASSERT_NE(alice, nullptr);
  EXPECT_EQ(alice->principal, "alice");
  EXPECT_TRUE(alice->Has(Scope::kRun, "s4-demo"));
  EXPECT_FALSE(alice->Has(Scope::kRun, "legt-delay"));
  EXPECT_TRUE(alice->Has(Scope::kList));
  EXPECT_FALSE(alice->Has(Scope::kState));
  EXPECT_FALSE(alice->Has(Scope::kMath));
  EXPECT_EQ((*table)->ByTokenHash(Sha256("tok-b")), nullptr);
  const Caller* b = (*table)->ByCertificate({"x.test", "client-b.test"});
  ASSERT_NE(b, nullptr);
  EXPECT_EQ(b->principal, "svc-b");
  EXPECT_TRUE(b->Has(Scope::kRun, "anything"));
}

TEST_F(AuthTest, MistakesInTheFileAreErrorsNamingTheEntry) {
  const std::string hash = HexSha256("t");
  const struct {
    std::string json;
    const char* says;
  } kCases[] = {
      {"not json", "not valid JSON"},
      {R"({"callers": {}})", "\"callers\" list"},
      {R"({"callers": [], "extra": 1})", "unknown key \"extra\""},
      {R"({"callers": [{"token_sha256": [")" + hash + R"("]}]})", "callers[0]: \"principal\""},
      {R"({"callers": [{"principal": "a"}]})", "callers[0]: needs a \"token_sha256\""},
      {R"({"callers": [{"principal": "a", "token_sha256": ["abc"]}]})", "64 hex digits"},
      {R"({"callers": [{"principal": "a", "token_sha256": [")" + hash +
           R"("], "scopes": ["runn:*"]}]})",
       "unknown scope \"runn:*\""},
      {R"({"callers": [{"principal": "a", "token_sha256": [")" + hash +
           R"("], "scope": ["list"]}]})",
       "unknown key \"scope\""},
      {R"({"callers": [{"principal": "a", "cert_san": ["x"]}, {"principal": "a", "cert_san": ["y"]}]})",
       "callers[1]: principal \"a\" is listed twice"},
  };
  for (const auto& c : kCases) {
    absl::StatusOr<std::shared_ptr<const CallerTable>> table = CallerTable::Parse(c.json, "c.json");
    EXPECT_EQ(table.status().code(), absl::StatusCode::kInvalidArgument) << c.json;
    EXPECT_THAT(table.status().message(), HasSubstr(c.says)) << c.json;
    EXPECT_THAT(table.status().message(), HasSubstr("c.json: ")) << c.json;
  }
}

TEST_F(AuthTest, AuthenticateAndCheckCodes) {
  TempFile file;
  file.Write(CallersJson("secret-token-of-alice"));
  absl::StatusOr<std::unique_ptr<Authorizer>> auth =
      Authorizer::Create({.callers_path = file.path()});
  ASSERT_TRUE(auth.ok()) << auth.status();
  EXPECT_TRUE((*auth)->enabled());

  absl::StatusOr<CallerRef> alice = (*auth)->Authenticate("Bearer secret-token-of-alice", {});
  ASSERT_TRUE(alice.ok()) << alice.status();
  EXPECT_EQ((*alice)->principal, "alice");
  EXPECT_TRUE((*auth)->Authenticate("bearer   secret-token-of-alice ", {}).ok());

  // No credentials; an unknown token; a malformed header.
  EXPECT_EQ((*auth)->Authenticate("", {}).status().code(), absl::StatusCode::kUnauthenticated);
  const absl::Status unknown = (*auth)->Authenticate("Bearer guessed", {}).status();
  EXPECT_EQ(unknown.code(), absl::StatusCode::kUnauthenticated);
  EXPECT_THAT(unknown.message(), Not(HasSubstr("guessed")));
  EXPECT_EQ((*auth)->Authenticate("Basic abc", {}).status().code(),
            absl::StatusCode::kUnauthenticated);
  // A certificate the file knows; one it does not; a wrong token is not
  // excused by a good certificate.
  EXPECT_EQ((*(*auth)->Authenticate("", {"client-b.test"}))->principal, "svc-b");
  EXPECT_EQ((*auth)->Authenticate("", {"client-z.test"}).status().code(),
            absl::StatusCode::kUnauthenticated);
  EXPECT_EQ((*auth)->Authenticate("Bearer guessed", {"client-b.test"}).status().code(),
            absl::StatusCode::kUnauthenticated);

  EXPECT_TRUE((*auth)->Check(**alice, Scope::kRun, "s4-demo").ok());
  const absl::Status denied = (*auth)->Check(**alice, Scope::kRun, "legt-delay");
  EXPECT_EQ(denied.code(), absl::StatusCode::kPermissionDenied);
  EXPECT_THAT(denied.message(), HasSubstr("\"run:legt-delay\""));
  EXPECT_THAT((*auth)->Check(**alice, Scope::kMath).message(), HasSubstr("\"math\""));
  EXPECT_THAT((*auth)->Check(**alice, Scope::kState).message(), HasSubstr("\"state\""));
}

TEST_F(AuthTest, WithoutACallersFileEveryoneMayDoEverything) {
  absl::StatusOr<std::unique_ptr<Authorizer>> auth = Authorizer::Create({});
  ASSERT_TRUE(auth.ok());
  EXPECT_FALSE((*auth)->enabled());
  absl::StatusOr<CallerRef> anyone = (*auth)->Authenticate("", {});
  ASSERT_TRUE(anyone.ok());
  EXPECT_EQ((*anyone)->principal, "");
  for (Scope s : {Scope::kRun, Scope::kList, Scope::kState, Scope::kMath}) {
    EXPECT_TRUE((*auth)->Check(**anyone, s, "x").ok());
  }
  for (int i = 0; i < 100; ++i) EXPECT_TRUE((*auth)->EnterCall(**anyone).ok());
}

TEST_F(AuthTest, QuotaOfCallsInFlightIsPerPrincipal) {
  TempFile file;
  file.Write(CallersJson("tok"));
  absl::StatusOr<std::unique_ptr<Authorizer>> auth =
      Authorizer::Create({.callers_path = file.path(), .quota_calls = 2});
  ASSERT_TRUE(auth.ok());
  const CallerRef alice = *(*auth)->Authenticate("Bearer tok", {});
  const CallerRef b = *(*auth)->Authenticate("", {"client-b.test"});
  EXPECT_TRUE((*auth)->EnterCall(*alice).ok());
  EXPECT_TRUE((*auth)->EnterCall(*alice).ok());
  const absl::Status third = (*auth)->EnterCall(*alice);
  EXPECT_EQ(third.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(third.message(), HasSubstr("--quota_calls=2"));
  EXPECT_TRUE((*auth)->EnterCall(*b).ok());  // another principal's own quota
  (*auth)->LeaveCall(*alice);
  EXPECT_TRUE((*auth)->EnterCall(*alice).ok());
}

TEST_F(AuthTest, TheCallersFileIsReReadAndABadEditKeepsTheOld) {
  TempFile file;
  file.Write(CallersJson("first"));
  absl::StatusOr<std::unique_ptr<Authorizer>> auth =
      Authorizer::Create({.callers_path = file.path(), .refresh = absl::Milliseconds(20)});
  ASSERT_TRUE(auth.ok());
  const CallerRef held = *(*auth)->Authenticate("Bearer first", {});
  file.Write(CallersJson("second"));
  const absl::Time deadline = absl::Now() + absl::Seconds(10);
  while (!(*auth)->Authenticate("Bearer second", {}).ok() && absl::Now() < deadline) {
    absl::SleepFor(absl::Milliseconds(10));
  }
  EXPECT_TRUE((*auth)->Authenticate("Bearer second", {}).ok());
  EXPECT_FALSE((*auth)->Authenticate("Bearer first", {}).ok());
  EXPECT_EQ(held->principal, "alice");  // a running call keeps its caller
  file.Write("{ broken");
  absl::SleepFor(absl::Milliseconds(200));
  EXPECT_TRUE((*auth)->Authenticate("Bearer second", {}).ok());
}

TEST_F(AuthTest, AMissingOrBadCallersFileStopsTheStart) {
  EXPECT_EQ(Authorizer::Create({.callers_path = "/nonexistent/callers.json"}).status().code(),
            absl::StatusCode::kNotFound);
  TempFile file;
  file.Write("[]");
  const absl::Status bad = Authorizer::Create({.callers_path = file.path()}).status();
  EXPECT_EQ(bad.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(bad.message(), HasSubstr("--auth_callers"));
}

const char kKey1[] = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
const char kKey2[] = "ffeeddccbbaa99887766554433221100ffeeddccbbaa99887766554433221100";

TEST_F(AuthTest, SnapshotSignaturesVerifyWithAnyKeyAndTheFirstSigns) {
  TempFile file;
  file.Write(absl::StrCat("# keys\n", kKey1, "\n\n"));
  absl::StatusOr<std::unique_ptr<SnapshotSigner>> signer =
      SnapshotSigner::Create(file.path(), absl::Milliseconds(20));
  ASSERT_TRUE(signer.ok()) << signer.status();
  const std::string data = "SSMSNAP\0 some state";
  const std::string by_key1 = (*signer)->Sign(data);
  EXPECT_EQ(by_key1.size(), 32u);
  EXPECT_TRUE((*signer)->Verify(data, by_key1, "state.signature").ok());
  // Missing, changed data, changed signature.
  EXPECT_EQ((*signer)->Verify(data, "", "state.signature").code(),
            absl::StatusCode::kPermissionDenied);
  EXPECT_THAT((*signer)->Verify(data, "", "state.signature").message(),
              HasSubstr("state.signature is not set"));
  EXPECT_EQ((*signer)->Verify(data + "x", by_key1, "s").code(),
            absl::StatusCode::kPermissionDenied);
  std::string flipped = by_key1;
  flipped[5] ^= 1;
  EXPECT_EQ((*signer)->Verify(data, flipped, "s").code(), absl::StatusCode::kPermissionDenied);

  // Rotation: a new key first signs; the old one still verifies.
  file.Write(absl::StrCat(kKey2, "\n", kKey1, "\n"));
  const absl::Time deadline = absl::Now() + absl::Seconds(10);
  while ((*signer)->Sign(data) == by_key1 && absl::Now() < deadline) {
    absl::SleepFor(absl::Milliseconds(10));
  }
  const std::string by_key2 = (*signer)->Sign(data);
  EXPECT_NE(by_key2, by_key1);
  EXPECT_TRUE((*signer)->Verify(data, by_key1, "s").ok());
  EXPECT_TRUE((*signer)->Verify(data, by_key2, "s").ok());
}

TEST_F(AuthTest, BadKeysFilesAreRefused) {
  for (const char* text : {"", "# only a comment\n", "abcd\n",
                           "zz112233445566778899aabbccddeeff00112233445566778899aabbccddeeff\n"}) {
    absl::StatusOr<std::shared_ptr<const SnapshotKeys>> keys = SnapshotKeys::Parse(text, "k");
    EXPECT_EQ(keys.status().code(), absl::StatusCode::kInvalidArgument) << text;
  }
}

}  // namespace
}  // namespace ssm::server
