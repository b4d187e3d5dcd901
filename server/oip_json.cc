#include "server/oip_json.h"

#include <charconv>
#include <cmath>
#include <limits>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "nlohmann/json.hpp"
#include "server/echo.h"
#include "server/oip_names.h"

namespace ssm::server::oip {
namespace {

using nlohmann::json;
// Written objects keep the order their fields are given in.
using ojson = nlohmann::ordered_json;
using inference::InferParameter;
using inference::ModelInferRequest;
using Parameters = google::protobuf::Map<std::string, InferParameter>;

template <typename J>
std::string Dump(const J& j) {
  // Client text may not be UTF-8: replace what is not rather than throw.
  return j.dump(-1, ' ', false, J::error_handler_t::replace);
}

std::string Quote(absl::string_view text) { return Dump(json(std::string(text))); }

// The deepest nesting of arrays and objects in `text` (strings skipped), so
// a hostile body is refused before a parser spends anything on it.
int JsonDepth(absl::string_view text) {
  int depth = 0, deepest = 0;
  bool in_string = false, escaped = false;
  for (char c : text) {
    if (in_string) {
      if (escaped) {
        escaped = false;
      } else if (c == '\\') {
        escaped = true;
      } else if (c == '"') {
        in_string = false;
      }
      continue;
    }
    if (c == '"') {
      in_string = true;
    } else if (c == '[' || c == '{') {
      deepest = std::max(deepest, ++depth);
    } else if (c == ']' || c == '}') {
      --depth;
    }
  }
  return deepest;
}

const char* TypeName(const json& j) { return j.type_name(); }

absl::Status ReadParameters(const json& j, absl::string_view path, Parameters* out) {
  if (!j.is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(path, " must be a JSON object"));
  }
  for (const auto& [key, value] : j.items()) {
    InferParameter p;
    if (value.is_boolean()) {
      p.set_bool_param(value.get<bool>());
    } else if (value.is_number_unsigned()) {
      const uint64_t u = value.get<uint64_t>();
      if (u > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
        p.set_uint64_param(u);
      } else {
        p.set_int64_param(static_cast<int64_t>(u));
      }
    } else if (value.is_number_integer()) {
      p.set_int64_param(value.get<int64_t>());
    } else if (value.is_number_float()) {
      p.set_double_param(value.get<double>());
    } else if (value.is_string()) {
      p.set_string_param(value.get<std::string>());
    } else {
      return absl::InvalidArgumentError(absl::StrCat(path, ".", Echo(key), " is a ", TypeName(value),
                                                     "; parameters are strings, numbers or bools"));
    }
    (*out)[key] = std::move(p);
  }
  return absl::OkStatus();
}

// An input's "data", flat or nested, into its typed contents.
absl::Status ReadData(const json& data, int index, ModelInferRequest::InferInputTensor* in) {
  const std::string& type = in->datatype();
  const bool fp32 = type == "FP32", fp64 = type == "FP64";
  if (!fp32 && !fp64) return absl::OkStatus();  // oip_core refuses the datatype, by name
  auto* c = in->mutable_contents();
  // Depth first, in order, with an explicit stack (nesting is bounded by
  // kMaxJsonDepth already).
  std::vector<std::pair<const json*, size_t>> stack{{&data, 0}};
  int64_t n = 0;
  while (!stack.empty()) {
    auto& [array, next] = stack.back();
    if (next == array->size()) {
      stack.pop_back();
      continue;
    }
    const json& v = (*array)[next++];
    if (v.is_array()) {
      stack.emplace_back(&v, 0);
      continue;
    }
    if (!v.is_number()) {
      return absl::InvalidArgumentError(absl::StrCat("inputs[", index, "].data value ", n,
                                                     " is a ", TypeName(v), "; ", type,
                                                     " data are numbers"));
    }
    const double x = v.get<double>();
    if (fp32) {
      if (std::abs(x) > std::numeric_limits<float>::max()) {
        return absl::InvalidArgumentError(absl::StrCat("inputs[", index, "].data value ", n, " (",
                                                       x, ") is beyond FP32's range"));
      }
      c->add_fp32_contents(static_cast<float>(x));
    } else {
      c->add_fp64_contents(x);
    }
    ++n;
  }
  return absl::OkStatus();
}

absl::Status ReadInputs(const json& inputs, absl::string_view binary, ModelInferRequest* request) {
  if (!inputs.is_array()) {
    return absl::InvalidArgumentError("inputs must be a JSON array of input tensors");
  }
  size_t offset = 0;
  for (size_t i = 0; i < inputs.size(); ++i) {
    const int index = static_cast<int>(i);
    const json& j = inputs[i];
    const std::string path = absl::StrCat("inputs[", i, "]");
    if (!j.is_object()) return absl::InvalidArgumentError(absl::StrCat(path, " must be a JSON object"));
    ModelInferRequest::InferInputTensor* in = request->add_inputs();
    for (const char* key : {"name", "datatype"}) {
      auto it = j.find(key);
      if (it == j.end() || !it->is_string()) {
        return absl::InvalidArgumentError(absl::StrCat(path, ".", key, " must be a string"));
      }
    }
    in->set_name(j.at("name").get<std::string>());
    in->set_datatype(j.at("datatype").get<std::string>());
    auto shape = j.find("shape");
    if (shape == j.end() || !shape->is_array()) {
      return absl::InvalidArgumentError(absl::StrCat(path, ".shape must be an array of integers"));
    }
    for (size_t d = 0; d < shape->size(); ++d) {
      const json& dim = (*shape)[d];
      if (!dim.is_number_integer() || dim.get<int64_t>() < 0 ||
          (dim.is_number_unsigned() &&
           dim.get<uint64_t>() > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()))) {
        return absl::InvalidArgumentError(
            absl::StrCat(path, ".shape[", d, "] must be a non-negative integer"));
      }
      in->add_shape(dim.get<int64_t>());
    }
    if (auto p = j.find("parameters"); p != j.end()) {
      if (absl::Status s = ReadParameters(*p, path + ".parameters", in->mutable_parameters());
          !s.ok()) {
        return s;
      }
    }
    auto data = j.find("data");
    auto size = in->parameters().find("binary_data_size");
    const bool has_size = size != in->parameters().end();
    if (data != j.end() && has_size) {
      return absl::InvalidArgumentError(
          absl::StrCat(path, " has both data and parameters.binary_data_size: send it one way"));
    }
    if (has_size) {
      if (size->second.parameter_choice_case() != InferParameter::kInt64Param ||
          size->second.int64_param() < 0) {
        return absl::InvalidArgumentError(absl::StrCat(
            path, ".parameters.binary_data_size must be a non-negative integer (bytes)"));
      }
      const uint64_t n = static_cast<uint64_t>(size->second.int64_param());
      if (n > binary.size() - offset) {
        return absl::InvalidArgumentError(
            absl::StrCat(path, ".parameters.binary_data_size = ", n, " but only ",
                         binary.size() - offset, " bytes of binary data are left in the body"));
      }
      request->add_raw_input_contents(std::string(binary.substr(offset, n)));
      offset += n;
    } else if (data == j.end()) {
      return absl::InvalidArgumentError(absl::StrCat(
          path, " has neither data (a JSON array) nor parameters.binary_data_size"));
    } else if (!data->is_array()) {
      return absl::InvalidArgumentError(absl::StrCat(path, ".data must be a JSON array"));
    } else if (absl::Status s = ReadData(*data, index, in); !s.ok()) {
      return s;
    }
  }
  if (offset != binary.size()) {
    return absl::InvalidArgumentError(absl::StrCat(
        binary.size(), " bytes of binary data follow the JSON but the inputs' "
                       "binary_data_size add up to ",
        offset));
  }
  return absl::OkStatus();
}

