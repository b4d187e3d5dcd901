#include "ssm/recurrent.h"

#include <cmath>

#ifdef __FMA__
#include <immintrin.h>
#endif

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

typedef double V4 __attribute__((vector_size(32)));

inline V4 Load4(const double* p) {
  V4 v;
  __builtin_memcpy(&v, p, sizeof(v));
  return v;
}
inline void Store4(double* p, V4 v) { __builtin_memcpy(p, &v, sizeof(v)); }

// One diagonal step of one channel: the state read from (qr, qi) and
// written to (xr, xi), the same buffer or two that do not overlap (element
// j is read before it is written and nothing else is, so either way gives
// the same bits); returns the output. Written with explicit 4-wide vectors:
// GCC's auto-vectorizer left the fused update-and-reduce scalar. Every
// diagonal path goes through here, so a step's bits do not depend on the
// chunk it is part of.
inline double DiagonalStep(int m, const double* __restrict ar, const double* __restrict ai,
                           const double* __restrict br, const double* __restrict bi,
                           const double* __restrict cr, const double* __restrict ci, double d,
                           double in, const double* qr, const double* qi, double* xr,
                           double* xi) {
  const V4 vin = {in, in, in, in};
  V4 acc = {0, 0, 0, 0};
  int j = 0;
  for (; j + 4 <= m; j += 4) {
    const V4 rr = Load4(ar + j), ri = Load4(ai + j), pr = Load4(qr + j), pi = Load4(qi + j);
    const V4 nr = rr * pr - ri * pi + Load4(br + j) * vin;
    const V4 ni = rr * pi + ri * pr + Load4(bi + j) * vin;
    Store4(xr + j, nr);
    Store4(xi + j, ni);
    acc += Load4(cr + j) * nr - Load4(ci + j) * ni;
  }
  double sum = (acc[0] + acc[1]) + (acc[2] + acc[3]);
  for (; j < m; ++j) {
    const double nr = ar[j] * qr[j] - ai[j] * qi[j] + br[j] * in;
    const double ni = ar[j] * qi[j] + ai[j] * qr[j] + bi[j] * in;
    xr[j] = nr;
    xi[j] = ni;
    sum += cr[j] * nr - ci[j] * ni;
  }
  return 2 * sum + d * in;
}

// The diagonal steps of one channel over T inputs; the state is read from
// `x0` and written to `x`, as DiagonalStep (after the first step both are
// `x`).
void DiagonalSteps(int m, const double* __restrict a, const double* __restrict b,
                   const double* __restrict c, double d, const double* __restrict u,
                   int steps, const double* x0, double* x, double* __restrict y) {
  for (int t = 0; t < steps; ++t) {
    const double* q = t == 0 ? x0 : x;
    y[t] = DiagonalStep(m, a, a + m, b, b + m, c, c + m, d, u[t], q, q + m, x, x + m);
  }
}

// One step of every channel of one session: the streaming hot path. One
// call walks the H x 2M parameter and state arrays front to back, which keeps
// the hardware prefetcher busy. The state is read from `x0` and written to
// `x`, as DiagonalStep.
void DiagonalStepAllChannels(int h_count, int m, const double* __restrict a,
                             const double* __restrict b, const double* __restrict c,
                             const double* __restrict d, const double* __restrict u,
                             const double* x0, double* x, double* __restrict y) {
  for (int h = 0; h < h_count; ++h) {
    const size_t off = static_cast<size_t>(h) * 2 * m;
    y[h] = DiagonalStep(m, a + off, a + off + m, b + off, b + off + m, c + off, c + off + m,
                        d[h], u[h], x0 + off, x0 + off + m, x + off, x + off + m);
  }
}

