// Models exported from the official S4 implementation's parameterization
// load and compute what that code computes. The fixture
// (tests/data/s4_reference, made by tools/s4ref/make_fixture.py) holds float32
// weights under the reference's names (example.py's models, and the
// training script's checkpoints as tools/convert_s4_checkpoint.py converts
// them) and the outputs of an independent NumPy implementation in float64,
// itself checked against naive recurrences (see that folder's README).

#include <string>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_format.h"

#include "server/model_config.h"
#include "ssm/model.h"
#include "ssm/safetensors.h"
#include "ssm/session.h"

namespace ssm {
namespace {

const std::string kFixture = std::string(SSM_SOURCE_DIR) + "/tests/data/s4_reference/";

class S4ReferenceTest : public ::testing::TestWithParam<std::string> {};

// Their outputs depend on the whole sequence: no streaming.
const absl::flat_hash_set<std::string> kUnaryOnly = {
    "s4-bidir", "train-s4-bidir-batch", "train-s4d-bilinear-bidir", "train-s4d-dss",
    "train-s4d-dss-bidir"};

double RelMax(const std::vector<double>& a, const std::vector<double>& b) {
  double err = 0, scale = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    err = std::max(err, std::abs(a[i] - b[i]));
    scale = std::max(scale, std::abs(b[i]));
  }
  return err / scale;
}

TEST_P(S4ReferenceTest, OutputsMatchTheReference) {
  const std::string dir = kFixture + GetParam();
  absl::StatusOr<ModelSpec> spec = server::ReadModelConfig(dir + "/config.pbtxt");
  ASSERT_TRUE(spec.ok()) << spec.status();
  absl::StatusOr<SafeTensors> weights = SafeTensors::ReadFile(dir + "/1/weights.safetensors");
  ASSERT_TRUE(weights.ok()) << weights.status();
  absl::StatusOr<std::shared_ptr<const Model>> model = LoadModel(*spec, &*weights);
  ASSERT_TRUE(model.ok()) << model.status();
  absl::StatusOr<SafeTensors> io = SafeTensors::ReadFile(dir + "/io.safetensors");
  ASSERT_TRUE(io.ok()) << io.status();
  const std::vector<int64_t> shape = io->info("input")->shape;  // B x L x d_input
  ASSERT_EQ(shape.size(), 3u);
  const int batch = static_cast<int>(shape[0]), length = static_cast<int>(shape[1]);
  const std::vector<double> x = *io->ReadDoubles("input");
  const std::vector<double> expected = *io->ReadDoubles("output");
  std::vector<double> y(expected.size());
  ASSERT_TRUE((*model)->Forward(x, batch, length, absl::MakeSpan(y)).ok());
  // Both sides compute in double from the same float32 weights: measured
  // agreement is ~1e-15; the issue asks for float32 precision (1e-5).
  const double err = RelMax(y, expected);
  EXPECT_LT(err, 1e-12) << GetParam();
  RecordProperty("max_rel_error", absl::StrFormat("%.2e", err));

  // Bidirectional and DSS models are unary only, and say why; the others
  // stream the same input, in uneven chunks, to the same outputs.
  const bool unary_only = kUnaryOnly.contains(GetParam());
  EXPECT_EQ((*model)->streamable(), !unary_only) << GetParam();
  if (unary_only) {
    absl::StatusOr<Session> refused = Session::Create(*model, 1);
    EXPECT_EQ(refused.status().code(), absl::StatusCode::kFailedPrecondition);
    EXPECT_THAT(std::string(refused.status().message()),
                ::testing::HasSubstr(GetParam() == "train-s4d-dss" ? "DSS kernel"
                                                                   : "bidirectional"));
    return;
  }
  Session s = *Session::Create(*model, batch);
  std::vector<double> streamed(expected.size());
  const int din = (*model)->d_input(), dout = (*model)->d_output();
  for (int t0 = 0, chunk = 1; t0 < length; t0 += chunk, chunk = chunk * 3 % 17 + 1) {
    const int c = std::min(chunk, length - t0);
    std::vector<double> in(static_cast<size_t>(batch) * c * din), out(batch * c * dout);
    for (int b = 0; b < batch; ++b)
      std::copy(&x[(b * length + t0) * din], &x[(b * length + t0 + c) * din], &in[b * c * din]);
    ASSERT_TRUE(s.Run(in, c, absl::MakeSpan(out)).ok());
    for (int b = 0; b < batch; ++b)
      std::copy(&out[b * c * dout], &out[(b + 1) * c * dout], &streamed[(b * length + t0) * dout]);
  }
  const double streamed_err = RelMax(streamed, expected);
  EXPECT_LT(streamed_err, 1e-12) << GetParam();
  RecordProperty("streamed_rel_error", absl::StrFormat("%.2e", streamed_err));
}

INSTANTIATE_TEST_SUITE_P(Fixture, S4ReferenceTest,
                         ::testing::Values("s4-dplr-post", "s4-dplr2-pre-long", "s4-bidir",
                                           "s4-diag-zoh", "s4d-minimal", "train-s4-default",
                                           "train-s4-bidir-batch", "train-s4d-zoh",
                                           "train-s4d-bilinear-bidir", "train-s4d-dss",
                                           "train-s4d-dss-bidir", "train-s4-none-relu",
                                           "train-s4d-minimal"),
                         [](const auto& info) {
                           std::string n = info.param;
                           for (char& ch : n)
                             if (ch == '-') ch = '_';
                           return n;
                         });

}  // namespace
}  // namespace ssm