absl::Status ReadOutputs(const json* outputs, bool binary_by_default, ModelInferRequest* request) {
  auto want = [](ModelInferRequest::InferRequestedOutputTensor* o, bool binary) {
    (*o->mutable_parameters())["binary_data"].set_bool_param(binary);
  };
  if (outputs == nullptr || outputs->empty()) {
    // Every output, the way the request's default says: REST answers JSON
    // unless asked otherwise.
    ModelInferRequest::InferRequestedOutputTensor* o = request->add_outputs();
    o->set_name(kOutputName);
    want(o, binary_by_default);
    return absl::OkStatus();
  }
  if (!outputs->is_array()) {
    return absl::InvalidArgumentError("outputs must be a JSON array of requested outputs");
  }
  for (size_t i = 0; i < outputs->size(); ++i) {
    const json& j = (*outputs)[i];
    const std::string path = absl::StrCat("outputs[", i, "]");
    if (!j.is_object()) return absl::InvalidArgumentError(absl::StrCat(path, " must be a JSON object"));
    auto name = j.find("name");
    if (name == j.end() || !name->is_string()) {
      return absl::InvalidArgumentError(absl::StrCat(path, ".name must be a string"));
    }
    ModelInferRequest::InferRequestedOutputTensor* o = request->add_outputs();
    o->set_name(name->get<std::string>());
    if (auto p = j.find("parameters"); p != j.end()) {
      if (absl::Status s = ReadParameters(*p, path + ".parameters", o->mutable_parameters());
          !s.ok()) {
        return s;
      }
    }
    auto binary = o->parameters().find("binary_data");
    if (binary == o->parameters().end()) {
      want(o, binary_by_default);
    } else if (binary->second.parameter_choice_case() != InferParameter::kBoolParam) {
      return absl::InvalidArgumentError(absl::StrCat(path, ".parameters.binary_data must be a bool"));
    }
  }
  return absl::OkStatus();
}

