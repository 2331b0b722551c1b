#!/usr/bin/env bash
# Recreate the minimum-versions environment from constraints/minimum.txt and run the whole test suite
# in it. requirements.txt / pyproject.toml only say ">=": nothing else ever installs those lowest
# releases, so a minimum that is too old for code we have (an API it lacks, a behaviour it differs in)
# is only caught here. Run it after raising or lowering a minimum, or after a dependency bump.
#
#   tools/check_minimums.sh [extra pytest arguments, e.g. tests/test_weights.py]
#
# Environment:
#   PYTHON       interpreter the venv is made from (default python3)
#   VENV         where the venv is built, from scratch every run (default $TMPDIR/talking-head-min-venv)
#   CONSTRAINTS  the pinned set (default constraints/minimum.txt; constraints/newest.txt checks the
#                newest tested set the same way, without the "pins are the declared minimums" check)
# torch is pinned there too (ComfyUI brings its own, so it is not a requirement). Where PyPI's torch is
# a CUDA build, point pip at the CPU wheels first: PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
VENV="${VENV:-${TMPDIR:-/tmp}/talking-head-min-venv}"
CONSTRAINTS="${CONSTRAINTS:-constraints/minimum.txt}"

if [ ! -f "$CONSTRAINTS" ]; then
    echo "error: no constraint file $CONSTRAINTS (set CONSTRAINTS to constraints/minimum.txt or newest.txt)" >&2
    exit 2
fi

# 1. The pins must be exactly the declared minimums, and pyproject.toml must declare what
#    requirements.txt does; otherwise this run would test some other set than the one we promise.
if [ "$(basename "$CONSTRAINTS")" = "minimum.txt" ]; then
    "$PY" - "$CONSTRAINTS" <<'EOF'
import re
import sys


def norm(name):
    return re.sub(r"[-_.]+", "-", name).lower()


def vtuple(v):
    """1.24 == 1.24.0; anything that is not plain numbers (2026.10.19.post1) compares as written."""
    v = v.split("+")[0]
    if not re.fullmatch(r"[0-9]+(\.[0-9]+)*", v):
        return (v,)
    parts = [int(p) for p in v.split(".")]
    return tuple(parts + [0] * (4 - len(parts)))


def requirements(path):
    out = {}
    for line in open(path, encoding="utf-8"):
        line = line.split("#")[0].strip()
        if line:
            m = re.fullmatch(r"([A-Za-z0-9_.-]+)\s*(>=|==)\s*([0-9][^\s;]*)", line)
            if not m:
                sys.exit(f"error: {path}: cannot read '{line}' (expected name>=version or name==version)")
            out[norm(m[1])] = (m[2], m[3])
    return out


pins = {}
for name, (op, version) in requirements(sys.argv[1]).items():
    if op != "==":
        sys.exit(f"error: {sys.argv[1]}: '{name}' must be pinned with ==")
    pins[name] = version
declared = {**requirements("requirements.txt"), **requirements("requirements-dev.txt"),
            **requirements("requirements-ray.txt")}
problems = [f"{name}{op}{version} is declared but {sys.argv[1]} pins {pins.get(name, 'nothing')}"
            for name, (op, version) in sorted(declared.items())
            if name not in pins or vtuple(pins[name]) != vtuple(version)]
try:
    import tomllib
except ImportError:  # Python 3.10: no TOML reader in the standard library
    tomllib = None
if tomllib is not None:
    with open("pyproject.toml", "rb") as fh:
        project = tomllib.load(fh)["project"]["dependencies"]
    runtime = sorted(f"{n}{op}{v}" for n, (op, v) in requirements("requirements.txt").items())
    pyproject = sorted(re.sub(r"\s+", "", d) for d in project)
    if sorted(map(norm, pyproject)) != sorted(map(norm, runtime)):
        problems.append(f"pyproject.toml declares {pyproject} but requirements.txt {runtime}")
if problems:
    sys.exit("error: the minimum pins and the declared minimums differ; make them agree "
             "(tools/check_minimums.sh tests the pins):\n  " + "\n  ".join(problems))
print(f"{sys.argv[1]}: pins the {len(declared)} declared minimums")
EOF
fi

# 2. A fresh venv with exactly the pinned set (torch first, so nothing asks pip for another build).
if [ -e "$VENV" ] && [ ! -f "$VENV/pyvenv.cfg" ]; then
    echo "error: $VENV exists and is not a venv; set VENV to a folder this script may delete" >&2
    exit 2
fi
rm -rf "$VENV"
"$PY" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip install --progress-bar off -c "$CONSTRAINTS")
"${PIP[@]}" torch
"${PIP[@]}" -r requirements.txt -r requirements-dev.txt -r requirements-ray.txt

# 3. Nothing unpinned crept in: a new transitive dependency would otherwise come in at its newest.
freeze="$VENV/freeze.txt"
"$VENV/bin/python" -m pip freeze --all --exclude pip > "$freeze"
"$PY" - "$CONSTRAINTS" "$freeze" <<'EOF'
import re
import sys


def norm(name):
    return re.sub(r"[-_.]+", "-", name).lower()


def pinned(path):
    out = {}
    for line in open(path, encoding="utf-8"):
        name, sep, version = line.split("#")[0].strip().partition("==")
        if sep:  # "name @ file://..." (a local wheel) names no version
            out[norm(name)] = version.strip().split("+")[0]
    return out


pins, installed = pinned(sys.argv[1]), pinned(sys.argv[2])
odd = [f"{name}=={version} (pinned: {pins.get(name, 'not pinned')})"
       for name, version in sorted(installed.items()) if pins.get(name) != version]
if odd:
    sys.exit(f"error: installed but not as pinned; add or update these lines in {sys.argv[1]}:\n  "
             + "\n  ".join(odd))
print(f"{sys.argv[2]}: the {len(installed)} installed packages are the pinned ones")
EOF

# 4. The suite, as README says, stopping at the first failure.
"$VENV/bin/python" -c "import numpy, torch; print('numpy', numpy.__version__, '| torch', torch.__version__)"
start=$SECONDS
status=0
"$VENV/bin/python" -m pytest tests -q -x -p no:cacheprovider "$@" || status=$?
echo "$CONSTRAINTS: pytest exit $status after $((SECONDS - start)) s"
exit "$status"
