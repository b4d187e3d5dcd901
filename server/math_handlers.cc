#include "server/math_handlers.h"

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <limits>
#include <numbers>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "ssm/discretize.h"
#include "ssm/dplr.h"
#include "ssm/hippo.h"
#include "ssm/kernel.h"

namespace ssm::server {
namespace {

namespace v1 = ::ssm::v1;

absl::StatusOr<ssm::Measure> MeasureFromProto(v1::HippoMeasure measure,
                                              absl::string_view field) {
  switch (measure) {
    case v1::HIPPO_MEASURE_LEGS:
      return ssm::Measure::kLegS;
    case v1::HIPPO_MEASURE_LEGT:
      return ssm::Measure::kLegT;
    case v1::HIPPO_MEASURE_LMU:
      return ssm::Measure::kLmu;
    case v1::HIPPO_MEASURE_LAGT:
      return ssm::Measure::kLagT;
    case v1::HIPPO_MEASURE_FOUT:
      return ssm::Measure::kFouT;
    default:
      return absl::InvalidArgumentError(
          absl::StrCat(field, " must be LEGS, LEGT, LMU, LAGT or FOUT, got ",
                       v1::HippoMeasure_Name(measure).empty() ? absl::StrCat(measure)
                                                              : v1::HippoMeasure_Name(measure)));
  }
}

// The Discretization message: alpha (GBT) wins when set; an UNSPECIFIED
// kind is bilinear (the message's documented default).
absl::StatusOr<ssm::Discretization> DiscretizationFromProto(const v1::Discretization& d) {
  if (d.has_alpha()) {
    if (!std::isfinite(d.alpha()) || d.alpha() < 0 || d.alpha() > 1) {
      return absl::InvalidArgumentError(
          absl::StrCat("discretization.alpha must be in [0, 1], got ", d.alpha()));
    }
    return ssm::Discretization::Gbt(d.alpha());
  }
  switch (d.kind()) {
    case v1::DISCRETIZATION_KIND_UNSPECIFIED:
    case v1::DISCRETIZATION_KIND_BILINEAR:
      return ssm::Discretization::Bilinear();
    case v1::DISCRETIZATION_KIND_ZOH:
      return ssm::Discretization::Zoh();
    case v1::DISCRETIZATION_KIND_DSS:
      return absl::InvalidArgumentError(
          "discretization.kind: DSS is a model kernel whose values depend on the sequence "
          "length, not a discretization of (A, B); use BILINEAR or ZOH");
    default:
      return absl::InvalidArgumentError(
          absl::StrCat("discretization.kind: unknown value ", static_cast<int>(d.kind())));
  }
}

bool IsBilinear(const ssm::Discretization& d) {
  return d.kind == ssm::Discretization::Kind::kGbt && d.alpha == 0.5;
}

void ToMatrix(const Eigen::MatrixXd& m, v1::Matrix* out) {
  out->set_rows(static_cast<int>(m.rows()));
  out->set_cols(static_cast<int>(m.cols()));
  auto* values = out->mutable_values();
  values->Resize(static_cast<int>(m.size()), 0.0);
  double* dst = values->mutable_data();
  for (Eigen::Index r = 0; r < m.rows(); ++r) {
    for (Eigen::Index c = 0; c < m.cols(); ++c) *dst++ = m(r, c);
  }
}

absl::Status CheckComplexMatrix(const v1::ComplexMatrix& m, const std::string& field) {
  if (m.rows() < 1 || m.cols() < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat(field, " must be at least 1 x 1, got ", m.rows(), " x ", m.cols()));
  }
  const int64_t size = int64_t{m.rows()} * m.cols();
  if (m.real_size() != size || m.imag_size() != size) {
    return absl::InvalidArgumentError(absl::StrCat(
        field, " is ", m.rows(), " x ", m.cols(), " = ", size, " values but holds ",
        m.real_size(), " real and ", m.imag_size(), " imaginary parts"));
  }
  return absl::OkStatus();
}

// m is checked (CheckComplexMatrix).
RowMatrixXcd FromComplexMatrix(const v1::ComplexMatrix& m) {
  RowMatrixXcd out(m.rows(), m.cols());
  for (int64_t i = 0; i < out.size(); ++i) {
    out.data()[i] = cdouble(m.real(static_cast<int>(i)), m.imag(static_cast<int>(i)));
  }
  return out;
}

// ---------------------------------------------------------------------------
// What a ComputeKernel request asks for, read and checked from its fields
// before anything is built.

struct KernelPlan {
  const v1::ComputeKernelRequest* request;
  int64_t length = 0;
  ssm::Discretization discretization;
  v1::KernelMethod method = v1::KERNEL_METHOD_UNSPECIFIED;  // resolved
  int64_t channels = 0, modes = 0, rank = 0;                // H, M = N/2, r
  // Init only.
  ssm::Measure measure = ssm::Measure::kLegS;
  double dt_min = 0, dt_max = 0;
  enum class Convert { kNone, kToCTilde, kFromCTilde } convert = Convert::kNone;
  // A mode at Lambda = 0: FouT with an even N (its NPLR pairs every
  // frequency but 0), or an explicit system that has one.
  bool zero_mode = false;

