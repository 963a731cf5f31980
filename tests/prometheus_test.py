#!/usr/bin/python3
"""A real Prometheus (Debian's package) with the project's local scrape config and alert rules, pointed at a local
cluster: after N requests its HTTP API shows the router's request counter at N, the rules are loaded, every rank of
the worker (gemma-worker --tp 2, as a Kubernetes pod runs it) reached it through the pod's one metrics port, and every
gemma_* metric it scraped is documented in monitoring/METRICS.md.

Usage: prometheus_test.py SOURCE_DIR WORKER_BINARY ROUTER_BINARY GEMMA_BINARY MODEL_DIR
"""
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request

N = 12


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(path, seconds=30):
    end = time.time() + seconds
    while time.time() < end:
        if os.path.exists(path) and open(path).read().strip():
            return int(open(path).read())
        time.sleep(0.05)
    raise AssertionError(f"no port in {path}")


def query(port, promql):
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
    with urllib.request.urlopen(url, timeout=5) as r:
        return json.load(r)["data"]["result"]


def settle(port, promql, ok, what, seconds=30):
    """The samples of `promql` once `ok(samples)` holds (scrapes come on their own schedule); fails naming `what`."""
    end, result = time.time() + seconds, None
    while time.time() < end:
        result = [(r["metric"], float(r["value"][1])) for r in query(port, promql)]
        if ok(result):
            return result
        time.sleep(0.5)
    raise AssertionError(f"{what}: {promql} gave {result}")


def api(port, path):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
        return json.load(r)["data"]


