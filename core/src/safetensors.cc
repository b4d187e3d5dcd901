#include "ssm/safetensors.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <bit>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <exception>
#include <functional>
#include <limits>
#include <new>
#include <set>
#include <utility>

#include <nlohmann/json.hpp>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/string_view.h"
#include "ssm/file_io.h"

namespace ssm {
namespace {

using Json = nlohmann::json;

// The format is little-endian; reading and writing by memcpy is only right
// on a little-endian host, and every platform we build for is one.
static_assert(std::endian::native == std::endian::little,
              "safetensors.cc assumes a little-endian host");

constexpr uint64_t kMaxHeaderBytes = uint64_t{100} << 20;
constexpr std::string_view kMetadataKey = "__metadata__";

// Where one tensor's bytes live, relative to the start of the data section.
struct Entry {
  TensorInfo info;
  uint64_t begin = 0;
  uint64_t end = 0;
};

// What the header says, validated against the bytes it came with.
struct Contents {
  size_t data_start = 0;  // offset of the data section in the file
  std::map<std::string, Entry, std::less<>> tensors;
  std::map<std::string, std::string> metadata;
};

}  // namespace

struct SafeTensors::Rep {
  std::string source;
  std::string bytes;
  Contents contents;
};

SafeTensors::SafeTensors(std::shared_ptr<const Rep> rep) : rep_(std::move(rep)) {}

namespace {

// This Abseil is built with its own string_view; StrCat and the escapers
// take that one.
absl::string_view AV(std::string_view s) { return absl::string_view(s.data(), s.size()); }

// Names come from untrusted files and end up in status messages (and from
// there in RPC replies and logs): escape control bytes and bound the length.
std::string Quote(std::string_view s) {
  constexpr size_t kMax = 120;
  if (s.size() <= kMax) return absl::StrCat("\"", absl::Utf8SafeCHexEscape(AV(s)), "\"");
  size_t cut = kMax;
  while (cut > 0 && (static_cast<unsigned char>(s[cut]) & 0xC0) == 0x80) --cut;
  return absl::StrCat("\"", absl::Utf8SafeCHexEscape(AV(s.substr(0, cut))), "\"...");
}

std::string ShapeString(const std::vector<int64_t>& shape) {
  return absl::StrCat("[", absl::StrJoin(shape, ", "), "]");
}

// Row-major multi-index of flat index i, for messages.
std::string IndexString(int64_t i, const std::vector<int64_t>& shape) {
  std::vector<int64_t> index(shape.size());
  for (size_t k = shape.size(); k-- > 0;) {
    index[k] = i % shape[k];
    i /= shape[k];
  }
  return ShapeString(index);
}

// The dtypes the format defines that we do not read, with what to do instead.
const char* UnsupportedDTypeHint(std::string_view name) {
  static constexpr std::string_view kFloats[] = {"BF16", "F16", "F8_E4M3", "F8_E5M2", "C64"};
  static constexpr std::string_view kInts[] = {"BOOL", "U8", "I8", "U16", "I16",
                                               "U32", "I32", "U64"};
  for (std::string_view f : kFloats) {
    if (name == f) return "convert to F32";
  }
  for (std::string_view i : kInts) {
    if (name == i) return "convert to I64";
  }
  return nullptr;
}

bool ParseDType(std::string_view name, DType* out) {
  for (DType d : {DType::kF32, DType::kF64, DType::kI64}) {
    if (name == DTypeName(d)) {
      *out = d;
      return true;
    }
  }
  return false;
}

// A JSON non-negative integer that fits in int64 (what shapes and offsets
// must be); `what` describes the value in the error message.
absl::Status GetIndex(const Json& v, absl::string_view prefix, absl::string_view what,
                      int64_t* out) {
  if (v.is_number_unsigned()) {
    const uint64_t u = v.get<uint64_t>();
    if (u > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
      return absl::InvalidArgumentError(absl::StrCat(prefix, what, " ", u, " is too large"));
    }
    *out = static_cast<int64_t>(u);
    return absl::OkStatus();
  }
  if (v.is_number_integer()) {
    return absl::InvalidArgumentError(
        absl::StrCat(prefix, what, " is negative (", v.get<int64_t>(), ")"));
  }
  // nlohmann parses integers beyond uint64 as floating point.
  return absl::InvalidArgumentError(
      absl::StrCat(prefix, what, " is not a non-negative integer (got ",
                   v.is_number_float() ? v.dump() : std::string(v.type_name()), ")"));
}

// Records where the first syntax error is. Only used to explain a header
// that failed to parse, so it builds nothing.
class SyntaxErrorFinder : public nlohmann::json_sax<Json> {
 public:
  size_t position() const { return position_; }

