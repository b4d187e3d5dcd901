// The Open Inference Protocol's request path (oip_core.h: PlanInfer, then
// RunInfer with the sequence table) against corrupted requests: mutated
// wire bytes and random field edits. Nothing may crash, every refusal must
// carry one of the protocol's codes with a bounded message, and the server
// state must stay sound (sequences and sessions as the valid requests left
// them). The REST codec's own fuzz test is oip_json_fuzz_test.cc.

#include <cmath>
#include <random>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "grpc_server_fixture.h"
#include "server/log.h"
#include "server/oip_core.h"
#include "server/sequences.h"

namespace ssm::server::oip {
namespace {

class OipFuzzTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() { SetLogEnabled(false); }
  static void TearDownTestSuite() { SetLogEnabled(true); }

  OipFuzzTest()
      : catalog_(testing::ShippedRepository()),
        sessions_(SessionOptions()),
        table_(&catalog_, &sessions_, Limits()) {}

  static SessionManager::Options SessionOptions() {
    SessionManager::Options o;
    o.max_sessions = 16;
    return o;
  }
  static RequestLimits Limits() {
    RequestLimits l;
    l.max_batch = 4;
    l.max_unary_length = 512;
    l.max_chunk_steps = 256;
    l.max_message_bytes = 1 << 20;
    return l;
  }

  // Plans and, when the plan is small, runs `request`; checks the outcome.
  void Try(const inference::ModelInferRequest& request) {
    absl::StatusOr<InferPlan> plan = PlanInfer(request, catalog_, Limits());
    absl::Status status = plan.status();
    if (plan.ok()) {
      ++planned_;
      inference::ModelInferResponse response;
      status = RunInfer(*plan, request, table_, "fuzz",
                        [](int, int) { return absl::OkStatus(); }, &response);
      if (status.ok()) {
        ++ran_;
        ASSERT_EQ(response.outputs_size(), 1);
        const int64_t n = plan->shape.batch * plan->shape.steps * plan->served.model->d_output();
        if (plan->raw_output) {
          ASSERT_EQ(response.raw_output_contents(0).size(), static_cast<size_t>(n) * 4);
        } else {
          ASSERT_EQ(response.outputs(0).contents().fp32_contents_size(), n);
        }
      }
    }
    if (status.ok()) return;
    const absl::StatusCode c = status.code();
    ASSERT_TRUE(c == absl::StatusCode::kInvalidArgument || c == absl::StatusCode::kNotFound ||
                c == absl::StatusCode::kFailedPrecondition ||
                c == absl::StatusCode::kResourceExhausted)
        << status;
    ASSERT_LE(status.message().size(), 2048u) << status;
  }

