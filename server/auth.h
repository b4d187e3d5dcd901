// The one authorizer of ssm_server: who is calling (a bearer token from
// the callers file, or a verified client certificate's identity), may they
// do this (a scope, on this model), and are they within their quota of
// calls in flight. Handlers ask it; none parses a token itself.
//
// Authentication happens per call, from the call's own metadata and its
// connection's certificate. (Not in a grpc::AuthMetadataProcessor: in gRPC
// 1.51 a processor's properties land in the connection's shared auth
// context, so a principal set for one call would stay on the connection
// for the next, token or no token.)
//
// Without --auth_callers, authentication is off: every call is the
// anonymous principal "" with every scope, and per-principal quotas do not
// apply (the server's global limits do) — today's behaviour, so the quick
// start needs no configuration.
//
// Codes: no credentials, or a token or certificate the callers file does
// not know, UNAUTHENTICATED; a known caller without the scope
// PERMISSION_DENIED naming the scope (never the token); past the caller's
// --quota_calls RESOURCE_EXHAUSTED naming the quota.
//
// Thread safety: every method may be called concurrently.

#ifndef SSM_SERVER_AUTH_H_
#define SSM_SERVER_AUTH_H_

#include <memory>
#include <string>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "server/callers.h"
#include "server/watched_file.h"

namespace ssm::server {

// An authenticated caller; cheap to copy (it keeps the callers table it
// came from alive, so a reload never pulls it from under a running call).
using CallerRef = std::shared_ptr<const Caller>;

class Authorizer {
 public:
  struct Options {
    std::string callers_path;  // empty: authentication off
    absl::Duration refresh = absl::Seconds(5);
    int quota_calls = 0;     // calls in flight per principal; 0: none
    int quota_sessions = 0;  // sessions held per principal (SessionManager enforces)
  };

  // Fails when the callers file cannot be read or parsed (naming it).
  static absl::StatusOr<std::unique_ptr<Authorizer>> Create(Options options);

  bool enabled() const { return callers_ != nullptr; }
  const Options& options() const { return options_; }

  // The caller of a call from its `authorization` metadata value (empty:
  // none sent) and the subject alternative names of its verified client
  // certificate (empty: none). A token, when sent, decides (a wrong token
  // is not excused by a certificate).
  absl::StatusOr<CallerRef> Authenticate(absl::string_view authorization,
                                         absl::Span<const std::string> certificate_sans) const;

  // OK when `caller` has `scope` (on `model` for Scope::kRun).
  absl::Status Check(const Caller& caller, Scope scope, absl::string_view model = "") const;

  // Counts a call of `caller` in flight (until LeaveCall); RESOURCE_EXHAUSTED
  // past --quota_calls. No-op when quotas or authentication are off.
  absl::Status EnterCall(const Caller& caller);
  void LeaveCall(const Caller& caller);

 private:
  explicit Authorizer(Options options) : options_(std::move(options)) {}

  const Options options_;
  std::unique_ptr<WatchedFile<CallerTable>> callers_;
  absl::Mutex mu_;
  absl::flat_hash_map<std::string, int> in_flight_ ABSL_GUARDED_BY(mu_);
};

}  // namespace ssm::server

#endif  // SSM_SERVER_AUTH_H_
