#!/usr/bin/python3
"""A client in another language: Python grpcio stubs generated from the same protos call a real cluster.

Usage: python_client_test.py PROTO_DIR WORKER_BINARY ROUTER_BINARY MODEL_DIR [TESTDATA_ROOT]

MODEL_DIR is gemma-tiny's tiny-mqa; tiny-mha beside it serves the LoRA, activation and steering checks, against
gemma-lora-tiny and gemma-activations-tiny under TESTDATA_ROOT (GEMMA_TESTDATA, when set, wins).
"""
import json
import math
import os
import struct
import subprocess
import sys
import tempfile
import time


def main():
    proto_dir, worker_bin, router_bin, model = sys.argv[1:5]
    out = tempfile.mkdtemp(prefix="gemma-py-")
    subprocess.run(["protoc", f"--proto_path={proto_dir}", f"--python_out={out}", f"--grpc_out={out}",
                    "--plugin=protoc-gen-grpc=/usr/bin/grpc_python_plugin", "gemma/v1/gemma.proto"], check=True)
    sys.path.insert(0, out)
    import grpc
    from gemma.v1 import gemma_pb2, gemma_pb2_grpc

    worker_port, router_port = os.path.join(out, "worker.port"), os.path.join(out, "router.port")
    procs = [subprocess.Popen([worker_bin, f"--model={model}", f"--port_file={worker_port}", "--threads=1",
                               "--kv_cache_mb=32"], stdout=subprocess.DEVNULL)]
    try:
        port = wait_port(worker_port)
        procs.append(subprocess.Popen([router_bin, "--plaintext", f"--workers=127.0.0.1:{port}", f"--port_file={router_port}"],
                                      stdout=subprocess.DEVNULL))
        stub = gemma_pb2_grpc.GemmaStub(grpc.insecure_channel(f"127.0.0.1:{wait_port(router_port)}"))
        passed = 0

        req = gemma_pb2.GenerateRequest(
            input=gemma_pb2.Input(token_ids=gemma_pb2.TokenIdList(ids=[2, 3791, 323])),
            parameters=gemma_pb2.GenerationParameters(max_new_tokens=8))
        unary = stub.Generate(req, timeout=60)
        # The reference greedy continuation of "Hello" on tiny-mqa starts with these ids.
        assert [t.id for t in unary.tokens][:3] == [1206, 2956, 2986], [t.id for t in unary.tokens]
        assert unary.finish_reason == gemma_pb2.FINISH_REASON_LENGTH
        passed += 1

        text, final = "", None
        for event in stub.GenerateStream(req, timeout=60):
            if event.HasField("token"):
                text += event.token.text_delta
            else:
                final = event.final
        assert text == unary.text and final.usage.generated_tokens == 8
        passed += 1

        tokens = stub.Tokenize(gemma_pb2.TokenizeRequest(text="Hello", add_bos=True), timeout=10)
        assert list(tokens.ids) == [2, 3791, 323], list(tokens.ids)
        passed += 1

        try:
            stub.Generate(gemma_pb2.GenerateRequest(input=gemma_pb2.Input(token_ids=gemma_pb2.TokenIdList(ids=[]))),
                          timeout=10)
            raise AssertionError("an empty list of token ids was accepted")
        except grpc.RpcError as e:
            assert e.code() == grpc.StatusCode.INVALID_ARGUMENT, e.code()
        passed += 1
        # Over TLS with an API key: the same stubs, standard grpc credentials and metadata.
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
                        "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1", "-keyout", f"{out}/key.pem",
                        "-out", f"{out}/cert.pem"], check=True, capture_output=True)
        with open(f"{out}/keys", "w") as f:
            f.write("py-key-1\n")
        tls_port = os.path.join(out, "tls.port")
        procs.append(subprocess.Popen([router_bin, f"--workers=127.0.0.1:{port}", f"--port_file={tls_port}",
                                       f"--tls_cert={out}/cert.pem", f"--tls_key={out}/key.pem",
                                       f"--api_keys_file={out}/keys"], stdout=subprocess.DEVNULL))
        with open(f"{out}/cert.pem", "rb") as f:
            creds = grpc.ssl_channel_credentials(root_certificates=f.read())
        secure = gemma_pb2_grpc.GemmaStub(grpc.secure_channel(f"localhost:{wait_port(tls_port)}", creds))
        hello = gemma_pb2.TokenizeRequest(text="Hello", add_bos=True)
        assert list(secure.Tokenize(hello, timeout=10, metadata=[("authorization", "Bearer py-key-1")]).ids) == [2, 3791, 323]
        try:
            secure.Tokenize(hello, timeout=10, metadata=[("authorization", "Bearer nope")])
            raise AssertionError("a wrong API key was accepted")
        except grpc.RpcError as e:
            assert e.code() == grpc.StatusCode.UNAUTHENTICATED, e.code()
        passed += 1

        root = os.environ.get("GEMMA_TESTDATA") or (sys.argv[5] if len(sys.argv) > 5 else "")
        lora = os.path.join(root, "gemma-lora-tiny")
        acts = os.path.join(root, "gemma-activations-tiny")
        if not (os.path.isdir(lora) and os.path.isdir(acts)):
            print(f"*** gemma-lora-tiny or gemma-activations-tiny is ABSENT under {root!r}: "
                  "the LoRA, activation and steering checks did not run ***")
        else:
            mha_port, mha_router = os.path.join(out, "mha.port"), os.path.join(out, "mha-router.port")
            procs.append(subprocess.Popen([worker_bin, f"--model={os.path.join(os.path.dirname(model), 'tiny-mha')}",
                                           f"--lora=ad={lora}/mha-r8-all", f"--port_file={mha_port}", "--threads=1",
                                           "--kv_cache_mb=32"], stdout=subprocess.DEVNULL))
            procs.append(subprocess.Popen([router_bin, "--plaintext", f"--workers=127.0.0.1:{wait_port(mha_port)}",
                                           f"--port_file={mha_router}"], stdout=subprocess.DEVNULL))
            mha = gemma_pb2_grpc.GemmaStub(grpc.insecure_channel(f"127.0.0.1:{wait_port(mha_router)}"))
            passed += served_model_changes(gemma_pb2, mha, lora, acts)
        print(f"{passed} passed, 0 failed")
    finally:
        for p in procs:
            p.kill()
            p.wait()


