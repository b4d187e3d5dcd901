#include "server/auth.h"

#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "server/echo.h"

namespace ssm::server {
namespace {

// Every scope, for everyone: the caller when authentication is off.
CallerRef Anonymous() {
  static const CallerRef anonymous = [] {
    auto caller = std::make_shared<Caller>();
    caller->run_globs = {"*"};
    caller->list = caller->state = caller->math = true;
    return CallerRef(std::move(caller));
  }();
  return anonymous;
}

}  // namespace

absl::StatusOr<std::unique_ptr<Authorizer>> Authorizer::Create(Options options) {
  std::unique_ptr<Authorizer> authorizer(new Authorizer(std::move(options)));
  if (authorizer->options_.callers_path.empty()) return authorizer;
  absl::StatusOr<std::unique_ptr<WatchedFile<CallerTable>>> file = WatchedFile<CallerTable>::Create(
      authorizer->options_.callers_path, CallerTable::Parse, authorizer->options_.refresh);
  if (!file.ok()) {
    return absl::Status(file.status().code(),
                        absl::StrCat("--auth_callers: ", file.status().message()));
  }
  authorizer->callers_ = *std::move(file);
  return authorizer;
}

absl::StatusOr<CallerRef> Authorizer::Authenticate(
    absl::string_view authorization, absl::Span<const std::string> certificate_sans) const {
  if (!enabled()) return Anonymous();
  const std::shared_ptr<const CallerTable> table = callers_->Get();
  if (!authorization.empty()) {
    absl::string_view token = absl::StripAsciiWhitespace(authorization);
    // The scheme is case-insensitive (RFC 7235).
    if (token.size() < 7 || !absl::EqualsIgnoreCase(token.substr(0, 7), "Bearer ")) {
      return absl::UnauthenticatedError("the authorization metadata must be \"Bearer <token>\"");
    }
    token = absl::StripLeadingAsciiWhitespace(token.substr(7));
    const Caller* caller = table->ByTokenHash(Sha256(token));
    if (caller == nullptr) {
      return absl::UnauthenticatedError("the bearer token is not one this server knows");
    }
    return CallerRef(table, caller);  // aliasing: keeps the table alive
  }
  if (const Caller* caller = table->ByCertificate(certificate_sans)) {
    return CallerRef(table, caller);
  }
  if (!certificate_sans.empty()) {
    return absl::UnauthenticatedError(
        absl::StrCat("the client certificate's identity (", Echo(certificate_sans.front()),
                     ") is not one this server knows, and no bearer token was sent"));
  }
  return absl::UnauthenticatedError(
      "no credentials: send \"authorization: Bearer <token>\" metadata (or a client "
      "certificate the server knows)");
}

absl::Status Authorizer::Check(const Caller& caller, Scope scope, absl::string_view model) const {
  if (caller.Has(scope, model)) return absl::OkStatus();
  return absl::PermissionDeniedError(absl::StrCat(
      "caller '", caller.principal, "' lacks the scope \"", ScopeName(scope, Echo(model)), "\""));
}

absl::Status Authorizer::EnterCall(const Caller& caller) {
  if (!enabled() || options_.quota_calls <= 0) return absl::OkStatus();
  absl::MutexLock lock(&mu_);
  int& n = in_flight_[caller.principal];
  if (n >= options_.quota_calls) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "caller '", caller.principal, "' already has --quota_calls=", options_.quota_calls,
        " calls in flight; retry when one is done"));
  }
  ++n;
  return absl::OkStatus();
}

void Authorizer::LeaveCall(const Caller& caller) {
  if (!enabled() || options_.quota_calls <= 0) return;
  absl::MutexLock lock(&mu_);
  auto it = in_flight_.find(caller.principal);
  if (it != in_flight_.end() && --it->second <= 0) in_flight_.erase(it);
}

}  // namespace ssm::server
