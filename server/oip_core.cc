#include "server/oip_core.h"

#include <cmath>
#include <cstring>
#include <limits>
#include <string>
#include <string_view>
#include <tuple>
#include <utility>
#include <vector>

#include "absl/algorithm/container.h"

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "server/echo.h"
#include "server/forward.h"
#include "server/model_config.h"

#ifndef SSM_VERSION
#define SSM_VERSION "unknown"
#endif

namespace ssm::server::oip {
namespace {

using inference::InferParameter;
using inference::InferTensorContents;
using inference::ModelInferRequest;
using inference::ModelInferResponse;
using Parameters = google::protobuf::Map<std::string, InferParameter>;

std::string ShapeText(const google::protobuf::RepeatedField<int64_t>& shape) {
  return absl::StrCat("[", absl::StrJoin(shape, ", "), "]");
}

// Triton's sequence parameters into the plan.
absl::Status ReadSequenceParameters(const Parameters& parameters, InferPlan* plan) {
  if (auto it = parameters.find("sequence_id"); it != parameters.end()) {
    const InferParameter& p = it->second;
    switch (p.parameter_choice_case()) {
      case InferParameter::kInt64Param:
        if (p.int64_param() < 0) {
          return absl::InvalidArgumentError(absl::StrCat(
              "parameters.sequence_id = ", p.int64_param(), " must be >= 0 (0 means none)"));
        }
        plan->sequence = SequenceId::Number(static_cast<uint64_t>(p.int64_param()));
        break;
      case InferParameter::kUint64Param:
        plan->sequence = SequenceId::Number(p.uint64_param());
        break;
      case InferParameter::kStringParam:
        if (p.string_param().size() > kMaxSequenceIdBytes) {
          return absl::InvalidArgumentError(
              absl::StrCat("parameters.sequence_id is a string of ", p.string_param().size(),
                           " bytes; at most ", kMaxSequenceIdBytes));
        }
        plan->sequence = SequenceId::String(p.string_param());
        break;
      default:
        return absl::InvalidArgumentError(
            "parameters.sequence_id must be an integer (int64_param >= 0 or uint64_param) or a "
            "string (string_param)");
    }
  }
  for (auto [name, flag] : {std::pair{"sequence_start", &plan->start}, {"sequence_end", &plan->end}}) {
    auto it = parameters.find(name);
    if (it == parameters.end()) continue;
    if (it->second.parameter_choice_case() != InferParameter::kBoolParam) {
      return absl::InvalidArgumentError(
          absl::StrCat("parameters.", name, " must be a bool (bool_param)"));
    }
    *flag = it->second.bool_param();
  }
  if ((plan->start || plan->end) && plan->sequence.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "parameters.", plan->start ? "sequence_start" : "sequence_end",
        " is set but there is no parameters.sequence_id (0 and \"\" mean none)"));
  }
  return absl::OkStatus();
}

// The typed-contents fields by name, for the "both set" and "wrong field"
// checks.
struct ContentsField {
  const char* name;
  int size;
};
std::vector<ContentsField> Fields(const InferTensorContents& c) {
  return {{"bool_contents", c.bool_contents_size()},     {"int_contents", c.int_contents_size()},
          {"int64_contents", c.int64_contents_size()},   {"uint_contents", c.uint_contents_size()},
          {"uint64_contents", c.uint64_contents_size()}, {"fp32_contents", c.fp32_contents_size()},
          {"fp64_contents", c.fp64_contents_size()},     {"bytes_contents", c.bytes_contents_size()}};
}

const char* NonFiniteName(double v) { return std::isnan(v) ? "NaN" : (v > 0 ? "+Inf" : "-Inf"); }

