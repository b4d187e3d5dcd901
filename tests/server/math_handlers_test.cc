// The Math service's logic, called directly: the wire messages carry
// exactly what the core computes, and bad requests get exact codes.

#include "server/math_handlers.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <atomic>
#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "ssm/discretize.h"
#include "ssm/dplr.h"
#include "ssm/hippo.h"
#include "ssm/kernel.h"

namespace ssm::server {
namespace {

using ::testing::HasSubstr;

void ExpectMatrixEq(const v1::Matrix& got, const Eigen::MatrixXd& want) {
  ASSERT_EQ(got.rows(), want.rows());
  ASSERT_EQ(got.cols(), want.cols());
  ASSERT_EQ(got.values_size(), want.size());
  for (int r = 0; r < want.rows(); ++r) {
    for (int c = 0; c < want.cols(); ++c) {
      ASSERT_EQ(got.values(r * want.cols() + c), want(r, c)) << r << "," << c;
    }
  }
}

double MaxAbsDiff(const v1::Matrix& a, const v1::Matrix& b) {
  EXPECT_EQ(a.values_size(), b.values_size());
  double d = 0;
  for (int i = 0; i < a.values_size() && i < b.values_size(); ++i) {
    d = std::max(d, std::abs(a.values(i) - b.values(i)));
  }
  return d;
}

double MaxAbs(const v1::Matrix& a) {
  double m = 0;
  for (double v : a.values()) m = std::max(m, std::abs(v));
  return m;
}

void SetComplex(const RowMatrixXcd& m, v1::ComplexMatrix* out) {
  out->set_rows(static_cast<int>(m.rows()));
  out->set_cols(static_cast<int>(m.cols()));
  for (Eigen::Index i = 0; i < m.size(); ++i) {
    out->add_real(m.data()[i].real());
    out->add_imag(m.data()[i].imag());
  }
}

v1::SsmSystem ToProto(const DplrSystem& s, bool c_is_c_tilde) {
  v1::SsmSystem out;
  SetComplex(s.lambda, out.mutable_lambda());
  for (const RowMatrixXcd& p : s.P) SetComplex(p, out.add_p());
  SetComplex(s.B, out.mutable_b());
  SetComplex(s.C, out.mutable_c());
  for (Eigen::Index h = 0; h < s.dt.size(); ++h) out.add_dt(s.dt[h]);
  out.set_c_is_c_tilde(c_is_c_tilde);
  return out;
}

TEST(BuildHippoTest, MatchesTheCoreExactly) {
  v1::BuildHippoRequest request;
  request.set_measure(v1::HIPPO_MEASURE_LMU);
  request.set_n(6);
  request.set_theta(2.5);
  request.set_dt(0.1);
  request.mutable_discretization()->set_kind(v1::DISCRETIZATION_KIND_ZOH);
  absl::StatusOr<v1::BuildHippoResponse> response = BuildHippo(request);
  ASSERT_TRUE(response.ok()) << response.status();

  HippoOptions options;
  options.theta = 2.5;
  const ContinuousSystem system = *MakeHippo(Measure::kLmu, 6, options);
  const DiscreteSystem discrete = *Discretize(system, 0.1, Discretization::Zoh());
  ExpectMatrixEq(response->a(), system.A);
  ExpectMatrixEq(response->b(), system.B);
  ExpectMatrixEq(response->a_bar(), discrete.A);
  ExpectMatrixEq(response->b_bar(), discrete.B);
}

TEST(BuildHippoTest, DefaultsAreBilinearAndThetaOne) {
  v1::BuildHippoRequest request;
  request.set_measure(v1::HIPPO_MEASURE_LEGS);
  request.set_n(4);
  request.set_dt(0.5);
  absl::StatusOr<v1::BuildHippoResponse> response = BuildHippo(request);
  ASSERT_TRUE(response.ok()) << response.status();
  const ContinuousSystem system = *MakeHippo(Measure::kLegS, 4);
  ExpectMatrixEq(response->a_bar(), Discretize(system, 0.5, Discretization::Bilinear())->A);

  // alpha wins over kind: GBT(1) is backward Euler.
  request.mutable_discretization()->set_kind(v1::DISCRETIZATION_KIND_ZOH);
  request.mutable_discretization()->set_alpha(1.0);
  response = BuildHippo(request);
  ASSERT_TRUE(response.ok());
  ExpectMatrixEq(response->a_bar(), Discretize(system, 0.5, Discretization::BackwardEuler())->A);
}

TEST(BuildHippoTest, BadRequestsNameTheField) {
  v1::BuildHippoRequest request;
  request.set_n(4);
  request.set_dt(0.1);
  absl::Status s = BuildHippo(request).status();  // measure unspecified
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("measure"));

