// The Open Inference Protocol's meaning, without a transport: what the gRPC
// service (oip_service.h) and the REST server (oip_http.h) both answer,
// over their wire messages (package `inference`, proto/inference/). The
// REST server turns its JSON into the same messages first, so one request
// gives the same checks, the same codes and the same output bits on every
// transport.
//
// Tensors. A model takes one input, kInputName, [batch, L, d_input], and
// produces one output, kOutputName, [batch, L, d_output]: FP32 or FP64 in,
// FP32 out. Inputs travel as typed contents (fp32_contents for FP32,
// fp64_contents for FP64) or raw bytes (raw_input_contents, little-endian,
// row-major), never both. The output goes back raw when the inputs came
// raw and typed when they came typed, unless the requested output's
// "binary_data" parameter (bool) says otherwise.
//
// Sequences. Triton's parameters: "sequence_id" (int64 >= 0, uint64 or
// string; 0 and "" mean none), "sequence_start" and "sequence_end" (bool)
// make a request one chunk of a sequence (sequences.h, which keeps the
// rules); without them a request is a whole sequence (Infer). Other
// parameters are ignored, as Triton passes them on.
//
// Versions are decimal strings: "" means the newest loaded version; any
// other text than a positive decimal number is INVALID_ARGUMENT.
//
// Errors (exact codes; the message names the field, e.g.
// "inputs[0].datatype", "raw_input_contents[0]", "parameters.sequence_id"):
//   InvalidArgument     a missing model name, a malformed version, not one
//                       input named kInputName, a datatype other than FP32
//                       or FP64, a shape that is not [batch >= 1, L >= 1,
//                       d_input], a value count or byte size that does not
//                       match the shape, typed and raw contents both set,
//                       NaN or Inf, an unknown requested output, a
//                       parameter of the wrong type, L past the model's
//                       max_length (a whole sequence), an output float32
//                       cannot carry; a sequence that is not live
//   NotFound            an unknown model or version
//   FailedPrecondition  sequence parameters on a model that cannot stream
//   ResourceExhausted   past --max_batch, --max_unary_length (a whole
//                       sequence), --max_chunk_steps (a sequence's chunk),
//                       --max_message_bytes (the response), or a session
//                       limit when a sequence starts
// A refused request changes nothing: no session, no sequence, no other
// request is affected.
//
// Thread safety: pure functions, apart from RunInfer's use of the sequence
// table (thread-safe).

#ifndef SSM_SERVER_OIP_CORE_H_
#define SSM_SERVER_OIP_CORE_H_

#include <cstdint>
#include <string>

#include "absl/functional/function_ref.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "inference/grpc_service.pb.h"
#include "inference/model_config.pb.h"
#include "server/limits.h"
#include "server/model_catalog.h"
#include "server/oip_names.h"
#include "server/sequences.h"
#include "server/tensor_codec.h"

namespace ssm::server::oip {

// The server's version (the project's), for ServerMetadata.
const char* ServerVersion();

// A model version as the protocol spells it: "" is 0 (the newest); a
// positive decimal number is itself. InvalidArgument naming `field`
// otherwise.
absl::StatusOr<int64_t> ParseVersion(absl::string_view text, absl::string_view field);

// The model version a request names (`name`, `version`), NotFound when it
// is not served; InvalidArgument naming `name_field` when `name` is empty
// or `version_field` when the version is malformed.
absl::StatusOr<ServedModel> FindModel(const ModelCatalog& catalog, absl::string_view name,
                                      absl::string_view version, absl::string_view name_field,
                                      absl::string_view version_field);

void FillServerMetadata(inference::ServerMetadataResponse* out);
// `served`'s model, with every loaded version of its name listed.
void FillModelMetadata(const ModelCatalog& catalog, const ServedModel& served,
                       inference::ModelMetadataResponse* out);
// Triton's ModelConfig for `served`: tensors, --max_batch as max_batch_size,
// sequence batching (idle time `sequence_idle`) when it can stream, and the
// config.pbtxt it was read from.
void FillModelConfig(const ModelCatalog& catalog, const ServedModel& served,
                     const RequestLimits& limits, absl::Duration sequence_idle,
                     inference::ModelConfig* out);
// Every loaded version READY, every model that failed to load (or some of
// whose versions did) UNAVAILABLE with its error; only the READY ones when
// `ready_only`.
void FillRepositoryIndex(const ModelCatalog& catalog, bool ready_only,
                         inference::RepositoryIndexResponse* out);

// A ModelInferRequest checked against its model and the limits: what will
// run. The values are read (and checked for NaN/Inf) by RunInfer, on a
// worker.
struct InferPlan {
  ServedModel served;
  SequenceShape shape;  // the input: [batch, L, d_input]
  bool fp64 = false;    // the input's datatype: FP64 (else FP32)
  bool raw_input = false;
  bool raw_output = false;
  bool want_output = true;  // false when `outputs` names none we produce
  SequenceId sequence;      // empty: a whole sequence
  bool start = false;
  bool end = false;

  bool in_sequence() const { return !sequence.empty(); }
};

// Checks `request` (the errors above, up to the values themselves) and
// plans it.
absl::StatusOr<InferPlan> PlanInfer(const inference::ModelInferRequest& request,
                                    const ModelCatalog& catalog, const RequestLimits& limits);

// Reads the input (InvalidArgument for NaN/Inf, naming the value), runs the
// plan — a whole sequence in pieces (forward.h), or one request of its
// sequence through `sequences` as `owner` — and fills *response. `stop` is
// asked between the pieces of a whole sequence with the sequences done and
// the total; its non-OK answer is returned.
absl::Status RunInfer(const InferPlan& plan, const inference::ModelInferRequest& request,
                      SequenceTable& sequences, absl::string_view owner,
                      absl::FunctionRef<absl::Status(int done, int total)> stop,
                      inference::ModelInferResponse* response);

// How ModelStreamInfer reports a failed request in error_message: the
// code's name, a colon, the message (bounded as status.h bounds it).
std::string StreamErrorMessage(const absl::Status& status);

}  // namespace ssm::server::oip

#endif  // SSM_SERVER_OIP_CORE_H_