// The input's values widened to double, refusing NaN and Inf.
absl::Status ReadInput(const InferPlan& plan, const ModelInferRequest& request,
                       std::vector<double>* x) {
  const int64_t n = plan.shape.size();
  x->resize(static_cast<size_t>(n));
  double* out = x->data();
  if (plan.raw_input) {
    const char* bytes = request.raw_input_contents(0).data();
    for (int64_t i = 0; i < n; ++i) {
      double v;
      if (plan.fp64) {
        std::memcpy(&v, bytes + 8 * i, 8);
      } else {
        float f;
        std::memcpy(&f, bytes + 4 * i, 4);
        v = f;
      }
      if (!std::isfinite(v)) {
        return absl::InvalidArgumentError(absl::StrCat("raw_input_contents[0] value ", i, " (",
                                                       plan.fp64 ? "FP64" : "FP32", ") is ",
                                                       NonFiniteName(v)));
      }
      out[i] = v;
    }
    return absl::OkStatus();
  }
  const InferTensorContents& c = request.inputs(0).contents();
  for (int64_t i = 0; i < n; ++i) {
    const double v = plan.fp64 ? c.fp64_contents(static_cast<int>(i))
                               : static_cast<double>(c.fp32_contents(static_cast<int>(i)));
    if (!std::isfinite(v)) {
      return absl::InvalidArgumentError(absl::StrCat("inputs[0].contents.",
                                                     plan.fp64 ? "fp64" : "fp32", "_contents[", i,
                                                     "] is ", NonFiniteName(v)));
    }
    out[i] = v;
  }
  return absl::OkStatus();
}

void WriteOutput(const InferPlan& plan, const SequenceShape& shape, absl::Span<const double> y,
                 ModelInferResponse* response) {
  ModelInferResponse::InferOutputTensor* out = response->add_outputs();
  out->set_name(kOutputName);
  out->set_datatype("FP32");
  out->add_shape(shape.batch);
  out->add_shape(shape.steps);
  out->add_shape(shape.features);
  if (plan.raw_output) {
    std::string* bytes = response->add_raw_output_contents();
    bytes->resize(y.size() * 4);
    char* dst = bytes->data();
    for (size_t i = 0; i < y.size(); ++i) {
      const float f = static_cast<float>(y[i]);
      std::memcpy(dst + 4 * i, &f, 4);
    }
  } else {
    auto* values = out->mutable_contents()->mutable_fp32_contents();
    values->Resize(static_cast<int>(y.size()), 0.0f);
    float* dst = values->mutable_data();
    for (size_t i = 0; i < y.size(); ++i) dst[i] = static_cast<float>(y[i]);
  }
}

}  // namespace

const char* ServerVersion() { return SSM_VERSION; }

absl::StatusOr<int64_t> ParseVersion(absl::string_view text, absl::string_view field) {
  if (text.empty()) return 0;
  int64_t version = 0;
  // Digits only, no sign, no leading zero: one spelling per version.
  const bool digits = absl::c_all_of(text, [](char c) { return absl::ascii_isdigit(c); });
  if (!digits || text[0] == '0' || text.size() > 18 || !absl::SimpleAtoi(text, &version)) {
    return absl::InvalidArgumentError(
        absl::StrCat(field, " must be empty (the newest version) or a positive decimal number, got '",
                     Echo(text), "'"));
  }
  return version;
}

absl::StatusOr<ServedModel> FindModel(const ModelCatalog& catalog, absl::string_view name,
                                      absl::string_view version, absl::string_view name_field,
                                      absl::string_view version_field) {
  if (name.empty()) return absl::InvalidArgumentError(absl::StrCat(name_field, " must be set"));
  absl::StatusOr<int64_t> number = ParseVersion(version, version_field);
  if (!number.ok()) return number.status();
  return catalog.Find(name, *number);
}

void FillServerMetadata(inference::ServerMetadataResponse* out) {
  out->set_name(kServerName);
  out->set_version(ServerVersion());
  for (const char* extension : kExtensions) out->add_extensions(extension);
}

