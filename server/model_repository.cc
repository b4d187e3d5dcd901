#include "server/model_repository.h"

#include <algorithm>
#include <filesystem>
#include <optional>
#include <system_error>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/string_view.h"
#include "server/model_config.h"

namespace ssm::server {
namespace {

namespace fs = std::filesystem;

// std::filesystem reports POSIX errno values on the platforms we build for.
absl::Status FileSystemError(const fs::path& path, absl::string_view what,
                             const std::error_code& error) {
  return absl::ErrnoToStatus(error.value(), absl::StrCat(path.string(), ": ", what));
}

bool IsHidden(const std::string& name) { return !name.empty() && name[0] == '.'; }

// The entries of `dir` by name, sorted so that models, versions and warnings
// come out in the same order on every file system.
absl::StatusOr<std::vector<std::string>> ListNames(const fs::path& dir) {
  std::error_code error;
  fs::directory_iterator it(dir, error);
  std::vector<std::string> names;
  for (const fs::directory_iterator end; !error && it != end; it.increment(error)) {
    names.push_back(it->path().filename().string());
  }
  if (error) return FileSystemError(dir, "cannot list", error);
  std::sort(names.begin(), names.end());
  return names;
}

bool IsDirectory(const fs::path& path) {
  std::error_code error;  // Unreadable counts as absent: the caller skips it.
  return fs::is_directory(path, error);
}

// Canonical decimal only: "01" next to "1" would be two folders for one
// version.
std::optional<int64_t> ParseVersion(const std::string& name) {
  if (name.empty() || name[0] == '0') return std::nullopt;
  if (!std::all_of(name.begin(), name.end(), [](char c) { return absl::ascii_isdigit(c); })) {
    return std::nullopt;
  }
  int64_t version = 0;
  if (!absl::SimpleAtoi(name, &version)) return std::nullopt;  // overflow
  return version;
}

// Fills entry.versions; returns the model's status as far as versions go.
absl::Status ScanVersions(ModelEntry& entry, std::vector<std::string>& warnings) {
  const fs::path dir(entry.dir);
  absl::StatusOr<std::vector<std::string>> names = ListNames(dir);
  if (!names.ok()) return names.status();

  std::vector<std::string> without_weights;
  for (const std::string& name : *names) {
    const fs::path folder = dir / name;
    if (IsHidden(name) || !IsDirectory(folder)) continue;
    const std::optional<int64_t> version = ParseVersion(name);
    if (!version.has_value()) {
      warnings.push_back(absl::StrCat(folder.string(),
                                      ": not a version folder (versions are named 1, 2, ...: no "
                                      "sign, no leading zeros); skipped"));
      continue;
    }
    const fs::path weights = folder / kWeightsFileName;
    std::error_code error;
    if (fs::is_regular_file(weights, error)) {
      entry.versions.emplace(*version, weights.string());
    } else {
      without_weights.push_back(folder.string());
    }
  }

  if (entry.versions.empty()) {
    if (without_weights.empty()) {
      return absl::NotFoundError(
          absl::StrCat(dir.string(), ": no version folder (<version>/", kWeightsFileName, ")"));
    }
    return absl::NotFoundError(absl::StrCat(dir.string(), ": no usable version (no ",
                                            kWeightsFileName, " in ",
                                            absl::StrJoin(without_weights, ", "), ")"));
  }
  for (const std::string& folder : without_weights) {
    warnings.push_back(absl::StrCat(folder, ": no ", kWeightsFileName, "; version skipped"));
  }
  return absl::OkStatus();
}

ModelEntry ScanModel(const fs::path& dir, const std::string& name,
                     std::vector<std::string>& warnings) {
  ModelEntry entry;
  entry.name = name;
  entry.dir = dir.string();

  const std::string config_path = (dir / kConfigFileName).string();
  absl::StatusOr<ssm::ModelSpec> spec = ReadModelConfig(config_path);
  if (!spec.ok()) {
    entry.status = spec.status();
  } else if (spec->name != name) {
    // Clients address models by folder name; a config naming another model
    // is most likely a copied folder whose config was not edited.
    entry.status = absl::InvalidArgumentError(absl::StrCat(
        config_path, ": name: \"", spec->name, "\" differs from the folder name \"", name, "\""));
  } else {
    entry.spec = *std::move(spec);
  }

  // Versions are listed even for a bad config, so an operator fixing the
  // model sees which versions are waiting for it. The config's error, if
  // any, stays the model's status: it is the one to fix first.
  absl::Status versions = ScanVersions(entry, warnings);
  if (entry.status.ok()) entry.status = std::move(versions);
  if (!entry.status.ok()) entry.spec = ssm::ModelSpec();
  return entry;
}

}  // namespace

absl::StatusOr<RepositoryScan> ScanRepository(const std::string& repo_path) {
  const fs::path repo(repo_path);
  std::error_code error;
  const fs::file_status status = fs::status(repo, error);
  if (status.type() == fs::file_type::not_found) {
    return absl::NotFoundError(absl::StrCat(repo_path, ": model repository does not exist"));
  }
  if (error) return FileSystemError(repo, "cannot read the model repository", error);
  if (!fs::is_directory(status)) {
    return absl::NotFoundError(absl::StrCat(repo_path, ": model repository is not a directory"));
  }

  absl::StatusOr<std::vector<std::string>> names = ListNames(repo);
  if (!names.ok()) return names.status();

  RepositoryScan scan;
  for (const std::string& name : *names) {
    const fs::path dir = repo / name;
    if (IsHidden(name) || !IsDirectory(dir)) continue;
    // Only a config that is surely absent means "not a model"; any other
    // trouble reading it is that model's error, reported by ScanModel.
    if (fs::status(dir / kConfigFileName, error).type() == fs::file_type::not_found) {
      scan.warnings.push_back(
          absl::StrCat(dir.string(), ": no ", kConfigFileName, "; not a model, skipped"));
      continue;
    }
    scan.models.push_back(ScanModel(dir, name, scan.warnings));
  }
  return scan;
}

absl::StatusOr<LoadedRepository> LoadRepository(const std::string& repo_path) {
  absl::StatusOr<RepositoryScan> scan = ScanRepository(repo_path);
  if (!scan.ok()) return scan.status();
  LoadedRepository out;
  out.warnings = std::move(scan->warnings);
  for (const ModelEntry& entry : scan->models) {
    if (!entry.status.ok()) {
      out.errors.emplace(entry.name, entry.status);
      continue;
    }
    for (const auto& [version, path] : entry.versions) {
      absl::StatusOr<ssm::SafeTensors> file = ssm::SafeTensors::ReadFile(path);
      absl::StatusOr<std::shared_ptr<const ssm::Model>> model =
          file.ok() ? ssm::LoadModel(entry.spec, &*file)
                    : absl::StatusOr<std::shared_ptr<const ssm::Model>>(file.status());
      if (model.ok()) {
        out.models[entry.name].emplace(version, *std::move(model));
      } else if (!out.errors.count(entry.name)) {
        out.errors.emplace(entry.name,
                           absl::Status(model.status().code(),
                                        absl::StrCat("version ", version, ": ",
                                                     model.status().message())));
      }
    }
  }
  return out;
}

}  // namespace ssm::server
