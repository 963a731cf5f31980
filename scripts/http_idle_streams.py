#!/usr/bin/python3
"""Holds N streaming OpenAI-API requests open on one router at once and reports its memory and threads.

Starts a worker and a router (one sequence per step, a queue of N), opens N connections that each POST a streamed
completion and read its response head, holds them while they wait their turn, then closes them all.
Usage: http_idle_streams.py WORKER_BINARY ROUTER_BINARY MODEL_DIR N OUT.json
"""
import json
import os
import socket
import subprocess
import sys
import tempfile
import time


def wait_port(path, seconds=60):
    for _ in range(seconds * 10):
        if os.path.exists(path) and open(path).read().strip():
            return int(open(path).read())
        time.sleep(0.1)
    raise SystemExit(f"{path} never appeared")


def status(pid):
    fields = {}
    for line in open(f"/proc/{pid}/status"):
        key, _, value = line.partition(":")
        fields[key] = value.strip()
    return int(fields["VmRSS"].split()[0]) * 1024, int(fields["Threads"])


def cpu_seconds(pid):
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def main():
    worker_bin, router_bin, model, n, out = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5]
    tmp = tempfile.mkdtemp(prefix="gemma-idle-")
    http = free_port()
    procs = [subprocess.Popen([worker_bin, f"--model={model}", f"--port_file={tmp}/w", "--threads=1",
                               "--kv_cache_mb=32"], stdout=subprocess.DEVNULL)]
    try:
        procs.append(subprocess.Popen([router_bin, "--plaintext", "--bind_host=127.0.0.1",
                                       f"--workers=127.0.0.1:{wait_port(tmp + '/w')}", f"--port_file={tmp}/r",
                                       f"--http_port={http}", f"--max_queued={n + 16}", "--max_batch_size=1",
                                       "--served_model_name=m"], stdout=subprocess.DEVNULL))
        wait_port(tmp + "/r")
        router = procs[1].pid
        time.sleep(0.5)
        rss0, threads0 = status(router)
        body = json.dumps({"model": "m", "prompt": "hold", "max_tokens": 400, "temperature": 0, "stream": True})
        request = (f"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                   f"Content-Length: {len(body)}\r\n\r\n{body}").encode()
        conns = []
        start = time.time()
        for i in range(n):
            s = socket.create_connection(("127.0.0.1", http))
            s.sendall(request)
            conns.append(s)
            if (i + 1) % 250 == 0:
                print(f"{i + 1}/{n} streams open", file=sys.stderr)
        heads = 0
        for s in conns:
            s.settimeout(10)
            if s.recv(64).startswith(b"HTTP/1.1 200"):
                heads += 1
        opened = time.time() - start
        cpu0 = cpu_seconds(router)
        time.sleep(5)
        cpu_holding = (cpu_seconds(router) - cpu0) / 5
        rss1, threads1 = status(router)
        held = sum(1 for s in conns if s.fileno() >= 0)
        for s in conns:
            s.close()
        time.sleep(2)
        rss2, threads2 = status(router)
        result = {"streams": n, "answered_200": heads, "held": held, "seconds_to_open": round(opened, 2),
                  "router_rss_bytes": {"before": rss0, "holding": rss1, "after_close": rss2},
                  "router_rss_per_stream_bytes": round((rss1 - rss0) / n),
                  "router_threads": {"before": threads0, "holding": threads1, "after_close": threads2},
                  "router_cpu_share_while_holding": round(cpu_holding, 3)}
        json.dump(result, open(out, "w"), indent=2)
        print(json.dumps(result, indent=2))
        if heads != n or threads1 > threads0 + 4:
            raise SystemExit("not every stream was held, or the router grew threads with its connections")
    finally:
        for p in procs:
            p.kill()


if __name__ == "__main__":
    main()