  request.set_measure(v1::HIPPO_MEASURE_LEGT);
  request.set_n(0);
  EXPECT_EQ(BuildHippo(request).status().code(), absl::StatusCode::kInvalidArgument);
  request.set_n(kMaxHippoN + 1);
  s = BuildHippo(request).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("n must be in [1, 1024]"));

  request.set_n(4);
  request.set_dt(0);
  s = BuildHippo(request).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("dt must be > 0"));

  request.set_dt(0.1);
  request.mutable_discretization()->set_alpha(1.5);
  s = BuildHippo(request).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("discretization.alpha"));

  request.clear_discretization();
  request.set_measure(v1::HIPPO_MEASURE_LMU);
  request.set_theta(-1);  // the core names it
  EXPECT_EQ(BuildHippo(request).status().code(), absl::StatusCode::kInvalidArgument);

  // A finite dt whose discrete matrices overflow: refused, never Inf/NaN
  // entries with OK.
  request.set_measure(v1::HIPPO_MEASURE_LEGS);
  request.set_dt(1e308);
  request.mutable_discretization()->set_alpha(0);  // forward Euler
  s = BuildHippo(request).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("overflows at dt = 1e+308"));
}

v1::ComputeKernelRequest S4InitRequest(v1::KernelMethod method, int length) {
  v1::ComputeKernelRequest request;
  v1::SsmInit* init = request.mutable_init();
  init->set_kind(v1::SsmInit::KIND_S4);
  init->set_measure(v1::HIPPO_MEASURE_LEGS);
  init->set_n(16);
  init->set_channels(3);
  init->set_seed(7);
  request.set_method(method);
  request.set_length(length);
  return request;
}

TEST(ComputeKernelTest, ThreeMethodsAgreeOnAnS4Init) {
  const int length = 50;
  absl::StatusOr<v1::ComputeKernelResponse> dplr =
      ComputeKernel(S4InitRequest(v1::KERNEL_METHOD_DPLR, length), {});
  absl::StatusOr<v1::ComputeKernelResponse> naive =
      ComputeKernel(S4InitRequest(v1::KERNEL_METHOD_NAIVE, length), {});
  absl::StatusOr<v1::ComputeKernelResponse> unspecified =
      ComputeKernel(S4InitRequest(v1::KERNEL_METHOD_UNSPECIFIED, length), {});
  ASSERT_TRUE(dplr.ok()) << dplr.status();
  ASSERT_TRUE(naive.ok()) << naive.status();
  ASSERT_TRUE(unspecified.ok()) << unspecified.status();
  EXPECT_EQ(dplr->kernel().rows(), 3);
  EXPECT_EQ(dplr->kernel().cols(), length);
  EXPECT_LE(MaxAbsDiff(dplr->kernel(), naive->kernel()), 1e-9 * MaxAbs(naive->kernel()));
  EXPECT_EQ(MaxAbsDiff(dplr->kernel(), unspecified->kernel()), 0.0);  // rank 1: DPLR

  // Exactly the core's numbers: the same init, C~ first, DplrKernel.
  DplrSystem system = *MakeS4Init(Measure::kLegS, 16, 3, 1e-3, 1e-1, 7);
  system.C = *CTilde(system, length);
  const RowMatrixXd want = *DplrKernel(system, length);
  for (int i = 0; i < want.size(); ++i) ASSERT_EQ(dplr->kernel().values(i), want.data()[i]);
}