void FillModelMetadata(const ModelCatalog& catalog, const ServedModel& served,
                       inference::ModelMetadataResponse* out) {
  const ssm::Model& model = *served.model;
  out->set_name(served.name);
  for (const ModelListing& listing : catalog.List()) {
    if (listing.name != served.name) continue;
    for (int64_t v : listing.versions) out->add_versions(absl::StrCat(v));
  }
  out->set_platform(kPlatform);
  for (auto [list, name, features] :
       {std::tuple{out->mutable_inputs(), kInputName, model.d_input()},
        {out->mutable_outputs(), kOutputName, model.d_output()}}) {
    inference::ModelMetadataResponse::TensorMetadata* t = list->Add();
    t->set_name(name);
    t->set_datatype("FP32");
    t->add_shape(-1);  // batch
    t->add_shape(-1);  // steps
    t->add_shape(features);
  }
  auto& p = *out->mutable_properties();
  p["version"] = absl::StrCat(served.version);
  p["max_length"] = absl::StrCat(model.max_length());
  p["streamable"] = model.streamable() ? "true" : "false";
  if (!model.streamable()) p["not_streamable_reason"] = model.not_streamable_reason();
  p["fingerprint"] = absl::StrFormat("%016x", model.fingerprint());
  p["input_datatypes"] = "FP32,FP64";
  if (!model.spec().description.empty()) p["description"] = model.spec().description;
}

void FillModelConfig(const ModelCatalog& catalog, const ServedModel& served,
                     const RequestLimits& limits, absl::Duration sequence_idle,
                     inference::ModelConfig* out) {
  const ssm::Model& model = *served.model;
  out->set_name(served.name);
  out->set_platform(kPlatform);
  out->set_backend(kPlatform);
  auto* versions = out->mutable_version_policy()->mutable_specific();
  for (const ModelListing& listing : catalog.List()) {
    if (listing.name != served.name) continue;
    for (int64_t v : listing.versions) versions->add_versions(v);
  }
  out->set_max_batch_size(limits.max_batch);
  inference::ModelInput* input = out->add_input();
  input->set_name(kInputName);
  input->set_data_type(inference::TYPE_FP32);
  input->add_dims(-1);  // steps; the batch dimension is implied by max_batch_size
  input->add_dims(model.d_input());
  inference::ModelOutput* output = out->add_output();
  output->set_name(kOutputName);
  output->set_data_type(inference::TYPE_FP32);
  output->add_dims(-1);
  output->add_dims(model.d_output());
  if (model.streamable()) {
    out->mutable_sequence_batching()->set_max_sequence_idle_microseconds(
        static_cast<uint64_t>(absl::ToInt64Microseconds(sequence_idle)));
  }
  auto& p = *out->mutable_parameters();
  p["config"].set_string_value(ModelConfigToText(ModelConfigFromSpec(model.spec())));
  p["version"].set_string_value(absl::StrCat(served.version));
  p["fingerprint"].set_string_value(absl::StrFormat("%016x", model.fingerprint()));
  p["max_length"].set_string_value(absl::StrCat(model.max_length()));
}

void FillRepositoryIndex(const ModelCatalog& catalog, bool ready_only,
                         inference::RepositoryIndexResponse* out) {
  for (const ModelListing& listing : catalog.List()) {
    for (int64_t v : listing.versions) {
      auto* m = out->add_models();
      m->set_name(listing.name);
      m->set_version(absl::StrCat(v));
      m->set_state("READY");
    }
    if (!listing.error.empty() && !ready_only) {
      auto* m = out->add_models();
      m->set_name(listing.name);
      m->set_state("UNAVAILABLE");
      m->set_reason(listing.error);
    }
  }
}

