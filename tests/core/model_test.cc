#include "ssm/model.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "core/ssm_systems.h"
#include "core/test_models.h"
#include "ssm/dplr.h"
#include "ssm/hippo_memory.h"
#include "ssm/kernel.h"
#include "ssm/session.h"

namespace ssm {
namespace {

using ::testing::HasSubstr;
using testing::HippoSpec;
using testing::Load;
using testing::RandomInput;
using testing::RelError;
using testing::RunRange;
using testing::S4Spec;
using testing::ToFile;
using testing::Variants;

// Feeds x (batch x total x d_in) to a session in chunks of the given sizes.
std::vector<double> RunChunks(Session& s, const std::vector<double>& x, int total,
                              const std::vector<int>& chunks) {
  const int batch = s.batch(), dout = s.model().d_output();
  std::vector<double> y(static_cast<size_t>(batch) * total * dout);
  int t0 = 0;
  for (int c : chunks) {
    const std::vector<double> out = RunRange(s, x, total, t0, c);
    for (int b = 0; b < batch; ++b)
      std::copy(&out[b * c * dout], &out[(b + 1) * c * dout], &y[(b * total + t0) * dout]);
    t0 += c;
  }
  EXPECT_EQ(t0, total);
  return y;
}

// A session fed in chunks of any sizes (steps below the convolution
// threshold, long chunks through the convolutional mode from the carried
// state) gives Forward's outputs.
TEST(ModelTest, ChunkedSessionsEqualForward) {
  const int batch = 2, total = 600;
  for (const auto& [name, s4] : Variants()) {
    const std::shared_ptr<const Model> m = Load(S4Spec(s4));
    ASSERT_NE(m, nullptr) << name;
    const std::vector<double> x = RandomInput(batch * total * m->d_input(), 3);
    std::vector<double> ref(batch * total * m->d_output());
    ASSERT_TRUE(m->Forward(x, batch, total, absl::MakeSpan(ref)).ok()) << name;
    for (const std::vector<int>& chunks :
         {std::vector<int>(total, 1), std::vector<int>{1, 7, 100, 63, 64, 365},
          std::vector<int>{600}, std::vector<int>{299, 2, 299}}) {
      Session s = *Session::Create(m, batch);
      EXPECT_LT(RelError(RunChunks(s, x, total, chunks), ref), 1e-9)
          << name << " first chunk " << chunks[0] << " of " << chunks.size();
      EXPECT_EQ(s.position(), total);
    }
  }
}

// Chunks longer than max_length run in pieces; the stream goes on past it.
TEST(ModelTest, SessionsRunPastMaxLength) {
  S4StackSpec s4 = Variants()[0].second;
  const ModelSpec long_spec = S4Spec(s4, 3, 2, 900);
  const ModelSpec short_spec = S4Spec(s4, 3, 2, 100);
  const std::shared_ptr<const Model> long_model = Load(long_spec), short_model = Load(short_spec);
  const std::vector<double> x = RandomInput(900 * 3, 4);
  std::vector<double> ref(900 * 2);
  ASSERT_TRUE(long_model->Forward(x, 1, 900, absl::MakeSpan(ref)).ok());
  Session s = *Session::Create(short_model, 1);
  EXPECT_LT(RelError(RunChunks(s, x, 900, {250, 1, 649}), ref), 1e-9);
}

// A chunk of more than kMaxRowsPerPass batch x step rows runs in slices of
// time (here 40 sequences: 819 + 819 + 362 steps, odd and uneven), with
// Forward's outputs and the state a single pass would leave.
TEST(ModelTest, WideChunksRunInSlicesOfTime) {
  const int batch = 40, total = 2000;
  ASSERT_GT(int64_t{batch} * total, Session::kMaxRowsPerPass);
  for (const auto& [name, s4] : Variants()) {
    const std::shared_ptr<const Model> m = Load(S4Spec(s4, 3, 2, total));
    ASSERT_NE(m, nullptr) << name;
    const std::vector<double> x = RandomInput(batch * total * m->d_input(), 11);
    std::vector<double> ref(batch * total * m->d_output());
    ASSERT_TRUE(m->Forward(x, batch, total, absl::MakeSpan(ref)).ok()) << name;
    Session wide = *Session::Create(m, batch);
    EXPECT_LT(RelError(RunChunks(wide, x, total, {total}), ref), 1e-9) << name;
    // The state after the sliced chunk continues like the unsliced one.
    Session narrow = *Session::Create(m, batch);
    RunChunks(narrow, x, total, {800, 800, 400});
    const std::vector<double> next = RandomInput(batch * 5 * m->d_input(), 12);
    EXPECT_LT(RelError(RunChunks(wide, next, 5, {5}), RunChunks(narrow, next, 5, {5})), 1e-9)
        << name;
  }
}

// A chunk stopped between two slices (its caller was cancelled) leaves the
// session as it was: same position, and it goes on like a fresh one.
TEST(ModelTest, AChunkStoppedBetweenSlicesChangesNothing) {
  const int batch = 40, total = 2000;  // slices of 819 steps
  const std::shared_ptr<const Model> m = Load(S4Spec(Variants()[0].second, 3, 2, total));
  ASSERT_NE(m, nullptr);
  const std::vector<double> x = RandomInput(batch * total * m->d_input(), 14);
  std::vector<double> y(batch * total * m->d_output());
  Session s = *Session::Create(m, batch);
  std::vector<int> asked;
  const absl::Status stopped = s.Run(x, total, absl::MakeSpan(y), [&](int done) {
    asked.push_back(done);
    return asked.size() < 2 ? absl::OkStatus() : absl::CancelledError("stop");
  });
  EXPECT_EQ(stopped.code(), absl::StatusCode::kCancelled);
  EXPECT_EQ(asked, (std::vector<int>{819, 1638}));
  EXPECT_EQ(s.position(), 0);
  Session fresh = *Session::Create(m, batch);
  EXPECT_EQ(RunChunks(s, x, total, {total}), RunChunks(fresh, x, total, {total}));
}

// A session keeps the scratch of short chunks (so a step allocates
// nothing) but gives back that of a long one: between chunks it holds
// little beyond its state.
TEST(ModelTest, SessionsGiveBackTheScratchOfLongChunks) {
  const std::shared_ptr<const Model> m = Load(S4Spec(Variants()[0].second, 3, 2, 4000));
  ASSERT_NE(m, nullptr);
  const int batch = 8, total = 4000;  // ~7 x 32000 x 5 doubles of scratch
  Session s = *Session::Create(m, batch);
  const std::vector<double> x = RandomInput(batch * total * m->d_input(), 13);
  RunRange(s, x, total, 0, 1);
  const size_t after_step = s.held_bytes();
  EXPECT_GT(after_step, s.state_bytes());  // a step's scratch is kept
  EXPECT_LE(after_step, s.state_bytes() + Session::kKeptScratchDoubles * sizeof(double));
  RunRange(s, x, total, 1, total - 1);
  EXPECT_LE(s.held_bytes(), after_step);
}

// Kernel spectra are cached per rung of lengths (2^k and 3 2^(k-1)): any
// mix of lengths builds a bounded number of them, and repeats are hits.
TEST(ModelTest, KernelCacheIsBoundedAndHit) {
  const std::shared_ptr<const Model> m = Load(S4Spec(Variants()[0].second));  // 2 layers
  auto forward = [&](int length) {
    std::vector<double> x(length * 3, 0.1), y(length * 2);
    ASSERT_TRUE(m->Forward(x, 1, length, absl::MakeSpan(y)).ok());
  };
  forward(100);  // rung 128
  EXPECT_EQ(m->kernel_cache_stats().misses, 2);
  EXPECT_EQ(m->kernel_cache_stats().hits, 0);
  forward(97);  // rung 128 again
  EXPECT_EQ(m->kernel_cache_stats().misses, 2);
  EXPECT_EQ(m->kernel_cache_stats().hits, 2);
  forward(90);  // rung 96
  EXPECT_EQ(m->kernel_cache_stats().misses, 4);
  const int64_t one_rung_bytes = m->kernel_cache_stats().spectra_bytes;
  EXPECT_GT(one_rung_bytes, 0);
  for (int length = 1; length <= 600; ++length) forward(length);
  // Rungs up to 600: 1 2 3 4 6 8 12 16 24 32 48 64 96 128 192 256 384 512
  // and the cap 600: 19 per layer.
  EXPECT_EQ(m->kernel_cache_stats().misses, 2 * 19);
}

TEST(ModelTest, BadInputLeavesTheSessionAsItWas) {
  const std::shared_ptr<const Model> m = Load(S4Spec(Variants()[0].second));
  Session s = *Session::Create(m, 1);
  RunRange(s, RandomInput(5 * 3, 1), 5, 0, 5);
  const std::string before = s.ExportState();
  std::vector<double> x(2 * 3, 0.5), y(2 * 2);
  x[4] = std::numeric_limits<double>::quiet_NaN();
  absl::Status st = s.Run(x, 2, absl::MakeSpan(y));
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(st.message()), HasSubstr("non-finite value at index 4"));
  EXPECT_EQ(s.Run(x, 3, absl::MakeSpan(y)).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(s.Run(x, 0, absl::MakeSpan(y)).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(s.ExportState(), before);
  EXPECT_EQ(s.position(), 5);

  std::vector<double> fx(4 * 3, 0.1), fy(4 * 2);
  EXPECT_EQ(m->Forward(fx, 1, 601, absl::MakeSpan(fy)).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(m->Forward(fx, 1, 3, absl::MakeSpan(fy)).code(), absl::StatusCode::kInvalidArgument);
  fx[7] = std::numeric_limits<double>::infinity();
  st = m->Forward(fx, 1, 4, absl::MakeSpan(fy));
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(st.message()), HasSubstr("step 2, feature 1"));
}

TEST(ModelTest, BidirectionalModelsRefuseToStream) {
  S4StackSpec s4 = Variants()[0].second;
  s4.bidirectional = true;
  const std::shared_ptr<const Model> m = Load(S4Spec(s4));
  ASSERT_NE(m, nullptr);
  EXPECT_FALSE(m->streamable());
  std::vector<double> x = RandomInput(20 * 3, 2), y(20 * 2);
  EXPECT_TRUE(m->Forward(x, 1, 20, absl::MakeSpan(y)).ok());
  absl::StatusOr<Session> s = Session::Create(m, 1);
  EXPECT_EQ(s.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(s.status().message()), HasSubstr("bidirectional"));
}

// The DSS kernel depends on the sequence length: Forward only, and a stream
// is refused with that reason. Its kernel at each length is the ZOH kernel
// of the same modes with C rescaled (Lambda (1 + reg) / (2 (e^(dt Lambda T)
// - 1)) with reg tiny here), which DiagonalKernel computes independently.
TEST(ModelTest, DssModelsAreUnaryOnly) {
  S4StackSpec s4 = Variants()[2].second;  // diagonal, ZOH
  s4.dss = true;
  s4.encoder = s4.decoder = false;
  s4.n_layers = 1;
  s4.norm = NormPlacement::kNone;
  s4.residual = false;
  s4.output_linear = OutputLinearKind::kNone;
  s4.activation = ActivationKind::kIdentity;
  const std::shared_ptr<const Model> m = Load(S4Spec(s4));
  ASSERT_NE(m, nullptr);
  EXPECT_FALSE(m->streamable());
  EXPECT_THAT(m->not_streamable_reason(), HasSubstr("DSS"));
  absl::StatusOr<Session> s = Session::Create(m, 1);
  EXPECT_EQ(s.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(s.status().message()), HasSubstr("DSS kernel depends on the length"));

  // An impulse on every channel reads the kernel (plus D at t = 0).
  DplrSystem sys = *MakeS4dInit(S4dInit::kLegS, 8, 5, 1e-3, 1e-1, 7);
  for (int length : {1, 7, 200}) {
    std::vector<double> x(length * 5, 0.0), y(length * 5);
    for (int c = 0; c < 5; ++c) x[c] = 1.0;
    ASSERT_TRUE(m->Forward(x, 1, length, absl::MakeSpan(y)).ok());
    DplrSystem scaled = sys;
    for (int h = 0; h < 5; ++h)
      for (int n = 0; n < 4; ++n) {
        const cdouble lam = sys.lambda(h, n);
        const cdouble e = std::exp(sys.dt(h) * lam * static_cast<double>(length)) - 1.0;
        const cdouble xx = e * lam;
        const cdouble r = std::conj(xx) / (std::norm(xx) + 1e-7);
        scaled.C(h, n) = sys.C(h, n) * lam * r / 2.0;
      }
    const RowMatrixXd k = *DiagonalKernel(scaled, length, Discretization::Zoh());
    double err = 0, scale = 0;
    for (int t = 1; t < length; ++t)
      for (int c = 0; c < 5; ++c) {
        err = std::max(err, std::abs(y[t * 5 + c] - k(c, t)));
        scale = std::max(scale, std::abs(k(c, t)));
      }
    EXPECT_LE(err, 1e-12 * scale) << length;
    if (length > 1) {
      EXPECT_GT(scale, 0.0);
    }
  }
}

// Transforms turn stored values into dt and Lambda; one that gives no valid
// step is refused by name, and the minimal S4D block takes none of them.
TEST(ModelTest, TransformsThatGiveNoStepAreRefused) {
  S4StackSpec s4 = Variants()[2].second;
  s4.dt_transform = ParamTransform::kNone;
  ModelSpec spec = S4Spec(s4);
  // Weights made for exp: inv_dt = log dt < 0, a negative step under none.
  S4StackSpec as_exp = s4;
  as_exp.dt_transform = ParamTransform::kExp;
  const SafeTensors file = ToFile(*InitS4StackWeights(S4Spec(as_exp), 3, DType::kF64), "t.st");
  absl::StatusOr<std::shared_ptr<const Model>> m = LoadModel(spec, &file);
  EXPECT_EQ(m.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(m.status().message()), HasSubstr("inv_dt'[0]"));
  EXPECT_THAT(std::string(m.status().message()), HasSubstr("dt_transform none"));

  // A minimal S4D block (kernel.log_dt, ...) with a transform in the config.
  const int h = 2, n2 = 2;
  std::vector<TensorToWrite> minimal = {
      {"s4_layers.0.D", DType::kF64, {h}, {0.5, -0.5}},
      {"s4_layers.0.kernel.log_dt", DType::kF64, {h}, {-3, -2}},
      {"s4_layers.0.kernel.log_A_real", DType::kF64, {h, n2}, {-0.7, -0.7, -0.7, -0.7}},
      {"s4_layers.0.kernel.A_imag", DType::kF64, {h, n2}, {0, 3.1, 0, 3.1}},
      {"s4_layers.0.kernel.C", DType::kF64, {h, n2, 2}, std::vector<double>(8, 0.3)}};
  S4StackSpec plain = Variants()[2].second;
  plain.n_layers = 1;
  plain.d_model = h;
  plain.d_state = 2 * n2;
  plain.encoder = plain.decoder = plain.residual = false;
  plain.norm = NormPlacement::kNone;
  plain.output_linear = OutputLinearKind::kNone;
  const SafeTensors mfile = ToFile(minimal, "minimal.st");
  EXPECT_TRUE(LoadModel(S4Spec(plain), &mfile).ok());
  for (auto set : {+[](S4StackSpec& x) { x.dt_transform = ParamTransform::kSoftplus; },
                   +[](S4StackSpec& x) { x.imag_transform = ParamTransform::kExp; },
                   +[](S4StackSpec& x) { x.dt_fast = true; },
                   +[](S4StackSpec& x) { x.dss = true; }}) {
    S4StackSpec bad = plain;
    set(bad);
    absl::StatusOr<std::shared_ptr<const Model>> r = LoadModel(S4Spec(bad), &mfile);
    EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(std::string(r.status().message()), HasSubstr("minimal S4D block"));
  }
}

// Each bad weights file is refused with the tensor named.
TEST(ModelTest, BadWeightsAreRefusedByName) {
  const ModelSpec spec = S4Spec(Variants()[0].second);
  const std::vector<TensorToWrite> good = *InitS4StackWeights(spec, 1, DType::kF32);
  auto load = [&](std::vector<TensorToWrite> w) {
    const SafeTensors f = ToFile(w, "bad.safetensors");
    return LoadModel(spec, &f).status();
  };
  auto find = [](std::vector<TensorToWrite>& w, const std::string& name) -> TensorToWrite& {
    for (TensorToWrite& t : w)
      if (t.name == name) return t;
    ADD_FAILURE() << name;
    return w[0];
  };
  auto expect = [](const absl::Status& st, const std::string& words) {
    EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument) << st;
    EXPECT_THAT(std::string(st.message()), HasSubstr(words));
  };
  EXPECT_TRUE(load(good).ok());
  {
    std::vector<TensorToWrite> w = good;
    w.erase(w.begin() + 3);
    const std::string name = good[3].name;
    expect(load(w), "missing tensor '" + name + "'");
  }
  {
    std::vector<TensorToWrite> w = good;
    TensorToWrite& t = find(w, "s4_layers.1.layer.kernel.P");
    t.shape = {1, 5, 2, 4};
    expect(load(w), "'s4_layers.1.layer.kernel.P' has shape [1, 5, 2, 4], expected [1, 5, 4, 2]");
  }
  {
    // The writer refuses NaN, so plant a marker value and overwrite its bytes.
    std::vector<TensorToWrite> w = good;
    TensorToWrite& bias = find(w, "decoder.bias");
    bias.dtype = DType::kF64;
    const double marker = 12345.678901;
    bias.values[1] = marker;
    std::string bytes = *SerializeSafeTensors(w);
    const size_t at = bytes.find(std::string(reinterpret_cast<const char*>(&marker), 8));
    ASSERT_NE(at, std::string::npos);
    const double nan = std::numeric_limits<double>::quiet_NaN();
    bytes.replace(at, 8, std::string(reinterpret_cast<const char*>(&nan), 8));
    const SafeTensors f = *SafeTensors::Parse(bytes, "nan.safetensors");
    const absl::Status st = LoadModel(spec, &f).status();
    EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument) << st;
    EXPECT_THAT(std::string(st.message()), HasSubstr("decoder.bias"));
  }
  {
    std::vector<TensorToWrite> w = good;
    w.push_back({"s4_layers.0.layer.kernel.typo", DType::kF32, {1}, {1.0}});
    expect(load(w), "unknown tensor 's4_layers.0.layer.kernel.typo'");
  }
  {
    ModelSpec diag = spec;
    std::get<S4StackSpec>(diag.architecture).kernel = KernelKind::kDiagonal;
    std::get<S4StackSpec>(diag.architecture).rank = 0;
    std::get<S4StackSpec>(diag.architecture).discretization = Discretization::Zoh();
    const SafeTensors f = ToFile(good, "dplr.safetensors");
    expect(LoadModel(diag, &f).status(), "has 's4_layers.0.layer.kernel.P'");
  }
  expect(LoadModel(spec, nullptr).status(), "needs a weights file");
}

// The LegT delay line reads the input back at fixed lags; on a smooth
// signal (two sines, periods 200 and 90 steps, window 64) the error is
// small and stated in README.
TEST(ModelTest, LegtDelayLineRecallsThePast) {
  HippoMemorySpec h;
  h.measure = HippoMemorySpec::Measure::kLegT;
  h.n = 32;
  h.window = 64;
  h.output = HippoMemorySpec::Output::kDelayed;
  h.delays = {16, 32, 63};
  const ModelSpec spec = HippoSpec(h, 3);
  const SafeTensors file = ToFile(*HippoMemoryWeights(spec), "legt.safetensors");
  const std::shared_ptr<const Model> m = *LoadModel(spec, &file);
  const int total = 2000;
  auto f = [](double t) { return std::sin(2 * M_PI * t / 200) + 0.5 * std::cos(2 * M_PI * t / 90); };
  std::vector<double> x(total), y(total * 3);
  for (int t = 0; t < total; ++t) x[t] = f(t);
  ASSERT_TRUE(m->Forward(x, 1, total, absl::MakeSpan(y)).ok());
  double worst = 0;
  for (int t = 200; t < total; ++t)  // after the window has filled
    for (int k = 0; k < 3; ++k) worst = std::max(worst, std::abs(y[t * 3 + k] - f(t - h.delays[k])));
  // Measured 3.1e-4 (the signal's amplitude is 1.5).
  EXPECT_LT(worst, 1e-3) << "max |delayed - true| over steps 200..2000";
  RecordProperty("legt_delay_max_error", std::to_string(worst));

  Session s = *Session::Create(m, 1);
  EXPECT_LT(RelError(RunChunks(s, x, total, {1, 999, 1000}), y), 1e-12);
}

// legs-memory's outputs are its coefficients, as HippoMemory computes them.
TEST(ModelTest, LegsMemoryExposesItsCoefficients) {
  HippoMemorySpec h;
  h.measure = HippoMemorySpec::Measure::kLegS;
  h.n = 16;
  const ModelSpec spec = HippoSpec(h, 16);
  const std::shared_ptr<const Model> m = *LoadModel(spec, nullptr);
  const std::vector<double> x = RandomInput(300, 9);
  std::vector<double> y(300 * 16);
  ASSERT_TRUE(m->Forward(x, 1, 300, absl::MakeSpan(y)).ok());
  HippoMemory mem = *HippoMemory::LegS(16);
  ASSERT_TRUE(mem.Update(x).ok());
  for (int j = 0; j < 16; ++j) EXPECT_DOUBLE_EQ(y[299 * 16 + j], mem.coefficients()(j));
  Session s = *Session::Create(m, 1);
  EXPECT_EQ(RunChunks(s, x, 300, {1, 150, 149}), y);
}

// Ranks beyond the measure's own get small random P: drawn imaginary part
// first, in statements of their own, so a seed names the same weights on
// every compiler (DplrTest.InitDrawsArePinned pins C's draws the same way).
TEST(ModelTest, InitDrawsOfExtraRanksArePinned) {
  S4StackSpec s4;
  s4.d_model = 2;
  s4.d_state = 4;
  s4.rank = 2;
  s4.encoder = s4.decoder = false;
  const std::vector<TensorToWrite> w = *InitS4StackWeights(S4Spec(s4), 11, DType::kF64);
  // P is rank x H x M x 2: the second rank's 2 x 2 complex values.
  const double pinned[8] = {-0.030912476969355181, 0.0088282319329643921,
                            -0.10163729623385853,  -0.0073716320883890256,
                            0.064822037715283706,  0.08520858923678383,
                            -0.031057732652829614, -0.16378013567241145};
  int found = 0;
  for (const TensorToWrite& t : w) {
    if (t.name != "s4_layers.0.layer.kernel.P") continue;
    ASSERT_EQ(t.values.size(), 16u);
    for (int i = 0; i < 8; ++i) EXPECT_DOUBLE_EQ(t.values[8 + i], pinned[i]) << i;
    ++found;
  }
  EXPECT_EQ(found, 1);
}

}  // namespace
}  // namespace ssm
