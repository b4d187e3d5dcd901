// A streaming session of one model: `batch` independent streams that advance
// together, chunk by chunk, with the state kept between chunks.
//
// Run(x, steps) takes batch x steps x d_input and returns the outputs for
// exactly those steps. Short chunks run as recurrent steps, long ones
// (steps >= kConvChunkThreshold) as the convolutional mode from the carried
// state; either way the outputs equal Model::Forward over the concatenated
// input (tests: <= 1e-9 relative, every split). A step of a loaded session
// allocates nothing: scratch grows to the largest short chunk seen, once;
// more than kKeptScratchDoubles is given back after its chunk, so an idle
// session holds little beyond its state.
// A chunk of more than kMaxRowsPerPass batch x step rows runs in slices of
// time (at least kConvChunkThreshold steps each) so that the scratch stays
// bounded whatever the batch: an S4 stack needs about 7 x rows x d_model
// doubles.
//
// RunBatch runs a short chunk of each of many sessions of one model in one
// pass of the model (a streaming server gathers them), each session's state
// staying its own: every session gets exactly what Run would give it, bit
// for bit, outputs, state, position and status alike.
//
// Snapshots (ExportState / Import) are portable bytes, little-endian:
//   "SSMSNAP\0", u32 format version (1), u32 batch, u64 model fingerprint,
//   u32 name length, name, i64 position, u64 state length n, n doubles,
//   u32 CRC-32C of all preceding bytes.
// Import refuses a snapshot of another model (FailedPrecondition, naming
// both), a truncated or corrupted one (DataLoss: bad magic, version,
// length or checksum), and one whose checksum holds but whose content no
// stream can have produced (InvalidArgument: a position past kMaxPosition,
// a state value beyond kMaxStateMagnitude), leaving nothing half-built.
//
// Errors from Run: InvalidArgument for a shape that disagrees, a
// non-finite input, or an output that is not finite or beyond the
// session's output limit (set_output_limit), FailedPrecondition for a
// model that cannot stream (bidirectional), OutOfRange when the position
// would pass kMaxPosition. On every error the session is exactly as it was
// before the call (state and position). A short chunk never copies the
// state to be able to undo itself: the new state is written beside the old
// one (into a buffer the thread keeps) and the two are swapped when the
// chunk succeeds; a long one saves a copy first.
// Thread safety: a Session is not shareable without external locking;
// distinct sessions of one model may run concurrently (RunBatch included:
// it needs only each of its sessions held).

#ifndef SSM_SESSION_H_
#define SSM_SESSION_H_

#include <cstdint>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include "absl/functional/function_ref.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "ssm/model.h"

namespace ssm {

class Session {
 public:
  static constexpr int kConvChunkThreshold = 64;
  static constexpr int64_t kMaxRowsPerPass = 32768;
  static constexpr size_t kKeptScratchDoubles = size_t{1} << 17;  // 1 MiB
  static constexpr uint32_t kSnapshotVersion = 1;
  // Positions count steps; 2^53 keeps them exact as doubles (a LegS memory
  // is time-varying in the position) and is ~285 years at 10^6 steps/s.
  static constexpr int64_t kMaxPosition = int64_t{1} << 53;
  // The largest state value a snapshot may hold: float32's range. The wire
  // carries float32 inputs and outputs; a state beyond that range is not
  // one a real stream reaches through a stable model, and would only turn
  // every later output into Inf.
  static constexpr double kMaxStateMagnitude = 3.4028234663852886e38;

  static absl::StatusOr<Session> Create(std::shared_ptr<const Model> model, int batch);
  static absl::StatusOr<Session> Import(std::shared_ptr<const Model> model,
                                        std::string_view snapshot);

  const Model& model() const { return *model_; }
  int batch() const { return batch_; }
  int64_t position() const { return position_; }
  size_t state_bytes() const { return state_.size() * sizeof(double); }
  // What the session holds between chunks: its state and kept scratch.
  size_t held_bytes() const {
    return (state_.capacity() + scratch_.capacity()) * sizeof(double);
  }

