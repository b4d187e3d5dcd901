#include "ssm/safetensors.h"

#include <unistd.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <limits>
#include <map>
#include <random>
#include <string>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/string_view.h"

// Self-contained on purpose: the AddressSanitizer target
// (ssm_safetensors_asan_test, tests/CMakeLists.txt) compiles this file with
// core/src/safetensors.cc alone, without ssm_core or the other test helpers.

namespace ssm {
namespace {

using ::testing::AllOf;
using ::testing::HasSubstr;
using ::testing::StartsWith;

constexpr char kSource[] = "weights/model.safetensors";

std::string Le64(uint64_t v) {
  std::string s(8, '\0');
  for (int i = 0; i < 8; ++i) s[i] = static_cast<char>((v >> (8 * i)) & 0xFF);
  return s;
}

// A file from a literal header and raw data bytes.
std::string FileFromHeader(absl::string_view json, absl::string_view data = {}) {
  return absl::StrCat(Le64(json.size()), json, data);
}

template <typename T>
std::string RawBytes(const std::vector<T>& v) {
  std::string s(v.size() * sizeof(T), '\0');
  if (!v.empty()) std::memcpy(s.data(), v.data(), s.size());
  return s;
}

absl::StatusOr<SafeTensors> ParseBytes(std::string bytes) {
  return SafeTensors::Parse(std::move(bytes), kSource);
}

// A temporary directory removed at the end of the test.
class TempDir {
 public:
  TempDir() {
    static int counter = 0;
    path_ = std::filesystem::path(::testing::TempDir()) /
            absl::StrCat("safetensors_test_", ::getpid(), "_", counter++);
    std::filesystem::create_directories(path_);
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  std::string File(const std::string& name) const { return (path_ / name).string(); }
  std::vector<std::string> Entries() const {
    std::vector<std::string> out;
    for (const auto& e : std::filesystem::directory_iterator(path_)) {
      out.push_back(e.path().filename().string());
    }
    return out;
  }

 private:
  std::filesystem::path path_;
};

// Several tensors of every dtype, a scalar, a zero-size one and an awkward
// 3x5x7 shape.
std::vector<TensorToWrite> SampleTensors() {
  std::mt19937_64 rng(7);
  std::normal_distribution<double> normal;
  std::vector<double> awkward(3 * 5 * 7);
  for (double& x : awkward) x = normal(rng);
  return {
      {"layers.0.kernel", DType::kF32, {3, 5, 7}, awkward},
      {"layers.0.D", DType::kF64, {2, 3}, {1.0 / 3, -2.5, 1e-300, 1e300, 0.0, -0.0}},
      {"step", DType::kI64, {4}, {0, -1, 9007199254740992.0, -9007199254740992.0}},
      {"scale", DType::kF64, {}, {0.125}},
      {"empty", DType::kF32, {0, 3}, {}},
      {"row", DType::kI64, {1, 1, 2}, {3, 4}},
  };
}

// --- round trips --------------------------------------------------------

TEST(SafeTensorsTest, RoundTripAllDtypes) {
  const std::vector<TensorToWrite> tensors = SampleTensors();
  const std::map<std::string, std::string> metadata = {{"format", "pt"}, {"note", "héllo"}};
  absl::StatusOr<std::string> bytes = SerializeSafeTensors(tensors, metadata);
  ASSERT_TRUE(bytes.ok()) << bytes.status();
  absl::StatusOr<SafeTensors> st = ParseBytes(*bytes);
  ASSERT_TRUE(st.ok()) << st.status();

  EXPECT_EQ(st->source(), kSource);
  EXPECT_EQ(st->metadata(), metadata);
  EXPECT_THAT(st->names(), ::testing::ElementsAre("empty", "layers.0.D", "layers.0.kernel",
                                                  "row", "scale", "step"));
  for (const TensorToWrite& t : tensors) {
    SCOPED_TRACE(t.name);
    ASSERT_TRUE(st->contains(t.name));
    const TensorInfo* info = st->info(t.name);
    ASSERT_NE(info, nullptr);
    EXPECT_EQ(info->name, t.name);
    EXPECT_EQ(info->dtype, t.dtype);
    EXPECT_EQ(info->shape, t.shape);
    EXPECT_EQ(info->num_elements(), static_cast<int64_t>(t.values.size()));
    absl::StatusOr<std::vector<double>> values = st->ReadDoubles(t.name, t.shape);
    ASSERT_TRUE(values.ok()) << values.status();
    ASSERT_EQ(values->size(), t.values.size());
    for (size_t i = 0; i < t.values.size(); ++i) {
      const double want =
          t.dtype == DType::kF32 ? static_cast<double>(static_cast<float>(t.values[i]))
                                 : t.values[i];
      EXPECT_EQ((*values)[i], want) << "index " << i;
    }
  }
  EXPECT_EQ(st->info("scale")->num_elements(), 1);
  EXPECT_EQ(st->info("empty")->num_elements(), 0);
  EXPECT_FALSE(st->contains("missing"));
  EXPECT_EQ(st->info("missing"), nullptr);
}

TEST(SafeTensorsTest, F32ValuesRoundTripExactly) {
  // Floats (including subnormals and the extremes) survive F32 -> double ->
  // F32 -> double bit for bit.
  std::vector<double> values = {0.1f,
                                -1.0f / 3.0f,
                                std::numeric_limits<float>::max(),
                                -std::numeric_limits<float>::max(),
                                std::numeric_limits<float>::min(),
                                std::numeric_limits<float>::denorm_min(),
                                -0.0f,
                                16777217.0f};
  std::mt19937 rng(11);
  std::uniform_int_distribution<uint32_t> bits;
  while (values.size() < 1000) {
    const uint32_t b = bits(rng);
    float f;
    std::memcpy(&f, &b, 4);
    if (std::isfinite(f)) values.push_back(f);
  }
  absl::StatusOr<std::string> bytes = SerializeSafeTensors(
      {{"w", DType::kF32, {static_cast<int64_t>(values.size())}, values}});
  ASSERT_TRUE(bytes.ok()) << bytes.status();
  absl::StatusOr<SafeTensors> st = ParseBytes(*bytes);
  ASSERT_TRUE(st.ok()) << st.status();
  absl::StatusOr<std::vector<double>> back = st->ReadDoubles("w");
  ASSERT_TRUE(back.ok()) << back.status();
  ASSERT_EQ(back->size(), values.size());
  for (size_t i = 0; i < values.size(); ++i) {
    EXPECT_EQ(std::signbit((*back)[i]), std::signbit(values[i]));
    EXPECT_EQ((*back)[i], values[i]) << "index " << i;
  }
}

TEST(SafeTensorsTest, F32RoundsDoublesToNearest) {
  absl::StatusOr<std::string> bytes = SerializeSafeTensors({{"w", DType::kF32, {1}, {0.1}}});
  ASSERT_TRUE(bytes.ok()) << bytes.status();
  absl::StatusOr<SafeTensors> st = ParseBytes(*bytes);
  ASSERT_TRUE(st.ok()) << st.status();
  EXPECT_EQ(st->ReadDoubles("w")->at(0), static_cast<double>(0.1f));
}

TEST(SafeTensorsTest, LayoutIsNameOrderedContiguousAndAligned) {
  absl::StatusOr<std::string> bytes = SerializeSafeTensors(
      {{"b", DType::kF32, {3}, {1, 2, 3}},
       {"a", DType::kF64, {1}, {4}},
       {"c", DType::kI64, {}, {5}}});
  ASSERT_TRUE(bytes.ok()) << bytes.status();
  uint64_t header_len = 0;
  std::memcpy(&header_len, bytes->data(), 8);
  EXPECT_EQ((8 + header_len) % 8, 0u);
  const std::string header = bytes->substr(8, header_len);
  EXPECT_THAT(header, HasSubstr(R"("a":{"data_offsets":[0,8],"dtype":"F64","shape":[1]})"));
  EXPECT_THAT(header, HasSubstr(R"("b":{"data_offsets":[8,20],"dtype":"F32","shape":[3]})"));
  EXPECT_THAT(header, HasSubstr(R"("c":{"data_offsets":[20,28],"dtype":"I64","shape":[]})"));
  EXPECT_EQ(bytes->size(), 8 + header_len + 28);
  // No metadata given, none written.
  EXPECT_THAT(header, ::testing::Not(HasSubstr("__metadata__")));
}

TEST(SafeTensorsTest, ReadsHandBuiltFileWithPaddingAndUnalignedData) {
  // Header padded with spaces and an odd length, so the F64 data is not
  // 8-byte aligned in memory.
  const std::string json =
      R"({"x":{"dtype":"F64","shape":[2],"data_offsets":[0,16]},)"
      R"("__metadata__":{"k":"v"}}   )";
  absl::StatusOr<SafeTensors> st = ParseBytes(FileFromHeader(json, RawBytes<double>({1.5, -2})));
  ASSERT_TRUE(st.ok()) << st.status();
  EXPECT_EQ(st->metadata().at("k"), "v");
  EXPECT_THAT(*st->ReadDoubles("x", std::vector<int64_t>{2}), ::testing::ElementsAre(1.5, -2));
}

TEST(SafeTensorsTest, AcceptsEmptyHeaderAndZeroSizeTensorsAnywhere) {
  absl::StatusOr<SafeTensors> empty = ParseBytes(FileFromHeader("{}"));
  ASSERT_TRUE(empty.ok()) << empty.status();
  EXPECT_TRUE(empty->names().empty());
  EXPECT_TRUE(empty->metadata().empty());

  // A zero-size tensor touches no bytes, so it may sit inside another's range.
  const std::string json =
      R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
      R"("z":{"dtype":"F64","shape":[3,0],"data_offsets":[4,4]}})";
  absl::StatusOr<SafeTensors> st = ParseBytes(FileFromHeader(json, RawBytes<float>({1, 2})));
  ASSERT_TRUE(st.ok()) << st.status();
  absl::StatusOr<std::vector<double>> z = st->ReadDoubles("z");
  ASSERT_TRUE(z.ok()) << z.status();
  EXPECT_TRUE(z->empty());
}

TEST(SafeTensorsTest, WriteThenReadFile) {
  TempDir dir;
  const std::string path = dir.File("weights.safetensors");
  const std::vector<TensorToWrite> tensors = SampleTensors();
  ASSERT_TRUE(WriteSafeTensors(path, tensors, {{"version", "1"}}).ok());
  // Overwriting an existing file goes through the same temp + rename.
  ASSERT_TRUE(WriteSafeTensors(path, tensors, {{"version", "2"}}).ok());
  EXPECT_THAT(dir.Entries(), ::testing::ElementsAre("weights.safetensors"));

  absl::StatusOr<SafeTensors> st = SafeTensors::ReadFile(path);
  ASSERT_TRUE(st.ok()) << st.status();
  EXPECT_EQ(st->source(), path);
  EXPECT_EQ(st->metadata().at("version"), "2");
  EXPECT_EQ(st->names().size(), tensors.size());
  absl::StatusOr<std::vector<double>> d = st->ReadDoubles("layers.0.D", std::vector<int64_t>{2, 3});
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_EQ(*d, tensors[1].values);
}

TEST(SafeTensorsTest, CopiesShareTheParsedFile) {
  absl::StatusOr<SafeTensors> st = ParseBytes(*SerializeSafeTensors(SampleTensors()));
  ASSERT_TRUE(st.ok()) << st.status();
  const SafeTensors copy = *st;
  st = ParseBytes(FileFromHeader("{}"));
  EXPECT_TRUE(copy.contains("scale"));
  EXPECT_EQ(copy.ReadDoubles("scale")->at(0), 0.125);
}

// --- reader errors ------------------------------------------------------

TEST(SafeTensorsTest, MissingFileIsNotFound) {
  TempDir dir;
  const std::string path = dir.File("nope.safetensors");
  absl::StatusOr<SafeTensors> st = SafeTensors::ReadFile(path);
  EXPECT_EQ(st.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(st.status().message()), HasSubstr(path));
}

// The file-system errors are file_io's (tests/core/fileio): a directory is
// FAILED_PRECONDITION, like a directory given as a model config.
TEST(SafeTensorsTest, DirectoryIsFailedPrecondition) {
  TempDir dir;
  absl::StatusOr<SafeTensors> st = SafeTensors::ReadFile(dir.File(""));
  EXPECT_EQ(st.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(st.status().message()),
              AllOf(HasSubstr(dir.File("")), HasSubstr("Is a directory")));
}

TEST(SafeTensorsTest, MalformedFileFromDiskNamesThePath) {
  TempDir dir;
  const std::string path = dir.File("bad.safetensors");
  {
    FILE* f = std::fopen(path.c_str(), "wb");
    ASSERT_NE(f, nullptr);
    std::fputs("abc", f);
    std::fclose(f);
  }
  absl::StatusOr<SafeTensors> st = SafeTensors::ReadFile(path);
  EXPECT_EQ(st.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(st.status().message()), AllOf(StartsWith(path), HasSubstr("too short")));
}

TEST(SafeTensorsTest, MissingTensorIsNotFound) {
  absl::StatusOr<SafeTensors> st = ParseBytes(*SerializeSafeTensors(SampleTensors()));
  ASSERT_TRUE(st.ok()) << st.status();
  absl::StatusOr<std::vector<double>> v = st->ReadDoubles("layers.1.kernel");
  EXPECT_EQ(v.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(v.status().message()),
              AllOf(HasSubstr(kSource), HasSubstr("\"layers.1.kernel\"")));
}

TEST(SafeTensorsTest, ShapeMismatchPrintsBothShapes) {
  absl::StatusOr<SafeTensors> st = ParseBytes(*SerializeSafeTensors(SampleTensors()));
  ASSERT_TRUE(st.ok()) << st.status();
  absl::StatusOr<std::vector<double>> v =
      st->ReadDoubles("layers.0.kernel", std::vector<int64_t>{3, 5, 6});
  EXPECT_EQ(v.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(v.status().message()),
              AllOf(HasSubstr(kSource), HasSubstr("\"layers.0.kernel\""),
                    HasSubstr("has shape [3, 5, 7], expected [3, 5, 6]")));
  // A scalar is not a one-element vector.
  v = st->ReadDoubles("scale", std::vector<int64_t>{1});
  EXPECT_EQ(v.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(v.status().message()), HasSubstr("has shape [], expected [1]"));
}

TEST(SafeTensorsTest, NonFiniteValuesAreRejectedWithTheirIndex) {
  const std::string json_f32 = R"({"w":{"dtype":"F32","shape":[2,3],"data_offsets":[0,24]}})";
  std::vector<float> f32 = {0, 1, 2, 3, std::numeric_limits<float>::quiet_NaN(), 5};
  absl::StatusOr<SafeTensors> st = ParseBytes(FileFromHeader(json_f32, RawBytes(f32)));
  ASSERT_TRUE(st.ok()) << st.status();  // values are checked on read, not on parse
  absl::StatusOr<std::vector<double>> v = st->ReadDoubles("w");
  EXPECT_EQ(v.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(v.status().message()), AllOf(HasSubstr(kSource), HasSubstr("\"w\""),
                                          HasSubstr("NaN at index 4 (element [1, 1])")));

  const std::string json_f64 = R"({"w":{"dtype":"F64","shape":[3],"data_offsets":[0,24]}})";
  std::vector<double> f64 = {0, 1, -std::numeric_limits<double>::infinity()};
  st = ParseBytes(FileFromHeader(json_f64, RawBytes(f64)));
  ASSERT_TRUE(st.ok()) << st.status();
  v = st->ReadDoubles("w");
  EXPECT_EQ(v.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(v.status().message()), HasSubstr("Inf at index 2"));
}

struct MalformedCase {
  std::string label;
  std::string bytes;
  std::vector<std::string> expected;  // substrings of the message
};

std::string Entry(absl::string_view name, absl::string_view body) {
  return absl::StrCat("{\"", name, "\":", body, "}");
}

std::vector<MalformedCase> MalformedCases() {
  const std::string data16(16, '\0');
  const auto one = [&](absl::string_view body, std::vector<std::string> expected) {
    return std::pair(FileFromHeader(Entry("w", body), data16), std::move(expected));
  };
  std::vector<MalformedCase> cases;
  const auto add = [&](std::string label, std::pair<std::string, std::vector<std::string>> c) {
    cases.push_back({std::move(label), std::move(c.first), std::move(c.second)});
  };
  const auto add_raw = [&](std::string label, std::string bytes,
                           std::vector<std::string> expected) {
    cases.push_back({std::move(label), std::move(bytes), std::move(expected)});
  };

  add_raw("empty file", "", {"too short (0 bytes)"});
  add_raw("seven bytes", std::string(7, '\0'), {"too short (7 bytes)"});
  add_raw("header longer than file", Le64(100) + "{}", {"header length 100 exceeds the 2 bytes"});
  add_raw("header absurdly long", Le64(uint64_t{200} << 20) + std::string(64, ' '),
          {"header length 209715200", "limit"});
  add_raw("header length max u64", Le64(~uint64_t{0}) + "{}", {"header length"});
  add_raw("not JSON", FileFromHeader("{\"w\": nope}"), {"not valid JSON", "near byte"});
  add_raw("empty header", FileFromHeader(""), {"not valid JSON"});
  add_raw("trailing garbage", FileFromHeader("{} x"), {"not valid JSON"});
  add_raw("NUL after header", FileFromHeader(std::string("{}\0 x", 5)),
          {"not valid JSON", "NUL byte at byte 2"});
  add_raw("NUL in a string", FileFromHeader(std::string("{\"a\0\":3}", 8)), {"NUL byte"});
  add_raw("bad UTF-8 in name", FileFromHeader("{\"\xff\xfe\":{}}"), {"not valid JSON"});
  add_raw("header is an array", FileFromHeader("[1,2]"), {"not a JSON object", "array"});
  add_raw("header is a string", FileFromHeader("\"x\""), {"not a JSON object"});
  add_raw("duplicate tensor", FileFromHeader(
              R"({"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},)"
              R"("w":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})", data16),
          {"duplicate key \"w\""});

