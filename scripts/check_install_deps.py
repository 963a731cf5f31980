#!/usr/bin/env python3
"""Proves that scripts/install-deps.sh installs everything the build uses, so that a fresh Debian 12 machine can
build what this one built: every system header the compiler read (Ninja's dep log), every system library and
every program the build's commands name (absolute paths, -lNAME resolved like the linker does, and the C++
runtime the compiler driver adds) must belong to a Debian package that install-deps.sh names, or to one of
their Depends/Pre-Depends, followed through alternatives ("a | b") and virtual packages (Provides). A package
that is merely installed here, by hand or as a Recommends, fails the check, with the file that needs it.
Files under /usr/local/cuda (CUDA, cuBLAS, NCCL: the documented non-Debian dependency) are allowed and counted.

usage: check_install_deps.py [--build-dir DIR] [--drop PACKAGE]... [--expect-gap PACKAGE] [--verbose]
  --drop PACKAGE        leave PACKAGE out of install-deps.sh's set (to show that the check notices a gap)
  --expect-gap PACKAGE  succeed only if the check fails and blames PACKAGE for a header (the check's own test)
"""
import argparse
import glob
import os
import re
import shlex
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CUDA = "/usr/local/cuda"
# Libraries the compiler driver links without naming them on the link line.
IMPLICIT_LIBS = ("stdc++", "m", "gcc_s", "gcc", "c")


def run(args, **kwargs):
    return subprocess.run(args, capture_output=True, text=True, **kwargs)


def inside(path, dirs):
    return any(path == d or path.startswith(d + "/") for d in dirs)


def source_dir(build_dir):
    cache = os.path.join(build_dir, "CMakeCache.txt")
    if os.path.exists(cache):
        m = re.search(r"^CMAKE_HOME_DIRECTORY:INTERNAL=(.*)$", open(cache).read(), re.M)
        if m:
            return os.path.realpath(m.group(1))
    return ROOT


# ---------------------------------------------------------------------------------------------------------------
# What the build uses.

def header_dependencies(build_dir):
    """Absolute paths of every file the compiler read for a target still in the build graph (ninja -t deps)."""
    targets = run(["ninja", "-C", build_dir, "-t", "targets", "all"], check=True).stdout
    live = {line.rsplit(": ", 1)[0] for line in targets.splitlines()}
    out = run(["ninja", "-C", build_dir, "-t", "deps"], check=True).stdout
    headers, target = {}, None
    for line in out.splitlines():
        if not line.strip():
            continue
        if not line.startswith(" "):
            target = line.split(": #deps", 1)[0]
            keep = target in live
            continue
        path = line.strip()
        if keep and path.startswith("/"):
            headers.setdefault(os.path.normpath(path), target)
    return headers


def commands(build_dir):
    """Each command of the build as a list of words, `a && b` split into two; response files read in."""
    out = run(["ninja", "-C", build_dir, "-t", "commands"], check=True).stdout
    for line in out.splitlines():
        try:
            words = shlex.split(line)
        except ValueError:
            words = line.split()
        expanded = []
        for w in words:
            rsp = os.path.join(build_dir, w[1:]) if w.startswith("@") else None
            if rsp and os.path.isfile(rsp):
                expanded += shlex.split(open(rsp).read())
            else:
                expanded.append(w)
        command = []
        for w in expanded + ["&&"]:
            if w in ("&&", "||", ";"):
                if command:
                    yield command
                command = []
            else:
                command.append(w)


def print_file_name(compiler, name):
    out = run([compiler, f"-print-file-name={name}"]).stdout.strip()
    return out if os.path.isabs(out) and os.path.exists(out) else None


