// Lines a client can cause at will are rate-limited per kind (log.h).

#include "server/log.h"

#include <gtest/gtest.h>

#include "absl/time/clock.h"
#include "absl/time/time.h"

namespace ssm::server {
namespace {

class LogTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() { SetLogEnabled(false); }
  static void TearDownTestSuite() { SetLogEnabled(true); }
};

TEST_F(LogTest, AKindGetsABurstThenWaitsForItsBudget) {
  int written = 0;
  for (int i = 0; i < 1000; ++i) written += LogLineLimited("test burst", "line") ? 1 : 0;
  // The burst, plus what refilled while the loop ran (well under one line).
  EXPECT_GE(written, kLogBurst);
  EXPECT_LE(written, kLogBurst + 1);
  // Another kind has its own budget.
  EXPECT_TRUE(LogLineLimited("test other kind", "line"));
  // The budget refills at kLogPerSecond.
  absl::SleepFor(absl::Seconds(2.5 / kLogPerSecond));
  EXPECT_TRUE(LogLineLimited("test burst", "line"));
  EXPECT_TRUE(LogLineLimited("test burst", "line"));
  EXPECT_FALSE(LogLineLimited("test burst", "line"));
}

}  // namespace
}  // namespace ssm::server
