// The reactor of one unary call, shared by every unary RPC of ssm_server:
// its start time for the latency metric, the single exit through
// ToGrpcStatus (failures logged and counted), the drain check, and the
// hand-off of the call's work to the worker pool. Plus the two questions a
// call's work asks its gRPC context: is it still wanted before it starts,
// and should it stop between two pieces.
//
// The services take their requests as raw bytes (gRPC's raw callback
// methods) and parse them here (MessageCall::Parse), so a request that is
// not a valid message gets INVALID_ARGUMENT naming its type, logged and
// counted like any other error (gRPC's own parse failure would answer
// UNIMPLEMENTED with no message, before any handler could see it).
//
// Thread safety: a UnaryCall is driven by one handler, then by at most one
// pool job; Complete is its last use (gRPC may delete it right after).

#ifndef SSM_SERVER_UNARY_CALL_H_
#define SSM_SERVER_UNARY_CALL_H_

#include <google/protobuf/message_lite.h>
#include <grpcpp/server_context.h>
#include <grpcpp/support/byte_buffer.h>
#include <grpcpp/support/server_callback.h>

#include <cstdint>

#include "absl/functional/any_invocable.h"
#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "server/service_env.h"

namespace ssm::server {

// The caller of the call `context` belongs to: its `authorization`
// metadata and its verified client certificate's subject alternative
// names, through the authorizer (auth.h).
absl::StatusOr<CallerRef> AuthenticateCall(const Authorizer& auth,
                                           const grpc::ServerContextBase& context);

// Why a call that is still queued should not run: its client cancelled or
// its deadline passed. OK when it should run.
absl::Status CallStillWanted(grpc::CallbackServerContext* context);

// Why a running call should stop between two pieces of its work, with how
// far it got ("stopped after `done` of `total` `unit`"). OK to go on.
absl::Status CallStopped(grpc::CallbackServerContext* context, int64_t done, int64_t total,
                         const char* unit);

// OK while the call is wanted; CANCELLED or DEADLINE_EXCEEDED (saying
// `what` was running) once its client cancelled or its deadline passed. A
// stop check for long work (ssm/stop.h): thread-safe and cheap.
absl::Status StillWantedDuring(grpc::CallbackServerContext* context, const char* what);

class UnaryCall : public grpc::ServerUnaryReactor {
 public:
  // `rpc` names the method in logs and metrics; a string literal.
  UnaryCall(grpc::CallbackServerContext* context, const ServiceEnv* env, const char* rpc);
  ~UnaryCall() override = default;

  // Finishes the call. Exactly once per call; the reactor may be deleted
  // (OnDone) as soon as this returns, so it is the caller's last use.
  void Complete(const absl::Status& status);

  // Authenticates the caller (once per call; it then counts against the
  // caller's --quota_calls until the call is done). On failure completes
  // the call (UNAUTHENTICATED, RESOURCE_EXHAUSTED) and returns false: the
  // handler's only move left is to return the call. Handlers call it before
  // parsing, so an unknown caller learns nothing from the request's fate.
  bool Authenticate();
  // Authenticate, then checks that the caller has `scope` (on `model` for
  // Scope::kRun); PERMISSION_DENIED naming the scope otherwise, as above.
  bool Authorize(Scope scope, absl::string_view model = "");
  // The authenticated caller; valid after an Authorize that returned true.
  const Caller& caller() const { return *caller_; }

  // While the server drains, completes the call with UNAVAILABLE and returns
  // true (the call is finished: the handler's only move left is to return
  // it). The drain policy for new unary calls lives here, in one place.
  bool RefuseIfDraining();

  // Runs `work` on a worker and completes the call with its status, unless
  // the pool is full for its class (RESOURCE_EXHAUSTED now) or the call is
  // cancelled or past its deadline by the time a worker is free.
  void CompleteOnPool(absl::AnyInvocable<absl::Status() &&> work,
                      WorkerPool::JobClass job_class = WorkerPool::JobClass::kInference);

  grpc::CallbackServerContext* context() const { return context_; }
  const ServiceEnv& env() const { return *env_; }

  void OnDone() override;

 protected:
  // Called by Complete with an OK status, before the call finishes: writes
  // the response (an error becomes the call's status).
  virtual absl::Status WriteResponse() { return absl::OkStatus(); }

 private:
  grpc::CallbackServerContext* const context_;
  const ServiceEnv* const env_;
  const char* const rpc_;
  const absl::Time start_;
  CallerRef caller_;  // set by the first Authorize that authenticated
};

// The bytes of `*bytes` (consumed) parsed into *message; InvalidArgument
// when they are not one.
absl::Status ParseMessage(grpc::ByteBuffer* bytes, google::protobuf::MessageLite* message);
// *message serialized into *out; Internal if it cannot be.
absl::Status SerializeMessage(const google::protobuf::MessageLite& message, grpc::ByteBuffer* out);
// INVALID_ARGUMENT: `size` bytes that are not a `type` (the full message
// type name, e.g. "ssm.v1.InferRequest").
absl::Status UnparsableRequest(absl::string_view type, size_t size);

// A unary call of a raw method whose request and response are the protobuf
// messages Request and Response: it owns both for the call's life.
template <typename Request, typename Response>
class MessageCall final : public UnaryCall {
 public:
  MessageCall(grpc::CallbackServerContext* context, const ServiceEnv* env, const char* rpc,
              grpc::ByteBuffer* raw_response)
      : UnaryCall(context, env, rpc), raw_response_(raw_response) {}

  // Parses the raw request. When the bytes are not a Request, completes the
  // call with INVALID_ARGUMENT naming the type and returns false: the
  // handler's only move left is to return the call.
  bool Parse(const grpc::ByteBuffer* raw) {
    grpc::ByteBuffer bytes(*raw);  // shares the slices; parsing consumes it
    const size_t size = bytes.Length();
    if (absl::Status s = ParseMessage(&bytes, &request_); !s.ok()) {
      Complete(UnparsableRequest(request_.GetTypeName(), size));
      return false;
    }
    return true;
  }

  const Request& request() const { return request_; }
  Response* response() { return &response_; }

 private:
  absl::Status WriteResponse() override { return SerializeMessage(response_, raw_response_); }

  Request request_;
  Response response_;
  grpc::ByteBuffer* const raw_response_;
};

}  // namespace ssm::server

#endif  // SSM_SERVER_UNARY_CALL_H_
