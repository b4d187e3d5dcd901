#include "server/unary_call.h"

#include <grpcpp/impl/codegen/proto_utils.h>

#include <chrono>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "server/log.h"
#include "server/status.h"

namespace ssm::server {

absl::StatusOr<CallerRef> AuthenticateCall(const Authorizer& auth,
                                           const grpc::ServerContextBase& context) {
  if (!auth.enabled()) return auth.Authenticate("", {});
  std::string authorization;
  const auto& metadata = context.client_metadata();
  if (auto it = metadata.find("authorization"); it != metadata.end()) {
    authorization.assign(it->second.data(), it->second.size());
  }
  std::vector<std::string> sans;
  // Only a certificate the TLS handshake verified names a caller.
  const std::shared_ptr<const grpc::AuthContext> tls = context.auth_context();
  if (tls != nullptr && tls->IsPeerAuthenticated()) {
    for (const grpc::string_ref& san : tls->FindPropertyValues("x509_subject_alternative_name")) {
      sans.emplace_back(san.data(), san.size());
    }
  }
  return auth.Authenticate(authorization, sans);
}

absl::Status CallStillWanted(grpc::CallbackServerContext* context) {
  if (!context->IsCancelled()) return absl::OkStatus();
  if (context->deadline() <= std::chrono::system_clock::now()) {
    return absl::DeadlineExceededError("the deadline passed before the work started");
  }
  return absl::CancelledError("the call was cancelled");
}

absl::Status StillWantedDuring(grpc::CallbackServerContext* context, const char* what) {
  if (!context->IsCancelled()) return absl::OkStatus();
  if (context->deadline() <= std::chrono::system_clock::now()) {
    return absl::DeadlineExceededError(absl::StrCat("the deadline passed during ", what));
  }
  return absl::CancelledError(absl::StrCat("the call was cancelled during ", what));
}

absl::Status CallStopped(grpc::CallbackServerContext* context, int64_t done, int64_t total,
                         const char* unit) {
  if (!context->IsCancelled()) return absl::OkStatus();
  const std::string progress = absl::StrCat("; stopped after ", done, " of ", total, " ", unit);
  if (context->deadline() <= std::chrono::system_clock::now()) {
    return absl::DeadlineExceededError(absl::StrCat("the deadline passed", progress));
  }
  return absl::CancelledError(absl::StrCat("the call was cancelled", progress));
}

UnaryCall::UnaryCall(grpc::CallbackServerContext* context, const ServiceEnv* env, const char* rpc)
    : context_(context), env_(env), rpc_(rpc), start_(absl::Now()) {
  env_->calls->Enter();
}

void UnaryCall::Complete(const absl::Status& result) {
  absl::Status status = result;
  if (status.ok()) status = WriteResponse();
  if (!status.ok()) {
    const std::string code = absl::StatusCodeToString(status.code());
    LogfLimited(absl::StrCat("rpc ", rpc_, " ", code), "rpc %s failed: %s: %s (peer %s)", rpc_,
                code, status.message(), context_->peer());
  }
  env_->metrics->RecordRpc(rpc_, status.code(), absl::Now() - start_);
  Finish(ToGrpcStatus(status));
}

bool UnaryCall::Authenticate() {
  if (caller_ != nullptr) return true;
  Authorizer& auth = *env_->auth;
  absl::StatusOr<CallerRef> caller = AuthenticateCall(auth, *context_);
  absl::Status status = caller.status();
  if (status.ok()) status = auth.EnterCall(**caller);
  if (!status.ok()) {
    Complete(status);
    return false;
  }
  caller_ = *std::move(caller);
  return true;
}

bool UnaryCall::Authorize(Scope scope, absl::string_view model) {
  if (!Authenticate()) return false;
  if (absl::Status status = env_->auth->Check(*caller_, scope, model); !status.ok()) {
    Complete(status);
    return false;
  }
  return true;
}

bool UnaryCall::RefuseIfDraining() {
  if (!env_->Draining()) return false;
  Complete(DrainingError());
  return true;
}

void UnaryCall::CompleteOnPool(absl::AnyInvocable<absl::Status() &&> work,
                               WorkerPool::JobClass job_class) {
  WorkerPool& pool = *env_->pool;
  if (!pool.TrySchedule(
          [this, work = std::move(work)]() mutable {
            absl::Status status = CallStillWanted(context_);
            if (status.ok()) status = std::move(work)();
            Complete(status);
          },
          job_class)) {
    Complete(job_class == WorkerPool::JobClass::kMath ? MathBusyError(pool) : BusyError(pool));
  }
}

absl::Status ParseMessage(grpc::ByteBuffer* bytes, google::protobuf::MessageLite* message) {
  grpc::Status parsed =
      grpc::SerializationTraits<google::protobuf::MessageLite>::Deserialize(bytes, message);
  if (parsed.ok()) return absl::OkStatus();
  return absl::InvalidArgumentError(parsed.error_message());
}

absl::Status SerializeMessage(const google::protobuf::MessageLite& message, grpc::ByteBuffer* out) {
  bool own_buffer = false;
  grpc::Status written = grpc::SerializationTraits<google::protobuf::MessageLite>::Serialize(
      message, out, &own_buffer);
  if (written.ok()) return absl::OkStatus();
  return absl::InternalError(
      absl::StrCat("cannot serialize the response: ", written.error_message()));
}

absl::Status UnparsableRequest(absl::string_view type, size_t size) {
  return absl::InvalidArgumentError(absl::StrCat("the request is not a valid ", type, ": its ",
                                                 size, " bytes do not parse as one"));
}

void UnaryCall::OnDone() {
  if (caller_ != nullptr) env_->auth->LeaveCall(*caller_);
  CallCounter* calls = env_->calls;
  delete this;
  calls->Exit();
}

}  // namespace ssm::server
