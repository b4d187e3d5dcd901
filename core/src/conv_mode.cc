#include "ssm/conv_mode.h"

#include <cmath>
#include <map>
#include <mutex>
#include <vector>

#include <Eigen/Dense>

#include "absl/strings/str_cat.h"
#include "check.h"
#include "parallel.h"
#include "ssm/fft_conv.h"
#include "ssm/kernel.h"

namespace ssm {

struct ConvMode::Rep {
  Rep(const DplrSystem& s, const Eigen::VectorXd& dd, Discretization m, int max_len,
      SsmStepper st)
      : system(s), d(dd), method(m), max_length(max_len), stepper(std::move(st)) {}

  DplrSystem system;
  Eigen::VectorXd d;
  Discretization method;
  int max_length = 0;
  RowMatrixXd kernel;
  SsmStepper stepper;
  DiagonalSystem diag;  // rank 0: discretized Ab, Bb (H x M)

  // Convolvers built on first use for a ladder of lengths (2^k and 3 2^(k-1),
  // capped at max_length): a chunk runs on the smallest rung that holds it,
  // so a short chunk does not pay for a max_length transform, at most 1.5x
  // more than its own size, and the cache holds at most 2 log2(max_length)
  // spectra, about 3x the largest one's memory, whatever lengths callers
  // send.
  mutable std::mutex mu;
  mutable std::map<int, std::shared_ptr<const FftConvolver<double>>> convolvers;
  mutable int64_t hits = 0, misses = 0, spectra_bytes = 0;  // guarded by mu

  int Rung(int steps) const {
    int64_t p = 1;
    while (p < steps) p *= 2;
    const int64_t three_halves = p / 4 * 3;  // 3 2^(k-2) for p = 2^k
    const int64_t rung = (p >= 4 && three_halves >= steps) ? three_halves : p;
    return static_cast<int>(std::min<int64_t>(rung, max_length));
  }

  absl::StatusOr<std::shared_ptr<const FftConvolver<double>>> Convolver(int steps) const {
    const int rung = Rung(steps);
    std::lock_guard<std::mutex> lock(mu);
    auto it = convolvers.find(rung);
    if (it != convolvers.end()) {
      ++hits;
      return it->second;
    }
    ++misses;
    absl::StatusOr<FftConvolver<double>> c = FftConvolver<double>::Create(
        kernel, d, rung);
    if (!c.ok()) return c.status();
    auto shared = std::make_shared<const FftConvolver<double>>(*std::move(c));
    convolvers.emplace(rung, shared);
    spectra_bytes += static_cast<int64_t>(kernel.rows()) * (shared->fft_size() / 2 + 1) *
                     static_cast<int64_t>(sizeof(cdouble));
    return shared;
  }

  // y[b,h,l] += 2 Re sum_m C_m z_m^(l+1) x0[b,h,m], one GEMM per channel.
  void AddFreeResponseDiag(absl::Span<const double> x0, int batch, int steps,
                           absl::Span<double> y) const {
    const int h_count = system.channels(), m = system.modes();
    internal::ParallelFor(h_count, 1, [&](int64_t begin, int64_t end) {
      RowMatrixXd f(steps, 2 * m), x(2 * m, batch), out(steps, batch);
      for (int64_t h = begin; h < end; ++h) {
        for (int j = 0; j < m; ++j) {
          const cdouble z = diag.A(h, j);
          cdouble p = system.C(h, j) * z;
          for (int l = 0; l < steps; ++l, p *= z) {
            f(l, j) = 2 * p.real();
            f(l, m + j) = -2 * p.imag();
          }
        }
        for (int b = 0; b < batch; ++b) {
          const double* s = &x0[(static_cast<size_t>(b) * h_count + h) * 2 * m];
          for (int j = 0; j < 2 * m; ++j) x(j, b) = s[j];
        }
        out.noalias() = f * x;
        for (int b = 0; b < batch; ++b) {
          double* row = &y[(static_cast<size_t>(b) * h_count + h) * steps];
          for (int l = 0; l < steps; ++l) row[l] += out(l, b);
        }
      }
    });
  }

