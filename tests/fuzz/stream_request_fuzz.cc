// Fuzzes the stream protocol's gRPC-free part: arbitrary bytes split into a
// sequence of ssm.v1.StreamRequest messages driving one session the way
// StreamInfer does (stream_call.cc): the first request opens it through
// server::OpenSession (new, resumed from a snapshot, or reattached), each
// chunk goes through server::ReadStreamChunk (the shape, batch, limit and
// value checks) and SessionManager::Entry::Run; the first failed
// request ends the stream, leaving the session detached; a clean end closes
// it. The transport (gRPC, the read window, the pool) is out of scope.
//
// Input: byte 0 holds flags (bit 0: the stream ends cleanly, else it
// breaks; bit 1: restore the CRC-32C of `open.resume_from.data`, so
// mutated snapshots get past the checksum), then the messages, each a
// 2-byte little-endian length and its bytes (fuzz_util.h's framing). Bytes
// that do not parse as a StreamRequest end the stream, as they would on the
// wire. A reattach to the session id "detached" reaches a detached session
// (legt, batch 2, 3 steps in) that the harness opens for each input.
//
// stream_call.cc keeps HandleOpen/HandleChunk in an anonymous namespace of
// a file that needs gRPC; Stream below calls the same gRPC-free pieces
// (OpenSession, ReadStreamChunk) in the same order.
//
// Contracts checked besides the sanitizers':
//   - every error is one of the codes the protocol documents, with a
//     bounded message;
//   - positions only grow, one response per request, each output of the
//     chunk's shape; a returned state imports and is at that position;
//   - once the stream ends, no session is attached, and after the harness
//     closes what it opened none is left at all.

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "fuzz_util.h"
#include "server/session_manager.h"
#include "server/session_open.h"
#include "server/tensor_codec.h"
#include "ssm/session.h"
#include "ssm/v1/ssm_service.pb.h"

namespace ssm::fuzz {
namespace {

namespace v1 = ::ssm::v1;

constexpr char kDetachedAlias[] = "detached";

server::SessionManager& Sessions() {
  static server::SessionManager* const sessions =
      new server::SessionManager(server::SessionManager::Options{});
  return *sessions;
}

class Stream {
 public:
  Stream(std::string detached_id, bool fix_crc)
      : detached_id_(std::move(detached_id)), fix_crc_(fix_crc) {}

  // One request; its response, or why the stream ends.
  absl::Status Handle(const v1::StreamRequest& request, v1::StreamResponse* response) {
    switch (request.kind_case()) {
      case v1::StreamRequest::kOpen:
        response->Clear();
        return HandleOpen(request.open(), response);
      case v1::StreamRequest::kChunk:
        return HandleChunk(request.chunk(), request.want_state(), response);
      default:
        return absl::InvalidArgumentError("a request must carry `open` or `chunk`");
    }
  }

  void End(bool clean) {
    if (session_ == nullptr) return;
    if (clean) {
      Sessions().Close(session_->id());
    } else {
      Sessions().Detach(session_->id(), "stream ended");
    }
    session_.reset();
  }

  const std::shared_ptr<server::SessionManager::Entry>& session() const { return session_; }

 private:
  absl::Status HandleOpen(const v1::StreamOpen& open, v1::StreamResponse* response) {
    if (session_ != nullptr) {
      return absl::InvalidArgumentError("`open` must be the first request and only the first");
    }
    std::string snapshot = open.resume_from().data();
    if (fix_crc_) FixSnapshotCrc(snapshot);
    server::OpenSessionRequest request;
    request.model = open.model();
    request.version = open.version();
    request.batch = open.batch();
    request.session_id = open.session_id() == kDetachedAlias ? detached_id_ : open.session_id();
    request.has_snapshot = open.has_resume_from();
    request.snapshot = snapshot;
    request.snapshot_model = open.resume_from().model();
    if (request.has_snapshot) request.version = 0;
    request.field_prefix = "open.";
    absl::StatusOr<std::shared_ptr<server::SessionManager::Entry>> entry =
        server::OpenSession(request, Catalog(), Sessions(), Limits());
    if (!entry.ok()) return entry.status();
    session_ = *std::move(entry);
    v1::StreamOpened* opened = response->mutable_opened();
    opened->set_session_id(session_->id());
    opened->set_model(session_->model_name());
    opened->set_version(session_->version());
    opened->set_batch(session_->batch());
    opened->set_d_input(session_->d_input());
    opened->set_d_output(session_->d_output());
    const int64_t position = session_->position();
    opened->set_position(position);
    response->set_position(position);
    return absl::OkStatus();
  }