  bool is_init() const { return request->system_case() == v1::ComputeKernelRequest::kInit; }
  int64_t n() const { return 2 * modes; }
};

absl::Status CheckDt(double value, double fallback, absl::string_view field, double* out) {
  *out = value == 0 ? fallback : value;
  if (!std::isfinite(*out) || *out <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(field, " must be > 0 (0 means ", fallback, "), got ", value));
  }
  return absl::OkStatus();
}

absl::Status PlanInit(const v1::SsmInit& init, KernelPlan& plan) {
  switch (init.kind()) {
    case v1::SsmInit::KIND_S4: {
      absl::StatusOr<ssm::Measure> measure = MeasureFromProto(init.measure(), "init.measure");
      if (!measure.ok()) return measure.status();
      plan.measure = *measure;
      plan.zero_mode = *measure == ssm::Measure::kFouT && init.n() % 2 == 0;
      // The measure's rank, from the core (LMU has no symmetric one).
      absl::StatusOr<ssm::LowRankCorrection> correction = ssm::MakeLowRankCorrection(*measure, 2);
      if (!correction.ok()) return correction.status();
      plan.rank = correction->P.cols();
      break;
    }
    case v1::SsmInit::KIND_S4D_LEGS:
    case v1::SsmInit::KIND_S4D_LIN:
    case v1::SsmInit::KIND_S4D_INV:
      plan.rank = 0;
      break;
    default:
      return absl::InvalidArgumentError(absl::StrCat(
          "init.kind must be S4, S4D_LEGS, S4D_LIN or S4D_INV, got ",
          static_cast<int>(init.kind())));
  }
  if (init.n() > kMaxHippoN) {
    return absl::InvalidArgumentError(
        absl::StrCat("init.n must be <= ", kMaxHippoN, ", got ", init.n()));
  }
  if (init.n() < 2 || init.n() % 2 != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "init.n must be even and >= 2 (modes come in conjugate pairs), got ", init.n()));
  }
  if (init.channels() < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("init.channels must be >= 1, got ", init.channels()));
  }
  if (auto st = CheckDt(init.dt_min(), 1e-3, "init.dt_min", &plan.dt_min); !st.ok()) return st;
  if (auto st = CheckDt(init.dt_max(), 1e-1, "init.dt_max", &plan.dt_max); !st.ok()) return st;
  if (plan.dt_max < plan.dt_min) {
    return absl::InvalidArgumentError(absl::StrCat("init.dt_max (", plan.dt_max,
                                                   ") must be >= init.dt_min (", plan.dt_min, ")"));
  }
  plan.channels = init.channels();
  plan.modes = init.n() / 2;
  return absl::OkStatus();
}

