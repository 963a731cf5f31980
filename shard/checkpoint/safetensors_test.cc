#include "shard/checkpoint/safetensors.h"

#include "gtest/gtest.h"

namespace gemma {
namespace {

std::string File(const std::string& header_json, size_t data_bytes) {
  std::string out(8, '\0');
  const uint64_t n = header_json.size();
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>((n >> (8 * i)) & 0xff);
  return out + header_json + std::string(data_bytes, '\0');
}

std::string ErrorOf(const std::string& file) {
  auto h = ParseSafetensors(file, "x.safetensors");
  EXPECT_FALSE(h.ok());
  return std::string(h.status().message());
}

TEST(SafetensorsTest, ParsesValidHeader) {
  auto h = ParseSafetensors(
      File(R"({"__metadata__":{"format":"pt"},"a":{"dtype":"BF16","shape":[2,3],"data_offsets":[0,12]},)"
           R"("b":{"dtype":"F32","shape":[1],"data_offsets":[12,16]}})",
           16),
      "x");
  ASSERT_TRUE(h.ok()) << h.status();
  EXPECT_EQ(h->tensors.size(), 2u);
  EXPECT_EQ(h->metadata.at("format"), "pt");
  EXPECT_EQ(h->tensors.at("a").shape, (std::vector<int64_t>{2, 3}));
  EXPECT_EQ(h->tensors.at("b").begin, 12u);
}

TEST(SafetensorsTest, RoundTripsWrittenHeader) {
  const std::string header = SafetensorsHeaderBytes({{"w", DType::kBF16, {4, 2}, 16}}, {{"format", "pt"}});
  EXPECT_EQ(header.size() % 8, 0u);
  auto h = ParseSafetensors(header + std::string(16, '\0'), "x");
  ASSERT_TRUE(h.ok()) << h.status();
  EXPECT_EQ(h->tensors.at("w").end, 16u);
}

TEST(SafetensorsTest, RejectsMalformedFiles) {
  EXPECT_NE(ErrorOf("abc").find("at least 8"), std::string::npos);
  std::string huge(8, '\xff');
  EXPECT_NE(ErrorOf(huge + "{}").find("runs past the end"), std::string::npos);
  EXPECT_NE(ErrorOf(File("{not json", 0)).find("not valid JSON"), std::string::npos);
  EXPECT_NE(ErrorOf(File("[1,2]", 0)).find("JSON object"), std::string::npos);
  EXPECT_NE(ErrorOf(File(R"({"a":{"dtype":"BF16","shape":[4],"data_offsets":[0,8]}})", 4)).find("past the end"),
            std::string::npos);
  EXPECT_NE(ErrorOf(File(R"({"a":{"dtype":"BF16","shape":[4],"data_offsets":[0,6]}})", 8)).find("need 8"),
            std::string::npos);
  EXPECT_NE(ErrorOf(File(R"({"a":{"dtype":"BF16","shape":[4],"data_offsets":[8,0]}})", 8)).find("begin"),
            std::string::npos);
  EXPECT_NE(ErrorOf(File(R"({"a":{"dtype":"Q4","shape":[4],"data_offsets":[0,8]}})", 8)).find("unknown dtype"),
            std::string::npos);
  EXPECT_NE(ErrorOf(File(R"({"a":{"dtype":"BF16","shape":[-4],"data_offsets":[0,8]}})", 8)).find("non-negative"),
            std::string::npos);
  EXPECT_NE(ErrorOf(File(R"({"a":{"dtype":"BF16","shape":[4],"data_offsets":[0,8]},)"
                         R"("b":{"dtype":"BF16","shape":[4],"data_offsets":[4,12]}})",
                         12))
                .find("overlap"),
            std::string::npos);
  EXPECT_NE(ErrorOf(File(R"({"a":{"dtype":"BF16","shape":[4294967296,4294967296],"data_offsets":[0,8]}})", 8))
                .find("implausibly large"),
            std::string::npos);
}

TEST(SafetensorsTest, ErrorsNameTheFileAndTensor) {
  const std::string err = ErrorOf(File(R"({"layer.w":{"dtype":"F32","shape":[4],"data_offsets":[0,8]}})", 8));
  EXPECT_NE(err.find("x.safetensors"), std::string::npos);
  EXPECT_NE(err.find("layer.w"), std::string::npos);
}

}  // namespace
}  // namespace gemma