absl::StatusOr<InferPlan> PlanInfer(const ModelInferRequest& request, const ModelCatalog& catalog,
                                    const RequestLimits& limits) {
  InferPlan plan;
  absl::StatusOr<ServedModel> served = FindModel(catalog, request.model_name(),
                                                 request.model_version(), "model_name",
                                                 "model_version");
  if (!served.ok()) return served.status();
  plan.served = *std::move(served);
  const ssm::Model& model = *plan.served.model;
  const std::string& name = plan.served.name;

  if (absl::Status s = ReadSequenceParameters(request.parameters(), &plan); !s.ok()) return s;
  if (plan.in_sequence() && !model.streamable()) {
    return absl::FailedPreconditionError(absl::StrCat("parameters.sequence_id: model '", name,
                                                      "' cannot run sequences: ",
                                                      model.not_streamable_reason()));
  }

  if (request.inputs_size() != 1) {
    return absl::InvalidArgumentError(absl::StrCat("the request has ", request.inputs_size(),
                                                   " inputs; model '", name,
                                                   "' takes one, named '", kInputName, "'"));
  }
  const ModelInferRequest::InferInputTensor& in = request.inputs(0);
  if (in.name() != kInputName) {
    return absl::InvalidArgumentError(absl::StrCat("inputs[0].name is '", Echo(in.name()),
                                                   "'; model '", name, "' takes one input, named '",
                                                   kInputName, "'"));
  }
  if (in.datatype() == "FP64") {
    plan.fp64 = true;
  } else if (in.datatype() != "FP32") {
    return absl::InvalidArgumentError(absl::StrCat("inputs[0].datatype is '", Echo(in.datatype()),
                                                   "'; model '", name, "' takes FP32 or FP64"));
  }
  if (in.shape_size() != 3) {
    return absl::InvalidArgumentError(
        absl::StrCat("inputs[0].shape must have 3 dimensions [batch, steps, features], got ",
                     ShapeText(in.shape())));
  }
  static constexpr const char* kDims[] = {"batch", "steps", "features"};
  for (int i = 0; i < 3; ++i) {
    if (in.shape(i) < 1) {
      return absl::InvalidArgumentError(absl::StrCat("inputs[0].shape[", i, "] (", kDims[i],
                                                     ") must be >= 1, got ", in.shape(i)));
    }
  }
  if (in.shape(2) != model.d_input()) {
    return absl::InvalidArgumentError(absl::StrCat("inputs[0].shape[2] = ", in.shape(2),
                                                   " but model '", name, "' takes d_input ",
                                                   model.d_input()));
  }
  // Each dimension is >= 1: saturate rather than let a hostile shape wrap.
  int64_t count = 1;
  for (int64_t d : in.shape()) {
    if (count > std::numeric_limits<int32_t>::max() / d) {
      return absl::InvalidArgumentError(absl::StrCat(
          "inputs[0].shape ", ShapeText(in.shape()), " has more than 2^31 values"));
    }
    count *= d;
  }
  plan.shape = SequenceShape{in.shape(0), in.shape(1), in.shape(2)};

  const char* const type = plan.fp64 ? "FP64" : "FP32";
  const char* const typed_field = plan.fp64 ? "fp64_contents" : "fp32_contents";
  const std::vector<ContentsField> fields = Fields(in.contents());
  if (request.raw_input_contents_size() > 0) {
    plan.raw_input = true;
    if (request.raw_input_contents_size() != 1) {
      return absl::InvalidArgumentError(absl::StrCat("raw_input_contents has ",
                                                     request.raw_input_contents_size(),
                                                     " entries but the request has 1 input"));
    }
    for (const ContentsField& f : fields) {
      if (f.size > 0) {
        return absl::InvalidArgumentError(absl::StrCat(
            "inputs[0].contents.", f.name,
            " and raw_input_contents are both set: send the values one way"));
      }
    }
    const int64_t want = count * (plan.fp64 ? 8 : 4);
    const int64_t got = static_cast<int64_t>(request.raw_input_contents(0).size());
    if (got != want) {
      return absl::InvalidArgumentError(absl::StrCat("raw_input_contents[0] holds ", got,
                                                     " bytes but shape ", ShapeText(in.shape()),
                                                     " of ", type, " needs ", want));
    }
  } else {
    for (const ContentsField& f : fields) {
      if (f.size > 0 && f.name != std::string_view(typed_field)) {
        return absl::InvalidArgumentError(absl::StrCat("inputs[0].contents.", f.name,
                                                       " is set but the datatype is ", type,
                                                       ": its values go in ", typed_field));
      }
    }
    const int got = plan.fp64 ? in.contents().fp64_contents_size()
                              : in.contents().fp32_contents_size();
    if (got != count) {
      return absl::InvalidArgumentError(absl::StrCat("inputs[0].contents.", typed_field,
                                                     " holds ", got, " values but shape ",
                                                     ShapeText(in.shape()), " needs ", count));
    }
  }

  if (absl::Status s = CheckBatchLimit(plan.shape.batch, "inputs[0].shape[0]", limits); !s.ok()) {
    return s;
  }
  const int64_t steps = plan.shape.steps;
  if (plan.in_sequence()) {
    if (steps > limits.max_chunk_steps) {
      return absl::ResourceExhaustedError(
          absl::StrCat("inputs[0].shape[1] = ", steps, " steps exceeds --max_chunk_steps=",
                       limits.max_chunk_steps, " (a sequence's requests are its chunks)"));
    }
  } else {
    if (steps > limits.max_unary_length) {
      return absl::ResourceExhaustedError(absl::StrCat("inputs[0].shape[1] = ", steps,
                                                       " steps exceeds --max_unary_length=",
                                                       limits.max_unary_length));
    }
    if (steps > model.max_length()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "inputs[0].shape[1] = ", steps, " steps exceeds model '", name, "''s max_length ",
          model.max_length(), " (a sequence, sent in requests with sequence_id, may be longer)"));
    }
  }

  plan.raw_output = plan.raw_input;
  for (int i = 0; i < request.outputs_size(); ++i) {
    const ModelInferRequest::InferRequestedOutputTensor& o = request.outputs(i);
    if (o.name() != kOutputName) {
      return absl::InvalidArgumentError(absl::StrCat("outputs[", i, "].name is '", Echo(o.name()),
                                                     "'; model '", name,
                                                     "' produces one output, named '",
                                                     kOutputName, "'"));
    }
    if (auto it = o.parameters().find("binary_data"); it != o.parameters().end()) {
      if (it->second.parameter_choice_case() != InferParameter::kBoolParam) {
        return absl::InvalidArgumentError(
            absl::StrCat("outputs[", i, "].parameters.binary_data must be a bool"));
      }
      plan.raw_output = it->second.bool_param();
    }
  }
  if (absl::Status s = CheckResponseBytes(
          plan.shape.batch * steps * model.d_output() * 4, "the output", limits);
      !s.ok()) {
    return s;
  }
  return plan;
}

