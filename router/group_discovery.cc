#include "router/group_discovery.h"

#include <arpa/inet.h>
#include <netdb.h>

#include <cstdio>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "engine/status_macros.h"

namespace gemma {

absl::StatusOr<HostPort> ParseHostPort(const std::string& host_port) {
  const size_t colon = host_port.rfind(':');
  HostPort hp;
  if (colon == std::string::npos || colon == 0 || !absl::SimpleAtoi(host_port.substr(colon + 1), &hp.port) ||
      hp.port < 1 || hp.port > 65535) {
    return absl::InvalidArgumentError(
        absl::StrCat("\"", host_port, "\" is not HOST:PORT with a port in 1..65535 (for example gemma-leaders:50051)"));
  }
  hp.host = host_port.substr(0, colon);
  if (hp.host.size() > 2 && hp.host.front() == '[' && hp.host.back() == ']') {
    hp.host = hp.host.substr(1, hp.host.size() - 2);
  }
  return hp;
}

absl::StatusOr<std::set<std::string>> ResolveAll(const std::string& host_port) {
  ASSIGN_OR_RETURN(const HostPort parsed, ParseHostPort(host_port));
  const std::string& host = parsed.host;
  const int port = parsed.port;
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* found = nullptr;
  if (int rc = ::getaddrinfo(host.c_str(), nullptr, &hints, &found); rc != 0) {
    return absl::UnavailableError(absl::StrCat("cannot resolve ", host, ": ", ::gai_strerror(rc)));
  }
  std::set<std::string> out;
  for (addrinfo* a = found; a != nullptr; a = a->ai_next) {
    char ip[INET6_ADDRSTRLEN] = {};
    if (a->ai_family == AF_INET) {
      ::inet_ntop(AF_INET, &reinterpret_cast<sockaddr_in*>(a->ai_addr)->sin_addr, ip, sizeof(ip));
      out.insert(absl::StrCat(ip, ":", port));
    } else if (a->ai_family == AF_INET6) {
      ::inet_ntop(AF_INET6, &reinterpret_cast<sockaddr_in6*>(a->ai_addr)->sin6_addr, ip, sizeof(ip));
      out.insert(absl::StrCat("[", ip, "]:", port));
    }
  }
  ::freeaddrinfo(found);
  return out;
}

GroupDiscovery::GroupDiscovery(Resolver resolve, Connector connect, GroupSet* groups, std::chrono::milliseconds period)
    : resolve_(std::move(resolve)), connect_(std::move(connect)), groups_(groups), period_(period) {}

GroupDiscovery::~GroupDiscovery() {
  {
    absl::MutexLock lock(&mu_);
    stop_ = true;  // releasing mu_ wakes the refresh thread's wait
  }
  if (thread_.joinable()) thread_.join();
}

void GroupDiscovery::RefreshOnce() {
  auto addresses = resolve_();
  if (!addresses.ok()) {
    const std::string message(addresses.status().message());
    if (message != resolve_error_) {  // once per kind of failure, not every refresh
      std::fprintf(stderr, "gemma-router: %s; keeping the groups as they are\n", message.c_str());
      resolve_error_ = message;
    }
    return;
  }
  resolve_error_.clear();
  for (const std::string& address : *addresses) {
    if (groups_->Contains(address)) continue;
    auto group = connect_(address);
    absl::Status s = group.ok() ? groups_->Add(std::move(*group)) : group.status();
    if (s.ok()) {
      failing_.erase(address);
      std::fprintf(stderr, "gemma-router: worker group %s joined\n", address.c_str());
    } else if (failing_.insert(address).second) {
      std::fprintf(stderr, "gemma-router: %s (will retry)\n", std::string(s.message()).c_str());
    }
  }
  for (const std::string& address : groups_->addresses()) {
    if (!addresses->count(address)) std::fprintf(stderr, "gemma-router: worker group %s left; draining it\n", address.c_str());
  }
  groups_->Retain(*addresses);
}

void GroupDiscovery::Start() {
  thread_ = std::thread([this] {
    mu_.Lock();
    while (!stop_) {
      mu_.Unlock();
      RefreshOnce();
      mu_.Lock();
      mu_.AwaitWithTimeout(absl::Condition(&stop_), absl::FromChrono(period_));
    }
    mu_.Unlock();
  });
}

}  // namespace gemma