void AppendFloat(float v, std::string* out) {
  char buffer[32];
  // Shortest text that reads back as this float32.
  auto [end, ec] = std::to_chars(buffer, buffer + sizeof(buffer), v);
  out->append(buffer, ec == std::errc() ? end : buffer);
}

ojson Shape(const google::protobuf::RepeatedField<int64_t>& shape) {
  ojson j = ojson::array();
  for (int64_t d : shape) j.push_back(d);
  return j;
}

}  // namespace

absl::Status ParseRestInfer(absl::string_view body, int64_t header_length, int raw_d_input,
                            ModelInferRequest* request) {
  if (header_length == 0) {
    // Triton's raw binary request: the body is one FP32 input, batch 1.
    const size_t row = 4 * static_cast<size_t>(std::max(raw_d_input, 1));
    if (body.empty() || body.size() % row != 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          "a raw binary request (Inference-Header-Content-Length: 0) holds ", body.size(),
          " bytes, not a positive multiple of ", row, " (one FP32 step of d_input ", raw_d_input,
          ")"));
    }
    ModelInferRequest::InferInputTensor* in = request->add_inputs();
    in->set_name(kInputName);
    in->set_datatype("FP32");
    in->add_shape(1);
    in->add_shape(static_cast<int64_t>(body.size() / row));
    in->add_shape(raw_d_input);
    request->add_raw_input_contents(std::string(body));
    return ReadOutputs(nullptr, /*binary_by_default=*/true, request);
  }
  if (header_length > 0 && static_cast<uint64_t>(header_length) > body.size()) {
    return absl::InvalidArgumentError(absl::StrCat("Inference-Header-Content-Length = ",
                                                   header_length, " is more than the body's ",
                                                   body.size(), " bytes"));
  }
  const absl::string_view text = header_length < 0 ? body : body.substr(0, header_length);
  const absl::string_view binary = header_length < 0 ? absl::string_view() : body.substr(header_length);
  if (JsonDepth(text) > kMaxJsonDepth) {
    return absl::InvalidArgumentError(
        absl::StrCat("the request's JSON nests deeper than ", kMaxJsonDepth, " levels"));
  }
  json j;
  try {
    j = json::parse(text.begin(), text.end());
  } catch (const json::parse_error& e) {
    // The parser's own text quotes the body; the position says enough.
    return absl::InvalidArgumentError(absl::StrCat(
        "the request body is not valid JSON (a syntax error at byte ", e.byte, ")"));
  } catch (const json::out_of_range& e) {
    return absl::InvalidArgumentError(
        "the request body's JSON holds a number beyond the range of a double");
  } catch (const json::exception& e) {
    return absl::InvalidArgumentError(
        absl::StrCat("the request body is not valid JSON (error ", e.id, ")"));
  }
  if (!j.is_object()) return absl::InvalidArgumentError("the request body must be a JSON object");
  if (auto id = j.find("id"); id != j.end()) {
    if (!id->is_string()) return absl::InvalidArgumentError("id must be a string");
    request->set_id(id->get<std::string>());
  }
  bool binary_output = false;
  if (auto p = j.find("parameters"); p != j.end()) {
    if (absl::Status s = ReadParameters(*p, "parameters", request->mutable_parameters()); !s.ok()) {
      return s;
    }
    if (auto b = request->parameters().find("binary_data_output");
        b != request->parameters().end()) {
      if (b->second.parameter_choice_case() != InferParameter::kBoolParam) {
        return absl::InvalidArgumentError("parameters.binary_data_output must be a bool");
      }
      binary_output = b->second.bool_param();
    }
  }
  auto inputs = j.find("inputs");
  if (inputs == j.end()) return absl::InvalidArgumentError("inputs must be set");
  if (absl::Status s = ReadInputs(*inputs, binary, request); !s.ok()) return s;
  auto outputs = j.find("outputs");
  return ReadOutputs(outputs == j.end() ? nullptr : &*outputs, binary_output, request);
}