  bool null() override { return true; }
  bool boolean(bool) override { return true; }
  bool number_integer(number_integer_t) override { return true; }
  bool number_unsigned(number_unsigned_t) override { return true; }
  bool number_float(number_float_t, const string_t&) override { return true; }
  bool string(string_t&) override { return true; }
  bool binary(binary_t&) override { return true; }
  bool start_object(std::size_t) override { return true; }
  bool key(string_t&) override { return true; }
  bool end_object() override { return true; }
  bool start_array(std::size_t) override { return true; }
  bool end_array() override { return true; }
  bool parse_error(std::size_t position, const std::string&,
                   const nlohmann::detail::exception&) override {
    position_ = position;
    return false;
  }

 private:
  size_t position_ = 0;
};

std::string DescribeSyntaxError(std::string_view header) {
  SyntaxErrorFinder finder;
  Json::sax_parse(header.begin(), header.end(), &finder);
  const size_t pos = std::min(finder.position(), header.size());
  const size_t from = pos > 16 ? pos - 16 : 0;
  return absl::StrCat("header is not valid JSON (error near byte ", pos, " of the header: ",
                      "\"", absl::CHexEscape(AV(header.substr(from, pos - from))), "\")");
}

// Parses one tensor's entry into `entry`; `data_size` bounds its offsets.
absl::Status ParseEntry(const std::string& source, const std::string& name, const Json& v,
                        uint64_t data_size, Entry* entry) {
  const std::string prefix = absl::StrCat(source, ": tensor ", Quote(name), ": ");
  if (!v.is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(prefix, "entry is not a JSON object"));
  }
  for (const char* field : {"dtype", "shape", "data_offsets"}) {
    if (!v.contains(field)) {
      return absl::InvalidArgumentError(absl::StrCat(prefix, "missing \"", field, "\""));
    }
  }
  entry->info.name = name;

  const Json& dtype = v["dtype"];
  if (!dtype.is_string()) {
    return absl::InvalidArgumentError(absl::StrCat(prefix, "\"dtype\" is not a string"));
  }
  const std::string& dtype_name = dtype.get_ref<const std::string&>();
  if (!ParseDType(dtype_name, &entry->info.dtype)) {
    if (const char* hint = UnsupportedDTypeHint(dtype_name); hint != nullptr) {
      return absl::InvalidArgumentError(
          absl::StrCat(prefix, "dtype ", dtype_name, " is not supported; ", hint));
    }
    return absl::InvalidArgumentError(
        absl::StrCat(prefix, "unknown dtype ", Quote(dtype_name), " (supported: F32, F64, I64)"));
  }

  const Json& shape = v["shape"];
  if (!shape.is_array()) {
    return absl::InvalidArgumentError(
        absl::StrCat(prefix, "\"shape\" is not an array of integers"));
  }
  entry->info.shape.reserve(shape.size());
  for (size_t i = 0; i < shape.size(); ++i) {
    int64_t dim = 0;
    if (absl::Status s = GetIndex(shape[i], prefix, absl::StrCat("shape[", i, "]"), &dim);
        !s.ok()) {
      return s;
    }
    entry->info.shape.push_back(dim);
  }
  const int64_t n = entry->info.num_elements();
  int64_t nbytes = 0;
  if (n < 0 || __builtin_mul_overflow(n, int64_t{DTypeSize(entry->info.dtype)}, &nbytes)) {
    return absl::InvalidArgumentError(absl::StrCat(
        prefix, "element count of shape ", ShapeString(entry->info.shape), " overflows"));
  }

