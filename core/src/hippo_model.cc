// Training-free HiPPO memories as models: a scalar stream in, its Legendre
// coefficients (or the input read back at fixed delays) out.

#include <cmath>
#include <vector>

#include <Eigen/Dense>

#include "absl/strings/str_cat.h"
#include "model_internal.h"
#include "model_weights.h"
#include "ssm/hippo.h"
#include "ssm/hippo_memory.h"

namespace ssm::internal {
namespace {

class HippoModel final : public Model {
 public:
  HippoModel(ModelSpec spec, uint64_t fingerprint, HippoMemory memory, Eigen::MatrixXd readout)
      : Model(std::move(spec), fingerprint),
        memory_(std::move(memory)),
        readout_(std::move(readout)) {}

  bool streamable() const override { return true; }
  size_t memory_bytes() const override {
    const size_t n = memory_.size();
    return (2 * n * n + readout_.size()) * sizeof(double);
  }

  // The memory is a recurrence (LegS is not even time-invariant), N is
  // small, and a step is O(N^2): the convolutional mode runs it too.
  absl::Status Forward(absl::Span<const double> x, int batch, int length,
                       absl::Span<double> y) const override {
    if (auto st = CheckForwardArgs(*this, x, batch, length, y); !st.ok()) return st;
    std::vector<double> state(batch * state_size(), 0.0), scratch;
    return Advance(x, batch, length, 0, absl::MakeSpan(state), y, scratch);
  }

 private:
  size_t state_size() const override { return memory_.size(); }

  absl::Status Advance(absl::Span<const double> x, int batch, int steps, int64_t position,
                       absl::Span<double> state, absl::Span<double> y,
                       std::vector<double>& /*scratch*/) const override {
    const int n = memory_.size(), outs = d_output();
    HippoMemory mem = memory_;
    for (int b = 0; b < batch; ++b) {
      double* c = &state[static_cast<size_t>(b) * n];
      if (auto st = mem.Restore(absl::MakeConstSpan(c, n), position); !st.ok()) return st;
      for (int t = 0; t < steps; ++t) {
        const size_t row = static_cast<size_t>(b) * steps + t;
        if (auto st = mem.Update(x[row]); !st.ok()) return st;
        Eigen::Map<Eigen::VectorXd> out(&y[row * outs], outs);
        if (readout_.size() == 0) {
          out = mem.coefficients();
        } else {
          out.noalias() = readout_ * mem.coefficients();
        }
      }
      std::copy(mem.coefficients().data(), mem.coefficients().data() + n, c);
    }
    return absl::OkStatus();
  }

  HippoMemory memory_;
  Eigen::MatrixXd readout_;  // delays x N; empty: the coefficients themselves
};

}  // namespace

absl::StatusOr<ContinuousSystem> HippoMatrices(const HippoMemorySpec& h) {
  return h.measure == HippoMemorySpec::Measure::kLegT
             ? MakeHippo(Measure::kLmu, h.n, HippoOptions{.theta = h.window})
             : MakeHippo(Measure::kLegS, h.n);
}

absl::StatusOr<std::shared_ptr<const Model>> LoadHippoMemory(const ModelSpec& spec,
                                                             const HippoMemorySpec& h,
                                                             const SafeTensors* file) {
  using M = HippoMemorySpec::Measure;
  const bool legt = h.measure == M::kLegT;
  absl::StatusOr<HippoMemory> mem = legt ? HippoMemory::LegT(h.n, h.window)
                                         : HippoMemory::LegS(h.n);
  if (!mem.ok()) return mem.status();
  if (file != nullptr) {
    // The file pins the matrices the model was made with.
    absl::StatusOr<ContinuousSystem> sys = HippoMatrices(h);
    if (!sys.ok()) return sys.status();
    WeightReader w(*file);
    auto a = w.Take("hippo.A", {{h.n, h.n}});
    if (!a.ok()) return a.status();
    auto b = w.Take("hippo.B", {{h.n}});
    if (!b.ok()) return b.status();
    const double da = (Eigen::Map<const Eigen::Matrix<double, -1, -1, Eigen::RowMajor>>(
                           a->data(), h.n, h.n) - sys->A).cwiseAbs().maxCoeff();
    const double db = (Eigen::Map<const Eigen::VectorXd>(b->data(), h.n) - sys->B)
                          .cwiseAbs().maxCoeff();
    if (!(da <= 1e-12 * std::max(1.0, sys->A.cwiseAbs().maxCoeff())) ||
        !(db <= 1e-12 * std::max(1.0, sys->B.cwiseAbs().maxCoeff()))) {
      return absl::InvalidArgumentError(absl::StrCat(
          file->source(), ": 'hippo.A'/'hippo.B' differ from the config's HiPPO matrices (max ",
          std::max(da, db), ")"));
    }
    if (auto st = w.CheckAllUsed(); !st.ok()) return st;
  }
  Eigen::MatrixXd readout;
  if (h.output == HippoMemorySpec::Output::kDelayed) {
    std::vector<double> ages;
    for (double d : h.delays) ages.push_back(mem->SampleAge(d));
    absl::StatusOr<Eigen::MatrixXd> e = mem->EvalMatrix(ages);
    if (!e.ok()) return e.status();
    readout = *std::move(e);
  }
  return std::shared_ptr<const Model>(std::make_shared<HippoModel>(
      spec, FingerprintOf(spec, file), *std::move(mem), std::move(readout)));
}

}  // namespace ssm::internal