// Shapes only: values (finite, dt > 0) are the core's check when built.
absl::Status PlanExplicit(const v1::SsmSystem& s, KernelPlan& plan) {
  if (auto st = CheckComplexMatrix(s.lambda(), "explicit_system.lambda"); !st.ok()) return st;
  const int rows = s.lambda().rows(), cols = s.lambda().cols();
  auto same_shape = [&](const v1::ComplexMatrix& m, const std::string& field) -> absl::Status {
    if (auto st = CheckComplexMatrix(m, field); !st.ok()) return st;
    if (m.rows() != rows || m.cols() != cols) {
      return absl::InvalidArgumentError(absl::StrCat(field, " is ", m.rows(), " x ", m.cols(),
                                                     ", explicit_system.lambda is ", rows, " x ",
                                                     cols, " (each must be H x M)"));
    }
    return absl::OkStatus();
  };
  for (int a = 0; a < s.p_size(); ++a) {
    if (auto st = same_shape(s.p(a), absl::StrCat("explicit_system.p[", a, "]")); !st.ok()) {
      return st;
    }
  }
  if (auto st = same_shape(s.b(), "explicit_system.b"); !st.ok()) return st;
  if (auto st = same_shape(s.c(), "explicit_system.c"); !st.ok()) return st;
  if (s.dt_size() != rows) {
    return absl::InvalidArgumentError(absl::StrCat("explicit_system.dt has ", s.dt_size(),
                                                   " entries, one per channel (", rows,
                                                   ") expected"));
  }
  if (s.p_size() > ssm::kMaxRank) {
    return absl::InvalidArgumentError(absl::StrCat("explicit_system.p has rank ", s.p_size(),
                                                   ", at most ", ssm::kMaxRank, " is supported"));
  }
  plan.channels = rows;
  plan.modes = cols;
  plan.rank = s.p_size();
  for (int i = 0; i < s.lambda().real_size() && !plan.zero_mode; ++i) {
    plan.zero_mode = s.lambda().real(i) == 0 && s.lambda().imag(i) == 0;
  }
  return absl::OkStatus();
}

// The method UNSPECIFIED stands for. A mode at Lambda = 0 (even-N FouT)
// makes DPLR's generating function singular at omega = 1; the powers of
// NAIVE do not mind it.
v1::KernelMethod DefaultMethod(const KernelPlan& plan) {
  if (plan.rank == 0) return v1::KERNEL_METHOD_DIAGONAL;
  return plan.zero_mode ? v1::KERNEL_METHOD_NAIVE : v1::KERNEL_METHOD_DPLR;
}

absl::StatusOr<KernelPlan> PlanKernel(const v1::ComputeKernelRequest& request) {
  KernelPlan plan;
  plan.request = &request;
  if (request.length() < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("length must be >= 1, got ", request.length()));
  }
  plan.length = request.length();
  absl::StatusOr<ssm::Discretization> discretization =
      DiscretizationFromProto(request.discretization());
  if (!discretization.ok()) return discretization.status();
  plan.discretization = *discretization;

  bool c_is_c_tilde = false;
  switch (request.system_case()) {
    case v1::ComputeKernelRequest::kInit:
      if (auto st = PlanInit(request.init(), plan); !st.ok()) return st;
      break;
    case v1::ComputeKernelRequest::kExplicitSystem:
      if (auto st = PlanExplicit(request.explicit_system(), plan); !st.ok()) return st;
      c_is_c_tilde = request.explicit_system().c_is_c_tilde();
      break;
    default:
      return absl::InvalidArgumentError("system: set one of init and explicit_system");
  }

  plan.method = request.method();
  if (plan.method == v1::KERNEL_METHOD_UNSPECIFIED) plan.method = DefaultMethod(plan);
  switch (plan.method) {
    case v1::KERNEL_METHOD_DPLR:
      if (!IsBilinear(plan.discretization)) {
        return absl::InvalidArgumentError(
            "discretization: the DPLR method is bilinear only (use NAIVE or DIAGONAL for "
            "others)");
      }
      if (!c_is_c_tilde) plan.convert = KernelPlan::Convert::kToCTilde;
      break;
    case v1::KERNEL_METHOD_DIAGONAL:
      if (plan.rank != 0) {
        return absl::InvalidArgumentError(absl::StrCat(
            "method: DIAGONAL needs a diagonal (rank 0) system, got rank ", plan.rank,
            "; use DPLR"));
      }
      [[fallthrough]];
    case v1::KERNEL_METHOD_NAIVE:
      if (c_is_c_tilde) plan.convert = KernelPlan::Convert::kFromCTilde;
      break;
    default:
      return absl::InvalidArgumentError(
          absl::StrCat("method: unknown value ", static_cast<int>(plan.method)));
  }
  return plan;
}

// BuildHippo's request, checked; what the estimate and the work need.
struct HippoPlan {
  ssm::Measure measure;
  ssm::Discretization method;
  ssm::HippoOptions options;
};

