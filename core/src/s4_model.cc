// The S4 stack: encoder, S4 blocks (SSM, activation, output linear,
// residual, LayerNorm), decoder; weights by the S4 reference's names.

#include <Eigen/Dense>
#include <cmath>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "model_internal.h"
#include "model_weights.h"
#include "parallel.h"
#include "row_linear.h"
#include "ssm/conv_mode.h"
#include "ssm/fft_conv.h"
#include "ssm/kernel.h"
#include "ssm/recurrent.h"
#include "ssm/session.h"

namespace ssm::internal {
namespace {

using Eigen::Map;
using Eigen::VectorXd;
using ConstRows = Map<const RowMatrixXd>;
using Rows = Map<RowMatrixXd>;

struct Linear {
  RowMatrixXd w;   // out x in
  VectorXd b;      // out
  RowLinear rows;  // the same map for the streaming pass (row_linear.h)
  int in() const { return static_cast<int>(w.cols()); }
  int out() const { return static_cast<int>(w.rows()); }
  // y = x w^T + b over rows. For a single row Eigen picks a GEMV, and for
  // the small GEMMs of short chunks its blocking space lives on the stack:
  // no heap allocation on the step path.
  void Apply(const double* x, int rows, double* y) const {
    Rows out(y, rows, this->out());
    out.noalias() = ConstRows(x, rows, in()) * w.transpose();
    out.rowwise() += b.transpose();
  }
};

// The two layouts of a chunk: rows (row r = b * steps + t holds the H
// features of step t of sequence b) and the SSM's (row (b, c) holds channel
// c's `steps` values of sequence b). Rows [begin, end) move as
// per-sequence tiles, channel by channel, so the SSM side is written (or
// read) contiguously.
void RowsToSsm(int64_t begin, int64_t end, int64_t steps, int h, const double* src, double* dst) {
  for (int64_t r0 = begin; r0 < end;) {
    const int64_t b = r0 / steps, t0 = r0 % steps;
    const int64_t n = std::min(end - r0, steps - t0);
    for (int c = 0; c < h; ++c) {
      double* out = dst + (b * h + c) * steps + t0;
      const double* in = src + r0 * h + c;
      for (int64_t i = 0; i < n; ++i) out[i] = in[i * h];
    }
    r0 += n;
  }
}

void SsmToRows(int64_t begin, int64_t end, int64_t steps, int h, const double* src, double* dst) {
  for (int64_t r0 = begin; r0 < end;) {
    const int64_t b = r0 / steps, t0 = r0 % steps;
    const int64_t n = std::min(end - r0, steps - t0);
    for (int c = 0; c < h; ++c) {
      const double* in = src + (b * h + c) * steps + t0;
      double* out = dst + r0 * h + c;
      for (int64_t i = 0; i < n; ++i) out[i * h] = in[i];
    }
    r0 += n;
  }
}

void LayerNorm(const VectorXd& gamma, const VectorXd& beta, double eps, const double* x, int rows,
               double* y) {
  const int h = static_cast<int>(gamma.size());
  for (int r = 0; r < rows; ++r) {
    const double* in = x + static_cast<size_t>(r) * h;
    double* out = y + static_cast<size_t>(r) * h;
    double mean = 0;
    for (int j = 0; j < h; ++j) mean += in[j];
    mean /= h;
    double var = 0;
    for (int j = 0; j < h; ++j) var += (in[j] - mean) * (in[j] - mean);
    var /= h;  // biased, as torch.nn.LayerNorm
    const double inv = 1.0 / std::sqrt(var + eps);
    for (int j = 0; j < h; ++j) out[j] = (in[j] - mean) * inv * gamma(j) + beta(j);
  }
}

inline double Gelu(double x) { return 0.5 * x * (1.0 + std::erf(x * M_SQRT1_2)); }

// torch.nn's Softplus (beta 1): the identity above its threshold of 20.
inline double Softplus(double x) { return x > 20 ? x : std::log1p(std::exp(x)); }

void Activate(ActivationKind kind, double* z, size_t n) {
  switch (kind) {
    case ActivationKind::kGelu:
      for (size_t i = 0; i < n; ++i) z[i] = Gelu(z[i]);
      break;
    case ActivationKind::kIdentity:
      break;
    case ActivationKind::kTanh:
      for (size_t i = 0; i < n; ++i) z[i] = std::tanh(z[i]);
      break;
    case ActivationKind::kRelu:
      for (size_t i = 0; i < n; ++i) z[i] = z[i] > 0 ? z[i] : 0.0;
      break;
    case ActivationKind::kSilu:
      for (size_t i = 0; i < n; ++i) z[i] = z[i] / (1.0 + std::exp(-z[i]));
      break;
    case ActivationKind::kSigmoid:
      for (size_t i = 0; i < n; ++i) z[i] = 1.0 / (1.0 + std::exp(-z[i]));
      break;
    case ActivationKind::kElu:
      for (size_t i = 0; i < n; ++i) z[i] = z[i] > 0 ? z[i] : std::expm1(z[i]);
      break;
    case ActivationKind::kSoftplus:
      for (size_t i = 0; i < n; ++i) z[i] = Softplus(z[i]);
      break;
  }
}

// The S4 reference's param_transform.
double Transform(ParamTransform t, double x) {
  switch (t) {
    case ParamTransform::kNone:
      return x;
    case ParamTransform::kExp:
      return std::exp(x);
    case ParamTransform::kRelu:
      return (x > 0 ? x : 0.0) + 1e-4;
    case ParamTransform::kSigmoid:
      return 1.0 / (1.0 + std::exp(-x));
    case ParamTransform::kSoftplus:
      return Softplus(x);
  }
  return x;
}

const char* TransformName(ParamTransform t) {
  switch (t) {
    case ParamTransform::kNone:
      return "none";
    case ParamTransform::kExp:
      return "exp";
    case ParamTransform::kRelu:
      return "relu";
    case ParamTransform::kSigmoid:
      return "sigmoid";
    case ParamTransform::kSoftplus:
      return "softplus";
  }
  return "?";
}

// LayerNorm over each row's H features, or BatchNorm with its running
// statistics (a fixed affine map per feature). x and y may be the same.
struct Norm {
  NormKind kind = NormKind::kLayer;
  double eps = 1e-5;
  VectorXd w, b;         // weight and bias
  VectorXd mean, scale;  // BatchNorm: running_mean, weight / sqrt(running_var + eps)
  void Apply(const double* x, int rows, double* y) const {
    if (kind == NormKind::kLayer) {
      LayerNorm(w, b, eps, x, rows, y);
      return;
    }
    const int h = static_cast<int>(b.size());
    for (int r = 0; r < rows; ++r) {
      const double* in = x + static_cast<size_t>(r) * h;
      double* out = y + static_cast<size_t>(r) * h;
      for (int j = 0; j < h; ++j) out[j] = (in[j] - mean(j)) * scale(j) + b(j);
    }
  }
};

// The DSS kernel (SSMKernelDiag with disc='dss'), which depends on the
// sequence length T: with a = dt Lambda, for modes with Re Lambda <= 0
//   K[l] = Re sum_n BC (e^a - 1) r e^(a l),  r = 1 / ((e^(a T) - 1) Lambda)
// and for modes with Re Lambda > 0 the same with a -> -a and
// e^(a l) -> e^(-a (T - 1 - l)), so nothing overflows. The reference
// regularizes r as conj(x) / (|x|^2 + 1e-7), x = (e^(a T) - 1) Lambda; so
// do we, to compute what it computes.
struct DssKernel {
  RowMatrixXcd dta;              // H x M: dt Lambda
  RowMatrixXcd lambda;           // H x M
  std::vector<RowMatrixXcd> bc;  // per kernel channel, H x M: B C

