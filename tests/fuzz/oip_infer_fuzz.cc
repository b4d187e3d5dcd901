// Fuzzes the Open Inference Protocol's request path without a transport:
// arbitrary bytes split into inference.ModelInferRequest messages, each
// planned and run by the server's own code (oip_core.h: PlanInfer, then
// RunInfer), whole sequences in pieces and Triton sequences through one
// SequenceTable over one SessionManager on the fuzz catalog, so several
// requests of a sequence (start, continue, end, a restart, another
// caller's id) meet in one input. What ModelInfer, ModelStreamInfer and
// REST infer add around it (gRPC, HTTP, the pool) is out of scope; the
// REST body codec has its own harness (oip_json_fuzz.cc).
//
// Input: byte 0 says who sends each request (bit i % 8 of request i: set,
// "bob", else "alice"), then the requests, each a 2-byte little-endian
// length and its bytes (fuzz_util.h's framing). Bytes that do not parse as
// a ModelInferRequest are skipped, as a transport would refuse them before
// this path. The registry and the table start empty for every input.
//
// Contracts: OipServer::Infer's (oip_fuzz_util.h): the documented codes
// with bounded messages; an accepted response of the promised shape,
// datatype and byte size; sequences that give one session's outputs bit for
// bit, and live sequences that only a request of theirs moves.

#include <cstdint>
#include <limits>
#include <string>
#include <string_view>
#include <vector>

#include "absl/strings/str_cat.h"
#include "fuzz_util.h"
#include "oip_fuzz_util.h"