std::string WriteRestInfer(const inference::ModelInferResponse& response, size_t* json_length) {
  std::string out = absl::StrCat("{\"model_name\":", Quote(response.model_name()),
                                 ",\"model_version\":", Quote(response.model_version()));
  if (!response.id().empty()) absl::StrAppend(&out, ",\"id\":", Quote(response.id()));
  out += ",\"outputs\":[";
  size_t binary_bytes = 0;
  for (int i = 0; i < response.outputs_size(); ++i) {
    const auto& o = response.outputs(i);
    if (i > 0) out += ',';
    absl::StrAppend(&out, "{\"name\":", Quote(o.name()), ",\"datatype\":", Quote(o.datatype()),
                    ",\"shape\":", Dump(Shape(o.shape())));
    if (i < response.raw_output_contents_size()) {
      const size_t n = response.raw_output_contents(i).size();
      absl::StrAppend(&out, ",\"parameters\":{\"binary_data_size\":", n, "}}");
      binary_bytes += n;
      continue;
    }
    out += ",\"data\":[";
    const auto& values = o.contents().fp32_contents();
    out.reserve(out.size() + values.size() * 12);
    for (int k = 0; k < values.size(); ++k) {
      if (k > 0) out += ',';
      AppendFloat(values[k], &out);
    }
    out += "]}";
  }
  out += "]}";
  *json_length = out.size();
  out.reserve(out.size() + binary_bytes);
  for (int i = 0; i < response.raw_output_contents_size(); ++i) {
    out += response.raw_output_contents(i);
  }
  return out;
}

std::string ServerMetadataJson(const inference::ServerMetadataResponse& metadata) {
  ojson j = {{"name", metadata.name()},
            {"version", metadata.version()},
            {"extensions", ojson::array()}};
  for (const std::string& e : metadata.extensions()) j["extensions"].push_back(e);
  return Dump(j);
}

std::string ModelMetadataJson(const inference::ModelMetadataResponse& metadata) {
  ojson j = {{"name", metadata.name()}, {"versions", ojson::array()},
            {"platform", metadata.platform()}, {"inputs", ojson::array()},
            {"outputs", ojson::array()}, {"properties", ojson::object()}};
  for (const std::string& v : metadata.versions()) j["versions"].push_back(v);
  for (auto [key, list] : {std::pair{"inputs", &metadata.inputs()}, {"outputs", &metadata.outputs()}}) {
    for (const auto& t : *list) {
      j[key].push_back({{"name", t.name()}, {"datatype", t.datatype()}, {"shape", Shape(t.shape())}});
    }
  }
  for (const auto& [k, v] : metadata.properties()) j["properties"][k] = v;
  return Dump(j);
}

std::string ModelConfigJson(const inference::ModelConfig& config) {
  auto dims = [](const google::protobuf::RepeatedField<int64_t>& d) { return Shape(d); };
  ojson j = {{"name", config.name()},
            {"platform", config.platform()},
            {"backend", config.backend()},
            {"max_batch_size", config.max_batch_size()},
            {"input", ojson::array()},
            {"output", ojson::array()},
            {"parameters", ojson::object()}};
  ojson versions = ojson::array();
  for (int64_t v : config.version_policy().specific().versions()) versions.push_back(v);
  j["version_policy"] = {{"specific", {{"versions", versions}}}};
  for (const auto& in : config.input()) {
    j["input"].push_back({{"name", in.name()},
                          {"data_type", inference::DataType_Name(in.data_type())},
                          {"format", inference::ModelInput::Format_Name(in.format())},
                          {"dims", dims(in.dims())}});
  }
  for (const auto& out : config.output()) {
    j["output"].push_back({{"name", out.name()},
                           {"data_type", inference::DataType_Name(out.data_type())},
                           {"dims", dims(out.dims())}});
  }
  if (config.has_sequence_batching()) {
    j["sequence_batching"] = {{"max_sequence_idle_microseconds",
                               config.sequence_batching().max_sequence_idle_microseconds()}};
  }
  for (const auto& [k, v] : config.parameters()) j["parameters"][k] = {{"string_value", v.string_value()}};
  return Dump(j);
}

std::string RepositoryIndexJson(const inference::RepositoryIndexResponse& index) {
  ojson j = ojson::array();
  for (const auto& m : index.models()) {
    ojson entry = {{"name", m.name()}, {"state", m.state()}, {"reason", m.reason()}};
    if (!m.version().empty()) entry["version"] = m.version();
    j.push_back(std::move(entry));
  }
  return Dump(j);
}

std::string ErrorJson(absl::string_view message) {
  return Dump(ojson{{"error", std::string(message)}});
}

}  // namespace ssm::server::oip