  RowMatrixXd Kernel(int channel, int length) const {
    constexpr int kBlock = 64;
    const Eigen::Index h = dta.rows(), m = dta.cols();
    RowMatrixXd k = RowMatrixXd::Zero(h, length);
    std::vector<cdouble> small(kBlock), big(length / kBlock + 1);
    for (Eigen::Index r = 0; r < h; ++r) {
      for (Eigen::Index n = 0; n < m; ++n) {
        const bool growing = lambda(r, n).real() > 0;
        const cdouble a = growing ? -dta(r, n) : dta(r, n);
        const cdouble num = std::exp(a) - 1.0;
        const cdouble x = (std::exp(a * static_cast<double>(length)) - 1.0) * lambda(r, n);
        const cdouble inv = std::conj(x) / (x.real() * x.real() + x.imag() * x.imag() + 1e-7);
        const cdouble coef = bc[channel](r, n) * num * inv;
        // e^(a e) as e^(a kBlock j) (one exponential per block) times
        // e^(a i) (products within a block): ~kBlock roundings at most.
        const cdouble z = std::exp(a);
        small[0] = 1.0;
        for (int i = 1; i < kBlock; ++i) small[i] = small[i - 1] * z;
        for (size_t j = 0; j < big.size(); ++j) {
          big[j] = std::exp(a * static_cast<double>(j * kBlock));
        }
        double* row = k.row(r).data();
        for (int l = 0; l < length; ++l) {
          const int e = growing ? length - 1 - l : l;
          row[l] += (coef * big[e / kBlock] * small[e % kBlock]).real();
        }
      }
    }
    return k;
  }
};

struct Block {
  DplrSystem system;  // C is the true C (channel 0 of a bidirectional kernel)
  VectorXd d;
  std::optional<ConvMode> conv;
  std::optional<ConvMode> backward;  // bidirectional: the anti-causal kernel
  std::optional<SsmStepper> stepper;
  std::optional<DssKernel> dss;  // instead of conv, backward and stepper
  Linear out;                    // empty when OutputLinearKind::kNone
  Norm norm;
};

class S4Model final : public Model {
 public:
  S4Model(ModelSpec spec, uint64_t fingerprint, S4StackSpec s4)
      : Model(std::move(spec), fingerprint), s4_(std::move(s4)) {}

  static constexpr size_t kPooledBuffers = 2;
  mutable std::mutex pool_mu_;
  mutable std::vector<std::vector<double>> pool_;  // GUARDED_BY(pool_mu_)

