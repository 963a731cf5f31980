#!/usr/bin/env python3
"""Downloads a Hugging Face checkpoint into $GEMMA_MODEL once and writes $GEMMA_MODEL/SHA256SUMS (sha256sum's
format), which the worker pods check before they start. The download lands in $GEMMA_MODEL.partial and is moved
into place only once complete and summed, so a directory with SHA256SUMS is always whole. Runs in the image of
Dockerfile.fetch-weights (the gemma-fetch-weights Job).

env: HF_REPO (google/gemma-7b), HF_REVISION (a commit or branch), GEMMA_MODEL (destination), HF_TOKEN.
"""
import hashlib
import os
import shutil
import sys

from huggingface_hub import snapshot_download

PATTERNS = ["*.json", "*.safetensors", "tokenizer.model"]


def sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 24), b""):
            digest.update(chunk)
    return digest.hexdigest()


def main():
    repo, dest = os.environ["HF_REPO"], os.environ["GEMMA_MODEL"]
    if os.path.exists(os.path.join(dest, "SHA256SUMS")):
        print(f"{dest} holds {repo} already (SHA256SUMS present); nothing to do")
        return 0
    partial = dest + ".partial"
    snapshot_download(repo, revision=os.environ.get("HF_REVISION") or None, local_dir=partial, allow_patterns=PATTERNS)
    shutil.rmtree(os.path.join(partial, ".cache"), ignore_errors=True)  # the downloader's own bookkeeping
    names = sorted(n for n in os.listdir(partial) if os.path.isfile(os.path.join(partial, n)))
    with open(os.path.join(partial, "SHA256SUMS"), "w") as sums:
        for name in names:
            sums.write(f"{sha256(os.path.join(partial, name))}  {name}\n")
    shutil.rmtree(dest, ignore_errors=True)  # a directory without SHA256SUMS is an interrupted older copy
    os.rename(partial, dest)
    print(f"{repo} is in {dest}: {len(names)} files, summed in SHA256SUMS")
    return 0


if __name__ == "__main__":
    sys.exit(main())