  // x: batch x steps x d_input; y: batch x steps x d_output; steps >= 1.
  absl::Status Run(absl::Span<const double> x, int steps, absl::Span<double> y);
  // The same, asking `between_passes(done)` before every slice of time but
  // the first (done: steps of this chunk already run). A non-OK answer stops
  // the chunk: Run returns it and the session is as it was before the call.
  absl::Status Run(absl::Span<const double> x, int steps, absl::Span<double> y,
                   absl::FunctionRef<absl::Status(int done)> between_passes);

  // One chunk of one session, for RunBatch.
  struct Chunk {
    Session* session = nullptr;
    absl::Span<const double> x;  // session->batch() x steps x d_input
    absl::Span<double> y;        // session->batch() x steps x d_output
    absl::Status status;         // set by RunBatch: what Run would return
  };
  // Runs `steps` steps of every chunk's session, each exactly as
  // chunk.session->Run(chunk.x, steps, chunk.y) would (outputs, state,
  // position and status, bit for bit; a failing chunk leaves its session
  // as it was and touches no other). The sessions that share the first
  // one's model object and batch, with steps < kConvChunkThreshold, are
  // stepped together, in passes of at most kMaxRowsPerPass rows and
  // kMaxSessionsPerPass sessions; any other chunk runs on its own through
  // Run. A session may appear once: a repeat gets FailedPrecondition and is
  // not run. Like a short Run, nothing is allocated once the thread's
  // buffers have grown.
  static void RunBatch(absl::Span<Chunk> chunks, int steps);
  // Sessions stepped in one pass: enough to share the model's weights
  // across many rows, few enough that their states (in and out) stay in a
  // core's L2 cache for small models (BM_StepBatch).
  static constexpr int kMaxSessionsPerPass = 16;

  std::string ExportState() const;

  // Outputs of magnitude above `limit` fail their chunk (InvalidArgument,
  // the session unchanged), as non-finite ones always do. Default +inf;
  // a server that sends float32 sets float32's largest value, so no output
  // turns into Inf on the wire. limit > 0.
  void set_output_limit(double limit) { output_limit_ = limit; }
  double output_limit() const { return output_limit_; }

 private:
  Session(std::shared_ptr<const Model> model, int batch);
  // A short chunk (steps < kConvChunkThreshold) of each of `n` sessions of
  // one model and batch, checked already: one pass, new states swapped in
  // where the chunk succeeds.
  static void RunShort(Chunk* const* chunks, int n, int steps, std::vector<double>& scratch);
  // Runs the chunk, advancing `state`, in slices of time when it is wide.
  absl::Status RunOn(absl::Span<double> state, absl::Span<const double> x, int steps,
                     absl::Span<double> y,
                     absl::FunctionRef<absl::Status(int done)> between_passes);
  // Run's checks before anything runs: steps, shapes, finite inputs, the
  // position's bound.
  absl::Status CheckChunk(absl::Span<const double> x, int steps,
                          absl::Span<const double> y) const;
  // InvalidArgument naming the first output that is not finite or is
  // beyond output_limit_.
  absl::Status CheckOutputs(absl::Span<const double> y, int steps) const;

  std::shared_ptr<const Model> model_;
  int batch_ = 0;
  int64_t position_ = 0;
  std::vector<double> state_;
  std::vector<double> scratch_;
  double output_limit_ = std::numeric_limits<double>::infinity();
};

// CRC-32C (Castagnoli) of bytes, as used by snapshots.
uint32_t Crc32c(std::string_view bytes);

// What a snapshot says about itself, read without a model: for a server
// that hands a stored snapshot on without running it. DataLoss as Import
// for bad magic, format version, checksum or a truncated header.
struct SnapshotInfo {
  int batch = 0;
  uint64_t fingerprint = 0;
  std::string model;
  int64_t position = 0;
};
absl::StatusOr<SnapshotInfo> ReadSnapshotInfo(std::string_view snapshot);

}  // namespace ssm

#endif  // SSM_SESSION_H_
