#include "ssm/fft_conv.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <complex>
#include <cstdint>
#include <limits>
#include <numbers>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "fftw_plans.h"

namespace ssm {
namespace {

using ::testing::HasSubstr;
using ::testing::StartsWith;

// Random values that are exactly representable in float, so that the float
// and double convolvers see the same inputs and share one reference.
std::vector<float> RandomFloats(size_t n, uint64_t seed, float scale = 1.0f) {
  std::mt19937_64 gen(seed);
  std::uniform_real_distribution<float> dist(-scale, scale);
  std::vector<float> v(n);
  for (float& x : v) x = dist(gen);
  return v;
}

struct Problem {
  int batch, h, length;
  RowMatrixXf k;      // h x length
  Eigen::VectorXf d;  // h
  std::vector<float> u;

  Problem(int batch, int h, int length, uint64_t seed)
      : batch(batch), h(h), length(length), k(h, length), d(h) {
    // A decaying kernel, like an S4 kernel, so that late taps are small.
    const std::vector<float> kv = RandomFloats(size_t(h) * length, seed);
    for (int i = 0; i < h; ++i)
      for (int l = 0; l < length; ++l)
        k(i, l) = kv[size_t(i) * length + l] * std::exp(-3.0f * l / length);
    const std::vector<float> dv = RandomFloats(h, seed + 1);
    for (int i = 0; i < h; ++i) d(i) = dv[i];
    u = RandomFloats(size_t(batch) * h * length, seed + 2);
  }

