#include "ssm/session.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>

#if defined(__x86_64__)
#include <nmmintrin.h>
#endif

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "model_internal.h"

namespace ssm {
namespace {

constexpr char kMagic[8] = {'S', 'S', 'M', 'S', 'N', 'A', 'P', '\0'};

// A model name read from a snapshot, as an error message may quote it. The
// snapshot comes from a client: its name may be megabytes of anything (the
// checksum proves nothing about who wrote it), so only its first bytes are
// quoted, escaped.
std::string QuoteSnapshotName(std::string_view name) {
  constexpr size_t kMax = 64;
  std::string quoted = absl::StrCat(
      "'", absl::CHexEscape(absl::string_view(name.data(), std::min(name.size(), kMax))), "'");
  if (name.size() > kMax) absl::StrAppend(&quoted, "...(+", name.size() - kMax, " bytes)");
  return quoted;
}

std::array<uint32_t, 256> MakeCrcTable() {
  std::array<uint32_t, 256> t{};
  for (uint32_t i = 0; i < 256; ++i) {
    uint32_t c = i;
    for (int k = 0; k < 8; ++k) c = (c & 1) ? (c >> 1) ^ 0x82F63B78u : c >> 1;  // reflected
    t[i] = c;
  }
  return t;
}

// Little-endian fixed-width fields; the hosts we build for are
// little-endian, and a static_assert below keeps it that way.
static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "snapshots assume little-endian");

template <typename T>
void Put(std::string& out, T v) {
  out.append(reinterpret_cast<const char*>(&v), sizeof(T));
}

class Reader {
 public:
  explicit Reader(std::string_view in) : in_(in) {}
  template <typename T>
  bool Get(T& v) {
    if (in_.size() - pos_ < sizeof(T)) return false;
    std::memcpy(&v, in_.data() + pos_, sizeof(T));
    pos_ += sizeof(T);
    return true;
  }
  bool Bytes(size_t n, std::string_view& out) {
    if (in_.size() - pos_ < n) return false;
    out = in_.substr(pos_, n);
    pos_ += n;
    return true;
  }
  size_t pos() const { return pos_; }
  size_t left() const { return in_.size() - pos_; }

 private:
  std::string_view in_;
  size_t pos_ = 0;
};

// Where Run saves a session's state before a long chunk (see Run).
std::vector<double>& ThreadBackup() {
  thread_local std::vector<double> backup;
  return backup;
}

// The buffers a thread lends short chunks for their new states: a chunk's
// state after it is written into one, and when the chunk succeeds that
// buffer becomes the session's state and the session's old buffer comes
// back here, so no state is ever copied to be able to undo a chunk. A
// session's state buffer is exactly its size, so buffers are kept and
// found by exact capacity (a session never gets a larger one), at most
// kKeptDoubles of them in all; a state larger than that gets a buffer of
// its own each time.
class SparePool {
 public:
  static constexpr size_t kKeptDoubles = size_t{1} << 19;  // 4 MiB
  static constexpr size_t kKeptBuffers = 64;

  std::vector<double> Take(size_t n) {
    for (size_t i = free_.size(); i-- > 0;) {
      if (free_[i].capacity() != n) continue;
      std::vector<double> v = std::move(free_[i]);
      free_[i] = std::move(free_.back());
      free_.pop_back();
      held_ -= n;
      v.resize(n);
      return v;
    }
    return std::vector<double>(n);
  }

  void Give(std::vector<double> v) {
    if (v.capacity() == 0 || held_ + v.capacity() > kKeptDoubles) return;  // freed here
    if (free_.capacity() == 0) free_.reserve(kKeptBuffers);
    if (free_.size() == kKeptBuffers) return;
    held_ += v.capacity();
    free_.push_back(std::move(v));
  }

 private:
  std::vector<std::vector<double>> free_;
  size_t held_ = 0;
};

SparePool& ThreadSpares() {
  thread_local SparePool pool;
  return pool;
}

}  // namespace

