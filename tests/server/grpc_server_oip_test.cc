// The Open Inference Protocol over gRPC (inference.GRPCInferenceService)
// in-process: every RPC, the tensors both ways, every bad input with its
// exact code, Triton's sequences through ModelInfer and ModelStreamInfer,
// auth, the drain and the metrics.

#include <gmock/gmock.h>
#include <grpcpp/generic/generic_stub.h>
#include <gtest/gtest.h>

#include <string>
#include <thread>
#include <vector>

#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "oip_fixture.h"

namespace ssm::server::testing {
namespace {

// A status as a gtest assertion: a failure shows its code and message.
::testing::AssertionResult Ok(const grpc::Status& status) {
  if (status.ok()) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure()
         << "gRPC status " << status.error_code() << ": " << status.error_message();
}

using ::testing::ElementsAre;
using ::testing::HasSubstr;

using OipStream = grpc::ClientReaderWriter<inf::ModelInferRequest, inf::ModelStreamInferResponse>;

// A bug must fail a test, not hang it.
void Deadline(grpc::ClientContext* context) {
  context->set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(20));
}

TEST_F(OipTest, HealthAndMetadataRpcs) {
  grpc::ClientContext c1, c2, c3;
  inf::ServerLiveResponse live;
  ASSERT_TRUE(oip_->ServerLive(&c1, {}, &live).ok());
  EXPECT_TRUE(live.live());
  inf::ServerReadyResponse ready;
  ASSERT_TRUE(oip_->ServerReady(&c2, {}, &ready).ok());
  EXPECT_TRUE(ready.ready());
  inf::ServerMetadataResponse metadata;
  ASSERT_TRUE(oip_->ServerMetadata(&c3, {}, &metadata).ok());
  EXPECT_EQ(metadata.name(), "ssmserve");
  EXPECT_FALSE(metadata.version().empty());
  EXPECT_THAT(metadata.extensions(), ElementsAre("binary_tensor_data", "model_configuration",
                                                 "sequence", "sequence(string_id)"));

  auto model_ready = [&](const std::string& name, const std::string& version,
                         inf::ModelReadyResponse* out) {
    grpc::ClientContext c;
    inf::ModelReadyRequest r;
    r.set_name(name);
    r.set_version(version);
    return oip_->ModelReady(&c, r, out);
  };
  inf::ModelReadyResponse mr;
  ASSERT_TRUE(model_ready("s4-demo", "", &mr).ok());
  EXPECT_TRUE(mr.ready());
  ASSERT_TRUE(model_ready("s4-demo", "1", &mr).ok());
  EXPECT_TRUE(mr.ready());
  // Not served: false, not an error. Malformed: an error.
  ASSERT_TRUE(model_ready("nope", "", &mr).ok());
  EXPECT_FALSE(mr.ready());
  ASSERT_TRUE(model_ready("s4-demo", "7", &mr).ok());
  EXPECT_FALSE(mr.ready());
  EXPECT_EQ(model_ready("s4-demo", "v1", &mr).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(model_ready("", "", &mr).error_code(), grpc::StatusCode::INVALID_ARGUMENT);

  auto model_metadata = [&](const std::string& name, const std::string& version,
                            inf::ModelMetadataResponse* out) {
    grpc::ClientContext c;
    inf::ModelMetadataRequest r;
    r.set_name(name);
    r.set_version(version);
    return oip_->ModelMetadata(&c, r, out);
  };
  inf::ModelMetadataResponse mm;
  ASSERT_TRUE(model_metadata("legt-delay", "", &mm).ok());
  EXPECT_EQ(mm.name(), "legt-delay");
  EXPECT_THAT(mm.versions(), ElementsAre("1"));
  EXPECT_EQ(mm.platform(), "ssmserve");
  ASSERT_EQ(mm.inputs_size(), 1);
  EXPECT_EQ(mm.inputs(0).name(), "input");
  EXPECT_EQ(mm.inputs(0).datatype(), "FP32");
  EXPECT_THAT(mm.inputs(0).shape(), ElementsAre(-1, -1, 1));
  ASSERT_EQ(mm.outputs_size(), 1);
  EXPECT_EQ(mm.outputs(0).name(), "output");
  EXPECT_THAT(mm.outputs(0).shape(), ElementsAre(-1, -1, 3));
  EXPECT_EQ(mm.properties().at("streamable"), "true");
  EXPECT_EQ(mm.properties().at("max_length"), "65536");
  EXPECT_EQ(model_metadata("nope", "", &mm).error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_EQ(model_metadata("legt-delay", "2", &mm).error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_EQ(model_metadata("legt-delay", "01", &mm).error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);

  grpc::ClientContext c4;
  inf::ModelConfigRequest config_request;
  config_request.set_name("legt-delay");
  inf::ModelConfigResponse config;
  ASSERT_TRUE(oip_->ModelConfig(&c4, config_request, &config).ok());
  const inf::ModelConfig& mc = config.config();
  EXPECT_EQ(mc.name(), "legt-delay");
  EXPECT_EQ(mc.backend(), "ssmserve");
  EXPECT_EQ(mc.max_batch_size(), 8);  // the fixture's --max_batch
  ASSERT_EQ(mc.input_size(), 1);
  EXPECT_EQ(mc.input(0).data_type(), inf::TYPE_FP32);
  EXPECT_THAT(mc.input(0).dims(), ElementsAre(-1, 1));
  EXPECT_THAT(mc.output(0).dims(), ElementsAre(-1, 3));
  EXPECT_EQ(mc.sequence_batching().max_sequence_idle_microseconds(), 300'000'000u);  // 5m
  EXPECT_THAT(mc.version_policy().specific().versions(), ElementsAre(1));
  EXPECT_THAT(mc.parameters().at("config").string_value(), HasSubstr("measure: MEASURE_LEGT"));
  grpc::ClientContext c5;
  config_request.set_name("nope");
  EXPECT_EQ(oip_->ModelConfig(&c5, config_request, &config).error_code(),
            grpc::StatusCode::NOT_FOUND);

  grpc::ClientContext c6;
  inf::RepositoryIndexResponse index;
  ASSERT_TRUE(oip_->RepositoryIndex(&c6, {}, &index).ok());
  std::vector<std::string> names;
  for (const auto& m : index.models()) {
    names.push_back(m.name());
    EXPECT_EQ(m.state(), "READY");
    EXPECT_EQ(m.version(), "1");
  }
  EXPECT_THAT(names, ElementsAre("legs-memory", "legt-delay", "s4-demo"));
}

TEST_F(OipTest, ModelInferGivesInfersBitsRawOrTyped) {
  const int batch = 3, steps = 500;
  const std::vector<float> want = InferValues("s4-demo", batch, steps);
  for (bool raw : {true, false}) {
    inf::ModelInferRequest request = OipRequest("s4-demo", Values(batch, steps), batch, raw);
    request.set_id("req-17");
    inf::ModelInferResponse response;
    const grpc::Status status = ModelInfer(request, &response);
    ASSERT_TRUE(status.ok()) << status.error_message();
    EXPECT_EQ(response.model_name(), "s4-demo");
    EXPECT_EQ(response.model_version(), "1");
    EXPECT_EQ(response.id(), "req-17");
    ASSERT_EQ(response.outputs_size(), 1);
    EXPECT_EQ(response.outputs(0).name(), "output");
    EXPECT_EQ(response.outputs(0).datatype(), "FP32");
    EXPECT_THAT(response.outputs(0).shape(), ElementsAre(batch, steps, 1));
    // The output comes back the way the input went.
    EXPECT_EQ(response.raw_output_contents_size(), raw ? 1 : 0);
    EXPECT_EQ(response.outputs(0).contents().fp32_contents_size(), raw ? 0 : batch * steps);
    EXPECT_TRUE(SameBits(OutputValues(response), want)) << "raw " << raw;
  }
  // FP64 inputs holding the same (float32) values: the same bits again.
  for (bool raw : {true, false}) {
    const std::vector<float> x = Values(batch, steps);
    inf::ModelInferRequest request = OipRequest("s4-demo", x, batch, /*raw=*/false);
    auto* in = request.mutable_inputs(0);
    in->set_datatype("FP64");
    in->clear_contents();
    std::vector<double> wide(x.begin(), x.end());
    if (raw) {
      request.add_raw_input_contents(
          std::string(reinterpret_cast<const char*>(wide.data()), wide.size() * 8));
    } else {
      for (double v : wide) in->mutable_contents()->add_fp64_contents(v);
    }
    inf::ModelInferResponse response;
    ASSERT_TRUE(Ok(ModelInfer(request, &response)));
    EXPECT_TRUE(SameBits(OutputValues(response), want)) << "FP64 raw " << raw;
  }
  // The requested output's binary_data overrides the mirror, both ways.
  for (bool raw_in : {true, false}) {
    inf::ModelInferRequest request = OipRequest("legt-delay", Values(1, 9), 1, raw_in);
    auto* out = request.add_outputs();
    out->set_name("output");
    (*out->mutable_parameters())["binary_data"].set_bool_param(!raw_in);
    inf::ModelInferResponse response;
    ASSERT_TRUE(Ok(ModelInfer(request, &response)));
    EXPECT_EQ(response.raw_output_contents_size(), raw_in ? 0 : 1);
    EXPECT_TRUE(SameBits(OutputValues(response), InferValues("legt-delay", 1, 9)));
  }
}

// One row of the bad-input table: what to break and what must come back.
struct BadInput {
  const char* what;
  std::function<void(inf::ModelInferRequest*)> edit;
  grpc::StatusCode code;
  const char* says;
};

TEST_F(OipTest, BadInputsGetTheirExactCodeAndNothingElseChanges) {
  // A live sequence, to see that none of the bad requests touches it.
  inf::ModelInferRequest start = OipRequest("s4-demo", Values(1, 30), 1);
  SetSequence(&start, 99, true, false);
  inf::ModelInferResponse response;
  ASSERT_TRUE(Ok(ModelInfer(start, &response)));

  auto bad_float = [](float v, bool raw) {
    return [v, raw](inf::ModelInferRequest* r) {
      std::vector<float> x = Values(1, 8);
      x[5] = v;
      *r = OipRequest("s4-demo", x, 1, raw);
    };
  };
  const BadInput kCases[] = {
      {"unknown model", [](auto* r) { r->set_model_name("nope"); }, grpc::StatusCode::NOT_FOUND,
       "model 'nope' is not served"},
      {"no model", [](auto* r) { r->set_model_name(""); }, grpc::StatusCode::INVALID_ARGUMENT,
       "model_name must be set"},
      {"unknown version", [](auto* r) { r->set_model_version("3"); }, grpc::StatusCode::NOT_FOUND,
       "has no version 3"},
      {"bad version", [](auto* r) { r->set_model_version("latest"); },
       grpc::StatusCode::INVALID_ARGUMENT, "model_version must be empty"},
      {"datatype", [](auto* r) { r->mutable_inputs(0)->set_datatype("INT32"); },
       grpc::StatusCode::INVALID_ARGUMENT, "inputs[0].datatype is 'INT32'"},
      {"rank", [](auto* r) { r->mutable_inputs(0)->mutable_shape()->RemoveLast(); },
       grpc::StatusCode::INVALID_ARGUMENT, "inputs[0].shape must have 3 dimensions"},
      {"zero dim", [](auto* r) { r->mutable_inputs(0)->set_shape(1, 0); },
       grpc::StatusCode::INVALID_ARGUMENT, "inputs[0].shape[1] (steps) must be >= 1"},
      {"d_input",
       [](auto* r) {
         r->mutable_inputs(0)->set_shape(1, 4);
         r->mutable_inputs(0)->set_shape(2, 2);
       },
       grpc::StatusCode::INVALID_ARGUMENT,
       "inputs[0].shape[2] = 2 but model 's4-demo' takes d_input 1"},
      {"typed count",
       [](auto* r) {
         *r = OipRequest("s4-demo", Values(1, 8), 1, false);
         r->mutable_inputs(0)->set_shape(1, 9);
       },
       grpc::StatusCode::INVALID_ARGUMENT,
       "inputs[0].contents.fp32_contents holds 8 values but shape [1, 9, 1] needs 9"},
      {"raw size", [](auto* r) { r->mutable_raw_input_contents(0)->append("xy"); },
       grpc::StatusCode::INVALID_ARGUMENT,
       "raw_input_contents[0] holds 34 bytes but shape [1, 8, 1] of FP32 needs 32"},
      {"raw and typed",
       [](auto* r) { r->mutable_inputs(0)->mutable_contents()->add_fp32_contents(1); },
       grpc::StatusCode::INVALID_ARGUMENT,
       "inputs[0].contents.fp32_contents and raw_input_contents are both set"},
      {"two raw entries", [](auto* r) { r->add_raw_input_contents("abcd"); },
       grpc::StatusCode::INVALID_ARGUMENT,
       "raw_input_contents has 2 entries but the request has 1 input"},
      {"wrong typed field",
       [](auto* r) {
         *r = OipRequest("s4-demo", Values(1, 8), 1, false);
         r->mutable_inputs(0)->mutable_contents()->add_int_contents(1);
       },
       grpc::StatusCode::INVALID_ARGUMENT,
       "inputs[0].contents.int_contents is set but the datatype is FP32"},
      {"two inputs", [](auto* r) { *r->add_inputs() = r->inputs(0); },
       grpc::StatusCode::INVALID_ARGUMENT, "the request has 2 inputs"},
      {"no input",
       [](auto* r) {
         r->clear_inputs();
         r->clear_raw_input_contents();
       },
       grpc::StatusCode::INVALID_ARGUMENT, "the request has 0 inputs"},
      {"input name", [](auto* r) { r->mutable_inputs(0)->set_name("INPUT0"); },
       grpc::StatusCode::INVALID_ARGUMENT, "inputs[0].name is 'INPUT0'"},
      {"NaN typed", bad_float(std::nanf(""), false), grpc::StatusCode::INVALID_ARGUMENT,
       "inputs[0].contents.fp32_contents[5] is NaN"},
      {"Inf raw", bad_float(-INFINITY, true), grpc::StatusCode::INVALID_ARGUMENT,
       "raw_input_contents[0] value 5 (FP32) is -Inf"},
      {"output name", [](auto* r) { r->add_outputs()->set_name("OUTPUT0"); },
       grpc::StatusCode::INVALID_ARGUMENT, "outputs[0].name is 'OUTPUT0'"},
      {"binary_data type",
       [](auto* r) {
         auto* o = r->add_outputs();
         o->set_name("output");
         (*o->mutable_parameters())["binary_data"].set_string_param("yes");
       },
       grpc::StatusCode::INVALID_ARGUMENT, "outputs[0].parameters.binary_data must be a bool"},
      {"sequence_id type",
       [](auto* r) { (*r->mutable_parameters())["sequence_id"].set_bool_param(true); },
       grpc::StatusCode::INVALID_ARGUMENT, "parameters.sequence_id must be an integer"},
      {"negative sequence_id",
       [](auto* r) { (*r->mutable_parameters())["sequence_id"].set_int64_param(-2); },
       grpc::StatusCode::INVALID_ARGUMENT, "parameters.sequence_id = -2 must be >= 0"},
      {"start type",
       [](auto* r) {
         SetSequence(r, 5, false, false);
         (*r->mutable_parameters())["sequence_start"].set_int64_param(1);
       },
       grpc::StatusCode::INVALID_ARGUMENT, "parameters.sequence_start must be a bool"},
      {"start without id",
       [](auto* r) { (*r->mutable_parameters())["sequence_start"].set_bool_param(true); },
       grpc::StatusCode::INVALID_ARGUMENT,
       "parameters.sequence_start is set but there is no parameters.sequence_id"},
      {"unknown sequence", [](auto* r) { SetSequence(r, 12345, false, false); },
       grpc::StatusCode::INVALID_ARGUMENT,
       "sequence 12345 of model 's4-demo' version 1 is not active"},
      {"batch limit", [](auto* r) { *r = OipRequest("s4-demo", Values(9, 2), 9); },
       grpc::StatusCode::RESOURCE_EXHAUSTED, "inputs[0].shape[0] = 9 exceeds --max_batch=8"},
      {"length limit", [](auto* r) { *r = OipRequest("legt-delay", Values(1, 20001), 1); },
       grpc::StatusCode::RESOURCE_EXHAUSTED, "exceeds --max_unary_length=20000"},
      {"model's max_length", [](auto* r) { *r = OipRequest("s4-demo", Values(1, 16385), 1); },
       grpc::StatusCode::INVALID_ARGUMENT, "exceeds model 's4-demo''s max_length 16384"},
      {"chunk limit",
       [](auto* r) {
         *r = OipRequest("s4-demo", Values(1, 4097), 1);
         SetSequence(r, 99, false, false);
       },
       grpc::StatusCode::RESOURCE_EXHAUSTED, "exceeds --max_chunk_steps=4096"},
      {"sequence batch",
       [](auto* r) {
         *r = OipRequest("s4-demo", Values(2, 3), 2);
         SetSequence(r, 99, false, false);
       },
       grpc::StatusCode::INVALID_ARGUMENT,
       "inputs[0].shape[0] = 2 but sequence 99 started with batch 1"},
  };
  for (const BadInput& c : kCases) {
    inf::ModelInferRequest request = OipRequest("s4-demo", Values(1, 8), 1);
    c.edit(&request);
    const grpc::Status status = ModelInfer(request, &response);
    EXPECT_EQ(status.error_code(), c.code) << c.what << ": " << status.error_message();
    EXPECT_THAT(status.error_message(), HasSubstr(c.says)) << c.what;
  }

  // Bytes that are no ModelInferRequest.
  grpc::GenericStub generic(channel_);
  grpc::ClientContext context;
  SetDeadline(&context);
  grpc::Slice slice(std::string("\xff\xff\xff", 3));
  grpc::ByteBuffer bytes(&slice, 1), reply;
  absl::Notification done;
  grpc::Status raw_status;
  generic.UnaryCall(&context, "/inference.GRPCInferenceService/ModelInfer", grpc::StubOptions(),
                    &bytes, &reply, [&](grpc::Status s) {
                      raw_status = std::move(s);
                      done.Notify();
                    });
  done.WaitForNotification();
  EXPECT_EQ(raw_status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(raw_status.error_message(), HasSubstr("inference.ModelInferRequest"));

  // The live sequence went on untouched: its next chunk continues it.
  const std::vector<float> all = Values(1, 50);  // starts with the start's 30 steps
  inf::ModelInferRequest next =
      OipRequest("s4-demo", std::vector<float>(all.begin() + 30, all.end()), 1);
  SetSequence(&next, 99, false, true);
  ASSERT_TRUE(Ok(ModelInfer(next, &response)));
  std::vector<float> joined = OutputValues(response);
  const std::vector<float> whole = InferValues("s4-demo", 1, 50);
  ASSERT_EQ(joined.size(), 20u);
  for (int i = 0; i < 20; ++i)
    EXPECT_NEAR(joined[i], whole[30 + i], 1e-5 * (1 + std::abs(whole[30 + i])));
  EXPECT_EQ(server_->sessions().GetStats().detached, 0);
}

// Runs `x` ([1, L, 1]) as a sequence over ModelInfer in requests of the
// given lengths (raw and typed in turn); the outputs joined.
using SetId = std::function<void(inf::ModelInferRequest*, bool start, bool end)>;
std::vector<float> SequenceOverModelInfer(inf::GRPCInferenceService::Stub* stub,
                                          const std::string& model, const std::vector<float>& x,
                                          const std::vector<int>& split, const SetId& set_id) {
  std::vector<float> out;
  size_t t = 0;
  for (size_t i = 0; i < split.size(); ++i) {
    std::vector<float> part(x.begin() + t, x.begin() + t + split[i]);
    inf::ModelInferRequest r = OipRequest(model, part, 1, i % 2 == 0);
    set_id(&r, i == 0, i + 1 == split.size());
    inf::ModelInferResponse response;
    grpc::ClientContext context;
    Deadline(&context);
    const grpc::Status status = stub->ModelInfer(&context, r, &response);
    EXPECT_TRUE(status.ok()) << status.error_message();
    std::vector<float> y = OutputValues(response);
    out.insert(out.end(), y.begin(), y.end());
    t += split[i];
  }
  return out;
}

void ExpectWireClose(const std::vector<float>& got, const std::vector<float>& want) {
  ASSERT_EQ(got.size(), want.size());
  float scale = 0;
  for (float v : want) scale = std::max(scale, std::abs(v));
  for (size_t i = 0; i < want.size(); ++i) ASSERT_NEAR(got[i], want[i], 1e-5 * scale) << i;
}

TEST_F(OipTest, SequencesOverModelInferGiveInfersOutputsForAnySplit) {
  const int steps = 400;
  const std::vector<float> x = Values(1, steps, 0.3);
  const std::vector<float> want = InferValues("s4-demo", 1, steps, 0.3);
  const std::vector<std::vector<int>> splits = {
      {400}, {1, 1, 1, 397}, {63, 64, 65, 208}, {200, 200}};
  uint64_t id = 1;
  for (const auto& split : splits) {
    ExpectWireClose(SequenceOverModelInfer(oip_.get(), "s4-demo", x, split,
                                           [id](inf::ModelInferRequest* r, bool start, bool end) {
                                             SetSequence(r, id, start, end);
                                           }),
                    want);
    ++id;
    // String ids too.
    ExpectWireClose(SequenceOverModelInfer(oip_.get(), "s4-demo", x, split,
                                           [id](inf::ModelInferRequest* r, bool start, bool end) {
                                             SetSequence(r, absl::StrCat("seq-", id), start, end);
                                           }),
                    want);
  }
  // Every sequence ended: nothing is held.
  const SessionManager::Stats stats = server_->sessions().GetStats();
  EXPECT_EQ(stats.attached + stats.detached, 0);
}

TEST_F(OipTest, SequenceCodesOverModelInfer) {
  inf::ModelInferResponse response;
  // Continue and end of an id never started: Triton's INVALID_ARGUMENT.
  for (bool end : {false, true}) {
    inf::ModelInferRequest r = OipRequest("s4-demo", Values(1, 4), 1);
    SetSequence(&r, "never", false, end);
    const grpc::Status status = ModelInfer(r, &response);
    EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
    EXPECT_THAT(status.error_message(), HasSubstr("must set sequence_start"));
  }
  // A start on a live id restarts it (the first one ends).
  inf::ModelInferRequest a = OipRequest("s4-demo", Values(1, 10), 1);
  SetSequence(&a, 7, true, false);
  ASSERT_TRUE(Ok(ModelInfer(a, &response)));
  ASSERT_TRUE(Ok(ModelInfer(a, &response)));
  EXPECT_EQ(server_->sessions().GetStats().detached, 1);
  // An int64 id and a uint64 id of the same value are the same sequence.
  inf::ModelInferRequest b = OipRequest("s4-demo", Values(1, 10), 1);
  (*b.mutable_parameters())["sequence_id"].set_int64_param(7);
  (*b.mutable_parameters())["sequence_end"].set_bool_param(true);
  ASSERT_TRUE(Ok(ModelInfer(b, &response)));
  EXPECT_EQ(server_->sessions().GetStats().detached, 0);
  EXPECT_EQ(ModelInfer(b, &response).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  // Sequence id 0 is no sequence: a whole Infer.
  inf::ModelInferRequest zero = OipRequest("legt-delay", Values(1, 6), 1);
  (*zero.mutable_parameters())["sequence_id"].set_int64_param(0);
  ASSERT_TRUE(Ok(ModelInfer(zero, &response)));
  EXPECT_TRUE(SameBits(OutputValues(response), InferValues("legt-delay", 1, 6)));
}

TEST_F(OipTest, IdleSequencesExpire) {
  Restart([](ServerOptions& o) { o.session_ttl = absl::Milliseconds(200); });
  inf::ModelInferResponse response;
  inf::ModelInferRequest start = OipRequest("legt-delay", Values(1, 4), 1);
  SetSequence(&start, 1, true, false);
  ASSERT_TRUE(Ok(ModelInfer(start, &response)));
  inf::ModelInferRequest next = OipRequest("legt-delay", Values(1, 4), 1);
  SetSequence(&next, 1, false, false);
  ASSERT_TRUE(Ok(ModelInfer(next, &response)));
  absl::SleepFor(absl::Milliseconds(400));
  const grpc::Status late = ModelInfer(next, &response);
  EXPECT_EQ(late.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(late.error_message(), HasSubstr("idle longer than --session_ttl=200ms"));
  // The configuration says so.
  grpc::ClientContext c;
  inf::ModelConfigRequest r;
  r.set_name("legt-delay");
  inf::ModelConfigResponse config;
  ASSERT_TRUE(oip_->ModelConfig(&c, r, &config).ok());
  EXPECT_EQ(config.config().sequence_batching().max_sequence_idle_microseconds(), 200'000u);
}

// Sends every request, then reads every response (the stream is pipelined).
std::vector<inf::ModelStreamInferResponse> RunStream(
    inf::GRPCInferenceService::Stub* stub, const std::vector<inf::ModelInferRequest>& requests,
    grpc::Status* status, const std::string& token = "") {
  grpc::ClientContext context;
  Deadline(&context);
  if (!token.empty()) context.AddMetadata("authorization", "Bearer " + token);
  std::unique_ptr<OipStream> stream = stub->ModelStreamInfer(&context);
  std::thread writer([&] {
    for (const auto& r : requests) {
      if (!stream->Write(r)) break;
    }
    stream->WritesDone();
  });
  std::vector<inf::ModelStreamInferResponse> out;
  inf::ModelStreamInferResponse response;
  while (stream->Read(&response)) out.push_back(response);
  writer.join();
  *status = stream->Finish();
  return out;
}

TEST_F(OipTest, ModelStreamInferInChunksGivesInfersOutputs) {
  const int steps = 300;
  const std::vector<float> x = Values(1, steps, 1.1), x2 = Values(1, steps, 2.2);
  const std::vector<float> want = InferValues("s4-demo", 1, steps, 1.1);
  const std::vector<float> want2 = InferValues("s4-demo", 1, steps, 2.2);
  // Two sequences interleaved on one stream, split differently, with a bad
  // request in the middle: it gets its error in-band and the stream and
  // both sequences go on.
  const std::vector<int> split_a = {1, 63, 64, 2, 170}, split_b = {100, 1, 199};
  std::vector<inf::ModelInferRequest> requests;
  size_t ta = 0, tb = 0;
  for (size_t i = 0; i < std::max(split_a.size(), split_b.size()); ++i) {
    if (i < split_a.size()) {
      inf::ModelInferRequest r = OipRequest(
          "s4-demo", std::vector<float>(x.begin() + ta, x.begin() + ta + split_a[i]), 1, true);
      SetSequence(&r, 1001, i == 0, i + 1 == split_a.size());
      requests.push_back(r);
      ta += split_a[i];
    }
    if (i == 1) {
      inf::ModelInferRequest bad = OipRequest("s4-demo", Values(1, 3), 1);
      bad.mutable_inputs(0)->set_datatype("BF16");
      requests.push_back(bad);
    }
    if (i < split_b.size()) {
      inf::ModelInferRequest r = OipRequest(
          "s4-demo", std::vector<float>(x2.begin() + tb, x2.begin() + tb + split_b[i]), 1, false);
      SetSequence(&r, "b", i == 0, i + 1 == split_b.size());
      requests.push_back(r);
      tb += split_b[i];
    }
  }
  grpc::Status status;
  const std::vector<inf::ModelStreamInferResponse> responses =
      RunStream(oip_.get(), requests, &status);
  ASSERT_TRUE(status.ok()) << status.error_message();
  ASSERT_EQ(responses.size(), requests.size());
  std::vector<float> got_a, got_b;
  int errors = 0;
  for (const auto& r : responses) {
    if (!r.error_message().empty()) {
      ++errors;
      EXPECT_THAT(r.error_message(), HasSubstr("INVALID_ARGUMENT: inputs[0].datatype is 'BF16'"));
      EXPECT_EQ(r.infer_response().outputs_size(), 0);
      continue;
    }
    std::vector<float> y = OutputValues(r.infer_response());
    std::vector<float>& into = r.infer_response().raw_output_contents_size() > 0 ? got_a : got_b;
    into.insert(into.end(), y.begin(), y.end());
  }
  EXPECT_EQ(errors, 1);
  ExpectWireClose(got_a, want);
  ExpectWireClose(got_b, want2);
  const SessionManager::Stats stats = server_->sessions().GetStats();
  EXPECT_EQ(stats.attached + stats.detached, 0);
}

TEST_F(OipTest, ASequenceOutlivesItsStreamAndMovesBetweenCalls) {
  const std::vector<float> x = Values(1, 100, 0.7);
  const std::vector<float> want = InferValues("s4-demo", 1, 100, 0.7);
  inf::ModelInferRequest first =
      OipRequest("s4-demo", std::vector<float>(x.begin(), x.begin() + 40), 1);
  SetSequence(&first, 5, true, false);
  grpc::Status status;
  std::vector<inf::ModelStreamInferResponse> responses = RunStream(oip_.get(), {first}, &status);
  ASSERT_TRUE(status.ok());
  ASSERT_EQ(responses.size(), 1u);
  // The stream is gone; the sequence is not: ModelInfer ends it.
  inf::ModelInferRequest rest =
      OipRequest("s4-demo", std::vector<float>(x.begin() + 40, x.end()), 1);
  SetSequence(&rest, 5, false, true);
  inf::ModelInferResponse response;
  ASSERT_TRUE(Ok(ModelInfer(rest, &response)));
  std::vector<float> got = OutputValues(responses[0].infer_response());
  const std::vector<float> tail = OutputValues(response);
  got.insert(got.end(), tail.begin(), tail.end());
  ExpectWireClose(got, want);
}

TEST_F(OipTest, BytesThatAreNoRequestEndTheStream) {
  grpc::GenericStub generic(channel_);
  grpc::ClientContext context;
  SetDeadline(&context);
  grpc::CompletionQueue cq;
  std::unique_ptr<grpc::GenericClientAsyncReaderWriter> call =
      generic.PrepareCall(&context, "/inference.GRPCInferenceService/ModelStreamInfer", &cq);
  void* tag;
  bool ok;
  call->StartCall(reinterpret_cast<void*>(1));
  cq.Next(&tag, &ok);
  grpc::Slice slice(std::string("\x0a\xff", 2));
  grpc::ByteBuffer bytes(&slice, 1);
  call->Write(bytes, reinterpret_cast<void*>(2));
  cq.Next(&tag, &ok);
  call->WritesDone(reinterpret_cast<void*>(3));
  cq.Next(&tag, &ok);
  grpc::Status status;
  call->Finish(&status, reinterpret_cast<void*>(4));
  while (cq.Next(&tag, &ok) && tag != reinterpret_cast<void*>(4)) {
  }
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(status.error_message(), HasSubstr("inference.ModelInferRequest"));
  cq.Shutdown();
  while (cq.Next(&tag, &ok)) {
  }
}

TEST_F(OipTest, CallersAndScopes) {
  RestartWithCallers();
  inf::ModelInferResponse response;
  const inf::ModelInferRequest s4 = OipRequest("s4-demo", Values(1, 5), 1);
  const inf::ModelInferRequest legt = OipRequest("legt-delay", Values(1, 5), 1);
  EXPECT_EQ(ModelInfer(s4, &response).error_code(), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_EQ(ModelInfer(s4, &response, "wrong").error_code(), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_TRUE(Ok(ModelInfer(s4, &response, "alice-token")));
  const grpc::Status denied = ModelInfer(legt, &response, "alice-token");
  EXPECT_EQ(denied.error_code(), grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_THAT(denied.error_message(), HasSubstr("\"run:legt-delay\""));
  EXPECT_TRUE(Ok(ModelInfer(legt, &response, "bob-token")));

  // Health and server metadata are open; model calls need run:<model>; the
  // index needs list.
  grpc::ClientContext c1, c2, c3, c4, c5, c6;
  inf::ServerLiveResponse live;
  EXPECT_TRUE(oip_->ServerLive(&c1, {}, &live).ok());
  inf::ServerMetadataResponse sm;
  EXPECT_TRUE(oip_->ServerMetadata(&c2, {}, &sm).ok());
  inf::ModelMetadataRequest mm_request;
  mm_request.set_name("s4-demo");
  inf::ModelMetadataResponse mm;
  EXPECT_EQ(oip_->ModelMetadata(&c3, mm_request, &mm).error_code(),
            grpc::StatusCode::UNAUTHENTICATED);
  c4.AddMetadata("authorization", "Bearer bob-token");
  inf::RepositoryIndexResponse index;
  EXPECT_EQ(oip_->RepositoryIndex(&c4, {}, &index).error_code(),
            grpc::StatusCode::PERMISSION_DENIED);
  c5.AddMetadata("authorization", "Bearer alice-token");
  EXPECT_TRUE(oip_->RepositoryIndex(&c5, {}, &index).ok());
  inf::ModelReadyRequest ready_request;
  ready_request.set_name("legt-delay");
  inf::ModelReadyResponse ready;
  c6.AddMetadata("authorization", "Bearer alice-token");
  EXPECT_EQ(oip_->ModelReady(&c6, ready_request, &ready).error_code(),
            grpc::StatusCode::PERMISSION_DENIED);

  // Sequences are the caller's: bob's sequence 1 is not alice's.
  inf::ModelInferRequest start = OipRequest("s4-demo", Values(1, 5), 1);
  SetSequence(&start, 1, true, false);
  ASSERT_TRUE(Ok(ModelInfer(start, &response, "alice-token")));
  inf::ModelInferRequest next = OipRequest("s4-demo", Values(1, 5), 1);
  SetSequence(&next, 1, false, false);
  EXPECT_EQ(ModelInfer(next, &response, "bob-token").error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_TRUE(Ok(ModelInfer(next, &response, "alice-token")));

  // A stream: refused credentials end it; a missing scope is one request's
  // error, in-band.
  grpc::Status status;
  std::vector<inf::ModelStreamInferResponse> responses = RunStream(oip_.get(), {s4}, &status);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_TRUE(responses.empty());
  responses = RunStream(oip_.get(), {legt, s4}, &status, "alice-token");
  ASSERT_TRUE(status.ok()) << status.error_message();
  ASSERT_EQ(responses.size(), 2u);
  EXPECT_THAT(responses[0].error_message(), HasSubstr("PERMISSION_DENIED"));
  EXPECT_TRUE(responses[1].error_message().empty());
}

TEST_F(OipTest, DrainingRefusesNewWorkAndLetsSequencesFinish) {
  inf::ModelInferResponse response;
  inf::ModelInferRequest start = OipRequest("legt-delay", Values(1, 5), 1);
  SetSequence(&start, 3, true, false);
  ASSERT_TRUE(Ok(ModelInfer(start, &response)));
  server_->BeginDrain();
  grpc::ClientContext c1, c2, c3;
  inf::ServerLiveResponse live;
  ASSERT_TRUE(oip_->ServerLive(&c1, {}, &live).ok());
  EXPECT_TRUE(live.live());
  inf::ServerReadyResponse ready;
  ASSERT_TRUE(oip_->ServerReady(&c2, {}, &ready).ok());
  EXPECT_FALSE(ready.ready());
  inf::ModelReadyRequest mr_request;
  mr_request.set_name("legt-delay");
  inf::ModelReadyResponse mr;
  ASSERT_TRUE(oip_->ModelReady(&c3, mr_request, &mr).ok());
  EXPECT_FALSE(mr.ready());
  EXPECT_EQ(ModelInfer(OipRequest("legt-delay", Values(1, 5), 1), &response).error_code(),
            grpc::StatusCode::UNAVAILABLE);
  // On a stream: the live sequence continues and ends; a new one is refused.
  inf::ModelInferRequest next = OipRequest("legt-delay", Values(1, 5), 1);
  SetSequence(&next, 3, false, true);
  inf::ModelInferRequest another = OipRequest("legt-delay", Values(1, 5), 1);
  SetSequence(&another, 4, true, false);
  grpc::Status status;
  std::vector<inf::ModelStreamInferResponse> responses =
      RunStream(oip_.get(), {next, another}, &status);
  ASSERT_TRUE(status.ok()) << status.error_message();
  ASSERT_EQ(responses.size(), 2u);
  EXPECT_TRUE(responses[0].error_message().empty()) << responses[0].error_message();
  EXPECT_THAT(responses[1].error_message(), HasSubstr("UNAVAILABLE"));
}

TEST_F(OipTest, MetricsCountTheRpcsAndTheStreamsRequests) {
  inf::ModelInferResponse response;
  ASSERT_TRUE(Ok(ModelInfer(OipRequest("legt-delay", Values(1, 5), 1), &response)));
  inf::ModelInferRequest bad = OipRequest("nope", Values(1, 5), 1);
  ASSERT_FALSE(ModelInfer(bad, &response).ok());
  grpc::Status status;
  RunStream(oip_.get(), {OipRequest("legt-delay", Values(1, 5), 1), bad}, &status);
  ASSERT_TRUE(status.ok());
  const std::string text = server_->metrics().Text();
  for (const char* line : {
           R"(ssm_rpc_requests_total{code="OK",rpc="ModelInfer"} 1)",
           R"(ssm_rpc_requests_total{code="NOT_FOUND",rpc="ModelInfer"} 1)",
           R"(ssm_rpc_requests_total{code="OK",rpc="ModelStreamInfer"} 1)",
           R"(ssm_rpc_requests_total{code="OK",rpc="ModelStreamInfer/request"} 1)",
           R"(ssm_rpc_requests_total{code="NOT_FOUND",rpc="ModelStreamInfer/request"} 1)",
           R"(ssm_rpc_latency_seconds_count{rpc="ModelInfer"} 2)",
       }) {
    EXPECT_THAT(text, HasSubstr(line));
  }
}

}  // namespace
}  // namespace ssm::server::testing