  template <typename T>
  std::vector<T> Input() const {
    return std::vector<T>(u.begin(), u.end());
  }
};

// y[b,h,t] = sum_{s<=t} K[h,s] u[b,h,t-s] + D[h] u[b,h,t] in long double, the
// first `steps` samples of each row of u (stored with row length `steps`).
template <typename T>
std::vector<long double> DirectConv(const Eigen::Ref<const RowMatrixXf>& k,
                                    const Eigen::VectorXf& d, const std::vector<T>& u, int batch,
                                    int steps) {
  const int h_count = static_cast<int>(k.rows());
  std::vector<long double> y(u.size());
  for (int b = 0; b < batch; ++b) {
    for (int h = 0; h < h_count; ++h) {
      const T* in = &u[(size_t(b) * h_count + h) * steps];
      long double* out = &y[(size_t(b) * h_count + h) * steps];
      for (int t = 0; t < steps; ++t) {
        long double acc = static_cast<long double>(d(h)) * in[t];
        for (int s = 0; s <= t; ++s) acc += static_cast<long double>(k(h, s)) * in[t - s];
        out[t] = acc;
      }
    }
  }
  return y;
}

// max |y - ref| / max |ref|.
template <typename T>
double RelError(const std::vector<T>& y, const std::vector<long double>& ref) {
  long double err = 0, scale = 0;
  for (size_t i = 0; i < y.size(); ++i) {
    err = std::max(err, std::abs(static_cast<long double>(y[i]) - ref[i]));
    scale = std::max(scale, std::abs(ref[i]));
  }
  return static_cast<double>(scale == 0 ? err : err / scale);
}

template <typename T>
std::vector<T> Convolve(const FftConvolver<T>& conv, const std::vector<T>& u, int batch,
                        int steps) {
  std::vector<T> y(u.size(), T(-7));
  const absl::Status s = conv.Apply(u, batch, steps, absl::MakeSpan(y));
  EXPECT_TRUE(s.ok()) << s;
  return y;
}

template <typename T>
FftConvolver<T> Make(const Problem& p) {
  absl::StatusOr<FftConvolver<T>> conv =
      FftConvolver<T>::Create(p.k.cast<T>(), p.d.cast<T>(), p.length);
  EXPECT_TRUE(conv.ok()) << conv.status();
  return *std::move(conv);
}

bool IsSmooth(int64_t n) {
  for (int p : {2, 3, 5, 7})
    while (n % p == 0) n /= p;
  return n == 1;
}

// ---------------------------------------------------------------------------
// The plan cache (core/src/fftw_plans.h).

TEST(FftPlanTest, NextSmoothSizeIsTheSmallestSmoothSizeAtLeastTheMinimum) {
  int64_t expected = 1;
  for (int64_t m = 1; m <= 20000; ++m) {
    while (!IsSmooth(expected) || expected < m) ++expected;
    ASSERT_EQ(internal::NextSmoothSize(m), expected) << m;
  }
  EXPECT_EQ(internal::NextSmoothSize(0), 1);
  EXPECT_EQ(internal::NextSmoothSize(8192), 8192);
  EXPECT_EQ(internal::NextSmoothSize(8194), 8232);  // 2^3 3 7^3
  EXPECT_EQ(internal::NextSmoothSize(2 * 4097), 8232);
  EXPECT_EQ(internal::NextSmoothSize((1 << 30) - 1), 1 << 30);
  const int64_t big = internal::NextSmoothSize((int64_t{1} << 29) + 1);
  EXPECT_TRUE(IsSmooth(big));
  EXPECT_GT(big, int64_t{1} << 29);
  EXPECT_LT(big, int64_t{1} << 30);
}

TEST(FftPlanTest, PlansAreSharedPerPrecisionSizeAndType) {
  using internal::FftType;
  using internal::GetFftPlan;
  const auto a = GetFftPlan<double>(210, FftType::kR2c);
  const auto b = GetFftPlan<double>(210, FftType::kR2c);
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_EQ(a->get(), b->get());
  EXPECT_EQ((*a)->size(), 210);
  EXPECT_EQ((*a)->type(), FftType::kR2c);
  EXPECT_NE(GetFftPlan<double>(210, FftType::kC2r)->get(), a->get());
  EXPECT_NE(GetFftPlan<double>(211, FftType::kR2c)->get(), a->get());
  const auto f = GetFftPlan<float>(210, FftType::kR2c);
  ASSERT_TRUE(f.ok());
  EXPECT_EQ(GetFftPlan<float>(210, FftType::kR2c)->get(), f->get());
}

// Sizes come from requests: the cache keeps the most recently used plans
// only, and a plan it dropped still works for whoever holds it.
TEST(FftPlanTest, TheCacheIsBoundedAndKeepsWhatIsInUse) {
  using internal::FftType;
  using internal::GetFftPlan;
  const auto held = GetFftPlan<double>(97, FftType::kC2cForward);
  ASSERT_TRUE(held.ok());
  const auto hot = GetFftPlan<double>(98, FftType::kR2c);
  for (int n = 1000; n < 1000 + 3 * internal::kMaxCachedFftPlans; ++n) {
    ASSERT_TRUE(GetFftPlan<double>(n, FftType::kC2cForward).ok());
    // 98 stays in use, so it stays cached.
    EXPECT_EQ(GetFftPlan<double>(98, FftType::kR2c)->get(), hot->get());
    EXPECT_LE(internal::CachedFftPlans<double>(), internal::kMaxCachedFftPlans);
  }
  EXPECT_EQ(internal::CachedFftPlans<double>(), internal::kMaxCachedFftPlans);
  // 97 was dropped: a new plan, and the old one still transforms.
  EXPECT_NE(GetFftPlan<double>(97, FftType::kC2cForward)->get(), held->get());
  // (FFTW runs on arrays aligned as the planner's: its own allocator.)
  internal::FftwBuffer<std::complex<double>> in(97), out(97);
  for (int k = 0; k < 97; ++k) in.data()[k] = {std::cos(0.3 * k), std::sin(0.7 * k)};
  (*held)->C2c(in.data(), out.data());
  std::complex<long double> want = 0;
  for (int k = 0; k < 97; ++k) {
    want += std::complex<long double>(in.data()[k].real(), in.data()[k].imag());
  }
  EXPECT_NEAR(out.data()[0].real(), static_cast<double>(want.real()), 1e-12);
  EXPECT_NEAR(out.data()[0].imag(), static_cast<double>(want.imag()), 1e-12);
}

TEST(FftPlanTest, BadSizesAreInvalidArgument) {
  for (int n : {0, -1, (1 << 30) + 1}) {
    const auto plan = internal::GetFftPlan<float>(n, internal::FftType::kC2cForward);
    EXPECT_EQ(plan.status().code(), absl::StatusCode::kInvalidArgument) << n;
    EXPECT_THAT(std::string(plan.status().message()), HasSubstr("FFT size")) << n;
  }
}

// Every transform type against a direct DFT in long double.
TEST(FftPlanTest, TransformsMatchTheDirectDft) {
  using internal::FftType;
  using C = std::complex<double>;
  using CL = std::complex<long double>;
  for (int n : {1, 2, 3, 5, 7, 12, 45, 210, 1000}) {
    const std::vector<float> re = RandomFloats(n, n), im = RandomFloats(n, n + 1);
    // Forward and backward DFTs of x (complex) in long double.
    auto dft = [&](const std::vector<CL>& x, int sign) {
      std::vector<CL> out(n);
      for (int j = 0; j < n; ++j) {
        CL acc = 0;
        for (int t = 0; t < n; ++t) {
          const long double ang =
              sign * 2 * std::numbers::pi_v<long double> * ((int64_t{j} * t) % n) / n;
          acc += x[t] * CL(std::cos(ang), std::sin(ang));
        }
        out[j] = acc;
      }
      return out;
    };
    std::vector<CL> real_in(n), complex_in(n);
    for (int t = 0; t < n; ++t) real_in[t] = re[t], complex_in[t] = CL(re[t], im[t]);
    const std::vector<CL> real_spec = dft(real_in, -1);
    const std::vector<CL> fwd = dft(complex_in, -1), bwd = dft(complex_in, +1);
    const int bins = n / 2 + 1;
    auto close = [&](C got, CL want) {
      return std::abs(CL(got.real(), got.imag()) - want) <= 1e-13L * n;
    };

    internal::FftwBuffer<double> x(n), xr(n);
    internal::FftwBuffer<C> spec(n), z(n), w(n);
    for (int t = 0; t < n; ++t) x[t] = re[t], z[t] = C(re[t], im[t]);
    (*internal::GetFftPlan<double>(n, FftType::kR2c))->R2c(x.data(), spec.data());
    for (int j = 0; j < bins; ++j) EXPECT_TRUE(close(spec[j], real_spec[j])) << n << " " << j;
    for (int t = 0; t < n; ++t) EXPECT_EQ(x[t], re[t]) << "r2c must keep its input";
    // c2r of the half spectrum gives n times the signal back.
    (*internal::GetFftPlan<double>(n, FftType::kC2r))->C2r(spec.data(), xr.data());
    for (int t = 0; t < n; ++t) EXPECT_NEAR(xr[t] / n, re[t], 1e-14 * n) << n << " " << t;
    (*internal::GetFftPlan<double>(n, FftType::kC2cForward))->C2c(z.data(), w.data());
    for (int j = 0; j < n; ++j) EXPECT_TRUE(close(w[j], fwd[j])) << n << " " << j;
    (*internal::GetFftPlan<double>(n, FftType::kC2cBackward))->C2c(z.data(), w.data());
    for (int j = 0; j < n; ++j) EXPECT_TRUE(close(w[j], bwd[j])) << n << " " << j;
  }
}

// Threads planning and executing at once (sizes in different orders, both
// precisions) get what one thread alone gets, bit for bit.
TEST(FftPlanTest, ConcurrentPlanningAndExecutionMatchSequential) {
  using internal::FftType;
  const std::vector<int> sizes = {17, 96, 300, 441, 1024, 1250, 2187, 3000};
  auto run = [&](int n) {
    internal::FftwBuffer<float> x(n);
    internal::FftwBuffer<std::complex<float>> spec(n / 2 + 1);
    const std::vector<float> v = RandomFloats(n, n);
    std::copy(v.begin(), v.end(), x.data());
    (*internal::GetFftPlan<float>(n, FftType::kR2c))->R2c(x.data(), spec.data());
    return std::vector<std::complex<float>>(spec.data(), spec.data() + n / 2 + 1);
  };
  std::vector<std::vector<std::complex<float>>> want;
  for (int n : sizes) want.push_back(run(n));
  std::vector<std::thread> threads;
  std::vector<int> mismatches(4, 0);
  for (int i = 0; i < 4; ++i) {
    threads.emplace_back([&, i] {
      for (int rep = 0; rep < 20; ++rep) {
        for (size_t s = 0; s < sizes.size(); ++s) {
          const size_t k = (s * (i + 1) + rep) % sizes.size();
          // New sizes for the planner too, concurrently with execution.
          internal::GetFftPlan<double>(sizes[k] + 7 * i + rep, FftType::kC2r).IgnoreError();
          if (run(sizes[k]) != want[k]) ++mismatches[i];
        }
      }
    });
  }
  for (std::thread& t : threads) t.join();
  for (int i = 0; i < 4; ++i) EXPECT_EQ(mismatches[i], 0) << "thread " << i;
}

// ---------------------------------------------------------------------------
// FftConvolver.

// Both precisions against the long-double direct convolution at awkward
// lengths. Measured worst relative errors (max |y - ref| / max |ref|):
// double 4.6e-16, float 3.7e-7; asserted 1e-12 and 1e-5.
TEST(FftConvTest, MatchesDirectConvolution) {
  for (int length : {1, 2, 3, 7, 45, 210, 1000, 4097}) {
    for (int batch : {1, 3}) {
      for (int h : {1, 5}) {
        const Problem p(batch, h, length, 1000 * length + 10 * batch + h);
        const std::vector<long double> ref = DirectConv(p.k, p.d, p.u, batch, length);
        const FftConvolver<double> cd = Make<double>(p);
        const FftConvolver<float> cf = Make<float>(p);
        EXPECT_EQ(cd.channels(), h);
        EXPECT_EQ(cd.length(), length);
        EXPECT_LT(RelError(Convolve(cd, p.Input<double>(), batch, length), ref), 1e-12)
            << "double L=" << length << " batch=" << batch << " H=" << h;
        EXPECT_LT(RelError(Convolve(cf, p.Input<float>(), batch, length), ref), 1e-5)
            << "float L=" << length << " batch=" << batch << " H=" << h;
      }
    }
  }
}

// steps < length: the same convolver handles shorter inputs (only the first
// `steps` taps can reach them).
TEST(FftConvTest, ShorterInputsUseTheSameConvolver) {
  const Problem p(3, 5, 300, 77);
  const FftConvolver<double> cd = Make<double>(p);
  const FftConvolver<float> cf = Make<float>(p);
  for (int steps : {1, 2, 17, 150, 299}) {
    const std::vector<float> u = RandomFloats(size_t(3) * 5 * steps, steps);
    const std::vector<long double> ref = DirectConv(p.k, p.d, u, 3, steps);
    EXPECT_LT(RelError(Convolve(cd, std::vector<double>(u.begin(), u.end()), 3, steps), ref), 1e-12)
        << steps;
    EXPECT_LT(RelError(Convolve(cf, u, 3, steps), ref), 1e-5) << steps;
  }
}

TEST(FftConvTest, ZeroInputGivesExactlyZero) {
  for (int length : {1, 45, 4097}) {
    const Problem p(3, 5, length, 5);
    const std::vector<double> zd(size_t(3) * 5 * length, 0.0);
    const std::vector<float> zf(zd.size(), 0.0f);
    for (double v : Convolve(Make<double>(p), zd, 3, length)) ASSERT_EQ(v, 0.0) << length;
    for (float v : Convolve(Make<float>(p), zf, 3, length)) ASSERT_EQ(v, 0.0f) << length;
  }
}

// A unit impulse at t = 0 gives K[h, t] + D[h] [t == 0].
TEST(FftConvTest, ImpulseGivesTheKernelPlusD) {
  for (int length : {1, 7, 1000}) {
    const int batch = 3, h = 5;
    const Problem p(batch, h, length, 9);
    std::vector<double> u(size_t(batch) * h * length, 0.0);
    for (int row = 0; row < batch * h; ++row) u[size_t(row) * length] = 1.0;
    const std::vector<double> yd = Convolve(Make<double>(p), u, batch, length);
    const std::vector<float> yf =
        Convolve(Make<float>(p), std::vector<float>(u.begin(), u.end()), batch, length);
    const double scale = p.k.cwiseAbs().maxCoeff() + p.d.cwiseAbs().maxCoeff();
    for (int b = 0; b < batch; ++b) {
      for (int c = 0; c < h; ++c) {
        for (int t = 0; t < length; ++t) {
          const size_t i = (size_t(b) * h + c) * length + t;
          const double want = double(p.k(c, t)) + (t == 0 ? double(p.d(c)) : 0.0);
          ASSERT_NEAR(yd[i], want, 1e-14 * scale) << length << " " << b << " " << c << " " << t;
          ASSERT_NEAR(yf[i], want, 1e-6 * scale) << length << " " << b << " " << c << " " << t;
        }
      }
    }
  }
}

// A kernel with more columns than `length`: the extra taps, even non-finite
// ones, change nothing (bit for bit).
TEST(FftConvTest, OnlyTheFirstLengthTapsMatter) {
  const Problem p(3, 5, 210, 21);
  RowMatrixXd longer(5, 400);
  longer.leftCols(210) = p.k.cast<double>();
  longer.rightCols(190).setConstant(1e30);
  longer(2, 300) = std::numeric_limits<double>::quiet_NaN();
  const auto conv = FftConvolver<double>::Create(longer, p.d.cast<double>(), 210);
  ASSERT_TRUE(conv.ok()) << conv.status();
  EXPECT_EQ(conv->length(), 210);
  const std::vector<double> u = p.Input<double>();
  EXPECT_EQ(Convolve(*conv, u, 3, 210), Convolve(Make<double>(p), u, 3, 210));
  // A block of a larger matrix binds without a copy and gives the same.
  const auto block = FftConvolver<double>::Create(longer.leftCols(250), p.d.cast<double>(), 210);
  ASSERT_TRUE(block.ok()) << block.status();
  EXPECT_EQ(Convolve(*block, u, 3, 210), Convolve(*conv, u, 3, 210));
}

TEST(FftConvTest, FftSizeIsSmoothAndAtLeastTwiceTheLength) {
  for (int length : {1, 2, 3, 7, 13, 45, 210, 1000, 4096, 4097, 5000}) {
    const Problem p(1, 1, length, 3);
    const FftConvolver<float> conv = Make<float>(p);
    EXPECT_GE(conv.fft_size(), 2 * length);
    EXPECT_TRUE(IsSmooth(conv.fft_size())) << conv.fft_size();
    EXPECT_EQ(conv.fft_size(), internal::NextSmoothSize(2 * length));
  }
  EXPECT_EQ(Make<float>(Problem(1, 1, 4096, 3)).fft_size(), 8192);
  EXPECT_EQ(Make<float>(Problem(1, 1, 13, 3)).fft_size(), 27);  // odd n
}

// Rows go through the FFTs in pairs (the header's accuracy note): a row of
// tiny values paired with one of large values has an error relative to the
// pair's scale, not its own. Measured: 3.7e-16 relative to the call's
// max |y| (asserted 1e-12), but 2e-8 relative to a 1e-8-scaled row's own.
TEST(FftConvTest, PairedRowsOfDifferentScaleKeepThePairsAccuracy) {
  const int batch = 2, h = 3, length = 1000;
  Problem p(batch, h, length, 31);
  for (int row = 1; row < batch * h; row += 2) {
    for (int t = 0; t < length; ++t) p.u[size_t(row) * length + t] *= 1e-8f;
  }
  const std::vector<long double> ref = DirectConv(p.k, p.d, p.u, batch, length);
  const std::vector<double> y = Convolve(Make<double>(p), p.Input<double>(), batch, length);
  EXPECT_LT(RelError(y, ref), 1e-12);
}

// batch x H odd and even, H = 1 (pairs of batch rows) and batch = 1 (pairs
// of channels), even and odd FFT sizes: every pairing of rows gives the
// direct convolution.
TEST(FftConvTest, EveryRowPairingMatches) {
  for (int length : {64, 13, 607}) {  // n = 128, 27, 1215
    for (int batch : {1, 2, 3, 4}) {
      for (int h : {1, 2, 3, 6}) {
        const Problem p(batch, h, length, 100 * batch + h);
        const std::vector<long double> ref = DirectConv(p.k, p.d, p.u, batch, length);
        const FftConvolver<double> cd = Make<double>(p);
        EXPECT_EQ(cd.fft_size() % 2, length == 64 ? 0 : 1);
        EXPECT_LT(RelError(Convolve(cd, p.Input<double>(), batch, length), ref), 1e-12)
            << "L=" << length << " " << batch << " x " << h;
        EXPECT_LT(RelError(Convolve(Make<float>(p), p.Input<float>(), batch, length), ref), 1e-5)
            << "L=" << length << " " << batch << " x " << h;
      }
    }
  }
}

TEST(FftConvTest, BatchZeroDoesNothing) {
  const FftConvolver<float> conv = Make<float>(Problem(1, 5, 10, 1));
  EXPECT_TRUE(conv.Apply({}, 0, {}).ok());
}

TEST(FftConvTest, CopiesShareTheKernel) {
  const Problem p(2, 5, 100, 8);
  const FftConvolver<float> a = Make<float>(p);
  const FftConvolver<float> b = a;
  EXPECT_EQ(Convolve(a, p.Input<float>(), 2, 100), Convolve(b, p.Input<float>(), 2, 100));
}

TEST(FftConvTest, CausalConvIsCreateThenApply) {
  const Problem p(3, 5, 45, 12);
  const std::vector<double> u = p.Input<double>();
  std::vector<double> y(u.size());
  ASSERT_TRUE(CausalConv(p.k.cast<double>(), p.d.cast<double>(), u, 3, 45, absl::MakeSpan(y)).ok());
  EXPECT_EQ(y, Convolve(Make<double>(p), u, 3, 45));
  std::vector<float> yf(u.size());
  const std::vector<float> uf = p.Input<float>();
  ASSERT_TRUE(CausalConv(p.k, p.d, uf, 3, 45, absl::MakeSpan(yf)).ok());
  EXPECT_EQ(yf, Convolve(Make<float>(p), uf, 3, 45));
  const absl::Status s = CausalConv(p.k, p.d, uf, 3, 0, absl::MakeSpan(yf));
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(s.message()), StartsWith("steps "));
}

// Threads applying different convolvers (different FFT sizes and both
// precisions) at once, each call itself parallel, give exactly the
// sequential results.
TEST(FftConvTest, ConcurrentAppliesMatchSequential) {
  std::vector<Problem> problems;
  for (int length : {45, 210, 1000, 4097}) problems.emplace_back(3, 5, length, length);
  std::vector<FftConvolver<float>> floats;
  std::vector<FftConvolver<double>> doubles;
  std::vector<std::vector<float>> want_f;
  std::vector<std::vector<double>> want_d;
  for (const Problem& p : problems) {
    floats.push_back(Make<float>(p));
    doubles.push_back(Make<double>(p));
    want_f.push_back(Convolve(floats.back(), p.Input<float>(), p.batch, p.length));
    want_d.push_back(Convolve(doubles.back(), p.Input<double>(), p.batch, p.length));
  }
  const int kThreads = 6;
  std::vector<int> mismatches(kThreads, 0);
  std::vector<std::thread> threads;
  for (int i = 0; i < kThreads; ++i) {
    threads.emplace_back([&, i] {
      for (int rep = 0; rep < 5; ++rep) {
        const size_t k = (i + rep) % problems.size();
        const Problem& p = problems[k];
        if (i % 2 == 0) {
          if (Convolve(floats[k], p.Input<float>(), p.batch, p.length) != want_f[k])
            ++mismatches[i];
        } else {
          if (Convolve(doubles[k], p.Input<double>(), p.batch, p.length) != want_d[k])
            ++mismatches[i];
        }
      }
    });
  }
  for (std::thread& t : threads) t.join();
  for (int i = 0; i < kThreads; ++i) EXPECT_EQ(mismatches[i], 0) << "thread " << i;
}

// ---------------------------------------------------------------------------
// Errors: exactly InvalidArgument, a message that starts with the argument's
// name, and outputs untouched.

void ExpectInvalid(const absl::Status& s, const std::string& name) {
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_THAT(std::string(s.message()), StartsWith(name + " ")) << s;
}

TEST(FftConvTest, CreateRejectsBadArguments) {
  const RowMatrixXd k = RowMatrixXd::Ones(3, 10);
  const Eigen::VectorXd d = Eigen::VectorXd::Ones(3);
  using Conv = FftConvolver<double>;
  ExpectInvalid(Conv::Create(k, d, 0).status(), "length");
  ExpectInvalid(Conv::Create(k, d, -5).status(), "length");
  ExpectInvalid(Conv::Create(k, d, kMaxFftConvLength + 1).status(), "length");
  ExpectInvalid(Conv::Create(k, d, 11).status(), "K");
  ExpectInvalid(Conv::Create(RowMatrixXd(0, 10), Eigen::VectorXd(0), 10).status(), "K");
  ExpectInvalid(Conv::Create(k, Eigen::VectorXd::Ones(2), 10).status(), "D");
  ExpectInvalid(Conv::Create(k, Eigen::VectorXd::Ones(4), 10).status(), "D");
  RowMatrixXd bad_k = k;
  bad_k(1, 9) = std::numeric_limits<double>::quiet_NaN();
  ExpectInvalid(Conv::Create(bad_k, d, 10).status(), "K");
  EXPECT_TRUE(Conv::Create(bad_k, d, 9).ok()) << "the NaN is past the taps in use";
  Eigen::VectorXd bad_d = d;
  bad_d(2) = std::numeric_limits<double>::infinity();
  ExpectInvalid(Conv::Create(k, bad_d, 10).status(), "D");
  RowMatrixXf bad_kf = RowMatrixXf::Ones(3, 10);
  bad_kf(0, 0) = -std::numeric_limits<float>::infinity();
  ExpectInvalid(FftConvolver<float>::Create(bad_kf, Eigen::VectorXf::Ones(3), 10).status(), "K");
}

TEST(FftConvTest, ApplyRejectsBadArgumentsAndLeavesYUntouched) {
  const int batch = 2, h = 3, length = 20;
  const Problem p(batch, h, length, 4);
  const FftConvolver<float> conv = Make<float>(p);
  const size_t count = size_t(batch) * h * length;
  std::vector<float> u = p.Input<float>();
  std::vector<float> y(count, 42.0f);
  const std::vector<float> untouched = y;
  auto expect = [&](const absl::Status& s, const std::string& name) {
    ExpectInvalid(s, name);
    EXPECT_EQ(y, untouched) << name;
  };
  expect(conv.Apply(u, -1, absl::MakeSpan(y)), "batch");
  expect(conv.Apply(u, batch, 0, absl::MakeSpan(y)), "steps");
  expect(conv.Apply(u, batch, length + 1, absl::MakeSpan(y)), "steps");
  expect(conv.Apply(absl::MakeConstSpan(u).subspan(1), batch, absl::MakeSpan(y)), "u");
  expect(conv.Apply(u, batch + 1, absl::MakeSpan(y)), "u");
  expect(conv.Apply(u, batch, length - 1, absl::MakeSpan(y)), "u");
  expect(conv.Apply(u, batch, absl::MakeSpan(y).subspan(0, count - 1)), "y");
  std::vector<float> y_long(count + 1, 42.0f);
  ExpectInvalid(conv.Apply(u, batch, absl::MakeSpan(y_long)), "y");

  // Non-finite inputs anywhere, reported with their (b, h, t).
  for (float bad : {std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::infinity(),
                    -std::numeric_limits<float>::infinity()}) {
    std::vector<float> ub = u;
    ub[(size_t(1) * h + 2) * length + 7] = bad;
    const absl::Status s = conv.Apply(ub, batch, absl::MakeSpan(y));
    expect(s, "u");
    EXPECT_THAT(std::string(s.message()), HasSubstr("(b, h, t) = (1, 2, 7)")) << s;
  }
  std::vector<double> ud = p.Input<double>(), yd(count, 42.0);
  ud[0] = std::numeric_limits<double>::quiet_NaN();
  ExpectInvalid(Make<double>(p).Apply(ud, batch, absl::MakeSpan(yd)), "u");
  EXPECT_EQ(yd, std::vector<double>(count, 42.0));

  // y overlapping u: in place, or shifted by one sample either way.
  std::vector<float> buffer(count + 1, 1.0f);
  const std::vector<float> before = buffer;
  ExpectInvalid(conv.Apply(absl::MakeConstSpan(buffer).subspan(0, count), batch,
                           absl::MakeSpan(buffer).subspan(0, count)),
                "y");
  ExpectInvalid(conv.Apply(absl::MakeConstSpan(buffer).subspan(0, count), batch,
                           absl::MakeSpan(buffer).subspan(1, count)),
                "y");
  ExpectInvalid(conv.Apply(absl::MakeConstSpan(buffer).subspan(1, count), batch,
                           absl::MakeSpan(buffer).subspan(0, count)),
                "y");
  EXPECT_EQ(buffer, before);
}

}  // namespace
}  // namespace ssm
