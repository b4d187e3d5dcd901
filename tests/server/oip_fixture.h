// The fixture of the Open Inference Protocol suites (grpc_server_oip_test.cc,
// http_oip_test.cc): the in-process server of grpc_server_fixture.h with its
// REST port on, the inference.GRPCInferenceService stub and an HTTP client
// on it, and request builders.

#ifndef SSM_TESTS_SERVER_OIP_FIXTURE_H_
#define SSM_TESTS_SERVER_OIP_FIXTURE_H_

#include <cmath>
#include <cstring>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "absl/functional/function_ref.h"
#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "grpc_server_fixture.h"
#include "inference/grpc_service.grpc.pb.h"
#include "server/callers.h"
// After Eigen (through the fixture): cpp-httplib includes <resolv.h>,
// whose `_res` macro breaks Eigen's headers.
#include <httplib.h>

namespace ssm::server::testing {

namespace inf = ::inference;

// batch x steps x 1 float32 values: sequence b at step s is
// sin(0.05 s + b + phase) (MakeInput's).
inline std::vector<float> Values(int batch, int steps, double phase = 0) {
  const v1::Tensor t = MakeInput(batch, steps, phase);
  return std::vector<float>(t.values().begin(), t.values().end());
}

inline std::string RawBytes(const std::vector<float>& v) {
  return std::string(reinterpret_cast<const char*>(v.data()), v.size() * sizeof(float));
}

inline std::vector<float> FromRaw(const std::string& bytes) {
  std::vector<float> v(bytes.size() / sizeof(float));
  std::memcpy(v.data(), bytes.data(), v.size() * sizeof(float));
  return v;
}

// A ModelInferRequest for `model` with one FP32 input [batch, steps, 1],
// raw or typed.
inline inf::ModelInferRequest OipRequest(const std::string& model, const std::vector<float>& x,
                                         int batch, bool raw = true) {
  inf::ModelInferRequest r;
  r.set_model_name(model);
  auto* in = r.add_inputs();
  in->set_name("input");
  in->set_datatype("FP32");
  in->add_shape(batch);
  in->add_shape(static_cast<int64_t>(x.size()) / batch);
  in->add_shape(1);
  if (raw) {
    r.add_raw_input_contents(RawBytes(x));
  } else {
    for (float v : x) in->mutable_contents()->add_fp32_contents(v);
  }
  return r;
}

// Sets Triton's sequence parameters on `r`.
inline void SetSequence(inf::ModelInferRequest* r, uint64_t id, bool start, bool end) {
  (*r->mutable_parameters())["sequence_id"].set_uint64_param(id);
  if (start) (*r->mutable_parameters())["sequence_start"].set_bool_param(true);
  if (end) (*r->mutable_parameters())["sequence_end"].set_bool_param(true);
}
inline void SetSequence(inf::ModelInferRequest* r, const std::string& id, bool start, bool end) {
  (*r->mutable_parameters())["sequence_id"].set_string_param(id);
  if (start) (*r->mutable_parameters())["sequence_start"].set_bool_param(true);
  if (end) (*r->mutable_parameters())["sequence_end"].set_bool_param(true);
}

// The output's values, raw or typed.
inline std::vector<float> OutputValues(const inf::ModelInferResponse& r) {
  if (r.raw_output_contents_size() > 0) return FromRaw(r.raw_output_contents(0));
  if (r.outputs_size() == 0) return {};
  const auto& c = r.outputs(0).contents().fp32_contents();
  return std::vector<float>(c.begin(), c.end());
}

// Two callers for the auth tests: alice may run s4-* models and list;
// bob may run every model, nothing else.
inline std::string OipCallersJson() {
  return absl::StrCat(R"({"callers": [
    {"principal": "alice", "token_sha256": [")",
                      absl::BytesToHexString(Sha256("alice-token")),
                      R"("], "scopes": ["run:s4-*", "list"]},
    {"principal": "bob", "token_sha256": [")",
                      absl::BytesToHexString(Sha256("bob-token")), R"("], "scopes": ["run:*"]}
  ]})");
}

class OipTest : public GrpcServerTest {
 protected:
  ServerOptions Options() const override {
    ServerOptions o = DefaultOptions();
    o.http_address = "127.0.0.1:0";
    return o;
  }

  void SetUp() override {
    GrpcServerTest::SetUp();
    Connect();
  }

  // StartServerWith, and the stub and HTTP client pointed at the new server.
  void Restart(absl::FunctionRef<void(ServerOptions&)> change) {
    StartServerWith(change);
    Connect();
  }

  // Restarts with the callers file of OipCallersJson.
  void RestartWithCallers() {
    char dir[] = "/tmp/ssm-oip-XXXXXX";
    callers_dir_ = mkdtemp(dir);
    const std::string path = callers_dir_ + "/callers.json";
    std::ofstream(path) << OipCallersJson();
    Restart([&](ServerOptions& o) { o.auth_callers = path; });
  }

  void TearDown() override {
    GrpcServerTest::TearDown();
    if (!callers_dir_.empty()) {
      std::remove((callers_dir_ + "/callers.json").c_str());
      rmdir(callers_dir_.c_str());
    }
  }

  void Connect() {
    oip_ = inf::GRPCInferenceService::NewStub(channel_);
    http_ = std::make_unique<httplib::Client>("127.0.0.1", server_->http_port());
    http_->set_read_timeout(20, 0);
  }

  grpc::Status ModelInfer(const inf::ModelInferRequest& request, inf::ModelInferResponse* response,
                          const std::string& token = "") {
    grpc::ClientContext context;
    SetDeadline(&context);
    if (!token.empty()) context.AddMetadata("authorization", "Bearer " + token);
    return oip_->ModelInfer(&context, request, response);
  }

  // ssm.v1 Infer's output values for the same input.
  std::vector<float> InferValues(const std::string& model, int batch, int steps,
                                 double phase = 0) {
    v1::InferResponse response;
    const grpc::Status status = Infer(InferRequestFor(model, MakeInput(batch, steps, phase)),
                                      &response);
    EXPECT_TRUE(status.ok()) << status.error_message();
    return std::vector<float>(response.output().values().begin(),
                              response.output().values().end());
  }

  std::unique_ptr<inf::GRPCInferenceService::Stub> oip_;
  std::unique_ptr<httplib::Client> http_;
  std::string callers_dir_;
};

// Equal bit for bit (NaN-free float vectors).
inline bool SameBits(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

}  // namespace ssm::server::testing

#endif  // SSM_TESTS_SERVER_OIP_FIXTURE_H_
