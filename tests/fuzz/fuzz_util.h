// What the libFuzzer harnesses share: tiny models (so one input runs in
// well under a millisecond), the catalog the server-side harnesses open
// sessions through, the checks that turn a broken contract into a crash
// the fuzzer reports, and the seed-writing mode.
//
// Seeds: every harness accepts `--write_seeds=DIR` as its only argument;
// it then writes its seed corpus (made with the project's own writers:
// SerializeSafeTensors, Session::ExportState, ModelConfigToText, protobuf
// serialization) into DIR and exits without fuzzing. scripts/fuzz.sh seeds
// refreshes tests/fuzz/corpus/ this way.

#ifndef SSM_TESTS_FUZZ_FUZZ_UTIL_H_
#define SSM_TESTS_FUZZ_FUZZ_UTIL_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "server/limits.h"
#include "server/model_catalog.h"
#include "ssm/model.h"
#include "ssm/model_spec.h"
#include "ssm/safetensors.h"

namespace ssm::fuzz {

// The tiny models. Every one takes d_input 1 and max_length 64.
ModelSpec LegtSpec();   // "legt": LegT memory, N = 4, window 16, coefficients (d_output 4)
ModelSpec LegsSpec();   // "legs": LegS memory, N = 4, coefficients (time-varying)
ModelSpec DelaySpec();  // "delay": LegT memory, N = 4, window 8, delays 0, 3, 7.5
// "s4" (or "s4-bidi"): one S4 block, H = 2, N = 4, d_output 1; DPLR rank 1 or
// diagonal (ZOH).
ModelSpec S4Spec(KernelKind kernel = KernelKind::kDplr, bool bidirectional = false);

// The model of `spec` (an S4 stack: InitS4StackWeights(seed) through the
// safetensors writer and reader, as a repository would hold it). Aborts if
// it does not load: the harness itself would be wrong.
std::shared_ptr<const Model> LoadOrDie(const ModelSpec& spec, uint64_t seed = 1);

// The weights file of an S4 stack spec, as the project writes it.
std::string S4WeightsFile(const ModelSpec& spec, uint64_t seed, DType dtype);

// The catalog of the server-side harnesses: "legt", "legs", "delay" (v1),
// "s4" v1 and v2 (different weights, so a snapshot picks its version),
// "s4-bidi" (cannot stream), and "broken" (failed to load).
const server::ModelCatalog& Catalog();
// Every harness's start (Catalog() calls it too): the server's event log
// and protobuf's parse warnings silenced (the harnesses provoke errors by
// the million), and the core on the calling thread only. Worker threads
// would free some of a run's allocations after the run returns, which
// libFuzzer takes for a possible leak and answers with a heap scan (a third
// of the time went there); tiny models gain nothing from them anyway.
void SetUp();
// The server's default limits (server/limits.h), what ssm_server runs with.
server::RequestLimits Limits();

// A contract the fuzzer must not break: prints `what` and aborts (libFuzzer
// reports the input as a crash).
[[noreturn]] void Fail(absl::string_view what);
inline void Check(bool ok, absl::string_view what) {
  if (!ok) Fail(what);
}
// Fails unless `status` has one of `codes`.
void CheckCode(const absl::Status& status, std::initializer_list<absl::StatusCode> codes,
               absl::string_view where);
// Messages that reach a client (and the server's log) echo client input
// only in bounded pieces (server/echo.h): fails if `status`'s message is
// longer than kMaxWireMessageBytes.
inline constexpr size_t kMaxWireMessageBytes = 1024;
void CheckBoundedMessage(const absl::Status& status, absl::string_view where);
// A unary inference request's refusal (ssm.v1 Infer, the Open Inference
// Protocol's ModelInfer): InvalidArgument, NotFound, ResourceExhausted or
// FailedPrecondition, with a bounded message.
void CheckInferRefusal(const absl::Status& status, absl::string_view where);

// Replaces the trailing CRC-32C of a snapshot (Session::ExportState bytes)
// with the checksum of what precedes it, so mutated bytes get past the
// checksum to the fields behind it. No-op below 4 bytes.
void FixSnapshotCrc(std::string& snapshot);

// Inputs made of several messages: each one a 2-byte little-endian length
// and that many bytes; a short trailing piece is the last message.
std::vector<std::string_view> SplitFrames(std::string_view bytes);
std::string JoinFrames(const std::vector<std::string>& frames);

// Deterministic, smooth test inputs in [-1, 1].
std::vector<double> Wave(size_t n, double phase = 0);

// The seed mode: if the only argument is --write_seeds=DIR, runs `write`
// with DIR (created if missing) and exits; otherwise returns.
void HandleSeedFlag(int* argc, char*** argv, const std::function<void(const std::string&)>& write);
// Writes one seed file DIR/name; aborts on failure.
void WriteSeed(const std::string& dir, const std::string& name, std::string_view bytes);

}  // namespace ssm::fuzz

#endif  // SSM_TESTS_FUZZ_FUZZ_UTIL_H_
