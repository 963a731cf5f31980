#!/usr/bin/env python3
"""Keeps the container images and Kubernetes manifests honest where no Docker engine or cluster runs: every file
the Dockerfiles copy or run exists, every binary they or the manifests start is installed by `cmake --install`,
every port they expose is a port the manifests use, every flag the manifests pass is one the binary accepts, every
library the binaries load comes from the packages the runtime image installs (or, for the CUDA backend module, is
copied into the CUDA image, and nothing more of the toolkit), every base image is pinned by digest, the build
context leaves out build trees, .git and node_modules, and install-deps.sh knows the modes the Dockerfiles call.

usage: check_deploy_references.py BUILD_DIR RENDERED_MANIFEST.yaml...
"""
import fnmatch
import glob
import json
import os
import re
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PREFIX = "/opt/gemma-serve"
errors = []


def fail(message):
    errors.append(message)


def instructions(path):
    """(instruction, arguments) pairs of a Dockerfile, continuation lines joined."""
    text = re.sub(r"\\\n", " ", open(path).read())
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            yield word.upper(), rest.strip()


def installed_tree(build_dir):
    prefix = tempfile.mkdtemp(prefix="gemma-install-")
    subprocess.run(["cmake", "--install", build_dir, "--prefix", prefix], check=True, stdout=subprocess.DEVNULL)
    return prefix


def accepted_flags(binary, *help_args):
    out = subprocess.run([binary, *help_args], capture_output=True, text=True)
    return set(re.findall(r"--([a-z][a-z0-9_-]*)", out.stdout + out.stderr))


