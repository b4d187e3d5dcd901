// Signed session snapshots (--snapshot_keys): every snapshot the server
// hands out carries an HMAC-SHA256 of its bytes, and an import (StreamInfer
// resume_from, ImportState) must carry one that one of the keys verifies.
// A snapshot's CRC only catches accidents; the signature is what stops a
// client from forging a state, a position or another model's session.
//
// The keys file holds one key per line in hex (at least 32 bytes, i.e. 64
// hex digits; blank lines and lines starting with '#' are ignored). The
// first key signs, every key verifies: to rotate across replicas, add the
// new key second everywhere, then move it first everywhere, then drop the
// old one. The file is re-read when it changes (watched_file.h).
//
// Thread safety: every method may be called concurrently.

#ifndef SSM_SERVER_SNAPSHOT_KEYS_H_
#define SSM_SERVER_SNAPSHOT_KEYS_H_

#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "server/watched_file.h"

namespace ssm::server {

struct SnapshotKeys {
  std::vector<std::string> keys;  // raw bytes; the first signs

  // Parses the keys file's text; InvalidArgument naming the line.
  static absl::StatusOr<std::shared_ptr<const SnapshotKeys>> Parse(absl::string_view text,
                                                                   absl::string_view source);
};

class SnapshotSigner {
 public:
  static absl::StatusOr<std::unique_ptr<SnapshotSigner>> Create(const std::string& path,
                                                                absl::Duration refresh);

  // HMAC-SHA256 of `data` with the first key (32 raw bytes).
  std::string Sign(absl::string_view data) const;

  // OK when `signature` is the HMAC of `data` under one of the keys
  // (compared in constant time); PermissionDenied naming `field` otherwise
  // (missing, or not ours).
  absl::Status Verify(absl::string_view data, absl::string_view signature,
                      absl::string_view field) const;

 private:
  explicit SnapshotSigner(std::unique_ptr<WatchedFile<SnapshotKeys>> keys)
      : keys_(std::move(keys)) {}
  std::unique_ptr<WatchedFile<SnapshotKeys>> keys_;
};

}  // namespace ssm::server

#endif  // SSM_SERVER_SNAPSHOT_KEYS_H_
