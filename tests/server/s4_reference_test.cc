// Models exported from the official S4 implementation's parameterization
// load and compute what that code computes. The fixture
// (tests/data/s4_reference, made by tools/s4ref/make_fixture.py) holds float32
// weights under the reference's names and the outputs of an independent
// NumPy implementation in float64, itself checked against naive recurrences
// and, once, against the official modules (see that folder's README).

#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "server/model_config.h"
#include "ssm/model.h"
#include "ssm/safetensors.h"
#include "ssm/session.h"

namespace ssm {
namespace {

const std::string kFixture = std::string(SSM_SOURCE_DIR) + "/tests/data/s4_reference/";

class S4ReferenceTest : public ::testing::TestWithParam<std::string> {};

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
  RecordProperty("max_rel_error", std::to_string(err));

  // Streaming the same input, in uneven chunks, gives the same outputs.
  if (!(*model)->streamable()) return;
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
  EXPECT_LT(RelMax(streamed, expected), 1e-12) << GetParam();
}

INSTANTIATE_TEST_SUITE_P(Fixture, S4ReferenceTest,
                         ::testing::Values("s4-dplr-post", "s4-dplr2-pre-long", "s4-bidir",
                                           "s4-diag-zoh", "s4d-minimal"),
                         [](const auto& info) {
                           std::string n = info.param;
                           for (char& ch : n)
                             if (ch == '-') ch = '_';
                           return n;
                         });

}  // namespace
}  // namespace ssm
