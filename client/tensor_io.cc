#include "client/tensor_io.h"

#include <bit>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iostream>
#include <iterator>
#include <vector>

#include <google/protobuf/io/coded_stream.h>
#include <google/protobuf/io/zero_copy_stream_impl_lite.h>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "ssm/file_io.h"

namespace ssm::client {
namespace {

constexpr char kNpyMagic[] = "\x93NUMPY";
constexpr size_t kNpyMagicSize = 6;

bool EndsWith(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() &&
         s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// The value of `key` in a .npy header dict, up to the next top-level
// comma or the closing brace ("'<f4'", "False", "(3, 2)").
absl::StatusOr<std::string> NpyHeaderValue(const std::string& header,
                                           const std::string& key) {
  const std::string quoted[] = {"'" + key + "'", "\"" + key + "\""};
  size_t at = std::string::npos;
  for (const std::string& q : quoted) {
    at = header.find(q);
    if (at != std::string::npos) {
      at += q.size();
      break;
    }
  }
  if (at == std::string::npos) {
    return absl::InvalidArgumentError(
        absl::StrCat(".npy header has no '", key, "': ", header));
  }
  at = header.find(':', at);
  if (at == std::string::npos) {
    return absl::InvalidArgumentError(
        absl::StrCat(".npy header: no value for '", key, "'"));
  }
  ++at;
  int depth = 0;
  size_t end = at;
  for (; end < header.size(); ++end) {
    const char c = header[end];
    if (c == '(') ++depth;
    if (c == ')') --depth;
    if (depth == 0 && (c == ',' || c == '}')) break;
  }
  return std::string(absl::StripAsciiWhitespace(
      absl::string_view(header).substr(at, end - at)));
}

template <typename T>
T LoadLittleOrBig(const char* p, bool big_endian) {
  unsigned char bytes[sizeof(T)];
  std::memcpy(bytes, p, sizeof(T));
  if (big_endian != (std::endian::native == std::endian::big)) {
    for (size_t i = 0; i < sizeof(T) / 2; ++i) {
      std::swap(bytes[i], bytes[sizeof(T) - 1 - i]);
    }
  }
  T value;
  std::memcpy(&value, bytes, sizeof(T));
  return value;
}

}  // namespace

absl::StatusOr<Tensor> ParseCsv(const std::string& text) {
  std::vector<float> values;
  int64_t rows = 0, cols = -1;
  int line_number = 0;
  bool first_row = true;
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    ++line_number;
    line = absl::StripAsciiWhitespace(line);
    if (line.empty() || line.front() == '#') continue;
    std::vector<absl::string_view> fields = absl::StrSplit(line, ',');
    std::vector<float> row;
    row.reserve(fields.size());
    int bad_column = 0;
    for (size_t c = 0; c < fields.size(); ++c) {
      float v;
      if (!absl::SimpleAtof(absl::StripAsciiWhitespace(fields[c]), &v)) {
        bad_column = static_cast<int>(c) + 1;
        break;
      }
      row.push_back(v);
    }
    if (bad_column != 0) {
      if (first_row) {  // a header
        first_row = false;
        continue;
      }
      return absl::InvalidArgumentError(absl::StrCat(
          "CSV line ", line_number, ", column ", bad_column, ": '",
          absl::StripAsciiWhitespace(fields[bad_column - 1]),
          "' is not a number"));
    }
    first_row = false;
    if (cols < 0) cols = static_cast<int64_t>(row.size());
    if (static_cast<int64_t>(row.size()) != cols) {
      return absl::InvalidArgumentError(
          absl::StrCat("CSV line ", line_number, ": ", row.size(),
                       " columns, the first row has ", cols));
    }
    values.insert(values.end(), row.begin(), row.end());
    ++rows;
  }
  if (rows == 0) return absl::InvalidArgumentError("CSV input has no rows");
  return Tensor{{1, rows, cols}, std::move(values)};
}

std::string FormatCsv(const Tensor& tensor) {
  std::string out;
  const int64_t batch = tensor.shape.size() == 3 ? tensor.shape[0] : 1;
  const int64_t cols = tensor.shape.empty() ? 1 : tensor.shape.back();
  const int64_t rows =
      cols == 0 ? 0 : static_cast<int64_t>(tensor.values.size()) / cols / batch;
  char buffer[32];
  for (int64_t b = 0; b < batch; ++b) {
    if (batch > 1) absl::StrAppend(&out, "# batch ", b, "\n");
    for (int64_t r = 0; r < rows; ++r) {
      for (int64_t c = 0; c < cols; ++c) {
        std::snprintf(buffer, sizeof(buffer), "%.9g",
                      tensor.values[(b * rows + r) * cols + c]);
        absl::StrAppend(&out, c ? "," : "", buffer);
      }
      out.push_back('\n');
    }
  }
  return out;
}

absl::StatusOr<Tensor> ParseNpy(const std::string& bytes) {
  if (bytes.size() < kNpyMagicSize + 4 ||
      bytes.compare(0, kNpyMagicSize, kNpyMagic, kNpyMagicSize) != 0) {
    return absl::InvalidArgumentError("not a .npy file (bad magic)");
  }
  const int major = static_cast<unsigned char>(bytes[6]);
  size_t header_len, header_at;
  if (major == 1) {
    header_len = LoadLittleOrBig<uint16_t>(bytes.data() + 8, false);
    header_at = 10;
  } else if (major == 2 || major == 3) {
    if (bytes.size() < 12) return absl::InvalidArgumentError(".npy truncated");
    header_len = LoadLittleOrBig<uint32_t>(bytes.data() + 8, false);
    header_at = 12;
  } else {
    return absl::InvalidArgumentError(
        absl::StrCat(".npy format version ", major, " is not supported"));
  }
  if (bytes.size() < header_at + header_len) {
    return absl::InvalidArgumentError(".npy header is truncated");
  }
  const std::string header = bytes.substr(header_at, header_len);

  absl::StatusOr<std::string> descr = NpyHeaderValue(header, "descr");
  if (!descr.ok()) return descr.status();
  std::string dtype = *descr;
  if (dtype.size() >= 2 && (dtype.front() == '\'' || dtype.front() == '"')) {
    dtype = dtype.substr(1, dtype.size() - 2);
  }
  bool big_endian;
  size_t item_size;
  if (dtype == "<f4" || dtype == ">f4") {
    item_size = 4;
  } else if (dtype == "<f8" || dtype == ">f8") {
    item_size = 8;
  } else {
    return absl::InvalidArgumentError(absl::StrCat(
        ".npy dtype ", dtype, " is not supported (float32 or float64)"));
  }
  big_endian = dtype.front() == '>';

  absl::StatusOr<std::string> order = NpyHeaderValue(header, "fortran_order");
  if (!order.ok()) return order.status();
  if (*order != "False") {
    return absl::InvalidArgumentError(
        ".npy array is in Fortran order; save it C-ordered");
  }

  absl::StatusOr<std::string> shape_text = NpyHeaderValue(header, "shape");
  if (!shape_text.ok()) return shape_text.status();
  absl::string_view inner = *shape_text;
  if (!absl::ConsumePrefix(&inner, "(") || !absl::ConsumeSuffix(&inner, ")")) {
    return absl::InvalidArgumentError(
        absl::StrCat(".npy shape is not a tuple: ", *shape_text));
  }
  std::vector<int64_t> shape;
  for (absl::string_view d : absl::StrSplit(inner, ',', absl::SkipWhitespace())) {
    int64_t n;
    if (!absl::SimpleAtoi(absl::StripAsciiWhitespace(d), &n) || n < 0) {
      return absl::InvalidArgumentError(
          absl::StrCat(".npy shape has a bad dimension: ", *shape_text));
    }
    shape.push_back(n);
  }
  if (shape.size() == 1) {
    shape = {1, shape[0], 1};
  } else if (shape.size() == 2) {
    shape.insert(shape.begin(), 1);
  } else if (shape.size() != 3) {
    return absl::InvalidArgumentError(absl::StrCat(
        ".npy array has ", shape.size(), " dimensions; expected [L], [L, d] or "
        "[B, L, d]"));
  }
  int64_t count = 1;
  for (int64_t d : shape) count *= d;
  const size_t data_at = header_at + header_len;
  if (bytes.size() - data_at != static_cast<size_t>(count) * item_size) {
    return absl::InvalidArgumentError(absl::StrCat(
        ".npy data is ", bytes.size() - data_at, " bytes; shape ", *shape_text,
        " of ", dtype, " needs ", count * item_size));
  }
  Tensor tensor{shape, std::vector<float>(count)};
  const char* p = bytes.data() + data_at;
  for (int64_t i = 0; i < count; ++i, p += item_size) {
    tensor.values[i] =
        item_size == 4
            ? LoadLittleOrBig<float>(p, big_endian)
            : static_cast<float>(LoadLittleOrBig<double>(p, big_endian));
  }
  return tensor;
}

std::string FormatNpy(const Tensor& tensor) {
  std::string shape = "(";
  for (size_t i = 0; i < tensor.shape.size(); ++i) {
    absl::StrAppend(&shape, i ? ", " : "", tensor.shape[i]);
  }
  if (tensor.shape.size() == 1) shape += ",";
  shape += ")";
  std::string header = absl::StrCat(
      "{'descr': '<f4', 'fortran_order': False, 'shape': ", shape, ", }");
  // Pad with spaces and a newline so the data starts 64-byte aligned, as
  // NumPy writes it (it lets readers memory-map the array).
  const size_t prefix = kNpyMagicSize + 2 + 2;
  const size_t total = (prefix + header.size() + 1 + 63) / 64 * 64;
  header.append(total - prefix - header.size() - 1, ' ');
  header.push_back('\n');

  std::string out(kNpyMagic, kNpyMagicSize);
  out.push_back('\x01');
  out.push_back('\x00');
  out.push_back(static_cast<char>(header.size() & 0xff));
  out.push_back(static_cast<char>(header.size() >> 8));
  out += header;
  const size_t data_at = out.size();
  out.resize(data_at + tensor.values.size() * 4);
  for (size_t i = 0; i < tensor.values.size(); ++i) {
    uint32_t bits = std::bit_cast<uint32_t>(tensor.values[i]);
    for (int b = 0; b < 4; ++b) {
      out[data_at + 4 * i + b] = static_cast<char>((bits >> (8 * b)) & 0xff);
    }
  }
  return out;
}

absl::StatusOr<std::string> ReadFileBytes(const std::string& path) {
  if (path == "-") {
    return std::string(std::istreambuf_iterator<char>(std::cin),
                       std::istreambuf_iterator<char>());
  }
  // Not only regular files: `--input=<(generate)` is a pipe.
  ssm::ReadFileOptions options;
  options.regular_file_only = false;
  return ssm::ReadFileToString(path, options);
}

absl::Status WriteFileBytes(const std::string& path, const std::string& bytes) {
  if (path == "-") {
    std::cout << bytes << std::flush;
    return absl::OkStatus();
  }
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  if (!out) {
    return absl::PermissionDeniedError(
        absl::StrCat("cannot write ", path, ": ", std::strerror(errno)));
  }
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  out.close();
  if (!out) return absl::DataLossError(absl::StrCat("cannot write ", path));
  return absl::OkStatus();
}

absl::StatusOr<Tensor> ReadSequence(const std::string& path) {
  absl::StatusOr<std::string> bytes = ReadFileBytes(path);
  if (!bytes.ok()) return bytes.status();
  absl::StatusOr<Tensor> tensor =
      EndsWith(path, ".npy") ? ParseNpy(*bytes) : ParseCsv(*bytes);
  if (!tensor.ok()) {
    return absl::Status(tensor.status().code(),
                        absl::StrCat(path, ": ", tensor.status().message()));
  }
  return tensor;
}

absl::Status WriteSequence(const std::string& path, const Tensor& tensor) {
  return WriteFileBytes(path, EndsWith(path, ".npy") ? FormatNpy(tensor)
                                                     : FormatCsv(tensor));
}

namespace {
// The first bytes of a snapshot's `data` (DESIGN.md section 2.14).
constexpr absl::string_view kSnapshotMagic("SSMSNAP\0", 8);
}  // namespace

std::string StateFileBytes(const ssm::v1::StateSnapshot& snapshot) {
  if (snapshot.signature().empty()) return snapshot.data();
  // Deterministic: the same snapshot always gives the same file.
  std::string bytes;
  google::protobuf::io::StringOutputStream out(&bytes);
  google::protobuf::io::CodedOutputStream coded(&out);
  coded.SetSerializationDeterministic(true);
  snapshot.SerializeToCodedStream(&coded);
  coded.Trim();
  return bytes;
}

ssm::v1::StateSnapshot ParseStateFile(const std::string& bytes) {
  ssm::v1::StateSnapshot snapshot;
  // Raw data starts with the magic; a message starts with field 1's tag
  // (0x0a), so the two cannot be mistaken for each other.
  if (!absl::StartsWith(bytes, kSnapshotMagic) &&
      snapshot.ParseFromString(bytes) &&
      absl::StartsWith(snapshot.data(), kSnapshotMagic)) {
    return snapshot;
  }
  snapshot.Clear();
  snapshot.set_data(bytes);
  return snapshot;
}

}  // namespace ssm::client
