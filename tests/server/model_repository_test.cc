#include "server/model_repository.h"

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "server/model_config.h"
#include "ssm/model.h"

namespace ssm::server {
namespace {

namespace fs = std::filesystem;

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::IsEmpty;

std::string HippoConfig(absl::string_view name) {
  return absl::StrCat("name: \"", name, "\"\n", R"pb(
    d_input: 1
    d_output: 8
    max_length: 64
    hippo { measure: MEASURE_LEGT n: 8 window: 16 output: OUTPUT_COEFFICIENTS }
  )pb");
}

std::string S4Config(absl::string_view name, int d_state) {
  return absl::StrCat("name: \"", name, "\"\n",
                      "d_input: 4 d_output: 4 max_length: 32\n"
                      "s4 { n_layers: 2 d_model: 4 kernel: KERNEL_KIND_DPLR rank: 1 d_state: ",
                      d_state, " }\n");
}

class ModelRepositoryTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char pattern[] = "/tmp/ssm_model_repository_test.XXXXXX";
    ASSERT_NE(mkdtemp(pattern), nullptr);
    repo_ = pattern;
  }
  void TearDown() override {
    std::error_code error;
    fs::remove_all(repo_, error);
  }

  // Creates <repo>/<relative> with its parent folders.
  std::string Write(const std::string& relative, absl::string_view text) {
    const fs::path path = fs::path(repo_) / relative;
    std::error_code error;
    fs::create_directories(path.parent_path(), error);
    EXPECT_FALSE(error) << error.message();
    std::FILE* file = std::fopen(path.c_str(), "wb");
    EXPECT_NE(file, nullptr) << path;
    if (file != nullptr) {
      std::fwrite(text.data(), 1, text.size(), file);
      std::fclose(file);
    }
    return path.string();
  }
  std::string MakeDir(const std::string& relative) {
    const fs::path path = fs::path(repo_) / relative;
    std::error_code error;
    fs::create_directories(path, error);
    EXPECT_FALSE(error) << error.message();
    return path.string();
  }
  std::string Path(const std::string& relative) const {
    return (fs::path(repo_) / relative).string();
  }

  RepositoryScan ScanOrDie() {
    absl::StatusOr<RepositoryScan> scan = ScanRepository(repo_);
    EXPECT_TRUE(scan.ok()) << scan.status();
    return scan.ok() ? *std::move(scan) : RepositoryScan();
  }

  std::string repo_;
};

std::vector<std::string> Names(const RepositoryScan& scan) {
  std::vector<std::string> names;
  for (const ModelEntry& entry : scan.models) names.push_back(entry.name);
  return names;
}

const ModelEntry* Find(const RepositoryScan& scan, absl::string_view name) {
  for (const ModelEntry& entry : scan.models) {
    if (entry.name == name) return &entry;
  }
  return nullptr;
}

