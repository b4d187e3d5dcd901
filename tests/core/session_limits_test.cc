// What a session refuses so that no input, forged snapshot or overflow can
// leave it half-advanced or unusable (session.h): positions past 2^53,
// snapshot states beyond float32's range, and outputs beyond the output
// limit, each refused with the session exactly as it was.

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "ssm/model.h"
#include "ssm/model_spec.h"
#include "ssm/session.h"

namespace ssm {
namespace {

using ::testing::HasSubstr;

// A LegT memory: its outputs are its state's coefficients, so a large
// state or input shows directly in the outputs.
std::shared_ptr<const Model> Memory() {
  ModelSpec spec;
  spec.name = "mem";
  spec.d_input = 1;
  spec.d_output = 4;
  spec.max_length = 4096;
  HippoMemorySpec hippo;
  hippo.measure = HippoMemorySpec::Measure::kLegT;
  hippo.n = 4;
  hippo.window = 8;
  hippo.output = HippoMemorySpec::Output::kCoefficients;
  spec.architecture = hippo;
  return *LoadModel(spec, nullptr);
}

// Snapshot fields (session.h): magic 8, version 4, batch 4, fingerprint 8,
// name length 4, name, position 8, count 8, doubles, CRC 4.
constexpr size_t kNameAt = 8 + 4 + 4 + 8 + 4;

size_t PositionAt(const std::string& snapshot) {
  uint32_t name_len = 0;
  std::memcpy(&name_len, snapshot.data() + kNameAt - 4, 4);
  return kNameAt + name_len;
}

// The snapshot with its position and first state value replaced, and its
// CRC made right again: what a forger with the format in hand produces.
std::string Forge(std::string snapshot, int64_t position, double first_value) {
  const size_t at = PositionAt(snapshot);
  std::memcpy(&snapshot[at], &position, 8);
  std::memcpy(&snapshot[at + 16], &first_value, 8);
  const uint32_t crc = Crc32c(std::string_view(snapshot).substr(0, snapshot.size() - 4));
  std::memcpy(&snapshot[snapshot.size() - 4], &crc, 4);
  return snapshot;
}

class SessionLimitsTest : public ::testing::Test {
 protected:
  SessionLimitsTest() : model_(Memory()), session_(*Session::Create(model_, 1)) {
    std::vector<double> x = {0.5, -0.25, 1.0};
    std::vector<double> y(3 * 4);
    EXPECT_TRUE(session_.Run(x, 3, absl::MakeSpan(y)).ok());
    snapshot_ = session_.ExportState();
  }

  std::shared_ptr<const Model> model_;
  Session session_;
  std::string snapshot_;
};

TEST_F(SessionLimitsTest, TheForgerReproducesAValidSnapshot) {
  // Forge with the snapshot's own values: it imports, so the refusals below
  // are for the values, not for a broken forgery.
  double first = 0;
  std::memcpy(&first, snapshot_.data() + PositionAt(snapshot_) + 16, 8);
  const std::string same = Forge(snapshot_, 3, first);
  EXPECT_EQ(same, snapshot_);
  EXPECT_TRUE(Session::Import(model_, same).ok());
}

TEST_F(SessionLimitsTest, APositionPast2To53IsRefusedAtImport) {
  for (int64_t position : {Session::kMaxPosition + 1, int64_t{0x7ffffffffffffff0}}) {
    absl::StatusOr<Session> s = Session::Import(model_, Forge(snapshot_, position, 0.5));
    EXPECT_EQ(s.status().code(), absl::StatusCode::kInvalidArgument) << position;
    EXPECT_THAT(s.status().message(), HasSubstr("2^53"));
  }
}

TEST_F(SessionLimitsTest, AStreamCannotRunPast2To53AndStaysUsable) {
  absl::StatusOr<Session> s =
      Session::Import(model_, Forge(snapshot_, Session::kMaxPosition - 2, 0.5));
  ASSERT_TRUE(s.ok()) << s.status();
  const std::string before = s->ExportState();
  std::vector<double> x(3, 0.1), y(3 * 4);
  EXPECT_EQ(s->Run(x, 3, absl::MakeSpan(y)).code(), absl::StatusCode::kOutOfRange);
  EXPECT_EQ(s->ExportState(), before);
  // Two steps still fit, and the session can still be exported.
  x.resize(2);
  y.resize(2 * 4);
  EXPECT_TRUE(s->Run(x, 2, absl::MakeSpan(y)).ok());
  EXPECT_EQ(s->position(), Session::kMaxPosition);
  EXPECT_TRUE(Session::Import(model_, s->ExportState()).ok());
}

TEST_F(SessionLimitsTest, AStateBeyondFloat32IsRefusedAtImport) {
  for (double value : {1e300, -1e39, 3.5e38}) {
    absl::StatusOr<Session> s = Session::Import(model_, Forge(snapshot_, 3, value));
    EXPECT_EQ(s.status().code(), absl::StatusCode::kInvalidArgument) << value;
    EXPECT_THAT(s.status().message(), HasSubstr("float32's range"));
  }
  // Large but within it: accepted.
  EXPECT_TRUE(Session::Import(model_, Forge(snapshot_, 3, 1e30)).ok());
}

// Every chunking: one step (run in place), several, and a wide chunk run
// in slices of time.
TEST_F(SessionLimitsTest, AnOutputBeyondTheLimitFailsAndChangesNothing) {
  for (int steps : {1, 7, 200}) {
    SCOPED_TRACE(steps);
    const int batch = steps == 200 ? 200 : 1;  // 200 x 200 rows: > kMaxRowsPerPass
    Session s = *Session::Create(model_, batch);
    std::vector<double> x(static_cast<size_t>(batch) * steps, 0.25);
    std::vector<double> y(x.size() * 4);
    ASSERT_TRUE(s.Run(x, steps, absl::MakeSpan(y)).ok());
    s.set_output_limit(10.0);
    const std::string before = s.ExportState();
    // The last step of the last stream takes a large input.
    x.back() = 1e6;
    const absl::Status status = s.Run(x, steps, absl::MakeSpan(y));
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(status.message(), HasSubstr("beyond the output limit"));
    EXPECT_THAT(status.message(), HasSubstr("the session is unchanged"));
    EXPECT_EQ(s.ExportState(), before);
    // It goes on from there exactly as a session that never saw the chunk.
    x.back() = 0.25;
    Session twin = *Session::Import(model_, before);
    std::vector<double> y_twin(y.size());
    ASSERT_TRUE(s.Run(x, steps, absl::MakeSpan(y)).ok());
    ASSERT_TRUE(twin.Run(x, steps, absl::MakeSpan(y_twin)).ok());
    EXPECT_EQ(y, y_twin);
    EXPECT_EQ(s.ExportState(), twin.ExportState());
  }
}

TEST_F(SessionLimitsTest, ByDefaultAnyFiniteOutputPasses) {
  Session s = *Session::Create(model_, 1);
  EXPECT_EQ(s.output_limit(), std::numeric_limits<double>::infinity());
  std::vector<double> x = {1e300}, y(4);
  EXPECT_TRUE(s.Run(x, 1, absl::MakeSpan(y)).ok());
  // (Non-finite outputs fail the same comparison as outputs past a limit:
  // !(|y| <= limit) holds for NaN and Inf whatever the limit.)
}

}  // namespace
}  // namespace ssm
