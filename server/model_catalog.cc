#include "server/model_catalog.h"

#include <set>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "server/echo.h"

namespace ssm::server {

ModelCatalog::ModelCatalog(LoadedRepository repository)
    : errors_(std::move(repository.errors)), warnings_(std::move(repository.warnings)) {
  for (auto& [name, versions] : repository.models) {
    if (versions.empty()) continue;
    auto& served = models_[name];
    for (auto& [version, model] : versions) {
      ServedModel entry{name, version, model};
      served.emplace(version, std::move(entry));
      ++loaded_versions_;
    }
  }
}

absl::StatusOr<ServedModel> ModelCatalog::Find(absl::string_view name, int64_t version) const {
  auto it = models_.find(name);
  if (it == models_.end()) {
    auto failed = errors_.find(std::string(name));
    if (failed != errors_.end()) {
      return absl::NotFoundError(absl::StrCat("model '", Echo(name), "' is not served: it failed to load: ",
                                              failed->second.message()));
    }
    return absl::NotFoundError(absl::StrCat("model '", Echo(name), "' is not served (ListModels shows ",
                                            "the models this server has)"));
  }
  const auto& versions = it->second;
  if (version == 0) return versions.rbegin()->second;
  auto v = versions.find(version);
  if (v == versions.end()) {
    std::vector<int64_t> have;
    for (const auto& [number, unused] : versions) have.push_back(number);
    return absl::NotFoundError(absl::StrCat("model '", Echo(name), "' has no version ", version,
                                            " (loaded: ", absl::StrJoin(have, ", "), ")"));
  }
  return v->second;
}

absl::StatusOr<ModelCatalog::Resumed> ModelCatalog::ResumeSession(
    absl::string_view name, int64_t version, absl::string_view snapshot) const {
  std::vector<ServedModel> candidates;
  if (version != 0) {
    absl::StatusOr<ServedModel> one = Find(name, version);
    if (!one.ok()) return one.status();
    candidates.push_back(*std::move(one));
  } else {
    absl::StatusOr<ServedModel> newest = Find(name, 0);
    if (!newest.ok()) return newest.status();
    const auto& versions = models_.find(name)->second;
    for (auto v = versions.rbegin(); v != versions.rend(); ++v) candidates.push_back(v->second);
  }
  absl::Status first_error;
  const std::string_view bytes(snapshot.data(), snapshot.size());
  for (const ServedModel& candidate : candidates) {
    absl::StatusOr<ssm::Session> session = ssm::Session::Import(candidate.model, bytes);
    if (session.ok()) return Resumed{candidate, *std::move(session)};
    // Corruption does not depend on the version tried: stop at once.
    if (session.status().code() != absl::StatusCode::kFailedPrecondition) {
      return session.status();
    }
    if (first_error.ok()) first_error = session.status();
  }
  if (candidates.size() == 1) return first_error;
  return absl::FailedPreconditionError(
      absl::StrCat(first_error.message(), " (none of the ", candidates.size(), " versions of '",
                   name, "' has the snapshot's weights)"));
}

ssm::ConvMode::CacheStats ModelCatalog::KernelCacheTotals() const {
  ssm::ConvMode::CacheStats total;
  for (const auto& [name, versions] : models_) {
    for (const auto& [version, served] : versions) {
      const ssm::ConvMode::CacheStats s = served.model->kernel_cache_stats();
      total.hits += s.hits;
      total.misses += s.misses;
      total.spectra_bytes += s.spectra_bytes;
    }
  }
  return total;
}

std::vector<ModelListing> ModelCatalog::List() const {
  std::set<std::string> names;
  for (const auto& [name, unused] : models_) names.insert(name);
  for (const auto& [name, unused] : errors_) names.insert(name);
  std::vector<ModelListing> out;
  for (const std::string& name : names) {
    ModelListing listing{name, {}, {}};
    if (auto it = models_.find(name); it != models_.end()) {
      for (const auto& [version, unused] : it->second) listing.versions.push_back(version);
    }
    if (auto it = errors_.find(name); it != errors_.end()) {
      listing.error = std::string(it->second.message());
    }
    out.push_back(std::move(listing));
  }
  return out;
}

}  // namespace ssm::server
