#include "server/status.h"

#include <string>

#include "absl/strings/str_cat.h"

namespace ssm::server {

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

grpc::Status ToGrpcStatus(const absl::Status& status) {
  if (status.ok()) return grpc::Status::OK;
  const int code = static_cast<int>(status.code());
  // absl::StatusCode and grpc::StatusCode share the numbering 0..16
  // (OK .. UNAUTHENTICATED); anything else is not a canonical code.
  const grpc::StatusCode grpc_code =
      code >= static_cast<int>(grpc::StatusCode::OK) &&
              code <= static_cast<int>(grpc::StatusCode::UNAUTHENTICATED)
          ? static_cast<grpc::StatusCode>(code)
          : grpc::StatusCode::UNKNOWN;
  return grpc::Status(grpc_code, BoundedMessage(status.message()));
}

}  // namespace ssm::server