def main():
    build_dir, manifests = sys.argv[1], sys.argv[2:]
    install = installed_tree(build_dir)
    cmake_options = open(os.path.join(ROOT, "CMakeLists.txt")).read()
    install_deps = open(os.path.join(ROOT, "scripts/install-deps.sh")).read()
    exposed = set()
    dockerfiles = sorted(glob.glob(os.path.join(ROOT, "deploy/docker/Dockerfile.*")))
    if not dockerfiles:
        fail("no Dockerfiles under deploy/docker")
    for dockerfile in dockerfiles:
        name = os.path.relpath(dockerfile, ROOT)
        user = None
        stages = set()
        for word, args in instructions(dockerfile):
            if word == "COPY" and "--from=" not in args:
                for source in args.split()[:-1]:
                    if source != "." and not glob.glob(os.path.join(ROOT, source)):
                        fail(f"{name}: COPY {source}: no such file in the repository")
            if word == "COPY" and "--from=build" in args:
                if args.split()[-2] != PREFIX:
                    fail(f"{name}: copies {args.split()[-2]} from the build stage; the install prefix is {PREFIX}")
            if word == "RUN":
                for script, mode in re.findall(r"bash (\S*install-deps\.sh) (--\w+)", args):
                    if f"  {mode})" not in install_deps:
                        fail(f"{name}: install-deps.sh has no mode {mode}")
                for option in re.findall(r"-D(GEMMA_\w+)=", args):
                    if f"option({option}" not in cmake_options:
                        fail(f"{name}: -D{option}: CMakeLists.txt has no such option")
                if "--prefix" in args and PREFIX not in args:
                    fail(f"{name}: installs somewhere other than {PREFIX}")
            if word == "EXPOSE":
                exposed |= {int(p) for p in args.split()}
            if word == "FROM":
                image = args.split()[0]
                # A later stage may start from an earlier one by name; anything pulled is pinned by digest, so a
                # rebuild gets the same bits (a tag can move).
                if image not in stages and not re.search(r"@sha256:[0-9a-f]{64}$", image):
                    fail(f"{name}: FROM {image} is not pinned by digest (image:tag@sha256:...)")
                if " AS " in args.upper():
                    stages.add(args.split()[-1])
            if word == "ENTRYPOINT":
                for path in re.findall(r'"(' + re.escape(PREFIX) + r'/[^"]+)"', args):
                    if not os.path.exists(path.replace(PREFIX, install, 1)):
                        fail(f"{name}: ENTRYPOINT {path} is not installed by cmake --install")
            if word == "USER":
                user = args
        if user is None or user.split(":")[0] in ("0", "root"):
            fail(f"{name}: the image must run as a non-root USER")

    # The images build with `COPY . .` from the repository root: a developer's build tree, .git and node_modules
    # must stay out of the context (a CMake cache from another path breaks the build).
    ignore_path = os.path.join(ROOT, ".dockerignore")
    ignored = open(ignore_path).read().split() if os.path.exists(ignore_path) else []
    for pattern in ("build*", ".git", "**/node_modules"):
        if pattern not in ignored:
            fail(f".dockerignore does not exclude {pattern}")

    rendered = "\n".join(open(m).read() for m in manifests)
    ports = {int(p) for p in re.findall(r"containerPort: (\d+)", rendered)}
    if ports != exposed:
        fail(f"the images EXPOSE {sorted(exposed)} but the manifests' containers use {sorted(ports)}")
    binaries = set(re.findall(re.escape(PREFIX) + r"/bin/([\w.-]+)", rendered))
    for binary in sorted(binaries):
        if not os.path.exists(os.path.join(install, "bin", binary)):
            fail(f"the manifests run {PREFIX}/bin/{binary}, which cmake --install does not install")
    if not os.path.exists(os.path.join(install, "bin", "libgemma_sentencepiece.so")):
        fail("libgemma_sentencepiece.so is not installed beside the binaries")

    # Flags passed by the manifests (args lists and the router's flag files) are ones the binaries accept.
    accepted = {
        "gemma-router": accepted_flags(os.path.join(install, "bin/gemma-router"), "--helpfull"),
        "gemma-worker": accepted_flags(os.path.join(install, "bin/gemma-worker"), "--helpfull"),
        "gemma make-tiny": accepted_flags(os.path.join(install, "bin/gemma"), "make-tiny", "--help"),
    }

    def check_flag(binary, flag, where):
        if flag not in accepted[binary]:
            fail(f"{where}: {binary} has no flag --{flag}")

    for flags_file in glob.glob(os.path.join(ROOT, "deploy/kubernetes/**/router.flags"), recursive=True):
        for flag in re.findall(r"^--([a-z0-9_]+)", open(flags_file).read(), re.M):
            check_flag("gemma-router", flag, os.path.relpath(flags_file, ROOT))
    containers = json.loads(subprocess.run(["node", os.path.join(ROOT, "deploy/validate/containers.mjs"), *manifests],
                                           check=True, capture_output=True, text=True).stdout)
    started = {"gemma-router": 0, "gemma-worker": 0, "gemma make-tiny": 0}
    for c in containers:
        argv = c["command"] + c["args"]
        binary = os.path.basename(argv[0]) if argv and argv[0].startswith(PREFIX + "/bin/") else None
        if binary == "gemma" and argv[1:2] == ["make-tiny"]:
            binary, argv = "gemma make-tiny", argv[1:]
        if binary not in started:
            continue
        started[binary] += 1
        for arg in argv[1:]:
            m = re.match(r"--([a-z][a-z0-9_-]*)", arg)
            if m:
                check_flag(binary, m.group(1), f"{c['object']} container {c['name']}")
    for binary, count in started.items():
        if count == 0:
            fail(f"no container of the manifests starts {binary}: the flag check would check nothing")

    # The runtime image installs `install-deps.sh --runtime`: every library the binaries load directly must come
    # from those packages (or their dependencies, or the C/C++ runtime every image has).
    runtime = re.search(r"runtime=\(([^)]*)\)", install_deps).group(1).split()
    allowed = set(runtime) | {"libc6", "libgcc-s1", "libstdc++6"}
    for package in runtime:
        depends = subprocess.run(["dpkg-query", "-W", "-f=${Depends}", package], capture_output=True, text=True).stdout
        allowed |= {d.strip().split(" ")[0].split(":")[0] for d in depends.replace("|", ",").split(",") if d.strip()}
    for name in ("gemma", "gemma-router", "gemma-worker", "libgemma_sentencepiece.so"):
        path = os.path.join(install, "bin", name)
        needed = re.findall(r"\(NEEDED\).*\[(.+)\]", subprocess.run(["readelf", "-d", path], capture_output=True, text=True).stdout)
        resolved = dict(re.findall(r"^\s*(\S+) => (/\S+)", subprocess.run(["ldd", path], capture_output=True, text=True).stdout, re.M))
        for lib in needed:
            if lib not in resolved:
                continue
            owner = subprocess.run(["dpkg", "-S", os.path.realpath(resolved[lib])], capture_output=True, text=True).stdout
            package = owner.split(":")[0] if owner else None
            if package and package not in allowed:
                fail(f"{name} loads {lib} from package {package}, which install-deps.sh --runtime does not install")

    # The CUDA image copies exactly the libraries the CUDA backend module loads beyond the runtime packages (the
    # CUDA runtime, cuBLASLt, NCCL), not a whole directory of the toolkit.
    cuda_module = os.path.join(install, "bin", "libgemma_cuda.so")
    cuda_dockerfile = os.path.join(ROOT, "deploy/docker/Dockerfile.cuda")
    if os.path.exists(cuda_module) and os.path.exists(cuda_dockerfile):
        copied = []
        for word, args in instructions(cuda_dockerfile):
            if word == "COPY" and "--from=cuda-runtime" in args:
                sources = [a for a in args.split()[:-1] if not a.startswith("--")]
                for source in sources:
                    if "*" not in os.path.basename(source) and not re.search(r"\.so[.\d]*$", source):
                        fail(f"Dockerfile.cuda: copies {source} whole from the CUDA runtime image; copy only the libraries")
                    copied.append(os.path.basename(source))
        needed = re.findall(r"\(NEEDED\).*\[(.+)\]", subprocess.run(["readelf", "-d", cuda_module], capture_output=True,
                                                                    text=True).stdout)
        for lib in needed:
            if re.match(r"lib(cuda|cublas|nccl|cudnn|nvrtc|cufft|curand|cusparse|cusolver)", lib):
                if not any(fnmatch.fnmatch(lib, pattern) for pattern in copied):
                    fail(f"libgemma_cuda.so loads {lib}, which Dockerfile.cuda does not copy from the CUDA runtime image")
        for pattern in copied:
            if not any(fnmatch.fnmatch(lib, pattern) for lib in needed):
                fail(f"Dockerfile.cuda copies {pattern}, which libgemma_cuda.so does not load")
    else:
        print("NOT CHECKED: the CUDA image's libraries (this build has no libgemma_cuda.so)")

    for env in sorted(set(re.findall(r"name: (GEMMA_[A-Z_]+)", rendered))):
        sources = subprocess.run(["grep", "-rl", env, os.path.join(ROOT, "worker"), os.path.join(ROOT, "tools")],
                                 capture_output=True, text=True).stdout
        if not sources:
            fail(f"the manifests set {env}, which no gemma-serve process reads")

    for e in errors:
        print("FAIL:", e)
    print(f"{len(dockerfiles)} Dockerfiles, {len(binaries)} binaries, {len(ports)} ports checked; {len(errors)} problems")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
