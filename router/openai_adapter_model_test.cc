// LoRA adapters as models on the OpenAI-compatible API, as vLLM serves them: `model` names the base model or a loaded
// adapter, /v1/models lists both (an adapter's parent is the base model), adapters loaded and unloaded through the
// Admin service appear and disappear, and an unknown name is a 404 naming the allowed ones.
#include <grpcpp/grpcpp.h>

#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "gtest/gtest.h"
#include "router/http/test_client.h"
#include "router/openai_test_support.h"
#include "router/router_test_support.h"

namespace gemma {
namespace {

using http::testing::Call;
using http::testing::HttpReply;
using nlohmann::json;

std::string LoraDir() {
  const std::string dir = testing::GemmaLoraTinyDir();
  EXPECT_FALSE(dir.empty()) << "gemma-lora-tiny is absent: adapters as models cannot be checked";
  return dir;
}

class OpenAiAdapterModelTest : public OpenAiRouterTest {
 protected:
  static void SetUpTestSuite() {
    StartServers(GemmaTinyDir() + "/tiny-mha", {"--lora=all=" + LoraDir() + "/mha-r8-all"});
  }
  static json Models() {
    const HttpReply r = Call(http_port_, "GET", "/v1/models", "");
    EXPECT_EQ(r.status, 200) << r.body;
    return json::parse(r.body, nullptr, false);
  }
  static std::vector<std::string> ModelIds() {
    std::vector<std::string> ids;
    const json models = Models();
    for (const json& m : models["data"]) ids.push_back(m["id"]);
    return ids;
  }
  static std::unique_ptr<v1::Admin::Stub> Admin() {
    return v1::Admin::NewStub(
        grpc::CreateChannel("127.0.0.1:" + std::to_string(router_->port), grpc::InsecureChannelCredentials()));
  }
  // The greedy tokens gRPC gives `prompt` with `adapter` (empty: the base model).
  static std::string GrpcText(const std::string& prompt, const std::string& adapter, int max_new) {
    v1::GenerateRequest g;
    g.mutable_input()->set_text(prompt);
    g.mutable_parameters()->set_max_new_tokens(max_new);
    g.set_adapter(adapter);
    v1::GenerateResponse r;
    grpc::ClientContext ctx;
    const grpc::Status s = router_->stub->Generate(&ctx, g, &r);
    EXPECT_TRUE(s.ok()) << s.error_message();
    return r.text();
  }
};

TEST_F(OpenAiAdapterModelTest, ModelsListTheBaseModelAndEveryAdapterWithItsParent) {
  const json models = Models();
  ASSERT_EQ(models["data"].size(), 2u) << models.dump();
  EXPECT_EQ(models["data"][0]["id"], "tiny");
  EXPECT_TRUE(models["data"][0]["parent"].is_null());
  EXPECT_EQ(models["data"][1]["id"], "all");
  EXPECT_EQ(models["data"][1]["parent"], "tiny");
  EXPECT_EQ(models["data"][1]["object"], "model");
  EXPECT_EQ(models["data"][1]["max_model_len"], models["data"][0]["max_model_len"]);
}

TEST_F(OpenAiAdapterModelTest, AnAdapterNamedAsModelGeneratesAsTheGrpcApiWithIt) {
  const std::string prompt = "The quick brown fox";
  const HttpReply adapted = Post("/v1/completions", {{"model", "all"}, {"prompt", prompt}, {"max_tokens", 12},
                                                     {"temperature", 0}});
  ASSERT_EQ(adapted.status, 200) << adapted.body;
  const json body = json::parse(adapted.body);
  EXPECT_EQ(body["model"], "all") << "the answer names the model asked for";
  const std::string with_adapter = GrpcText(prompt, "all", 12);
  EXPECT_EQ(body["choices"][0]["text"], with_adapter);
  EXPECT_NE(with_adapter, GrpcText(prompt, "", 12)) << "the adapter changes the output, so the check means something";
  const HttpReply base = Post("/v1/completions", {{"model", "tiny"}, {"prompt", prompt}, {"max_tokens", 12},
                                                  {"temperature", 0}});
  EXPECT_EQ(json::parse(base.body)["choices"][0]["text"], GrpcText(prompt, "", 12));

  v1::GenerateRequest chat;
  auto* m = chat.mutable_input()->mutable_chat()->add_messages();
  m->set_role("user");
  m->set_content("Hello there");
  chat.mutable_parameters()->set_max_new_tokens(8);
  chat.set_adapter("all");
  v1::GenerateResponse want;
  grpc::ClientContext ctx;
  ASSERT_TRUE(router_->stub->Generate(&ctx, chat, &want).ok());
  const HttpReply chat_reply =
      Post("/v1/chat/completions", {{"model", "all"},
                                    {"messages", {{{"role", "user"}, {"content", "Hello there"}}}},
                                    {"max_tokens", 8},
                                    {"temperature", 0}});
  ASSERT_EQ(chat_reply.status, 200) << chat_reply.body;
  EXPECT_EQ(json::parse(chat_reply.body)["choices"][0]["message"]["content"], want.text());
  EXPECT_EQ(json::parse(chat_reply.body)["model"], "all");
}

TEST_F(OpenAiAdapterModelTest, AnUnknownModelIsA404NamingTheAllowedOnes) {
  const HttpReply r = Post("/v1/completions", {{"model", "nope"}, {"prompt", "x"}, {"max_tokens", 2}});
  EXPECT_EQ(r.status, 404) << r.body;
  const json e = json::parse(r.body)["error"];
  EXPECT_EQ(e["code"], "model_not_found");
  EXPECT_EQ(e["param"], "model");
  EXPECT_NE(e["message"].get<std::string>().find("'nope' does not exist; allowed: tiny, all"), std::string::npos)
      << e.dump();
}

TEST_F(OpenAiAdapterModelTest, AdaptersLoadedAndUnloadedAtRunTimeAppearAndDisappear) {
  {
    grpc::ClientContext ctx;
    v1::LoadAdapterRequest load;
    load.set_name("qv");
    load.set_path(LoraDir() + "/mha-r4-qv-f32");
    v1::Adapter loaded;
    const grpc::Status s = Admin()->LoadAdapter(&ctx, load, &loaded);
    ASSERT_TRUE(s.ok()) << s.error_message();
  }
  EXPECT_EQ(ModelIds(), (std::vector<std::string>{"tiny", "all", "qv"}));
  const json request = {{"model", "qv"}, {"prompt", "Once upon a time"}, {"max_tokens", 6}, {"temperature", 0}};
  const HttpReply loaded = Post("/v1/completions", request);
  ASSERT_EQ(loaded.status, 200) << loaded.body;
  EXPECT_EQ(json::parse(loaded.body)["choices"][0]["text"], GrpcText("Once upon a time", "qv", 6));
  {
    grpc::ClientContext ctx;
    v1::UnloadAdapterRequest unload;
    unload.set_name("qv");
    v1::UnloadAdapterResponse r;
    ASSERT_TRUE(Admin()->UnloadAdapter(&ctx, unload, &r).ok());
  }
  EXPECT_EQ(ModelIds(), (std::vector<std::string>{"tiny", "all"}));
  const HttpReply gone = Post("/v1/completions", request);
  EXPECT_EQ(gone.status, 404) << gone.body;
  EXPECT_EQ(json::parse(gone.body)["error"]["code"], "model_not_found");
}

}  // namespace
}  // namespace gemma