// Even-N FouT has a mode at Lambda = 0: DPLR refuses it by name, and an
// unspecified method falls back to NAIVE instead of failing.
TEST(ComputeKernelTest, EvenFouTFallsBackToNaive) {
  v1::ComputeKernelRequest request = S4InitRequest(v1::KERNEL_METHOD_DPLR, 40);
  request.mutable_init()->set_measure(v1::HIPPO_MEASURE_FOUT);
  request.mutable_init()->set_n(8);
  const absl::Status dplr = ComputeKernel(request, {}).status();
  EXPECT_EQ(dplr.code(), absl::StatusCode::kInvalidArgument) << dplr;
  request.set_method(v1::KERNEL_METHOD_UNSPECIFIED);
  absl::StatusOr<v1::ComputeKernelResponse> unspecified = ComputeKernel(request, {});
  request.set_method(v1::KERNEL_METHOD_NAIVE);
  absl::StatusOr<v1::ComputeKernelResponse> naive = ComputeKernel(request, {});
  ASSERT_TRUE(unspecified.ok()) << unspecified.status();
  ASSERT_TRUE(naive.ok()) << naive.status();
  EXPECT_EQ(MaxAbsDiff(unspecified->kernel(), naive->kernel()), 0.0);
  EXPECT_GT(MaxAbs(naive->kernel()), 0.0);
}

