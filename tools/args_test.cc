#include "tools/args.h"

#include "gtest/gtest.h"

namespace gemma {
namespace {

absl::Status ParseVec(Args& a, std::vector<std::string> argv) {
  std::vector<char*> ptrs;
  for (auto& s : argv) ptrs.push_back(s.data());
  return a.Parse(static_cast<int>(ptrs.size()), ptrs.data());
}

TEST(ArgsTest, ParsesValuesAndBooleans) {
  Args a("t", "");
  a.Flag("n", "").Flag("x", "").Flag("json", "", true);
  ASSERT_TRUE(ParseVec(a, {"--n", "5", "--x=1.5", "--json"}).ok());
  EXPECT_EQ(*a.GetInt("n", 0, 0, 10), 5);
  EXPECT_EQ(*a.GetDouble("x", 0, 0, 2), 1.5);
  EXPECT_TRUE(a.Has("json"));
}

TEST(ArgsTest, RepeatedFlagsKeepEveryValueInOrder) {
  Args a("t", "");
  a.RepeatedFlag("steer", "").Flag("n", "");
  ASSERT_TRUE(ParseVec(a, {"--steer", "0:a", "--n", "1", "--steer=1:b"}).ok());
  EXPECT_EQ(a.GetAll("steer"), (std::vector<std::string>{"0:a", "1:b"}));
  EXPECT_TRUE(a.GetAll("n").empty());
  EXPECT_FALSE(ParseVec(a, {"--n", "2"}).ok());  // --n once already
  Args b("t", "");
  b.RepeatedFlag("steer", "");
  ASSERT_TRUE(ParseVec(b, {}).ok());
  EXPECT_TRUE(b.GetAll("steer").empty());
}

TEST(ArgsTest, RejectsBadInput) {
  Args a("t", "");
  a.Flag("n", "");
  EXPECT_FALSE(ParseVec(a, {"--m", "1"}).ok());
  Args b("t", "");
  b.Flag("n", "");
  EXPECT_FALSE(ParseVec(b, {"--n"}).ok());
  Args c("t", "");
  c.Flag("n", "");
  EXPECT_FALSE(ParseVec(c, {"stray"}).ok());
  Args d("t", "");
  d.Flag("n", "");
  ASSERT_TRUE(ParseVec(d, {"--n", "11"}).ok());
  EXPECT_FALSE(d.GetInt("n", 0, 0, 10).ok());
  Args e("t", "");
  e.Flag("n", "");
  ASSERT_TRUE(ParseVec(e, {"--n", "1,2,x"}).ok());
  EXPECT_FALSE(e.GetIntList("n", 0, 10).ok());
  // A value left out before the next flag is named, not taken as the value; negative numbers and '=' still work.
  Args f("t", "");
  f.Flag("name", "").Flag("port", "").Flag("t", "");
  const absl::Status left_out = ParseVec(f, {"--name", "--port", "80"});
  EXPECT_NE(left_out.message().find("--name needs a value, and --port follows it"), std::string::npos) << left_out;
  Args g("t", "");
  g.Flag("name", "").Flag("t", "");
  ASSERT_TRUE(ParseVec(g, {"--name=--odd", "--t", "-1"}).ok());
  EXPECT_EQ(g.Get("name"), "--odd");
  EXPECT_EQ(g.Get("t"), "-1");
}

}  // namespace
}  // namespace gemma
