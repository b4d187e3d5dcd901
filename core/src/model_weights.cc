#include "model_weights.h"

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace ssm::internal {

std::vector<int64_t> WeightReader::Shape(const std::string& name) const {
  const TensorInfo* info = file_.info(name);
  return info ? info->shape : std::vector<int64_t>{};
}

absl::StatusOr<std::vector<double>> WeightReader::Take(
    const std::string& name, std::initializer_list<std::vector<int64_t>> shapes) {
  const TensorInfo* info = file_.info(name);
  if (info == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat(file_.source(), ": missing tensor '", name, "'"));
  }
  bool match = false;
  std::vector<std::string> wanted;
  for (const std::vector<int64_t>& s : shapes) {
    match = match || s == info->shape;
    wanted.push_back(absl::StrCat("[", absl::StrJoin(s, ", "), "]"));
  }
  if (!match) {
    return absl::InvalidArgumentError(absl::StrCat(
        file_.source(), ": tensor '", name, "' has shape [", absl::StrJoin(info->shape, ", "),
        "], expected ", absl::StrJoin(wanted, " or ")));
  }
  used_.insert(name);
  return file_.ReadDoubles(name);
}

absl::Status WeightReader::CheckAllUsed() const {
  std::vector<std::string> unused;
  for (const std::string& name : file_.names()) {
    if (!used_.count(name)) unused.push_back(absl::StrCat("'", name, "'"));
  }
  if (unused.empty()) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat(
      file_.source(), ": unknown tensor", unused.size() > 1 ? "s " : " ",
      absl::StrJoin(unused, ", "), " (not used by this model's config)"));
}

uint64_t Fnv1a(const void* data, size_t size, uint64_t hash) {
  const auto* p = static_cast<const unsigned char*>(data);
  for (size_t i = 0; i < size; ++i) {
    hash ^= p[i];
    hash *= 1099511628211ull;
  }
  return hash;
}

}  // namespace ssm::internal
