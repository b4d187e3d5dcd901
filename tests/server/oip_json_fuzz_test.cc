// The REST body codec (oip_json.h) against corrupted bodies: truncations,
// byte flips, hostile tokens and header lengths. None may crash or read out
// of bounds (this file also runs under ASan + UBSan, ssm_oip_json_asan_test
// in tests/CMakeLists.txt, so it needs nothing but the codec and the
// protocol's messages), and every refusal is INVALID_ARGUMENT. A body the
// codec takes must give a request whose output is written back in full.

#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "server/oip_json.h"

namespace ssm::server::oip {
namespace {

// What a parsed request's response could look like, written and checked:
// the writer must hold up whatever the request named.
void WriteAnAnswer(const inference::ModelInferRequest& request) {
  inference::ModelInferResponse response;
  response.set_model_name("m");
  response.set_model_version("1");
  response.set_id(request.id());
  auto* out = response.add_outputs();
  out->set_name("output");
  out->set_datatype("FP32");
  out->add_shape(1);
  out->add_shape(2);
  out->add_shape(1);
  out->mutable_contents()->add_fp32_contents(0.5f);
  out->mutable_contents()->add_fp32_contents(-3e38f);
  size_t json_length = 0;
  const std::string body = WriteRestInfer(response, &json_length);
  ASSERT_EQ(json_length, body.size());
  ASSERT_EQ(body.front(), '{');
  ASSERT_EQ(body.back(), '}');
}

void ParseOne(const std::string& body, int64_t header_length, int* accepted) {
  inference::ModelInferRequest request;
  const absl::Status s = ParseRestInfer(body, header_length, /*raw_d_input=*/1, &request);
  if (!s.ok()) {
    ASSERT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
    ASSERT_LE(s.message().size(), 1024u) << s;
    return;
  }
  ++*accepted;
  size_t raw_bytes = 0;
  for (const std::string& raw : request.raw_input_contents()) raw_bytes += raw.size();
  ASSERT_LE(raw_bytes, body.size());
  ASSERT_GE(request.outputs_size(), 1);
  WriteAnAnswer(request);
}

TEST(OipJsonFuzzTest, CorruptedBodiesNeverCrash) {
  const std::string json_body =
      R"({"id": "q1", "parameters": {"sequence_id": 42, "sequence_start": true},)"
      R"( "inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 4, 1],)"
      R"( "data": [[[0.5], [1.25]], [[-2], [3e3]]]}],)"
      R"( "outputs": [{"name": "output", "parameters": {"binary_data": false}}]})";
  const std::string header =
      R"({"inputs": [{"name": "input", "datatype": "FP64", "shape": [1, 2, 1],)"
      R"( "parameters": {"binary_data_size": 16}}], "parameters": {"binary_data_output": true}})";
  const double values[2] = {0.25, -7.5};
  const std::string binary_body =
      header + std::string(reinterpret_cast<const char*>(values), sizeof(values));
  const int64_t binary_header = static_cast<int64_t>(header.size());

  int accepted = 0;
  ParseOne(json_body, -1, &accepted);
  ParseOne(binary_body, binary_header, &accepted);
  ASSERT_EQ(accepted, 2);  // the bases are valid

  // (a) Every truncation.
  for (size_t n = 0; n < json_body.size(); ++n) {
    ParseOne(json_body.substr(0, n), -1, &accepted);
    if (::testing::Test::HasFatalFailure()) FAIL() << "truncated to " << n;
  }
  for (size_t n = 0; n < binary_body.size(); ++n) {
    ParseOne(binary_body.substr(0, n), std::min<int64_t>(binary_header, n), &accepted);
    if (::testing::Test::HasFatalFailure()) FAIL() << "binary truncated to " << n;
  }

  std::mt19937_64 rng(20260303);
  auto uniform = [&](size_t lo, size_t hi) {
    return std::uniform_int_distribution<size_t>(lo, hi)(rng);
  };
  // (b) Byte flips, digits swapped for digits so that many bodies stay
  // JSON with wrong numbers (shapes, sizes, ids).
  const char* const kTokens[] = {"[",    "]",     "{",        "}",    "\"",    ",",   "-1",
                                 "1e999", "null", "true",     "1e39", "18446744073709551615",
                                 "[[[[", "\\u0000", "\"data\"", "0",   "9223372036854775807"};
  for (int trial = 0; trial < 4000; ++trial) {
    const bool binary = trial % 2 == 1;
    std::string m = binary ? binary_body : json_body;
    int64_t header_length = binary ? binary_header : -1;
    const int edits = static_cast<int>(uniform(1, 3));
    for (int e = 0; e < edits; ++e) {
      const size_t pos = uniform(0, m.size() - 1);
      switch (uniform(0, 3)) {
        case 0:
          if (m[pos] >= '0' && m[pos] <= '9') {
            m[pos] = static_cast<char>('0' + uniform(0, 9));
          } else {
            m[pos] = static_cast<char>(uniform(0, 255));
          }
          break;
        case 1:
          m.insert(pos, kTokens[uniform(0, std::size(kTokens) - 1)]);
          if (binary && static_cast<int64_t>(pos) < header_length) {
            header_length = static_cast<int64_t>(uniform(0, m.size() + 2));
          }
          break;
        case 2:
          m.erase(pos, uniform(1, 8));
          break;
        default:
          header_length = static_cast<int64_t>(uniform(0, m.size() + 4)) - 1;
          break;
      }
      if (m.empty()) m.assign(1, '{');
    }
    ParseOne(m, header_length, &accepted);
    if (::testing::Test::HasFatalFailure()) FAIL() << "trial " << trial << ": " << m;
  }
  // (c) Deep nesting, refused before any parser sees it.
  ParseOne(std::string(100000, '[') + std::string(100000, ']'), -1, &accepted);
  ParseOne(R"({"inputs": [{"data": )" + std::string(5000, '[') + "]", -1, &accepted);
}

}  // namespace
}  // namespace ssm::server::oip
