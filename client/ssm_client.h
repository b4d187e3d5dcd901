// ssm::client: a C++ client for the ssmserve gRPC API (proto/ssm/v1/
// ssm_service.proto).
//
// Every call returns absl::Status / absl::StatusOr. A failed RPC keeps the
// server's gRPC code and message (StatusFromGrpc is the one translation),
// so callers test exact codes: INVALID_ARGUMENT, NOT_FOUND,
// FAILED_PRECONDITION, DATA_LOSS, RESOURCE_EXHAUSTED, UNAVAILABLE, ...
// Problems found before sending (a tensor whose shape does not match its
// values) are INVALID_ARGUMENT without an RPC.
//
// Tensors are float32, row-major, with an explicit shape; inference tensors
// are [batch, steps, features].
//
// Thread safety: a Client may be used from any number of threads at once.
// A Stream has one writer side (Send) and one reader side (Receive): one
// thread may call Send while another calls Receive, but two threads must
// not call Send (or Receive) at the same time.
//
//   ssm::client::ClientOptions options;
//   options.address = "127.0.0.1:50051";
//   ssm::client::Client client(options);
//   absl::StatusOr<ssm::client::InferResult> r =
//       client.Infer("s4-demo", {.shape = {1, 3, 1}, .values = {1, 2, 3}});
//
//   ssm::client::StreamOptions open;
//   open.model = "legt-delay";
//   absl::StatusOr<std::unique_ptr<ssm::client::Stream>> stream =
//       client.OpenStream(open);
//   absl::StatusOr<ssm::client::StreamResult> step =
//       (*stream)->RunChunk(std::vector<float>{0.5f}, /*steps=*/1);
#ifndef SSMSERVE_CLIENT_SSM_CLIENT_H_
#define SSMSERVE_CLIENT_SSM_CLIENT_H_

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "ssm/v1/ssm_service.pb.h"

namespace grpc {
class Channel;
class ClientContext;
class Status;
}  // namespace grpc

namespace ssm::client {

// grpc::Status -> absl::Status with the same canonical code and message
// (a code outside 0..16 becomes UNKNOWN, as gRPC treats one).
absl::Status StatusFromGrpc(const grpc::Status& status);

// A dense float32 tensor, row-major. Valid when values.size() equals the
// product of shape (an empty shape holds one value).
struct Tensor {
  std::vector<int64_t> shape;
  std::vector<float> values;
};

// INVALID_ARGUMENT unless `tensor` is [batch, steps, features] with all
// dimensions >= 1 and product(shape) values.
absl::Status CheckSequenceTensor(const Tensor& tensor);

struct ClientOptions {
  // A gRPC target: "127.0.0.1:50051", "dns:///ssm:50051",
  // "ipv4:127.0.0.1:50051,127.0.0.1:50052", ...
  std::string address = "127.0.0.1:50051";
  // Deadline of each unary call (and of a stream's open handshake).
  // absl::InfiniteDuration() for none.
  absl::Duration deadline = absl::Seconds(30);
  // Largest message sent or received, bytes.
  int max_message_bytes = 64 << 20;
  // gRPC load-balancing policy: "" (pick_first) or "round_robin".
  std::string load_balancing;
  // Unary calls wait for the channel to connect (up to the deadline)
  // instead of failing at once with UNAVAILABLE.
  bool wait_for_ready = false;
  // Delay before reconnecting a broken or refused connection, growing
  // exponentially (x1.6) up to max_reconnect_backoff (gRPC's defaults:
  // 1 s and 120 s). Shorter helps a stream resume quickly on a restarted
  // server, and a caller that polls a starting server.
  absl::Duration reconnect_backoff = absl::Seconds(1);
  absl::Duration max_reconnect_backoff = absl::Seconds(120);

  // Transport security. TLS is on when `tls` is set or any of the three
  // files is given; the server's certificate must then chain to ca_file's
  // roots (gRPC's default roots when ca_file is empty) and carry the
  // address's host, or server_name, among its names. Files hold PEM and
  // are read when the Client is made.
  bool tls = false;
  std::string ca_file;
  // A client certificate (chain) and its private key, for servers that
  // ask for one (mutual TLS; --tls_client_auth). Both or neither.
  std::string cert_file;
  std::string key_file;
  // The name to verify the server's certificate against instead of the
  // address's host: for an address by IP, or through a proxy. Needs TLS.
  std::string server_name;

