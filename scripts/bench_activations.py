#!/usr/bin/python3
"""Times reading activations over the wire: a Score of a random prompt without them, then ScoreStream with every
residual layer (Hugging Face hidden_states) of every position, through a real worker and router.

Starts a worker on MODEL_DIR and a router, generates the Python stubs, runs each call REPEATS times alternately and
reports the medians and the transfer's share. Usage:
  bench_activations.py WORKER_BINARY ROUTER_BINARY MODEL_DIR PROTO_DIR PROMPT_LEN REPEATS OUT.json
"""
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time


def wait_port(path, seconds=600):
    for _ in range(seconds * 10):
        if os.path.exists(path) and open(path).read().strip():
            return int(open(path).read())
        time.sleep(0.1)
    raise SystemExit(f"{path} never appeared")


def main():
    worker_bin, router_bin, model, proto_dir, prompt_len, repeats, out_path = sys.argv[1:8]
    prompt_len, repeats = int(prompt_len), int(repeats)
    out = tempfile.mkdtemp(prefix="gemma-act-")
    subprocess.run(["protoc", f"--proto_path={proto_dir}", f"--python_out={out}", f"--grpc_out={out}",
                    "--plugin=protoc-gen-grpc=/usr/bin/grpc_python_plugin", "gemma/v1/gemma.proto"], check=True)
    sys.path.insert(0, out)
    import grpc
    from gemma.v1 import gemma_pb2, gemma_pb2_grpc

    wport, rport = os.path.join(out, "worker.port"), os.path.join(out, "router.port")
    procs = [subprocess.Popen([worker_bin, f"--model={model}", f"--port_file={wport}", "--kv_cache_mb=256"],
                              stdout=subprocess.DEVNULL)]
    try:
        print("loading the model ...", file=sys.stderr)
        port = wait_port(wport)
        procs.append(subprocess.Popen([router_bin, "--plaintext", f"--workers=127.0.0.1:{port}",
                                       f"--port_file={rport}", "--max_activation_bytes=1073741824"],
                                      stdout=subprocess.DEVNULL))
        channel = grpc.insecure_channel(f"127.0.0.1:{wait_port(rport)}",
                                        options=[("grpc.max_receive_message_length", 1 << 30)])
        stub = gemma_pb2_grpc.GemmaStub(channel)
        for _ in range(600):  # the router takes the group once it answered a health check
            try:
                info = stub.GetModelInfo(gemma_pb2.GetModelInfoRequest(), timeout=10)
                if info.healthy_groups > 0:
                    break
            except grpc.RpcError:
                pass
            time.sleep(0.2)
        else:
            raise SystemExit("the router never had a healthy group")
        rng = random.Random(7)
        ids = [info.bos_id] + [rng.randrange(4, info.vocab_size) for _ in range(prompt_len - 1)]
        plain = gemma_pb2.ScoreRequest(input=gemma_pb2.Input(token_ids=gemma_pb2.TokenIdList(ids=ids)))
        reading = gemma_pb2.ScoreRequest()
        reading.CopyFrom(plain)
        reading.activations.all_residual = True
        times = {"score": [], "score_stream_all_residual": []}
        received = 0
        for i in range(repeats):
            print(f"run {i + 1}/{repeats}", file=sys.stderr)
            start = time.perf_counter()
            stub.Score(plain, timeout=3600)
            times["score"].append(time.perf_counter() - start)
            start = time.perf_counter()
            received = 0
            for message in stub.ScoreStream(reading, timeout=3600):
                received += message.ByteSize()
            times["score_stream_all_residual"].append(time.perf_counter() - start)
        median = {k: statistics.median(v) for k, v in times.items()}
        extra = median["score_stream_all_residual"] - median["score"]
        result = {"model": info.name, "prompt_len": prompt_len, "hidden_size": info.hidden_size,
                  "residual_points": info.num_layers + 1, "repeats": repeats, "seconds": times,
                  "median_seconds": median, "bytes_received": received,
                  "extra_seconds_for_activations": extra,
                  "activation_bytes_per_s": received / extra if extra > 0 else None}
        json.dump(result, open(out_path, "w"), indent=2)
        print(json.dumps(result, indent=2))
    finally:
        for p in procs:
            p.terminate()
            p.wait()


if __name__ == "__main__":
    main()