  S4StackSpec s4_;
  std::optional<Linear> encoder_, decoder_;
  std::optional<Norm> final_norm_;
  std::vector<Block> blocks_;
  size_t bytes_ = 0;

  bool streamable() const override { return !s4_.bidirectional && !s4_.dss; }
  std::string not_streamable_reason() const override {
    if (s4_.bidirectional) return "it is bidirectional: its outputs depend on future inputs";
    if (s4_.dss) {
      return "its DSS kernel depends on the length of the whole sequence, which a stream "
             "does not know";
    }
    return "";
  }
  size_t memory_bytes() const override { return bytes_; }
  ConvMode::CacheStats kernel_cache_stats() const override {
    ConvMode::CacheStats total;
    for (const Block& b : blocks_) {
      for (const std::optional<ConvMode>* c : {&b.conv, &b.backward}) {
        if (!c->has_value()) continue;
        const ConvMode::CacheStats s = (*c)->cache_stats();
        total.hits += s.hits;
        total.misses += s.misses;
        total.spectra_bytes += s.spectra_bytes;
      }
    }
    return total;
  }

  size_t state_size() const override {
    size_t n = 0;
    for (const Block& b : blocks_)
      if (b.stepper) n += b.stepper->state_size();
    return n;
  }

  absl::Status Forward(absl::Span<const double> x, int batch, int length,
                       absl::Span<double> y) const override {
    if (auto st = CheckForwardArgs(*this, x, batch, length, y); !st.ok()) return st;
    // Scratch is large (7 doubles per feature and step) and touching fresh
    // pages costs more than the math: keep a few buffers between calls.
    std::vector<double> scratch;
    {
      std::lock_guard<std::mutex> lock(pool_mu_);
      if (!pool_.empty()) {
        scratch = std::move(pool_.back());
        pool_.pop_back();
      }
    }
    const absl::Status st = Run(x, batch, length, /*state=*/{}, y, scratch);
    std::lock_guard<std::mutex> lock(pool_mu_);
    if (pool_.size() < kPooledBuffers) pool_.push_back(std::move(scratch));
    return st;
  }

  absl::Status Advance(absl::Span<const double> x, int batch, int steps, int64_t /*position*/,
                       absl::Span<double> state, absl::Span<double> y,
                       std::vector<double>& scratch) const override {
    return Run(x, batch, steps, state, y, scratch);
  }

