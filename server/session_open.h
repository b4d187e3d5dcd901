// How a caller comes by a session: the one policy behind StreamInfer's
// `open` and ImportState (and any other wire protocol's sequence start), so
// that new, resumed and reattached sessions follow the same rules whatever
// the transport. gRPC-free: it speaks the catalog, the session registry and
// the limits, never a wire message.
//
// Three ways, chosen by the request:
//   reattach  session_id set: a detached session of this server continues
//             (SessionManager::Reattach's rules: model and batch, when
//             given, must be the session's).
//   resume    snapshot set: a new session continues an exported snapshot on
//             `model` (or the model the snapshot message names); version 0
//             picks the newest loaded version whose weights it matches.
//   new       neither: a fresh session of model/version, batch 0 meaning 1.
// `attach` false registers the session detached (ImportState); reattach
// needs a stream, so it is refused then.
//
// Errors (exact codes; messages name the request's fields through
// `field_prefix`, e.g. "open.batch"): InvalidArgument for a malformed
// request (both session_id and snapshot, negative batch, no model, a batch
// that disagrees with the snapshot's), NotFound for an unknown model,
// version or session (or another owner's session), FailedPrecondition for
// a snapshot of other weights or a session attached elsewhere, DataLoss
// for a corrupted snapshot, PermissionDenied for a snapshot whose
// signature does not verify when the server signs (SessionManager's
// signer), ResourceExhausted past --max_batch, --max_sessions or the
// owner's quota, and whatever `may_run` answers. A refused request leaves
// no session behind.
//
// Thread safety: as SessionManager and ModelCatalog: call concurrently.

#ifndef SSM_SERVER_SESSION_OPEN_H_
#define SSM_SERVER_SESSION_OPEN_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "server/limits.h"
#include "server/model_catalog.h"
#include "server/session_manager.h"

namespace ssm::server {

struct OpenSessionRequest {
  absl::string_view model;               // empty: the snapshot's, or any when reattaching
  int64_t version = 0;                   // 0: the newest (that matches the snapshot)
  int batch = 0;                         // 0: 1 for a new session, else the session's own
  absl::string_view session_id;          // reattach
  bool has_snapshot = false;             // resume from `snapshot`
  absl::string_view snapshot;            // Session::ExportState bytes
  absl::string_view snapshot_model;      // the model the snapshot message names
  absl::string_view snapshot_signature;  // its HMAC, when the server signs
  bool attach = true;                    // false: registered detached (ImportState)
  // A new session held detached for a sequence a per-replica table names
  // (sequences.h): registered here and never written to a session store.
  bool sequence = false;
  // The caller (authentication's principal; "" without it): a new session
  // is theirs, and only their own sessions can be reattached.
  absl::string_view owner;
  // Asked with the session's model before anything is created or attached
  // (the caller's run scope); a non-OK answer is returned as is. Empty:
  // every model may run.
  std::function<absl::Status(absl::string_view model)> may_run;
  // How the request's fields are named in messages: "open." for
  // StreamInfer's open, "" for ImportState; `snapshot_field` is the
  // snapshot's own field ("resume_from", "state").
  absl::string_view field_prefix;
  absl::string_view snapshot_field = "resume_from";
};

absl::StatusOr<std::shared_ptr<SessionManager::Entry>> OpenSession(
    const OpenSessionRequest& request, const ModelCatalog& catalog, SessionManager& sessions,
    const RequestLimits& limits);

}  // namespace ssm::server

#endif  // SSM_SERVER_SESSION_OPEN_H_
