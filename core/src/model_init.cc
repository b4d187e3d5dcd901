// Deterministic untrained weights in the S4 reference's layout.

#include <cmath>
#include <random>

#include "absl/strings/str_cat.h"
#include "ssm/dplr.h"
#include "ssm/hippo.h"
#include "ssm/model.h"
#include "model_internal.h"

namespace ssm {
namespace {

// Portable draws (std::uniform_real_distribution is implementation-defined):
// the same seed gives the same file on every platform.
class Rng {
 public:
  explicit Rng(uint64_t seed) : gen_(seed) {}
  double Uniform() { return static_cast<double>(gen_() >> 11) * 0x1.0p-53; }
  double Symmetric(double bound) { return (2 * Uniform() - 1) * bound; }
  double Normal() {
    const double u = 1.0 - Uniform(), v = Uniform();
    return std::sqrt(-2 * std::log(u)) * std::cos(2 * M_PI * v);
  }

 private:
  std::mt19937_64 gen_;
};

void AddComplex(std::vector<TensorToWrite>& out, const std::string& name,
                std::vector<int64_t> shape, const RowMatrixXcd& m, DType dtype) {
  TensorToWrite t{name, dtype, std::move(shape), {}};
  for (Eigen::Index r = 0; r < m.rows(); ++r)
    for (Eigen::Index j = 0; j < m.cols(); ++j) {
      t.values.push_back(m(r, j).real());
      t.values.push_back(m(r, j).imag());
    }
  out.push_back(std::move(t));
}

void AddLinear(std::vector<TensorToWrite>& out, const std::string& prefix, int rows, int cols,
               Rng& rng, DType dtype) {
  const double bound = 1.0 / std::sqrt(static_cast<double>(cols));
  TensorToWrite w{prefix + ".weight", dtype, {rows, cols}, {}};
  for (int i = 0; i < rows * cols; ++i) w.values.push_back(rng.Symmetric(bound));
  TensorToWrite b{prefix + ".bias", dtype, {rows}, {}};
  for (int i = 0; i < rows; ++i) b.values.push_back(rng.Symmetric(bound));
  out.push_back(std::move(w));
  out.push_back(std::move(b));
}

// The reference's inv_transform: the stored value that `t` maps to p > 0.
double InverseTransform(ParamTransform t, double p) {
  switch (t) {
    case ParamTransform::kNone:
    case ParamTransform::kRelu:  // p - 1e-4 would be exact; the reference stores p
      return p;
    case ParamTransform::kExp:
      return std::log(p);
    case ParamTransform::kSigmoid:
      return std::log(p / (1 - p));
    case ParamTransform::kSoftplus:
      return std::log(std::expm1(p));
  }
  return p;
}

void AddNorm(std::vector<TensorToWrite>& out, const std::string& prefix, int h, NormKind kind,
             DType dtype) {
  out.push_back({prefix + ".weight", dtype, {h}, std::vector<double>(h, 1.0)});
  out.push_back({prefix + ".bias", dtype, {h}, std::vector<double>(h, 0.0)});
  if (kind == NormKind::kBatch) {  // PyTorch's initial running statistics
    out.push_back({prefix + ".running_mean", dtype, {h}, std::vector<double>(h, 0.0)});
    out.push_back({prefix + ".running_var", dtype, {h}, std::vector<double>(h, 1.0)});
  }
}

}  // namespace

absl::StatusOr<std::vector<TensorToWrite>> InitS4StackWeights(const ModelSpec& spec,
                                                              uint64_t seed, DType dtype) {
  if (auto st = ValidateModelSpec(spec); !st.ok()) return st;
  const auto* s4 = std::get_if<S4StackSpec>(&spec.architecture);
  if (s4 == nullptr) return absl::InvalidArgumentError("not an S4 stack");
  const int h = s4->d_model, n = s4->d_state, m = n / 2;
  Rng rng(seed);
  std::vector<TensorToWrite> out;
  if (s4->encoder) AddLinear(out, "encoder", h, spec.d_input, rng, dtype);
  if (s4->decoder) AddLinear(out, "decoder", spec.d_output, h, rng, dtype);
  for (int i = 0; i < s4->n_layers; ++i) {
    const std::string k = absl::StrCat("s4_layers.", i, ".layer.kernel.");
    const bool dplr = s4->kernel == KernelKind::kDplr;
    absl::StatusOr<DplrSystem> sys =
        dplr ? MakeS4Init(Measure::kLegS, n, h, 1e-3, 1e-1, seed + 101 * i)
             : MakeS4dInit(S4dInit::kLegS, n, h, 1e-3, 1e-1, seed + 101 * i);
    if (!sys.ok()) return sys.status();
    TensorToWrite inv_dt{k + "inv_dt", dtype, {h, 1}, {}};
    for (int r = 0; r < h; ++r) {
      // dt_fast stores asinh of the transform's argument.
      const double stored = InverseTransform(s4->dt_transform, sys->dt(r));
      inv_dt.values.push_back(s4->dt_fast ? std::asinh(stored) : stored);
    }
    TensorToWrite a_real{k + "A_real", dtype, {h, m}, {}}, a_imag{k + "A_imag", dtype, {h, m}, {}};
    for (int r = 0; r < h; ++r)
      for (int j = 0; j < m; ++j) {
        // Lambda = -T_re(A_real) - i T_im(A_imag).
        a_real.values.push_back(InverseTransform(s4->real_transform, -sys->lambda(r, j).real()));
        a_imag.values.push_back(InverseTransform(s4->imag_transform, -sys->lambda(r, j).imag()));
      }
    out.push_back(std::move(inv_dt));
    out.push_back(std::move(a_real));
    out.push_back(std::move(a_imag));
    AddComplex(out, k + "B", {1, h, m, 2}, sys->B, dtype);
    RowMatrixXcd c = sys->C;
    const int channels = s4->bidirectional ? 2 : 1;
    if (channels == 2) {
      RowMatrixXcd both(2 * h, m);
      both << sys->C, sys->C.reverse();
      c = both;
    }
    AddComplex(out, k + "C", {channels, h, m, 2}, c, dtype);
    if (dplr) {
      RowMatrixXcd p(s4->rank * h, m);
      for (int a = 0; a < s4->rank; ++a) {
        // MakeS4Init builds rank 1; further ranks get small random P.
        for (int r = 0; r < h; ++r)
          for (int j = 0; j < m; ++j) {
            if (a < sys->rank()) {
              p(a * h + r, j) = sys->P[a](r, j);
              continue;
            }
            // Imaginary part drawn first, in its own statement (see
            // FillCAndDt in dplr.cc): the same seed, the same weights on
            // every compiler.
            const double imag = 0.1 * rng.Normal();
            const double real = 0.1 * rng.Normal();
            p(a * h + r, j) = cdouble(real, imag);
          }
      }
      AddComplex(out, k + "P", {s4->rank, h, m, 2}, p, dtype);
      out.push_back({k + "l_kernel", DType::kI64, {}, {0.0}});
    }
    TensorToWrite d{absl::StrCat("s4_layers.", i, ".layer.D"), dtype, {1, h}, {}};
    for (int r = 0; r < h; ++r) d.values.push_back(rng.Normal());
    out.push_back(std::move(d));
    if (s4->output_linear != OutputLinearKind::kNone) {
      const int rows = s4->output_linear == OutputLinearKind::kGlu ? 2 * h : h;
      AddLinear(out, absl::StrCat("s4_layers.", i, ".output_linear.0"), rows, h, rng, dtype);
    }
    if (s4->norm != NormPlacement::kNone) {
      AddNorm(out, absl::StrCat("norms.", i), h, s4->norm_kind, dtype);
    }
  }
  if (s4->final_norm) AddNorm(out, "final_norm", h, s4->norm_kind, dtype);
  return out;
}

absl::StatusOr<std::vector<TensorToWrite>> HippoMemoryWeights(const ModelSpec& spec) {
  if (auto st = ValidateModelSpec(spec); !st.ok()) return st;
  const auto* h = std::get_if<HippoMemorySpec>(&spec.architecture);
  if (h == nullptr) return absl::InvalidArgumentError("not a HiPPO memory");
  absl::StatusOr<ContinuousSystem> sys = internal::HippoMatrices(*h);
  if (!sys.ok()) return sys.status();
  TensorToWrite a{"hippo.A", DType::kF64, {h->n, h->n}, {}};
  for (int r = 0; r < h->n; ++r)
    for (int c = 0; c < h->n; ++c) a.values.push_back(sys->A(r, c));
  TensorToWrite b{"hippo.B", DType::kF64, {h->n}, {sys->B.data(), sys->B.data() + h->n}};
  return std::vector<TensorToWrite>{std::move(a), std::move(b)};
}

}  // namespace ssm