absl::StatusOr<HippoPlan> PlanHippo(const v1::BuildHippoRequest& request) {
  HippoPlan plan;
  absl::StatusOr<ssm::Measure> measure = MeasureFromProto(request.measure(), "measure");
  if (!measure.ok()) return measure.status();
  plan.measure = *measure;
  if (request.n() < 1 || request.n() > kMaxHippoN) {
    return absl::InvalidArgumentError(
        absl::StrCat("n must be in [1, ", kMaxHippoN, "], got ", request.n()));
  }
  if (!std::isfinite(request.dt()) || request.dt() <= 0) {
    return absl::InvalidArgumentError(absl::StrCat("dt must be > 0, got ", request.dt()));
  }
  absl::StatusOr<ssm::Discretization> method = DiscretizationFromProto(request.discretization());
  if (!method.ok()) return method.status();
  plan.method = *method;
  if (request.theta() != 0) plan.options.theta = request.theta();
  if (plan.measure == ssm::Measure::kLmu &&
      (!std::isfinite(plan.options.theta) || plan.options.theta <= 0)) {
    return absl::InvalidArgumentError(
        absl::StrCat("theta must be > 0 (0 means 1), got ", request.theta()));
  }
  return plan;
}

// ---------------------------------------------------------------------------
// The cost model. Each constant is the cost of one operation of a step in
// work units (kWorkUnitsPerSecond), read off the core's loops and fitted to
// single-thread timings on the development machine (bench/README.md has
// the measured table). Where a step's speed varies, the slower end counts.

constexpr double kCall = 1e5;            // per request: allocations, plans, small loops
constexpr double kEigensolve = 22;       // per N^3: the NPLR's Hermitian eigensolve
constexpr double kInitEntry = 600;       // per channel x mode: C's normal draws, copies
constexpr double kExplicitEntry = 20;    // per complex value of an explicit system
constexpr double kComplexProduct = 4;    // per N^3 complex multiply-adds (dense product)
constexpr double kComplexLuSolve = 7;    // per N^3: LU of I - a dt A and its solve for N columns
constexpr double kComplexLu = 2;         // per N^3: LU alone (and rcond)
constexpr double kDenseSetup = 100;      // per N^2 per channel: the full-state matrices
constexpr double kMatVec = 4;            // per N^2 complex entry of a step: matrix in L2 (N <= 256),
constexpr double kMatVecL3 = 5;          // in L3 (up to 8 MiB, N <= 724),
constexpr double kMatVecFromMemory = 10; // or streamed from memory
constexpr double kStep = 200;            // per naive step
constexpr double kRealProduct = 0.7;     // per N^3 real multiply-adds
constexpr double kRealLuSolve = 1.6;     // per N^3, real
constexpr double kHippoEntry = 60;       // per N^2: MakeHippo's entries and the response's
constexpr double kCauchyPole = 5;        // per channel x point x mode: the shared 1/(z - lambda)
constexpr double kCauchySet = 2.5;       // ... and per numerator set ((r + 1)^2 of them)
constexpr double kCauchyPrep = 20;       // per channel x mode x set
constexpr double kPointLowRank = 250;    // per channel x point, rank <= 1: Woodbury, spectrum, FFT,
constexpr double kPointFromMemory = 650; // more as a block's intermediates outgrow the caches (64 MiB)
constexpr double kPointPerSet = 400;     // per channel x point x set, rank >= 2 (r x r LU)
constexpr double kRoughFft = 45;         // per L log2 L: FFTW on a length with a prime factor > 7
constexpr double kDiagProduct = 0.8;     // per real multiply-add of the Vandermonde GEMM
constexpr double kDiagOutput = 14;       // per kernel value
constexpr double kDiagMode = 3000;       // per channel x mode: discretization, exp/log
constexpr double kDiagPower = 35;        // per channel x mode x power (std::complex products)
constexpr double kResponseValue = 2;     // per value copied into the response

double Cube(double n) { return n * n * n; }

// The products Eigen's matrix exponential takes for a matrix of 1-norm
// `norm`: 2 to 6 for the Pade approximant (degree 3 to 13 by the norm), plus
// one per squaring (Eigen 3.4's thresholds).
double ExpProducts(double norm) {
  if (!(norm >= 1.495585217958292e-2)) return 2;
  if (norm < 2.539398330063230e-1) return 3;
  if (norm < 9.504178996162932e-1) return 4;
  if (norm < 2.097847961257068) return 5;
  if (!std::isfinite(norm)) return 6 + 1100;  // past any finite double's squarings
  int squarings = 0;
  std::frexp(norm / 5.371920351148152, &squarings);
  return 6 + std::max(0, squarings);
}