  // Short chunks of one session or of many (Session::Run, RunBatch): one
  // pass over every session's rows, as Run does, except that
  //   - each session's state stays in its own buffers (read from
  //     state_in, written to state_out: SsmStepper::RunBlocks);
  //   - the linears are RowLinear's, whose rows do not depend on one
  //     another, and every other stage works row by row or, for the SSM,
  //     session by session, so a session's bits are the same whatever
  //     else is in the pass;
  //   - a non-finite value reaching an SSM fails only its session (the
  //     stepper's check, per session, with its message); the pass goes on
  //     for the others.
  void AdvanceShort(absl::Span<ShortChunk> chunks, int batch, int steps,
                    std::vector<double>& scratch) const override {
    const int h = s4_.d_model, d_in = spec().d_input, d_out = spec().d_output;
    const int64_t n = static_cast<int64_t>(chunks.size());
    const int64_t per = static_cast<int64_t>(batch) * steps;  // one session's rows
    const int64_t rows = n * per;
    const size_t width = static_cast<size_t>(rows) * h;
    // Run's scratch, then the gathered inputs and outputs.
    const size_t need = 7 * width + static_cast<size_t>(rows) * (d_in + d_out);
    if (scratch.size() < need) scratch.resize(need);
    double* stream = scratch.data();
    double* ssm_in = stream + width;
    double* ssm_out = ssm_in + width;
    double* z_all = ssm_out + 2 * width;
    double* wide_all = z_all + width;  // 2 width
    double* xs = wide_all + 2 * width;
    double* ys = xs + static_cast<size_t>(rows) * d_in;
    for (int64_t i = 0; i < n; ++i) {
      std::copy(chunks[i].x.begin(), chunks[i].x.end(), xs + i * per * d_in);
    }
    const int64_t min_rows = std::max<int64_t>(1, 16384 / (h * 4));
    // The rows are as Run's (RowsToSsm), b counting every session's streams.

    if (encoder_) {
      ParallelFor(rows, min_rows, [&](int64_t begin, int64_t end) {
        encoder_->rows.Apply(xs + begin * d_in, end - begin, stream + begin * h);
      });
    } else {
      std::copy(xs, xs + width, stream);
    }
    // Per layer, each session's state block (its state is [layer][batch][H][2M]).
    thread_local std::vector<const double*> state_in;
    thread_local std::vector<double*> state_out;
    state_in.resize(n);
    state_out.resize(n);
    size_t state_off = 0;
    const size_t session_io = static_cast<size_t>(per) * h;  // one session's SSM values
    for (const Block& blk : blocks_) {
      ParallelFor(rows, min_rows, [&](int64_t begin, int64_t end) {
        const double* in = stream;
        if (s4_.norm == NormPlacement::kPre) {
          blk.norm.Apply(stream + begin * h, static_cast<int>(end - begin), z_all + begin * h);
          in = z_all;
        }
        RowsToSsm(begin, end, steps, h, in, ssm_in);
      });
      for (int64_t i = 0; i < n; ++i) {
        ShortChunk& c = chunks[i];
        if (c.status.ok()) {
          const double* u = ssm_in + i * session_io;
          for (size_t j = 0; j < session_io; ++j) {
            if (!std::isfinite(u[j])) {
              c.status =
                  absl::InvalidArgumentError(absl::StrCat("u has a non-finite value at index ", j));
              break;
            }
          }
        }
        state_in[i] = c.state_in + state_off;
        state_out[i] = c.state_out + state_off;
      }
      blk.stepper->RunBlocks(ssm_in, batch, static_cast<int>(n), steps, state_in.data(),
                             state_out.data(), ssm_out);
      state_off += static_cast<size_t>(batch) * blk.stepper->state_size();
      ParallelFor(rows, min_rows, [&](int64_t begin, int64_t end) {
        const int m = static_cast<int>(end - begin);
        double* z = z_all + begin * h;
        double* wide = wide_all + begin * 2 * h;
        SsmToRows(begin, end, steps, h, ssm_out, z_all);
        Activate(s4_.activation, z, static_cast<size_t>(m) * h);
        switch (s4_.output_linear) {
          case OutputLinearKind::kGlu:
            blk.out.rows.Apply(z, m, wide);
            for (int r = 0; r < m; ++r) {
              const double* a = wide + static_cast<size_t>(r) * 2 * h;
              for (int j = 0; j < h; ++j) z[r * h + j] = a[j] / (1.0 + std::exp(-a[h + j]));
            }
            break;
          case OutputLinearKind::kLinear:
            blk.out.rows.Apply(z, m, wide);
            std::copy(wide, wide + static_cast<size_t>(m) * h, z);
            Activate(s4_.output_activation, z, static_cast<size_t>(m) * h);
            break;
          case OutputLinearKind::kNone:
            break;
        }
        double* out = stream + begin * h;
        if (s4_.residual) {
          for (size_t i = 0; i < static_cast<size_t>(m) * h; ++i) out[i] += z[i];
        } else {
          std::copy(z, z + static_cast<size_t>(m) * h, out);
        }
        if (s4_.norm == NormPlacement::kPost) blk.norm.Apply(out, m, out);
      });
    }
    if (final_norm_) {
      ParallelFor(rows, min_rows, [&](int64_t begin, int64_t end) {
        final_norm_->Apply(stream + begin * h, static_cast<int>(end - begin), stream + begin * h);
      });
    }
    if (decoder_) {
      ParallelFor(rows, min_rows, [&](int64_t begin, int64_t end) {
        decoder_->rows.Apply(stream + begin * h, end - begin, ys + begin * d_out);
      });
    } else {
      std::copy(stream, stream + width, ys);
    }
    for (int64_t i = 0; i < n; ++i) {
      const double* from = ys + i * per * d_out;
      std::copy(from, from + per * d_out, chunks[i].y.begin());
    }
  }