  add("entry not an object", one("3", {"\"w\"", "not a JSON object"}));
  add("entry is an array", one("[]", {"\"w\"", "not a JSON object"}));
  add("missing dtype",
      one(R"({"shape":[1],"data_offsets":[0,4]})", {"\"w\"", "missing \"dtype\""}));
  add("missing shape",
      one(R"({"dtype":"F32","data_offsets":[0,4]})", {"\"w\"", "missing \"shape\""}));
  add("missing data_offsets",
      one(R"({"dtype":"F32","shape":[1]})", {"\"w\"", "missing \"data_offsets\""}));
  add("dtype not a string",
      one(R"({"dtype":32,"shape":[1],"data_offsets":[0,4]})",
          {"\"w\"", "\"dtype\" is not a string"}));
  add("unknown dtype", one(R"({"dtype":"F128","shape":[1],"data_offsets":[0,16]})",
                           {"\"w\"", "unknown dtype \"F128\""}));
  add("lower-case dtype", one(R"({"dtype":"f32","shape":[1],"data_offsets":[0,4]})",
                              {"unknown dtype \"f32\""}));
  add("BF16", one(R"({"dtype":"BF16","shape":[1],"data_offsets":[0,2]})",
                  {"\"w\"", "BF16 is not supported; convert to F32"}));
  add("F16", one(R"({"dtype":"F16","shape":[1],"data_offsets":[0,2]})",
                 {"F16 is not supported; convert to F32"}));
  add("I32", one(R"({"dtype":"I32","shape":[1],"data_offsets":[0,4]})",
                 {"I32 is not supported; convert to I64"}));
  add("shape not an array", one(R"({"dtype":"F32","shape":4,"data_offsets":[0,16]})",
                                {"\"w\"", "\"shape\" is not an array"}));
  add("shape of floats", one(R"({"dtype":"F32","shape":[2.5],"data_offsets":[0,8]})",
                             {"shape[0] is not a non-negative integer (got 2.5)"}));
  add("shape of strings", one(R"({"dtype":"F32","shape":[1,"2"],"data_offsets":[0,8]})",
                              {"shape[1] is not a non-negative integer (got string)"}));
  add("negative dim", one(R"({"dtype":"F32","shape":[2,-2],"data_offsets":[0,16]})",
                          {"\"w\"", "shape[1] is negative (-2)"}));
  add("dim beyond int64",
      one(R"({"dtype":"F32","shape":[9223372036854775808],"data_offsets":[0,16]})",
          {"shape[0] 9223372036854775808 is too large"}));
  add("dim beyond uint64",
      one(R"({"dtype":"F32","shape":[99999999999999999999],"data_offsets":[0,16]})",
          {"shape[0] is not a non-negative integer"}));
  add("element count overflow",
      one(R"({"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,16]})",
          {"\"w\"", "element count", "overflows"}));
  add("byte count overflow",
      one(R"({"dtype":"F64","shape":[2305843009213693952],"data_offsets":[0,16]})",
          {"element count", "overflows"}));
  add("offsets not an array", one(R"({"dtype":"F32","shape":[1],"data_offsets":4})",
                                  {"\"w\"", "\"data_offsets\" is not an array"}));
  add("one offset", one(R"({"dtype":"F32","shape":[1],"data_offsets":[0]})",
                        {"\"data_offsets\" is not an array [begin, end]"}));
  add("three offsets", one(R"({"dtype":"F32","shape":[1],"data_offsets":[0,4,8]})",
                           {"\"data_offsets\" is not an array [begin, end]"}));
  add("negative offset", one(R"({"dtype":"F32","shape":[1],"data_offsets":[-4,0]})",
                             {"\"w\"", "data_offsets begin is negative (-4)"}));
  add("string offset", one(R"({"dtype":"F32","shape":[1],"data_offsets":[0,"4"]})",
                           {"data_offsets end is not a non-negative integer"}));
  add("begin after end", one(R"({"dtype":"F32","shape":[1],"data_offsets":[8,4]})",
                             {"\"w\"", "data_offsets begin 8 > end 4"}));
  add("end beyond data", one(R"({"dtype":"F32","shape":[5],"data_offsets":[0,20]})",
                             {"\"w\"", "end 20 is beyond the data section (16 bytes)"}));
  add("huge end", one(R"({"dtype":"F32","shape":[1],"data_offsets":[0,9223372036854775807]})",
                      {"beyond the data section"}));
  add("span too short", one(R"({"dtype":"F32","shape":[3],"data_offsets":[0,8]})",
                            {"\"w\"", "span 8 bytes but shape [3] of F32 needs 12"}));
  add("span too long", one(R"({"dtype":"F64","shape":[],"data_offsets":[0,16]})",
                           {"span 16 bytes but shape [] of F64 needs 8"}));
  add("duplicate field", one(R"({"dtype":"F32","dtype":"F64","shape":[1],"data_offsets":[0,8]})",
                             {"duplicate key \"dtype\""}));

  add_raw("overlap",
          FileFromHeader(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                         R"("b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
                         data16),
          {"tensors \"a\" [0, 8) and \"b\" [4, 12) overlap"});
  add_raw("same range",
          FileFromHeader(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                         R"("b":{"dtype":"I64","shape":[],"data_offsets":[0,8]}})",
                         data16),
          {"overlap"});
  add_raw("metadata not an object",
          FileFromHeader(R"({"__metadata__":["a"]})"), {"\"__metadata__\" is not an object"});
  add_raw("metadata value not a string",
          FileFromHeader(R"({"__metadata__":{"epoch":3}})"),
          {"\"__metadata__\" value for \"epoch\" is not a string"});
  return cases;
}

