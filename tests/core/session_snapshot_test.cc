// The session snapshot format of ssm/session.h: its CRC-32C, its byte
// layout field by field, and what Import makes of a snapshot that is
// exact, of another model, truncated or corrupted. (The last two kept
// their ModelTest names when they moved here from model_test.cc.)

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <bit>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "core/ssm_systems.h"
#include "core/test_models.h"
#include "ssm/model.h"
#include "ssm/session.h"

// In the helpers' namespace (core/test_models.h, core/ssm_systems.h), so
// they need no using-declarations.
namespace ssm::testing {
namespace {

using ::testing::HasSubstr;

// Check values: "123456789" is the usual check input of CRC catalogues;
// the 32-byte patterns are iSCSI's (RFC 3720, B.4).
TEST(SessionSnapshotTest, Crc32cKnownAnswers) {
  EXPECT_EQ(Crc32c("123456789"), 0xE3069283u);
  EXPECT_EQ(Crc32c(""), 0u);
  EXPECT_EQ(Crc32c(std::string(32, '\x00')), 0x8A9136AAu);
  EXPECT_EQ(Crc32c(std::string(32, '\xff')), 0x62A8AB43u);
  std::string up(32, '\0'), down(32, '\0');
  for (int i = 0; i < 32; ++i) {
    up[i] = static_cast<char>(i);
    down[i] = static_cast<char>(31 - i);
  }
  EXPECT_EQ(Crc32c(up), 0x46DD794Eu);
  EXPECT_EQ(Crc32c(down), 0x113FDB5Cu);
}

// Crc32c's fast path (the CPU's crc32 instruction, 8 bytes at a time, then
// the tail byte by byte) against the definition, one bit at a time, at
// every length around the 8-byte blocks, from every alignment, and over a
// whole s4-demo state's size.
uint32_t Crc32cBitwise(std::string_view bytes) {
  uint32_t c = 0xFFFFFFFFu;
  for (unsigned char b : bytes) {
    c ^= b;
    for (int k = 0; k < 8; ++k) c = (c >> 1) ^ (0x82F63B78u & (0u - (c & 1u)));
  }
  return ~c;
}

TEST(SessionSnapshotTest, Crc32cMatchesTheBitwiseDefinition) {
  std::string buffer(70000, '\0');
  uint32_t x = 12345;
  for (char& ch : buffer) {
    x = x * 1103515245u + 12345u;
    ch = static_cast<char>(x >> 24);
  }
  const std::string_view all(buffer);
  for (size_t offset = 0; offset < 8; ++offset) {
    for (size_t length = 0; length <= 67; ++length) {
      const std::string_view piece = all.substr(offset, length);
      ASSERT_EQ(Crc32c(piece), Crc32cBitwise(piece))
          << "offset " << offset << ", length " << length;
    }
  }
  for (size_t length : {65536u + 61u, 65537u, 69993u}) {
    const std::string_view piece = all.substr(3, length);
    EXPECT_EQ(Crc32c(piece), Crc32cBitwise(piece)) << "length " << length;
  }
}

// Takes little-endian fields off the front of a byte string, assembling
// each from its bytes rather than copying the host's representation, so
// the test pins the byte order as well as the widths.
class FieldReader {
 public:
  explicit FieldReader(std::string_view bytes) : rest_(bytes) {}

  // The caller checks the size first: a short read is a test bug.
  uint64_t Uint(size_t width) {
    EXPECT_GE(rest_.size(), width);
    uint64_t v = 0;
    for (size_t i = 0; i < width && i < rest_.size(); ++i) {
      v |= uint64_t{static_cast<unsigned char>(rest_[i])} << (8 * i);
    }
    rest_.remove_prefix(std::min(width, rest_.size()));
    return v;
  }
  double Double() { return std::bit_cast<double>(Uint(8)); }
  std::string_view Bytes(size_t n) {
    EXPECT_GE(rest_.size(), n);
    const std::string_view out = rest_.substr(0, n);
    rest_.remove_prefix(out.size());
    return out;
  }
  size_t left() const { return rest_.size(); }