// b_clip reaches the init: unset is the reference's 2, 0 switches it off,
// a negative bound is refused by name.
TEST(ComputeKernelTest, InitBClipOption) {
  v1::ComputeKernelRequest request = S4InitRequest(v1::KERNEL_METHOD_NAIVE, 20);
  request.mutable_init()->set_n(32);  // LegS B~ has |Im| > 2 at N = 32
  request.mutable_init()->set_channels(1);
  auto kernel_with = [&](const DplrSystem& s) {
    return *NaiveKernel(s, 20, Discretization::Bilinear());
  };
  auto equals = [](const v1::ComputeKernelResponse& r, const RowMatrixXd& want) {
    for (int i = 0; i < want.size(); ++i)
      if (r.kernel().values(i) != want.data()[i]) return false;
    return true;
  };
  absl::StatusOr<v1::ComputeKernelResponse> unset = ComputeKernel(request, {});
  ASSERT_TRUE(unset.ok()) << unset.status();
  EXPECT_TRUE(equals(*unset, kernel_with(*MakeS4Init(Measure::kLegS, 32, 1, 1e-3, 1e-1, 7))));
  request.mutable_init()->set_b_clip(0);
  absl::StatusOr<v1::ComputeKernelResponse> off = ComputeKernel(request, {});
  ASSERT_TRUE(off.ok()) << off.status();
  EXPECT_TRUE(equals(*off, kernel_with(*MakeS4Init(Measure::kLegS, 32, 1, 1e-3, 1e-1, 7,
                                                   std::numeric_limits<double>::infinity()))));
  EXPECT_FALSE(equals(*off, kernel_with(*MakeS4Init(Measure::kLegS, 32, 1, 1e-3, 1e-1, 7))));
  request.mutable_init()->set_b_clip(-1);
  const absl::Status bad = ComputeKernel(request, {}).status();
  EXPECT_EQ(bad.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(bad.message(), HasSubstr("b_clip"));
}

TEST(ComputeKernelTest, DiagonalInitAgreesWithNaive) {
  v1::ComputeKernelRequest request;
  request.mutable_init()->set_kind(v1::SsmInit::KIND_S4D_LIN);
  request.mutable_init()->set_n(8);
  request.mutable_init()->set_channels(2);
  request.set_length(40);
  request.mutable_discretization()->set_kind(v1::DISCRETIZATION_KIND_ZOH);
  absl::StatusOr<v1::ComputeKernelResponse> diag = ComputeKernel(request, {});  // rank 0
  request.set_method(v1::KERNEL_METHOD_NAIVE);
  absl::StatusOr<v1::ComputeKernelResponse> naive = ComputeKernel(request, {});
  ASSERT_TRUE(diag.ok()) << diag.status();
  ASSERT_TRUE(naive.ok()) << naive.status();
  EXPECT_LE(MaxAbsDiff(diag->kernel(), naive->kernel()), 1e-9 * MaxAbs(naive->kernel()));
}

TEST(ComputeKernelTest, ExplicitSystemWithCOrCTilde) {
  const int length = 32;
  const DplrSystem system = *MakeS4Init(Measure::kLegS, 8, 2, 1e-2, 1e-1, 3);
  v1::ComputeKernelRequest with_c;
  *with_c.mutable_explicit_system() = ToProto(system, false);
  with_c.set_length(length);
  with_c.set_method(v1::KERNEL_METHOD_DPLR);
  absl::StatusOr<v1::ComputeKernelResponse> from_c = ComputeKernel(with_c, {});
  ASSERT_TRUE(from_c.ok()) << from_c.status();

  DplrSystem tilde = system;
  tilde.C = *CTilde(system, length);
  v1::ComputeKernelRequest with_tilde = with_c;
  *with_tilde.mutable_explicit_system() = ToProto(tilde, true);
  absl::StatusOr<v1::ComputeKernelResponse> from_tilde = ComputeKernel(with_tilde, {});
  ASSERT_TRUE(from_tilde.ok()) << from_tilde.status();
  EXPECT_LE(MaxAbsDiff(from_c->kernel(), from_tilde->kernel()), 1e-12 * MaxAbs(from_c->kernel()));

  // NAIVE maps C~ back to C.
  with_tilde.set_method(v1::KERNEL_METHOD_NAIVE);
  absl::StatusOr<v1::ComputeKernelResponse> naive = ComputeKernel(with_tilde, {});
  ASSERT_TRUE(naive.ok()) << naive.status();
  EXPECT_LE(MaxAbsDiff(from_c->kernel(), naive->kernel()), 1e-9 * MaxAbs(from_c->kernel()));
}

TEST(ComputeKernelTest, BadRequestsGetExactCodes) {
  v1::ComputeKernelRequest request = S4InitRequest(v1::KERNEL_METHOD_DPLR, 0);
  absl::Status s = ComputeKernel(request, {}).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("length must be >= 1"));

  request.set_length(10);
  request.mutable_discretization()->set_kind(v1::DISCRETIZATION_KIND_ZOH);
  s = ComputeKernel(request, {}).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("bilinear only"));

  request.clear_discretization();
  request.mutable_init()->set_kind(v1::SsmInit::KIND_UNSPECIFIED);
  EXPECT_EQ(ComputeKernel(request, {}).status().code(), absl::StatusCode::kInvalidArgument);
  request.mutable_init()->set_kind(v1::SsmInit::KIND_S4);
  request.mutable_init()->set_measure(v1::HIPPO_MEASURE_LMU);  // no symmetric low rank
  EXPECT_EQ(ComputeKernel(request, {}).status().code(), absl::StatusCode::kInvalidArgument);
  request.mutable_init()->set_measure(v1::HIPPO_MEASURE_LEGS);
  request.mutable_init()->set_n(7);  // odd
  EXPECT_EQ(ComputeKernel(request, {}).status().code(), absl::StatusCode::kInvalidArgument);

  v1::ComputeKernelRequest none;
  none.set_length(4);
  s = ComputeKernel(none, {}).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("system"));

  // Diagonal method on a rank-1 system: the core refuses.
  request = S4InitRequest(v1::KERNEL_METHOD_DIAGONAL, 8);
  EXPECT_EQ(ComputeKernel(request, {}).status().code(), absl::StatusCode::kInvalidArgument);

  // Explicit system with inconsistent sizes, named.
  v1::ComputeKernelRequest bad;
  bad.set_length(4);
  v1::SsmSystem* sys = bad.mutable_explicit_system();
  sys->mutable_lambda()->set_rows(1);
  sys->mutable_lambda()->set_cols(2);
  sys->mutable_lambda()->add_real(-0.5);
  sys->mutable_lambda()->add_imag(1);
  s = ComputeKernel(bad, {}).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("explicit_system.lambda"));
}

