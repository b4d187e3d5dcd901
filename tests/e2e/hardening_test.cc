// What hostile and careless clients found (issue 17), against the real
// binary: forged snapshots that pass the CRC, outputs float32 cannot carry,
// and (below) floods that must not hurt other clients.
#include <gmock/gmock.h>

#include <cstring>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include "client/ssm_client.h"
#include "gtest/gtest.h"
#include "ssm/v1/ssm_service.pb.h"
#include "tests/e2e/e2e_util.h"

namespace ssm::e2e {
namespace {

using client::Tensor;
using ::testing::HasSubstr;

// The CRC-32C of session snapshots (Castagnoli, reflected), written out
// here so the test forges snapshots without the core library.
uint32_t Crc32c(const std::string& bytes) {
  uint32_t crc = 0xFFFFFFFFu;
  for (unsigned char b : bytes) {
    crc ^= b;
    for (int k = 0; k < 8; ++k) crc = (crc & 1) ? (crc >> 1) ^ 0x82F63B78u : crc >> 1;
  }
  return crc ^ 0xFFFFFFFFu;
}

// A snapshot with its position and first state value replaced and its CRC
// made right: what anyone with the documented format can produce
// (docs/DESIGN.md section 2.14).
std::string Forge(std::string bytes, int64_t position, double first_value) {
  uint32_t name_len = 0;
  std::memcpy(&name_len, bytes.data() + 24, 4);
  const size_t at = 28 + name_len;
  std::memcpy(&bytes[at], &position, 8);
  std::memcpy(&bytes[at + 16], &first_value, 8);
  const uint32_t crc = Crc32c(bytes.substr(0, bytes.size() - 4));
  std::memcpy(&bytes[bytes.size() - 4], &crc, 4);
  return bytes;
}

class HardeningTest : public ::testing::Test {
 protected:
  void SetUp() override { client_ = ClientFor(SharedServer()); }

  // A legs-memory session 10 steps in, exported.
  ssm::v1::StateSnapshot Exported() {
    absl::StatusOr<std::unique_ptr<client::Stream>> stream =
        client_->OpenStream({.model = "legs-memory"});
    EXPECT_TRUE(stream.ok()) << stream.status();
    EXPECT_TRUE(StreamInChunks(**stream, MakeSequence(1, 10, 1), {3, 7}).ok());
    absl::StatusOr<ssm::v1::StateSnapshot> state = client_->ExportState((*stream)->session_id());
    EXPECT_TRUE(state.ok()) << state.status();
    EXPECT_TRUE((*stream)->Close().ok());
    return *state;
  }

  std::unique_ptr<client::Client> client_;
};

TEST_F(HardeningTest, ForgedSnapshotsThatPassTheCrcAreRefused) {
  ssm::v1::StateSnapshot snapshot = Exported();
  // The forger itself is right: the snapshot's own values go through.
  ssm::v1::StateSnapshot same = snapshot;
  double first = 0;
  {
    uint32_t name_len = 0;
    std::memcpy(&name_len, snapshot.data().data() + 24, 4);
    std::memcpy(&first, snapshot.data().data() + 28 + name_len + 16, 8);
  }
  same.set_data(Forge(snapshot.data(), 10, first));
  EXPECT_EQ(same.data(), snapshot.data());
  EXPECT_OK(client_->ImportState(same, ""));

  struct Case {
    int64_t position;
    double value;
    const char* says;
  } kCases[] = {
      {int64_t{1} << 62, first, "2^53"},  // overflowed after a few steps
      {(int64_t{1} << 53) + 1, first, "2^53"},
      {10, 1e300, "float32's range"},  // every output Inf, status OK
      {10, -4e38, "float32's range"},
  };
  for (const Case& c : kCases) {
    SCOPED_TRACE(c.position);
    ssm::v1::StateSnapshot forged = snapshot;
    forged.set_data(Forge(snapshot.data(), c.position, c.value));
    absl::StatusOr<client::Client::Imported> imported = client_->ImportState(forged, "");
    EXPECT_CODE(imported, kInvalidArgument);
    EXPECT_THAT(imported.status().message(), HasSubstr(c.says));
    // A stream that resumes from it gets the same.
    absl::StatusOr<std::unique_ptr<client::Stream>> stream =
        client_->OpenStream({.model = "legs-memory", .resume_from = forged});
    EXPECT_CODE(stream, kInvalidArgument);
  }
}

// A step of float32's largest value makes legt-delay's reconstruction
// overshoot it (Legendre series ring at a jump): an output float32 cannot
// carry. The chunk fails (the client would otherwise get Inf with status
// OK), the session keeps the state it had, and Infer refuses the same way.
TEST_F(HardeningTest, OutputsFloat32CannotCarryFailAndChangeNothing) {
  const Tensor head = MakeSequence(1, 20, 1, 3);
  absl::StatusOr<std::unique_ptr<client::Stream>> stream =
      client_->OpenStream({.model = "legt-delay"});
  ASSERT_OK(stream);
  ASSERT_OK(StreamInChunks(**stream, head, {5}));
  const std::string id = (*stream)->session_id();

  for (int steps : {1, 70}) {  // a recurrent step, and a convolution
    SCOPED_TRACE(steps);
    Tensor huge;
    huge.shape = {1, steps, 1};
    huge.values.assign(steps, std::numeric_limits<float>::max());
    absl::StatusOr<Tensor> outputs = StreamInChunks(**stream, huge, {steps});
    if (steps == 1) {
      // One step of it is still carried (the jump has not reached the
      // delays yet): the stream goes on; then the next chunk overshoots.
      ASSERT_OK(outputs);
      continue;
    }
    EXPECT_CODE(outputs, kInvalidArgument);
    EXPECT_THAT(outputs.status().message(), HasSubstr("the session is unchanged"));
    EXPECT_CODE(client_->Infer("legt-delay", huge), kInvalidArgument);
  }

  // Detached by the failure, with the state it had before the chunk.
  absl::StatusOr<ssm::v1::StateSnapshot> after = client_->ExportState(id);
  ASSERT_OK(after);
  EXPECT_EQ(after->position(), 21);
  // The failed chunk left the state of step 21: a fresh stream that ran the
  // same 21 steps has the same state, bit for bit.
  absl::StatusOr<std::unique_ptr<client::Stream>> twin =
      client_->OpenStream({.model = "legt-delay"});
  ASSERT_OK(twin);
  ASSERT_OK(StreamInChunks(**twin, head, {5}));
  Tensor one;
  one.shape = {1, 1, 1};
  one.values = {std::numeric_limits<float>::max()};
  ASSERT_OK(StreamInChunks(**twin, one, {1}));
  absl::StatusOr<ssm::v1::StateSnapshot> twin_state = client_->ExportState((*twin)->session_id());
  ASSERT_OK(twin_state);
  EXPECT_EQ(after->data(), twin_state->data());
  EXPECT_OK((*twin)->Close());
}

}  // namespace
}  // namespace ssm::e2e
