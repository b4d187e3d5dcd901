// config.pbtxt <-> ssm::ModelSpec: the one place that knows both the
// repository's schema (proto/ssm/v1/model_config.proto) and the core's plain
// structs, so the core never sees protobuf.
//
// Reading applies the schema's documented defaults for UNSPECIFIED enums
// (DPLR: bilinear, diagonal: ZOH; GELU; GLU; POST norm; S4_REFERENCE names)
// and layer_norm_eps 0 -> 1e-5; the kernel kind, the HiPPO measure and the
// HiPPO output have no default and must be set. Every spec that comes back
// has passed ssm::ValidateModelSpec.
//
// Errors: InvalidArgument whose message names the field (the schema's path,
// e.g. "s4.kernel", or ValidateModelSpec's); text-format problems read
// "<source>:<line>:<col>: <message>" (1-based), and unknown fields are
// errors. Thread safety: every function is pure (the file read aside) and
// may run concurrently.

#ifndef SSM_SERVER_MODEL_CONFIG_H_
#define SSM_SERVER_MODEL_CONFIG_H_

#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "ssm/model_spec.h"
#include "ssm/v1/model_config.pb.h"

namespace ssm::server {

// InvalidArgument for no architecture, an UNSPECIFIED enum without a
// default, an enum number the schema does not define, or whatever
// ValidateModelSpec refuses.
absl::StatusOr<ssm::ModelSpec> ModelSpecFromConfig(const ssm::v1::ModelConfig& config);

// `text` is one ModelConfig in protobuf text format; `source` (usually the
// file's path) prefixes every error message.
absl::StatusOr<ssm::ModelSpec> ParseModelConfigText(absl::string_view text,
                                                    absl::string_view source);

// Reads and parses the file at `path`. NotFound naming the path if it does
// not exist; PermissionDenied and the like for other read failures;
// InvalidArgument as ParseModelConfigText (prefixed with the path), or for a
// file too large to be a config.
absl::StatusOr<ssm::ModelSpec> ReadModelConfig(const std::string& path);

// The config that reads back as `spec`, with every enum and
// layer_norm_eps written out explicitly. Meant for specs that pass
// ValidateModelSpec: values the schema cannot express (a GBT step other
// than bilinear) come out as DISCRETIZATION_KIND_UNSPECIFIED.
ssm::v1::ModelConfig ModelConfigFromSpec(const ssm::ModelSpec& spec);

// Protobuf text format, one field per line, as config.pbtxt files are
// written.
std::string ModelConfigToText(const ssm::v1::ModelConfig& config);

}  // namespace ssm::server

#endif  // SSM_SERVER_MODEL_CONFIG_H_