TEST(ComputeKernelTest, LimitsAreResourceExhausted) {
  MathLimits limits;
  limits.max_length = 100;
  limits.max_message_bytes = 1000;
  limits.max_work = 1000;
  v1::ComputeKernelRequest request = S4InitRequest(v1::KERNEL_METHOD_DPLR, 101);
  absl::Status s = ComputeKernel(request, limits).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(s.message(), HasSubstr("--max_unary_length=100"));

  request.set_length(50);  // 3 channels x 50 x 8 bytes = 1200 > 1000
  s = ComputeKernel(request, limits).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(s.message(), HasSubstr("--max_message_bytes=1000"));

  limits.max_message_bytes = 1 << 20;
  request.set_length(10);
  request.set_method(v1::KERNEL_METHOD_NAIVE);
  s = ComputeKernel(request, limits).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(s.message(), HasSubstr("--max_math_work=1000"));
  EXPECT_THAT(s.message(), HasSubstr("NAIVE is the slow reference"));

  // An init whose system alone would not fit in a message.
  request.mutable_init()->set_channels(1000000);
  request.mutable_init()->set_n(1024);
  s = ComputeKernel(request, limits).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(s.message(), HasSubstr("init.channels x init.n"));
}

// Checked from the fields, before anything is built, and named.
TEST(ComputeKernelTest, FieldsAreCheckedBeforeBuilding) {
  v1::ComputeKernelRequest request = S4InitRequest(v1::KERNEL_METHOD_DPLR, 8);
  request.mutable_init()->set_channels(0);
  absl::Status s = ComputeKernel(request, {}).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("init.channels must be >= 1"));

  request = S4InitRequest(v1::KERNEL_METHOD_DPLR, 8);
  request.mutable_init()->set_dt_min(0.5);  // > the default dt_max 0.1
  s = ComputeKernel(request, {}).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("init.dt_max (0.1) must be >= init.dt_min (0.5)"));
  request.mutable_init()->set_dt_min(-1);
  s = ComputeKernel(request, {}).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("init.dt_min must be > 0"));

  request = S4InitRequest(v1::KERNEL_METHOD_DPLR, 8);
  request.mutable_init()->set_n(1023);  // odd: refused before its (large) cost is weighed
  s = ComputeKernel(request, {}).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("init.n must be even"));

  request = S4InitRequest(v1::KERNEL_METHOD_DIAGONAL, 8);  // S4 LegS has rank 1
  s = ComputeKernel(request, {}).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("DIAGONAL needs a diagonal (rank 0) system, got rank 1"));

  // An explicit system's matrices must share lambda's shape.
  const DplrSystem system = *MakeS4Init(Measure::kLegS, 8, 2, 1e-2, 1e-1, 3);
  v1::ComputeKernelRequest bad;
  *bad.mutable_explicit_system() = ToProto(system, false);
  bad.set_length(4);
  bad.mutable_explicit_system()->mutable_p(0)->set_rows(1);
  s = ComputeKernel(bad, {}).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("explicit_system.p[0] is 1 x 4"));
  *bad.mutable_explicit_system() = ToProto(system, false);
  bad.mutable_explicit_system()->add_dt(0.1);
  s = ComputeKernel(bad, {}).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("explicit_system.dt has 3 entries"));

  // EstimateWork reads the same fields and refuses the same way.
  EXPECT_EQ(EstimateWork(bad).status(), s);
}

