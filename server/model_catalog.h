// The models ssm_server serves: a loaded repository (model_repository.h)
// frozen into lookup tables, plus what the wire API reports about each.
//
// Lookups: version 0 means the newest loaded version. Errors are NotFound
// naming what is missing: an unknown model, a model that failed to load
// (with the reason), or a version that is not loaded (listing the ones that
// are).
//
// Thread safety: immutable after construction; every method may run
// concurrently.

#ifndef SSM_SERVER_MODEL_CATALOG_H_
#define SSM_SERVER_MODEL_CATALOG_H_

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "server/model_repository.h"
#include "ssm/model.h"
#include "ssm/session.h"

namespace ssm::server {

// One loaded version of a model.
struct ServedModel {
  std::string name;
  int64_t version = 0;
  std::shared_ptr<const ssm::Model> model;
};

// A model as ListModels reports it.
struct ModelListing {
  std::string name;
  std::vector<int64_t> versions;  // loaded, ascending
  std::string error;              // empty when every version loaded
};

class ModelCatalog {
 public:
  explicit ModelCatalog(LoadedRepository repository);

  absl::StatusOr<ServedModel> Find(absl::string_view name, int64_t version) const;

  // A session continuing `snapshot` (Session::ExportState bytes) on model
  // `name`. With version > 0 only that version is tried; with version 0 the
  // loaded versions are tried newest first and the first whose weights the
  // snapshot belongs to wins. Errors: NotFound as Find; DataLoss for a
  // corrupted snapshot; FailedPrecondition when it belongs to none of the
  // tried versions (the core's message, naming both models).
  struct Resumed {
    ServedModel served;
    ssm::Session session;
  };
  absl::StatusOr<Resumed> ResumeSession(absl::string_view name, int64_t version,
                                        absl::string_view snapshot) const;

  // Every model of the repository, loaded or not, sorted by name.
  std::vector<ModelListing> List() const;

  // The kernel caches of every loaded version, summed (for metrics).
  ssm::ConvMode::CacheStats KernelCacheTotals() const;

  int loaded_models() const { return static_cast<int>(models_.size()); }
  int loaded_versions() const { return loaded_versions_; }
  int failed_models() const { return static_cast<int>(errors_.size()); }
  const std::map<std::string, absl::Status>& errors() const { return errors_; }
  const std::vector<std::string>& warnings() const { return warnings_; }

 private:
  // name -> version -> model; every inner map is non-empty.
  std::map<std::string, std::map<int64_t, ServedModel>, std::less<>> models_;
  std::map<std::string, absl::Status> errors_;
  std::vector<std::string> warnings_;
  int loaded_versions_ = 0;
};

}  // namespace ssm::server

#endif  // SSM_SERVER_MODEL_CATALOG_H_