absl::Status RunInfer(const InferPlan& plan, const ModelInferRequest& request,
                      SequenceTable& sequences, absl::string_view owner,
                      absl::FunctionRef<absl::Status(int done, int total)> stop,
                      ModelInferResponse* response) {
  const ssm::Model& model = *plan.served.model;
  std::vector<double> x;
  if (absl::Status s = ReadInput(plan, request, &x); !s.ok()) return s;
  const SequenceShape out_shape{plan.shape.batch, plan.shape.steps, model.d_output()};
  std::vector<double> y(static_cast<size_t>(out_shape.size()));
  const int batch = static_cast<int>(plan.shape.batch);
  const int steps = static_cast<int>(plan.shape.steps);
  if (plan.in_sequence()) {
    SequenceRequest r;
    r.id = plan.sequence;
    r.start = plan.start;
    r.end = plan.end;
    r.owner = owner;
    r.served = &plan.served;
    r.batch = batch;
    r.steps = steps;
    r.x = x;
    r.y = absl::MakeSpan(y);
    r.batch_field = "inputs[0].shape[0]";
    absl::StatusOr<int64_t> position = sequences.Run(r);
    if (!position.ok()) return position.status();
  } else if (absl::Status s = ForwardInPieces(model, x, batch, steps, absl::MakeSpan(y),
                                              [&](int done) { return stop(done, batch); });
             !s.ok()) {
    return s;
  }
  if (absl::Status s = CheckWireValues(y, out_shape, "outputs[0]"); !s.ok()) return s;
  response->set_model_name(plan.served.name);
  response->set_model_version(absl::StrCat(plan.served.version));
  response->set_id(request.id());
  WriteOutput(plan, out_shape, y, response);
  return absl::OkStatus();
}

std::string StreamErrorMessage(const absl::Status& status) {
  return BoundedMessage(
      absl::StrCat(absl::StatusCodeToString(status.code()), ": ", status.message()));
}

}  // namespace ssm::server::oip
