// Reading a model's tensors by name with shape checks, and noticing tensors
// nobody asked for (a misspelt name must not silently drop a weight).

#ifndef SSM_CORE_SRC_MODEL_WEIGHTS_H_
#define SSM_CORE_SRC_MODEL_WEIGHTS_H_

#include <cstdint>
#include <initializer_list>
#include <set>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "ssm/safetensors.h"

namespace ssm::internal {

class WeightReader {
 public:
  explicit WeightReader(const SafeTensors& file) : file_(file) {}

  bool Has(const std::string& name) const { return file_.contains(name); }
  // Shape of a present tensor (empty for a scalar).
  std::vector<int64_t> Shape(const std::string& name) const;

  // The values of `name`, whose shape must be one of `shapes`.
  absl::StatusOr<std::vector<double>> Take(
      const std::string& name, std::initializer_list<std::vector<int64_t>> shapes);

  // InvalidArgument listing tensors no Take consumed.
  absl::Status CheckAllUsed() const;

  const std::string& source() const { return file_.source(); }

 private:
  const SafeTensors& file_;
  std::set<std::string> used_;
};

// FNV-1a over bytes, chained: the model fingerprint.
uint64_t Fnv1a(const void* data, size_t size, uint64_t hash = 14695981039346656037ull);

}  // namespace ssm::internal

#endif  // SSM_CORE_SRC_MODEL_WEIGHTS_H_
