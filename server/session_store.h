// Where sessions outlive a replica: a store shared by every replica
// (--session_store=redis://...), so a client that knows only its session id
// can continue on any of them. gRPC-free; the session layer
// (session_manager.h) is its only user, so reactors never know where a
// session lives.
//
// A record is a session's portable snapshot (session.h) with the facts the
// registry keeps beside it (owner, model, version), stored under the
// session's id with an expiry (the session TTL: a session nobody continues
// goes away by itself). One writer per session across replicas: a lease
// (set-if-absent with an expiry, renewed while attached); writes and
// deletes are fenced by the lease, so a replica that lost its lease (a long
// pause) can never overwrite the new holder's state.
//
// Errors: Unavailable when the store cannot be reached or answers an
// error (the caller retries or reports), DataLoss for a record that does
// not decode (corrupted or not ours), FailedPrecondition when a fenced
// write or delete finds the lease held by someone else.
//
// Thread safety: implementations are safe to call from any thread.

#ifndef SSM_SERVER_SESSION_STORE_H_
#define SSM_SERVER_SESSION_STORE_H_

#include <cstdint>
#include <memory>
#include <optional>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"

namespace ssm::server {

struct StoredSession {
  std::string owner;  // the principal ("" without authentication)
  std::string model;
  int64_t version = 0;
  int64_t position = 0;  // a copy of the snapshot's, for logs and metrics
  std::string snapshot;  // Session::ExportState bytes (CRC-checked on import)
};

// The record's bytes: "SSMREC1\0", u32 owner length, owner, u32 model
// length, model, i64 version, i64 position, u64 snapshot length, snapshot.
std::string EncodeStoredSession(const StoredSession& session);
absl::StatusOr<StoredSession> DecodeStoredSession(absl::string_view bytes);

class SessionStore {
 public:
  virtual ~SessionStore() = default;

  // Takes the lease on `id` for `holder` unless someone else holds it.
  // True when taken (or already ours: then renewed), false when held.
  virtual absl::StatusOr<bool> AcquireLease(absl::string_view id, absl::string_view holder,
                                            absl::Duration ttl) = 0;
  // Extends the lease if `holder` still holds it, and the record's expiry
  // to `record_ttl` from now (a held session's record never expires, even
  // when nothing new can be written); false when it does not hold it.
  virtual absl::StatusOr<bool> RenewLease(absl::string_view id, absl::string_view holder,
                                          absl::Duration ttl, absl::Duration record_ttl) = 0;
  // Drops the lease if `holder` holds it.
  virtual absl::Status ReleaseLease(absl::string_view id, absl::string_view holder) = 0;

  // Writes the record of `id`, expiring after `ttl`, if `holder` holds the
  // lease (FailedPrecondition otherwise).
  virtual absl::Status Put(absl::string_view id, absl::string_view holder,
                           const StoredSession& session, absl::Duration ttl) = 0;
  // The record of `id`; nullopt when there is none (never was, expired).
  virtual absl::StatusOr<std::optional<StoredSession>> Get(absl::string_view id) = 0;
  // Deletes the record and the lease of `id` if `holder` holds the lease.
  virtual absl::Status Delete(absl::string_view id, absl::string_view holder) = 0;

  // A short description for logs ("redis://127.0.0.1:6379/0").
  virtual std::string Describe() const = 0;
};

// A store on Redis (hiredis): "redis://[user:password@]host:port[/db]".
// Commands time out after `timeout`; a broken connection is re-opened on
// the next command. InvalidArgument for a malformed URL; Unavailable when
// the first connection fails.
absl::StatusOr<std::unique_ptr<SessionStore>> OpenRedisStore(absl::string_view url,
                                                             absl::Duration timeout);

}  // namespace ssm::server

#endif  // SSM_SERVER_SESSION_STORE_H_
