// What the Open Inference Protocol harnesses (oip_infer_fuzz.cc,
// oip_json_fuzz.cc) share: the server's request path (oip_core.h's
// PlanInfer and RunInfer, sequences through a SequenceTable over a
// SessionManager) on the fuzz catalog, wrapped in the contracts it
// promises, and the builders their seeds are made with.
//
// Contracts OipServer::Infer checks on every request, besides the
// sanitizers':
//   - a refusal has one of oip_core.h's codes (InvalidArgument, NotFound,
//     FailedPrecondition, ResourceExhausted) and a bounded message;
//   - an accepted request's response names the model version that ran and
//     the request's id, and has one output, "output", FP32, of shape
//     [batch, L, d_output], carried raw or typed as the plan said, with
//     exactly that many values or bytes;
//   - sequences (sequences.h): a continue or end succeeds only on a live
//     sequence of the same caller, model version and batch; each accepted
//     request of a sequence gives, bit for bit, the outputs of one Session
//     the harness runs on the same chunks (so no refused request left a
//     trace in the state); after every request, accepted or not, each live
//     sequence is at the position the harness expects (a refused request
//     moves none), and the registry holds exactly one detached session per
//     live sequence and no attached one.

#ifndef SSM_TESTS_FUZZ_OIP_FUZZ_UTIL_H_
#define SSM_TESTS_FUZZ_OIP_FUZZ_UTIL_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "inference/grpc_service.pb.h"
#include "server/limits.h"
#include "server/oip_core.h"
#include "server/sequences.h"
#include "server/session_manager.h"
#include "ssm/session.h"

namespace ssm::fuzz {

// Tighter than the server's defaults, so every limit is within reach of a
// 4 KiB input: --max_batch 8, --max_chunk_steps 80 (a chunk of 64 steps or
// more takes the sessions' convolutional path), --max_unary_length 96
// (above the tiny models' max_length 64, so both refusals are reachable),
// --max_message_bytes 4096 (the response).
server::RequestLimits OipLimits();

class OipServer {
 public:
  // A fresh registry (at most 4 sessions, 3 per caller) and sequence table:
  // each fuzz input starts from nothing.
  OipServer();

  // PlanInfer, then RunInfer as `owner` (`stop` never stops), with the
  // contracts above; returns the outcome.
  absl::Status Infer(const inference::ModelInferRequest& request, absl::string_view owner,
                     inference::ModelInferResponse* response);

 private:
  // A sequence the harness expects to be live, and its own Session run on
  // the same chunks.
  struct Live {
    std::string owner;
    server::ServedModel served;
    server::SequenceId id;
    int batch = 0;
    int64_t position = 0;
    Session reference;
  };

  // Where `plan`'s sequence stands in live_ (live_.end() if not live).
  std::vector<Live>::iterator FindLive(const server::oip::InferPlan& plan,
                                       absl::string_view owner);
  // The accepted request of a sequence, against the harness's own run.
  void CheckSequence(const server::oip::InferPlan& plan, const inference::ModelInferRequest& request,
                     absl::string_view owner, const std::vector<float>& output);
  // Every live sequence where expected, one detached session each.
  void CheckLive() const;

  server::SessionManager sessions_;
  server::SequenceTable table_;
  std::vector<Live> live_;
};

// The values of an accepted response's one output (raw or typed).
std::vector<float> OutputValues(const inference::ModelInferResponse& response);

// `message`'s bytes with its maps (parameters) in a fixed order, so that
// writing the seeds again changes no file.
std::string SerializeForSeed(const google::protobuf::Message& message);

// Seed builders. An "input" tensor of `shape` holding Wave values, typed
// (fp32_contents / fp64_contents) or raw.
struct OipInput {
  std::vector<int64_t> shape;
  bool fp64 = false;
  bool raw = false;
};
inference::ModelInferRequest OipRequest(const std::string& model, const std::string& version,
                                        const OipInput& input);
// Triton's sequence parameters on `request`.
void SetSequence(inference::ModelInferRequest* request, const inference::InferParameter& id,
                 bool start, bool end);
inference::InferParameter Uint64Id(uint64_t id);
inference::InferParameter StringId(const std::string& id);

}  // namespace ssm::fuzz

#endif  // SSM_TESTS_FUZZ_OIP_FUZZ_UTIL_H_