// Multiply-adds rounded once where the CPU has FMA, written out rather than
// left to the compiler's contraction: the low-rank step below is
// instantiated for 1 to 4 sessions at a time, and every instantiation must
// round a session's terms alike (without FMA: a multiply, then an add).
inline V4 Fma(V4 a, V4 b, V4 c) {  // a b + c
#ifdef __FMA__
  return reinterpret_cast<V4>(_mm256_fmadd_pd(reinterpret_cast<__m256d>(a),
                                              reinterpret_cast<__m256d>(b),
                                              reinterpret_cast<__m256d>(c)));
#else
  return c + a * b;
#endif
}
inline V4 Fms(V4 a, V4 b, V4 c) {  // a b - c
#ifdef __FMA__
  return reinterpret_cast<V4>(_mm256_fmsub_pd(reinterpret_cast<__m256d>(a),
                                              reinterpret_cast<__m256d>(b),
                                              reinterpret_cast<__m256d>(c)));
#else
  return a * b - c;
#endif
}
inline V4 Fnma(V4 a, V4 b, V4 c) {  // c - a b
#ifdef __FMA__
  return reinterpret_cast<V4>(_mm256_fnmadd_pd(reinterpret_cast<__m256d>(a),
                                               reinterpret_cast<__m256d>(b),
                                               reinterpret_cast<__m256d>(c)));
#else
  return c - a * b;
#endif
}
inline double Fma(double a, double b, double c) {
#ifdef __FMA__
  return std::fma(a, b, c);  // one instruction with FMA
#else
  return c + a * b;
#endif
}
inline double Fms(double a, double b, double c) {
#ifdef __FMA__
  return std::fma(a, b, -c);
#else
  return a * b - c;
#endif
}
inline double Fnma(double a, double b, double c) {
#ifdef __FMA__
  return std::fma(-a, b, c);
#else
  return c - a * b;
#endif
}

// One diagonal-plus-rank-R step (see SsmStepper::Create) of one channel for
// S sessions at once, two passes over the modes, 4 modes per vector, with
// vector accumulators for the reductions:
//   pass 1: k_a = Rdot(g_a, x), o = Rdot(om, x);  y = o + delta u
//   pass 2: x = Lb x + sum_a U_a k_a + Bt u.
// Session s's state is read from xin[s] and written to xout[s] (the same
// buffer, or two that do not overlap: element j is read before it is
// written and nothing else is), its input is u[s * stride] and its output
// goes to y[s * stride]. The sessions share the channel's parameters (one
// load for S) and their reductions are independent chains, which hides the
// adds' latency; each session's arithmetic is the same whatever S, so a
// session's bits do not depend on its company. Each step's reductions read
// only its own x, so how a stream is cut into calls cannot change a bit of
// the outputs either.
template <int R, int S>
inline void LowRankStep(int m, const double* __restrict lb, const double* __restrict bt,
                        const double* __restrict om, const double* const* ua,
                        const double* const* ga, double delta, const double* u, size_t stride,
                        const double* const* xin, double* const* xout, double* y) {
  const int mv = m - m % 4;  // modes handled 4 at a time
  V4 kacc[S][R], oacc[S];
  for (int s = 0; s < S; ++s) {
    for (int a = 0; a < R; ++a) kacc[s][a] = V4{0, 0, 0, 0};
    oacc[s] = V4{0, 0, 0, 0};
  }
  int j = 0;
  for (; j < mv; j += 4) {
    V4 g_r[R], g_i[R];
    for (int a = 0; a < R; ++a) {
      g_r[a] = Load4(ga[a] + j);
      g_i[a] = Load4(ga[a] + m + j);
    }
    const V4 o_r = Load4(om + j), o_i = Load4(om + m + j);
    for (int s = 0; s < S; ++s) {
      const V4 x_r = Load4(xin[s] + j), x_i = Load4(xin[s] + m + j);
      for (int a = 0; a < R; ++a) kacc[s][a] = Fnma(g_i[a], x_i, Fma(g_r[a], x_r, kacc[s][a]));
      oacc[s] = Fnma(o_i, x_i, Fma(o_r, x_r, oacc[s]));
    }
  }
  double k[S][R], in[S];
  for (int s = 0; s < S; ++s) {
    const double* xr = xin[s];
    const double* xi = xr + m;
    for (int a = 0; a < R; ++a) {
      k[s][a] = (kacc[s][a][0] + kacc[s][a][1]) + (kacc[s][a][2] + kacc[s][a][3]);
    }
    double o = (oacc[s][0] + oacc[s][1]) + (oacc[s][2] + oacc[s][3]);
    for (int jj = j; jj < m; ++jj) {
      for (int a = 0; a < R; ++a) k[s][a] = Fnma(ga[a][m + jj], xi[jj], Fma(ga[a][jj], xr[jj], k[s][a]));
      o = Fnma(om[m + jj], xi[jj], Fma(om[jj], xr[jj], o));
    }
    in[s] = u[s * stride];
    y[s * stride] = Fma(delta, in[s], o);
  }
  for (j = 0; j < mv; j += 4) {
    const V4 lr = Load4(lb + j), li = Load4(lb + m + j);
    const V4 b_r = Load4(bt + j), b_i = Load4(bt + m + j);
    V4 u_r[R], u_i[R];
    for (int a = 0; a < R; ++a) {
      u_r[a] = Load4(ua[a] + j);
      u_i[a] = Load4(ua[a] + m + j);
    }
    for (int s = 0; s < S; ++s) {
      const V4 x_r = Load4(xin[s] + j), x_i = Load4(xin[s] + m + j);
      const V4 vin = {in[s], in[s], in[s], in[s]};
      V4 nr = Fma(b_r, vin, Fms(lr, x_r, li * x_i));
      V4 ni = Fma(b_i, vin, Fma(lr, x_i, li * x_r));
      for (int a = 0; a < R; ++a) {
        const V4 vk = {k[s][a], k[s][a], k[s][a], k[s][a]};
        nr = Fma(u_r[a], vk, nr);
        ni = Fma(u_i[a], vk, ni);
      }
      Store4(xout[s] + j, nr);
      Store4(xout[s] + m + j, ni);
    }
  }
  for (int s = 0; s < S; ++s) {
    const double* xr = xin[s];
    const double* xi = xr + m;
    double* wr = xout[s];
    double* wi = wr + m;
    for (int jj = mv; jj < m; ++jj) {
      double nr = Fma(bt[jj], in[s], Fms(lb[jj], xr[jj], lb[m + jj] * xi[jj]));
      double ni = Fma(bt[m + jj], in[s], Fma(lb[jj], xi[jj], lb[m + jj] * xr[jj]));
      for (int a = 0; a < R; ++a) {
        nr = Fma(ua[a][jj], k[s][a], nr);
        ni = Fma(ua[a][m + jj], k[s][a], ni);
      }
      wr[jj] = nr;
      wi[jj] = ni;
    }
  }
}