TEST_F(ModelRepositoryTest, GoodModelIsListedAlongsideBadOnes) {
  // good: versions 1 and 3 usable; 2 has no weights, "latest" and "01" are
  // not version names: warnings only.
  Write("good/config.pbtxt", HippoConfig("good"));
  Write("good/1/weights.safetensors", "w1");
  Write("good/3/weights.safetensors", "w3");
  MakeDir("good/2");
  Write("good/latest/weights.safetensors", "w");
  Write("good/01/weights.safetensors", "w");
  Write("good/README.md", "plain files are not versions");
  // bad_config: odd d_state.
  Write("bad_config/config.pbtxt", S4Config("bad_config", 3));
  Write("bad_config/1/weights.safetensors", "w");
  // syntax: not text format.
  Write("syntax/config.pbtxt", "name: \"syntax\"\nd_input 1\n");
  Write("syntax/1/weights.safetensors", "w");
  // no_versions: a good config and nothing else.
  Write("no_versions/config.pbtxt", S4Config("no_versions", 4));
  // empty_version: its only version folder has no weights.
  Write("empty_version/config.pbtxt", S4Config("empty_version", 4));
  MakeDir("empty_version/1");
  Write("empty_version/1/other.bin", "not weights");
  // only_named: its only version folder is not numbered.
  Write("only_named/config.pbtxt", S4Config("only_named", 4));
  Write("only_named/v1/weights.safetensors", "w");
  // mismatch: config names another model.
  Write("mismatch/config.pbtxt", HippoConfig("other"));
  Write("mismatch/1/weights.safetensors", "w");
  // Not models.
  Write("no_config/1/weights.safetensors", "w");
  Write("README.md", "repository notes");
  Write(".git/config.pbtxt", "not a model");

  const RepositoryScan scan = ScanOrDie();
  EXPECT_THAT(Names(scan), ElementsAre("bad_config", "empty_version", "good", "mismatch",
                                       "no_versions", "only_named", "syntax"));

  const ModelEntry* good = Find(scan, "good");
  ASSERT_NE(good, nullptr);
  EXPECT_TRUE(good->status.ok()) << good->status;
  EXPECT_EQ(good->dir, Path("good"));
  EXPECT_EQ(good->spec.name, "good");
  EXPECT_EQ(good->spec.d_output, 8);
  ASSERT_TRUE(std::holds_alternative<HippoMemorySpec>(good->spec.architecture));
  EXPECT_EQ(std::get<HippoMemorySpec>(good->spec.architecture).n, 8);
  EXPECT_EQ(good->versions,
            (std::map<int64_t, std::string>{{1, Path("good/1/weights.safetensors")},
                                            {3, Path("good/3/weights.safetensors")}}));

  const ModelEntry* bad_config = Find(scan, "bad_config");
  ASSERT_NE(bad_config, nullptr);
  EXPECT_EQ(bad_config->status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(bad_config->status.message()),
              HasSubstr(Path("bad_config/config.pbtxt")));
  EXPECT_THAT(std::string(bad_config->status.message()), HasSubstr("s4.d_state"));
  // Versions are still reported for a model with a bad config.
  EXPECT_EQ(bad_config->versions.size(), 1u);

  const ModelEntry* syntax = Find(scan, "syntax");
  ASSERT_NE(syntax, nullptr);
  EXPECT_EQ(syntax->status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(syntax->status.message()),
              HasSubstr(absl::StrCat(Path("syntax/config.pbtxt"), ":2:9: ")));

  const ModelEntry* no_versions = Find(scan, "no_versions");
  ASSERT_NE(no_versions, nullptr);
  EXPECT_EQ(no_versions->status.code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(no_versions->status.message()), HasSubstr(Path("no_versions")));
  EXPECT_THAT(no_versions->versions, IsEmpty());

  const ModelEntry* empty_version = Find(scan, "empty_version");
  ASSERT_NE(empty_version, nullptr);
  EXPECT_EQ(empty_version->status.code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(empty_version->status.message()), HasSubstr(Path("empty_version/1")));
  EXPECT_THAT(std::string(empty_version->status.message()), HasSubstr("weights.safetensors"));

  const ModelEntry* only_named = Find(scan, "only_named");
  ASSERT_NE(only_named, nullptr);
  EXPECT_EQ(only_named->status.code(), absl::StatusCode::kNotFound);

  const ModelEntry* mismatch = Find(scan, "mismatch");
  ASSERT_NE(mismatch, nullptr);
  EXPECT_EQ(mismatch->status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(mismatch->status.message()), HasSubstr(Path("mismatch/config.pbtxt")));
  EXPECT_THAT(std::string(mismatch->status.message()), HasSubstr("name"));
  EXPECT_THAT(std::string(mismatch->status.message()), HasSubstr("\"other\""));
  EXPECT_EQ(mismatch->versions.size(), 1u);

  // Folder by folder in name order, so the list is the same on every run.
  EXPECT_THAT(scan.warnings, ElementsAre(HasSubstr(Path("good/01")), HasSubstr(Path("good/latest")),
                                         HasSubstr(Path("good/2")), HasSubstr(Path("no_config")),
                                         HasSubstr(Path("only_named/v1"))));
  EXPECT_THAT(scan.warnings[2], HasSubstr("weights.safetensors"));
  EXPECT_THAT(scan.warnings[3], HasSubstr("config.pbtxt"));
}

TEST_F(ModelRepositoryTest, EmptyRepositoryHasNoModels) {
  const RepositoryScan scan = ScanOrDie();
  EXPECT_THAT(scan.models, IsEmpty());
  EXPECT_THAT(scan.warnings, IsEmpty());
}

TEST_F(ModelRepositoryTest, VersionNamesMustBeCanonicalPositiveIntegers) {
  Write("m/config.pbtxt", HippoConfig("m"));
  for (const char* name : {"0", "-1", "+2", "1.0", "1e3", " 4", "99999999999999999999"}) {
    Write(absl::StrCat("m/", name, "/weights.safetensors"), "w");
  }
  Write("m/9223372036854775807/weights.safetensors", "w");
  Write("m/12/weights.safetensors", "w");
  const RepositoryScan scan = ScanOrDie();
  ASSERT_EQ(scan.models.size(), 1u);
  EXPECT_TRUE(scan.models[0].status.ok()) << scan.models[0].status;
  std::vector<int64_t> versions;
  for (const auto& [version, path] : scan.models[0].versions) versions.push_back(version);
  EXPECT_THAT(versions, ElementsAre(12, int64_t{9223372036854775807}));
  EXPECT_EQ(scan.warnings.size(), 7u);
}

TEST_F(ModelRepositoryTest, WeightsMustBeAFile) {
  Write("m/config.pbtxt", HippoConfig("m"));
  MakeDir("m/1/weights.safetensors");
  const RepositoryScan scan = ScanOrDie();
  ASSERT_EQ(scan.models.size(), 1u);
  EXPECT_EQ(scan.models[0].status.code(), absl::StatusCode::kNotFound);
}