namespace {

uint32_t Crc32cTable(std::string_view bytes, uint32_t c) {
  static const std::array<uint32_t, 256> table = MakeCrcTable();
  for (unsigned char b : bytes) c = table[(c ^ b) & 0xFF] ^ (c >> 8);
  return c;
}

#if defined(__x86_64__)
// SSE4.2's crc32 instruction computes this very CRC (the reflected
// Castagnoli polynomial, no inversion of its own), 8 bytes at a time:
// 9 us instead of the table's 240 for a 64 KiB s4-demo snapshot, which
// matters to a server that checkpoints every session's state every
// second. Compiled for SSE4.2 whatever -march says and used only where
// the CPU has it.
__attribute__((target("sse4.2"))) uint32_t Crc32cSse42(std::string_view bytes, uint32_t c) {
  const char* p = bytes.data();
  size_t n = bytes.size();
  uint64_t c64 = c;
  for (; n >= 8; p += 8, n -= 8) {
    uint64_t word;
    std::memcpy(&word, p, 8);
    c64 = _mm_crc32_u64(c64, word);
  }
  c = static_cast<uint32_t>(c64);
  for (; n > 0; ++p, --n) c = _mm_crc32_u8(c, static_cast<unsigned char>(*p));
  return c;
}
#endif

}  // namespace

uint32_t Crc32c(std::string_view bytes) {
#if defined(__x86_64__)
  static const bool hardware = __builtin_cpu_supports("sse4.2");
  if (hardware) return Crc32cSse42(bytes, 0xFFFFFFFFu) ^ 0xFFFFFFFFu;
#endif
  return Crc32cTable(bytes, 0xFFFFFFFFu) ^ 0xFFFFFFFFu;
}

Session::Session(std::shared_ptr<const Model> model, int batch)
    : model_(std::move(model)), batch_(batch), state_(batch * model_->state_size(), 0.0) {}

absl::StatusOr<Session> Session::Create(std::shared_ptr<const Model> model, int batch) {
  if (model == nullptr) return absl::InvalidArgumentError("model must not be null");
  if (!model->streamable()) {
    return absl::FailedPreconditionError(absl::StrCat(
        "model '", model->spec().name, "' cannot stream: ", model->not_streamable_reason(),
        "; use a unary (convolutional) call"));
  }
  if (batch < 1) return absl::InvalidArgumentError(absl::StrCat("batch must be >= 1, got ", batch));
  return Session(std::move(model), batch);
}

absl::Status Session::Run(absl::Span<const double> x, int steps, absl::Span<double> y) {
  return Run(x, steps, y, [](int) { return absl::OkStatus(); });
}

absl::Status Session::CheckChunk(absl::Span<const double> x, int steps,
                                 absl::Span<const double> y) const {
  if (steps < 1) return absl::InvalidArgumentError(absl::StrCat("steps must be >= 1, got ", steps));
  if (auto st = internal::CheckIoArgs(*model_, x, batch_, steps, y); !st.ok()) return st;
  if (steps > kMaxPosition - position_) {
    return absl::OutOfRangeError(absl::StrCat("the stream is at step ", position_, "; ", steps,
                                              " more would pass the largest position, 2^53"));
  }
  return absl::OkStatus();
}

absl::Status Session::Run(absl::Span<const double> x, int steps, absl::Span<double> y,
                          absl::FunctionRef<absl::Status(int done)> between_passes) {
  if (auto st = CheckChunk(x, steps, y); !st.ok()) return st;
  if (steps < kConvChunkThreshold) {
    // The recurrent mode, the same pass RunBatch makes: the new state is
    // written beside the old and swapped in on success.
    Chunk chunk{this, x, y, absl::OkStatus()};
    Chunk* const one = &chunk;
    RunShort(&one, 1, steps, scratch_);
    return chunk.status;
  }
  // A long chunk runs in place: no error may leave a half-advanced state
  // (nor a between_passes stop, nor an output that fails the check), so the
  // state is saved first and restored on any failure. The copy is kept per
  // thread, not per session, so an idle session holds only its own state;
  // a state too large to keep around is copied into a buffer of its own.
  std::vector<double> own_backup;
  std::vector<double>& backup = state_.size() <= kKeptScratchDoubles ? ThreadBackup() : own_backup;
  backup.assign(state_.begin(), state_.end());
  absl::Status status = RunOn(absl::MakeSpan(state_), x, steps, y, between_passes);
  if (status.ok()) status = CheckOutputs(y, steps);
  if (!status.ok()) {
    std::copy(backup.begin(), backup.end(), state_.begin());
    return status;
  }
  // Short chunks keep their scratch (a step then allocates nothing); the
  // scratch of a long one is given back, or every session that ever sent
  // one would hold it for good (~58 MB for a max-length s4-demo chunk).
  if (scratch_.capacity() > kKeptScratchDoubles) std::vector<double>().swap(scratch_);
  position_ += steps;
  return absl::OkStatus();
}

