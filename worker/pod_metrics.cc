#include "worker/pod_metrics.h"

#include <CivetServer.h>

#include <future>

#include "absl/strings/str_cat.h"
#include "monitoring/exposition_merge.h"
#include "monitoring/http_get.h"
#include "prometheus/text_serializer.h"

namespace gemma {

class PodMetricsHandler : public CivetHandler {
 public:
  explicit PodMetricsHandler(PodMetrics* metrics) : metrics_(metrics) {}
  bool handleGet(CivetServer*, mg_connection* conn) override {
    const std::string body = metrics_->Scrape();
    mg_printf(conn,
              "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\nContent-Length: %zu\r\n"
              "Connection: close\r\n\r\n",
              body.size());
    mg_write(conn, body.data(), body.size());
    return true;
  }

 private:
  PodMetrics* metrics_;
};

absl::StatusOr<std::unique_ptr<PodMetrics>> PodMetrics::Serve(const std::string& address, int first_rank,
                                                              std::vector<int> rank_ports,
                                                              std::chrono::milliseconds timeout) {
  auto m = std::unique_ptr<PodMetrics>(new PodMetrics());
  m->rank_ports_ = std::move(rank_ports);
  m->timeout_ = timeout;
  m->registry_ = std::make_shared<prometheus::Registry>();
  auto& up = prometheus::BuildGauge()
                 .Name("gemma_worker_rank_up")
                 .Help("1 if this pod's rank answered the pod's last scrape, 0 if it did not (its metrics are missing).")
                 .Register(*m->registry_);
  for (size_t i = 0; i < m->rank_ports_.size(); ++i) {
    m->up_.push_back(&up.Add({{"rank", std::to_string(first_rank + static_cast<int>(i))}}));
  }
  m->handler_ = std::make_unique<PodMetricsHandler>(m.get());
  try {  // civetweb reports a port it cannot bind by throwing
    m->server_ = std::make_unique<CivetServer>(std::vector<std::string>{"listening_ports", address, "num_threads", "2"});
  } catch (const std::exception& e) {
    return absl::UnavailableError(absl::StrCat("cannot serve metrics on ", address, ": ", e.what()));
  }
  m->server_->addHandler("/metrics", m->handler_.get());
  return m;
}

PodMetrics::~PodMetrics() {
  // Scrapes in flight use this object: the server stops (and waits for them) before the rest goes.
  if (server_) server_->close();
}

std::string PodMetrics::Scrape() {
  std::vector<std::future<absl::StatusOr<std::string>>> replies;
  for (int port : rank_ports_) {
    replies.push_back(std::async(std::launch::async, [this, port] { return LoopbackHttpGet(port, "/metrics", timeout_); }));
  }
  std::vector<std::string> texts(1);  // the first is this launcher's own, filled in once the ranks have answered
  for (size_t i = 0; i < replies.size(); ++i) {
    auto text = replies[i].get();
    up_[i]->Set(text.ok() ? 1 : 0);
    if (text.ok()) texts.push_back(std::move(*text));
  }
  texts[0] = prometheus::TextSerializer().Serialize(registry_->Collect());
  return MergeExpositions(texts);
}

}  // namespace gemma