  absl::Status HandleChunk(const v1::Tensor& chunk, bool want_state, v1::StreamResponse* response) {
    if (session_ == nullptr) {
      return absl::InvalidArgumentError("the first request of a stream must be `open`");
    }
    absl::StatusOr<server::SequenceShape> shape =
        server::ReadStreamChunk(chunk, want_state, *session_, Limits(), &x_);
    if (!shape.ok()) return shape.status();
    const server::SequenceShape out_shape = *shape;
    y_.resize(out_shape.size());
    server::SessionSnapshot snapshot;
    absl::StatusOr<int64_t> position = session_->Run(
        x_, static_cast<int>(shape->steps), absl::MakeSpan(y_), want_state ? &snapshot : nullptr);
    if (!position.ok()) return position.status();
    server::WriteSequenceTensor(y_, out_shape, response->mutable_output());
    response->set_position(*position);
    if (want_state) {
      server::WriteStateSnapshot(snapshot, response->mutable_state());
    } else {
      response->clear_state();
    }
    return absl::OkStatus();
  }

  const std::string detached_id_;
  const bool fix_crc_;
  std::shared_ptr<server::SessionManager::Entry> session_;
  std::vector<double> x_;
  std::vector<double> y_;
};

// A detached session for reattach requests to find (legt, batch 2, 3 steps
// in: position 3, so a reattach is visibly a continuation).
std::string OpenDetached() {
  server::OpenSessionRequest request;
  request.model = "legt";
  request.batch = 2;
  request.attach = false;
  absl::StatusOr<std::shared_ptr<server::SessionManager::Entry>> entry =
      server::OpenSession(request, Catalog(), Sessions(), Limits());
  if (!entry.ok())
    Fail(absl::StrCat("the harness's detached session: ", entry.status().ToString()));
  std::vector<double> y(2 * 3 * 4);
  if (!(*entry)->Run(Wave(6), 3, absl::MakeSpan(y), nullptr).ok()) Fail("detached session run");
  return (*entry)->id();
}

void RunStream(const uint8_t* data, size_t size) {
  if (size < 1) return;
  const uint8_t flags = data[0];
  const std::vector<std::string_view> frames =
      SplitFrames(std::string_view(reinterpret_cast<const char*>(data) + 1, size - 1));
  const std::string detached = OpenDetached();
  Stream stream(detached, (flags & 2) != 0);
  bool clean = (flags & 1) != 0;
  int64_t last_position = -1;
  v1::StreamResponse response;  // reused, as the transport does
  for (std::string_view frame : frames) {
    v1::StreamRequest request;
    if (!request.ParseFromArray(frame.data(), static_cast<int>(frame.size()))) {
      clean = false;
      break;
    }
    const absl::Status status = stream.Handle(request, &response);
    if (!status.ok()) {
      CheckCode(status,
                {absl::StatusCode::kInvalidArgument, absl::StatusCode::kNotFound,
                 absl::StatusCode::kResourceExhausted, absl::StatusCode::kFailedPrecondition,
                 absl::StatusCode::kDataLoss, absl::StatusCode::kOutOfRange},
                "StreamInfer request");
      CheckBoundedMessage(status, "StreamInfer request");
      clean = false;
      break;
    }
    Check(response.position() >= last_position, "a stream's position went back");
    last_position = response.position();
    if (request.kind_case() == v1::StreamRequest::kChunk) {
      const v1::Tensor& out = response.output();
      const server::SessionManager::Entry& entry = *stream.session();
      Check(out.shape_size() == 3 && out.shape(0) == entry.batch() &&
                out.shape(1) == request.chunk().shape(1) && out.shape(2) == entry.d_output() &&
                out.values_size() == out.shape(0) * out.shape(1) * out.shape(2),
            "a chunk's output has the wrong shape");
      if (request.want_state()) {
        absl::StatusOr<server::ServedModel> served =
            Catalog().Find(entry.model_name(), entry.version());
        Check(served.ok(), "a session's model left the catalog");
        absl::StatusOr<Session> again = Session::Import(served->model, response.state().data());
        Check(again.ok() && again->position() == response.position(),
              "a chunk's returned state does not import at its position");
      }
    }
  }
  const std::string id = stream.session() != nullptr ? stream.session()->id() : "";
  stream.End(clean);
  const server::SessionManager::Stats stats = Sessions().GetStats();
  Check(stats.attached == 0, "a session is still attached after its stream ended");
  // Left detached: the harness's own and, after a break, the stream's.
  Check(stats.detached <= (!clean && !id.empty() && id != detached ? 2 : 1),
        "sessions left behind after the stream ended");
  Sessions().Close(detached);
  if (!id.empty()) Sessions().Close(id);
  const server::SessionManager::Stats after = Sessions().GetStats();
  Check(after.attached == 0 && after.detached == 0, "sessions left after closing");
}

v1::StreamRequest Open(const std::string& model, int batch, int64_t version = 0) {
  v1::StreamRequest r;
  r.mutable_open()->set_model(model);
  r.mutable_open()->set_batch(batch);
  r.mutable_open()->set_version(version);
  return r;
}

v1::StreamRequest Chunk(std::vector<int64_t> shape, bool want_state = false) {
  v1::StreamRequest r;
  int64_t n = 1;
  for (int64_t d : shape) {
    r.mutable_chunk()->add_shape(d);
    n *= d;
  }
  for (double v : Wave(static_cast<size_t>(std::max<int64_t>(n, 0)), 0.3)) {
    r.mutable_chunk()->add_values(static_cast<float>(v));
  }
  r.set_want_state(want_state);
  return r;
}

void WriteSeeds(const std::string& dir) {
  const auto seed = [&](const std::string& name, uint8_t flags,
                        const std::vector<v1::StreamRequest>& requests) {
    std::vector<std::string> frames;
    for (const v1::StreamRequest& r : requests) frames.push_back(r.SerializeAsString());
    WriteSeed(dir, name, std::string(1, static_cast<char>(flags)) + JoinFrames(frames));
  };
  seed("legt-chunks", 1, {Open("legt", 1), Chunk({1, 4, 1}), Chunk({1, 1, 1}, true)});
  seed("legs-batch2", 1, {Open("legs", 2), Chunk({2, 3, 1}), Chunk({2, 70, 1}, true)});
  seed("delay-break", 0, {Open("delay", 1), Chunk({1, 9, 1})});
  seed("s4-v1", 1, {Open("s4", 1, 1), Chunk({1, 5, 1}, true), Chunk({1, 64, 1})});
  seed("s4-bidi-refused", 0, {Open("s4-bidi", 1), Chunk({1, 2, 1})});
  seed("chunk-first", 0, {Chunk({1, 2, 1})});
  seed("open-twice", 0, {Open("legt", 1), Open("legt", 1)});
  seed("wrong-batch", 0, {Open("legt", 2), Chunk({1, 2, 1})});
  seed("bad-shape", 0, {Open("s4", 1), Chunk({1, 2})});
  seed("unknown-model", 0, {Open("nope", 1)});
  v1::StreamRequest reattach;
  reattach.mutable_open()->set_session_id(kDetachedAlias);
  seed("reattach", 1, {reattach, Chunk({2, 2, 1}, true)});
  v1::StreamRequest unknown_id;
  unknown_id.mutable_open()->set_session_id("0123456789abcdef0123456789abcdef");
  seed("reattach-unknown", 0, {unknown_id});
  // Resumed from snapshots the project writes: a fresh stream's and one
  // 5 steps in, by the snapshot message's model name.
  for (const char* model : {"legt", "s4"}) {
    absl::StatusOr<server::ServedModel> served = Catalog().Find(model, 0);
    if (!served.ok()) Fail(served.status().ToString());
    absl::StatusOr<Session> session = Session::Create(served->model, 1);
    if (!session.ok()) Fail(session.status().ToString());
    std::vector<double> y(5 * served->model->d_output());
    if (!session->Run(Wave(5), 5, absl::MakeSpan(y)).ok()) Fail("seed run");
    v1::StreamRequest resume;
    server::WriteStateSnapshot(server::SnapshotOf(*session, model, served->version, nullptr),
                               resume.mutable_open()->mutable_resume_from());
    seed(absl::StrCat("resume-", model), 1 | 2, {resume, Chunk({1, 3, 1}, true)});
  }
}

}  // namespace
}  // namespace ssm::fuzz

extern "C" int LLVMFuzzerInitialize(int* argc, char*** argv) {
  ssm::fuzz::HandleSeedFlag(argc, argv, ssm::fuzz::WriteSeeds);
  ssm::fuzz::Catalog();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  ssm::fuzz::RunStream(data, size);
  return 0;
}