void Session::RunShort(Chunk* const* chunks, int n, int steps, std::vector<double>& scratch) {
  const Session& first = *chunks[0]->session;
  const Model& m = *first.model_;
  const size_t size = first.state_.size();
  SparePool& pool = ThreadSpares();
  thread_local std::vector<Model::ShortChunk> items;
  thread_local std::vector<std::vector<double>> spares;
  items.resize(n);
  spares.resize(n);
  for (int i = 0; i < n; ++i) {
    Session& s = *chunks[i]->session;
    spares[i] = pool.Take(size);
    Model::ShortChunk& item = items[i];
    item.x = chunks[i]->x;
    item.y = chunks[i]->y;
    item.state_in = s.state_.data();
    item.state_out = spares[i].data();
    item.position = s.position_;
    item.status = absl::OkStatus();
  }
  m.AdvanceShort(absl::MakeSpan(items.data(), n), first.batch_, steps, scratch);
  for (int i = 0; i < n; ++i) {
    Chunk& c = *chunks[i];
    Session& s = *c.session;
    absl::Status status = std::move(items[i].status);
    if (status.ok()) status = s.CheckOutputs(c.y, steps);
    if (status.ok()) {
      s.state_.swap(spares[i]);  // the old state's buffer goes back to the pool
      s.position_ += steps;
    }
    c.status = std::move(status);
    pool.Give(std::move(spares[i]));
  }
  // Short chunks keep their scratch (a step then allocates nothing) unless
  // it grew past what an idle session should hold.
  if (scratch.capacity() > kKeptScratchDoubles) std::vector<double>().swap(scratch);
}

void Session::RunBatch(absl::Span<Chunk> chunks, int steps) {
  const size_t n = chunks.size();
  // A session named twice: all but its first chunk are refused.
  thread_local std::vector<std::pair<const Session*, size_t>> order;
  thread_local std::vector<char> repeat;
  order.clear();
  repeat.assign(n, 0);
  for (size_t i = 0; i < n; ++i) {
    if (chunks[i].session != nullptr) order.emplace_back(chunks[i].session, i);
  }
  std::sort(order.begin(), order.end());
  for (size_t k = 1; k < order.size(); ++k) {
    if (order[k].first == order[k - 1].first) repeat[order[k].second] = 1;
  }
  thread_local std::vector<Chunk*> group;
  group.clear();
  const Session* first = nullptr;
  for (size_t i = 0; i < n; ++i) {
    Chunk& c = chunks[i];
    if (c.session == nullptr) {
      c.status = absl::InvalidArgumentError("a chunk of RunBatch has no session");
      continue;
    }
    if (repeat[i]) {
      c.status = absl::FailedPreconditionError(
          "a session appears more than once in one RunBatch; it runs its first chunk only");
      continue;
    }
    Session& s = *c.session;
    if (first == nullptr) first = &s;
    if (steps >= kConvChunkThreshold || s.model_ != first->model_ || s.batch_ != first->batch_) {
      c.status = s.Run(c.x, steps, c.y);
      continue;
    }
    c.status = s.CheckChunk(c.x, steps, c.y);
    if (c.status.ok()) group.push_back(&c);
  }
  if (group.empty()) return;
  // Passes of at most kMaxRowsPerPass rows (the scratch's bound, as Run's
  // slices) and kMaxSessionsPerPass sessions.
  const int64_t rows = static_cast<int64_t>(first->batch_) * steps;
  const int per_pass =
      static_cast<int>(std::clamp<int64_t>(kMaxRowsPerPass / rows, 1, kMaxSessionsPerPass));
  thread_local std::vector<double> scratch;
  for (size_t at = 0; at < group.size(); at += per_pass) {
    const int count = static_cast<int>(std::min<size_t>(per_pass, group.size() - at));
    RunShort(group.data() + at, count, steps, scratch);
  }
}