 private:
  // One pass of the stack over `steps` steps. With a state (sessions), each
  // SSM continues from and updates its slice of it; without (Forward), the
  // SSMs start from zero.
  //
  // Everything but the SSM works row by row (one row = one time step of one
  // sequence), so those parts run on blocks of rows in parallel, each block
  // through all its pointwise steps while it is in cache; the SSM works
  // channel by channel on the transposed (batch x H x steps) layout.
  absl::Status Run(absl::Span<const double> x, int batch, int steps, absl::Span<double> state,
                   absl::Span<double> y, std::vector<double>& scratch) const {
    const int h = s4_.d_model;
    const int64_t rows = static_cast<int64_t>(batch) * steps;
    const size_t width = static_cast<size_t>(rows) * h;
    // Scratch: residual stream, SSM input and output (features first), the
    // backward kernel's output, and per row the block's input and the output
    // linear's result (2H wide).
    const size_t need = 7 * width;
    if (scratch.size() < need) scratch.resize(need);
    double* stream = scratch.data();
    double* ssm_in = stream + width;
    double* ssm_out = ssm_in + width;
    double* back = ssm_out + width;
    double* z_all = back + width;
    double* wide_all = z_all + width;  // 2 width
    // Rows per parallel block: enough work to be worth a hand-off.
    const int64_t min_rows = std::max<int64_t>(1, 16384 / (h * 4));

    if (encoder_) {
      ParallelFor(rows, min_rows, [&](int64_t begin, int64_t end) {
        encoder_->Apply(x.data() + begin * spec().d_input, static_cast<int>(end - begin),
                        stream + begin * h);
      });
    } else {
      std::copy(x.begin(), x.end(), stream);
    }
    size_t state_off = 0;
    for (const Block& blk : blocks_) {
      ParallelFor(rows, min_rows, [&](int64_t begin, int64_t end) {
        const double* in = stream;
        if (s4_.norm == NormPlacement::kPre) {
          blk.norm.Apply(stream + begin * h, static_cast<int>(end - begin), z_all + begin * h);
          in = z_all;
        }
        RowsToSsm(begin, end, steps, h, in, ssm_in);
      });
      if (auto st = RunSsm(blk, ssm_in, batch, steps, state, state_off, ssm_out, back); !st.ok()) {
        return st;
      }
      ParallelFor(rows, min_rows, [&](int64_t begin, int64_t end) {
        const int n = static_cast<int>(end - begin);
        double* z = z_all + begin * h;
        double* wide = wide_all + begin * 2 * h;
        SsmToRows(begin, end, steps, h, ssm_out, z_all);
        Activate(s4_.activation, z, static_cast<size_t>(n) * h);
        switch (s4_.output_linear) {
          case OutputLinearKind::kGlu:
            blk.out.Apply(z, n, wide);
            for (int r = 0; r < n; ++r) {
              const double* a = wide + static_cast<size_t>(r) * 2 * h;
              for (int j = 0; j < h; ++j) z[r * h + j] = a[j] / (1.0 + std::exp(-a[h + j]));
            }
            break;
          case OutputLinearKind::kLinear:
            blk.out.Apply(z, n, wide);
            std::copy(wide, wide + static_cast<size_t>(n) * h, z);
            Activate(s4_.output_activation, z, static_cast<size_t>(n) * h);
            break;
          case OutputLinearKind::kNone:
            break;
        }
        double* out = stream + begin * h;
        if (s4_.residual) {
          for (size_t i = 0; i < static_cast<size_t>(n) * h; ++i) out[i] += z[i];
        } else {
          std::copy(z, z + static_cast<size_t>(n) * h, out);
        }
        if (s4_.norm == NormPlacement::kPost) blk.norm.Apply(out, n, out);
      });
    }
    if (final_norm_) {
      ParallelFor(rows, min_rows, [&](int64_t begin, int64_t end) {
        final_norm_->Apply(stream + begin * h, static_cast<int>(end - begin), stream + begin * h);
      });
    }
    if (decoder_) {
      ParallelFor(rows, min_rows, [&](int64_t begin, int64_t end) {
        decoder_->Apply(stream + begin * h, static_cast<int>(end - begin),
                        y.data() + begin * spec().d_output);
      });
    } else {
      std::copy(stream, stream + width, y.begin());
    }
    return absl::OkStatus();
  }

  absl::Status RunSsm(const Block& blk, const double* u, int batch, int steps,
                      absl::Span<double> state, size_t& state_off, double* y, double* back) const {
    const size_t io = static_cast<size_t>(batch) * s4_.d_model * steps;
    absl::Span<const double> in(u, io);
    absl::Span<double> out(y, io);
    if (blk.dss) {  // Forward only (not streamable): kernels for this length
      const RowMatrixXd k = blk.dss->Kernel(0, steps);
      if (auto st = CausalConv(k, blk.d, in, batch, steps, out); !st.ok()) return st;
      if (s4_.bidirectional) {
        const RowMatrixXd k1 = blk.dss->Kernel(1, steps);
        const VectorXd no_d = VectorXd::Zero(s4_.d_model);
        AddAntiCausal(u, batch, steps, y, back,
                      [&](absl::Span<const double> rev, absl::Span<double> w) {
                        return CausalConv(k1, no_d, rev, batch, steps, w);
                      });
      }
      return absl::OkStatus();
    }
    if (state.empty()) {  // Forward: from zero, both directions
      if (auto st = blk.conv->Forward(in, batch, steps, {}, out, {}); !st.ok()) return st;
      if (blk.backward) {
        AddAntiCausal(u, batch, steps, y, back,
                      [&](absl::Span<const double> rev, absl::Span<double> w) {
                        return blk.backward->Forward(rev, batch, steps, {}, w, {});
                      });
      }
      return absl::OkStatus();
    }
    const size_t n = static_cast<size_t>(batch) * blk.stepper->state_size();
    absl::Span<double> s = state.subspan(state_off, n);
    state_off += n;
    if (steps < Session::kConvChunkThreshold) return blk.stepper->Run(in, batch, steps, s, out);
    // Long chunks: the convolutional mode from the carried state, in pieces
    // of at most max_length.
    const int max_len = blk.conv->max_length();
    for (int t0 = 0; t0 < steps; t0 += max_len) {
      const int len = std::min(max_len, steps - t0);
      std::vector<double> piece_in(static_cast<size_t>(batch) * s4_.d_model * len);
      std::vector<double> piece_out(piece_in.size());
      for (size_t r = 0; r < static_cast<size_t>(batch) * s4_.d_model; ++r) {
        std::copy(u + r * steps + t0, u + r * steps + t0 + len, &piece_in[r * len]);
      }
      if (auto st = blk.conv->Forward(piece_in, batch, len, s, absl::MakeSpan(piece_out), s);
          !st.ok()) {
        return st;
      }
      for (size_t r = 0; r < static_cast<size_t>(batch) * s4_.d_model; ++r) {
        std::copy(&piece_out[r * len], &piece_out[r * len] + len, y + r * steps + t0);
      }
    }
    return absl::OkStatus();
  }