TEST(MathWorkTest, CountsTheStepsARequestTakes) {
  // An init's DPLR kernel: the NPLR and C, C~ for the length, the kernel.
  const MathWork from_init = *EstimateWork(S4InitRequest(v1::KERNEL_METHOD_DPLR, 1000));
  EXPECT_GT(from_init.system, 0);
  EXPECT_GT(from_init.c_tilde, 0);
  EXPECT_GT(from_init.kernel, 0);
  EXPECT_EQ(from_init.total(), from_init.system + from_init.c_tilde + from_init.kernel);

  // A stored C~ needs no C~ map for DPLR, and the inverse one for the others.
  const DplrSystem system = *MakeS4Init(Measure::kLegS, 16, 3, 1e-3, 1e-1, 7);
  v1::ComputeKernelRequest request;
  *request.mutable_explicit_system() = ToProto(system, true);
  request.set_length(1000);
  request.set_method(v1::KERNEL_METHOD_DPLR);
  EXPECT_EQ(EstimateWork(request)->c_tilde, 0);
  EXPECT_LT(EstimateWork(request)->system, from_init.system);  // no eigensolve
  request.set_method(v1::KERNEL_METHOD_NAIVE);
  EXPECT_GT(EstimateWork(request)->c_tilde, 0);
  request.mutable_explicit_system()->set_c_is_c_tilde(false);
  EXPECT_EQ(EstimateWork(request)->c_tilde, 0);

  // NAIVE costs more than DPLR for the same kernel, and grows with L.
  const MathWork naive = *EstimateWork(S4InitRequest(v1::KERNEL_METHOD_NAIVE, 1000));
  EXPECT_GT(naive.kernel, from_init.kernel);
  EXPECT_GT(EstimateWork(S4InitRequest(v1::KERNEL_METHOD_NAIVE, 2000))->kernel, naive.kernel);

  // ZOH's exponential squares once per doubling of dt |A|.
  v1::BuildHippoRequest hippo;
  hippo.set_measure(v1::HIPPO_MEASURE_LEGS);
  hippo.set_n(64);
  hippo.set_dt(1e-3);
  hippo.mutable_discretization()->set_kind(v1::DISCRETIZATION_KIND_ZOH);
  const double small_step = EstimateWork(hippo)->total();
  hippo.set_dt(1.0);
  EXPECT_GT(EstimateWork(hippo)->total(), small_step);
}

// OK for the first `ok_polls` polls, then `stop`; counts every poll (the
// core polls from its worker threads).
class CountingStop {
 public:
  CountingStop(int ok_polls, absl::Status stop) : ok_polls_(ok_polls), stop_(std::move(stop)) {}
  absl::Status operator()() const {
    return polls_.fetch_add(1) < ok_polls_ ? absl::OkStatus() : stop_;
  }
  int polls() const { return polls_.load(); }

 private:
  const int ok_polls_;
  const absl::Status stop_;
  mutable std::atomic<int> polls_{0};
};

// The issue's examples. A refusal that comes before the first step never
// polls the stop check: nothing was built.
TEST(MathAdmissionTest, TheIssuesNaiveRequestIsRefusedBeforeAnythingIsBuilt) {
  v1::ComputeKernelRequest request;  // ~4 s of one core if admitted
  request.mutable_init()->set_kind(v1::SsmInit::KIND_S4);
  request.mutable_init()->set_measure(v1::HIPPO_MEASURE_LEGS);
  request.mutable_init()->set_n(1024);
  request.mutable_init()->set_channels(1);
  request.set_method(v1::KERNEL_METHOD_NAIVE);
  request.set_length(1024);
  const MathWork work = *EstimateWork(request);
  EXPECT_GT(work.total(), static_cast<double>(MathLimits().max_work));

  const CountingStop stop(1 << 30, absl::InternalError("unused"));
  const absl::Status s = ComputeKernel(request, MathLimits(), stop).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(s.message(), HasSubstr(absl::StrFormat("about %.3g multiply-adds", work.total())));
  EXPECT_THAT(s.message(), HasSubstr("--max_math_work=8000000000"));
  EXPECT_THAT(s.message(), HasSubstr("NAIVE is the slow reference"));
  EXPECT_EQ(stop.polls(), 0);
}

TEST(MathAdmissionTest, TheIssuesOversizedRequestIsRefusedBeforeAnythingIsBuilt) {
  v1::ComputeKernelRequest request;  // 524 MB of kernel; it used to build 51 MB first
  request.mutable_init()->set_kind(v1::SsmInit::KIND_S4);
  request.mutable_init()->set_measure(v1::HIPPO_MEASURE_LEGS);
  request.mutable_init()->set_n(1024);
  request.mutable_init()->set_channels(1000);
  request.set_length(65536);
  const CountingStop stop(1 << 30, absl::InternalError("unused"));
  absl::Status s = ComputeKernel(request, MathLimits(), stop).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(s.message(), HasSubstr("524288000 bytes) exceeds --max_message_bytes=67108864"));

  // Were messages unbounded, its work would still be refused.
  MathLimits limits;
  limits.max_message_bytes = int64_t{1} << 40;
  s = ComputeKernel(request, limits, stop).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(s.message(), HasSubstr(absl::StrFormat("about %.3g multiply-adds",
                                                     EstimateWork(request)->total())));
  EXPECT_THAT(s.message(), HasSubstr("--max_math_work=8000000000"));
  EXPECT_EQ(stop.polls(), 0);
}