  const Json& offsets = v["data_offsets"];
  if (!offsets.is_array() || offsets.size() != 2) {
    return absl::InvalidArgumentError(
        absl::StrCat(prefix, "\"data_offsets\" is not an array [begin, end]"));
  }
  int64_t begin = 0, end = 0;
  if (absl::Status s = GetIndex(offsets[0], prefix, "data_offsets begin", &begin); !s.ok()) {
    return s;
  }
  if (absl::Status s = GetIndex(offsets[1], prefix, "data_offsets end", &end); !s.ok()) {
    return s;
  }
  if (begin > end) {
    return absl::InvalidArgumentError(
        absl::StrCat(prefix, "data_offsets begin ", begin, " > end ", end));
  }
  if (static_cast<uint64_t>(end) > data_size) {
    return absl::InvalidArgumentError(absl::StrCat(
        prefix, "data_offsets end ", end, " is beyond the data section (", data_size, " bytes)"));
  }
  if (end - begin != nbytes) {
    return absl::InvalidArgumentError(absl::StrCat(
        prefix, "data_offsets span ", end - begin, " bytes but shape ",
        ShapeString(entry->info.shape), " of ", AV(DTypeName(entry->info.dtype)), " needs ",
        nbytes));
  }
  entry->begin = static_cast<uint64_t>(begin);
  entry->end = static_cast<uint64_t>(end);
  return absl::OkStatus();
}

}  // namespace

std::string_view DTypeName(DType dtype) {
  switch (dtype) {
    case DType::kF32:
      return "F32";
    case DType::kF64:
      return "F64";
    case DType::kI64:
      return "I64";
  }
  return "?";
}

int DTypeSize(DType dtype) {
  switch (dtype) {
    case DType::kF32:
      return 4;
    case DType::kF64:
    case DType::kI64:
      return 8;
  }
  return 0;
}

int64_t TensorInfo::num_elements() const {
  for (int64_t d : shape) {
    if (d < 0) return -1;
  }
  for (int64_t d : shape) {
    if (d == 0) return 0;
  }
  int64_t n = 1;
  for (int64_t d : shape) {
    if (__builtin_mul_overflow(n, d, &n)) return -1;
  }
  return n;
}