TEST_F(ModelRepositoryTest, FollowsSymlinkedModelsAndVersions) {
  Write("store/config.pbtxt", HippoConfig("m"));
  Write("weights/w.safetensors", "w");
  MakeDir("m");
  std::error_code error;
  fs::create_symlink(Path("store/config.pbtxt"), Path("m/config.pbtxt"), error);
  ASSERT_FALSE(error) << error.message();
  fs::create_directory_symlink(Path("weights"), Path("m/1"), error);
  ASSERT_FALSE(error) << error.message();
  fs::create_symlink(Path("weights/w.safetensors"), Path("weights/weights.safetensors"), error);
  ASSERT_FALSE(error) << error.message();

  const RepositoryScan scan = ScanOrDie();
  const ModelEntry* m = Find(scan, "m");
  ASSERT_NE(m, nullptr);
  EXPECT_TRUE(m->status.ok()) << m->status;
  EXPECT_EQ(m->versions.size(), 1u);
}

TEST_F(ModelRepositoryTest, MissingRepositoryIsNotFound) {
  const std::string path = Path("absent");
  const absl::StatusOr<RepositoryScan> scan = ScanRepository(path);
  EXPECT_EQ(scan.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(scan.status().message()), HasSubstr(path));
}

TEST_F(ModelRepositoryTest, FileAsRepositoryIsNotFound) {
  const std::string path = Write("file", "x");
  const absl::StatusOr<RepositoryScan> scan = ScanRepository(path);
  EXPECT_EQ(scan.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(scan.status().message()), HasSubstr(path));
}

TEST_F(ModelRepositoryTest, TrailingSlashGivesTheSamePaths) {
  Write("m/config.pbtxt", HippoConfig("m"));
  Write("m/1/weights.safetensors", "w");
  absl::StatusOr<RepositoryScan> scan = ScanRepository(repo_ + "/");
  ASSERT_TRUE(scan.ok()) << scan.status();
  ASSERT_EQ(scan->models.size(), 1u);
  EXPECT_TRUE(scan->models[0].status.ok()) << scan->models[0].status;
  EXPECT_EQ(scan->models[0].versions.at(1), Path("m/1/weights.safetensors"));
}

// Loading: each model's weights are its own business. A truncated file, a
// NaN weight or a missing tensor fails that model (or version) only.
TEST_F(ModelRepositoryTest, OneBadModelNeverStopsTheOthersLoading) {
  auto spec_of = [](const std::string& text) {
    return *ParseModelConfigText(text, "test");
  };
  auto weights = [&](const std::string& config, uint64_t seed) {
    return *SerializeSafeTensors(*InitS4StackWeights(spec_of(config), seed));
  };
  Write("good/config.pbtxt", S4Config("good", 8));
  Write("good/1/weights.safetensors", weights(S4Config("good", 8), 1));
  Write("good/2/weights.safetensors", weights(S4Config("good", 8), 2));
  // Version 3 is truncated: the other two still serve.
  const std::string w3 = weights(S4Config("good", 8), 3);
  Write("good/3/weights.safetensors", w3.substr(0, w3.size() / 2));
  Write("wrong_state/config.pbtxt", S4Config("wrong_state", 6));
  Write("wrong_state/1/weights.safetensors", weights(S4Config("wrong_state", 8), 1));
  Write("hippo/config.pbtxt", HippoConfig("hippo"));
  Write("hippo/1/weights.safetensors", *SerializeSafeTensors(*HippoMemoryWeights(
                                            spec_of(HippoConfig("hippo")))));
  Write("broken/config.pbtxt", "name: \"broken\" d_input: {");

  absl::StatusOr<LoadedRepository> repo = LoadRepository(repo_);
  ASSERT_TRUE(repo.ok()) << repo.status();
  ASSERT_EQ(repo->models.count("good"), 1u);
  EXPECT_EQ(repo->models["good"].size(), 2u);
  EXPECT_EQ(repo->models.count("hippo"), 1u);
  EXPECT_EQ(repo->models.count("wrong_state"), 0u);
  EXPECT_EQ(repo->models.count("broken"), 0u);
  ASSERT_EQ(repo->errors.count("good"), 1u);
  EXPECT_EQ(repo->errors["good"].code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(repo->errors["good"].message()),
              HasSubstr("version 3: " + Path("good/3/weights.safetensors")));
  EXPECT_EQ(repo->errors["wrong_state"].code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(repo->errors["wrong_state"].message()),
              HasSubstr("s4_layers.0.layer.kernel.A_real' has shape [4, 4], expected [4, 3]"));
  EXPECT_EQ(repo->errors["broken"].code(), absl::StatusCode::kInvalidArgument);

  // The models that loaded answer.
  const std::shared_ptr<const Model>& m = repo->models["good"][2];
  std::vector<double> x(4 * 10, 0.5), y(4 * 10);
  EXPECT_TRUE(m->Forward(x, 1, 10, absl::MakeSpan(y)).ok());
}

TEST_F(ModelRepositoryTest, LoadingAMissingRepositoryIsNotFound) {
  EXPECT_EQ(LoadRepository(Path("nowhere")).status().code(), absl::StatusCode::kNotFound);
}

}  // namespace
}  // namespace ssm::server
