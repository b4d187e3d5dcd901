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

std::string BoundedMessage(absl::string_view message, size_t max) {
  if (message.size() <= max) return std::string(message);
  // Room for the note, whose length depends on the count it states; the
  // count's digits are bounded by the message's size.
  const size_t note_room = sizeof(" ... [ more bytes]") + 20;
  size_t keep = max > note_room ? max - note_room : 0;
  // Back up to the start of a UTF-8 character (continuation bytes are
  // 10xxxxxx): a cut character would make the message invalid UTF-8.
  while (keep > 0 && (static_cast<unsigned char>(message[keep]) & 0xC0) == 0x80) --keep;
  return absl::StrCat(message.substr(0, keep), " ... [", message.size() - keep, " more bytes]");
}

}  // namespace ssm::server
