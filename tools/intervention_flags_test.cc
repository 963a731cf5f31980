#include "tools/intervention_flags.h"

#include <string>
#include <vector>

#include "gtest/gtest.h"

namespace gemma {
namespace {

ModelConfig Tiny() {
  ModelConfig c;
  c.hidden_size = 4;
  c.num_layers = 2;
  c.num_heads = 4;
  return c;
}

absl::Status Parse(Args& a, std::vector<std::string> argv) {
  std::vector<char*> ptrs;
  for (auto& s : argv) ptrs.push_back(s.data());
  return a.Parse(static_cast<int>(ptrs.size()), ptrs.data());
}

TEST(InterventionFlagsTest, ParsesEachKindInOrderAtEveryPosition) {
  Args a("t", "");
  DeclareInterventionFlags(a);
  ASSERT_TRUE(Parse(a, {"--scale-mlp", "0:0.5", "--ablate-head", "1:3",
                        "--scale-attn", "1:-2", "--scale-mlp", "1:2"})
                  .ok());
  auto ivs = InterventionsFromFlags(a, Tiny());
  ASSERT_TRUE(ivs.ok()) << ivs.status();
  ASSERT_EQ(ivs->size(), 4u);
  EXPECT_EQ((*ivs)[0].kind, InterventionKind::kScaleMlp);
  EXPECT_EQ((*ivs)[0].factor, 0.5f);
  EXPECT_EQ((*ivs)[1].kind, InterventionKind::kScaleMlp);
  EXPECT_EQ((*ivs)[1].layer, 1);
  EXPECT_EQ((*ivs)[2].kind, InterventionKind::kScaleAttention);
  EXPECT_EQ((*ivs)[2].factor, -2.0f);
  EXPECT_EQ((*ivs)[3].kind, InterventionKind::kAblateHead);
  EXPECT_EQ((*ivs)[3].head, 3);
  for (const Intervention& iv : *ivs) {
    EXPECT_EQ(iv.begin_pos, 0);
    EXPECT_EQ(iv.end_pos, INT32_MAX);
  }
}

TEST(InterventionFlagsTest, HiddenStatesAllOrAList) {
  Args a("t", "");
  DeclareHiddenStatesFlag(a);
  ASSERT_TRUE(Parse(a, {"--hidden-states", "all"}).ok());
  auto all = HiddenStatesFromFlag(a, Tiny());
  ASSERT_TRUE(all.ok());
  ASSERT_EQ(all->size(), 3u);  // 0..num_layers
  EXPECT_EQ((*all)[2].index, 2);
  Args b("t", "");
  DeclareHiddenStatesFlag(b);
  ASSERT_TRUE(Parse(b, {"--hidden-states", "2,0"}).ok());
  auto two = HiddenStatesFromFlag(b, Tiny());
  ASSERT_TRUE(two.ok());
  ASSERT_EQ(two->size(), 2u);
  EXPECT_EQ((*two)[0].index, 2);
  EXPECT_EQ((*two)[0].kind, ActivationKind::kResidual);
}

}  // namespace
}  // namespace gemma
