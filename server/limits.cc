#include "server/limits.h"

#include "absl/strings/str_cat.h"

namespace ssm::server {

absl::Status CheckBatchLimit(int64_t batch, absl::string_view field, const RequestLimits& limits) {
  if (batch > limits.max_batch) {
    return absl::ResourceExhaustedError(
        absl::StrCat(field, " = ", batch, " exceeds --max_batch=", limits.max_batch));
  }
  return absl::OkStatus();
}

absl::Status CheckResponseBytes(int64_t bytes, absl::string_view what,
                                const RequestLimits& limits) {
  if (bytes > limits.max_message_bytes) {
    return absl::ResourceExhaustedError(absl::StrCat(what, " would take ", bytes,
                                                     " bytes, more than --max_message_bytes=",
                                                     limits.max_message_bytes));
  }
  return absl::OkStatus();
}

}  // namespace ssm::server
