#include "ssm/recurrent.h"

#include <cmath>

#include <Eigen/Dense>

#include "absl/strings/str_cat.h"
#include "check.h"
#include "kernel_internal.h"
#include "parallel.h"
#include "ssm/kernel.h"

namespace ssm {
namespace {

// Writes complex values as M reals then M imaginaries at `out`.
template <typename Row>
void PutSoA(const Row& row, double* out) {
  const Eigen::Index m = row.size();
  for (Eigen::Index j = 0; j < m; ++j) {
    out[j] = row(j).real();
    out[m + j] = row(j).imag();
  }
}

// The diagonal step over T inputs. Partial sums in kLanes independent
// accumulators let the compiler vectorize the output reduction without
// reassociating floating-point sums.
constexpr int kLanes = 8;

void DiagonalSteps(int m, const double* __restrict a, const double* __restrict b,
                   const double* __restrict c, double d, const double* __restrict u,
                   int steps, double* __restrict x, double* __restrict y) {
  const double *ar = a, *ai = a + m, *br = b, *bi = b + m, *cr = c, *ci = c + m;
  double *__restrict xr = x, *__restrict xi = x + m;
  for (int t = 0; t < steps; ++t) {
    const double in = u[t];
    for (int j = 0; j < m; ++j) {
      const double nr = ar[j] * xr[j] - ai[j] * xi[j] + br[j] * in;
      const double ni = ar[j] * xi[j] + ai[j] * xr[j] + bi[j] * in;
      xr[j] = nr;
      xi[j] = ni;
    }
    double acc[kLanes] = {};
    int j = 0;
    for (; j + kLanes <= m; j += kLanes) {
      for (int l = 0; l < kLanes; ++l) acc[l] += cr[j + l] * xr[j + l] - ci[j + l] * xi[j + l];
    }
    double sum = 0;
    for (; j < m; ++j) sum += cr[j] * xr[j] - ci[j] * xi[j];
    for (int l = 0; l < kLanes; ++l) sum += acc[l];
    y[t] = 2 * sum + d * in;
  }
}

// One step of every channel of one session: the streaming hot path. One
// call walks the H x 2M parameter and state arrays front to back, which keeps
// the hardware prefetcher busy. The loop is written with explicit 4-wide
// vectors: GCC's auto-vectorizer left the fused update-and-reduce scalar.
typedef double V4 __attribute__((vector_size(32)));

inline V4 Load4(const double* p) {
  V4 v;
  __builtin_memcpy(&v, p, sizeof(v));
  return v;
}
inline void Store4(double* p, V4 v) { __builtin_memcpy(p, &v, sizeof(v)); }

void DiagonalStepAllChannels(int h_count, int m, const double* __restrict a,
                             const double* __restrict b, const double* __restrict c,
                             const double* __restrict d, const double* __restrict u,
                             double* __restrict x, double* __restrict y) {
  for (int h = 0; h < h_count; ++h) {
    const size_t off = static_cast<size_t>(h) * 2 * m;
    const double *ar = a + off, *ai = ar + m, *br = b + off, *bi = br + m;
    const double *cr = c + off, *ci = cr + m;
    double *xr = x + off, *xi = xr + m;
    const double in = u[h];
    const V4 vin = {in, in, in, in};
    V4 acc = {0, 0, 0, 0};
    int j = 0;
    for (; j + 4 <= m; j += 4) {
      const V4 rr = Load4(ar + j), ri = Load4(ai + j), pr = Load4(xr + j), pi = Load4(xi + j);
      const V4 nr = rr * pr - ri * pi + Load4(br + j) * vin;
      const V4 ni = rr * pi + ri * pr + Load4(bi + j) * vin;
      Store4(xr + j, nr);
      Store4(xi + j, ni);
      acc += Load4(cr + j) * nr - Load4(ci + j) * ni;
    }
    double sum = (acc[0] + acc[1]) + (acc[2] + acc[3]);
    for (; j < m; ++j) {
      const double nr = ar[j] * xr[j] - ai[j] * xi[j] + br[j] * in;
      const double ni = ar[j] * xi[j] + ai[j] * xr[j] + bi[j] * in;
      xr[j] = nr;
      xi[j] = ni;
      sum += cr[j] * nr - ci[j] * ni;
    }
    y[h] = 2 * sum + d[h] * in;
  }
}

// The diagonal-plus-rank-R step (see SsmStepper::Create) over T inputs, two
// passes per step, 4 modes per vector, with vector accumulators for the
// reductions (a scalar running sum would serialize every step on the
// adder's latency):
//   pass 1: k_a = Rdot(g_a, x), o = Rdot(om, x);  y = o + delta u
//   pass 2: x = Lb x + sum_a U_a k_a + Bt u.
// Each step's reductions read its own x (nothing is carried from one step's
// pass to the next), so how a stream is cut into calls cannot change a
// single bit of the outputs.
template <int R>
void LowRankSteps(int m, const double* __restrict lb, const double* __restrict bt,
                  const double* __restrict om, const double* const* ua,
                  const double* const* ga, double delta, const double* __restrict u,
                  int steps, double* __restrict x, double* __restrict y) {
  double *xr = x, *xi = x + m;
  const int mv = m - m % 4;  // modes handled 4 at a time
  for (int t = 0; t < steps; ++t) {
    const double in = u[t];
    V4 kacc[R];
    for (int a = 0; a < R; ++a) kacc[a] = V4{0, 0, 0, 0};
    V4 oacc = {0, 0, 0, 0};
    int j = 0;
    for (; j < mv; j += 4) {
      const V4 x_r = Load4(xr + j), x_i = Load4(xi + j);
      for (int a = 0; a < R; ++a) kacc[a] += Load4(ga[a] + j) * x_r - Load4(ga[a] + m + j) * x_i;
      oacc += Load4(om + j) * x_r - Load4(om + m + j) * x_i;
    }
    double k[R];
    for (int a = 0; a < R; ++a) k[a] = (kacc[a][0] + kacc[a][1]) + (kacc[a][2] + kacc[a][3]);
    double o = (oacc[0] + oacc[1]) + (oacc[2] + oacc[3]);
    for (; j < m; ++j) {
      for (int a = 0; a < R; ++a) k[a] += ga[a][j] * xr[j] - ga[a][m + j] * xi[j];
      o += om[j] * xr[j] - om[m + j] * xi[j];
    }
    y[t] = o + delta * in;
    const V4 vin = {in, in, in, in};
    V4 vk[R];
    for (int a = 0; a < R; ++a) vk[a] = V4{k[a], k[a], k[a], k[a]};
    for (j = 0; j < mv; j += 4) {
      const V4 x_r = Load4(xr + j), x_i = Load4(xi + j), lr = Load4(lb + j), li = Load4(lb + m + j);
      V4 nr = lr * x_r - li * x_i + Load4(bt + j) * vin;
      V4 ni = lr * x_i + li * x_r + Load4(bt + m + j) * vin;
      for (int a = 0; a < R; ++a) {
        nr += Load4(ua[a] + j) * vk[a];
        ni += Load4(ua[a] + m + j) * vk[a];
      }
      Store4(xr + j, nr);
      Store4(xi + j, ni);
    }
    for (; j < m; ++j) {
      double nr = lb[j] * xr[j] - lb[m + j] * xi[j] + bt[j] * in;
      double ni = lb[j] * xi[j] + lb[m + j] * xr[j] + bt[m + j] * in;
      for (int a = 0; a < R; ++a) {
        nr += ua[a][j] * k[a];
        ni += ua[a][m + j] * k[a];
      }
      xr[j] = nr;
      xi[j] = ni;
    }
  }
}

// The argument checks Run shares between precisions: on failure nothing has
// been written.
template <typename T>
absl::Status CheckRunArgs(absl::Span<const T> u, int batch, int steps, size_t channels,
                          size_t state_size, size_t state_len, size_t y_len) {
  if (batch < 1 || steps < 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "batch and steps must be >= 1, got ", batch, " and ", steps));
  }
  const size_t io = static_cast<size_t>(batch) * channels * steps;
  if (u.size() != io) {
    return absl::InvalidArgumentError(absl::StrCat(
        "u must have batch x H x steps = ", io, " values, got ", u.size()));
  }
  if (y_len != io) {
    return absl::InvalidArgumentError(absl::StrCat(
        "y must have batch x H x steps = ", io, " values, got ", y_len));
  }
  const size_t states = static_cast<size_t>(batch) * state_size;
  if (state_len != states) {
    return absl::InvalidArgumentError(absl::StrCat(
        "state must have batch x H x 2M = ", states, " values, got ", state_len));
  }
  for (size_t i = 0; i < u.size(); ++i) {
    if (!std::isfinite(u[i])) {
      return absl::InvalidArgumentError(absl::StrCat(
          "u has a non-finite value at index ", i));
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<SsmStepper> SsmStepper::Create(const DplrSystem& s,
                                              const Eigen::VectorXd& d,
                                              Discretization method, Kind kind) {
  if (auto st = ValidateDplr(s); !st.ok()) return st;
  if (d.size() != s.channels()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "D must have H = ", s.channels(), " entries, got ", d.size()));
  }
  if (auto st = internal::CheckAllFinite(d, "D"); !st.ok()) return st;
  if (method.kind == Discretization::Kind::kGbt &&
      !(method.alpha >= 0 && method.alpha <= 1)) {
    return absl::InvalidArgumentError(
        absl::StrCat("alpha must be in [0, 1], got ", method.alpha));
  }
  const bool bilinear = method.kind == Discretization::Kind::kGbt && method.alpha == 0.5;
  if (kind == Kind::kFast && s.rank() > 0 && !bilinear) {
    return absl::InvalidArgumentError(
        "discretization: the low-rank (DPLR) step supports bilinear only");
  }
  SsmStepper st;
  st.kind_ = kind;
  st.channels_ = s.channels();
  st.modes_ = s.modes();
  st.rank_ = s.rank();
  st.d_ = d;
  const int h_count = s.channels(), m = s.modes(), r = s.rank();

  if (r > kMaxRank) {
    return absl::InvalidArgumentError(
        absl::StrCat("rank must be <= ", kMaxRank, ", got ", r));
  }
  if (kind == Kind::kDense) {
    for (int h = 0; h < h_count; ++h) {
      const internal::FullState f = internal::MakeFullState(s, h);
      internal::DiscreteFull df = internal::DiscretizeFull(f, s.dt(h), method);
      st.dense_a_.push_back(std::move(df.A));
      st.dense_b_.push_back(std::move(df.B));
      st.dense_c_.push_back(f.C);
    }
    return st;
  }

  if (r == 0) {
    absl::StatusOr<DiagonalSystem> disc = DiscretizeDiagonal(
        {Eigen::MatrixXcd(s.lambda), Eigen::MatrixXcd(s.B)}, s.dt, method);
    if (!disc.ok()) return disc.status();
    st.a_.resize(h_count * 2 * m);
    st.b_.resize(h_count * 2 * m);
    st.c_.resize(h_count * 2 * m);
    for (int h = 0; h < h_count; ++h) {
      PutSoA(disc->A.row(h), &st.a_[h * 2 * m]);
      PutSoA(disc->B.row(h), &st.b_[h * 2 * m]);
      PutSoA(s.C.row(h), &st.c_[h * 2 * m]);
    }
    return st;
  }

  // The bilinear step x' = (I - dt/2 A)^-1 ((I + dt/2 A) x + dt B u) with
  // A = Lambda - P P^* (on the full, conjugate-symmetric state) is, by
  // Woodbury's identity on I - dt/2 A = D^-1 + dt/2 P P^*, D = (1 - dt/2
  // Lambda)^-1, a diagonal map plus r real rank-one terms:
  //   x' = Lb x + sum_a U_a k_a(x) + Bt u,   y = o(x) + delta u,
  // where Lb = D (1 + dt/2 Lambda), U_a = -dt/2 D P_a, and k_a, o are real
  // linear functionals Re sum_j (g_j x_j) of the half-stored state. Written
  // out (Rdot(q, x) = Re sum q_j x_j, G_ba = 2 Rdot(conj(P_b) D, P_a),
  // S = (I + dt/2 G)^-1):
  //   s_a  = Rdot(2 conj(P_a), x)                       (the P^* x term)
  //   t_b  = Rdot(2 conj(P_b) D (1 + dt/2 Lambda), x) - dt/2 sum_a G_ba s_a
  //          + 2 Rdot(conj(P_b) D, dt B) u              (P^* D w)
  //   k_a  = s_a + sum_b S_ab t_b
  // All coefficients are folded here, in double, so a step costs one
  // reduction pass and one update pass over the modes.
  using Row = Eigen::RowVectorXcd;
  auto rdot = [](const Row& q, const Row& x) { return q.cwiseProduct(x).sum().real(); };
  st.lb_.resize(h_count * 2 * m);
  st.bt_.resize(h_count * 2 * m);
  st.om_.resize(h_count * 2 * m);
  st.u_.resize(h_count * r * 2 * m);
  st.g_.resize(h_count * r * 2 * m);
  st.dy_.resize(h_count);
  for (int h = 0; h < h_count; ++h) {
    const double dt = s.dt(h);
    const Row lam = s.lambda.row(h);
    const Row dinv = (Row::Ones(m) - (dt / 2) * lam).cwiseInverse();
    if (auto chk = internal::CheckAllFinite(dinv, "1/(1 - dt/2 Lambda)"); !chk.ok()) {
      return absl::InvalidArgumentError(absl::StrCat("channel ", h, ": ", chk.message()));
    }
    const Row e = Row::Ones(m) + (dt / 2) * lam;
    const Row lb = dinv.cwiseProduct(e);
    const Row dtb = dt * s.B.row(h);
    std::vector<Row> p(r), qd(r), u(r), phi(r);
    Eigen::MatrixXd g(r, r);
    for (int a = 0; a < r; ++a) {
      p[a] = s.P[a].row(h);
      qd[a] = p[a].conjugate().cwiseProduct(dinv);
      u[a] = (-dt / 2) * dinv.cwiseProduct(p[a]);
      phi[a] = 2 * p[a].conjugate();
    }
    for (int b = 0; b < r; ++b) {
      for (int a = 0; a < r; ++a) g(b, a) = 2 * rdot(qd[b], p[a]);
    }
    const Eigen::FullPivLU<Eigen::MatrixXd> lu(Eigen::MatrixXd::Identity(r, r) + (dt / 2) * g);
    if (!lu.isInvertible()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "channel ", h, ": the low-rank step's r x r system is singular"));
    }
    const Eigen::MatrixXd sinv = lu.inverse();
    std::vector<Row> psi(r);
    Eigen::VectorXd tb(r);  // t_b's coefficient of u
    for (int b = 0; b < r; ++b) {
      psi[b] = 2 * qd[b].cwiseProduct(e);
      for (int a = 0; a < r; ++a) psi[b] -= (dt / 2) * g(b, a) * phi[a];
      tb(b) = 2 * rdot(qd[b], dtb);
    }
    Row bt = dinv.cwiseProduct(dtb);
    const Row c = s.C.row(h);
    Row om = 2 * c.cwiseProduct(lb);
    for (int a = 0; a < r; ++a) {
      Row gamma = phi[a];
      double eta = 0;
      for (int b = 0; b < r; ++b) {
        gamma += sinv(a, b) * psi[b];
        eta += sinv(a, b) * tb(b);
      }
      bt += eta * u[a];
      om += 2 * rdot(c, u[a]) * gamma;
      PutSoA(u[a], &st.u_[(h * r + a) * 2 * m]);
      PutSoA(gamma, &st.g_[(h * r + a) * 2 * m]);
    }
    if (auto chk = internal::CheckAllFinite(om, "the step's output functional"); !chk.ok()) {
      return absl::InvalidArgumentError(absl::StrCat("channel ", h, ": ", chk.message()));
    }
    PutSoA(lb, &st.lb_[h * 2 * m]);
    PutSoA(bt, &st.bt_[h * 2 * m]);
    PutSoA(om, &st.om_[h * 2 * m]);
    st.dy_[h] = 2 * rdot(c, bt) + d(h);
  }
  return st;
}

