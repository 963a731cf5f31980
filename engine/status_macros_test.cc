#include "engine/status_macros.h"

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "gtest/gtest.h"

namespace gemma {
namespace {

absl::Status Check(bool ok, int* calls) {
  ++*calls;
  return ok ? absl::OkStatus() : absl::InvalidArgumentError("bad");
}

absl::StatusOr<int> Number(bool ok, int* calls) {
  ++*calls;
  if (!ok) return absl::NotFoundError("no number");
  return 7;
}

absl::StatusOr<std::unique_ptr<std::string>> Owned(bool ok) {
  if (!ok) return absl::UnavailableError("none");
  return std::make_unique<std::string>("owned");
}

absl::Status TwoChecks(bool first, bool second, int* calls, bool* reached_end) {
  RETURN_IF_ERROR(Check(first, calls));
  RETURN_IF_ERROR(Check(second, calls));
  *reached_end = true;
  return absl::OkStatus();
}

TEST(StatusMacrosTest, ReturnIfErrorReturnsTheFirstFailureAndEvaluatesOnce) {
  int calls = 0;
  bool end = false;
  EXPECT_TRUE(TwoChecks(true, true, &calls, &end).ok());
  EXPECT_EQ(calls, 2);
  EXPECT_TRUE(end);

  calls = 0;
  end = false;
  const absl::Status s = TwoChecks(false, true, &calls, &end);
  EXPECT_EQ(s, absl::InvalidArgumentError("bad"));
  EXPECT_EQ(calls, 1);
  EXPECT_FALSE(end);
}

absl::StatusOr<int> ReturnIfErrorInStatusOr(bool ok) {
  int calls = 0;
  RETURN_IF_ERROR(Check(ok, &calls));
  return 1;
}

TEST(StatusMacrosTest, ReturnIfErrorInAFunctionReturningStatusOr) {
  EXPECT_EQ(*ReturnIfErrorInStatusOr(true), 1);
  EXPECT_EQ(ReturnIfErrorInStatusOr(false).status(), absl::InvalidArgumentError("bad"));
}

TEST(StatusMacrosTest, ReturnIfErrorIsOneStatement) {
  auto f = [](bool ok) -> absl::Status {
    int calls = 0;
    if (ok)
      RETURN_IF_ERROR(Check(true, &calls));
    else
      RETURN_IF_ERROR(Check(false, &calls));
    return absl::OkStatus();
  };
  EXPECT_TRUE(f(true).ok());
  EXPECT_FALSE(f(false).ok());
}

absl::StatusOr<int> Sum(bool first, bool second, int* calls) {
  // Twice in one scope: the temporaries have distinct names.
  ASSIGN_OR_RETURN(int a, Number(first, calls));
  ASSIGN_OR_RETURN(const int b, Number(second, calls));
  return a + b;
}

TEST(StatusMacrosTest, AssignOrReturnDeclaresOrReturnsAndEvaluatesOnce) {
  int calls = 0;
  EXPECT_EQ(*Sum(true, true, &calls), 14);
  EXPECT_EQ(calls, 2);

  calls = 0;
  EXPECT_EQ(Sum(true, false, &calls).status(), absl::NotFoundError("no number"));
  EXPECT_EQ(calls, 2);

  calls = 0;
  EXPECT_EQ(Sum(false, true, &calls).status(), absl::NotFoundError("no number"));
  EXPECT_EQ(calls, 1);
}

absl::Status AssignExisting(bool ok, std::vector<int>* out) {
  int calls = 0;
  ASSIGN_OR_RETURN(out->emplace_back(), Number(ok, &calls));
  return absl::OkStatus();
}

TEST(StatusMacrosTest, AssignOrReturnAssignsToAnExistingLvalue) {
  std::vector<int> v;
  EXPECT_TRUE(AssignExisting(true, &v).ok());
  ASSERT_EQ(v.size(), 1u);
  EXPECT_EQ(v[0], 7);
  EXPECT_EQ(AssignExisting(false, &v), absl::NotFoundError("no number"));
}

absl::StatusOr<std::string> MoveOnly(bool ok) {
  ASSIGN_OR_RETURN(std::unique_ptr<std::string> p, Owned(ok));
  return *p;
}

TEST(StatusMacrosTest, AssignOrReturnMovesTheValue) {
  EXPECT_EQ(*MoveOnly(true), "owned");
  EXPECT_EQ(MoveOnly(false).status(), absl::UnavailableError("none"));
}

template <typename A, typename B>
absl::StatusOr<std::pair<A, B>> MakePair(A a, B b) {
  return std::pair<A, B>(a, b);
}

absl::StatusOr<int> CommaInExpression() {
  ASSIGN_OR_RETURN(auto p, MakePair<int, int>(2, 3));
  return p.first * p.second;
}

TEST(StatusMacrosTest, AssignOrReturnTakesAnExpressionWithCommas) { EXPECT_EQ(*CommaInExpression(), 6); }

}  // namespace
}  // namespace gemma
