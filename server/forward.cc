#include "server/forward.h"

#include <algorithm>
#include <cstddef>
#include <cstdint>

#include "ssm/session.h"

namespace ssm::server {

absl::Status ForwardInPieces(const ssm::Model& model, absl::Span<const double> x, int batch,
                             int steps, absl::Span<double> y,
                             absl::FunctionRef<absl::Status(int done)> stop) {
  const int d_in = model.d_input(), d_out = model.d_output();
  // Sequences are independent: pieces of whole sequences. 8 x 4096 is one
  // piece.
  const int rows = static_cast<int>(
      std::max<int64_t>(1, ssm::Session::kMaxRowsPerPass / std::max(steps, 1)));
  for (int b0 = 0; b0 < batch; b0 += rows) {
    if (absl::Status s = stop(b0); !s.ok()) return s;
    const int n = std::min(rows, batch - b0);
    const size_t in_at = static_cast<size_t>(b0) * steps * d_in;
    const size_t out_at = static_cast<size_t>(b0) * steps * d_out;
    if (absl::Status s =
            model.Forward(x.subspan(in_at, static_cast<size_t>(n) * steps * d_in), n, steps,
                          y.subspan(out_at, static_cast<size_t>(n) * steps * d_out));
        !s.ok()) {
      return s;
    }
  }
  return absl::OkStatus();
}

}  // namespace ssm::server