  // The second kernel k1 looks ahead: y[t] += sum_s k1[s] u[t + 1 + s].
  // With v = u reversed in time, that is the causal convolution w = k1 * v
  // (by `conv`, without D) read backwards and shifted by one:
  // y[t] += w[L - 2 - t].
  template <typename Conv>
  void AddAntiCausal(const double* u, int batch, int steps, double* y, double* back,
                     Conv conv) const {
    const size_t rows = static_cast<size_t>(batch) * s4_.d_model;
    std::vector<double> rev(rows * steps);
    for (size_t r = 0; r < rows; ++r)
      for (int t = 0; t < steps; ++t) rev[r * steps + t] = u[r * steps + steps - 1 - t];
    absl::Span<double> w(back, rows * steps);
    // Zero state, zero D, finite input: cannot fail once the forward kernel
    // has run on the same input.
    (void)conv(rev, w);
    for (size_t r = 0; r < rows; ++r)
      for (int t = 0; t + 1 < steps; ++t) y[r * steps + t] += back[r * steps + steps - 2 - t];
  }
};

// ---- Loading the S4 reference's tensors ----

absl::StatusOr<Linear> ReadLinear(WeightReader& w, const std::string& prefix, int out, int in,
                                  bool conv1d = false) {
  absl::StatusOr<std::vector<double>> weight =
      conv1d ? w.Take(prefix + ".weight", {{out, in, 1}, {out, in}})
             : w.Take(prefix + ".weight", {{out, in}});
  if (!weight.ok()) return weight.status();
  absl::StatusOr<std::vector<double>> bias = w.Take(prefix + ".bias", {{out}});
  if (!bias.ok()) return bias.status();
  Linear l;
  l.w = Map<const RowMatrixXd>(weight->data(), out, in);
  l.b = Map<const VectorXd>(bias->data(), out);
  l.rows = RowLinear(l.w, l.b);
  return l;
}

// Complex (rows x m x 2) values -> rows x m, row r of the result taking
// source row r % rows_src (the reference shares A, B, P across channel
// groups: channel h uses SSM h mod n_ssm).
RowMatrixXcd Complex(const std::vector<double>& v, int rows_src, int m, int rows,
                     size_t offset = 0) {
  RowMatrixXcd out(rows, m);
  for (int r = 0; r < rows; ++r)
    for (int j = 0; j < m; ++j) {
      const size_t i = offset + (static_cast<size_t>(r % rows_src) * m + j) * 2;
      out(r, j) = cdouble(v[i], v[i + 1]);
    }
  return out;
}

// `prefix`.{weight,bias} (LayerNorm) or also .{running_mean,running_var}
// (BatchNorm, folded into a scale per feature).
absl::StatusOr<Norm> ReadNorm(WeightReader& w, const S4StackSpec& s4, const std::string& prefix) {
  const int h = s4.d_model;
  Norm norm;
  norm.kind = s4.norm_kind;
  norm.eps = s4.layer_norm_eps;
  auto nw = w.Take(prefix + ".weight", {{h}});
  if (!nw.ok()) return nw.status();
  auto nb = w.Take(prefix + ".bias", {{h}});
  if (!nb.ok()) return nb.status();
  norm.w = Map<const VectorXd>(nw->data(), h);
  norm.b = Map<const VectorXd>(nb->data(), h);
  if (norm.kind == NormKind::kBatch) {
    auto mean = w.Take(prefix + ".running_mean", {{h}});
    if (!mean.ok()) return mean.status();
    auto var = w.Take(prefix + ".running_var", {{h}});
    if (!var.ok()) return var.status();
    norm.mean = Map<const VectorXd>(mean->data(), h);
    norm.scale.resize(h);
    for (int j = 0; j < h; ++j) {
      if (!((*var)[j] + norm.eps > 0)) {
        return absl::InvalidArgumentError(absl::StrCat(w.source(), ": '", prefix, ".running_var'[",
                                                       j, "] = ", (*var)[j],
                                                       ": the variance plus eps must be positive"));
      }
      norm.scale(j) = norm.w(j) / std::sqrt((*var)[j] + norm.eps);
    }
  }
  return norm;
}

absl::Status LoadBlock(WeightReader& w, const S4StackSpec& s4, int max_length, int i, Block& blk) {
  const std::string pre = absl::StrCat("s4_layers.", i, ".");
  const int h = s4.d_model, m = s4.d_state / 2;
  const bool minimal = w.Has(pre + "kernel.log_dt");
  const std::string k = minimal ? pre + "kernel." : pre + "layer.kernel.";
  DplrSystem& sys = blk.system;
  int c_channels = 1;
  std::vector<double> c_values;
  if (minimal) {
    if (s4.kernel != KernelKind::kDiagonal || s4.bidirectional) {
      return absl::InvalidArgumentError(
          absl::StrCat(w.source(), ": '", k, "log_dt' is a minimal S4D block, but the config says ",
                       s4.kernel == KernelKind::kDplr ? "DPLR" : "bidirectional"));
    }
    const S4StackSpec defaults;
    if (s4.dss || s4.dt_transform != defaults.dt_transform ||
        s4.real_transform != defaults.real_transform ||
        s4.imag_transform != defaults.imag_transform || s4.dt_fast) {
      return absl::InvalidArgumentError(absl::StrCat(
          w.source(), ": '", k,
          "log_dt' is a minimal S4D block, whose parameterization is "
          "fixed (dt = exp(log_dt), Lambda = -exp(log_A_real) + i A_imag, ZOH), but the config "
          "sets DSS, dt_transform, real_transform, imag_transform or dt_fast"));
    }
    auto log_dt = w.Take(k + "log_dt", {{h}});
    auto log_a_real = w.Take(k + "log_A_real", {{h, m}});
    auto a_imag = w.Take(k + "A_imag", {{h, m}});
    auto c = w.Take(k + "C", {{h, m, 2}});
    for (const auto* t : {&log_dt, &log_a_real, &a_imag, &c})
      if (!t->ok()) return t->status();
    sys.dt = Map<const VectorXd>(log_dt->data(), h).array().exp();
    sys.lambda.resize(h, m);
    for (int r = 0; r < h; ++r)
      for (int j = 0; j < m; ++j) {
        const size_t idx = static_cast<size_t>(r) * m + j;
        // The minimal S4D keeps +i A_imag (the full kernel uses -i).
        sys.lambda(r, j) = cdouble(-std::exp((*log_a_real)[idx]), (*a_imag)[idx]);
      }
    sys.B = RowMatrixXcd::Ones(h, m);
    c_values = *std::move(c);
  } else {
    const std::vector<int64_t> a_shape = w.Shape(k + "A_real");
    const int n_ssm = a_shape.size() == 2 ? static_cast<int>(a_shape[0]) : 0;
    if (n_ssm < 1 || h % n_ssm != 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          w.source(), ": '", k, "A_real' must be n_ssm x N/2 with n_ssm dividing H = ", h));
    }
    const bool dplr = w.Has(k + "P");
    if (dplr != (s4.kernel == KernelKind::kDplr)) {
      return absl::InvalidArgumentError(absl::StrCat(
          w.source(), ": layer ", i, (dplr ? " has" : " lacks"), " '", k,
          "P', but the config's kernel is ", s4.kernel == KernelKind::kDplr ? "DPLR" : "diagonal"));
    }
    c_channels = s4.bidirectional ? 2 : 1;
    auto inv_dt = w.Take(k + "inv_dt", {{h, 1}, {h}});
    auto a_real = w.Take(k + "A_real", {{n_ssm, m}});
    auto a_imag = w.Take(k + "A_imag", {{n_ssm, m}});
    auto b = w.Take(k + "B", {{1, n_ssm, m, 2}, {n_ssm, m, 2}});
    auto c = w.Take(k + "C", {{c_channels, h, m, 2}});
    for (const auto* t : {&inv_dt, &a_real, &a_imag, &b, &c})
      if (!t->ok()) return t->status();
    // The reference's _get_params: dt = T_dt(inv_dt) (under sinh first if
    // dt_fast), Lambda = -T_re(A_real) - i T_im(A_imag); once, at load.
    sys.dt.resize(h);
    for (int r = 0; r < h; ++r) {
      const double stored = (*inv_dt)[r];
      const double dt = Transform(s4.dt_transform, s4.dt_fast ? std::sinh(stored) : stored);
      if (!(dt > 0) || !std::isfinite(dt)) {
        return absl::InvalidArgumentError(
            absl::StrCat(w.source(), ": layer ", i, ": '", k, "inv_dt'[", r, "] = ", stored,
                         " gives dt = ", dt, " under dt_transform ", TransformName(s4.dt_transform),
                         s4.dt_fast ? " (after sinh, dt_fast)" : "", "; a step must be positive"));
      }
      sys.dt(r) = dt;
    }
    sys.lambda.resize(h, m);
    for (int r = 0; r < h; ++r)
      for (int j = 0; j < m; ++j) {
        const size_t idx = static_cast<size_t>(r % n_ssm) * m + j;
        sys.lambda(r, j) = cdouble(-Transform(s4.real_transform, (*a_real)[idx]),
                                   -Transform(s4.imag_transform, (*a_imag)[idx]));
      }
    sys.B = Complex(*b, n_ssm, m, h);
    c_values = *std::move(c);
    if (dplr) {
      auto p = w.Take(k + "P", {{s4.rank, n_ssm, m, 2}});
      if (!p.ok()) return p.status();
      for (int a = 0; a < s4.rank; ++a) {
        sys.P.push_back(Complex(*p, n_ssm, m, h, static_cast<size_t>(a) * n_ssm * m * 2));
      }
    }
  }
  auto d = minimal ? w.Take(pre + "D", {{h}}) : w.Take(pre + "layer.D", {{1, h}, {h}});
  if (!d.ok()) return d.status();
  blk.d = Map<const VectorXd>(d->data(), h);