namespace ssm::fuzz {
namespace {

using inference::InferParameter;
using inference::ModelInferRequest;

void RunRequests(const uint8_t* data, size_t size) {
  if (size < 1) return;
  const uint8_t owners = data[0];
  const std::vector<std::string_view> frames =
      SplitFrames(std::string_view(reinterpret_cast<const char*>(data) + 1, size - 1));
  OipServer server;
  for (size_t i = 0; i < frames.size(); ++i) {
    ModelInferRequest request;
    if (!request.ParseFromArray(frames[i].data(), static_cast<int>(frames[i].size()))) continue;
    inference::ModelInferResponse response;
    server.Infer(request, (owners >> (i % 8)) & 1 ? "bob" : "alice", &response).IgnoreError();
  }
}

// A request of sequence `id`.
ModelInferRequest InSequence(ModelInferRequest r, const InferParameter& id, bool start,
                             bool end) {
  SetSequence(&r, id, start, end);
  return r;
}

void WriteSeeds(const std::string& dir) {
  const auto seed = [&](const std::string& name, uint8_t owners,
                        const std::vector<ModelInferRequest>& requests) {
    std::vector<std::string> frames;
    for (const ModelInferRequest& r : requests) frames.push_back(SerializeForSeed(r));
    WriteSeed(dir, name, std::string(1, static_cast<char>(owners)) + JoinFrames(frames));
  };
  const auto one = [&](const std::string& name, const ModelInferRequest& r) { seed(name, 0, {r}); };
  const OipInput f32{{1, 6, 1}};
  const OipInput f32_raw{{1, 6, 1}, false, true};
  const OipInput f64{{1, 6, 1}, true};
  const OipInput f64_raw{{1, 6, 1}, true, true};

  // Whole sequences, every way a tensor travels.
  one("whole-fp32", OipRequest("legt", "", {{2, 8, 1}}));
  one("whole-fp32-raw", OipRequest("s4", "1", {{1, 16, 1}, false, true}));
  one("whole-fp64", OipRequest("delay", "", {{3, 5, 1}, true}));
  one("whole-fp64-raw", OipRequest("legs", "", f64_raw));
  ModelInferRequest typed_out = OipRequest("legs", "", f32_raw);
  (*typed_out.add_outputs()->mutable_parameters())["binary_data"].set_bool_param(false);
  typed_out.mutable_outputs(0)->set_name("output");
  typed_out.set_id("q-1");
  one("whole-raw-in-typed-out", typed_out);
  ModelInferRequest raw_out = OipRequest("s4", "2", {{1, 64, 1}});
  raw_out.add_outputs()->set_name("output");
  (*raw_out.mutable_outputs(0)->mutable_parameters())["binary_data"].set_bool_param(true);
  one("whole-s4-v2-raw-out", raw_out);
  one("whole-s4-bidi", OipRequest("s4-bidi", "", {{1, 7, 1}}));

  // Sequences.
  seed("seq-s4", 0,
       {InSequence(OipRequest("s4", "", f32), Uint64Id(42), true, false),
        InSequence(OipRequest("s4", "", {{1, 70, 1}, false, true}), Uint64Id(42), false, false),
        InSequence(OipRequest("s4", "", f64), Uint64Id(42), false, true)});
  seed("seq-legt-string-id", 0,
       {InSequence(OipRequest("legt", "1", {{2, 3, 1}}), StringId("abc"), true, false),
        InSequence(OipRequest("legt", "1", {{2, 5, 1}, true, true}), StringId("abc"), false, false),
        InSequence(OipRequest("legt", "1", {{2, 1, 1}}), StringId("abc"), false, true)});
  InferParameter int64_id;
  int64_id.set_int64_param(7);
  seed("seq-one-request", 0, {InSequence(OipRequest("legs", "", f32), int64_id, true, true)});
  seed("seq-restart", 0,
       {InSequence(OipRequest("delay", "", f32), Uint64Id(5), true, false),
        InSequence(OipRequest("delay", "", f32), Uint64Id(5), false, false),
        InSequence(OipRequest("delay", "", f32_raw), Uint64Id(5), true, false),
        InSequence(OipRequest("delay", "", f32), Uint64Id(5), false, false)});
  seed("seq-continue-unknown", 0, {InSequence(OipRequest("s4", "", f32), Uint64Id(9), false, false)});
  seed("seq-wrong-batch", 0,
       {InSequence(OipRequest("legt", "", {{2, 3, 1}}), Uint64Id(3), true, false),
        InSequence(OipRequest("legt", "", {{1, 3, 1}}), Uint64Id(3), false, false)});
  // alice starts 1, bob cannot continue it and starts his own 1, alice
  // continues hers.
  seed("seq-two-callers", 0b0110,
       {InSequence(OipRequest("s4", "", f32), Uint64Id(1), true, false),
        InSequence(OipRequest("s4", "", f32), Uint64Id(1), false, false),
        InSequence(OipRequest("s4", "", f32), Uint64Id(1), true, false),
        InSequence(OipRequest("s4", "", f32), Uint64Id(1), false, false)});
  seed("seq-bidi-refused", 0, {InSequence(OipRequest("s4-bidi", "", f32), Uint64Id(1), true, false)});
  // 4 sessions at most, 3 a caller: alice's fourth start is refused.
  std::vector<ModelInferRequest> starts;
  for (uint64_t id = 1; id <= 5; ++id) {
    starts.push_back(InSequence(OipRequest("legt", "", f32), Uint64Id(id), true, false));
  }
  seed("seq-too-many", 0b10000, starts);
  // "delay" gives its input back: FP64 input beyond float32's range makes an
  // output the wire cannot carry, refused without moving the sequence,
  // whether it continues the sequence, restarts it or is a sequence of one.
  ModelInferRequest huge = OipRequest("delay", "", f64);
  for (int i = 0; i < 6; ++i) huge.mutable_inputs(0)->mutable_contents()->set_fp64_contents(i, 1e300);
  seed("seq-refused-chunk", 0,
       {InSequence(OipRequest("delay", "", f32), Uint64Id(2), true, false),
        InSequence(huge, Uint64Id(2), false, false),
        InSequence(huge, Uint64Id(2), true, false),
        InSequence(huge, Uint64Id(2), true, true),
        InSequence(OipRequest("delay", "", f32), Uint64Id(2), false, true)});
  seed("seq-chunk-past-limit", 0,
       {InSequence(OipRequest("legs", "", f32), Uint64Id(4), true, false),
        InSequence(OipRequest("legs", "", {{1, 81, 1}, false, true}), Uint64Id(4), false, false)});

  // Refusals.
  one("unknown-model", OipRequest("nope", "", f32));
  one("broken-model", OipRequest("broken", "", f32));
  one("no-model", OipRequest("", "", f32));
  one("unknown-version", OipRequest("s4", "9", f32));
  one("bad-version", OipRequest("s4", "01", f32));
  ModelInferRequest two_inputs = OipRequest("legt", "", f32);
  *two_inputs.add_inputs() = two_inputs.inputs(0);
  one("two-inputs", two_inputs);
  ModelInferRequest wrong_name = OipRequest("legt", "", f32);
  wrong_name.mutable_inputs(0)->set_name("x");
  one("wrong-input-name", wrong_name);
  ModelInferRequest int32 = OipRequest("legt", "", f32);
  int32.mutable_inputs(0)->set_datatype("INT32");
  one("int32", int32);
  one("two-dims", OipRequest("legt", "", {{6, 1}}));
  one("zero-steps", OipRequest("legt", "", {{1, 0, 1}}));
  one("wrong-features", OipRequest("legt", "", {{1, 3, 2}}));
  one("overflowing-shape", OipRequest("legt", "", {{int64_t{1} << 40, int64_t{1} << 40, 1}, false, true}));
  ModelInferRequest short_raw = OipRequest("legt", "", f32_raw);
  short_raw.mutable_raw_input_contents(0)->pop_back();
  one("raw-short", short_raw);
  ModelInferRequest both = OipRequest("legt", "", f32_raw);
  both.mutable_inputs(0)->mutable_contents()->add_fp32_contents(1);
  one("raw-and-typed", both);
  ModelInferRequest other_field = OipRequest("legt", "", f32);
  other_field.mutable_inputs(0)->mutable_contents()->add_int_contents(1);
  one("typed-wrong-field", other_field);
  ModelInferRequest nan = OipRequest("legt", "", f32);
  nan.mutable_inputs(0)->mutable_contents()->set_fp32_contents(2, std::numeric_limits<float>::quiet_NaN());
  one("nan", nan);
  ModelInferRequest inf = OipRequest("legt", "", f64_raw);
  const double plus_inf = std::numeric_limits<double>::infinity();
  inf.mutable_raw_input_contents(0)->replace(8, 8, reinterpret_cast<const char*>(&plus_inf), 8);
  one("inf-raw", inf);
  ModelInferRequest unknown_output = OipRequest("legt", "", f32);
  unknown_output.add_outputs()->set_name("state");
  one("unknown-output", unknown_output);
  ModelInferRequest binary_int = OipRequest("legt", "", f32);
  binary_int.add_outputs()->set_name("output");
  (*binary_int.mutable_outputs(0)->mutable_parameters())["binary_data"].set_int64_param(1);
  one("binary-data-not-bool", binary_int);
  InferParameter double_id;
  double_id.set_double_param(1.5);
  one("sequence-id-double", InSequence(OipRequest("s4", "", f32), double_id, true, false));
  one("start-without-id", InSequence(OipRequest("s4", "", f32), Uint64Id(0), true, false));
  one("string-id-too-long",
      InSequence(OipRequest("s4", "", f32), StringId(std::string(257, 'x')), true, false));
  InferParameter negative_id;
  negative_id.set_int64_param(-1);
  one("negative-id", InSequence(OipRequest("s4", "", f32), negative_id, true, false));
  one("past-max-batch", OipRequest("legt", "", {{9, 1, 1}, false, true}));
  one("past-max-unary-length", OipRequest("legs", "", {{1, 97, 1}, false, true}));
  one("past-max-length", OipRequest("s4", "", {{1, 65, 1}, false, true}));
  one("past-max-message-bytes", OipRequest("legt", "", {{5, 60, 1}, false, true}));
  one("empty", ModelInferRequest());
}

}  // namespace
}  // namespace ssm::fuzz

extern "C" int LLVMFuzzerInitialize(int* argc, char*** argv) {
  ssm::fuzz::HandleSeedFlag(argc, argv, ssm::fuzz::WriteSeeds);
  ssm::fuzz::Catalog();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  ssm::fuzz::RunRequests(data, size);
  return 0;
}