def main():
    source, worker_bin, router_bin, gemma_bin, model = sys.argv[1:6]
    prometheus = shutil.which("prometheus")
    if prometheus is None:
        raise SystemExit("FAIL: prometheus is not installed (Debian package prometheus; scripts/install-deps.sh installs it)")
    work = tempfile.mkdtemp(prefix="gemma-prom-")
    config_dir = os.path.join(work, "config")
    shutil.copytree(os.path.join(source, "monitoring/prometheus"), config_dir)
    os.makedirs(os.path.join(config_dir, "targets"), exist_ok=True)
    worker_metrics, router_metrics, prom_port = free_port(), free_port(), free_port()
    procs = []
    try:
        procs.append(subprocess.Popen([worker_bin, f"--model={model}", "--tp=2", f"--peer_port={free_port()}",
                                       f"--port_file={work}/worker.port", "--threads=1",
                                       "--kv_cache_mb=32", f"--metrics_port={worker_metrics}",
                                       "--group_name=prom-group"], stdout=subprocess.DEVNULL))
        worker_port = wait_port(f"{work}/worker.port")
        procs.append(subprocess.Popen([router_bin, "--plaintext", f"--workers=127.0.0.1:{worker_port}",
                                       f"--port_file={work}/router.port", f"--metrics_port={router_metrics}"],
                                      stdout=subprocess.DEVNULL))
        router_port = wait_port(f"{work}/router.port")
        with open(os.path.join(config_dir, "targets/local.json"), "w") as f:
            json.dump([{"targets": [f"127.0.0.1:{router_metrics}"], "labels": {"component": "router"}},
                       {"targets": [f"127.0.0.1:{worker_metrics}"], "labels": {"component": "worker"}}], f)
        procs.append(subprocess.Popen([prometheus, f"--config.file={config_dir}/prometheus-local.yml",
                                       f"--storage.tsdb.path={work}/tsdb", f"--web.listen-address=127.0.0.1:{prom_port}"],
                                      stdout=subprocess.DEVNULL, stderr=open(f"{work}/prometheus.log", "w")))
        for i in range(N):
            subprocess.run([gemma_bin, "client", "generate", "--server", f"127.0.0.1:{router_port}",
                            "--prompt-ids", f"2,{100 + i},{200 + i}", "--max-new-tokens", "4"],
                           check=True, stdout=subprocess.DEVNULL)
        seen, end = None, time.time() + 90
        while time.time() < end:
            try:
                result = query(prom_port, 'sum(gemma_router_requests_total{outcome="completed",code="OK"})')
                seen = float(result[0]["value"][1]) if result else None
                if seen == N:
                    break
            except OSError:
                pass  # Prometheus is still starting
            time.sleep(0.5)
        assert seen == N, f"Prometheus shows {seen} completed requests, expected {N}; log: {open(work + '/prometheus.log').read()[-2000:]}"

        rules = api(prom_port, "/api/v1/rules")
        names = {r["name"] for g in rules["groups"] for r in g["rules"]}
        assert "GemmaNoHealthyWorkerGroup" in names and "GemmaTimeToFirstTokenBudgetBurning" in names, names
        # Each target is scraped on its own schedule: wait until both have been, and are up.
        up, end = [], time.time() + 30
        while time.time() < end:
            up = query(prom_port, "up")
            if len(up) == 2 and all(r["value"][1] == "1" for r in up):
                break
            time.sleep(0.5)
        assert len(up) == 2 and all(r["value"][1] == "1" for r in up), up

        # The metrics of horizontal scaling, each with a value that follows from the N requests of 3 prompt tokens
        # and at most 4 generated tokens.
        one = lambda want: (lambda r: len(r) == 1 and r[0][1] == want)
        settle(prom_port, 'gemma_build_info{protocol="6"}', lambda r: len(r) == 2 and all(v == 1 for _, v in r),
               "build info on the router and the worker")
        settle(prom_port, 'gemma_worker_model_info{model="tiny-mqa",tp="2",device="cpu"}', one(1), "model info")
        settle(prom_port, 'gemma_worker_kv_blocks{rank="0"} > 0', lambda r: len(r) == 1, "KV blocks")
        # The follower's straggler view comes through the launcher's port, the only one a pod declares.
        for rank in ("0", "1"):
            settle(prom_port, f'gemma_worker_rank_step_duration_seconds_count{{rank="{rank}"}}',
                   lambda r: len(r) == 1 and r[0][1] >= N, f"rank {rank}'s steps")
            settle(prom_port, f'gemma_worker_rank_collective_duration_seconds_count{{rank="{rank}"}}',
                   lambda r: len(r) == 1 and r[0][1] >= N, f"rank {rank}'s collective times")
            settle(prom_port, f'gemma_worker_rank_up{{rank="{rank}"}}', one(1), f"rank {rank} answering the launcher")
        settle(prom_port, 'sum(gemma_router_requests_finished_total{reason=~"length|eos"})', one(N), "finished requests")
        settle(prom_port, "gemma_router_prompt_tokens_count", one(N), "prompt token histogram")
        settle(prom_port, "gemma_router_prompt_tokens_sum", one(3 * N), "prompt tokens")
        settle(prom_port, "gemma_router_generated_tokens_sum", lambda r: len(r) == 1 and N <= r[0][1] <= 4 * N,
               "generated tokens")
        settle(prom_port, "gemma_router_step_tokens_sum", lambda r: len(r) == 1 and r[0][1] >= 3 * N, "step tokens")
        settle(prom_port, "gemma_router_prefill_duration_seconds_count", one(N), "prefill durations")
        settle(prom_port, 'gemma_router_group_healthy{group="prom-group"}', one(1), "the group labelled by its name")

        documented = set(re.findall(r"^\| `(gemma_[a-z0-9_]+)`", open(os.path.join(source, "monitoring/METRICS.md")).read(), re.M))
        scraped = {n for n in api(prom_port, "/api/v1/label/__name__/values") if n.startswith("gemma_")}
        bases = {re.sub(r"_(bucket|sum|count)$", "", n) if re.sub(r"_(bucket|sum|count)$", "", n) in documented else n
                 for n in scraped}
        undocumented = sorted(bases - documented)
        assert not undocumented, f"scraped but not in monitoring/METRICS.md: {undocumented}"
        assert len(bases) >= 15, sorted(bases)
        print(f"Prometheus counted {N}/{N} requests; {len(bases)} gemma metrics scraped, all documented; rules loaded")
    finally:
        for p in reversed(procs):
            p.kill()
            p.wait()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