  // C per kernel channel; C~ (l_kernel > 0) maps back to C exactly.
  int64_t l_kernel = 0;
  if (!minimal && w.Has(k + "l_kernel")) {
    auto l = w.Take(k + "l_kernel", {{}, {1}});
    if (!l.ok()) return l.status();
    if ((*l)[0] < 0 || (*l)[0] > kMaxFftConvLength || (*l)[0] != std::floor((*l)[0])) {
      return absl::InvalidArgumentError(
          absl::StrCat(w.source(), ": '", k, "l_kernel' must be a length, got ", (*l)[0]));
    }
    l_kernel = static_cast<int64_t>((*l)[0]);
  }
  std::vector<RowMatrixXcd> cs;
  for (int ch = 0; ch < c_channels; ++ch) {
    DplrSystem with_c = sys;
    with_c.C = Complex(c_values, h, m, h, static_cast<size_t>(ch) * h * m * 2);
    if (l_kernel > 0) {
      if (auto st = ValidateDplr(with_c); !st.ok()) {
        return absl::InvalidArgumentError(
            absl::StrCat(w.source(), ": layer ", i, ": ", st.message()));
      }
      absl::StatusOr<RowMatrixXcd> c = CFromCTilde(with_c, static_cast<int>(l_kernel));
      if (!c.ok()) {
        return absl::InvalidArgumentError(absl::StrCat(
            w.source(), ": layer ", i, ": C~ cannot be inverted: ", c.status().message()));
      }
      with_c.C = *std::move(c);
    }
    cs.push_back(std::move(with_c.C));
  }
  sys.C = cs[0];
  auto wrap = [&](const absl::Status& st) {
    return absl::InvalidArgumentError(absl::StrCat(w.source(), ": layer ", i, ": ", st.message()));
  };
  if (s4.dss) {
    if (auto st = ValidateDplr(sys); !st.ok()) return wrap(st);
    DssKernel dss;
    dss.lambda = sys.lambda;
    dss.dta = sys.lambda;
    for (int r = 0; r < h; ++r) dss.dta.row(r) *= sys.dt(r);
    for (const RowMatrixXcd& c : cs) dss.bc.push_back(sys.B.cwiseProduct(c));
    blk.dss.emplace(std::move(dss));
  } else {
    absl::StatusOr<ConvMode> conv = ConvMode::Create(sys, blk.d, s4.discretization, max_length);
    if (!conv.ok()) return wrap(conv.status());
    blk.conv.emplace(*std::move(conv));
    absl::StatusOr<SsmStepper> stepper = SsmStepper::Create(sys, blk.d, s4.discretization);
    if (!stepper.ok()) return wrap(stepper.status());
    blk.stepper.emplace(*std::move(stepper));
  }
  if (c_channels == 2 && !s4.dss) {
    DplrSystem back = sys;
    back.C = cs[1];
    absl::StatusOr<ConvMode> bconv =
        ConvMode::Create(back, VectorXd::Zero(h), s4.discretization, max_length);
    if (!bconv.ok()) return wrap(bconv.status());
    blk.backward.emplace(*std::move(bconv));
  }