absl::Status Session::RunOn(absl::Span<double> state, absl::Span<const double> x, int steps,
                            absl::Span<double> y,
                            absl::FunctionRef<absl::Status(int done)> between_passes) {
  const Model& m = *model_;
  const int piece =
      static_cast<int>(std::clamp<int64_t>(kMaxRowsPerPass / batch_, kConvChunkThreshold, steps));
  if (piece == steps) return m.Advance(x, batch_, steps, position_, state, y, scratch_);
  // Slices of time: each sequence's rows of the slice gathered, run,
  // scattered back. The state carries from slice to slice as between
  // chunks, so the outputs are those of one pass (to rounding).
  const int d_in = m.d_input(), d_out = m.d_output();
  std::vector<double> xs, ys;
  for (int t0 = 0; t0 < steps; t0 += piece) {
    // Stopping here restores the state saved before the chunk.
    if (t0 > 0) {
      if (absl::Status st = between_passes(t0); !st.ok()) return st;
    }
    const int len = std::min(piece, steps - t0);
    xs.resize(static_cast<size_t>(batch_) * len * d_in);
    ys.resize(static_cast<size_t>(batch_) * len * d_out);
    for (int b = 0; b < batch_; ++b) {
      std::copy_n(&x[(static_cast<size_t>(b) * steps + t0) * d_in], len * d_in,
                  &xs[static_cast<size_t>(b) * len * d_in]);
    }
    if (auto st = m.Advance(xs, batch_, len, position_ + t0, state, absl::MakeSpan(ys), scratch_);
        !st.ok()) {
      return st;
    }
    for (int b = 0; b < batch_; ++b) {
      std::copy_n(&ys[static_cast<size_t>(b) * len * d_out], len * d_out,
                  &y[(static_cast<size_t>(b) * steps + t0) * d_out]);
    }
  }
  return absl::OkStatus();
}

absl::Status Session::CheckOutputs(absl::Span<const double> y, int steps) const {
  for (size_t i = 0; i < y.size(); ++i) {
    // Written to catch NaN too (every comparison with NaN is false).
    if (!(std::abs(y[i]) <= output_limit_)) {
      const int d_out = model_->d_output();
      return absl::InvalidArgumentError(absl::StrCat(
          "the output at batch ", i / (static_cast<size_t>(steps) * d_out), ", step ",
          i / d_out % steps, ", feature ", i % d_out, " is ", y[i],
          std::isfinite(y[i]) ? absl::StrCat(", beyond the output limit ", output_limit_) : "",
          ": the inputs (or the state) are too large for this model; the session is "
          "unchanged"));
    }
  }
  return absl::OkStatus();
}

std::string Session::ExportState() const {
  std::string out(kMagic, sizeof(kMagic));
  Put<uint32_t>(out, kSnapshotVersion);
  Put<uint32_t>(out, static_cast<uint32_t>(batch_));
  Put<uint64_t>(out, model_->fingerprint());
  const std::string& name = model_->spec().name;
  Put<uint32_t>(out, static_cast<uint32_t>(name.size()));
  out += name;
  Put<int64_t>(out, position_);
  Put<uint64_t>(out, state_.size());
  out.append(reinterpret_cast<const char*>(state_.data()), state_.size() * sizeof(double));
  Put<uint32_t>(out, Crc32c(out));
  return out;
}

