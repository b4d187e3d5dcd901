// The default repository shipped in models/ scans clean, every model loads
// and answers, in both modes.

#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "server/model_repository.h"
#include "ssm/model.h"
#include "ssm/session.h"

namespace ssm {
namespace {

TEST(ShippedRepositoryTest, EveryModelLoadsAndRuns) {
  absl::StatusOr<server::RepositoryScan> scan =
      server::ScanRepository(std::string(SSM_SOURCE_DIR) + "/models");
  ASSERT_TRUE(scan.ok()) << scan.status();
  EXPECT_TRUE(scan->warnings.empty());
  std::vector<std::string> names;
  for (const server::ModelEntry& e : scan->models) {
    names.push_back(e.name);
    ASSERT_TRUE(e.status.ok()) << e.name << ": " << e.status;
    ASSERT_EQ(e.versions.size(), 1u) << e.name;
    absl::StatusOr<SafeTensors> w = SafeTensors::ReadFile(e.versions.begin()->second);
    ASSERT_TRUE(w.ok()) << w.status();
    absl::StatusOr<std::shared_ptr<const Model>> m = LoadModel(e.spec, &*w);
    ASSERT_TRUE(m.ok()) << m.status();
    const int length = 100;
    std::vector<double> x(length * (*m)->d_input()), y(length * (*m)->d_output());
    for (size_t i = 0; i < x.size(); ++i) x[i] = std::sin(0.1 * i);
    ASSERT_TRUE((*m)->Forward(x, 1, length, absl::MakeSpan(y)).ok()) << e.name;
    Session s = *Session::Create(*m, 1);
    std::vector<double> streamed(y.size());
    ASSERT_TRUE(s.Run(x, length, absl::MakeSpan(streamed)).ok());
    for (size_t i = 0; i < y.size(); ++i) {
      ASSERT_TRUE(std::isfinite(y[i])) << e.name;
      EXPECT_NEAR(streamed[i], y[i], 1e-9 * (1 + std::abs(y[i]))) << e.name << " " << i;
    }
  }
  EXPECT_EQ(names, (std::vector<std::string>{"legs-memory", "legt-delay", "s4-demo"}));
}

}  // namespace
}  // namespace ssm