// A bound of the 1-norm of [A, B] over an init's full state, measured on
// the built systems for N <= kMaxHippoN (LegS's comes closest: 0.94 of it at
// N = 1024); S4D-Lin's and S4D-Inv's are exact bounds.
double InitNormBound(const v1::SsmInit& init, ssm::Measure measure) {
  const double n = init.n();
  switch (init.kind()) {
    case v1::SsmInit::KIND_S4:
      return measure == ssm::Measure::kFouT || measure == ssm::Measure::kLagT ? 4 * n
                                                                               : 2 * n * n;
    case v1::SsmInit::KIND_S4D_LEGS:
      return std::max(0.5 * n * n, 6 * n);
    case v1::SsmInit::KIND_S4D_LIN:
      return std::max(std::numbers::pi * n / 2 + 0.5, n);
    default:  // KIND_S4D_INV
      return std::max(n * (n - 1) / std::numbers::pi + 0.5, n);
  }
}

// Channel h's step: MakeS4Init / MakeS4dInit's spacing, or the explicit one.
double ChannelDt(const KernelPlan& plan, int64_t h) {
  if (!plan.is_init()) return plan.request->explicit_system().dt(static_cast<int>(h));
  const double lo = std::log(plan.dt_min), hi = std::log(plan.dt_max);
  return std::exp(lo + (hi - lo) * (h + 0.5) / plan.channels);
}

// For ZOH: dt times a bound of the 1-norm of [A, B] over channel h's full
// state, which sets the exponential's squarings. An explicit system's from
// its values: |Lambda| + sum over P of 2 max|P| sum|P| per column, 2 sum|B|.
double ZohNorm(const KernelPlan& plan, int64_t h) {
  const double dt = ChannelDt(plan, h);
  if (!(dt > 0) || !std::isfinite(dt)) return 0;  // refused when built
  if (plan.is_init()) return dt * InitNormBound(plan.request->init(), plan.measure);
  const v1::SsmSystem& s = plan.request->explicit_system();
  const int64_t m = plan.modes, first = h * m;
  auto row_abs = [&](const v1::ComplexMatrix& x, double* max, double* sum) {
    *max = 0, *sum = 0;
    for (int64_t i = first; i < first + m; ++i) {
      const double a = std::hypot(x.real(static_cast<int>(i)), x.imag(static_cast<int>(i)));
      if (!std::isfinite(a)) continue;  // refused when built
      *max = std::max(*max, a);
      *sum += a;
    }
  };
  double max = 0, sum = 0;
  row_abs(s.lambda(), &max, &sum);
  double column = max;
  for (const v1::ComplexMatrix& p : s.p()) {
    row_abs(p, &max, &sum);
    column += 2 * max * sum;
  }
  row_abs(s.b(), &max, &sum);
  return dt * std::max(column, 2 * sum);
}

// One channel's dense discretization (NaiveKernel; bilinear for C~).
double DenseDiscretization(double n, const ssm::Discretization& d, double zoh_norm) {
  if (d.kind == ssm::Discretization::Kind::kZoh) {
    return (kComplexProduct * ExpProducts(zoh_norm) + kComplexLuSolve) * Cube(n + 1) +
           kDenseSetup * n * n;
  }
  return kComplexLuSolve * Cube(n) + kDenseSetup * n * n;
}

// 2^a 3^b 5^c 7^d: FFTW's fast lengths.
bool SmoothLength(int64_t l) {
  for (int64_t p : {2, 3, 5, 7}) {
    while (l % p == 0) l /= p;
  }
  return l == 1;
}

