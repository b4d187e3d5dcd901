// Client text echoed into messages and logs is bounded and printable; logs
// name sessions by a tag that does not reveal the id.

#include "server/echo.h"

#include <string>

#include <gtest/gtest.h>

namespace ssm::server {
namespace {

TEST(EchoTest, ShortPrintableTextIsUnchanged) {
  EXPECT_EQ(Echo("s4-demo"), "s4-demo");
  EXPECT_EQ(Echo(""), "");
}

TEST(EchoTest, LongTextIsCutAndSaysHowMuch) {
  const std::string name(1 << 20, 'm');
  const std::string echoed = Echo(name);
  EXPECT_EQ(echoed, std::string(kMaxEchoBytes, 'm') + "...(+" +
                        std::to_string(name.size() - kMaxEchoBytes) + " bytes)");
  EXPECT_EQ(Echo("abcdef", 3), "abc...(+3 bytes)");
}

TEST(EchoTest, ControlBytesCannotForgeALogLine) {
  const std::string echoed = Echo("a\nZ 2024-01-01T00:00:00Z session forged\x1b[2J");
  EXPECT_EQ(echoed.find('\n'), std::string::npos);
  EXPECT_EQ(echoed.find('\x1b'), std::string::npos);
  EXPECT_NE(echoed.find("\\n"), std::string::npos);
}

TEST(EchoTest, SessionTagIsAStableHashPrefix) {
  // SHA-256("0123456789abcdef0123456789abcdef") starts with these 6 bytes
  // (computed independently: `printf %s 0123...cdef | sha256sum`).
  const std::string id = "0123456789abcdef0123456789abcdef";
  const std::string tag = SessionTag(id);
  EXPECT_EQ(tag, "s-3eb1bd439947");
  EXPECT_EQ(tag, SessionTag(id));
  EXPECT_NE(tag, SessionTag("0123456789abcdef0123456789abcdee"));
  EXPECT_EQ(tag.find("0123456789ab"), std::string::npos);
}

TEST(EchoTest, ACutNeverSplitsAUtf8Character) {
  // "é" is two bytes: wherever the cut falls, no lone byte of one remains.
  for (size_t max : {size_t{64}, size_t{65}, size_t{66}, size_t{67}}) {
    std::string text;
    while (text.size() < 4 * max) text += "\xC3\xA9";
    const std::string cut = BoundedMessage(text, max);
    EXPECT_LE(cut.size(), max);
    const size_t body = cut.find(" ... [");
    ASSERT_NE(body, std::string::npos);
    EXPECT_EQ(body % 2, 0u) << "max " << max;
  }
}

}  // namespace
}  // namespace ssm::server