 private:
  std::string_view rest_;
};

// A LegS memory of N = 2: its state is its two coefficients, which are
// also its outputs.
absl::StatusOr<std::shared_ptr<const Model>> LegS2() {
  HippoMemorySpec h;
  h.measure = HippoMemorySpec::Measure::kLegS;
  h.n = 2;
  return LoadModel(HippoSpec(h, 2), nullptr);
}

// LegS2, batch 2, after 3 steps: 85 bytes.
TEST(SessionSnapshotTest, LayoutFieldByField) {
  absl::StatusOr<std::shared_ptr<const Model>> m = LegS2();
  ASSERT_TRUE(m.ok()) << m.status();
  Session s = *Session::Create(*m, 2);
  const std::vector<double> x = {0.5, -1.25, 2.0, 1.0, 0.25, -0.75};  // 2 x 3 x 1
  const std::vector<double> y = RunRange(s, x, 3, 0, 3);              // 2 x 3 x 2
  const std::string snap = s.ExportState();
  ASSERT_EQ(snap.size(), 8u + 4 + 4 + 8 + 4 + 5 + 8 + 8 + 4 * 8 + 4);

  FieldReader r(snap);
  EXPECT_EQ(r.Bytes(8), std::string_view("SSMSNAP\0", 8)) << "magic";
  EXPECT_EQ(r.Uint(4), 1u) << "format version";
  EXPECT_EQ(r.Uint(4), 2u) << "batch";
  EXPECT_EQ(r.Uint(8), (*m)->fingerprint()) << "model fingerprint";
  EXPECT_EQ(r.Uint(4), 5u) << "name length";
  EXPECT_EQ(r.Bytes(5), "hippo") << "name";
  EXPECT_EQ(r.Uint(8), 3u) << "position";
  EXPECT_EQ(r.Uint(8), 4u) << "state length (batch x N doubles)";
  // Sequence by sequence, the coefficients after the last step.
  for (int b = 0; b < 2; ++b) {
    for (int j = 0; j < 2; ++j) {
      EXPECT_EQ(r.Double(), y[(b * 3 + 2) * 2 + j]) << "state of sequence " << b << ", " << j;
    }
  }
  EXPECT_EQ(r.Uint(4), Crc32c(std::string_view(snap).substr(0, snap.size() - 4)))
      << "CRC-32C of all preceding bytes";
  EXPECT_EQ(r.left(), 0u);
}

TEST(ModelTest, SnapshotsContinueExactly) {
  const ModelSpec spec = S4Spec(Variants()[1].second);
  const std::shared_ptr<const Model> m = Load(spec);
  const std::vector<double> x = RandomInput(2 * 200 * 3, 5);
  Session a = *Session::Create(m, 2);
  RunRange(a, x, 200, 0, 120);
  const std::string snap = a.ExportState();
  const std::vector<double> rest = RunRange(a, x, 200, 120, 80);

  // A separately loaded copy of the same weights (another process, another
  // replica) takes the snapshot and continues bit for bit.
  const std::shared_ptr<const Model> again = Load(spec);
  ASSERT_EQ(again->fingerprint(), m->fingerprint());
  absl::StatusOr<Session> b = Session::Import(again, snap);
  ASSERT_TRUE(b.ok()) << b.status();
  EXPECT_EQ(b->position(), 120);
  EXPECT_EQ(b->batch(), 2);
  EXPECT_EQ(RunRange(*b, x, 200, 120, 80), rest);
}

TEST(ModelTest, SnapshotsOfAnotherModelOrCorruptedAreRefused) {
  const ModelSpec spec = S4Spec(Variants()[0].second);
  const std::shared_ptr<const Model> m = Load(spec, 7), other = Load(spec, 8);
  ASSERT_NE(m->fingerprint(), other->fingerprint());
  Session a = *Session::Create(m, 1);
  RunRange(a, RandomInput(10 * 3, 1), 10, 0, 10);
  const std::string snap = a.ExportState();

  absl::StatusOr<Session> wrong = Session::Import(other, snap);
  EXPECT_EQ(wrong.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(wrong.status().message()), HasSubstr("belongs to model 'test-s4'"));

  for (size_t i : {size_t{0}, size_t{9}, snap.size() / 2, snap.size() - 1}) {
    std::string bad = snap;
    bad[i] ^= 0x10;
    EXPECT_EQ(Session::Import(m, bad).status().code(), absl::StatusCode::kDataLoss) << i;
  }
  for (size_t len : {size_t{0}, size_t{5}, size_t{40}, snap.size() - 1}) {
    EXPECT_EQ(Session::Import(m, snap.substr(0, len)).status().code(), absl::StatusCode::kDataLoss)
        << len;
  }
  EXPECT_TRUE(Session::Import(m, snap).ok());
}

// The name in a snapshot is whatever its sender wrote (the checksum proves
// nothing about who that was): a refusal quotes only its first 64 bytes,
// escaped, so a forged name cannot make the message huge or carry control
// characters into a log.
TEST(SessionSnapshotTest, AForeignNameIsQuotedCutAndEscaped) {
  absl::StatusOr<std::shared_ptr<const Model>> m = LegS2();
  ASSERT_TRUE(m.ok()) << m.status();
  const std::string snap = Session::Create(*m, 1)->ExportState();
  // Layout (see LayoutFieldByField): the 5-byte name "hippo" at offset 28,
  // its length at 24.
  std::string name(5000, '\n');
  name[0] = 'x';
  std::string forged = snap.substr(0, 24);
  const uint32_t len = static_cast<uint32_t>(name.size());
  for (int i = 0; i < 4; ++i) forged.push_back(static_cast<char>(len >> (8 * i)));
  forged += name;
  forged += snap.substr(33, snap.size() - 33 - 4);
  const uint32_t crc = Crc32c(forged);
  for (int i = 0; i < 4; ++i) forged.push_back(static_cast<char>(crc >> (8 * i)));

  const absl::Status refused = Session::Import(*m, forged).status();
  EXPECT_EQ(refused.code(), absl::StatusCode::kFailedPrecondition) << refused;
  const std::string message(refused.message());
  EXPECT_LT(message.size(), 400u) << message;
  EXPECT_THAT(message, HasSubstr("belongs to model 'x\\n\\n"));
  EXPECT_THAT(message, HasSubstr("...(+4936 bytes)"));
  EXPECT_EQ(message.find('\n'), std::string::npos) << "a raw control character was echoed";
}

}  // namespace
}  // namespace ssm::testing
