// Scanning a model repository laid out like Triton's, without loading any
// weights:
//
//   <repo>/<model>/config.pbtxt               a ModelConfig (model_config.h)
//   <repo>/<model>/<version>/weights.safetensors
//
// One bad model never hides the others: ScanRepository fails only when the
// repository itself cannot be listed, and each model's entry carries its own
// status. Thread safety: ScanRepository may run concurrently; it reads the
// file system as it is while it runs (no snapshot across folders).

#ifndef SSM_SERVER_MODEL_REPOSITORY_H_
#define SSM_SERVER_MODEL_REPOSITORY_H_

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "ssm/model.h"
#include "ssm/model_spec.h"

namespace ssm::server {

inline constexpr char kConfigFileName[] = "config.pbtxt";
inline constexpr char kWeightsFileName[] = "weights.safetensors";

struct ModelEntry {
  std::string name;  // folder name
  std::string dir;   // <repo>/<name>
  // OK, or why this model cannot be served, the message naming the file (and
  // the field for config errors): InvalidArgument for a bad config.pbtxt or a
  // config name that differs from the folder name; NotFound when no version
  // folder holds weights.safetensors; the file system's error otherwise.
  absl::Status status;
  ssm::ModelSpec spec;  // valid when status.ok()
  // Version number -> path of its weights.safetensors: only folders named by
  // a positive decimal integer (no sign, no leading zeros) holding that file.
  std::map<int64_t, std::string> versions;
};

struct RepositoryScan {
  std::vector<ModelEntry> models;  // sorted by name
  // What was skipped without making a model unservable, one sentence each
  // naming the path: folders without config.pbtxt, version folders with a
  // non-numeric name, numbered folders without weights while another
  // version has them. Deterministic order.
  std::vector<std::string> warnings;
};

// Lists <repo>/*/config.pbtxt. NotFound naming the path if repo_path is
// missing or not a directory; the file system's error if it cannot be
// listed. Entries whose name starts with '.' are skipped silently (editor
// and VCS folders), as are plain files at either level.
absl::StatusOr<RepositoryScan> ScanRepository(const std::string& repo_path);

// A scanned repository with every version of every servable model loaded.
struct LoadedRepository {
  // name -> version -> model, for the versions that loaded.
  std::map<std::string, std::map<int64_t, std::shared_ptr<const ssm::Model>>> models;
  // name -> why it (or one of its versions) is not served: the scan's error,
  // or the first version that failed to load, naming its file and tensor.
  std::map<std::string, absl::Status> errors;
  std::vector<std::string> warnings;  // the scan's
};

// Scans and loads. A model whose config or weights are bad lands in
// `errors` and never keeps the others from loading; a version that fails
// does not hide the model's other versions. NotFound if the repository
// itself is missing.
absl::StatusOr<LoadedRepository> LoadRepository(const std::string& repo_path);

}  // namespace ssm::server

#endif  // SSM_SERVER_MODEL_REPOSITORY_H_