  // A bearer token sent as `authorization: Bearer <token>` metadata with
  // every call - unary calls, streams, and a stream's resumes - except
  // Health, which servers leave open (so a probe of a plaintext health
  // port never carries it). At most one of `token` and `token_file` (read
  // once, when the Client is made; whitespace around it is dropped).
  // Printable ASCII only. It is also sent without TLS (loopback, or a
  // sidecar that terminates TLS): anywhere else, turn TLS on.
  std::string token;
  std::string token_file;
};

struct InferResult {
  std::string model;
  int64_t version = 0;
  Tensor output;  // [batch, L, d_output]
  // The state after the last step, when Infer's return_state was set.
  std::optional<ssm::v1::StateSnapshot> state;
};

// Resume on UNAVAILABLE (a lost connection, a draining or dead replica):
// the stream reopens its session, on the same address, which may lead to
// another replica, and replays the chunks the server lost, so the caller
// sees every output exactly once, in order; replays repeat the same chunks
// on the same state, so outputs are identical. Any other code ends the
// stream as usual.
// - Against a server that keeps sessions in a store (StreamOpened.durable)
//   the session is found again by its id alone; the client keeps only the
//   chunks past the server's durable position, and waits up to `lease_wait`
//   while the replica the stream left still holds the session.
// - Otherwise the stream asks for a state snapshot every
//   `checkpoint_steps`, keeps the latest and the chunks sent since, and
//   reopens from that snapshot; session_id() is then the new session's.
struct ResumePolicy {
  bool enabled = false;
  int64_t checkpoint_steps = 256;                    // >= 1 (snapshots; unused when durable)
  int max_attempts = 5;                              // reopen attempts per failure
  absl::Duration backoff = absl::Milliseconds(100);  // doubled per attempt
  // How long one attempt waits for the channel to connect.
  absl::Duration connect_timeout = absl::Seconds(5);
  // Durable sessions: how long to keep asking while another replica still
  // holds the session's lease (a replica that died releases it after the
  // server's --session_lease).
  absl::Duration lease_wait = absl::Seconds(20);
};

struct StreamOptions {
  std::string model;
  int64_t version = 0;  // 0: newest (ignored when resuming or reattaching)
  int batch = 1;        // streams in the session
  // At most one of: continue from a snapshot, or reattach to a detached
  // session of this server.
  std::optional<ssm::v1::StateSnapshot> resume_from;
  std::string session_id;
  // Send() blocks while this many chunks await their responses (0: no
  // limit). A limit needs Receive() running on another thread, or Send()
  // waits forever.
  int max_in_flight = 0;
  ResumePolicy resume;
};

struct StreamResult {
  Tensor output;         // [batch, T, d_output]
  int64_t position = 0;  // steps consumed after this chunk
  // The state after this chunk, when Send() asked for it.
  std::optional<ssm::v1::StateSnapshot> state;
  // From the Send() of this chunk to its Receive().
  absl::Duration round_trip;
};

class Stream;

class Client {
 public:
  // Does not connect yet (gRPC connects on first use): errors surface on
  // the calls. Options that cannot work (see status()) make a Client whose
  // every call returns why, without a channel: never a plaintext fallback.
  explicit Client(const ClientOptions& options);
  // Over an existing channel (options.address, max_message_bytes,
  // load_balancing and the TLS options are then the channel's business;
  // the token is still this Client's).
  Client(std::shared_ptr<grpc::Channel> channel, const ClientOptions& options);
  ~Client();

  Client(const Client&) = delete;
  Client& operator=(const Client&) = delete;

  // The served models, and those that failed to load with their error.
  absl::StatusOr<std::vector<ssm::v1::ModelStatus>> ListModels();

  // One model's config and metadata; NOT_FOUND for an unknown model or
  // version.
  absl::StatusOr<ssm::v1::GetModelResponse> GetModel(const std::string& model, int64_t version = 0);

  // Unary inference (convolutional mode) of input [batch, L, d_input].
  absl::StatusOr<InferResult> Infer(const std::string& model, const Tensor& input,
                                    int64_t version = 0, bool return_state = false);

  // Opens a StreamInfer call and completes its handshake: on success the
  // stream is ready for chunks and Stream::opened() holds the server's
  // answer. A refused open returns the server's code (NOT_FOUND,
  // FAILED_PRECONDITION, DATA_LOSS, RESOURCE_EXHAUSTED, ...). The Stream
  // must not outlive this Client.
  absl::StatusOr<std::unique_ptr<Stream>> OpenStream(const StreamOptions& options);

