// Shared helpers of the end-to-end tests: deterministic inputs, tensor
// slicing and comparison, and the server most tests share.
#ifndef SSMSERVE_TESTS_E2E_E2E_UTIL_H_
#define SSMSERVE_TESTS_E2E_E2E_UTIL_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "client/ssm_client.h"
#include "gtest/gtest.h"
#include "tests/e2e/server_process.h"

namespace ssm::e2e {

// [batch, length, d] of two sines and a little pseudo-random noise, all
// determined by `seed`.
client::Tensor MakeSequence(int64_t batch, int64_t length, int64_t d,
                            uint32_t seed = 1);

// Steps [t0, t1) of a [batch, L, d] tensor.
client::Tensor SliceSteps(const client::Tensor& t, int64_t t0, int64_t t1);

// Appends `tail`'s steps to `head` (same batch and d).
void AppendSteps(client::Tensor* head, const client::Tensor& tail);

// max|a - b| / max|b| (the max-norm relative error the repository quotes);
// a shape mismatch fails the test and returns +inf.
double MaxRelativeDiff(const client::Tensor& a, const client::Tensor& b);

// Runs `input` through `stream` chunk by chunk with RunChunk, the chunk
// lengths cycling through `pattern`; returns the outputs joined.
absl::StatusOr<client::Tensor> StreamInChunks(client::Stream& stream,
                                              const client::Tensor& input,
                                              const std::vector<int>& pattern);

// A client of `server` with test-friendly options (short deadline, quick
// reconnects).
std::unique_ptr<client::Client> ClientFor(const ServerProcess& server);

// The server started by the first test that asks for it in this test
// binary's process, with default flags; killed by the test environment at
// exit.
ServerProcess& SharedServer();

// GET http://127.0.0.1:<port><path> over a plain socket; the body, or an
// error naming what failed.
absl::StatusOr<std::string> HttpGet(int port, const std::string& path);

// The value of the first sample named exactly `name` (no labels) in a
// Prometheus text exposition; -1 when there is none.
double MetricValue(const std::string& text, const std::string& name);

// The p-quantile (0..1) of `values` (sorted in place).
double Quantile(std::vector<double>& values, double p);

// Float32 on the wire: outputs of the same computation by different paths
// (convolution vs recurrence, chunkings) agree to this.
inline constexpr double kWireTolerance = 1e-5;

}  // namespace ssm::e2e

// ASSERT_OK / EXPECT_OK for absl::Status and StatusOr (evaluated once),
// printing the status; EXPECT_CODE checks the exact canonical code.
#define SSM_E2E_CHECK_(check, expr, cond)                             \
  do {                                                                \
    const absl::Status ssm_e2e_s = ::ssm::e2e::internal::AsStatus(expr); \
    check(cond) << ssm_e2e_s;                                         \
  } while (0)
#define ASSERT_OK(expr) SSM_E2E_CHECK_(ASSERT_TRUE, expr, ssm_e2e_s.ok())
#define EXPECT_OK(expr) SSM_E2E_CHECK_(EXPECT_TRUE, expr, ssm_e2e_s.ok())
#define EXPECT_CODE(expr, code_)      \
  SSM_E2E_CHECK_(EXPECT_TRUE, expr, \
                 ssm_e2e_s.code() == absl::StatusCode::code_)

namespace ssm::e2e::internal {
inline absl::Status AsStatus(const absl::Status& s) { return s; }
template <typename T>
absl::Status AsStatus(const absl::StatusOr<T>& s) {
  return s.status();
}
}  // namespace ssm::e2e::internal

#endif  // SSMSERVE_TESTS_E2E_E2E_UTIL_H_
