// The Open Inference Protocol's REST binding in-process (oip_http.h): every
// route, JSON and binary tensors, the status codes and error bodies, REST
// sequences, auth and the drain. curl against the real binary is in
// tests/python/test_oip.py.

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "absl/time/clock.h"
#include "nlohmann/json.hpp"
#include "oip_fixture.h"

namespace ssm::server::testing {
namespace {

using nlohmann::json;
using ::testing::ElementsAre;
using ::testing::HasSubstr;

// The response, or a test failure naming the transport error (and a
// response of status -1, so the checks after it fail rather than crash).
httplib::Response Must(const httplib::Result& r) {
  if (r) return *r;
  ADD_FAILURE() << "the HTTP request failed: " << httplib::to_string(r.error());
  httplib::Response none;
  none.status = -1;
  return none;
}

json Body(const httplib::Result& r) {
  EXPECT_TRUE(r) << httplib::to_string(r.error());
  return r ? json::parse(r->body, nullptr, false) : json();
}

// The JSON text of an infer request with one FP32 input of `x` ([batch, L, 1]).
std::string InferJson(const std::vector<float>& x, int batch, const json& extra = json::object()) {
  json in = {{"name", "input"},
             {"datatype", "FP32"},
             {"shape", {batch, static_cast<int64_t>(x.size()) / batch, 1}},
             {"data", json::array()}};
  // Floats as JSON numbers: the double nearest each float is the float, and
  // reads back as it.
  for (float v : x) in["data"].push_back(static_cast<double>(v));
  json body = {{"inputs", {in}}};
  for (const auto& [k, v] : extra.items()) body[k] = v;
  return body.dump();
}

std::vector<float> JsonOutput(const json& body) {
  std::vector<float> out;
  for (const json& v : body["outputs"][0]["data"])
    out.push_back(static_cast<float>(v.get<double>()));
  return out;
}

TEST_F(OipTest, RestRoutes) {
  json j = Body(http_->Get("/v2"));
  EXPECT_EQ(j["name"], "ssmserve");
  EXPECT_EQ(j["extensions"].size(), 4u);
  EXPECT_EQ(Body(http_->Get("/v2/"))["name"], "ssmserve");
  httplib::Result live = http_->Get("/v2/health/live");
  ASSERT_TRUE(live);
  EXPECT_EQ(live->status, 200);
  EXPECT_EQ(json::parse(live->body)["live"], true);
  EXPECT_EQ(Must(http_->Get("/v2/health/ready")).status, 200);

  for (const char* path : {"/v2/models/legt-delay", "/v2/models/legt-delay/versions/1"}) {
    httplib::Result r = http_->Get(path);
    ASSERT_TRUE(r);
    EXPECT_EQ(r->status, 200) << path;
    j = json::parse(r->body);
    EXPECT_EQ(j["name"], "legt-delay");
    EXPECT_EQ(j["versions"], json({"1"}));
    EXPECT_EQ(j["inputs"][0],
              json({{"name", "input"}, {"datatype", "FP32"}, {"shape", {-1, -1, 1}}}));
    EXPECT_EQ(j["outputs"][0]["shape"], json({-1, -1, 3}));
  }
  httplib::Result unknown = http_->Get("/v2/models/nope");
  EXPECT_EQ(unknown->status, 404);
  EXPECT_THAT(json::parse(unknown->body)["error"].get<std::string>(),
              HasSubstr("model 'nope' is not served"));
  EXPECT_EQ(Must(http_->Get("/v2/models/legt-delay/versions/2")).status, 404);
  EXPECT_EQ(Must(http_->Get("/v2/models/legt-delay/versions/x")).status, 400);

  httplib::Result ready = http_->Get("/v2/models/s4-demo/ready");
  EXPECT_EQ(ready->status, 200);
  EXPECT_EQ(json::parse(ready->body), json({{"name", "s4-demo"}, {"ready", true}}));
  EXPECT_EQ(Must(http_->Get("/v2/models/s4-demo/versions/1/ready")).status, 200);
  httplib::Result not_ready = http_->Get("/v2/models/nope/ready");
  EXPECT_EQ(not_ready->status, 400);
  EXPECT_EQ(json::parse(not_ready->body)["ready"], false);

  j = Body(http_->Get("/v2/models/legt-delay/config"));
  EXPECT_EQ(j["name"], "legt-delay");
  EXPECT_EQ(j["max_batch_size"], 8);
  EXPECT_EQ(j["input"][0]["data_type"], "TYPE_FP32");
  EXPECT_EQ(j["input"][0]["dims"], json({-1, 1}));
  EXPECT_EQ(j["sequence_batching"]["max_sequence_idle_microseconds"], 300000000);
  EXPECT_THAT(j["parameters"]["config"]["string_value"].get<std::string>(), HasSubstr("legt"));

  httplib::Result index = http_->Post("/v2/repository/index", "", "application/json");
  ASSERT_TRUE(index);
  EXPECT_EQ(index->status, 200);
  j = json::parse(index->body);
  ASSERT_EQ(j.size(), 3u);
  EXPECT_EQ(j[2],
            json({{"name", "s4-demo"}, {"state", "READY"}, {"reason", ""}, {"version", "1"}}));
  EXPECT_EQ(
      Body(http_->Post("/v2/repository/index", R"({"ready": true})", "application/json")).size(),
      3u);
  EXPECT_EQ(Must(http_->Post("/v2/repository/index", R"({"ready": 1})", "application/json")).status,
            400);

  // Unknown paths 404, known paths with another method 405, each with an
  // error body.
  httplib::Result none = http_->Get("/v1/models");
  EXPECT_EQ(none->status, 404);
  EXPECT_TRUE(json::parse(none->body).contains("error"));
  httplib::Result method = http_->Get("/v2/models/s4-demo/infer");
  EXPECT_EQ(method->status, 405);
  EXPECT_THAT(json::parse(method->body)["error"].get<std::string>(), HasSubstr("method GET"));
  EXPECT_EQ(Must(http_->Delete("/v2/health/live")).status, 405);
}

TEST_F(OipTest, RestInferGivesTheGrpcBitsJsonOrBinary) {
  const int batch = 2, steps = 300;
  const std::vector<float> x = Values(batch, steps);
  const std::vector<float> want = InferValues("s4-demo", batch, steps);

  httplib::Result r = http_->Post("/v2/models/s4-demo/infer",
                                  InferJson(x, batch, {{"id", "my-id"}}), "application/json");
  ASSERT_TRUE(r) << httplib::to_string(r.error());
  ASSERT_EQ(r->status, 200) << r->body;
  EXPECT_EQ(r->get_header_value("Content-Type"), "application/json");
  json j = json::parse(r->body);
  EXPECT_EQ(j["model_name"], "s4-demo");
  EXPECT_EQ(j["model_version"], "1");
  EXPECT_EQ(j["id"], "my-id");
  EXPECT_EQ(j["outputs"][0]["name"], "output");
  EXPECT_EQ(j["outputs"][0]["datatype"], "FP32");
  EXPECT_EQ(j["outputs"][0]["shape"], json({batch, steps, 1}));
  EXPECT_TRUE(SameBits(JsonOutput(j), want));

  // Binary in, binary out (Triton's binary tensor extension).
  json header = {{"inputs",
                  {{{"name", "input"},
                    {"datatype", "FP32"},
                    {"shape", {batch, steps, 1}},
                    {"parameters", {{"binary_data_size", x.size() * 4}}}}}},
                 {"outputs", {{{"name", "output"}, {"parameters", {{"binary_data", true}}}}}}};
  const std::string text = header.dump();
  httplib::Headers headers = {{"Inference-Header-Content-Length", std::to_string(text.size())}};
  r = http_->Post("/v2/models/s4-demo/infer", headers, text + RawBytes(x),
                  "application/octet-stream");
  ASSERT_TRUE(r);
  ASSERT_EQ(r->status, 200) << r->body;
  const size_t json_length = std::stoul(r->get_header_value("Inference-Header-Content-Length"));
  j = json::parse(r->body.substr(0, json_length));
  EXPECT_EQ(j["outputs"][0]["parameters"]["binary_data_size"], want.size() * 4);
  EXPECT_FALSE(j["outputs"][0].contains("data"));
  EXPECT_TRUE(SameBits(FromRaw(r->body.substr(json_length)), want));

  // Binary in, JSON out (the default), and binary_data_output for all.
  header.erase("outputs");
  r = http_->Post("/v2/models/s4-demo/infer",
                  {{"Inference-Header-Content-Length", std::to_string(header.dump().size())}},
                  header.dump() + RawBytes(x), "application/octet-stream");
  ASSERT_EQ(r->status, 200) << r->body;
  EXPECT_FALSE(r->has_header("Inference-Header-Content-Length"));
  EXPECT_TRUE(SameBits(JsonOutput(json::parse(r->body)), want));
  header["parameters"] = {{"binary_data_output", true}};
  r = http_->Post("/v2/models/s4-demo/infer",
                  {{"Inference-Header-Content-Length", std::to_string(header.dump().size())}},
                  header.dump() + RawBytes(x), "application/octet-stream");
  ASSERT_EQ(r->status, 200) << r->body;
  EXPECT_TRUE(r->has_header("Inference-Header-Content-Length"));

  // Triton's raw binary request: the body is one FP32 input of batch 1.
  const std::vector<float> one = Values(1, 77);
  r = http_->Post("/v2/models/s4-demo/infer", {{"Inference-Header-Content-Length", "0"}},
                  RawBytes(one), "application/octet-stream");
  ASSERT_EQ(r->status, 200) << r->body;
  const size_t n = std::stoul(r->get_header_value("Inference-Header-Content-Length"));
  EXPECT_TRUE(SameBits(FromRaw(r->body.substr(n)), InferValues("s4-demo", 1, 77)));

  // Nested data and FP64 data: the same outputs.
  json nested = json::array();
  for (int b = 0; b < batch; ++b) {
    json seq = json::array();
    for (int t = 0; t < steps; ++t) seq.push_back({static_cast<double>(x[b * steps + t])});
    nested.push_back(seq);
  }
  json body = {{"inputs",
                {{{"name", "input"},
                  {"datatype", "FP64"},
                  {"shape", {batch, steps, 1}},
                  {"data", nested}}}}};
  r = http_->Post("/v2/models/s4-demo/infer", body.dump(), "application/json");
  ASSERT_EQ(r->status, 200) << r->body;
  EXPECT_TRUE(SameBits(JsonOutput(json::parse(r->body)), want));
}

TEST_F(OipTest, BadRestRequestsGetTheirStatusAndAnErrorBody) {
  const std::string good = InferJson(Values(1, 4), 1);
  const std::string both =
      R"({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1,1,1], "data": [1], )"
      R"("parameters": {"binary_data_size": 4}}]})";
  const struct {
    const char* what;
    std::string body;
    httplib::Headers headers;
    int status;
    const char* says;
  } kCases[] = {
      {"not JSON", "{\"inputs\": [", {}, 400, "not valid JSON (a syntax error at byte"},
      {"not an object", "[1, 2]", {}, 400, "must be a JSON object"},
      {"no inputs", "{}", {}, 400, "inputs must be set"},
      {"inputs not an array", R"({"inputs": {}})", {}, 400, "inputs must be a JSON array"},
      {"no name",
       R"({"inputs": [{"datatype": "FP32", "shape": [1,1,1], "data": [1]}]})",
       {},
       400,
       "inputs[0].name must be a string"},
      {"negative dim",
       R"({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1,-1,1], "data": [1]}]})",
       {},
       400,
       "inputs[0].shape[1] must be a non-negative integer"},
      {"no data",
       R"({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1,1,1]}]})",
       {},
       400,
       "has neither data"},
      {"string data",
       R"({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1,2,1], "data": [1, "x"]}]})",
       {},
       400,
       "inputs[0].data value 1 is a string"},
      {"beyond FP32",
       R"({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1,1,1], "data": [1e39]}]})",
       {},
       400,
       "beyond FP32's range"},
      {"beyond double",
       R"({"inputs": [{"name": "input", "datatype": "FP64", "shape": [1,1,1], "data": [1e999]}]})",
       {},
       400,
       "beyond the range of a double"},
      {"count",
       R"({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1,3,1], "data": [1, 2]}]})",
       {},
       400,
       "inputs[0].contents.fp32_contents holds 2 values but shape [1, 3, 1] needs 3"},
      {"datatype",
       R"({"inputs": [{"name": "input", "datatype": "INT8", "shape": [1,1,1], "data": [1]}]})",
       {},
       400,
       "inputs[0].datatype is 'INT8'"},
      {"parameter type",
       R"({"parameters": {"sequence_id": [1]}, "inputs": []})",
       {},
       400,
       "parameters.sequence_id is a array"},
      {"deep", std::string(100, '[') + std::string(100, ']'), {}, 400, "nests deeper than 32"},
      {"both data and size",
       both + "abcd",
       {{"Inference-Header-Content-Length", std::to_string(both.size())}},
       400,
       "has both data and parameters.binary_data_size"},
      {"header past the body",
       good,
       {{"Inference-Header-Content-Length", "100000"}},
       400,
       "is more than the body's"},
      {"header not a count",
       good,
       {{"Inference-Header-Content-Length", "ten"}},
       400,
       "Inference-Header-Content-Length must be a byte count"},
      {"binary left over",
       good + "abcd",
       {{"Inference-Header-Content-Length", std::to_string(good.size())}},
       400,
       "4 bytes of binary data follow the JSON but the inputs' binary_data_size add up to 0"},
      {"raw body size",
       "abc",
       {{"Inference-Header-Content-Length", "0"}},
       400,
       "not a positive multiple of 4"},
      {"batch limit", InferJson(Values(9, 2), 9), {}, 429, "--max_batch=8"},
      {"unknown sequence",
       InferJson(Values(1, 2), 1, {{"parameters", {{"sequence_id", "s"}}}}),
       {},
       400,
       "must set sequence_start"},
  };
  for (const auto& c : kCases) {
    httplib::Result r =
        http_->Post("/v2/models/s4-demo/infer", c.headers, c.body, "application/json");
    ASSERT_TRUE(r) << c.what << ": " << httplib::to_string(r.error());
    EXPECT_EQ(r->status, c.status) << c.what << ": " << r->body;
    json j = json::parse(r->body, nullptr, false);
    ASSERT_TRUE(j.is_object() && j.contains("error")) << c.what << ": " << r->body;
    EXPECT_THAT(j["error"].get<std::string>(), HasSubstr(c.says)) << c.what;
  }
  httplib::Result unknown = http_->Post("/v2/models/nope/infer", good, "application/json");
  EXPECT_EQ(unknown->status, 404);
  // A body over --max_message_bytes (1 MiB here) is refused unread.
  httplib::Result big =
      http_->Post("/v2/models/s4-demo/infer", std::string(2 << 20, ' '), "application/json");
  ASSERT_TRUE(big);
  EXPECT_EQ(big->status, 413);
  EXPECT_THAT(json::parse(big->body)["error"].get<std::string>(),
              HasSubstr("--max_message_bytes=1048576"));
  // And the server is fine.
  EXPECT_EQ(Must(http_->Post("/v2/models/s4-demo/infer", good, "application/json")).status, 200);
}

TEST_F(OipTest, RestSequencesWithStringIds) {
  const std::vector<float> x = Values(1, 200, 0.4);
  const std::vector<float> want = InferValues("s4-demo", 1, 200, 0.4);
  std::vector<float> got;
  const int split[] = {1, 99, 100};
  int t = 0;
  for (int i = 0; i < 3; ++i) {
    json parameters = {{"sequence_id", "e333c95a-07fc-42d2-ab16-033b1a566ed5"}};
    if (i == 0) parameters["sequence_start"] = true;
    if (i == 2) parameters["sequence_end"] = true;
    const std::vector<float> part(x.begin() + t, x.begin() + t + split[i]);
    httplib::Result r =
        http_->Post("/v2/models/s4-demo/infer", InferJson(part, 1, {{"parameters", parameters}}),
                    "application/json");
    ASSERT_EQ(r->status, 200) << r->body;
    const std::vector<float> y = JsonOutput(json::parse(r->body));
    got.insert(got.end(), y.begin(), y.end());
    t += split[i];
  }
  ASSERT_EQ(got.size(), want.size());
  for (size_t i = 0; i < want.size(); ++i) EXPECT_NEAR(got[i], want[i], 1e-5) << i;
  // Integer ids too, and an ended id is unknown.
  httplib::Result start = http_->Post(
      "/v2/models/s4-demo/infer",
      InferJson(Values(1, 3), 1,
                {{"parameters",
                  {{"sequence_id", 42}, {"sequence_start", true}, {"sequence_end", true}}}}),
      "application/json");
  EXPECT_EQ(start->status, 200);
  httplib::Result after = http_->Post(
      "/v2/models/s4-demo/infer",
      InferJson(Values(1, 3), 1, {{"parameters", {{"sequence_id", 42}}}}), "application/json");
  EXPECT_EQ(after->status, 400);
}

TEST_F(OipTest, RestCallersAndScopes) {
  RestartWithCallers();
  const std::string body = InferJson(Values(1, 4), 1);
  EXPECT_EQ(Must(http_->Get("/v2/health/live")).status, 200);
  EXPECT_EQ(Must(http_->Get("/v2")).status, 200);
  httplib::Result anonymous = http_->Post("/v2/models/s4-demo/infer", body, "application/json");
  EXPECT_EQ(anonymous->status, 401);
  EXPECT_THAT(json::parse(anonymous->body)["error"].get<std::string>(),
              HasSubstr("no credentials"));
  EXPECT_EQ(Must(http_->Post("/v2/models/s4-demo/infer", {{"Authorization", "Bearer nobody"}}, body,
                             "application/json"))
                .status,
            401);
  EXPECT_EQ(Must(http_->Post("/v2/models/s4-demo/infer", {{"Authorization", "Bearer alice-token"}},
                             body, "application/json"))
                .status,
            200);
  httplib::Result denied =
      http_->Post("/v2/models/legt-delay/infer", {{"Authorization", "Bearer alice-token"}}, body,
                  "application/json");
  EXPECT_EQ(denied->status, 403);
  EXPECT_THAT(json::parse(denied->body)["error"].get<std::string>(), HasSubstr("run:legt-delay"));
  EXPECT_EQ(
      Must(http_->Get("/v2/models/s4-demo", {{"Authorization", "Bearer alice-token"}})).status,
      200);
  EXPECT_EQ(Must(http_->Get("/v2/models/s4-demo")).status, 401);
  EXPECT_EQ(Must(http_->Post("/v2/repository/index", {{"Authorization", "Bearer bob-token"}}, "",
                             "application/json"))
                .status,
            403);
}

TEST_F(OipTest, RestDrain) {
  server_->BeginDrain();
  EXPECT_EQ(Must(http_->Get("/v2/health/live")).status, 200);
  const httplib::Response ready = Must(http_->Get("/v2/health/ready"));
  EXPECT_EQ(ready.status, 503);
  EXPECT_EQ(json::parse(ready.body, nullptr, false)["ready"], false);
  EXPECT_EQ(Must(http_->Get("/v2/models/s4-demo/ready")).status, 400);
  const httplib::Response infer =
      Must(http_->Post("/v2/models/s4-demo/infer", InferJson(Values(1, 4), 1), "application/json"));
  EXPECT_EQ(infer.status, 503);
  EXPECT_THAT(json::parse(infer.body, nullptr, false)["error"].dump(), HasSubstr("draining"));
}

TEST_F(OipTest, RestCallsAreCounted) {
  ASSERT_EQ(
      Must(http_->Post("/v2/models/s4-demo/infer", InferJson(Values(1, 4), 1), "application/json"))
          .status,
      200);
  ASSERT_EQ(Must(http_->Get("/v2/models/nope")).status, 404);
  const std::string text = server_->metrics().Text();
  EXPECT_THAT(text, HasSubstr(R"(ssm_rpc_requests_total{code="OK",rpc="REST ModelInfer"} 1)"));
  EXPECT_THAT(text,
              HasSubstr(R"(ssm_rpc_requests_total{code="NOT_FOUND",rpc="REST ModelMetadata"} 1)"));
}

TEST_F(OipTest, AnIdleKeepAliveConnectionDoesNotHoldTheShutdown) {
  http_->set_keep_alive(true);
  ASSERT_EQ(Must(http_->Get("/v2/health/live")).status, 200);
  // The connection now waits in cpp-httplib's keep-alive loop (5 s).
  const absl::Time start = absl::Now();
  server_->Shutdown(absl::ZeroDuration());
  EXPECT_LT(absl::Now() - start, absl::Seconds(2));
}

}  // namespace
}  // namespace ssm::server::testing