MathWork KernelWork(const KernelPlan& plan) {
  const double h = static_cast<double>(plan.channels), m = static_cast<double>(plan.modes);
  const double n = 2 * m, r = static_cast<double>(plan.rank), l = static_cast<double>(plan.length);
  MathWork work;

  if (plan.is_init()) {
    const v1::SsmInit::Kind kind = plan.request->init().kind();
    const bool nplr = kind == v1::SsmInit::KIND_S4 || kind == v1::SsmInit::KIND_S4D_LEGS;
    work.system = (nplr ? kEigensolve * Cube(n) : 0) + h * m * (kInitEntry + kExplicitEntry * r);
  } else {
    work.system = h * m * (3 + r) * kExplicitEntry;
  }

  if (plan.convert != KernelPlan::Convert::kNone) {
    const uint64_t length = static_cast<uint64_t>(plan.length);
    const double products = std::popcount(length) + (std::bit_width(length) - 1);
    const double lu = plan.convert == KernelPlan::Convert::kFromCTilde ? kComplexLu : 0;
    work.c_tilde = h * (DenseDiscretization(n, ssm::Discretization::Bilinear(), 0) +
                        (kComplexProduct * products + lu) * Cube(n));
  }

  switch (plan.method) {
    case v1::KERNEL_METHOD_NAIVE: {
      const double bytes = n * n * sizeof(cdouble);
      const double matvec = bytes <= (1 << 20)   ? kMatVec
                            : bytes <= (8 << 20) ? kMatVecL3
                                                 : kMatVecFromMemory;
      const double steps = l * (matvec * n * n + kStep);
      if (plan.discretization.kind == ssm::Discretization::Kind::kZoh &&
          (!plan.is_init() || plan.channels <= 4096)) {
        for (int64_t c = 0; c < plan.channels; ++c) {
          work.kernel += DenseDiscretization(n, plan.discretization, ZohNorm(plan, c)) + steps;
        }
      } else if (plan.discretization.kind == ssm::Discretization::Kind::kZoh) {
        // Many channels of an init: bound them all by the largest step
        // rather than spend a logarithm on each.
        const double norm = plan.dt_max * InitNormBound(plan.request->init(), plan.measure);
        work.kernel = h * (DenseDiscretization(n, plan.discretization, norm) + steps);
      } else {
        work.kernel = h * (DenseDiscretization(n, plan.discretization, 0) + steps);
      }
      break;
    }
    case v1::KERNEL_METHOD_DPLR: {
      const double points = std::floor(l / 2) + 1, sets = (r + 1) * (r + 1);
      // kernel_dplr.cc's blocks of 32 channels hold sets x points values each.
      const double block_bytes = std::min(h, 32.0) * points * sets * sizeof(cdouble);
      const double per_point =
          plan.rank <= 1
              ? kPointLowRank + kPointFromMemory * std::min(1.0, block_bytes / (64 << 20))
              : kPointPerSet * sets;
      work.kernel = h * points * (m * (kCauchyPole + kCauchySet * sets) + per_point) +
                    h * m * sets * kCauchyPrep;
      if (!SmoothLength(plan.length)) work.kernel += h * kRoughFft * l * std::log2(l);
      break;
    }
    default: {  // DIAGONAL, as kernel_diag.cc blocks it
      const double block = std::min(l, std::max(16.0, std::floor(std::sqrt(l))));
      const double blocks = std::ceil(l / block);
      work.kernel = h * (blocks * block * (kDiagProduct * 2 * m + kDiagOutput) +
                         m * (kDiagMode + kDiagPower * (block + blocks)));
      break;
    }
  }
  work.kernel += h * l * kResponseValue + kCall;
  return work;
}

// The largest |entry| of BuildHippo's [A, B] (hippo.cc's formulas), which
// with N bounds its 1-norm.
double HippoMaxEntry(ssm::Measure measure, double n, double theta) {
  switch (measure) {
    case ssm::Measure::kLegS: return 2 * n;
    case ssm::Measure::kLegT: return n;
    case ssm::Measure::kLmu: return 2 * n / theta;
    case ssm::Measure::kLagT: return 1;
    case ssm::Measure::kFouT: return std::max(std::numbers::pi * n / 2, 2.0);
  }
  return 2 * n;
}

MathWork HippoWork(ssm::Measure measure, int n, double theta, double dt,
                   const ssm::Discretization& method) {
  const double size = n;
  MathWork work;
  work.kernel = kCall + kHippoEntry * size * size;
  if (method.kind == ssm::Discretization::Kind::kZoh) {
    const double norm = dt * size * HippoMaxEntry(measure, size, theta);
    work.kernel += (kRealProduct * ExpProducts(norm) + kRealLuSolve) * Cube(size + 1);
  } else {
    work.kernel += kRealLuSolve * Cube(size);
  }
  return work;
}

