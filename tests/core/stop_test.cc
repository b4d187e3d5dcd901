// Stopping long computations (ssm/stop.h): every long function polls the
// caller's check, returns exactly its status when it stops, stops within a
// bounded number of further polls, and computes bit-identical results when
// the check never stops.

#include "ssm/stop.h"

#include <atomic>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "absl/strings/str_cat.h"
#include "ssm/cauchy.h"
#include "ssm/dplr.h"
#include "ssm/kernel.h"
#include "ssm/threads.h"

namespace ssm {
namespace {

// OK for the first `ok_polls` polls, then `stop` forever; counts every poll.
// Called from several threads at once, hence the atomics.
class CountingCheck {
 public:
  CountingCheck(int ok_polls, absl::Status stop) : ok_polls_(ok_polls), stop_(std::move(stop)) {}
  absl::Status operator()() const {
    return polls_.fetch_add(1) < ok_polls_ ? absl::OkStatus() : stop_;
  }
  int polls() const { return polls_.load(); }

 private:
  const int ok_polls_;
  const absl::Status stop_;
  mutable std::atomic<int> polls_{0};
};

// A long function under test, its result flattened to raw doubles.
using Run = std::function<absl::StatusOr<std::vector<double>>(StopCheck)>;

template <typename Matrix>
absl::StatusOr<std::vector<double>> Flatten(const absl::StatusOr<Matrix>& m) {
  if (!m.ok()) return m.status();
  const double* d = reinterpret_cast<const double*>(m->data());
  return std::vector<double>(d, d + m->size() * (sizeof(typename Matrix::Scalar) / sizeof(double)));
}

absl::StatusOr<std::vector<double>> Flatten(
    const absl::StatusOr<std::vector<RowMatrixXcd>>& sums) {
  if (!sums.ok()) return sums.status();
  std::vector<double> out;
  for (const RowMatrixXcd& m : *sums) {
    const double* d = reinterpret_cast<const double*>(m.data());
    out.insert(out.end(), d, d + 2 * m.size());
  }
  return out;
}

struct Case {
  std::string name;
  Run run;
};

// Every long function, at sizes where each kind of poll is needed to stop
// after a few: 8 channels; or 2 channels of N = 64, whose steps are polled
// every 256; or 1 channel whose C~ map takes a dozen dense products.
std::vector<Case> Cases() {
  constexpr int kLength = 3000;
  static const DplrSystem* s4 =
      new DplrSystem(*MakeS4Init(Measure::kLegS, 16, 8, 1e-3, 1e-1, 5));
  static const DplrSystem* s4_wide =
      new DplrSystem(*MakeS4Init(Measure::kLegS, 64, 2, 1e-3, 1e-1, 5));
  static const DplrSystem* s4_one =
      new DplrSystem(*MakeS4Init(Measure::kLegS, 16, 1, 1e-3, 1e-1, 5));
  static const DplrSystem* s4_one_tilde = [] {
    auto* s = new DplrSystem(*s4_one);
    s->C = *CTilde(*s4_one, kLength);
    return s;
  }();
  static const DplrSystem* s4d =
      new DplrSystem(*MakeS4dInit(S4dInit::kLin, 16, 8, 1e-3, 1e-1, 5));
  static const DplrSystem* s4_tilde = [] {
    auto* s = new DplrSystem(*s4);
    s->C = *CTilde(*s4, kLength);
    return s;
  }();
  return {
      {"NaiveKernel/bilinear",
       [](StopCheck stop) {
         return Flatten(NaiveKernel(*s4_wide, kLength, Discretization::Bilinear(), stop));
       }},
      {"NaiveKernel/zoh",
       [](StopCheck stop) {
         return Flatten(NaiveKernel(*s4d, kLength, Discretization::Zoh(), stop));
       }},
      {"DplrKernel", [](StopCheck stop) { return Flatten(DplrKernel(*s4_tilde, kLength, stop)); }},
      {"DiagonalKernel",
       [](StopCheck stop) {
         return Flatten(DiagonalKernel(*s4d, kLength, Discretization::Zoh(), stop));
       }},
      {"CTilde", [](StopCheck stop) { return Flatten(CTilde(*s4_one, kLength, stop)); }},
      {"CFromCTilde",
       [](StopCheck stop) { return Flatten(CFromCTilde(*s4_one_tilde, kLength, stop)); }},
      {"CauchyConjugateSums",
       [](StopCheck stop) {
         RowMatrixXcd z(s4->channels(), 700);
         for (int h = 0; h < z.rows(); ++h) {
           for (int j = 0; j < z.cols(); ++j) z(h, j) = cdouble(0.0, 0.5 * j + h);
         }
         const std::vector<RowMatrixXcd> v = {s4->B, s4->C, s4->P[0]};
         return Flatten(CauchyConjugateSums(s4->lambda, v, z, stop));
       }},
  };
}

TEST(StopTest, ANeverStoppingCheckIsPolledAndChangesNoBit) {
  for (const Case& c : Cases()) {
    SCOPED_TRACE(c.name);
    const absl::StatusOr<std::vector<double>> plain = c.run(NeverStop);
    const CountingCheck never(1 << 30, absl::InternalError("unused"));
    const absl::StatusOr<std::vector<double>> checked = c.run(never);
    ASSERT_TRUE(plain.ok()) << plain.status();
    ASSERT_TRUE(checked.ok()) << checked.status();
    ASSERT_EQ(plain->size(), checked->size());
    EXPECT_EQ(std::memcmp(plain->data(), checked->data(), plain->size() * sizeof(double)), 0);
    // Enough units that a stop after a few polls lands mid-work (below).
    EXPECT_GE(never.polls(), 8);
  }
}

TEST(StopTest, AStopAfterKPollsReturnsItsStatusWithinAPollPerThread) {
  for (const Case& c : Cases()) {
    for (int k : {0, 1, 5}) {
      SCOPED_TRACE(absl::StrCat(c.name, ", k = ", k));
      const absl::Status want = absl::DeadlineExceededError(absl::StrCat("stopped after ", k));
      const CountingCheck check(k, want);
      const absl::StatusOr<std::vector<double>> got = c.run(check);
      EXPECT_EQ(got.status(), want);
      // The first k polls said go on; after the first stop, only threads
      // already polling at that moment may ask again.
      EXPECT_GE(check.polls(), k + 1);
      EXPECT_LE(check.polls(), k + Threads());
    }
  }
}

TEST(StopTest, StopsTheSameWayOnOneThread) {
  const int threads = Threads();
  ASSERT_TRUE(SetThreads(1).ok());
  for (const Case& c : Cases()) {
    SCOPED_TRACE(c.name);
    const absl::Status want = absl::CancelledError("client went away");
    const CountingCheck check(3, want);
    EXPECT_EQ(c.run(check).status(), want);
    EXPECT_EQ(check.polls(), 4);  // one thread: exactly one poll past the last OK
  }
  ASSERT_TRUE(SetThreads(threads).ok());
}

}  // namespace
}  // namespace ssm