  // x_T = z^T x0 + sum_l z^(T-1-l) Bb u_l, one GEMM per channel.
  void FinalStateDiag(absl::Span<const double> u, absl::Span<const double> x0,
                      int batch, int steps, std::vector<double>& out_state) const {
    const int h_count = system.channels(), m = system.modes();
    internal::ParallelFor(h_count, 1, [&](int64_t begin, int64_t end) {
      RowMatrixXd g(2 * m, steps), uu(steps, batch), out(2 * m, batch);
      for (int64_t h = begin; h < end; ++h) {
        std::vector<cdouble> zt(m);
        for (int j = 0; j < m; ++j) {
          const cdouble z = diag.A(h, j);
          cdouble p = diag.B(h, j), zp = 1.0;
          for (int l = steps - 1; l >= 0; --l, p *= z, zp *= z) {
            g(j, l) = p.real();
            g(m + j, l) = p.imag();
          }
          zt[j] = zp;
        }
        for (int b = 0; b < batch; ++b)
          for (int l = 0; l < steps; ++l)
            uu(l, b) = u[(static_cast<size_t>(b) * h_count + h) * steps + l];
        out.noalias() = g * uu;
        for (int b = 0; b < batch; ++b) {
          const size_t off = (static_cast<size_t>(b) * h_count + h) * 2 * m;
          for (int j = 0; j < m; ++j) {
            cdouble x = cdouble(out(j, b), out(m + j, b));
            if (!x0.empty()) x += zt[j] * cdouble(x0[off + j], x0[off + m + j]);
            out_state[off + j] = x.real();
            out_state[off + m + j] = x.imag();
          }
        }
      }
    });
  }
};

ConvMode::ConvMode(std::unique_ptr<Rep> rep) : rep_(std::move(rep)) {}
ConvMode::ConvMode(ConvMode&&) noexcept = default;
ConvMode& ConvMode::operator=(ConvMode&&) noexcept = default;
ConvMode::~ConvMode() = default;

int ConvMode::channels() const { return rep_->system.channels(); }
int ConvMode::max_length() const { return rep_->max_length; }
int ConvMode::state_size() const { return rep_->stepper.state_size(); }
const RowMatrixXd& ConvMode::kernel() const { return rep_->kernel; }

ConvMode::CacheStats ConvMode::cache_stats() const {
  std::lock_guard<std::mutex> lock(rep_->mu);
  return {rep_->hits, rep_->misses, rep_->spectra_bytes};
}

absl::StatusOr<ConvMode> ConvMode::Create(const DplrSystem& system,
                                          const Eigen::VectorXd& d,
                                          Discretization method, int max_length) {
  if (max_length < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("max_length must be >= 1, got ", max_length));
  }
  absl::StatusOr<SsmStepper> stepper = SsmStepper::Create(system, d, method);
  if (!stepper.ok()) return stepper.status();
  auto rep = std::make_unique<Rep>(system, d, method, max_length, *std::move(stepper));
  if (system.rank() == 0) {
    absl::StatusOr<RowMatrixXd> k = DiagonalKernel(system, max_length, method);
    if (!k.ok()) return k.status();
    rep->kernel = *std::move(k);
    absl::StatusOr<DiagonalSystem> diag = DiscretizeDiagonal(
        {Eigen::MatrixXcd(system.lambda), Eigen::MatrixXcd(system.B)}, system.dt, method);
    if (!diag.ok()) return diag.status();
    rep->diag = *std::move(diag);
  } else {
    DplrSystem with_ct = system;
    absl::StatusOr<RowMatrixXcd> ct = CTilde(system, max_length);
    if (!ct.ok()) return ct.status();
    with_ct.C = *std::move(ct);
    absl::StatusOr<RowMatrixXd> k = DplrKernel(with_ct, max_length);
    if (!k.ok()) return k.status();
    rep->kernel = *std::move(k);
  }
  return ConvMode(std::move(rep));
}

