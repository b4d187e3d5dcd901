// What a model is, as plain values: the core's mirror of the repository's
// `ModelConfig` (proto/ssm/v1/model_config.proto), so the core needs no
// protobuf. The server parses config.pbtxt and fills these structs; tests
// and tools may fill them directly.
//
// Thread safety: plain values.

#ifndef SSM_MODEL_SPEC_H_
#define SSM_MODEL_SPEC_H_

#include <string>
#include <variant>
#include <vector>

#include "absl/status/status.h"
#include "ssm/discretize.h"

namespace ssm {

enum class KernelKind { kDplr, kDiagonal };
// Pointwise functions, as torch.nn's: GELU is the exact erf form, SiLU is
// x sigmoid(x), ELU has alpha 1, softplus has beta 1 and threshold 20.
enum class ActivationKind { kGelu, kIdentity, kTanh, kRelu, kSilu, kSigmoid, kElu, kSoftplus };
enum class OutputLinearKind { kGlu, kLinear, kNone };
enum class NormPlacement { kNone, kPre, kPost };
enum class NormKind { kLayer, kBatch };  // BatchNorm with its running statistics
// How an S4 kernel maps a stored parameter x to the value it uses (the S4
// reference's param_transform): kNone x, kExp exp(x), kRelu max(x, 0) +
// 1e-4, kSigmoid 1 / (1 + exp(-x)), kSoftplus log(1 + exp(x)) (x above 20).
enum class ParamTransform { kNone, kExp, kRelu, kSigmoid, kSoftplus };

// A stack of S4 blocks (see model_config.proto's S4Stack for the formula).
// Weights use the official S4 implementation's names (model.h).
struct S4StackSpec {
  int n_layers = 1;
  int d_model = 0;  // H
  int d_state = 0;  // N; N/2 complex modes are kept
  KernelKind kernel = KernelKind::kDplr;
  // DPLR: bilinear only. Diagonal: ZOH or bilinear (ignored when dss).
  Discretization discretization = Discretization::Bilinear();
  // Diagonal only: the DSS kernel, which depends on the sequence length, so
  // the model is unary only (Model::streamable() is false).
  bool dss = false;
  int rank = 1;  // DPLR: 1..kMaxRank; diagonal: 0
  // S4Block kernels: dt = T_dt(inv_dt) (sinh(inv_dt) first if dt_fast),
  // Lambda = -T_re(A_real) - i T_im(A_imag). The minimal S4D block has its
  // own fixed forms and takes the defaults only.
  ParamTransform dt_transform = ParamTransform::kExp;
  ParamTransform real_transform = ParamTransform::kExp;
  ParamTransform imag_transform = ParamTransform::kNone;
  bool dt_fast = false;
  ActivationKind activation = ActivationKind::kGelu;
  OutputLinearKind output_linear = OutputLinearKind::kGlu;
  ActivationKind output_activation = ActivationKind::kIdentity;  // after kLinear only
  NormPlacement norm = NormPlacement::kPost;
  NormKind norm_kind = NormKind::kLayer;
  bool final_norm = false;  // one more norm after the last block (needs a norm)
  bool residual = true;
  bool bidirectional = false;  // convolutional mode only
  bool encoder = true;         // Linear d_input -> H
  bool decoder = true;         // Linear H -> d_output
  double layer_norm_eps = 1e-5;  // LayerNorm's or BatchNorm's eps
};

// A training-free HiPPO memory of a scalar input (d_input = 1).
struct HippoMemorySpec {
  enum class Measure { kLegT, kLegS };
  enum class Output { kCoefficients, kDelayed };
  Measure measure = Measure::kLegT;
  int n = 0;
  double window = 0;  // LegT window theta, in steps
  Output output = Output::kCoefficients;
  std::vector<double> delays;  // steps, each in [0, window - 1/2]; kDelayed only
};

struct ModelSpec {
  std::string name;
  std::string description;
  int d_input = 0;
  int d_output = 0;
  int max_length = 0;  // longest unary (convolutional) call
  std::variant<S4StackSpec, HippoMemorySpec> architecture;
};

// InvalidArgument naming the field when the values cannot describe a model:
// non-positive sizes, odd d_state, a rank the kernel kind does not allow,
// d_input/d_output that disagree with the architecture (no encoder means
// d_input == H, no decoder means d_output == H, a HiPPO memory has
// d_input 1 and d_output N or the number of delays), delays outside the
// window (the oldest whole sample sits at window - 1/2), LegS with delayed outputs, a non-finite or non-positive window.
absl::Status ValidateModelSpec(const ModelSpec& spec);

}  // namespace ssm

#endif  // SSM_MODEL_SPEC_H_