// The low-rank steps of one channel of one session over T inputs; the
// state is read from `x0` and written to `x` (after the first step both
// are `x`).
template <int R>
void LowRankSteps(int m, const double* __restrict lb, const double* __restrict bt,
                  const double* __restrict om, const double* const* ua,
                  const double* const* ga, double delta, const double* __restrict u,
                  int steps, const double* x0, double* x, double* __restrict y) {
  for (int t = 0; t < steps; ++t) {
    const double* in = t == 0 ? x0 : x;
    LowRankStep<R, 1>(m, lb, bt, om, ua, ga, delta, u + t, 1, &in, &x, y + t);
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

void SsmStepper::StepChannel(int h, const double* u, int steps, const double* in, double* x,
                             double* y) const {
  const int m = modes_, r = rank_;
  const double d = d_(h);
  if (kind_ == Kind::kDense) {
    const Eigen::MatrixXcd& a = dense_a_[h];
    const Eigen::VectorXcd& b = dense_b_[h];
    const Eigen::VectorXcd& c = dense_c_[h];
    Eigen::VectorXcd full(2 * m), next(2 * m);
    for (int j = 0; j < m; ++j) {
      full(j) = cdouble(in[j], in[m + j]);
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
    DiagonalSteps(m, &a_[off], &b_[off], &c_[off], d, u, steps, in, x, y);
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
    case 1: return LowRankSteps<1>(m, lb, bt, om, ua, ga, dy_[h], u, steps, in, x, y);
    case 2: return LowRankSteps<2>(m, lb, bt, om, ua, ga, dy_[h], u, steps, in, x, y);
    case 3: return LowRankSteps<3>(m, lb, bt, om, ua, ga, dy_[h], u, steps, in, x, y);
    default: return LowRankSteps<4>(m, lb, bt, om, ua, ga, dy_[h], u, steps, in, x, y);
  }
  static_assert(kMaxRank == 4, "LowRankSteps is instantiated for ranks 1..4");
}

template <int R, int S>
void SsmStepper::StepSessions(int64_t b0, const double* u, const double* const* in,
                              double* const* out, int batch, double* y) const {
  static_assert(kMaxRank == 4, "StepSessions is instantiated for ranks 1..4");
  const int m = modes_;
  const size_t per_session = static_cast<size_t>(state_size());
  const double* xin[S];
  double* xout[S];
  for (int h = 0; h < channels_; ++h) {
    const size_t at = static_cast<size_t>(h) * 2 * m;
    for (int s = 0; s < S; ++s) {
      const int64_t b = b0 + s;
      xin[s] = in[b / batch] + (b % batch) * per_session + at;
      xout[s] = out[b / batch] + (b % batch) * per_session + at;
    }
    const double* ua[R];
    const double* ga[R];
    for (int a = 0; a < R; ++a) {
      ua[a] = &u_[(h * R + a) * 2 * m];
      ga[a] = &g_[(h * R + a) * 2 * m];
    }
    // Steps of one: session b's input and output for channel h sit at
    // b * H + h.
    LowRankStep<R, S>(m, &lb_[at], &bt_[at], &om_[at], ua, ga, dy_[h], u + b0 * channels_ + h,
                      channels_, xin, xout, y + b0 * channels_ + h);
  }
}

absl::Status SsmStepper::Run(absl::Span<const double> u, int batch, int steps,
                             absl::Span<double> state, absl::Span<double> y) const {
  if (auto st = CheckRunArgs(u, batch, steps, channels_, state_size(), state.size(),
                              y.size());
      !st.ok()) {
    return st;
  }
  double* const s = state.data();
  RunBlocks(u.data(), batch, 1, steps, &s, &s, y.data());
  return absl::OkStatus();
}

void SsmStepper::RunBlocks(const double* u, int batch, int blocks, int steps,
                           const double* const* in, double* const* out, double* y) const {
  // Session b of the whole set is session b % batch of group b / batch.
  const int64_t sessions = static_cast<int64_t>(batch) * blocks;
  const size_t per_session = static_cast<size_t>(state_size());
  auto state_in = [&](int64_t b) { return in[b / batch] + (b % batch) * per_session; };
  auto state_out = [&](int64_t b) { return out[b / batch] + (b % batch) * per_session; };
  if (steps == 1 && rank_ == 0 && kind_ == Kind::kFast) {
    const int64_t min_sessions = std::max<int64_t>(1, 65536 / state_size());
    internal::ParallelFor(sessions, min_sessions, [&](int64_t begin, int64_t end) {
      for (int64_t b = begin; b < end; ++b) {
        DiagonalStepAllChannels(channels_, modes_, a_.data(), b_.data(), c_.data(), d_.data(),
                                &u[b * channels_], state_in(b), state_out(b),
                                &y[b * channels_]);
      }
    });
    return;
  }
  // A thread hand-off costs microseconds: only split work that is larger.
  const int64_t min_block =
      std::max<int64_t>(1, 65536 / (int64_t(steps) * modes_ * (rank_ + 1)));
  if (steps == 1 && rank_ > 0 && kind_ == Kind::kFast) {
    // The streaming case: sessions four at a time through each channel
    // (LowRankStep shares the channel's parameters between them and
    // overlaps their reductions), channel after channel.
    const int64_t min_sessions = std::max<int64_t>(1, min_block / channels_);
    internal::ParallelFor(sessions, min_sessions, [&](int64_t begin, int64_t end) {
      for (int64_t b0 = begin; b0 < end; b0 += 4) {
        const int group = static_cast<int>(std::min<int64_t>(4, end - b0));
        switch (rank_ * 8 + group) {
          case 8 + 1: StepSessions<1, 1>(b0, u, in, out, batch, y); break;
          case 8 + 2: StepSessions<1, 2>(b0, u, in, out, batch, y); break;
          case 8 + 3: StepSessions<1, 3>(b0, u, in, out, batch, y); break;
          case 8 + 4: StepSessions<1, 4>(b0, u, in, out, batch, y); break;
          case 16 + 1: StepSessions<2, 1>(b0, u, in, out, batch, y); break;
          case 16 + 2: StepSessions<2, 2>(b0, u, in, out, batch, y); break;
          case 16 + 3: StepSessions<2, 3>(b0, u, in, out, batch, y); break;
          case 16 + 4: StepSessions<2, 4>(b0, u, in, out, batch, y); break;
          case 24 + 1: StepSessions<3, 1>(b0, u, in, out, batch, y); break;
          case 24 + 2: StepSessions<3, 2>(b0, u, in, out, batch, y); break;
          case 24 + 3: StepSessions<3, 3>(b0, u, in, out, batch, y); break;
          case 24 + 4: StepSessions<3, 4>(b0, u, in, out, batch, y); break;
          case 32 + 1: StepSessions<4, 1>(b0, u, in, out, batch, y); break;
          case 32 + 2: StepSessions<4, 2>(b0, u, in, out, batch, y); break;
          case 32 + 3: StepSessions<4, 3>(b0, u, in, out, batch, y); break;
          default: StepSessions<4, 4>(b0, u, in, out, batch, y); break;
        }
      }
    });
    return;
  }
  const int64_t rows = sessions * channels_;
  internal::ParallelFor(rows, min_block, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const int64_t b = row / channels_;
      const int h = static_cast<int>(row % channels_);
      const size_t at = static_cast<size_t>(h) * 2 * modes_;
      StepChannel(h, &u[row * steps], steps, state_in(b) + at, state_out(b) + at,
                  &y[row * steps]);
    }
  });
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