absl::Status CheckWork(const MathWork& work, absl::string_view what, const MathLimits& limits) {
  if (work.total() <= static_cast<double>(limits.max_work)) return absl::OkStatus();
  std::vector<std::string> parts;
  if (work.system > 0) parts.push_back(absl::StrFormat("building the system %.3g", work.system));
  if (work.c_tilde > 0) parts.push_back(absl::StrFormat("C~ %.3g", work.c_tilde));
  parts.push_back(absl::StrFormat("the %s %.3g", what == "BuildHippo" ? "matrices" : "kernel",
                                  work.kernel));
  return absl::ResourceExhaustedError(
      absl::StrFormat("%s would take about %.3g multiply-adds (%s), more than --max_math_work=%d",
                      what, work.total(), absl::StrJoin(parts, ", "), limits.max_work));
}

// ---------------------------------------------------------------------------
// Building, once admitted.

absl::StatusOr<ssm::DplrSystem> SystemFromInit(const v1::SsmInit& init, const KernelPlan& plan) {
  // 0 is the reference's None (no clip); the core refuses negatives by name.
  const double b_clip = !init.has_b_clip() ? ssm::kS4BClip
                        : init.b_clip() == 0 ? std::numeric_limits<double>::infinity()
                                             : init.b_clip();
  switch (init.kind()) {
    case v1::SsmInit::KIND_S4:
      return ssm::MakeS4Init(plan.measure, init.n(), init.channels(), plan.dt_min, plan.dt_max,
                             init.seed(), b_clip);
    case v1::SsmInit::KIND_S4D_LEGS:
      return ssm::MakeS4dInit(ssm::S4dInit::kLegS, init.n(), init.channels(), plan.dt_min,
                              plan.dt_max, init.seed(), b_clip);
    case v1::SsmInit::KIND_S4D_LIN:
      return ssm::MakeS4dInit(ssm::S4dInit::kLin, init.n(), init.channels(), plan.dt_min,
                              plan.dt_max, init.seed());
    default:  // KIND_S4D_INV (PlanInit checked the kind)
      return ssm::MakeS4dInit(ssm::S4dInit::kInv, init.n(), init.channels(), plan.dt_min,
                              plan.dt_max, init.seed());
  }
}

// Shapes are checked (PlanExplicit).
absl::StatusOr<ssm::DplrSystem> SystemFromExplicit(const v1::SsmSystem& s) {
  ssm::DplrSystem system;
  system.lambda = FromComplexMatrix(s.lambda());
  for (const v1::ComplexMatrix& p : s.p()) system.P.push_back(FromComplexMatrix(p));
  system.B = FromComplexMatrix(s.b());
  system.C = FromComplexMatrix(s.c());
  system.dt = Eigen::Map<const Eigen::VectorXd>(s.dt().data(), s.dt_size());
  // Finiteness and dt > 0: the core's check, whose messages name the fields.
  if (absl::Status status = ssm::ValidateDplr(system); !status.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("explicit_system: ", status.message()));
  }
  return system;
}


}  // namespace

absl::StatusOr<MathWork> EstimateWork(const v1::BuildHippoRequest& request) {
  absl::StatusOr<HippoPlan> plan = PlanHippo(request);
  if (!plan.ok()) return plan.status();
  return HippoWork(plan->measure, request.n(), plan->options.theta, request.dt(), plan->method);
}

absl::StatusOr<MathWork> EstimateWork(const v1::ComputeKernelRequest& request) {
  absl::StatusOr<KernelPlan> plan = PlanKernel(request);
  if (!plan.ok()) return plan.status();
  return KernelWork(*plan);
}

absl::StatusOr<v1::BuildHippoResponse> BuildHippo(const v1::BuildHippoRequest& request,
                                                  const MathLimits& limits, StopCheck stop) {
  absl::StatusOr<HippoPlan> plan = PlanHippo(request);
  if (!plan.ok()) return plan.status();
  const MathWork work =
      HippoWork(plan->measure, request.n(), plan->options.theta, request.dt(), plan->method);
  if (auto st = CheckWork(work, "BuildHippo", limits); !st.ok()) return st;

  if (absl::Status st = stop(); !st.ok()) return st;
  absl::StatusOr<ssm::ContinuousSystem> system =
      ssm::MakeHippo(plan->measure, request.n(), plan->options);
  if (!system.ok()) return system.status();
  if (absl::Status st = stop(); !st.ok()) return st;
  absl::StatusOr<ssm::DiscreteSystem> discrete =
      ssm::Discretize(*system, request.dt(), plan->method);
  if (!discrete.ok()) return discrete.status();

  v1::BuildHippoResponse response;
  ToMatrix(system->A, response.mutable_a());
  ToMatrix(system->B, response.mutable_b());
  ToMatrix(discrete->A, response.mutable_a_bar());
  ToMatrix(discrete->B, response.mutable_b_bar());
  return response;
}