def libraries_and_programs(build_dir, ignore):
    """({library path: a target linking it}, {program path: its first use}, [unresolved -l flags])."""
    libraries, programs, unresolved = {}, {}, []
    compilers = set()
    lib_re = re.compile(r"^/.*\.(a|so(\.[0-9.]+)?)$")
    for words in commands(build_dir):
        if words[0] == "cd" or words[0] == ":":
            continue
        program = words[0]
        if os.path.isabs(program) and not inside(os.path.realpath(program), ignore):
            programs.setdefault(program, " ".join(words[:2]))
        for w in words[1:]:
            m = re.match(r"--plugin=[^=]+=(/\S+)$", w)
            if m:
                programs.setdefault(m.group(1), program)
        output = words[words.index("-o") + 1] if "-o" in words[:-1] else program
        is_link = "-c" not in words and any(w.endswith((".o", ".a", ".so")) or w.startswith("-l") for w in words)
        if not is_link:
            continue
        compilers.add(program)
        search = [w[2:] for w in words if w.startswith("-L") and len(w) > 2]
        if os.path.basename(program) == "nvcc":
            nvcc_root = os.path.dirname(os.path.dirname(program))
            search += [os.path.join(nvcc_root, "lib64")] + glob.glob(os.path.join(nvcc_root, "targets/*/lib"))
        for w in words[1:]:
            if lib_re.match(w) and not inside(os.path.realpath(w), ignore):
                libraries.setdefault(os.path.normpath(w), output)
            elif w.startswith("-l") and len(w) > 2:
                name = w[2:]
                found = None
                for d in search:
                    for candidate in (f"lib{name}.so", f"lib{name}.a"):
                        if os.path.exists(os.path.join(d, candidate)):
                            found = found or os.path.join(d, candidate)
                found = found or print_file_name(program, f"lib{name}.so") or print_file_name(program, f"lib{name}.a")
                if found:
                    libraries.setdefault(os.path.normpath(found), output)
                else:
                    unresolved.append(f"{output} links {w}, which {program} cannot find")
    for compiler in sorted(compilers):
        if os.path.basename(compiler) == "nvcc":
            continue
        for name in IMPLICIT_LIBS:
            found = print_file_name(compiler, f"lib{name}.so") or print_file_name(compiler, f"lib{name}.a")
            if found:
                libraries.setdefault(os.path.normpath(found), f"{os.path.basename(compiler)} (implicit -l{name})")
    return libraries, programs, unresolved


# ---------------------------------------------------------------------------------------------------------------
# Which packages own them.

def spellings(path):
    """The names dpkg may know a file by: as given, its real path, and /lib <-> /usr/lib (merged /usr)."""
    names = []
    for p in (path, os.path.realpath(path)):
        names.append(p)
        for top in ("/lib", "/lib64", "/bin", "/sbin"):
            if p.startswith(top + "/"):
                names.append("/usr" + p)
            if p.startswith("/usr" + top + "/"):
                names.append(p[len("/usr"):])
    return list(dict.fromkeys(names))


def owners(paths):
    """{path: set of packages} for every spelling of every path that dpkg knows (one dpkg -S per 500 names)."""
    names = sorted({n for p in paths for n in spellings(p)})
    owned = {}
    for i in range(0, len(names), 500):
        out = run(["dpkg", "-S", *names[i:i + 500]]).stdout
        for line in out.splitlines():
            if line.startswith("diversion by"):
                continue
            packages, sep, path = line.partition(": ")
            if sep:
                owned.setdefault(path.strip(), set()).update(p.strip().split(":")[0] for p in packages.split(","))
    return owned


def owning_packages(path, owned):
    """Packages that own the file (as named, and the file a symlink leads to); empty if dpkg knows neither."""
    result = set()
    for p in (path, os.path.realpath(path)):
        for name in spellings(p):
            result |= owned.get(name, set())
    return result


# ---------------------------------------------------------------------------------------------------------------
# What install-deps.sh installs.

def named_packages():
    out = run(["bash", os.path.join(ROOT, "scripts/install-deps.sh"), "--print"], check=True).stdout
    return [p for p in out.split() if p]


def installed_packages():
    """{package: (dependency groups, provides)}; a group is a list of alternative package names."""
    fmt = "${Package}\t${db:Status-Abbrev}\t${Depends}\t${Pre-Depends}\t${Provides}\t${Recommends}\n"
    out = run(["dpkg-query", "-W", "-f=" + fmt], check=True).stdout
    db = {}
    name = lambda s: re.sub(r"\s*\(.*?\)", "", s).strip().split(":")[0]
    for line in out.splitlines():
        package, status, depends, pre_depends, provides, recommends = (line.split("\t") + [""] * 6)[:6]
        if not status.startswith("ii"):
            continue
        entry = db.setdefault(package, ([], set(), set()))
        for field in (depends, pre_depends):
            for group in field.split(","):
                alternatives = [name(a) for a in group.split("|") if name(a)]
                if alternatives:
                    entry[0].append(alternatives)
        entry[1].update(name(p) for p in provides.split(",") if name(p))
        entry[2].update(name(a) for group in recommends.split(",") for a in group.split("|") if name(a))
    return db