def served_model_changes(gemma_pb2, stub, lora, acts):
    """A LoRA adapter, activations read out and a steering vector, on tiny-mha against the references."""
    passed = 0
    hello = gemma_pb2.Input(token_ids=gemma_pb2.TokenIdList(ids=[2, 3791, 323]))
    with open(f"{lora}/reference/mha-r8-all/generations.json") as f:
        want = json.load(f)["results"][0]["generated_ids"]
    adapted = stub.Generate(gemma_pb2.GenerateRequest(input=hello, adapter="ad",
                                                      parameters=gemma_pb2.GenerationParameters(max_new_tokens=32)),
                            timeout=60)
    assert [t.id for t in adapted.tokens] == want, [t.id for t in adapted.tokens]
    passed += 1

    with open(f"{acts}/tiny-mha/fox/hidden_embedding.json") as f:
        fox = json.load(f)["ids"]
    with open(f"{acts}/tiny-mha/fox/hidden_embedding.f32.bin", "rb") as f:
        embedding = struct.unpack(f"<{len(fox) * 128}f", f.read())
    scored = stub.Score(gemma_pb2.ScoreRequest(input=gemma_pb2.Input(token_ids=gemma_pb2.TokenIdList(ids=fox)),
                                               activations=gemma_pb2.ActivationRequest(all_residual=True)),
                        timeout=60)
    assert len(scored.logprobs) == len(fox) - 1
    assert [(a.kind, a.index) for a in scored.activations] == [(gemma_pb2.ACTIVATION_KIND_RESIDUAL, i) for i in range(3)]
    first = scored.activations[0]
    assert list(first.shape) == [len(fox), 128] and list(first.positions) == list(range(len(fox))), first.shape
    got = struct.unpack(f"<{len(fox) * 128}f", first.data)
    for r in range(len(fox)):
        row = embedding[r * 128:(r + 1) * 128]
        norm = math.sqrt(sum(x * x for x in row))
        worst = max(abs(a - b) for a, b in zip(got[r * 128:(r + 1) * 128], row))
        assert worst <= 1e-5 * norm, (r, worst, norm)
    passed += 1

    with open(f"{acts}/steering_vector.f32.bin", "rb") as f:
        vector = struct.unpack("<128f", f.read())
    with open(f"{acts}/tiny-mha/interventions/steer_layer0/generations.json") as f:
        steered_want = json.load(f)["results"][0]["generated_ids"]
    params = gemma_pb2.GenerationParameters(max_new_tokens=32)
    plain = stub.Generate(gemma_pb2.GenerateRequest(input=hello, parameters=params), timeout=60)
    steer = gemma_pb2.Intervention(steer=gemma_pb2.Steer(layer=0, vector=vector))
    steered = stub.Generate(gemma_pb2.GenerateRequest(input=hello, parameters=params, interventions=[steer]),
                            timeout=60)
    assert [t.id for t in steered.tokens] == steered_want, [t.id for t in steered.tokens]
    assert [t.id for t in plain.tokens] != steered_want, "steering changed nothing"
    passed += 1
    return passed


def wait_port(path, seconds=30):
    end = time.time() + seconds
    while time.time() < end:
        try:
            with open(path) as f:
                port = int(f.read().strip() or 0)
            if port:
                return port
        except (OSError, ValueError):
            pass
        time.sleep(0.05)
    raise RuntimeError(f"no port in {path}")


if __name__ == "__main__":
    main()
