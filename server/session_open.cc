#include "server/session_open.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "ssm/session.h"

namespace ssm::server {

absl::StatusOr<std::shared_ptr<SessionManager::Entry>> OpenSession(
    const OpenSessionRequest& r, const ModelCatalog& catalog, SessionManager& sessions,
    const RequestLimits& limits) {
  const absl::string_view p = r.field_prefix;
  const bool reattach = !r.session_id.empty();
  if (reattach && r.has_snapshot) {
    return absl::InvalidArgumentError(absl::StrCat(
        "set at most one of ", p, r.snapshot_field, " and ", p, "session_id"));
  }
  if (r.batch < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(p, "batch must be >= 1 (0 means 1), got ", r.batch));
  }
  if (reattach) {
    if (!r.attach) {
      return absl::InvalidArgumentError(
          absl::StrCat(p, "session_id: only a stream can reattach a session"));
    }
    return sessions.Reattach(r.session_id, r.model, r.batch);
  }

  const SessionManager::Origin origin =
      !r.has_snapshot ? SessionManager::Origin::kNew
                      : (r.attach ? SessionManager::Origin::kResumed
                                  : SessionManager::Origin::kImported);
  if (r.has_snapshot) {
    if (r.snapshot.empty()) {
      return absl::InvalidArgumentError(absl::StrCat(p, r.snapshot_field, ".data must be set"));
    }
    const absl::string_view name = r.model.empty() ? r.snapshot_model : r.model;
    if (name.empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat(p, "model must be set (or ", p, r.snapshot_field, ".model)"));
    }
    absl::StatusOr<ModelCatalog::Resumed> resumed =
        catalog.ResumeSession(name, r.version, r.snapshot);
    if (!resumed.ok()) return resumed.status();
    const int batch = resumed->session.batch();
    if (absl::Status s =
            CheckBatchLimit(batch, absl::StrCat(p, r.snapshot_field, "'s batch"), limits);
        !s.ok()) {
      return s;
    }
    if (r.batch != 0 && r.batch != batch) {
      return absl::InvalidArgumentError(
          absl::StrCat(p, "batch = ", r.batch, " but the snapshot has batch ", batch));
    }
    resumed->session.set_output_limit(kMaxWireValue);
    return sessions.Add(resumed->served.name, resumed->served.version,
                        std::move(resumed->session), r.attach, origin);
  }

  if (r.model.empty()) return absl::InvalidArgumentError(absl::StrCat(p, "model must be set"));
  absl::StatusOr<ServedModel> served = catalog.Find(r.model, r.version);
  if (!served.ok()) return served.status();
  const int batch = r.batch == 0 ? 1 : r.batch;
  if (absl::Status s = CheckBatchLimit(batch, absl::StrCat(p, "batch"), limits); !s.ok()) {
    return s;
  }
  absl::StatusOr<ssm::Session> session = ssm::Session::Create(served->model, batch);
  if (!session.ok()) return session.status();
  session->set_output_limit(kMaxWireValue);
  return sessions.Add(served->name, served->version, *std::move(session), r.attach, origin);
}

}  // namespace ssm::server
