#include "server/echo.h"

#include <openssl/sha.h>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"

namespace ssm::server {

std::string Echo(absl::string_view text, size_t max_bytes) {
  const absl::string_view kept = text.substr(0, max_bytes);
  std::string out = absl::CHexEscape(kept);
  if (kept.size() < text.size())
    absl::StrAppend(&out, "...(+", text.size() - kept.size(), " bytes)");
  return out;
}

std::string SessionTag(absl::string_view session_id) {
  unsigned char digest[SHA256_DIGEST_LENGTH];
  SHA256(reinterpret_cast<const unsigned char*>(session_id.data()), session_id.size(), digest);
  return absl::StrCat(
      "s-", absl::BytesToHexString(absl::string_view(reinterpret_cast<const char*>(digest), 6)));
}

}  // namespace ssm::server
