// Weight files in the safetensors format: an 8-byte little-endian header
// length N, N bytes of UTF-8 JSON mapping each tensor name to
// {"dtype", "shape", "data_offsets": [begin, end)} (offsets relative to the
// first byte after the header) plus an optional "__metadata__" object of
// strings, then the raw little-endian row-major data.
//
// Reading validates the whole header before any data is touched: every
// dtype, shape and offset, that each tensor's byte range lies inside the data
// section and matches its shape, and that no two ranges overlap. A file that
// parses can therefore be read without further bounds checks. Dtypes F32,
// F64 and I64 are supported; the others the format defines (BF16, F16, I32,
// ...) are rejected with a message saying so. A scalar has shape [] and one
// element; zero-size tensors are allowed. I64 values beyond 2^53 are rounded
// when read as double.
//
// Errors: ReadFile's I/O errors are ssm/file_io.h's (NotFound for a missing
// file, PermissionDenied, FailedPrecondition for a directory or anything
// else that is not a regular file); everything malformed is InvalidArgument
// with a message naming the source (the path), and where relevant the
// tensor and field.
// Writing gives InvalidArgument for bad tensors (duplicate or reserved names,
// negative dims, values.size() != product(shape), non-finite values, values
// out of range for the dtype) and an errno-derived code naming the path for
// I/O failures.
//
// Thread safety: a SafeTensors is immutable; const methods may run
// concurrently, and copies share the bytes.

#ifndef SSM_SAFETENSORS_H_
#define SSM_SAFETENSORS_H_

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace ssm {

enum class DType { kF32, kF64, kI64 };

std::string_view DTypeName(DType dtype);  // "F32", "F64", "I64"
int DTypeSize(DType dtype);               // bytes per element

struct TensorInfo {
  std::string name;
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;  // [] for a scalar

  int64_t num_elements() const;  // 1 for a scalar, 0 if any dim is 0
};

class SafeTensors {
 public:
  // Reads and validates the whole file into memory.
  static absl::StatusOr<SafeTensors> ReadFile(const std::string& path);
  // The same validation on bytes already in memory; `source` names them in
  // messages (e.g. the path they came from).
  static absl::StatusOr<SafeTensors> Parse(std::string bytes, std::string source);

  const std::string& source() const;
  std::vector<std::string> names() const;  // sorted
  bool contains(std::string_view name) const;
  const TensorInfo* info(std::string_view name) const;  // nullptr if absent
  const std::map<std::string, std::string>& metadata() const;

  // The values converted to double, row-major. NotFound naming the source
  // and tensor if it is absent; InvalidArgument if `expected_shape` is given
  // and differs (both shapes in the message) or if a value is NaN or Inf
  // (its index in the message).
  absl::StatusOr<std::vector<double>> ReadDoubles(
      std::string_view name,
      std::optional<std::vector<int64_t>> expected_shape = std::nullopt) const;

 private:
  struct Rep;
  explicit SafeTensors(std::shared_ptr<const Rep> rep);
  std::shared_ptr<const Rep> rep_;
};

struct TensorToWrite {
  std::string name;
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;
  std::vector<double> values;  // row-major; converted to dtype on write
};

// The file's bytes: tensors laid out contiguously in name order, the header
// padded with spaces so the data starts 8-byte aligned. F32 rounds to
// nearest; I64 requires integral values.
absl::StatusOr<std::string> SerializeSafeTensors(
    const std::vector<TensorToWrite>& tensors,
    const std::map<std::string, std::string>& metadata = {});

// Serializes and writes atomically: a temporary file in the same directory,
// fsync, then rename over `path`, so readers see the old file or the new one.
absl::Status WriteSafeTensors(const std::string& path,
                              const std::vector<TensorToWrite>& tensors,
                              const std::map<std::string, std::string>& metadata = {});

}  // namespace ssm

#endif  // SSM_SAFETENSORS_H_