TEST(SafeTensorsTest, MalformedHeadersAreInvalidArgument) {
  for (const MalformedCase& c : MalformedCases()) {
    SCOPED_TRACE(c.label);
    absl::StatusOr<SafeTensors> st = ParseBytes(c.bytes);
    ASSERT_FALSE(st.ok());
    EXPECT_EQ(st.status().code(), absl::StatusCode::kInvalidArgument) << st.status();
    EXPECT_THAT(std::string(st.status().message()), StartsWith(absl::StrCat(kSource, ": ")));
    for (const std::string& e : c.expected) {
      EXPECT_THAT(std::string(st.status().message()), HasSubstr(e));
    }
  }
}

TEST(SafeTensorsTest, DeeplyNestedHeaderDoesNotOverflowTheStack) {
  const std::string open(200000, '[');
  absl::StatusOr<SafeTensors> st = ParseBytes(FileFromHeader(open));
  EXPECT_EQ(st.status().code(), absl::StatusCode::kInvalidArgument);
  st = ParseBytes(FileFromHeader(open + std::string(200000, ']')));
  EXPECT_EQ(st.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(st.status().message()), HasSubstr("not a JSON object"));
}

TEST(SafeTensorsTest, MessagesEscapeControlBytesInNames) {
  absl::StatusOr<SafeTensors> st = ParseBytes(FileFromHeader(Entry("a\\nb\\u0007", "3")));
  EXPECT_EQ(st.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(st.status().message()), HasSubstr(R"("a\nb\x07")"));
}

