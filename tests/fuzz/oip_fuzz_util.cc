#include "oip_fuzz_util.h"

#include <cstring>
#include <optional>
#include <utility>

#include <google/protobuf/io/coded_stream.h>
#include <google/protobuf/io/zero_copy_stream_impl_lite.h>

#include "absl/strings/str_cat.h"
#include "absl/types/span.h"
#include "fuzz_util.h"
#include "server/oip_names.h"

namespace ssm::fuzz {
namespace {

namespace oip = ::ssm::server::oip;
using inference::InferParameter;
using inference::ModelInferRequest;
using inference::ModelInferResponse;

server::SessionManager::Options SessionOptions() {
  server::SessionManager::Options o;
  o.max_sessions = 4;
  o.quota_sessions = 3;
  return o;
}

// The request's input as the harness reads it (little-endian raw bytes or
// typed contents), independently of oip_core's reader.
std::vector<double> InputValues(const oip::InferPlan& plan, const ModelInferRequest& request) {
  std::vector<double> x(static_cast<size_t>(plan.shape.size()));
  for (size_t i = 0; i < x.size(); ++i) {
    if (plan.raw_input) {
      const char* at = request.raw_input_contents(0).data();
      if (plan.fp64) {
        std::memcpy(&x[i], at + 8 * i, 8);
      } else {
        float f;
        std::memcpy(&f, at + 4 * i, 4);
        x[i] = f;
      }
    } else {
      const inference::InferTensorContents& c = request.inputs(0).contents();
      const int k = static_cast<int>(i);
      x[i] = plan.fp64 ? c.fp64_contents(k) : c.fp32_contents(k);
    }
  }
  return x;
}

}  // namespace

server::RequestLimits OipLimits() {
  server::RequestLimits l;
  l.max_batch = 8;
  l.max_chunk_steps = 80;
  l.max_unary_length = 96;
  l.max_message_bytes = 4096;
  return l;
}

OipServer::OipServer() : sessions_(SessionOptions()), table_(&Catalog(), &sessions_, OipLimits()) {}

absl::Status OipServer::Infer(const ModelInferRequest& request, absl::string_view owner,
                              ModelInferResponse* response) {
  absl::StatusOr<oip::InferPlan> plan = oip::PlanInfer(request, Catalog(), OipLimits());
  absl::Status status = plan.status();
  if (plan.ok()) {
    status = oip::RunInfer(*plan, request, table_, owner, [](int, int) { return absl::OkStatus(); },
                           response);
  }
  if (!status.ok()) {
    CheckInferRefusal(status, "ModelInfer");
    CheckLive();
    return status;
  }
  const oip::InferPlan& p = *plan;
  const int64_t n = p.shape.batch * p.shape.steps * p.served.model->d_output();
  Check(response->model_name() == p.served.name &&
            response->model_version() == absl::StrCat(p.served.version),
        "ModelInfer names another model version than the one that ran");
  Check(response->id() == request.id(), "ModelInfer lost the request's id");
  Check(response->outputs_size() == 1, "ModelInfer answers with other than one output");
  const ModelInferResponse::InferOutputTensor& out = response->outputs(0);
  Check(out.name() == oip::kOutputName && out.datatype() == "FP32",
        "ModelInfer's output is not 'output', FP32");
  Check(out.shape_size() == 3 && out.shape(0) == p.shape.batch && out.shape(1) == p.shape.steps &&
            out.shape(2) == p.served.model->d_output(),
        "ModelInfer's output has the wrong shape");
  if (p.raw_output) {
    Check(response->raw_output_contents_size() == 1 &&
              static_cast<int64_t>(response->raw_output_contents(0).size()) == 4 * n &&
              out.contents().fp32_contents_size() == 0,
          "ModelInfer's raw output has the wrong byte size");
  } else {
    Check(response->raw_output_contents_size() == 0 && out.contents().fp32_contents_size() == n,
          "ModelInfer's typed output has the wrong value count");
  }
  Check(4 * n <= OipLimits().max_message_bytes, "ModelInfer's output is past --max_message_bytes");
  if (p.in_sequence()) CheckSequence(p, request, owner, OutputValues(*response));
  CheckLive();
  return status;
}

std::vector<OipServer::Live>::iterator OipServer::FindLive(const oip::InferPlan& plan,
                                                          absl::string_view owner) {
  for (auto it = live_.begin(); it != live_.end(); ++it) {
    if (it->owner == owner && it->served.name == plan.served.name &&
        it->served.version == plan.served.version && it->id == plan.sequence) {
      return it;
    }
  }
  return live_.end();
}

void OipServer::CheckSequence(const oip::InferPlan& plan, const ModelInferRequest& request,
                              absl::string_view owner, const std::vector<float>& output) {
  const int batch = static_cast<int>(plan.shape.batch);
  const int steps = static_cast<int>(plan.shape.steps);
  auto live = FindLive(plan, owner);
  std::optional<Session> fresh;
  Session* reference = nullptr;
  if (plan.start) {
    absl::StatusOr<Session> session = Session::Create(plan.served.model, batch);
    if (!session.ok()) Fail(absl::StrCat("the harness's session: ", session.status().ToString()));
    session->set_output_limit(server::kMaxWireValue);
    fresh.emplace(*std::move(session));
    reference = &*fresh;
  } else {
    Check(live != live_.end(), "a continue or end of a sequence that is not live was accepted");
    Check(live->batch == batch, "a sequence was continued with another batch than its start's");
    reference = &live->reference;
  }
  std::vector<double> y(output.size());
  const std::vector<double> x = InputValues(plan, request);
  Check(reference->Run(x, steps, absl::MakeSpan(y)).ok(),
        "the harness's session refused a chunk the sequence ran");
  for (size_t i = 0; i < y.size(); ++i) {
    const float want = static_cast<float>(y[i]);
    if (std::memcmp(&want, &output[i], sizeof(float)) != 0) {
      Fail(absl::StrCat("sequence ", plan.sequence.ToString(), " output ", i, " is ", output[i],
                        " but one session on the same chunks gives ", want));
    }
  }
  if (plan.start) {
    // A start on a live id ends that sequence; start + end holds nothing.
    if (live != live_.end()) live_.erase(live);
    if (!plan.end) {
      live_.push_back(Live{std::string(owner), plan.served, plan.sequence, batch, steps,
                           *std::move(fresh)});
    }
  } else {
    live->position += steps;
    if (plan.end) live_.erase(live);
  }
}

void OipServer::CheckLive() const {
  for (const Live& l : live_) {
    const std::optional<int64_t> at = table_.Position(l.owner, l.served, l.id);
    if (!at.has_value() || *at != l.position) {
      Fail(absl::StrCat("sequence ", l.id.ToString(), " of '", l.owner, "' should be live at ",
                        l.position, ", is ", at.has_value() ? absl::StrCat(*at) : "not live"));
    }
  }
  const server::SessionManager::Stats stats = sessions_.GetStats();
  Check(stats.attached == 0 && stats.detached == static_cast<int>(live_.size()),
        "the registry does not hold one detached session per live sequence");
}

std::vector<float> OutputValues(const ModelInferResponse& response) {
  if (response.raw_output_contents_size() > 0) {
    const std::string& raw = response.raw_output_contents(0);
    std::vector<float> out(raw.size() / 4);
    std::memcpy(out.data(), raw.data(), out.size() * 4);
    return out;
  }
  const auto& values = response.outputs(0).contents().fp32_contents();
  return std::vector<float>(values.begin(), values.end());
}

std::string SerializeForSeed(const google::protobuf::Message& message) {
  std::string out;
  {
    google::protobuf::io::StringOutputStream stream(&out);
    google::protobuf::io::CodedOutputStream coded(&stream);
    coded.SetSerializationDeterministic(true);
    if (!message.SerializeToCodedStream(&coded)) Fail("SerializeForSeed");
  }
  return out;
}

ModelInferRequest OipRequest(const std::string& model, const std::string& version,
                             const OipInput& input) {
  ModelInferRequest r;
  r.set_model_name(model);
  r.set_model_version(version);
  ModelInferRequest::InferInputTensor* in = r.add_inputs();
  in->set_name(oip::kInputName);
  in->set_datatype(input.fp64 ? "FP64" : "FP32");
  int64_t n = 1;
  for (int64_t d : input.shape) {
    in->add_shape(d);
    // A shape past int64 (a seed of the refusal) gets one value.
    if (__builtin_mul_overflow(n, d, &n)) n = 1;
  }
  const std::vector<double> values = Wave(static_cast<size_t>(std::max<int64_t>(n, 0)), 0.7);
  if (input.raw) {
    std::string* bytes = r.add_raw_input_contents();
    for (double v : values) {
      if (input.fp64) {
        bytes->append(reinterpret_cast<const char*>(&v), 8);
      } else {
        const float f = static_cast<float>(v);
        bytes->append(reinterpret_cast<const char*>(&f), 4);
      }
    }
  } else {
    for (double v : values) {
      if (input.fp64) {
        in->mutable_contents()->add_fp64_contents(v);
      } else {
        in->mutable_contents()->add_fp32_contents(static_cast<float>(v));
      }
    }
  }
  return r;
}

void SetSequence(ModelInferRequest* request, const InferParameter& id, bool start, bool end) {
  auto& p = *request->mutable_parameters();
  p["sequence_id"] = id;
  if (start) p["sequence_start"].set_bool_param(true);
  if (end) p["sequence_end"].set_bool_param(true);
}

InferParameter Uint64Id(uint64_t id) {
  InferParameter p;
  p.set_uint64_param(id);
  return p;
}

InferParameter StringId(const std::string& id) {
  InferParameter p;
  p.set_string_param(id);
  return p;
}

}  // namespace ssm::fuzz