void SsmStepper::StepChannel(int h, const double* u, int steps, double* x,
                             double* y) const {
  const int m = modes_, r = rank_;
  const double d = d_(h);
  if (kind_ == Kind::kDense) {
    const Eigen::MatrixXcd& a = dense_a_[h];
    const Eigen::VectorXcd& b = dense_b_[h];
    const Eigen::VectorXcd& c = dense_c_[h];
    Eigen::VectorXcd full(2 * m), next(2 * m);
    for (int j = 0; j < m; ++j) {
      full(j) = cdouble(x[j], x[m + j]);
      full(m + j) = std::conj(full(j));
    }
    for (int t = 0; t < steps; ++t) {
      next.noalias() = a * full + b * u[t];
      full.swap(next);
      y[t] = c.cwiseProduct(full).sum().real() + d * u[t];  // Cf^T x, no conj
    }
    for (int j = 0; j < m; ++j) {
      x[j] = full(j).real();
      x[m + j] = full(j).imag();
    }
    return;
  }
  const int off = h * 2 * m;
  if (r == 0) {
    DiagonalSteps(m, &a_[off], &b_[off], &c_[off], d, u, steps, x, y);
    return;
  }
  const double* ua[kMaxRank];
  const double* ga[kMaxRank];
  for (int a = 0; a < r; ++a) {
    ua[a] = &u_[(h * r + a) * 2 * m];
    ga[a] = &g_[(h * r + a) * 2 * m];
  }
  const double *lb = &lb_[off], *bt = &bt_[off], *om = &om_[off];
  switch (r) {  // the rank as a constant: accumulators stay in registers
    case 1: return LowRankSteps<1>(m, lb, bt, om, ua, ga, dy_[h], u, steps, x, y);
    case 2: return LowRankSteps<2>(m, lb, bt, om, ua, ga, dy_[h], u, steps, x, y);
    case 3: return LowRankSteps<3>(m, lb, bt, om, ua, ga, dy_[h], u, steps, x, y);
    default: return LowRankSteps<4>(m, lb, bt, om, ua, ga, dy_[h], u, steps, x, y);
  }
  static_assert(kMaxRank == 4, "LowRankSteps is instantiated for ranks 1..4");
}