namespace {

absl::Status ParseHeader(const std::string& source, std::string_view bytes, Contents& rep) {
  if (bytes.size() < 8) {
    return absl::InvalidArgumentError(absl::StrCat(
        source, ": file is too short (", bytes.size(), " bytes) for the 8-byte header length"));
  }
  uint64_t header_len = 0;
  std::memcpy(&header_len, bytes.data(), 8);
  if (header_len > kMaxHeaderBytes) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": header length ", header_len,
                                                   " exceeds the limit of ", kMaxHeaderBytes,
                                                   " bytes"));
  }
  if (header_len > bytes.size() - 8) {
    return absl::InvalidArgumentError(
        absl::StrCat(source, ": header length ", header_len, " exceeds the ", bytes.size() - 8,
                     " bytes after the length prefix (truncated file?)"));
  }
  const std::string_view header = bytes.substr(8, header_len);
  // nlohmann's lexer takes a NUL byte for the end of input and would ignore
  // whatever follows it; JSON has no raw NULs, so reject them up front.
  if (const size_t nul = header.find('\0'); nul != std::string_view::npos) {
    return absl::InvalidArgumentError(absl::StrCat(
        source, ": header is not valid JSON (NUL byte at byte ", nul, " of the header)"));
  }
  rep.data_start = 8 + header_len;
  const uint64_t data_size = bytes.size() - rep.data_start;

  // nlohmann keeps the last of duplicate keys silently; a duplicated tensor
  // name would hide one of the two, so track the keys of each open object.
  std::vector<std::set<std::string>> open_objects;
  std::string duplicate;
  const Json::parser_callback_t on_event = [&](int /*depth*/, Json::parse_event_t event,
                                               Json& parsed) {
    switch (event) {
      case Json::parse_event_t::object_start:
        open_objects.emplace_back();
        break;
      case Json::parse_event_t::object_end:
        if (!open_objects.empty()) open_objects.pop_back();
        break;
      case Json::parse_event_t::key:
        if (!open_objects.empty() && parsed.is_string() &&
            !open_objects.back().insert(parsed.get<std::string>()).second &&
            duplicate.empty()) {
          duplicate = parsed.get<std::string>();
        }
        break;
      default:
        break;
    }
    return true;
  };
  const Json root =
      Json::parse(header.begin(), header.end(), on_event, /*allow_exceptions=*/false);
  if (root.is_discarded()) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": ", DescribeSyntaxError(header)));
  }
  if (!root.is_object()) {
    return absl::InvalidArgumentError(
        absl::StrCat(source, ": header is not a JSON object (it is ", root.type_name(), ")"));
  }
  if (!duplicate.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat(source, ": header has duplicate key ", Quote(duplicate)));
  }

  for (const auto& [name, value] : root.items()) {
    if (name == kMetadataKey) {
      if (!value.is_object()) {
        return absl::InvalidArgumentError(
            absl::StrCat(source, ": \"__metadata__\" is not an object of strings"));
      }
      for (const auto& [key, text] : value.items()) {
        if (!text.is_string()) {
          return absl::InvalidArgumentError(absl::StrCat(
              source, ": \"__metadata__\" value for ", Quote(key), " is not a string"));
        }
        rep.metadata.emplace(key, text.get<std::string>());
      }
      continue;
    }
    Entry entry;
    if (absl::Status s = ParseEntry(source, name, value, data_size, &entry); !s.ok()) return s;
    rep.tensors.emplace(name, std::move(entry));
  }

  // Overlap check over the non-empty ranges, sorted by start: each must
  // begin at or after the end of the one before.
  std::vector<const Entry*> ranges;
  for (const auto& [name, entry] : rep.tensors) {
    if (entry.end > entry.begin) ranges.push_back(&entry);
  }
  std::sort(ranges.begin(), ranges.end(),
            [](const Entry* a, const Entry* b) { return a->begin < b->begin; });
  for (size_t i = 1; i < ranges.size(); ++i) {
    if (ranges[i]->begin < ranges[i - 1]->end) {
      return absl::InvalidArgumentError(absl::StrCat(
          source, ": tensors ", Quote(ranges[i - 1]->info.name), " [", ranges[i - 1]->begin,
          ", ", ranges[i - 1]->end, ") and ", Quote(ranges[i]->info.name), " [",
          ranges[i]->begin, ", ", ranges[i]->end, ") overlap"));
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<SafeTensors> SafeTensors::Parse(std::string bytes, std::string source) {
  auto rep = std::make_shared<Rep>();
  rep->source = std::move(source);
  rep->bytes = std::move(bytes);
  // The parse runs with exceptions off and every access is type-checked
  // first; this is the backstop that keeps the no-exceptions contract.
  try {
    if (absl::Status s = ParseHeader(rep->source, rep->bytes, rep->contents); !s.ok()) return s;
  } catch (const std::bad_alloc&) {
    return absl::ResourceExhaustedError(
        absl::StrCat(rep->source, ": out of memory parsing the header"));
  } catch (const std::exception& e) {
    return absl::InvalidArgumentError(
        absl::StrCat(rep->source, ": malformed header (", absl::CHexEscape(e.what()), ")"));
  }
  return SafeTensors(std::move(rep));
}

absl::StatusOr<SafeTensors> SafeTensors::ReadFile(const std::string& path) {
  absl::StatusOr<std::string> bytes = ReadFileToString(path);
  if (!bytes.ok()) return bytes.status();
  return Parse(*std::move(bytes), path);
}

const std::string& SafeTensors::source() const { return rep_->source; }

std::vector<std::string> SafeTensors::names() const {
  std::vector<std::string> out;
  out.reserve(rep_->contents.tensors.size());
  for (const auto& [name, entry] : rep_->contents.tensors) out.push_back(name);
  return out;
}

bool SafeTensors::contains(std::string_view name) const {
  return rep_->contents.tensors.find(name) != rep_->contents.tensors.end();
}

const TensorInfo* SafeTensors::info(std::string_view name) const {
  const auto it = rep_->contents.tensors.find(name);
  return it == rep_->contents.tensors.end() ? nullptr : &it->second.info;
}

const std::map<std::string, std::string>& SafeTensors::metadata() const {
  return rep_->contents.metadata;
}

absl::StatusOr<std::vector<double>> SafeTensors::ReadDoubles(
    std::string_view name, std::optional<std::vector<int64_t>> expected_shape) const {
  const auto it = rep_->contents.tensors.find(name);
  if (it == rep_->contents.tensors.end()) {
    return absl::NotFoundError(absl::StrCat(rep_->source, ": no tensor ", Quote(name)));
  }
  const Entry& entry = it->second;
  const TensorInfo& info = entry.info;
  if (expected_shape.has_value() && *expected_shape != info.shape) {
    return absl::InvalidArgumentError(
        absl::StrCat(rep_->source, ": tensor ", Quote(name), " has shape ",
                     ShapeString(info.shape), ", expected ", ShapeString(*expected_shape)));
  }
  // Parse checked that [begin, end) lies in the data section and holds
  // exactly num_elements values of the dtype.
  const int64_t n = info.num_elements();
  const char* p = rep_->bytes.data() + rep_->contents.data_start + entry.begin;
  std::vector<double> out(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) {
    double v = 0;
    switch (info.dtype) {
      case DType::kF32: {
        float f;
        std::memcpy(&f, p + 4 * i, 4);
        v = f;
        break;
      }
      case DType::kF64:
        std::memcpy(&v, p + 8 * i, 8);
        break;
      case DType::kI64: {
        int64_t x;
        std::memcpy(&x, p + 8 * i, 8);
        v = static_cast<double>(x);
        break;
      }
    }
    if (!std::isfinite(v)) {
      return absl::InvalidArgumentError(absl::StrCat(
          rep_->source, ": tensor ", Quote(name), " has ", std::isnan(v) ? "NaN" : "Inf",
          " at index ", i,
          info.shape.size() > 1 ? absl::StrCat(" (element ", IndexString(i, info.shape), ")")
                                : std::string()));
    }
    out[i] = v;
  }
  return out;
}

namespace {

// Appends t's values in its dtype; InvalidArgument for values the dtype
// cannot hold, so a written file always reads back.
absl::Status AppendValues(const TensorToWrite& t, std::string& out) {
  const auto bad = [&](size_t i, absl::string_view why) {
    return absl::InvalidArgumentError(absl::StrCat("tensor ", Quote(t.name), ": value ",
                                                   t.values[i], " at index ", i, " ", why));
  };
  constexpr double kTwo63 = 9223372036854775808.0;
  for (size_t i = 0; i < t.values.size(); ++i) {
    const double v = t.values[i];
    if (!std::isfinite(v)) return bad(i, "is not finite");
    char buf[8];
    switch (t.dtype) {
      case DType::kF32: {
        // Checked before the cast: converting an out-of-range double to
        // float is undefined behaviour.
        if (std::abs(v) > std::numeric_limits<float>::max()) return bad(i, "overflows F32");
        const float f = static_cast<float>(v);
        std::memcpy(buf, &f, 4);
        out.append(buf, 4);
        break;
      }
      case DType::kF64:
        std::memcpy(buf, &v, 8);
        out.append(buf, 8);
        break;
      case DType::kI64: {
        if (v != std::trunc(v) || v < -kTwo63 || v >= kTwo63) {
          return bad(i, "is not an integer in I64 range");
        }
        const int64_t x = static_cast<int64_t>(v);
        std::memcpy(buf, &x, 8);
        out.append(buf, 8);
        break;
      }
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::string> SerializeSafeTensors(
    const std::vector<TensorToWrite>& tensors,
    const std::map<std::string, std::string>& metadata) {
  std::vector<const TensorToWrite*> order;
  order.reserve(tensors.size());
  for (const TensorToWrite& t : tensors) order.push_back(&t);
  std::sort(order.begin(), order.end(),
            [](const TensorToWrite* a, const TensorToWrite* b) { return a->name < b->name; });

  Json header = Json::object();
  if (!metadata.empty()) header[std::string(kMetadataKey)] = metadata;
  uint64_t offset = 0;
  for (size_t k = 0; k < order.size(); ++k) {
    const TensorToWrite& t = *order[k];
    const std::string prefix = absl::StrCat("tensor ", Quote(t.name), ": ");
    if (k > 0 && order[k - 1]->name == t.name) {
      return absl::InvalidArgumentError(absl::StrCat(prefix, "duplicate name"));
    }
    if (t.name == kMetadataKey) {
      return absl::InvalidArgumentError(absl::StrCat(prefix, "name is reserved"));
    }
    for (size_t i = 0; i < t.shape.size(); ++i) {
      if (t.shape[i] < 0) {
        return absl::InvalidArgumentError(
            absl::StrCat(prefix, "shape ", ShapeString(t.shape), " has a negative dimension"));
      }
    }
    const int64_t n = TensorInfo{t.name, t.dtype, t.shape}.num_elements();
    if (n < 0 || n > std::numeric_limits<int64_t>::max() / 8) {
      return absl::InvalidArgumentError(
          absl::StrCat(prefix, "element count of shape ", ShapeString(t.shape), " overflows"));
    }
    if (t.values.size() != static_cast<uint64_t>(n)) {
      return absl::InvalidArgumentError(absl::StrCat(prefix, "has ", t.values.size(),
                                                     " values but shape ", ShapeString(t.shape),
                                                     " needs ", n));
    }
    const uint64_t nbytes = static_cast<uint64_t>(n) * DTypeSize(t.dtype);
    header[t.name] = {{"dtype", std::string(DTypeName(t.dtype))},
                      {"shape", t.shape},
                      {"data_offsets", {offset, offset + nbytes}}};
    offset += nbytes;
  }

  std::string text;
  try {
    text = header.dump();
  } catch (const Json::type_error&) {
    // dump() throws on strings that are not valid UTF-8.
    return absl::InvalidArgumentError("tensor names and metadata must be valid UTF-8");
  }
  // Pad so the data section starts 8-byte aligned, as the format recommends.
  text.append((8 - text.size() % 8) % 8, ' ');

  std::string out;
  out.reserve(8 + text.size() + offset);
  const uint64_t header_len = text.size();
  char len_bytes[8];
  std::memcpy(len_bytes, &header_len, 8);
  out.append(len_bytes, 8);
  out.append(text);
  for (const TensorToWrite* t : order) {
    if (absl::Status s = AppendValues(*t, out); !s.ok()) return s;
  }
  return out;
}

absl::Status WriteSafeTensors(const std::string& path, const std::vector<TensorToWrite>& tensors,
                              const std::map<std::string, std::string>& metadata) {
  absl::StatusOr<std::string> bytes = SerializeSafeTensors(tensors, metadata);
  if (!bytes.ok()) {
    return absl::Status(bytes.status().code(),
                        absl::StrCat(path, ": ", bytes.status().message()));
  }

  // Same directory as the target so rename() is atomic; pid + counter keep
  // concurrent writers (threads or processes) off each other's temp files.
  static std::atomic<uint64_t> counter{0};
  const std::string tmp = absl::StrCat(path, ".tmp.", ::getpid(), ".", counter++);
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  if (fd < 0) {
    return absl::ErrnoToStatus(errno, absl::StrCat("cannot create ", tmp, " to write ", path));
  }
  const auto fail = [&](const char* what) {
    const int err = errno;
    ::close(fd);
    ::unlink(tmp.c_str());
    return absl::ErrnoToStatus(err, absl::StrCat("cannot ", what, " ", tmp, " (writing ", path,
                                                 ")"));
  };
  size_t done = 0;
  while (done < bytes->size()) {
    const ssize_t w = ::write(fd, bytes->data() + done, bytes->size() - done);
    if (w < 0) {
      if (errno == EINTR) continue;
      return fail("write");
    }
    done += static_cast<size_t>(w);
  }
  // Without the fsync a crash after the rename could leave an empty file
  // under the final name.
  if (::fsync(fd) != 0) return fail("fsync");
  if (::close(fd) != 0) {
    const int err = errno;
    ::unlink(tmp.c_str());
    return absl::ErrnoToStatus(err, absl::StrCat("cannot close ", tmp, " (writing ", path, ")"));
  }
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    const int err = errno;
    ::unlink(tmp.c_str());
    return absl::ErrnoToStatus(err, absl::StrCat("cannot rename ", tmp, " to ", path));
  }
  // Make the rename itself durable; failing here leaves a correct file, so
  // it is best effort.
  const size_t slash = path.rfind('/');
  const std::string dir =
      slash == std::string::npos ? "." : (slash == 0 ? "/" : path.substr(0, slash));
  const int dir_fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dir_fd >= 0) {
    ::fsync(dir_fd);
    ::close(dir_fd);
  }
  return absl::OkStatus();
}

}  // namespace ssm
