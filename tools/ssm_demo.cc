// ssm_demo: shows the core library at work without any server.
//
//   ssm_demo                      stream a test signal into HiPPO memories
//   ssm_demo --print=legs --n=4   print A, B and the discretized Ab, Bb
//
// Exit status 0 on success, 2 on a bad flag (the message names it).

#include <cmath>
#include <cstdio>
#include <numbers>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/status/status.h"
#include "absl/strings/str_format.h"
#include "ssm/discretize.h"
#include "ssm/hippo.h"
#include "ssm/hippo_memory.h"

ABSL_FLAG(int, n, 64, "largest state size N to demonstrate (or to print)");
ABSL_FLAG(std::string, print, "",
          "print the matrices of this measure (legs, legt, lmu, lagt, fout) "
          "instead of running the memory demo");
ABSL_FLAG(double, dt, 0.1, "step for the discretized matrices (--print)");
ABSL_FLAG(std::string, discretization, "bilinear",
          "forward, backward, bilinear, zoh or gbt:<alpha>");
ABSL_FLAG(int, length, 10000, "samples streamed into the memories");

namespace {

void PrintMatrix(const char* name, const Eigen::MatrixXd& m) {
  std::printf("%s =\n", name);
  for (Eigen::Index i = 0; i < m.rows(); ++i) {
    for (Eigen::Index j = 0; j < m.cols(); ++j) std::printf(" %11.6f", m(i, j));
    std::printf("\n");
  }
}

absl::Status PrintMatrices(const std::string& measure_name, int n) {
  absl::StatusOr<ssm::Measure> measure = ssm::ParseMeasure(measure_name);
  if (!measure.ok()) return measure.status();
  absl::StatusOr<ssm::Discretization> method =
      ssm::ParseDiscretization(absl::GetFlag(FLAGS_discretization));
  if (!method.ok()) return method.status();
  absl::StatusOr<ssm::ContinuousSystem> sys = ssm::MakeHippo(*measure, n);
  if (!sys.ok()) return sys.status();
  absl::StatusOr<ssm::DiscreteSystem> d =
      ssm::Discretize(*sys, absl::GetFlag(FLAGS_dt), *method);
  if (!d.ok()) return d.status();
  PrintMatrix("A", sys->A);
  PrintMatrix("B", sys->B);
  PrintMatrix("Ab", d->A);
  PrintMatrix("Bb", d->B);
  return absl::OkStatus();
}

double Signal(double s) {
  constexpr double kPi = std::numbers::pi;
  return std::sin(2 * kPi * 2 * s) + 0.5 * std::cos(2 * kPi * 5 * s + 0.3) +
         0.3 * std::sin(2 * kPi * 9 * s + 1.0);
}

absl::Status RunMemoryDemo(int max_n, int length) {
  if (max_n < 1) return absl::InvalidArgumentError(absl::StrFormat("N must be >= 1, got %d", max_n));
  if (length < 2) return absl::InvalidArgumentError(absl::StrFormat("length must be >= 2, got %d", length));
  // Sample k stands for the step (k-1, k]: take the signal at its centre.
  std::vector<double> f(length), ages(length);
  for (int k = 1; k <= length; ++k) f[k - 1] = Signal((k - 0.5) / length);
  std::printf("LegS memory: %d samples of a 3-tone signal, whole history rebuilt\n", length);
  std::printf("  %6s  %12s\n", "N", "MSE");
  for (int n = 4; n <= max_n; n *= 2) {
    absl::StatusOr<ssm::HippoMemory> mem = ssm::HippoMemory::LegS(n);
    if (!mem.ok()) return mem.status();
    if (auto st = mem->Update(f); !st.ok()) return st;
    for (int k = 1; k <= length; ++k) ages[k - 1] = mem->SampleAge(length - k);
    absl::StatusOr<Eigen::VectorXd> rec = mem->Reconstruct(ages);
    if (!rec.ok()) return rec.status();
    double se = 0;
    for (int k = 0; k < length; ++k) se += std::pow((*rec)(k) - f[k], 2);
    std::printf("  %6d  %12.3e\n", n, se / length);
  }

  const double theta = length / 20.0;
  const double delay = theta / 2;
  std::printf("LegT memory: window %.0f samples as a delay line of %.0f samples\n",
              theta, delay);
  std::printf("  %6s  %12s\n", "N", "max error");
  for (int n = 4; n <= max_n; n *= 2) {
    absl::StatusOr<ssm::HippoMemory> mem = ssm::HippoMemory::LegT(n, theta);
    if (!mem.ok()) return mem.status();
    double max_err = 0;
    for (int k = 0; k < length; ++k) {
      if (auto st = mem->Update(Signal(k / (4.0 * theta))); !st.ok()) return st;
      if (k < 2 * theta) continue;
      absl::StatusOr<Eigen::VectorXd> d = mem->Reconstruct({mem->SampleAge(delay)});
      if (!d.ok()) return d.status();
      max_err = std::max(max_err, std::abs((*d)(0) - Signal((k - delay) / (4.0 * theta))));
    }
    std::printf("  %6d  %12.3e\n", n, max_err);
  }
  return absl::OkStatus();
}

}  // namespace

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage("ssmserve core demo: HiPPO matrices and memories");
  absl::ParseCommandLine(argc, argv);
  const std::string print = absl::GetFlag(FLAGS_print);
  const absl::Status st = print.empty()
                              ? RunMemoryDemo(absl::GetFlag(FLAGS_n), absl::GetFlag(FLAGS_length))
                              : PrintMatrices(print, absl::GetFlag(FLAGS_n));
  if (!st.ok()) {
    std::fprintf(stderr, "ssm_demo: %s\n", std::string(st.message()).c_str());
    return 2;
  }
  return 0;
}
