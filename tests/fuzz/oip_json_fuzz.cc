// Fuzzes the Open Inference Protocol's REST infer body: arbitrary bytes as
// the body of POST /v2/models/NAME[/versions/V]/infer, decoded by the
// server's codec (oip_json.h: ParseRestInfer, JSON with Triton's binary
// tensor extension, or a raw binary request) the way the REST route does
// (oip_http.cc: the model's d_input for a raw binary request, then the
// body), and when it decodes, planned and run by the server's own code
// (OipServer, oip_fuzz_util.h), the response then encoded (WriteRestInfer).
// HTTP itself (headers, routing, the pool) is out of scope.
//
// Input: byte 0 picks the URL and the header: bits 0-2 the model name
// (legt, legs, delay, s4, s4-bidi, broken, nope, ""), bits 3-4 the version
// ("", "1", "2", "01"), bit 5 set: an Inference-Header-Content-Length
// header follows as 2 little-endian bytes (else there is none: the body is
// all JSON). The rest is the body.
//
// Contracts checked besides the sanitizers' and OipServer::Infer's:
//   - the codec refuses only with InvalidArgument (the model lookup of a
//     raw binary request: InvalidArgument or NotFound), with a bounded
//     message;
//   - an accepted response encodes as JSON that parses back, with the
//     response's names, the output's name, datatype and shape, and either
//     its values (each one reading back as the same float32, bit for bit,
//     as oip_json.h promises) or binary_data_size and exactly those bytes
//     after the JSON.

#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>
#include <vector>

#include "absl/strings/str_cat.h"
#include "fuzz_util.h"
#include "nlohmann/json.hpp"
#include "oip_fuzz_util.h"
#include "server/oip_core.h"
#include "server/oip_json.h"

