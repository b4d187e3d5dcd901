// Inference inputs are validated field by field before any work is queued.

#include <cmath>
#include <limits>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "server/tensor_codec.h"

namespace ssm::server {
namespace {

using ::testing::HasSubstr;

v1::Tensor MakeTensor(std::vector<int64_t> shape, std::vector<float> values) {
  v1::Tensor t;
  for (int64_t d : shape) t.add_shape(d);
  for (float v : values) t.add_values(v);
  return t;
}

TEST(TensorCodecTest, AcceptsExactShapeAndConvertsValues) {
  const v1::Tensor t = MakeTensor({2, 3, 1}, {1, 2, 3, 4, 5, 6.5f});
  absl::StatusOr<SequenceShape> shape = CheckSequenceShape(t, "input", 1, "m");
  ASSERT_TRUE(shape.ok()) << shape.status();
  EXPECT_EQ(shape->batch, 2);
  EXPECT_EQ(shape->steps, 3);
  EXPECT_EQ(shape->features, 1);
  EXPECT_EQ(shape->size(), 6);
  std::vector<double> x;
  ASSERT_TRUE(ReadFiniteValues(t, "input", &x).ok());
  EXPECT_EQ(x, (std::vector<double>{1, 2, 3, 4, 5, 6.5}));
}

TEST(TensorCodecTest, WrongRankNamesTheField) {
  const absl::StatusOr<SequenceShape> shape =
      CheckSequenceShape(MakeTensor({4, 2}, std::vector<float>(8)), "input", 1, "m");
  EXPECT_EQ(shape.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(shape.status().message(), HasSubstr("input.shape must have 3 dimensions"));
  EXPECT_THAT(shape.status().message(), HasSubstr("[4, 2]"));
}

// The request fuzzers' bounded-message check (tests/fuzz) caught it: a
// shape of 1,500 dimensions came back as a 4.5 KB message, and nothing
// bounded it short of the message size limit (64 MiB by default).
TEST(TensorCodecTest, ManyDimensionsAreNotAllEchoed) {
  v1::Tensor t;
  for (int i = 0; i < 100000; ++i) t.add_shape(1);
  const absl::StatusOr<SequenceShape> shape = CheckSequenceShape(t, "input", 1, "m");
  EXPECT_EQ(shape.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(shape.status().message(), HasSubstr("input.shape must have 3 dimensions"));
  EXPECT_THAT(shape.status().message(),
              HasSubstr("[1, 1, 1, 1, 1, 1, 1, 1, ... (100000 dimensions)]"));
  EXPECT_LT(shape.status().message().size(), 200u);
}

TEST(TensorCodecTest, NonPositiveDimensionIsRefused) {
  const absl::StatusOr<SequenceShape> shape =
      CheckSequenceShape(MakeTensor({1, 0, 1}, {}), "chunk", 1, "m");
  EXPECT_EQ(shape.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(shape.status().message(), HasSubstr("chunk.shape[1] (steps) must be >= 1"));
}

TEST(TensorCodecTest, FeaturesMustMatchTheModel) {
  const absl::StatusOr<SequenceShape> shape =
      CheckSequenceShape(MakeTensor({1, 2, 2}, std::vector<float>(4)), "chunk", 1, "legt-delay");
  EXPECT_EQ(shape.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(shape.status().message(),
              HasSubstr("chunk.shape[2] = 2 but model 'legt-delay' takes d_input 1"));
}

TEST(TensorCodecTest, ValueCountMustMatchTheShape) {
  const absl::StatusOr<SequenceShape> shape =
      CheckSequenceShape(MakeTensor({1, 3, 2}, std::vector<float>(5)), "input", 2, "m");
  EXPECT_EQ(shape.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(shape.status().message(),
              HasSubstr("input.values holds 5 values but shape [1, 3, 2] needs 6"));
}

TEST(TensorCodecTest, OverflowingShapeIsRefusedNotWrapped) {
  // 2^32 * 2^32 * 1 wraps to 0 in 64 bits; a naive product would accept it
  // with no values at all.
  const int64_t big = int64_t{1} << 32;
  absl::StatusOr<SequenceShape> shape =
      CheckSequenceShape(MakeTensor({big, big, 1}, {}), "input", 1, "m");
  EXPECT_EQ(shape.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(shape.status().message(), HasSubstr("input.values holds 0 values"));
  const int64_t huge = std::numeric_limits<int64_t>::max() / 2;
  shape = CheckSequenceShape(MakeTensor({huge, 4, 1}, {}), "input", 1, "m");
  EXPECT_EQ(shape.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(shape.status().message(), HasSubstr("more than 2^63"));
}

TEST(TensorCodecTest, NonFiniteValuesAreNamedByIndex) {
  std::vector<float> values(20, 0.5f);
  values[17] = std::numeric_limits<float>::quiet_NaN();
  std::vector<double> x;
  absl::Status s = ReadFiniteValues(MakeTensor({1, 20, 1}, values), "chunk", &x);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(s.message(), "chunk.values[17] is NaN");

  values[17] = 0;
  values[3] = -std::numeric_limits<float>::infinity();
  s = ReadFiniteValues(MakeTensor({1, 20, 1}, values), "input", &x);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(s.message(), "input.values[3] is -Inf");

  values[3] = std::numeric_limits<float>::infinity();
  s = ReadFiniteValues(MakeTensor({1, 20, 1}, values), "input", &x);
  EXPECT_EQ(s.message(), "input.values[3] is +Inf");
}

TEST(TensorCodecTest, WriteProducesShapeAndFloats) {
  v1::Tensor t = MakeTensor({9}, {7});  // replaced, not appended to
  const std::vector<double> y = {0.25, -1.5, 3.0, 1e40};
  WriteSequenceTensor(y, SequenceShape{1, 2, 2}, &t);
  EXPECT_THAT(t.shape(), ::testing::ElementsAre(1, 2, 2));
  ASSERT_EQ(t.values_size(), 4);
  EXPECT_EQ(t.values(0), 0.25f);
  EXPECT_EQ(t.values(1), -1.5f);
  EXPECT_EQ(t.values(2), 3.0f);
  EXPECT_TRUE(std::isinf(t.values(3)));
}

}  // namespace
}  // namespace ssm::server