absl::StatusOr<v1::BuildHippoResponse> BuildHippo(const v1::BuildHippoRequest& request,
                                                  StopCheck stop) {
  return BuildHippo(request, MathLimits(), stop);
}

absl::StatusOr<v1::ComputeKernelResponse> ComputeKernel(const v1::ComputeKernelRequest& request,
                                                        const MathLimits& limits,
                                                        StopCheck stop) {
  if (request.length() > limits.max_length) {
    return absl::ResourceExhaustedError(absl::StrCat("length = ", request.length(),
                                                     " exceeds --max_unary_length=",
                                                     limits.max_length));
  }
  absl::StatusOr<KernelPlan> plan = PlanKernel(request);
  if (!plan.ok()) return plan.status();

  // Sizes, then work, all before anything is built.
  if (plan->is_init()) {
    // The init builds (3 + r) matrices of channels x n/2 complex values;
    // refuse what could not even be sent as an explicit system.
    const int64_t system_bytes =
        plan->channels * plan->modes * int64_t{sizeof(cdouble)} * (3 + plan->rank);
    if (system_bytes > limits.max_message_bytes) {
      return absl::ResourceExhaustedError(absl::StrCat(
          "init.channels x init.n = ", plan->channels, " x ", plan->n(), " builds a system of ",
          system_bytes, " bytes, more than --max_message_bytes=", limits.max_message_bytes));
    }
  }
  const int64_t result_bytes = plan->channels * plan->length * int64_t{sizeof(double)};
  if (result_bytes > limits.max_message_bytes) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "the kernel (", plan->channels, " channels x ", plan->length, " steps, ", result_bytes,
        " bytes) exceeds --max_message_bytes=", limits.max_message_bytes));
  }
  if (auto st = CheckWork(KernelWork(*plan), "ComputeKernel", limits); !st.ok()) {
    if (plan->method != v1::KERNEL_METHOD_NAIVE) return st;
    return absl::ResourceExhaustedError(absl::StrCat(
        st.message(), "; NAIVE is the slow reference: DPLR or DIAGONAL give the same kernel"));
  }

  if (absl::Status st = stop(); !st.ok()) return st;
  absl::StatusOr<ssm::DplrSystem> system =
      plan->is_init() ? SystemFromInit(request.init(), *plan)
                      : SystemFromExplicit(request.explicit_system());
  if (!system.ok()) return system.status();

  const int length = static_cast<int>(plan->length);
  if (plan->convert != KernelPlan::Convert::kNone) {
    absl::StatusOr<RowMatrixXcd> c = plan->convert == KernelPlan::Convert::kToCTilde
                                         ? ssm::CTilde(*system, length, stop)
                                         : ssm::CFromCTilde(*system, length, stop);
    if (!c.ok()) return c.status();
    system->C = *std::move(c);
  }
  absl::StatusOr<RowMatrixXd> kernel;
  switch (plan->method) {
    case v1::KERNEL_METHOD_DPLR:
      kernel = ssm::DplrKernel(*system, length, stop);
      break;
    case v1::KERNEL_METHOD_NAIVE:
      kernel = ssm::NaiveKernel(*system, length, plan->discretization, stop);
      break;
    default:  // DIAGONAL (PlanKernel resolved the method)
      kernel = ssm::DiagonalKernel(*system, length, plan->discretization, stop);
      break;
  }
  if (!kernel.ok()) return kernel.status();

  v1::ComputeKernelResponse response;
  v1::Matrix* out = response.mutable_kernel();
  out->set_rows(static_cast<int>(kernel->rows()));
  out->set_cols(static_cast<int>(kernel->cols()));
  out->mutable_values()->Add(kernel->data(), kernel->data() + kernel->size());
  return response;
}

}  // namespace ssm::server
