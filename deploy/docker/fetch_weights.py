#!/usr/bin/env python3
"""Downloads a Hugging Face checkpoint at a pinned commit into $GEMMA_MODEL once, checks every file against the
digest the Hub lists for it at that commit, and writes $GEMMA_MODEL/SHA256SUMS (sha256sum's format), which the
worker pods check before they start. The download lands in $GEMMA_MODEL.partial and is moved into place only once
complete and verified, so a directory with SHA256SUMS is always whole and always what the Hub published. Runs in
the image of Dockerfile.fetch-weights (the gemma-fetch-weights Job).

env: HF_REPO (google/gemma-7b), HF_REVISION (a commit: 40 hex digits), GEMMA_MODEL (destination), HF_TOKEN.
"""
import fnmatch
import hashlib
import os
import re
import shutil
import sys

PATTERNS = ["*.json", "*.safetensors", "tokenizer.model"]


def check_revision(revision):
    """None for a full commit id; otherwise why the revision is refused. A branch such as main moves, and the
    SHA256SUMS written from it would bless whatever it pointed at that day."""
    if re.fullmatch(r"[0-9a-f]{40}", revision or ""):
        return None
    return (f'HF_REVISION "{revision or ""}" is not a commit; allowed: a full commit id (40 hex digits) of '
            f"the repository, as docs/DEPLOY.md (Weights) tells how to choose")


def file_digest(path, algorithm, git_blob=False):
    digest = hashlib.new(algorithm)
    if git_blob:  # a git blob id hashes a header before the content
        digest.update(f"blob {os.path.getsize(path)}\0".encode())
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 24), b""):
            digest.update(chunk)
    return digest.hexdigest()


def expected_files(siblings, patterns=PATTERNS):
    """name -> (kind, digest) for the top-level files the Job downloads, from the Hub's file metadata
    (HfApi.model_info(files_metadata=True).siblings): an LFS file's sha256, or for a file kept in git (the small
    JSON files) its git blob id."""
    expected = {}
    for s in siblings:
        name = s.rfilename
        if "/" in name or not any(fnmatch.fnmatch(name, p) for p in patterns):
            continue
        lfs = getattr(s, "lfs", None)
        if lfs is not None:
            sha = lfs["sha256"] if isinstance(lfs, dict) else lfs.sha256
            expected[name] = ("sha256", sha)
        elif getattr(s, "blob_id", None):
            expected[name] = ("git-blob", s.blob_id)
        else:
            raise ValueError(f"the Hub lists no digest for {name}; cannot verify it")
    return expected


def verify(directory, expected):
    """Checks the top-level files of `directory` against `expected` (from expected_files). Returns (sums, problems):
    sums maps every file to its sha256 (for SHA256SUMS); problems names each file that is missing, unexpected or
    differs from the Hub, with both digests."""
    present = sorted(n for n in os.listdir(directory) if os.path.isfile(os.path.join(directory, n)))
    sums, problems = {}, []
    for name in sorted(set(expected) - set(present)):
        problems.append(f"{name}: listed by the Hub but not downloaded")
    for name in present:
        path = os.path.join(directory, name)
        sums[name] = file_digest(path, "sha256")
        if name not in expected:
            problems.append(f"{name}: downloaded but not listed by the Hub at this revision")
            continue
        kind, want = expected[name]
        got = sums[name] if kind == "sha256" else file_digest(path, "sha1", git_blob=True)
        if got != want:
            problems.append(f"{name}: {kind} {got} differs from the Hub's {want}")
    return sums, problems


def main():
    repo, dest = os.environ["HF_REPO"], os.environ["GEMMA_MODEL"]
    revision = os.environ.get("HF_REVISION", "")
    if (why := check_revision(revision)) is not None:
        print(why, file=sys.stderr)
        return 2
    if os.path.exists(os.path.join(dest, "SHA256SUMS")):
        print(f"{dest} holds {repo} already (SHA256SUMS present); nothing to do")
        return 0
    from huggingface_hub import HfApi, snapshot_download  # only in the Job's image

    info = HfApi().model_info(repo, revision=revision, files_metadata=True)
    expected = expected_files(info.siblings)
    partial = dest + ".partial"
    snapshot_download(repo, revision=revision, local_dir=partial, allow_patterns=PATTERNS)
    shutil.rmtree(os.path.join(partial, ".cache"), ignore_errors=True)  # the downloader's own bookkeeping
    sums, problems = verify(partial, expected)
    if problems:
        for p in problems:
            print(f"{repo}@{revision}: {p}", file=sys.stderr)
        # A later run must download again, not resume from what failed the check.
        shutil.rmtree(partial, ignore_errors=True)
        print(f"{len(problems)} files do not match the Hub; {dest} left as it was", file=sys.stderr)
        return 1
    with open(os.path.join(partial, "SHA256SUMS"), "w") as out:
        for name, digest in sorted(sums.items()):
            out.write(f"{digest}  {name}\n")
    shutil.rmtree(dest, ignore_errors=True)  # a directory without SHA256SUMS is an interrupted older copy
    os.rename(partial, dest)
    print(f"{repo}@{revision} is in {dest}: {len(sums)} files, verified against the Hub and summed in SHA256SUMS")
    return 0


if __name__ == "__main__":
    sys.exit(main())