absl::Status ConvMode::Forward(absl::Span<const double> u, int batch, int steps,
                               absl::Span<const double> state_in, absl::Span<double> y,
                               absl::Span<double> state_out) const {
  const Rep& r = *rep_;
  if (batch < 1) {
    return absl::InvalidArgumentError(absl::StrCat("batch must be >= 1, got ", batch));
  }
  if (steps < 1 || steps > r.max_length) {
    return absl::InvalidArgumentError(absl::StrCat(
        "steps must be in [1, ", r.max_length, "], got ", steps));
  }
  const size_t io = static_cast<size_t>(batch) * channels() * steps;
  if (u.size() != io || y.size() != io) {
    return absl::InvalidArgumentError(absl::StrCat(
        "u and y must have batch x H x steps = ", io, " values, got ", u.size(),
        " and ", y.size()));
  }
  const size_t states = static_cast<size_t>(batch) * state_size();
  if (!state_in.empty() && state_in.size() != states) {
    return absl::InvalidArgumentError(absl::StrCat(
        "state_in must be empty or have batch x H x 2M = ", states, " values, got ",
        state_in.size()));
  }
  if (!state_out.empty() && state_out.size() != states) {
    return absl::InvalidArgumentError(absl::StrCat(
        "state_out must be empty or have batch x H x 2M = ", states,
        " values, got ", state_out.size()));
  }
  for (size_t i = 0; i < u.size(); ++i) {
    if (!std::isfinite(u[i])) {
      return absl::InvalidArgumentError(absl::StrCat("u has a non-finite value at index ", i));
    }
  }
  for (size_t i = 0; i < state_in.size(); ++i) {
    if (!std::isfinite(state_in[i])) {
      return absl::InvalidArgumentError(
          absl::StrCat("state_in has a non-finite value at index ", i));
    }
  }

  absl::StatusOr<std::shared_ptr<const FftConvolver<double>>> conv = r.Convolver(steps);
  if (!conv.ok()) return conv.status();
  // Everything goes to scratch first so an error leaves y untouched.
  std::vector<double> out(io);
  if (auto st = (*conv)->Apply(u, batch, steps, absl::MakeSpan(out)); !st.ok()) return st;

  std::vector<double> final_state;
  if (!state_out.empty()) final_state.resize(states);
  if (r.system.rank() == 0) {
    if (!state_in.empty()) r.AddFreeResponseDiag(state_in, batch, steps, absl::MakeSpan(out));
    if (!state_out.empty()) r.FinalStateDiag(u, state_in, batch, steps, final_state);
  } else {
    if (!state_in.empty()) {
      // Zero-input response from x0: the outputs are exactly the free part.
      std::vector<double> x(state_in.begin(), state_in.end()), zeros(io, 0.0), free(io);
      if (auto st = r.stepper.Run(zeros, batch, steps, absl::MakeSpan(x), absl::MakeSpan(free));
          !st.ok()) {
        return st;
      }
      for (size_t i = 0; i < io; ++i) out[i] += free[i];
    }
    if (!state_out.empty()) {
      if (state_in.empty()) std::fill(final_state.begin(), final_state.end(), 0.0);
      else final_state.assign(state_in.begin(), state_in.end());
      std::vector<double> discard(io);
      if (auto st = r.stepper.Run(u, batch, steps, absl::MakeSpan(final_state),
                                  absl::MakeSpan(discard));
          !st.ok()) {
        return st;
      }
    }
  }
  std::copy(out.begin(), out.end(), y.begin());
  if (!state_out.empty()) std::copy(final_state.begin(), final_state.end(), state_out.begin());
  return absl::OkStatus();
}

}  // namespace ssm
