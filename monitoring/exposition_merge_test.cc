// Merging expositions: what Prometheus would reject (a family split in two, a second TYPE line, a series twice)
// never comes out, and nothing a rank reports is lost.
#include "monitoring/exposition_merge.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "absl/strings/str_split.h"

namespace gemma {
namespace {

using ::testing::ElementsAre;

std::vector<std::string> Lines(const std::string& text) {
  return absl::StrSplit(text, '\n', absl::SkipEmpty());
}

const char kRank0[] =
    "# HELP step_seconds One step.\n"
    "# TYPE step_seconds histogram\n"
    "step_seconds_count{rank=\"0\"} 1\n"
    "step_seconds_sum{rank=\"0\"} 0.5\n"
    "step_seconds_bucket{rank=\"0\",le=\"+Inf\"} 1\n"
    "# HELP build_info Build.\n"
    "# TYPE build_info gauge\n"
    "build_info{version=\"0.1.0\"} 1\n"
    "# HELP leader_steps_total Steps.\n"
    "# TYPE leader_steps_total counter\n"
    "leader_steps_total{rank=\"0\"} 3\n";

const char kRank1[] =
    "# HELP step_seconds One step.\n"
    "# TYPE step_seconds histogram\n"
    "step_seconds_count{rank=\"1\"} 2\n"
    "step_seconds_sum{rank=\"1\"} 0.7\n"
    "step_seconds_bucket{rank=\"1\",le=\"+Inf\"} 2\n"
    "# HELP build_info Build.\n"
    "# TYPE build_info gauge\n"
    "build_info{version=\"0.1.0\"} 1\n";

TEST(ExpositionMergeTest, OverlappingFamiliesComeOutOnceWithEveryRanksSamples) {
  EXPECT_THAT(Lines(MergeExpositions({kRank0, kRank1})),
              ElementsAre("# HELP step_seconds One step.", "# TYPE step_seconds histogram",
                          "step_seconds_count{rank=\"0\"} 1", "step_seconds_sum{rank=\"0\"} 0.5",
                          "step_seconds_bucket{rank=\"0\",le=\"+Inf\"} 1", "step_seconds_count{rank=\"1\"} 2",
                          "step_seconds_sum{rank=\"1\"} 0.7", "step_seconds_bucket{rank=\"1\",le=\"+Inf\"} 2",
                          // The same series from both ranks would be a duplicate Prometheus drops with an error.
                          "# HELP build_info Build.", "# TYPE build_info gauge", "build_info{version=\"0.1.0\"} 1",
                          // A family only one rank has.
                          "# HELP leader_steps_total Steps.", "# TYPE leader_steps_total counter",
                          "leader_steps_total{rank=\"0\"} 3"));
}

TEST(ExpositionMergeTest, FamiliesKeepTheOrderFirstSeen) {
  EXPECT_THAT(Lines(MergeExpositions({kRank1, kRank0})),
              ElementsAre("# HELP step_seconds One step.", "# TYPE step_seconds histogram",
                          "step_seconds_count{rank=\"1\"} 2", "step_seconds_sum{rank=\"1\"} 0.7",
                          "step_seconds_bucket{rank=\"1\",le=\"+Inf\"} 2", "step_seconds_count{rank=\"0\"} 1",
                          "step_seconds_sum{rank=\"0\"} 0.5", "step_seconds_bucket{rank=\"0\",le=\"+Inf\"} 1",
                          "# HELP build_info Build.", "# TYPE build_info gauge", "build_info{version=\"0.1.0\"} 1",
                          "# HELP leader_steps_total Steps.", "# TYPE leader_steps_total counter",
                          "leader_steps_total{rank=\"0\"} 3"));
}

TEST(ExpositionMergeTest, NothingInNothingOut) {
  EXPECT_EQ(MergeExpositions({}), "");
  EXPECT_EQ(MergeExpositions({"", "\n"}), "");
  EXPECT_EQ(MergeExpositions({kRank0}), kRank0) << "one well-formed text passes through unchanged";
  // A family without samples says nothing.
  EXPECT_EQ(MergeExpositions({"# HELP idle Idle.\n# TYPE idle gauge\n"}), "");
}

TEST(ExpositionMergeTest, MalformedLinesAreLeftOut) {
  const std::string bad =
      "orphan 1\n"                             // before any family
      "# TYPE up gauge\n"
      "up{rank=\"2\"} 1\n"
      "up{rank=\"2\" 1\n"                      // labels never close
      "up{rank=\"2\"}\n"                       // no value
      "other_metric 4\n"                       // not of this family
      "# a comment\n"
      "up{rank=\"3\",path=\"a}b\\\"c\"} 0\r\n"  // a brace and an escaped quote inside a value; CRLF
      "# TYPE step_seconds counter\n"          // disagrees with the first text's histogram
      "step_seconds_count{rank=\"2\"} 9\n"
      "# TYPE\n"
      "# HELP 9bad x\n";
  EXPECT_THAT(Lines(MergeExpositions({kRank1, bad})),
              ElementsAre("# HELP step_seconds One step.", "# TYPE step_seconds histogram",
                          "step_seconds_count{rank=\"1\"} 2", "step_seconds_sum{rank=\"1\"} 0.7",
                          "step_seconds_bucket{rank=\"1\",le=\"+Inf\"} 2", "# HELP build_info Build.",
                          "# TYPE build_info gauge", "build_info{version=\"0.1.0\"} 1", "# TYPE up gauge",
                          "up{rank=\"2\"} 1", "up{rank=\"3\",path=\"a}b\\\"c\"} 0"));
}

TEST(ExpositionMergeTest, AFamilyARankSplitsIsJoined) {
  // Each family must be one block; a text that returns to a family it left is joined to it.
  EXPECT_THAT(Lines(MergeExpositions({"# TYPE a gauge\na 1\n# TYPE b gauge\nb 1\n", "# TYPE b gauge\nb{x=\"1\"} 2\n"
                                      "# TYPE a gauge\na{x=\"1\"} 2\n"})),
              ElementsAre("# TYPE a gauge", "a 1", "a{x=\"1\"} 2", "# TYPE b gauge", "b 1", "b{x=\"1\"} 2"));
}

}  // namespace
}  // namespace gemma
