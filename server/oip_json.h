// The Open Inference Protocol's REST bodies to and from its messages
// (package `inference`), so REST requests go through exactly the checks and
// code paths of gRPC ones (oip_core.h). HTTP-free and gRPC-free.
//
// Infer requests (KServe v2 JSON, with Triton's binary tensor extension):
//   {"id": "...", "parameters": {...},
//    "inputs": [{"name", "shape", "datatype", "parameters": {...},
//                "data": [numbers, flat or nested]}],
//    "outputs": [{"name", "parameters": {"binary_data": bool}}]}
// An input sent as binary data has parameters.binary_data_size (bytes) and
// no "data"; its bytes follow the JSON in the body, in input order, and the
// Inference-Header-Content-Length header gives the JSON's length. With that
// header at 0 the whole body is one FP32 input's bytes (Triton's "raw
// binary request"): shape [1, bytes / (4 d_input), d_input]. Parameters map
// to InferParameter by JSON type: bool, integer (int64, or uint64 above
// 2^63 - 1), other numbers (double), string. Outputs are JSON unless their
// "binary_data" parameter, or the request's "binary_data_output", asks for
// binary; a raw binary request gets binary outputs.
//
// Responses: {"model_name", "model_version", "id" (when the request had
// one), "outputs": [{"name", "datatype", "shape", "data"} or, binary,
// {"name", "datatype", "shape", "parameters": {"binary_data_size": n}}]},
// the binary outputs' bytes after the JSON. FP32 values are written in the
// shortest text that reads back as the same float32, so a JSON output
// equals the raw one bit for bit.
//
// Errors: InvalidArgument naming the JSON path ("inputs[0].shape[1]",
// "parameters.sequence_id") or the body's byte counts; anything about the
// tensors' meaning is oip_core.h's to say.
//
// Thread safety: pure functions.

#ifndef SSM_SERVER_OIP_JSON_H_
#define SSM_SERVER_OIP_JSON_H_

#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "inference/grpc_service.pb.h"
#include "inference/model_config.pb.h"

namespace ssm::server::oip {

// JSON deeper than this ([[[...]]] or {"a": {...}}) is refused before it is
// parsed.
inline constexpr int kMaxJsonDepth = 32;

// Fills `request` (all but model_name and model_version, which the URL
// carries) from a REST infer body. `header_length`: the
// Inference-Header-Content-Length header's value, -1 when absent (the
// whole body is JSON). `raw_d_input`: the model's d_input, used only for a
// raw binary request (header_length 0).
absl::Status ParseRestInfer(absl::string_view body, int64_t header_length, int raw_d_input,
                            inference::ModelInferRequest* request);

// The REST body of `response`: its JSON, then the bytes of the outputs it
// carries raw. *json_length is the JSON's length (equal to the body's size
// when nothing binary follows).
std::string WriteRestInfer(const inference::ModelInferResponse& response, size_t* json_length);

std::string ServerMetadataJson(const inference::ServerMetadataResponse& metadata);
std::string ModelMetadataJson(const inference::ModelMetadataResponse& metadata);
// Triton's JSON form of a ModelConfig (field names as in the proto, enums
// by name, numbers as numbers).
std::string ModelConfigJson(const inference::ModelConfig& config);
// Triton's: a JSON array of {"name", "version", "state", "reason"}.
std::string RepositoryIndexJson(const inference::RepositoryIndexResponse& index);
// {"error": message}, the protocol's error body.
std::string ErrorJson(absl::string_view message);

}  // namespace ssm::server::oip

#endif  // SSM_SERVER_OIP_JSON_H_
