#include "server/math_handlers.h"

#include <cmath>
#include <limits>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
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

absl::StatusOr<RowMatrixXcd> FromComplexMatrix(const v1::ComplexMatrix& m,
                                               const std::string& field) {
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
  RowMatrixXcd out(m.rows(), m.cols());
  for (int64_t i = 0; i < size; ++i) {
    out.data()[i] = cdouble(m.real(static_cast<int>(i)), m.imag(static_cast<int>(i)));
  }
  return out;
}

absl::StatusOr<ssm::DplrSystem> SystemFromInit(const v1::SsmInit& init,
                                               const MathLimits& limits) {
  if (init.n() > kMaxHippoN) {
    return absl::InvalidArgumentError(
        absl::StrCat("init.n must be <= ", kMaxHippoN, ", got ", init.n()));
  }
  // The init builds channels x n/2 complex values per matrix; refuse what
  // could not even be sent as an explicit system.
  const int64_t system_bytes = int64_t{std::max(init.channels(), 0)} *
                               std::max(init.n(), 0) / 2 * sizeof(cdouble) * 3;
  if (system_bytes > limits.max_message_bytes) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "init.channels x init.n = ", init.channels(), " x ", init.n(), " builds a system of ",
        system_bytes, " bytes, more than --max_message_bytes=", limits.max_message_bytes));
  }
  const double dt_min = init.dt_min() == 0 ? 1e-3 : init.dt_min();
  const double dt_max = init.dt_max() == 0 ? 1e-1 : init.dt_max();
  // 0 is the reference's None (no clip); the core refuses negatives by name.
  const double b_clip = !init.has_b_clip() ? ssm::kS4BClip
                        : init.b_clip() == 0 ? std::numeric_limits<double>::infinity()
                                             : init.b_clip();
  switch (init.kind()) {
    case v1::SsmInit::KIND_S4: {
      absl::StatusOr<ssm::Measure> measure = MeasureFromProto(init.measure(), "init.measure");
      if (!measure.ok()) return measure.status();
      return ssm::MakeS4Init(*measure, init.n(), init.channels(), dt_min, dt_max, init.seed(),
                             b_clip);
    }
    case v1::SsmInit::KIND_S4D_LEGS:
      return ssm::MakeS4dInit(ssm::S4dInit::kLegS, init.n(), init.channels(), dt_min, dt_max,
                              init.seed(), b_clip);
    case v1::SsmInit::KIND_S4D_LIN:
      return ssm::MakeS4dInit(ssm::S4dInit::kLin, init.n(), init.channels(), dt_min, dt_max,
                              init.seed());
    case v1::SsmInit::KIND_S4D_INV:
      return ssm::MakeS4dInit(ssm::S4dInit::kInv, init.n(), init.channels(), dt_min, dt_max,
                              init.seed());
    default:
      return absl::InvalidArgumentError(absl::StrCat(
          "init.kind must be S4, S4D_LEGS, S4D_LIN or S4D_INV, got ",
          static_cast<int>(init.kind())));
  }
}

absl::StatusOr<ssm::DplrSystem> SystemFromExplicit(const v1::SsmSystem& s) {
  ssm::DplrSystem system;
  absl::StatusOr<RowMatrixXcd> m = FromComplexMatrix(s.lambda(), "explicit_system.lambda");
  if (!m.ok()) return m.status();
  system.lambda = *std::move(m);
  for (int a = 0; a < s.p_size(); ++a) {
    m = FromComplexMatrix(s.p(a), absl::StrCat("explicit_system.p[", a, "]"));
    if (!m.ok()) return m.status();
    system.P.push_back(*std::move(m));
  }
  m = FromComplexMatrix(s.b(), "explicit_system.b");
  if (!m.ok()) return m.status();
  system.B = *std::move(m);
  m = FromComplexMatrix(s.c(), "explicit_system.c");
  if (!m.ok()) return m.status();
  system.C = *std::move(m);
  system.dt = Eigen::Map<const Eigen::VectorXd>(s.dt().data(), s.dt_size());
  // Shapes against each other, finiteness, dt > 0, the rank: the core's
  // check, whose messages name the fields.
  if (absl::Status status = ssm::ValidateDplr(system); !status.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("explicit_system: ", status.message()));
  }
  if (system.rank() > ssm::kMaxRank) {
    return absl::InvalidArgumentError(absl::StrCat("explicit_system.p has rank ", system.rank(),
                                                   ", at most ", ssm::kMaxRank, " is supported"));
  }
  return system;
}

}  // namespace

