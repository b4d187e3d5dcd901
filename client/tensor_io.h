// Sequence tensors and session states in files, for the CLI: CSV and
// NumPy .npy; state files.
//
// CSV: one row per time step, one column per feature, batch 1; values
// separated by commas; blank lines and lines starting with '#' are
// skipped, and a first row that is not numeric is taken as a header.
// Read as [1, L, d]. Written with 9 significant digits (a float32
// round-trips).
//
// .npy (NumPy format 1.0-3.0): float32 or float64, either byte order,
// C order only; shape [L] (read as [1, L, 1]), [L, d] (read as [1, L, d])
// or [B, L, d]. float64 is narrowed to float32, the wire's type. Written as
// little-endian float32 [B, L, d], format 1.0.
#ifndef SSMSERVE_CLIENT_TENSOR_IO_H_
#define SSMSERVE_CLIENT_TENSOR_IO_H_

#include <string>

#include "absl/status/statusor.h"
#include "client/ssm_client.h"
#include "ssm/v1/ssm_service.pb.h"

namespace ssm::client {

// INVALID_ARGUMENT with the line (and column) of the first bad value.
absl::StatusOr<Tensor> ParseCsv(const std::string& text);
// `tensor` [B, L, d]: one row per step; with B > 1, each batch entry is
// preceded by a "# batch <b>" line.
std::string FormatCsv(const Tensor& tensor);

// INVALID_ARGUMENT for a bad header, dtype, order, shape or length.
absl::StatusOr<Tensor> ParseNpy(const std::string& bytes);
std::string FormatNpy(const Tensor& tensor);

// By extension: ".npy" is NumPy, anything else CSV; "-" is stdin/stdout
// (CSV). Errors name the path; reading fails as ReadFileBytes does.
absl::StatusOr<Tensor> ReadSequence(const std::string& path);
absl::Status WriteSequence(const std::string& path, const Tensor& tensor);

// Whole files as bytes ("-": stdin/stdout). Reading is ssm/file_io.h's
// ReadFileToString, pipes and devices included: NOT_FOUND for a missing
// file, PERMISSION_DENIED, FAILED_PRECONDITION for a directory, the path
// and the system's reason in the message.
absl::StatusOr<std::string> ReadFileBytes(const std::string& path);
absl::Status WriteFileBytes(const std::string& path, const std::string& bytes);

// State files (--save_state, --resume_state; the Python package's
// Snapshot.save/load). An unsigned snapshot's file is its `data`, the
// server's portable snapshot bytes (DESIGN.md section 2.14, what
// ssm::Session::Import reads). A signed one (a server with
// --snapshot_keys fills StateSnapshot.signature and imports nothing
// without it) is the whole ssm.v1.StateSnapshot message, protobuf binary,
// so the signature travels with the state.
std::string StateFileBytes(const ssm::v1::StateSnapshot& snapshot);
// Either form. Bytes that are neither are taken as snapshot data as they
// are: the server says what is wrong with them (DATA_LOSS, ...).
ssm::v1::StateSnapshot ParseStateFile(const std::string& bytes);

}  // namespace ssm::client

#endif  // SSMSERVE_CLIENT_TENSOR_IO_H_