absl::Status SsmStepper::Run(absl::Span<const double> u, int batch, int steps,
                             absl::Span<double> state, absl::Span<double> y) const {
  if (auto st = CheckRunArgs(u, batch, steps, channels_, state_size(), state.size(),
                              y.size());
      !st.ok()) {
    return st;
  }
  if (steps == 1 && rank_ == 0 && kind_ == Kind::kFast) {
    const int64_t per_session = std::max<int64_t>(1, 65536 / state_size());
    internal::ParallelFor(batch, per_session, [&](int64_t begin, int64_t end) {
      for (int64_t b = begin; b < end; ++b) {
        DiagonalStepAllChannels(channels_, modes_, a_.data(), b_.data(), c_.data(),
                                d_.data(), &u[b * channels_], &state[b * state_size()],
                                &y[b * channels_]);
      }
    });
    return absl::OkStatus();
  }
  const int64_t rows = static_cast<int64_t>(batch) * channels_;
  // A thread hand-off costs microseconds: only split work that is larger.
  const int64_t min_block =
      std::max<int64_t>(1, 65536 / (int64_t(steps) * modes_ * (rank_ + 1)));
  internal::ParallelFor(rows, min_block, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const int h = static_cast<int>(row % channels_);
      StepChannel(h, &u[row * steps], steps, &state[row * 2 * modes_], &y[row * steps]);
    }
  });
  return absl::OkStatus();
}


