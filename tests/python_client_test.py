#!/usr/bin/python3
"""A client in another language: Python grpcio stubs generated from the same protos call a real cluster.

Usage: python_client_test.py PROTO_DIR WORKER_BINARY ROUTER_BINARY MODEL_DIR
"""
import os
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
            stub.Generate(gemma_pb2.GenerateRequest(input=gemma_pb2.Input(text="")), timeout=10)
            raise AssertionError("an empty prompt was accepted")
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
        print(f"{passed} passed, 0 failed")
    finally:
        for p in procs:
            p.kill()
            p.wait()


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