  // The state of a session, attached or detached.
  absl::StatusOr<ssm::v1::StateSnapshot> ExportState(const std::string& session_id);

  struct Imported {
    std::string session_id;
    int64_t position = 0;
  };
  // Creates a detached session from `snapshot` on `model` (version 0: the
  // newest whose fingerprint matches); reattach with
  // StreamOptions::session_id.
  absl::StatusOr<Imported> ImportState(const ssm::v1::StateSnapshot& snapshot,
                                       const std::string& model, int64_t version = 0);

  absl::StatusOr<ssm::v1::BuildHippoResponse> BuildHippo(const ssm::v1::BuildHippoRequest& request);
  absl::StatusOr<ssm::v1::ComputeKernelResponse> ComputeKernel(
      const ssm::v1::ComputeKernelRequest& request);

  // grpc.health.v1.Health/Check; "" asks about the whole server.
  enum class ServingStatus { kUnknown, kServing, kNotServing, kServiceUnknown };
  absl::StatusOr<ServingStatus> Health(const std::string& service = "");

  // Blocks until the channel is connected or `timeout` passes; false then
  // (and at once when status() is not OK).
  bool WaitForConnected(absl::Duration timeout);

  // OK, or why this Client can make no call, which every call then
  // returns: a TLS or token file that cannot be read (the file's own code,
  // NOT_FOUND, PERMISSION_DENIED, ..., the option and the path in the
  // message), one that holds no PEM, an unusable token, or options that
  // contradict each other (INVALID_ARGUMENT). Never contains the token.
  absl::Status status() const;

  // Adds this Client's per-call credentials (the token's metadata) to
  // `context`, for calls made by hand on channel() (async stubs, say).
  void AuthorizeContext(grpc::ClientContext* context) const;

  // Null when status() is not OK.
  const std::shared_ptr<grpc::Channel>& channel() const;
  const ClientOptions& options() const;

 private:
  friend class Stream;
  struct Rep;
  std::unique_ptr<Rep> rep_;
};

const char* ServingStatusName(Client::ServingStatus status);

// One StreamInfer call: one server-side session. Obtained from
// Client::OpenStream. Destroying an open stream cancels the call, which
// leaves the session detached on the server for its --session_ttl.
class Stream {
 public:
  ~Stream();
  Stream(const Stream&) = delete;
  Stream& operator=(const Stream&) = delete;

  // The server's answer to the open (a resumed stream's latest one).
  ssm::v1::StreamOpened opened() const;
  std::string session_id() const;
  // Steps whose outputs have been received.
  int64_t position() const;
  // Chunks sent whose responses have not been received.
  int in_flight() const;

  // Sends `chunk` = [batch, steps, d_input] values. Returns once it is on
  // its way (after waiting for a slot under max_in_flight). A broken stream
  // returns UNAVAILABLE (without resume); Receive() then returns the
  // server's status. INVALID_ARGUMENT if chunk.size() is not
  // batch * steps * d_input (nothing is sent).
  absl::Status Send(absl::Span<const float> chunk, int steps, bool want_state = false);

  // The response to the oldest chunk in flight, waiting for it (and, with
  // nothing in flight, for a Send() from another thread). A server error
  // returns its code and ends the stream; OUT_OF_RANGE after Close().
  absl::StatusOr<StreamResult> Receive();

  // Send() then Receive(): one synchronous step of any length.
  absl::StatusOr<StreamResult> RunChunk(absl::Span<const float> chunk, int steps,
                                        bool want_state = false);

  // Runs `input` [batch, L, d_input] through the session in chunks of
  // `chunk_steps` (the last one shorter), keeping up to `in_flight` chunks
  // outstanding (a writer thread sends while this thread receives); returns
  // [batch, L, d_output]. Needs nothing else in flight.
  absl::StatusOr<Tensor> Run(const Tensor& input, int chunk_steps, int in_flight = 1);

  // Ends the call cleanly (half-close, then the server's status): the
  // session ends. FAILED_PRECONDITION while chunks are in flight. Call it
  // with no Send() or Receive() running.
  absl::Status Close();

  // Cancels the call: the server keeps the session detached for its
  // --session_ttl, reattachable by session_id(). Any thread; a blocked
  // Send() or Receive() returns CANCELLED. No resume follows.
  void Detach();

 private:
  friend class Client;
  struct Rep;
  explicit Stream(std::unique_ptr<Rep> rep);
  std::unique_ptr<Rep> rep_;
};

}  // namespace ssm::client

#endif  // SSMSERVE_CLIENT_SSM_CLIENT_H_
