#include "server/snapshot_keys.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/core_names.h>
#include <openssl/params.h>

#include <utility>

#include "absl/algorithm/container.h"
#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"

namespace ssm::server {
namespace {

// Keys sign "ssmserve snapshot v1" followed by the snapshot's bytes, so a
// key shared with something else never yields a valid snapshot signature
// by accident.
constexpr absl::string_view kDomain = "ssmserve snapshot v1\n";

std::string Hmac(absl::string_view key, absl::string_view data) {
  // OpenSSL 3's EVP_MAC interface (the HMAC_CTX one is deprecated).
  EVP_MAC* mac = EVP_MAC_fetch(nullptr, "HMAC", nullptr);
  EVP_MAC_CTX* ctx = EVP_MAC_CTX_new(mac);
  char digest[] = "SHA256";
  const OSSL_PARAM params[] = {OSSL_PARAM_construct_utf8_string("digest", digest, 0),
                               OSSL_PARAM_construct_end()};
  unsigned char out[EVP_MAX_MD_SIZE];
  size_t length = 0;
  const bool ok =
      EVP_MAC_init(ctx, reinterpret_cast<const unsigned char*>(key.data()), key.size(), params) &&
      EVP_MAC_update(ctx, reinterpret_cast<const unsigned char*>(kDomain.data()),
                     kDomain.size()) &&
      EVP_MAC_update(ctx, reinterpret_cast<const unsigned char*>(data.data()), data.size()) &&
      EVP_MAC_final(ctx, out, &length, sizeof(out));
  EVP_MAC_CTX_free(ctx);
  EVP_MAC_free(mac);
  // Only an OpenSSL without HMAC-SHA256 fails here; an empty MAC then
  // verifies nothing.
  return ok ? std::string(reinterpret_cast<const char*>(out), length) : std::string();
}

}  // namespace

absl::StatusOr<std::shared_ptr<const SnapshotKeys>> SnapshotKeys::Parse(absl::string_view text,
                                                                        absl::string_view source) {
  auto keys = std::make_shared<SnapshotKeys>();
  int line_number = 0;
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    ++line_number;
    line = absl::StripAsciiWhitespace(line);
    if (line.empty() || absl::StartsWith(line, "#")) continue;
    if (line.size() < 64 || line.size() % 2 != 0 || !absl::c_all_of(line, absl::ascii_isxdigit)) {
      return absl::InvalidArgumentError(absl::StrCat(
          source, ":", line_number,
          ": a key must be at least 32 bytes written as hex (64 or more hex digits; e.g. "
          "`openssl rand -hex 32`)"));
    }
    keys->keys.push_back(absl::HexStringToBytes(line));
  }
  if (keys->keys.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": no key"));
  }
  return std::shared_ptr<const SnapshotKeys>(std::move(keys));
}

absl::StatusOr<std::unique_ptr<SnapshotSigner>> SnapshotSigner::Create(const std::string& path,
                                                                       absl::Duration refresh) {
  absl::StatusOr<std::unique_ptr<WatchedFile<SnapshotKeys>>> keys =
      WatchedFile<SnapshotKeys>::Create(path, SnapshotKeys::Parse, refresh);
  if (!keys.ok()) {
    return absl::Status(keys.status().code(),
                        absl::StrCat("--snapshot_keys: ", keys.status().message()));
  }
  return std::unique_ptr<SnapshotSigner>(new SnapshotSigner(*std::move(keys)));
}

std::string SnapshotSigner::Sign(absl::string_view data) const {
  return Hmac(keys_->Get()->keys.front(), data);
}

absl::Status SnapshotSigner::Verify(absl::string_view data, absl::string_view signature,
                                    absl::string_view field) const {
  if (signature.empty()) {
    return absl::PermissionDeniedError(absl::StrCat(
        field, " is not set: this server imports only snapshots signed with its keys"));
  }
  bool match = false;
  for (const std::string& key : keys_->Get()->keys) {
    const std::string mac = Hmac(key, data);
    // Every key is tried whatever the outcome, and each comparison takes
    // the same time wherever the bytes differ.
    match |= !mac.empty() && mac.size() == signature.size() &&
             CRYPTO_memcmp(mac.data(), signature.data(), mac.size()) == 0;
  }
  if (match) return absl::OkStatus();
  return absl::PermissionDeniedError(
      absl::StrCat(field,
                   " does not verify: the snapshot was not signed by this service's keys, or was "
                   "changed after"));
}

}  // namespace ssm::server