  const std::string ol = pre + "output_linear.0";
  if (s4.output_linear != OutputLinearKind::kNone) {
    const int out = s4.output_linear == OutputLinearKind::kGlu ? 2 * h : h;
    absl::StatusOr<Linear> lin = ReadLinear(w, ol, out, h, /*conv1d=*/minimal);
    if (!lin.ok()) return lin.status();
    blk.out = *std::move(lin);
  }
  if (s4.norm != NormPlacement::kNone) {
    absl::StatusOr<Norm> norm = ReadNorm(w, s4, absl::StrCat("norms.", i));
    if (!norm.ok()) return norm.status();
    blk.norm = *std::move(norm);
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::shared_ptr<const Model>> LoadS4Stack(const ModelSpec& spec,
                                                         const S4StackSpec& s4,
                                                         const SafeTensors& file) {
  WeightReader w(file);
  const int h = s4.d_model;
  auto model = std::make_shared<S4Model>(spec, FingerprintOf(spec, &file), s4);
  if (s4.encoder) {
    absl::StatusOr<Linear> enc = ReadLinear(w, "encoder", h, spec.d_input);
    if (!enc.ok()) return enc.status();
    model->encoder_ = *std::move(enc);
  }
  if (s4.decoder) {
    absl::StatusOr<Linear> dec = ReadLinear(w, "decoder", spec.d_output, h);
    if (!dec.ok()) return dec.status();
    model->decoder_ = *std::move(dec);
  }
  model->blocks_.resize(s4.n_layers);
  for (int i = 0; i < s4.n_layers; ++i) {
    if (auto st = LoadBlock(w, s4, spec.max_length, i, model->blocks_[i]); !st.ok()) return st;
  }
  if (s4.final_norm) {
    absl::StatusOr<Norm> norm = ReadNorm(w, s4, "final_norm");
    if (!norm.ok()) return norm.status();
    model->final_norm_ = *std::move(norm);
  }
  if (auto st = w.CheckAllUsed(); !st.ok()) return st;
  size_t bytes = 0;
  for (const Block& b : model->blocks_) {
    const size_t kernels = b.backward ? 2 : 1;
    // Kernel, its spectra on the ladder of FFT sizes (about 3x one 2L
    // transform), the linear layer.
    bytes += kernels * static_cast<size_t>(h) * spec.max_length * sizeof(double) * 4 +
             b.out.w.size() * sizeof(double);
  }
  model->bytes_ = bytes;
  return std::shared_ptr<const Model>(std::move(model));
}

}  // namespace ssm::internal
