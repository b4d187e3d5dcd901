// The names the Open Inference Protocol's answers use (oip_core.h says what
// they mean), apart so the body codec (oip_json.h) needs nothing of the
// model runtime.

#ifndef SSM_SERVER_OIP_NAMES_H_
#define SSM_SERVER_OIP_NAMES_H_

namespace ssm::server::oip {

// Every model's one input and one output tensor.
inline constexpr char kInputName[] = "input";
inline constexpr char kOutputName[] = "output";
inline constexpr char kServerName[] = "ssmserve";
inline constexpr char kPlatform[] = "ssmserve";
// The protocol extensions ServerMetadata lists.
inline constexpr const char* kExtensions[] = {"binary_tensor_data", "model_configuration",
                                              "sequence", "sequence(string_id)"};

}  // namespace ssm::server::oip

#endif  // SSM_SERVER_OIP_NAMES_H_