// --- writer errors ------------------------------------------------------

TEST(SafeTensorsTest, WriterRejectsBadTensors) {
  struct Case {
    std::string label;
    std::vector<TensorToWrite> tensors;
    std::string expected;
  };
  const double nan = std::numeric_limits<double>::quiet_NaN();
  const std::vector<Case> cases = {
      {"duplicate", {{"w", DType::kF32, {1}, {1}}, {"w", DType::kF64, {1}, {2}}},
       "\"w\": duplicate name"},
      {"reserved", {{"__metadata__", DType::kF32, {1}, {1}}}, "name is reserved"},
      {"too few values", {{"w", DType::kF32, {2, 3}, {1, 2, 3}}},
       "has 3 values but shape [2, 3] needs 6"},
      {"too many values", {{"w", DType::kF64, {}, {1, 2}}}, "has 2 values but shape [] needs 1"},
      {"negative dim", {{"w", DType::kF32, {2, -1}, {}}}, "negative dimension"},
      {"overflow", {{"w", DType::kF32, {int64_t{1} << 40, int64_t{1} << 40}, {}}}, "overflows"},
      {"F32 overflow", {{"w", DType::kF32, {2}, {1, 1e39}}},
       "value 1e+39 at index 1 overflows F32"},
      {"NaN", {{"w", DType::kF64, {2}, {nan, 1}}}, "index 0 is not finite"},
      {"Inf", {{"w", DType::kF32, {1}, {-HUGE_VAL}}}, "is not finite"},
      {"I64 fraction", {{"w", DType::kI64, {1}, {1.5}}}, "not an integer in I64 range"},
      {"I64 range", {{"w", DType::kI64, {1}, {1e19}}}, "not an integer in I64 range"},
      {"bad UTF-8", {{"\xff", DType::kF32, {1}, {1}}}, "valid UTF-8"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.label);
    absl::StatusOr<std::string> bytes = SerializeSafeTensors(c.tensors);
    EXPECT_EQ(bytes.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(std::string(bytes.status().message()), HasSubstr(c.expected));
  }
  absl::StatusOr<std::string> bytes =
      SerializeSafeTensors({{"w", DType::kF32, {1}, {1}}}, {{"k", "\xc3"}});
  EXPECT_EQ(bytes.status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(SafeTensorsTest, WriteErrorsNameThePathAndLeaveNoFiles) {
  TempDir dir;
  const std::string path = dir.File("w.safetensors");
  absl::Status s = WriteSafeTensors(path, {{"w", DType::kF32, {2}, {1}}});
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(s.message()), AllOf(StartsWith(path), HasSubstr("needs 2")));

  const std::string missing_dir = dir.File("no/such/dir/w.safetensors");
  s = WriteSafeTensors(missing_dir, {{"w", DType::kF32, {1}, {1}}});
  EXPECT_EQ(s.code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(s.message()), HasSubstr(missing_dir));
  EXPECT_TRUE(dir.Entries().empty());
}

// --- fuzz ---------------------------------------------------------------

// Parses `bytes` and, if that succeeds, reads every tensor: none of it may
// crash or read out of bounds (the ASan build checks the latter), and every
// failure must be a clean InvalidArgument naming the source.
void ParseAndReadEverything(const std::string& bytes, int* ok_count) {
  absl::StatusOr<SafeTensors> st = SafeTensors::Parse(std::string(bytes), kSource);
  if (!st.ok()) {
    ASSERT_EQ(st.status().code(), absl::StatusCode::kInvalidArgument) << st.status();
    ASSERT_THAT(std::string(st.status().message()), StartsWith(kSource));
    return;
  }
  ++*ok_count;
  for (const std::string& name : st->names()) {
    const TensorInfo* info = st->info(name);
    ASSERT_NE(info, nullptr);
    absl::StatusOr<std::vector<double>> v = st->ReadDoubles(name);
    if (v.ok()) {
      ASSERT_EQ(static_cast<int64_t>(v->size()), info->num_elements());
    } else {
      ASSERT_EQ(v.status().code(), absl::StatusCode::kInvalidArgument) << v.status();
    }
    std::vector<int64_t> wrong = info->shape;
    wrong.push_back(1);
    ASSERT_EQ(st->ReadDoubles(name, wrong).status().code(),
              absl::StatusCode::kInvalidArgument);
  }
  (void)st->metadata();
}

TEST(SafeTensorsFuzzTest, CorruptedFilesNeverCrash) {
  absl::StatusOr<std::string> valid = SerializeSafeTensors(
      {{"a", DType::kF32, {2, 3}, {1, 2, 3, 4, 5, 6}},
       {"b", DType::kF64, {3}, {0.5, -0.25, 1e10}},
       {"c", DType::kI64, {2}, {-7, 42}},
       {"s", DType::kF32, {}, {3.5}},
       {"z", DType::kF64, {0}, {}}},
      {{"format", "pt"}});
  ASSERT_TRUE(valid.ok()) << valid.status();
  const std::string& base = *valid;
  uint64_t header_len = 0;
  std::memcpy(&header_len, base.data(), 8);
  const size_t header_end = 8 + header_len;
  int ok_count = 0;

  // (a) Every truncation: only the complete file (not tried here) is valid,
  // since the last tensor ends at the end of the file.
  for (size_t len = 0; len < base.size(); ++len) {
    ParseAndReadEverything(base.substr(0, len), &ok_count);
    if (::testing::Test::HasFatalFailure()) FAIL() << "truncated to " << len;
  }
  EXPECT_EQ(ok_count, 0);

  std::mt19937_64 rng(20240607);
  const auto uniform = [&](size_t lo, size_t hi) {  // [lo, hi]
    return std::uniform_int_distribution<size_t>(lo, hi)(rng);
  };

  // (b) Random byte flips, mostly in the header where they matter; digits
  // are swapped for digits so some headers stay valid JSON with wrong
  // numbers, which is what reaches the offset and shape checks.
  for (int trial = 0; trial < 2000; ++trial) {
    std::string m = base;
    const int flips = static_cast<int>(uniform(1, 4));
    for (int f = 0; f < flips; ++f) {
      const size_t pos = uniform(0, 3) == 0 ? uniform(0, m.size() - 1)
                                            : uniform(8, header_end - 1);
      if (m[pos] >= '0' && m[pos] <= '9' && uniform(0, 1) == 0) {
        m[pos] = static_cast<char>('0' + uniform(0, 9));
      } else if (uniform(0, 1) == 0) {
        m[pos] = static_cast<char>(m[pos] ^ (1 << uniform(0, 7)));
      } else {
        m[pos] = static_cast<char>(uniform(0, 255));
      }
    }
    ParseAndReadEverything(m, &ok_count);
    if (::testing::Test::HasFatalFailure()) FAIL() << "flip trial " << trial;
  }

  // (c) Header-length overwrites: near the true length (the header then
  // swallows data bytes or loses its tail), small, and huge.
  for (int trial = 0; trial < 600; ++trial) {
    std::string m = base;
    uint64_t len = 0;
    switch (trial % 3) {
      case 0:
        len = header_len + uniform(0, 64) - 32;
        break;
      case 1:
        len = uniform(0, base.size() + 16);
        break;
      default:
        len = std::uniform_int_distribution<uint64_t>()(rng);
        break;
    }
    const std::string le = Le64(len);
    std::memcpy(m.data(), le.data(), 8);
    ParseAndReadEverything(m, &ok_count);
    if (::testing::Test::HasFatalFailure()) FAIL() << "header length " << len;
  }
  // (d) Random well-formed JSON headers with random dtypes, shapes and
  // offsets over random data: byte flips rarely get past the JSON parser,
  // these reach the shape, offset and overlap checks and, when everything
  // is consistent, the read path on layouts the writer never produces
  // (gaps, any order, unaligned).
  const char* kDTypes[] = {"F32", "F64", "I64", "BF16"};
  for (int trial = 0; trial < 1500; ++trial) {
    const size_t data_size = uniform(0, 96);
    std::string json = "{";
    const size_t count = uniform(1, 4);
    size_t cursor = uniform(0, 8);
    for (size_t t = 0; t < count; ++t) {
      const char* dtype = kDTypes[uniform(0, 9) == 0 ? 3 : uniform(0, 2)];
      const size_t elem = dtype[1] == '3' ? 4 : dtype[1] == 'F' ? 2 : 8;
      std::vector<int64_t> shape(uniform(0, 3));
      int64_t n = 1;
      for (int64_t& d : shape) {
        d = static_cast<int64_t>(uniform(0, 4));
        n *= d;
      }
      size_t begin = 0, end = 0;
      if (uniform(0, 3) == 0) {  // arbitrary
        begin = uniform(0, data_size + 8);
        end = uniform(0, data_size + 8);
      } else {  // consistent, packed or with a gap, maybe overlapping
        begin = uniform(0, 4) == 0 ? uniform(0, cursor) : cursor + uniform(0, 2);
        end = begin + static_cast<size_t>(n) * elem;
        cursor = end;
      }
      absl::StrAppend(&json, t == 0 ? "" : ",", "\"t", t, "\":{\"dtype\":\"", dtype,
                      "\",\"shape\":[", absl::StrJoin(shape, ","), "],\"data_offsets\":[",
                      begin, ",", end, "]}");
    }
    json += "}";
    std::string data(uniform(0, 3) == 0 ? data_size : cursor, '\0');
    for (char& c : data) c = static_cast<char>(uniform(0, 255));
    ParseAndReadEverything(FileFromHeader(json, data), &ok_count);
    if (::testing::Test::HasFatalFailure()) FAIL() << json;
  }

  // The unmodified file and some harmless mutations (data bytes, padding)
  // parse: the harness exercised the read path too.
  ParseAndReadEverything(base, &ok_count);
  EXPECT_GT(ok_count, 100);
}

}  // namespace
}  // namespace ssm
