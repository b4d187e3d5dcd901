// Small models for the model and session suites: S4 stacks of each
// supported architecture with random weights, HiPPO memories, and a way to
// feed a session part of an input.

#ifndef SSM_TESTS_CORE_TEST_MODELS_H_
#define SSM_TESTS_CORE_TEST_MODELS_H_

#include <algorithm>
#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include <gtest/gtest.h>

#include "ssm/model.h"
#include "ssm/session.h"

namespace ssm::testing {

inline ModelSpec S4Spec(S4StackSpec s4, int d_input = 3, int d_output = 2,
                        int max_length = 600) {
  ModelSpec spec;
  spec.name = "test-s4";
  spec.d_input = s4.encoder ? d_input : s4.d_model;
  spec.d_output = s4.decoder ? d_output : s4.d_model;
  spec.max_length = max_length;
  spec.architecture = s4;
  return spec;
}

// d_input 1 (a scalar stream), max_length 4096.
inline ModelSpec HippoSpec(HippoMemorySpec h, int d_output) {
  ModelSpec spec;
  spec.name = "hippo";
  spec.d_input = 1;
  spec.d_output = d_output;
  spec.max_length = 4096;
  spec.architecture = std::move(h);
  return spec;
}

// The tensors as a parsed weights file, as LoadModel reads one.
inline SafeTensors ToFile(const std::vector<TensorToWrite>& tensors, const std::string& name) {
  absl::StatusOr<std::string> bytes = SerializeSafeTensors(tensors);
  EXPECT_TRUE(bytes.ok()) << bytes.status();
  absl::StatusOr<SafeTensors> file = SafeTensors::Parse(*std::move(bytes), name);
  EXPECT_TRUE(file.ok()) << file.status();
  return *std::move(file);
}

// The model with random weights from `seed` (the same seed, the same
// weights and fingerprint); null, and a failure, when it does not load.
inline std::shared_ptr<const Model> Load(const ModelSpec& spec, uint64_t seed = 7) {
  absl::StatusOr<std::vector<TensorToWrite>> w = InitS4StackWeights(spec, seed, DType::kF64);
  EXPECT_TRUE(w.ok()) << w.status();
  const SafeTensors file = ToFile(*w, "mem.safetensors");
  absl::StatusOr<std::shared_ptr<const Model>> m = LoadModel(spec, &file);
  EXPECT_TRUE(m.ok()) << m.status();
  return m.ok() ? *m : nullptr;
}

// The architectures the stack supports, each a different path.
inline std::vector<std::pair<std::string, S4StackSpec>> Variants() {
  std::vector<std::pair<std::string, S4StackSpec>> v;
  S4StackSpec base;
  base.n_layers = 2;
  base.d_model = 5;
  base.d_state = 8;
  v.push_back({"dplr-post-glu", base});
  S4StackSpec r2 = base;
  r2.rank = 2;
  r2.norm = NormPlacement::kPre;
  v.push_back({"dplr2-pre", r2});
  S4StackSpec diag = base;
  diag.kernel = KernelKind::kDiagonal;
  diag.rank = 0;
  diag.discretization = Discretization::Zoh();
  diag.output_linear = OutputLinearKind::kLinear;
  v.push_back({"diag-zoh-linear", diag});
  S4StackSpec diag_bl = diag;
  diag_bl.discretization = Discretization::Bilinear();
  diag_bl.residual = false;
  diag_bl.norm = NormPlacement::kNone;
  diag_bl.activation = ActivationKind::kIdentity;
  v.push_back({"diag-bilinear-plain", diag_bl});
  S4StackSpec plain = base;  // a single SSM layer, nothing around it
  plain.n_layers = 1;
  plain.encoder = plain.decoder = plain.residual = false;
  plain.norm = NormPlacement::kNone;
  plain.output_linear = OutputLinearKind::kNone;
  plain.activation = ActivationKind::kIdentity;
  v.push_back({"plain-ssm", plain});
  // The training script's layouts: BatchNorm (prenorm) with a final norm,
  // SiLU, a plain linear then tanh, other parameterizations of dt and A.
  S4StackSpec training = base;
  training.rank = 2;
  training.norm = NormPlacement::kPre;
  training.norm_kind = NormKind::kBatch;
  training.final_norm = true;
  training.activation = ActivationKind::kSilu;
  training.output_linear = OutputLinearKind::kLinear;
  training.output_activation = ActivationKind::kTanh;
  training.dt_transform = ParamTransform::kSoftplus;
  training.real_transform = ParamTransform::kRelu;
  training.dt_fast = true;
  v.push_back({"dplr-batchnorm-final-softplus", training});
  S4StackSpec diag_t = diag;
  diag_t.norm = NormPlacement::kPost;
  diag_t.activation = ActivationKind::kElu;
  diag_t.dt_transform = ParamTransform::kSigmoid;
  diag_t.real_transform = ParamTransform::kSoftplus;
  diag_t.imag_transform = ParamTransform::kExp;
  diag_t.output_activation = ActivationKind::kSoftplus;
  v.push_back({"diag-transforms-elu", diag_t});
  return v;
}

// Steps [t0, t0 + len) of x (batch x total x d_in) through a session, as
// one chunk: its outputs, batch x len x d_out.
inline std::vector<double> RunRange(Session& s, const std::vector<double>& x, int total, int t0,
                                    int len) {
  const int batch = s.batch(), din = s.model().d_input(), dout = s.model().d_output();
  std::vector<double> in(static_cast<size_t>(batch) * len * din), out(batch * len * dout);
  for (int b = 0; b < batch; ++b)
    std::copy(&x[(b * total + t0) * din], &x[(b * total + t0 + len) * din], &in[b * len * din]);
  const absl::Status st = s.Run(in, len, absl::MakeSpan(out));
  EXPECT_TRUE(st.ok()) << st;
  return out;
}

}  // namespace ssm::testing

#endif  // SSM_TESTS_CORE_TEST_MODELS_H_
