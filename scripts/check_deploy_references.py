#!/usr/bin/env python3
"""Keeps the container images and Kubernetes manifests honest where no Docker engine or cluster runs: every file
the Dockerfiles copy or run exists, every binary they or the manifests start is installed by `cmake --install`,
every port they expose is a port the manifests use, every flag the manifests pass is one the binary accepts, every
library the binaries load comes from the packages the runtime image installs, and install-deps.sh knows the modes
the Dockerfiles call.

usage: check_deploy_references.py BUILD_DIR RENDERED_MANIFEST.yaml...
"""
import glob
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
            if word == "ENTRYPOINT":
                for path in re.findall(r'"(/[^"]+)"', args):
                    if not os.path.exists(path.replace(PREFIX, install, 1)):
                        fail(f"{name}: ENTRYPOINT {path} is not installed by cmake --install")
            if word == "USER":
                user = args
        if user is None or user.split(":")[0] in ("0", "root"):
            fail(f"{name}: the image must run as a non-root USER")

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
    router_flags = accepted_flags(os.path.join(install, "bin/gemma-router"), "--helpfull")
    worker_flags = accepted_flags(os.path.join(install, "bin/gemma-worker"), "--helpfull")
    tiny_flags = accepted_flags(os.path.join(install, "bin/gemma"), "make-tiny", "--help")
    for flags_file in glob.glob(os.path.join(ROOT, "deploy/kubernetes/**/router.flags"), recursive=True):
        for flag in re.findall(r"^--([a-z0-9_]+)", open(flags_file).read(), re.M):
            if flag not in router_flags:
                fail(f"{os.path.relpath(flags_file, ROOT)}: gemma-router has no flag --{flag}")
    for block in re.findall(r"command: \[\"" + re.escape(PREFIX) + r"/bin/gemma-worker\"\]\n\s+args:\n((?:\s+- .*\n)+)", rendered):
        for flag in re.findall(r"- --([a-z0-9_]+)", block):
            if flag not in worker_flags:
                fail(f"the manifests pass gemma-worker --{flag}, which it does not accept")
    for args in re.findall(r"\"" + re.escape(PREFIX) + r"/bin/gemma\", \"make-tiny\",([^\]]*)\]", rendered):
        for flag in re.findall(r"\"--([a-z0-9-]+)\"", args):
            if flag not in tiny_flags:
                fail(f"the manifests pass gemma make-tiny --{flag}, which it does not accept")
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