// A huge ZOH step used to cost one dense product per doubling of dt |A|
// (dt = 1e300: ~1000 products of 1024 x 1024, minutes of CPU).
TEST(MathAdmissionTest, AHugeZohStepIsRefused) {
  v1::BuildHippoRequest hippo;
  hippo.set_measure(v1::HIPPO_MEASURE_LEGS);
  hippo.set_n(1024);
  hippo.set_dt(1e300);
  hippo.mutable_discretization()->set_kind(v1::DISCRETIZATION_KIND_ZOH);
  absl::Status s = BuildHippo(hippo).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(s.message(), HasSubstr(absl::StrFormat(
                               "BuildHippo would take about %.3g multiply-adds (the "
                               "matrices %.3g), more than --max_math_work=",
                               EstimateWork(hippo)->total(), EstimateWork(hippo)->kernel)));

  const DplrSystem system = *MakeS4dInit(S4dInit::kLin, 512, 1, 1e-3, 1e-1, 3);
  v1::ComputeKernelRequest request;
  *request.mutable_explicit_system() = ToProto(system, false);
  request.mutable_explicit_system()->set_dt(0, 1e300);
  request.set_method(v1::KERNEL_METHOD_NAIVE);
  request.set_length(1);
  request.mutable_discretization()->set_kind(v1::DISCRETIZATION_KIND_ZOH);
  s = ComputeKernel(request, {}).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(s.message(), HasSubstr("--max_math_work="));
}

// Admitted at exactly its estimate, refused one unit below; what is
// admitted is the right kernel (the methods agree).
TEST(MathAdmissionTest, RequestsJustUnderTheLimitAreAdmittedAndCorrect) {
  auto at_limit = [](const v1::ComputeKernelRequest& request) -> v1::Matrix {
    const double work = EstimateWork(request)->total();
    MathLimits limits;
    limits.max_work = static_cast<int64_t>(std::ceil(work));
    absl::StatusOr<v1::ComputeKernelResponse> admitted = ComputeKernel(request, limits);
    EXPECT_TRUE(admitted.ok()) << admitted.status();
    limits.max_work -= 1;
    EXPECT_EQ(ComputeKernel(request, limits).status().code(), absl::StatusCode::kResourceExhausted);
    return admitted.ok() ? admitted->kernel() : v1::Matrix();
  };
  // S4: C~ then DPLR, against NAIVE.
  const v1::Matrix dplr = at_limit(S4InitRequest(v1::KERNEL_METHOD_DPLR, 3000));
  const v1::Matrix naive = at_limit(S4InitRequest(v1::KERNEL_METHOD_NAIVE, 3000));
  ASSERT_EQ(dplr.values_size(), 3 * 3000);
  EXPECT_LE(MaxAbsDiff(dplr, naive), 1e-9 * MaxAbs(naive));

  // S4D with ZOH: DIAGONAL against NAIVE, from C and from C~.
  const DplrSystem system = *MakeS4dInit(S4dInit::kInv, 32, 2, 1e-3, 1e-1, 5);
  v1::ComputeKernelRequest request;
  *request.mutable_explicit_system() = ToProto(system, false);
  request.set_length(2000);
  request.mutable_discretization()->set_kind(v1::DISCRETIZATION_KIND_ZOH);
  request.set_method(v1::KERNEL_METHOD_DIAGONAL);
  const v1::Matrix diagonal = at_limit(request);
  request.set_method(v1::KERNEL_METHOD_NAIVE);
  const v1::Matrix naive_zoh = at_limit(request);
  ASSERT_EQ(diagonal.values_size(), 2 * 2000);
  EXPECT_LE(MaxAbsDiff(diagonal, naive_zoh), 1e-9 * MaxAbs(naive_zoh));
  request.mutable_discretization()->clear_kind();  // C~ is the bilinear one
  request.set_method(v1::KERNEL_METHOD_DIAGONAL);
  const v1::Matrix from_c = at_limit(request);
  DplrSystem tilde = system;
  tilde.C = *CTilde(system, 2000);
  *request.mutable_explicit_system() = ToProto(tilde, true);
  const v1::Matrix from_c_tilde = at_limit(request);
  EXPECT_LE(MaxAbsDiff(from_c_tilde, from_c), 1e-9 * MaxAbs(from_c));

  // BuildHippo with ZOH at its estimate: the core's matrices.
  v1::BuildHippoRequest hippo;
  hippo.set_measure(v1::HIPPO_MEASURE_LEGT);
  hippo.set_n(48);
  hippo.set_dt(0.3);
  hippo.mutable_discretization()->set_kind(v1::DISCRETIZATION_KIND_ZOH);
  MathLimits limits;
  limits.max_work = static_cast<int64_t>(std::ceil(EstimateWork(hippo)->total()));
  absl::StatusOr<v1::BuildHippoResponse> built = BuildHippo(hippo, limits);
  ASSERT_TRUE(built.ok()) << built.status();
  ExpectMatrixEq(built->a_bar(),
                 Discretize(*MakeHippo(Measure::kLegT, 48), 0.3, Discretization::Zoh())->A);
  limits.max_work -= 1;
  EXPECT_EQ(BuildHippo(hippo, limits).status().code(), absl::StatusCode::kResourceExhausted);
}