namespace ssm::fuzz {
namespace {

namespace oip = ::ssm::server::oip;
using inference::ModelInferRequest;
using inference::ModelInferResponse;
using nlohmann::json;

constexpr const char* kModels[] = {"legt", "legs", "delay", "s4", "s4-bidi", "broken", "nope", ""};
constexpr const char* kVersions[] = {"", "1", "2", "01"};
constexpr uint8_t kHasHeader = 0x20;

// The REST route's decoding: the body into `request`, whose model name and
// version the URL set.
absl::Status Decode(absl::string_view body, int64_t header_length, ModelInferRequest* request) {
  int d_input = 0;
  if (header_length == 0) {
    absl::StatusOr<server::ServedModel> served = oip::FindModel(
        Catalog(), request->model_name(), request->model_version(), "model", "version");
    if (!served.ok()) {
      CheckCode(served.status(),
                {absl::StatusCode::kInvalidArgument, absl::StatusCode::kNotFound}, "FindModel");
      return served.status();
    }
    d_input = served->model->d_input();
  }
  const absl::Status status = oip::ParseRestInfer(body, header_length, d_input, request);
  if (!status.ok()) CheckCode(status, {absl::StatusCode::kInvalidArgument}, "ParseRestInfer");
  return status;
}

// The encoded response against the response.
void CheckEncoded(const ModelInferResponse& response) {
  size_t json_length = 0;
  const std::string body = oip::WriteRestInfer(response, &json_length);
  Check(json_length <= body.size(), "WriteRestInfer's JSON length is past its body");
  const json j = json::parse(body.begin(), body.begin() + static_cast<std::ptrdiff_t>(json_length),
                             nullptr, /*allow_exceptions=*/false);
  Check(j.is_object(), "WriteRestInfer's JSON does not parse back as an object");
  Check(j.value("model_name", "") == response.model_name() &&
            j.value("model_version", "") == response.model_version(),
        "WriteRestInfer's JSON names another model version");
  Check(j.contains("id") == !response.id().empty(), "WriteRestInfer's JSON lost the id");
  const auto outputs = j.find("outputs");
  Check(outputs != j.end() && outputs->is_array() && outputs->size() == 1,
        "WriteRestInfer's JSON has other than one output");
  const json& o = (*outputs)[0];
  const auto& want = response.outputs(0);
  Check(o.is_object() && o.value("name", "") == want.name() &&
            o.value("datatype", "") == want.datatype(),
        "WriteRestInfer's output has another name or datatype");
  const std::vector<int64_t> shape(want.shape().begin(), want.shape().end());
  Check(o.contains("shape") && o["shape"] == json(shape), "WriteRestInfer's output shape differs");
  const std::vector<float> values = OutputValues(response);
  if (response.raw_output_contents_size() > 0) {
    const std::string& raw = response.raw_output_contents(0);
    Check(o.contains("parameters") && o["parameters"].value("binary_data_size", -1) ==
                                          static_cast<int64_t>(raw.size()),
          "WriteRestInfer's binary_data_size is not the output's byte size");
    Check(std::string_view(body).substr(json_length) == raw,
          "WriteRestInfer's binary data are not the output's bytes");
    return;
  }
  Check(json_length == body.size(), "WriteRestInfer wrote binary data for a JSON output");
  const auto data = o.find("data");
  Check(data != o.end() && data->is_array() && data->size() == values.size(),
        "WriteRestInfer's data has the wrong value count");
  for (size_t i = 0; i < values.size(); ++i) {
    const json& v = (*data)[i];
    Check(v.is_number(), "WriteRestInfer's data holds a non-number");
    const float back = static_cast<float>(v.get<double>());
    if (std::memcmp(&back, &values[i], sizeof(float)) != 0) {
      Fail(absl::StrCat("output value ", i, " (", values[i], ") reads back from JSON as ", back));
    }
  }
}

void RunBody(const uint8_t* data, size_t size) {
  if (size < 1) return;
  const uint8_t flags = data[0];
  size_t at = 1;
  int64_t header_length = -1;
  if ((flags & kHasHeader) != 0) {
    if (size < 3) return;
    header_length = data[1] | (static_cast<int64_t>(data[2]) << 8);
    at = 3;
  }
  const std::string_view body(reinterpret_cast<const char*>(data) + at, size - at);
  ModelInferRequest request;
  request.set_model_name(kModels[flags & 7]);
  request.set_model_version(kVersions[(flags >> 3) & 3]);
  const absl::Status decoded =
      Decode(absl::string_view(body.data(), body.size()), header_length, &request);
  if (!decoded.ok()) {
    CheckBoundedMessage(decoded, "REST infer body");
    return;
  }
  OipServer server;
  ModelInferResponse response;
  if (!server.Infer(request, "", &response).ok()) return;
  CheckEncoded(response);
}

// A request as a REST body: its JSON, written with the project's JSON
// library, and its raw inputs as Triton's binary extension after it.
// Returns the body; *header_length is the JSON's length when binary data
// follow, else -1.
std::string RestBody(const ModelInferRequest& r, int64_t* header_length, bool nested = false) {
  json j = json::object();
  if (!r.id().empty()) j["id"] = r.id();
  const auto parameters = [](const google::protobuf::Map<std::string, inference::InferParameter>& p) {
    json out = json::object();
    for (const auto& [key, value] : p) {
      switch (value.parameter_choice_case()) {
        case inference::InferParameter::kBoolParam: out[key] = value.bool_param(); break;
        case inference::InferParameter::kInt64Param: out[key] = value.int64_param(); break;
        case inference::InferParameter::kUint64Param: out[key] = value.uint64_param(); break;
        case inference::InferParameter::kDoubleParam: out[key] = value.double_param(); break;
        default: out[key] = value.string_param(); break;
      }
    }
    return out;
  };
  if (!r.parameters().empty()) j["parameters"] = parameters(r.parameters());
  std::string binary;
  j["inputs"] = json::array();
  for (int i = 0; i < r.inputs_size(); ++i) {
    const auto& in = r.inputs(i);
    json t = {{"name", in.name()}, {"datatype", in.datatype()},
              {"shape", std::vector<int64_t>(in.shape().begin(), in.shape().end())}};
    if (i < r.raw_input_contents_size()) {
      t["parameters"] = {{"binary_data_size", r.raw_input_contents(i).size()}};
      binary += r.raw_input_contents(i);
    } else {
      json values = json::array();
      for (float v : in.contents().fp32_contents()) values.push_back(v);
      for (double v : in.contents().fp64_contents()) values.push_back(v);
      if (nested && in.shape_size() == 3) {
        // [batch][steps][features], as clients that send ndarrays do.
        json rows = json::array();
        const size_t features = static_cast<size_t>(in.shape(2));
        for (size_t k = 0; k + features <= values.size(); k += features) {
          rows.push_back(json(std::vector<json>(values.begin() + k, values.begin() + k + features)));
        }
        values = std::move(rows);
      }
      t["data"] = std::move(values);
    }
    j["inputs"].push_back(std::move(t));
  }
  for (const auto& o : r.outputs()) {
    json t = {{"name", o.name()}};
    if (!o.parameters().empty()) t["parameters"] = parameters(o.parameters());
    j["outputs"].push_back(std::move(t));
  }
  std::string body = j.dump();
  *header_length = binary.empty() ? -1 : static_cast<int64_t>(body.size());
  return body + binary;
}

void WriteSeeds(const std::string& dir) {
  // Flags for a model and version by name, as kModels and kVersions list
  // them.
  const auto url = [](std::string_view model, std::string_view version) {
    uint8_t flags = 0;
    for (uint8_t i = 0; i < 8; ++i) {
      if (kModels[i] == model) flags = i;
    }
    for (uint8_t i = 0; i < 4; ++i) {
      if (kVersions[i] == version) flags |= static_cast<uint8_t>(i << 3);
    }
    return flags;
  };
  const auto raw_seed = [&](const std::string& name, uint8_t flags, int64_t header_length,
                            const std::string& body) {
    std::string bytes(1, static_cast<char>(flags));
    if (header_length >= 0) {
      bytes[0] = static_cast<char>(flags | kHasHeader);
      bytes.push_back(static_cast<char>(header_length & 0xFF));
      bytes.push_back(static_cast<char>(header_length >> 8));
    }
    WriteSeed(dir, name, bytes + body);
  };
  const auto seed = [&](const std::string& name, const ModelInferRequest& r, bool nested = false) {
    int64_t header_length = -1;
    const std::string body = RestBody(r, &header_length, nested);
    raw_seed(name, url(r.model_name(), r.model_version()), header_length, body);
  };
  const OipInput f32{{1, 6, 1}};

  seed("legt-json", OipRequest("legt", "", {{2, 4, 1}}));
  seed("legt-json-nested", OipRequest("legt", "1", {{2, 4, 1}}), /*nested=*/true);
  seed("delay-fp64", OipRequest("delay", "", {{1, 5, 1}, true}));
  ModelInferRequest with_id = OipRequest("s4", "2", {{1, 8, 1}});
  with_id.set_id("req-7");
  (*with_id.mutable_parameters())["binary_data_output"].set_bool_param(true);
  seed("s4-v2-id-binary-output", with_id);
  ModelInferRequest binary_in = OipRequest("legs", "", {{1, 6, 1}, false, true});
  seed("legs-binary-input", binary_in);
  ModelInferRequest binary_fp64 = OipRequest("s4", "1", {{2, 3, 1}, true, true});
  (*binary_fp64.add_outputs()->mutable_parameters())["binary_data"].set_bool_param(false);
  binary_fp64.mutable_outputs(0)->set_name("output");
  seed("s4-binary-fp64-json-output", binary_fp64);
  ModelInferRequest sequence = OipRequest("legt", "", f32);
  SetSequence(&sequence, StringId("s"), true, true);
  seed("sequence-start-end", sequence);
  ModelInferRequest continued = OipRequest("s4", "", f32);
  SetSequence(&continued, Uint64Id(3), false, false);
  seed("sequence-not-live", continued);
  seed("s4-bidi", OipRequest("s4-bidi", "", f32));
  seed("unknown-model", OipRequest("nope", "", f32));
  seed("bad-version", OipRequest("s4", "01", f32));
  seed("past-max-length", OipRequest("s4", "", {{1, 65, 1}}));

  // Triton's raw binary request: the whole body is FP32 values, batch 1.
  std::string floats;
  for (double v : Wave(8)) {
    const float f = static_cast<float>(v);
    floats.append(reinterpret_cast<const char*>(&f), 4);
  }
  raw_seed("raw-binary-legt", url("legt", ""), 0, floats);
  raw_seed("raw-binary-unknown-model", url("nope", ""), 0, floats);
  raw_seed("raw-binary-ragged", url("s4", ""), 0, floats.substr(0, 7));

  // Bodies the codec refuses.
  int64_t header_length = -1;
  const std::string good = RestBody(OipRequest("legt", "", f32), &header_length);
  raw_seed("truncated-json", url("legt", ""), -1, good.substr(0, good.size() / 2));
  raw_seed("header-past-body", url("legt", ""), static_cast<int64_t>(good.size()) + 1, good);
  raw_seed("binary-left-over", url("legt", ""), static_cast<int64_t>(good.size()), good + "xyz");
  raw_seed("deep-nesting", url("legt", ""), -1,
           "{\"inputs\": [{\"data\": " + std::string(40, '[') + std::string(40, ']') + "}]}");
  raw_seed("not-an-object", url("legt", ""), -1, json::array({1, 2}).dump());
  json strings = json::parse(good);
  strings["inputs"][0]["data"] = {"a", "b"};
  raw_seed("data-strings", url("legt", ""), -1, strings.dump());
  json beyond = json::parse(good);
  beyond["inputs"][0]["data"][0] = 1e39;
  raw_seed("beyond-fp32", url("legt", ""), -1, beyond.dump());
  json negative = json::parse(good);
  negative["inputs"][0]["shape"][1] = -1;
  raw_seed("negative-dim", url("legt", ""), -1, negative.dump());
  json both = json::parse(good);
  both["inputs"][0]["parameters"] = {{"binary_data_size", 4}};
  raw_seed("data-and-binary-size", url("legt", ""), static_cast<int64_t>(both.dump().size()),
           both.dump() + "abcd");
  raw_seed("empty", url("legt", ""), -1, "");
}

}  // namespace
}  // namespace ssm::fuzz

extern "C" int LLVMFuzzerInitialize(int* argc, char*** argv) {
  ssm::fuzz::HandleSeedFlag(argc, argv, ssm::fuzz::WriteSeeds);
  ssm::fuzz::Catalog();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  ssm::fuzz::RunBody(data, size);
  return 0;
}