  ModelCatalog catalog_;
  SessionManager sessions_;
  SequenceTable table_;
  int planned_ = 0;
  int ran_ = 0;
};

inference::ModelInferRequest Base(bool raw, int steps, uint64_t sequence) {
  inference::ModelInferRequest r;
  r.set_model_name("legt-delay");
  r.set_id("fuzz");
  auto* in = r.add_inputs();
  in->set_name("input");
  in->set_datatype("FP32");
  in->add_shape(1);
  in->add_shape(steps);
  in->add_shape(1);
  std::vector<float> x(steps);
  for (int t = 0; t < steps; ++t) x[t] = static_cast<float>(std::sin(0.3 * t));
  if (raw) {
    r.add_raw_input_contents(std::string(reinterpret_cast<const char*>(x.data()), x.size() * 4));
  } else {
    for (float v : x) in->mutable_contents()->add_fp32_contents(v);
  }
  if (sequence != 0) {
    (*r.mutable_parameters())["sequence_id"].set_uint64_param(sequence);
    (*r.mutable_parameters())["sequence_start"].set_bool_param(true);
  }
  auto* out = r.add_outputs();
  out->set_name("output");
  (*out->mutable_parameters())["binary_data"].set_bool_param(raw);
  return r;
}

TEST_F(OipFuzzTest, MutatedWireBytesNeverCrash) {
  const std::string bases[] = {Base(true, 6, 0).SerializeAsString(),
                               Base(false, 5, 0).SerializeAsString(),
                               Base(true, 3, 7).SerializeAsString()};
  std::mt19937_64 rng(20260304);
  auto uniform = [&](size_t lo, size_t hi) {
    return std::uniform_int_distribution<size_t>(lo, hi)(rng);
  };
  int parsed = 0;
  for (int trial = 0; trial < 6000; ++trial) {
    std::string m = bases[trial % 3];
    const int edits = static_cast<int>(uniform(1, 4));
    for (int e = 0; e < edits && !m.empty(); ++e) {
      const size_t pos = uniform(0, m.size() - 1);
      switch (uniform(0, 2)) {
        case 0:
          m[pos] = static_cast<char>(m[pos] ^ (1 << uniform(0, 7)));
          break;
        case 1:
          m[pos] = static_cast<char>(uniform(0, 255));
          break;
        default:
          m.erase(pos, uniform(1, 4));
          break;
      }
    }
    inference::ModelInferRequest request;
    if (!request.ParseFromString(m)) continue;  // the reactor's INVALID_ARGUMENT
    ++parsed;
    Try(request);
    if (HasFatalFailure()) FAIL() << "trial " << trial;
  }
  EXPECT_GT(parsed, 1000);
  EXPECT_GT(ran_, 100);
}

TEST_F(OipFuzzTest, RandomFieldEditsNeverCrash) {
  std::mt19937_64 rng(20260305);
  auto uniform = [&](int64_t lo, int64_t hi) {
    return std::uniform_int_distribution<int64_t>(lo, hi)(rng);
  };
  const char* const kNames[] = {"legt-delay", "s4-demo", "nope", ""};
  const char* const kVersions[] = {"", "1", "2", "0", "01", "-1", "x", "99999999999999999999"};
  const char* const kTypes[] = {"FP32", "FP64", "INT32", "BYTES", "", "fp32"};
  const int64_t kDims[] = {1, 2, 3, 0, -1, 5, 300, 1 << 20, int64_t{1} << 40};
  for (int trial = 0; trial < 5000; ++trial) {
    inference::ModelInferRequest r = Base(uniform(0, 1) == 1, static_cast<int>(uniform(1, 8)), 0);
    // Each part is left alone three times in four, so many requests get as
    // far as running.
    if (uniform(0, 3) == 0) r.set_model_name(kNames[uniform(0, 3)]);
    if (uniform(0, 3) == 0) r.set_model_version(kVersions[uniform(0, 7)]);
    auto* in = r.mutable_inputs(0);
    if (uniform(0, 3) == 0) in->set_datatype(kTypes[uniform(0, 5)]);
    if (uniform(0, 3) == 0) {
      in->clear_shape();
      for (int d = static_cast<int>(uniform(0, 4)); d > 0; --d) in->add_shape(kDims[uniform(0, 8)]);
    }
    switch (uniform(0, 11)) {
      case 0:
        in->mutable_contents()->add_fp32_contents(std::nanf(""));
        break;
      case 1:
        in->mutable_contents()->add_fp64_contents(uniform(0, 1) ? 1e300 : INFINITY);
        break;
      case 2:
        r.add_raw_input_contents(std::string(static_cast<size_t>(uniform(0, 64)), '\x7f'));
        break;
      case 3:
        if (r.raw_input_contents_size() > 0) {
          r.mutable_raw_input_contents(0)->resize(static_cast<size_t>(uniform(0, 64)), '\xff');
        }
        break;
      case 4:
        *r.add_inputs() = *in;
        break;
      default:
        break;
    }
    auto& p = *r.mutable_parameters();
    switch (uniform(0, 9)) {
      case 0:
        p["sequence_id"].set_int64_param(uniform(-3, 3));
        break;
      case 1:
        p["sequence_id"].set_string_param(std::string(static_cast<size_t>(uniform(0, 300)), 's'));
        break;
      case 2:
        p["sequence_id"].set_double_param(1.5);
        break;
      case 3:
        p["sequence_id"].set_uint64_param(static_cast<uint64_t>(uniform(1, 4)));
        p["sequence_start"].set_bool_param(uniform(0, 1) == 1);
        p["sequence_end"].set_bool_param(uniform(0, 1) == 1);
        break;
      case 4:
        p["sequence_end"].set_string_param("yes");
        break;
      default:
        break;
    }
    if (uniform(0, 7) == 0) r.mutable_outputs(0)->set_name("OUTPUT0");
    Try(r);
    if (HasFatalFailure()) FAIL() << "trial " << trial << ": " << r.ShortDebugString();
  }
  EXPECT_GT(planned_, 500);
  EXPECT_GT(ran_, 300);
  // Sequences stayed within their bounds, and a fresh one still works.
  const SessionManager::Stats stats = sessions_.GetStats();
  EXPECT_LE(stats.attached + stats.detached, 16);
  EXPECT_EQ(stats.attached, 0);
  inference::ModelInferRequest ok = Base(true, 4, 0);
  (*ok.mutable_parameters())["sequence_id"].set_string_param("after-the-fuzz");
  (*ok.mutable_parameters())["sequence_start"].set_bool_param(true);
  (*ok.mutable_parameters())["sequence_end"].set_bool_param(true);
  absl::StatusOr<InferPlan> plan = PlanInfer(ok, catalog_, Limits());
  ASSERT_TRUE(plan.ok()) << plan.status();
  inference::ModelInferResponse response;
  EXPECT_TRUE(RunInfer(*plan, ok, table_, "fuzz", [](int, int) { return absl::OkStatus(); },
                       &response)
                  .ok());
}

}  // namespace
}  // namespace ssm::server::oip
