#include "server/session_open.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "server/echo.h"
#include "server/snapshot_keys.h"
#include "ssm/session.h"

namespace ssm::server {

namespace {

// A reattach by id of a session this replica does not hold: from the
// store, under a fresh lease (SessionManager::TakeStored), with the same
// checks as a local reattach; the lease is given back on any refusal.
absl::StatusOr<std::shared_ptr<SessionManager::Entry>> AdoptStored(const OpenSessionRequest& r,
                                                                   const ModelCatalog& catalog,
                                                                   SessionManager& sessions,
                                                                   const RequestLimits& limits) {
  absl::StatusOr<SessionManager::Stored> stored = sessions.TakeStored(r.session_id, r.owner);
  if (!stored.ok()) return stored.status();
  const StoredSession& record = stored->record;
  auto adopt = [&]() -> absl::StatusOr<std::shared_ptr<SessionManager::Entry>> {
    if (r.may_run) {
      if (absl::Status s = r.may_run(record.model); !s.ok()) return s;
    }
    if (!r.model.empty() && r.model != record.model) {
      return absl::FailedPreconditionError(absl::StrCat("session ", SessionTag(r.session_id),
                                                        " runs model '", record.model, "', not '",
                                                        Echo(r.model), "'"));
    }
    // The fingerprint picks the version, as for any resumed snapshot.
    absl::StatusOr<ModelCatalog::Resumed> resumed =
        catalog.ResumeSession(record.model, 0, record.snapshot);
    if (!resumed.ok()) return resumed.status();
    const int batch = resumed->session.batch();
    if (r.batch != 0 && r.batch != batch) {
      return absl::InvalidArgumentError(absl::StrCat(r.field_prefix, "batch = ", r.batch,
                                                     " but session ", SessionTag(r.session_id),
                                                     " has batch ", batch));
    }
    if (absl::Status s = CheckBatchLimit(batch, "the stored session's batch", limits); !s.ok()) {
      return s;
    }
    resumed->session.set_output_limit(kMaxWireValue);
    return sessions.Add(resumed->served.name, resumed->served.version, std::move(resumed->session),
                        /*attached=*/true, SessionManager::Origin::kAdopted, record.owner,
                        &stored->adopted);
  };
  absl::StatusOr<std::shared_ptr<SessionManager::Entry>> entry = adopt();
  if (!entry.ok()) sessions.ReleaseAdopted(stored->adopted);
  return entry;
}

}  // namespace

absl::StatusOr<std::shared_ptr<SessionManager::Entry>> OpenSession(const OpenSessionRequest& r,
                                                                   const ModelCatalog& catalog,
                                                                   SessionManager& sessions,
                                                                   const RequestLimits& limits) {
  const absl::string_view p = r.field_prefix;
  const bool reattach = !r.session_id.empty();
  if (reattach && r.has_snapshot) {
    return absl::InvalidArgumentError(
        absl::StrCat("set at most one of ", p, r.snapshot_field, " and ", p, "session_id"));
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
    // A session's model never changes: ask about it, then reattach here;
    // a session this replica does not hold comes from the store, which
    // asks the same question once it has read the record.
    absl::StatusOr<std::shared_ptr<SessionManager::Entry>> found =
        sessions.Peek(r.session_id, r.owner);
    if (!found.ok()) {
      if (found.status().code() == absl::StatusCode::kNotFound &&
          sessions.options().store != nullptr) {
        return AdoptStored(r, catalog, sessions, limits);
      }
      return found.status();
    }
    if (r.may_run) {
      if (absl::Status s = r.may_run((*found)->model_name()); !s.ok()) return s;
    }
    absl::StatusOr<std::shared_ptr<SessionManager::Entry>> local =
        sessions.Reattach(r.session_id, r.model, r.batch, r.owner);
    if (local.ok() || local.status().code() != absl::StatusCode::kNotFound ||
        sessions.options().store == nullptr) {
      return local;
    }
    return AdoptStored(r, catalog, sessions, limits);
  }

  const SessionManager::Origin origin =
      !r.has_snapshot
          ? (r.sequence ? SessionManager::Origin::kSequence : SessionManager::Origin::kNew)
          : (r.attach ? SessionManager::Origin::kResumed : SessionManager::Origin::kImported);
  if (r.has_snapshot) {
    if (r.snapshot.empty()) {
      return absl::InvalidArgumentError(absl::StrCat(p, r.snapshot_field, ".data must be set"));
    }
    const absl::string_view name = r.model.empty() ? r.snapshot_model : r.model;
    if (name.empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat(p, "model must be set (or ", p, r.snapshot_field, ".model)"));
    }
    if (r.may_run) {
      if (absl::Status s = r.may_run(name); !s.ok()) return s;
    }
    // Authenticity before anything is parsed out of the bytes.
    if (const SnapshotSigner* signer = sessions.options().signer) {
      if (absl::Status s = signer->Verify(r.snapshot, r.snapshot_signature,
                                          absl::StrCat(p, r.snapshot_field, ".signature"));
          !s.ok()) {
        return s;
      }
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
    return sessions.Add(resumed->served.name, resumed->served.version, std::move(resumed->session),
                        r.attach, origin, std::string(r.owner));
  }

  if (r.model.empty()) return absl::InvalidArgumentError(absl::StrCat(p, "model must be set"));
  if (r.may_run) {
    if (absl::Status s = r.may_run(r.model); !s.ok()) return s;
  }
  absl::StatusOr<ServedModel> served = catalog.Find(r.model, r.version);
  if (!served.ok()) return served.status();
  const int batch = r.batch == 0 ? 1 : r.batch;
  if (absl::Status s = CheckBatchLimit(batch, absl::StrCat(p, "batch"), limits); !s.ok()) {
    return s;
  }
  absl::StatusOr<ssm::Session> session = ssm::Session::Create(served->model, batch);
  if (!session.ok()) return session.status();
  session->set_output_limit(kMaxWireValue);
  return sessions.Add(served->name, served->version, *std::move(session), r.attach, origin,
                      std::string(r.owner));
}

}  // namespace ssm::server