namespace {

typedef float V8 __attribute__((vector_size(32)));
constexpr int kBlock = 8;
constexpr int kPacked = 6 * kBlock;  // ar ai br bi cr ci

inline V8 Load8(const float* p) {
  V8 v;
  __builtin_memcpy(&v, p, sizeof(v));
  return v;
}
inline void Store8(float* p, V8 v) { __builtin_memcpy(p, &v, sizeof(v)); }

// One channel's step: updates its state and returns its output sum as a
// vector of 8 partial sums plus the scalar sum of a partial last block.
inline V8 ChannelStepF32(int m, const float* __restrict q, float in, float* __restrict xr,
                         float* __restrict xi, float& tail) {
  const V8 vin = {in, in, in, in, in, in, in, in};
  // Two accumulators: the output sum is the loop's only dependency chain.
  V8 acc_r = {}, acc_i = {};
  int j = 0;
  for (; j + kBlock <= m; j += kBlock, q += kPacked) {
    const V8 rr = Load8(q), ri = Load8(q + 8), pr = Load8(xr + j), pi = Load8(xi + j);
    const V8 nr = rr * pr - ri * pi + Load8(q + 16) * vin;
    const V8 ni = rr * pi + ri * pr + Load8(q + 24) * vin;
    Store8(xr + j, nr);
    Store8(xi + j, ni);
    acc_r += Load8(q + 32) * nr;
    acc_i += Load8(q + 40) * ni;
  }
  float sum = 0;
  for (int k = 0; j < m; ++j, ++k) {  // the last, partial block
    const float nr = q[k] * xr[j] - q[8 + k] * xi[j] + q[16 + k] * in;
    const float ni = q[k] * xi[j] + q[8 + k] * xr[j] + q[24 + k] * in;
    xr[j] = nr;
    xi[j] = ni;
    sum += q[32 + k] * nr - q[40 + k] * ni;
  }
  tail = sum;
  return acc_r - acc_i;
}

// Horizontal sums of 8 vectors at once: out[c] = sum of v[c]'s lanes. Three
// rounds of pairwise shuffles and adds instead of 8 separate reductions,
// each a chain of dependent adds. __builtin_shufflevector: GCC (12 and
// later) and clang both have it, so the fuzz build (clang) compiles this too.
inline V8 Sum8x8(const V8 v[8]) {
  auto pair = [](V8 a, V8 b) {  // [a01 b01 a23 b23 a45 b45 a67 b67]
    return __builtin_shufflevector(a, b, 0, 8, 2, 10, 4, 12, 6, 14) +
           __builtin_shufflevector(a, b, 1, 9, 3, 11, 5, 13, 7, 15);
  };
  auto quad = [](V8 a, V8 b) {  // [a0-3 a'0-3 b0-3 b'0-3 | the same for lanes 4-7]
    return __builtin_shufflevector(a, b, 0, 1, 8, 9, 4, 5, 12, 13) +
           __builtin_shufflevector(a, b, 2, 3, 10, 11, 6, 7, 14, 15);
  };
  const V8 ab = quad(pair(v[0], v[1]), pair(v[2], v[3]));
  const V8 cd = quad(pair(v[4], v[5]), pair(v[6], v[7]));
  return __builtin_shufflevector(ab, cd, 0, 1, 2, 3, 8, 9, 10, 11) +
         __builtin_shufflevector(ab, cd, 4, 5, 6, 7, 12, 13, 14, 15);
}

// One step of every channel of one session, 8 channels at a time. u and y
// advance by `stride` between channels (the batch x H x T layout, T =
// stride).
void DiagonalStepAllChannelsF32(int h_count, int m, int blocks, const float* __restrict packed,
                                const float* __restrict d, const float* __restrict u,
                                int stride, float* __restrict x, float* __restrict y) {
  const size_t per_channel = static_cast<size_t>(blocks) * kPacked;
  int h = 0;
  for (; h + 8 <= h_count; h += 8) {
    V8 acc[8];
    float tail[8];
    for (int c = 0; c < 8; ++c) {
      float* xr = x + static_cast<size_t>(h + c) * 2 * m;
      acc[c] = ChannelStepF32(m, packed + (h + c) * per_channel,
                              u[static_cast<size_t>(h + c) * stride], xr, xr + m, tail[c]);
    }
    const V8 sums = Sum8x8(acc);
    for (int c = 0; c < 8; ++c) {
      const size_t at = static_cast<size_t>(h + c) * stride;
      y[at] = 2 * (sums[c] + tail[c]) + d[h + c] * u[at];
    }
  }
  for (; h < h_count; ++h) {
    float* xr = x + static_cast<size_t>(h) * 2 * m;
    const size_t at = static_cast<size_t>(h) * stride;
    float tail;
    const V8 acc = ChannelStepF32(m, packed + h * per_channel, u[at], xr, xr + m, tail);
    const float sum =
        ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
    y[at] = 2 * (sum + tail) + d[h] * u[at];
  }
}

}  // namespace