absl::StatusOr<SnapshotInfo> ReadSnapshotInfo(std::string_view snapshot) {
  auto loss = [](const std::string& why) {
    return absl::DataLossError(absl::StrCat("state snapshot: ", why));
  };
  if (snapshot.size() < sizeof(kMagic) + 4 ||
      std::memcmp(snapshot.data(), kMagic, sizeof(kMagic)) != 0) {
    return loss("not a snapshot (bad magic)");
  }
  uint32_t crc = 0;
  std::memcpy(&crc, snapshot.data() + snapshot.size() - 4, 4);
  if (Crc32c(snapshot.substr(0, snapshot.size() - 4)) != crc) {
    return loss("checksum mismatch (truncated or corrupted)");
  }
  Reader r(snapshot.substr(0, snapshot.size() - 4));
  std::string_view magic, name;
  uint32_t version = 0, batch = 0, name_len = 0;
  SnapshotInfo info;
  if (!r.Bytes(sizeof(kMagic), magic) || !r.Get(version) || version != Session::kSnapshotVersion ||
      !r.Get(batch) || !r.Get(info.fingerprint) || !r.Get(name_len) || !r.Bytes(name_len, name) ||
      !r.Get(info.position)) {
    return loss("truncated header or unknown format version");
  }
  info.batch = static_cast<int>(batch);
  info.model = std::string(name);
  return info;
}

absl::StatusOr<Session> Session::Import(std::shared_ptr<const Model> model,
                                        std::string_view snapshot) {
  if (model == nullptr) return absl::InvalidArgumentError("model must not be null");
  auto loss = [](const std::string& why) {
    return absl::DataLossError(absl::StrCat("state snapshot: ", why));
  };
  if (snapshot.size() < sizeof(kMagic) + 4 ||
      std::memcmp(snapshot.data(), kMagic, sizeof(kMagic)) != 0) {
    return loss(std::string("not a snapshot (bad magic)"));
  }
  uint32_t crc = 0;
  std::memcpy(&crc, snapshot.data() + snapshot.size() - 4, 4);
  if (Crc32c(snapshot.substr(0, snapshot.size() - 4)) != crc) {
    return loss("checksum mismatch (truncated or corrupted)");
  }
  Reader r(snapshot.substr(0, snapshot.size() - 4));
  std::string_view magic, name;
  uint32_t version = 0, batch = 0, name_len = 0;
  uint64_t fingerprint = 0, n = 0;
  int64_t position = 0;
  if (!r.Bytes(sizeof(kMagic), magic) || !r.Get(version)) return loss("truncated header");
  if (version != kSnapshotVersion) {
    return loss(absl::StrCat("format version ", version, " is not supported (this build reads ",
                             kSnapshotVersion, ")"));
  }
  if (!r.Get(batch) || !r.Get(fingerprint) || !r.Get(name_len) || !r.Bytes(name_len, name) ||
      !r.Get(position) || !r.Get(n)) {
    return loss("truncated header");
  }
  if (name != model->spec().name || fingerprint != model->fingerprint()) {
    return absl::FailedPreconditionError(absl::StrCat(
        "state snapshot belongs to model ", QuoteSnapshotName(name), " (weights fingerprint ",
        absl::Hex(fingerprint, absl::kZeroPad16), "), not to '", model->spec().name,
        "' (fingerprint ", absl::Hex(model->fingerprint(), absl::kZeroPad16), ")"));
  }
  if (batch < 1 || position < 0 || n != uint64_t{batch} * model->state_size() ||
      r.left() != n * sizeof(double)) {
    return loss(absl::StrCat("inconsistent sizes (batch ", batch, ", position ", position, ", ", n,
                             " state values, ", r.left(), " bytes left)"));
  }
  // The checksum holds; what follows are bounds no real stream passes, so a
  // snapshot beyond them was forged (or written by a bug), not damaged.
  if (position > kMaxPosition) {
    return absl::InvalidArgumentError(
        absl::StrCat("state snapshot: position ", position, " is past the largest position, 2^53"));
  }
  absl::StatusOr<Session> s = Create(std::move(model), static_cast<int>(batch));
  if (!s.ok()) return s.status();
  std::memcpy(s->state_.data(), snapshot.data() + r.pos(), n * sizeof(double));
  for (size_t i = 0; i < s->state_.size(); ++i) {
    const double v = s->state_[i];
    if (!std::isfinite(v)) return loss("non-finite state value");
    if (std::abs(v) > kMaxStateMagnitude) {
      return absl::InvalidArgumentError(
          absl::StrCat("state snapshot: state value ", i, " is ", v, ", beyond float32's range (",
                       kMaxStateMagnitude, "), which no stream of float32 inputs reaches"));
    }
  }
  s->position_ = position;
  return s;
}

}  // namespace ssm