def closure(start, db):
    """Every installed package reachable from `start` over Depends and Pre-Depends (any alternative, any provider)."""
    providers = {}
    for package, (_, provides, _) in db.items():
        for virtual in provides:
            providers.setdefault(virtual, set()).add(package)
    reached, todo = set(), [p for p in start if p in db]
    while todo:
        package = todo.pop()
        if package in reached:
            continue
        reached.add(package)
        for group in db[package][0]:
            for alternative in group:
                candidates = ({alternative} if alternative in db else set()) | providers.get(alternative, set())
                todo += [c for c in candidates if c not in reached]
    return reached


# ---------------------------------------------------------------------------------------------------------------

def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--build-dir", default=os.path.join(ROOT, "build"))
    parser.add_argument("--drop", action="append", default=[], metavar="PACKAGE")
    parser.add_argument("--expect-gap", metavar="PACKAGE")
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args()
    build_dir = os.path.realpath(args.build_dir)
    if not os.path.exists(os.path.join(build_dir, "build.ninja")):
        print(f"FAIL: {args.build_dir} is not a Ninja build directory (run scripts/build.sh)")
        return 1
    ignore = [source_dir(build_dir), build_dir, ROOT]
    cuda = [CUDA, os.path.realpath(CUDA)]

    headers = {h: t for h, t in header_dependencies(build_dir).items() if not inside(os.path.realpath(h), ignore)}
    libraries, programs, errors = libraries_and_programs(build_dir, ignore)
    if not headers:
        print(f"FAIL: the dep log of {args.build_dir} names no headers; build first (scripts/build.sh)")
        return 1

    named = named_packages()
    unknown = [p for p in args.drop if p not in named]
    if unknown:
        print(f"FAIL: install-deps.sh does not name {', '.join(unknown)}")
        return 1
    named = [p for p in named if p not in args.drop]
    db = installed_packages()
    reached = closure(named, db)

    files = [("header", h, t) for h, t in sorted(headers.items())] + \
            [("library", l, t) for l, t in sorted(libraries.items())] + \
            [("program", p, t) for p, t in sorted(programs.items())]
    owned = owners([f for _, f, _ in files if not inside(f, cuda) and not inside(os.path.realpath(f), cuda)])
    gaps, outside_cuda, used = {}, [], set()
    for kind, path, user in files:
        if inside(path, cuda) or inside(os.path.realpath(path), cuda):
            outside_cuda.append((kind, path))
            continue
        packages = owning_packages(path, owned)
        if not packages:
            errors.append(f"{path} ({kind}, used by {user}) belongs to no Debian package and is not under {CUDA}")
            continue
        used |= packages
        for package in sorted(packages - reached):
            gaps.setdefault(package, []).append((kind, path, user))

    for package, found in sorted(gaps.items()):
        recommenders = sorted(p for p in reached if package in db[p][2]) if package in db else []
        why = (f" ({', '.join(recommenders[:3])} only recommends it, and install-deps.sh installs without "
               f"recommends)") if recommenders else ""
        found.sort(key=lambda f: ("library", "program", "header").index(f[0]))
        for kind, path, user in found[:10]:
            errors.append(f"{package} provides {path} ({kind}, used by {user}) but install-deps.sh names neither it "
                          f"nor a package that depends on it{why}")
        if len(found) > 10:
            errors.append(f"{package}: and {len(found) - 10} more files the build uses")

    for e in errors:
        print("FAIL:", e)
    if args.verbose:
        for kind, path in outside_cuda:
            print(f"allowed: {path} ({kind}, CUDA toolkit, outside Debian)")
    cuda_libs = sorted({os.path.basename(p) for k, p in outside_cuda if k == "library"})
    checked = f"{len(headers)} headers, {len(libraries)} libraries, {len(programs)} programs checked"
    if gaps:
        print(f"{checked}: {len(used)} Debian packages, not installed by install-deps.sh: {' '.join(sorted(gaps))}")
    else:
        print(f"{checked}: {len(used)} Debian packages, all reached from the {len(named)} that install-deps.sh "
              f"names ({len(reached)} with their dependencies)")
    print(f"allowed outside Debian: {len(outside_cuda)} files from {CUDA} (CUDA, cuBLAS, NCCL)"
          + (f", libraries {' '.join(cuda_libs)}" if cuda_libs else "") + f"; {len(errors)} problems")

    if args.expect_gap:
        blamed = [path for kind, path, _ in gaps.get(args.expect_gap, []) if kind == "header"]
        if errors and blamed:
            print(f"as expected: without {args.expect_gap} the check fails, blaming it for {blamed[0]}")
            return 0
        print(f"FAIL: expected the check to fail blaming {args.expect_gap} for a header")
        return 1
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