// The stop check's status is the call's, whether it comes before the
// system is built or from inside the core's loops.
TEST(MathStopTest, AStopPropagatesWithItsCode) {
  const DplrSystem s4d = *MakeS4dInit(S4dInit::kLin, 16, 8, 1e-3, 1e-1, 5);
  DplrSystem s4d_tilde = s4d;
  s4d_tilde.C = *CTilde(s4d, 3000);
  std::vector<std::pair<std::string, v1::ComputeKernelRequest>> cases;
  cases.emplace_back("S4 init, C~, DPLR", S4InitRequest(v1::KERNEL_METHOD_DPLR, 3000));
  v1::ComputeKernelRequest naive = S4InitRequest(v1::KERNEL_METHOD_NAIVE, 3000);
  naive.mutable_init()->set_n(64);  // its steps are polled every 256
  cases.emplace_back("S4 init, NAIVE", naive);
  v1::ComputeKernelRequest diagonal;
  *diagonal.mutable_explicit_system() = ToProto(s4d, false);
  diagonal.set_length(3000);
  diagonal.set_method(v1::KERNEL_METHOD_DIAGONAL);
  cases.emplace_back("S4D, DIAGONAL", diagonal);
  *diagonal.mutable_explicit_system() = ToProto(s4d_tilde, true);
  cases.emplace_back("S4D from C~, DIAGONAL", diagonal);

  for (const auto& [name, request] : cases) {
    for (int k : {0, 1, 5}) {
      SCOPED_TRACE(absl::StrCat(name, ", stop after ", k, " polls"));
      const absl::Status want = k % 2 == 0 ? absl::DeadlineExceededError("deadline passed")
                                           : absl::CancelledError("client cancelled");
      const CountingStop stop(k, want);
      EXPECT_EQ(ComputeKernel(request, {}, stop).status(), want);
      EXPECT_GT(stop.polls(), k);
    }
  }

  v1::BuildHippoRequest hippo;
  hippo.set_measure(v1::HIPPO_MEASURE_LEGS);
  hippo.set_n(32);
  hippo.set_dt(0.1);
  for (int k : {0, 1}) {
    const absl::Status want = absl::CancelledError("client cancelled");
    const CountingStop stop(k, want);
    EXPECT_EQ(BuildHippo(hippo, stop).status(), want);
    EXPECT_EQ(BuildHippo(hippo, MathLimits(), stop).status(), want);
  }
}

}  // namespace
}  // namespace ssm::server
