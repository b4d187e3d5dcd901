// Who may call ssm_server, and what each caller may do: the callers file
// (--auth_callers), JSON:
//
//   {"callers": [
//     {"principal": "team-a",
//      "token_sha256": ["<64 hex digits>", ...],    // bearer tokens, hashed
//      "cert_san": ["client.team-a.example", ...],  // mTLS identities
//      "scopes": ["run:s4-*", "list", "state", "math"]},
//     ...]}
//
// A caller is known by a bearer token (only its SHA-256 is stored, so the
// file is no secret to leak) or, over mTLS, by a subject alternative name
// of its verified client certificate. Scopes:
//   run:<glob>  Infer, StreamInfer and GetModel on models whose name matches
//               the glob (fnmatch: `*`, `?`, `[...]`; "run:*" is every model)
//   list        ListModels
//   state       ExportState, ImportState (moving sessions' state)
//   math        the Math service
// Health is open to everyone. Unknown keys, scopes or malformed values are
// errors naming the entry: a typo must neither grant nor silently drop a
// permission.
//
// Thread safety: a CallerTable is immutable once parsed.

#ifndef SSM_SERVER_CALLERS_H_
#define SSM_SERVER_CALLERS_H_

#include <memory>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"

namespace ssm::server {

enum class Scope { kRun, kList, kState, kMath };

// The scope as the callers file spells it ("run:<model>" for kRun).
std::string ScopeName(Scope scope, absl::string_view model = "");

struct Caller {
  std::string principal;
  std::vector<std::string> run_globs;  // models this caller may run
  bool list = false;
  bool state = false;
  bool math = false;

  // Whether the caller has `scope` (for kRun, on `model`).
  bool Has(Scope scope, absl::string_view model = "") const;
};

class CallerTable {
 public:
  // Parses the callers file's text; InvalidArgument naming the entry and
  // field on any error. `source` names the file in messages.
  static absl::StatusOr<std::shared_ptr<const CallerTable>> Parse(absl::string_view json,
                                                                  absl::string_view source);

  // The caller whose token hashes to `token_sha256` (32 raw bytes), or null.
  // The digest is compared in constant time with the one found.
  const Caller* ByTokenHash(absl::string_view token_sha256) const;
  // The caller one of whose cert_san entries is among `sans`, or null.
  const Caller* ByCertificate(absl::Span<const std::string> sans) const;

  int size() const { return static_cast<int>(callers_.size()); }

 private:
  std::vector<Caller> callers_;
  absl::flat_hash_map<std::string, int> by_token_;  // raw digest -> index
  absl::flat_hash_map<std::string, int> by_san_;
};

// SHA-256 of `text`, 32 raw bytes.
std::string Sha256(absl::string_view text);

}  // namespace ssm::server

#endif  // SSM_SERVER_CALLERS_H_