absl::StatusOr<v1::BuildHippoResponse> BuildHippo(const v1::BuildHippoRequest& request) {
  absl::StatusOr<ssm::Measure> measure = MeasureFromProto(request.measure(), "measure");
  if (!measure.ok()) return measure.status();
  if (request.n() < 1 || request.n() > kMaxHippoN) {
    return absl::InvalidArgumentError(
        absl::StrCat("n must be in [1, ", kMaxHippoN, "], got ", request.n()));
  }
  if (!std::isfinite(request.dt()) || request.dt() <= 0) {
    return absl::InvalidArgumentError(absl::StrCat("dt must be > 0, got ", request.dt()));
  }
  absl::StatusOr<ssm::Discretization> method = DiscretizationFromProto(request.discretization());
  if (!method.ok()) return method.status();
  ssm::HippoOptions options;
  if (request.theta() != 0) options.theta = request.theta();
  absl::StatusOr<ssm::ContinuousSystem> system = ssm::MakeHippo(*measure, request.n(), options);
  if (!system.ok()) return system.status();
  absl::StatusOr<ssm::DiscreteSystem> discrete = ssm::Discretize(*system, request.dt(), *method);
  if (!discrete.ok()) return discrete.status();

  v1::BuildHippoResponse response;
  ToMatrix(system->A, response.mutable_a());
  ToMatrix(system->B, response.mutable_b());
  ToMatrix(discrete->A, response.mutable_a_bar());
  ToMatrix(discrete->B, response.mutable_b_bar());
  return response;
}

absl::StatusOr<v1::ComputeKernelResponse> ComputeKernel(const v1::ComputeKernelRequest& request,
                                                        const MathLimits& limits) {
  if (request.length() < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("length must be >= 1, got ", request.length()));
  }
  if (request.length() > limits.max_length) {
    return absl::ResourceExhaustedError(absl::StrCat("length = ", request.length(),
                                                     " exceeds --max_unary_length=",
                                                     limits.max_length));
  }
  absl::StatusOr<ssm::Discretization> method = DiscretizationFromProto(request.discretization());
  if (!method.ok()) return method.status();

  absl::StatusOr<ssm::DplrSystem> system;
  bool c_is_c_tilde = false;
  switch (request.system_case()) {
    case v1::ComputeKernelRequest::kInit:
      system = SystemFromInit(request.init(), limits);
      break;
    case v1::ComputeKernelRequest::kExplicitSystem:
      system = SystemFromExplicit(request.explicit_system());
      c_is_c_tilde = request.explicit_system().c_is_c_tilde();
      break;
    default:
      return absl::InvalidArgumentError("system: set one of init and explicit_system");
  }
  if (!system.ok()) return system.status();

  const int64_t length = request.length();
  const int64_t result_bytes = int64_t{system->channels()} * length * sizeof(double);
  if (result_bytes > limits.max_message_bytes) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "the kernel (", system->channels(), " channels x ", length, " steps, ", result_bytes,
        " bytes) exceeds --max_message_bytes=", limits.max_message_bytes));
  }

  v1::KernelMethod kernel_method = request.method();
  if (kernel_method == v1::KERNEL_METHOD_UNSPECIFIED) {
    // A mode at Lambda = 0 (even-N FouT) makes DPLR's generating function
    // singular at omega = 1; the powers of NAIVE do not mind it.
    const bool zero_mode = (system->lambda.array() == cdouble(0, 0)).any();
    kernel_method = system->rank() == 0 ? v1::KERNEL_METHOD_DIAGONAL
                    : zero_mode         ? v1::KERNEL_METHOD_NAIVE
                                        : v1::KERNEL_METHOD_DPLR;
  }
  absl::StatusOr<RowMatrixXd> kernel;
  switch (kernel_method) {
    case v1::KERNEL_METHOD_DPLR: {
      if (!IsBilinear(*method)) {
        return absl::InvalidArgumentError(
            "discretization: the DPLR method is bilinear only (use NAIVE or DIAGONAL for "
            "others)");
      }
      if (!c_is_c_tilde) {
        absl::StatusOr<RowMatrixXcd> c_tilde = ssm::CTilde(*system, static_cast<int>(length));
        if (!c_tilde.ok()) return c_tilde.status();
        system->C = *std::move(c_tilde);
      }
      kernel = ssm::DplrKernel(*system, static_cast<int>(length));
      break;
    }
    case v1::KERNEL_METHOD_DIAGONAL:
    case v1::KERNEL_METHOD_NAIVE: {
      if (kernel_method == v1::KERNEL_METHOD_NAIVE) {
        // Dense powers: channels x L products of an N x N matrix (N = 2M).
        const int64_t n = 2 * int64_t{system->modes()};
        const double work = static_cast<double>(system->channels()) * length * n * n;
        if (work > static_cast<double>(limits.max_naive_work)) {
          return absl::ResourceExhaustedError(absl::StrCat(
              "NAIVE would take channels x length x N^2 = ", work,
              " multiply-adds, more than the server's limit of ", limits.max_naive_work,
              "; use DPLR or DIAGONAL"));
        }
      }
      if (c_is_c_tilde) {
        absl::StatusOr<RowMatrixXcd> c = ssm::CFromCTilde(*system, static_cast<int>(length));
        if (!c.ok()) return c.status();
        system->C = *std::move(c);
      }
      kernel = kernel_method == v1::KERNEL_METHOD_NAIVE
                   ? ssm::NaiveKernel(*system, static_cast<int>(length), *method)
                   : ssm::DiagonalKernel(*system, static_cast<int>(length), *method);
      break;
    }
    default:
      return absl::InvalidArgumentError(absl::StrCat(
          "method: unknown value ", static_cast<int>(kernel_method)));
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