absl::StatusOr<DiagonalStepperF32> DiagonalStepperF32::Create(const DplrSystem& system,
                                                              const Eigen::VectorXd& d,
                                                              Discretization method) {
  if (system.rank() != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "the float32 step is diagonal only (rank 0), got rank ", system.rank()));
  }
  absl::StatusOr<SsmStepper> base = SsmStepper::Create(system, d, method);
  if (!base.ok()) return base.status();
  DiagonalStepperF32 st;
  const int h_count = base->channels(), m = base->modes();
  st.channels_ = h_count;
  st.modes_ = m;
  st.blocks_ = (m + kBlock - 1) / kBlock;
  st.storage_.assign(static_cast<size_t>(h_count) * st.blocks_ * kPacked + 16, 0.0f);
  st.d_.resize(h_count);
  for (int h = 0; h < h_count; ++h) {
    st.d_[h] = static_cast<float>(d(h));
    const size_t off = static_cast<size_t>(h) * 2 * m;
    for (int j = 0; j < m; ++j) {
      float* q = st.packed() + (static_cast<size_t>(h) * st.blocks_ + j / kBlock) * kPacked;
      const int k = j % kBlock;
      const std::vector<double>* src[3] = {&base->a_, &base->b_, &base->c_};
      for (int p = 0; p < 3; ++p) {
        q[(2 * p) * kBlock + k] = static_cast<float>((*src[p])[off + j]);
        q[(2 * p + 1) * kBlock + k] = static_cast<float>((*src[p])[off + m + j]);
      }
    }
  }
  return st;
}

const float* DiagonalStepperF32::packed() const {
  const uintptr_t at = reinterpret_cast<uintptr_t>(storage_.data());
  return storage_.data() + ((64 - at % 64) % 64) / sizeof(float);
}
float* DiagonalStepperF32::packed() {
  return const_cast<float*>(static_cast<const DiagonalStepperF32*>(this)->packed());
}

absl::Status DiagonalStepperF32::Run(absl::Span<const float> u, int batch, int steps,
                                     absl::Span<float> state, absl::Span<float> y) const {
  if (auto st = CheckRunArgs(u, batch, steps, channels_, state_size(), state.size(), y.size());
      !st.ok()) {
    return st;
  }
  const int64_t per_block = std::max<int64_t>(1, 65536 / (int64_t{state_size()} * steps));
  internal::ParallelFor(batch, per_block, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      const size_t io = static_cast<size_t>(b) * channels_ * steps;
      for (int t = 0; t < steps; ++t) {
        DiagonalStepAllChannelsF32(channels_, modes_, blocks_, packed(), d_.data(),
                                   &u[io + t], steps, &state[b * state_size()], &y[io + t]);
      }
    }
  });
  return absl::OkStatus();
}

}  // namespace ssm
