"""The aarch64 tiers, run under qemu-user: tests/aarch64/driver.cpp, cross-compiled against
csrc's kernel sources with the flags CMakeLists.txt gives each unit, runs every kernel of every
tier the emulated CPU supports on the goldens the numpy tier wrote on x86-64
(tests/fixtures/aarch64), at two feature levels: qemu's `max` CPU (NEON and dotprod: tiers
neondot, neon, scalar) and a Cortex-A53 (ARMv8.0, no dotprod: neon, scalar).

This proves the aarch64 code computes the right results (qemu executes each instruction's
architectural semantics); it says nothing about speed. Skips where Debian's cross compiler
(g++-aarch64-linux-gnu) or qemu-user is absent."""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CSRC = ROOT / "src" / "pybitnet" / "csrc"
GOLDENS = ROOT / "tests" / "fixtures" / "aarch64" / "goldens.bin"
I2S_FILE = ROOT / "tests" / "fixtures" / "peers" / "bitnet-tiny-s1-i2_s.gguf"
CXX, QEMU = "aarch64-linux-gnu-g++", "qemu-aarch64"
MISSING = [tool for tool in (CXX, QEMU) if shutil.which(tool) is None]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        bool(MISSING),
        reason=f"{' and '.join(MISSING)} not found (Debian: apt-get install g++-aarch64-linux-gnu "
        "qemu-user)",
    ),
]


def cmake_units() -> tuple[list[tuple[Path, list[str]]], list[str]]:
    """The module's aarch64 units as CMakeLists.txt builds them, [(source, its own flags)], less
    the nanobind bindings (module.cpp, bind_*.cpp), and the flags of every unit."""
    text = (ROOT / "CMakeLists.txt").read_text(encoding="utf-8")
    common = re.search(r"set\(NATIVE_SOURCES(.*?)\)", text, re.S).group(1)
    arm = re.search(r'MATCHES "\^\(aarch64.*?\n(.*?)endif', text, re.S).group(1)  # its branch
    added = re.search(r"list\(APPEND(.*?)\)", arm, re.S).group(1)
    names = re.findall(r"\$\{CSRC\}/(\w+\.cpp)", common + added)
    own = dict(re.findall(r'\$\{CSRC\}/(\w+\.cpp) PROPERTIES\s+COMPILE_OPTIONS "([^"]*)"', arm))
    units = [
        (CSRC / name, own[name].split(";") if name in own else [])
        for name in dict.fromkeys(names)
        if name != "module.cpp" and not name.startswith("bind_")
    ]
    # the GCC/Clang options of every unit (the MSVC branch has its own)
    everywhere = re.search(r"target_compile_options\(_native PRIVATE (-[^)]*)\)", text)[1].split()
    assert "PYBITNET_ARM_TIERS=1" in text and "-ffp-contract=off" in everywhere
    return units, [*everywhere, "-DPYBITNET_ARM_TIERS=1", "-std=c++17"]


@pytest.fixture(scope="session")
def driver(tmp_path_factory) -> Path:
    """The driver, built once a session (two compilers at a time); prints its build time."""
    out = tmp_path_factory.mktemp("aarch64")
    units, flags = cmake_units()
    # the module's units as a Release build (pyproject.toml) compiles them; the driver itself at
    # -O1, which builds faster
    jobs = [(src, ["-O3", "-DNDEBUG", *own]) for src, own in units]
    jobs.append((ROOT / "tests" / "aarch64" / "driver.cpp", ["-O1"]))

    def compile_unit(job: tuple[Path, list[str]]) -> Path:
        src, own = job
        obj = out / f"{src.stem}.o"
        cmd = [CXX, *flags, *own, f"-I{CSRC}", "-c", str(src), "-o", str(obj)]
        done = subprocess.run(cmd, capture_output=True, text=True)
        assert done.returncode == 0, f"{' '.join(cmd)}\n{done.stderr}"
        return obj

    start = time.perf_counter()
    with ThreadPoolExecutor(2) as pool:
        objects = list(pool.map(compile_unit, jobs))
    binary = out / "driver"
    link = [CXX, "-static", "-pthread", *map(str, objects), "-o", str(binary)]
    done = subprocess.run(link, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    print(f"aarch64 driver built in {time.perf_counter() - start:.1f} s")
    return binary


def run_driver(driver: Path, cpu: str, tier: str) -> subprocess.CompletedProcess:
    cmd = [QEMU, "-cpu", cpu, str(driver), str(GOLDENS), str(I2S_FILE), tier]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize(
    "cpu, dotprod, tiers",
    [("max", 1, ["neondot", "neon", "scalar"]), ("cortex-a53", 0, ["neon", "scalar"])],
)
def test_every_kernel_of_every_tier_matches_the_goldens(driver, cpu, dotprod, tiers):
    start = time.perf_counter()
    done = run_driver(driver, cpu, tiers[0])
    print(f"qemu -cpu {cpu}: {time.perf_counter() - start:.1f} s\n{done.stdout}")
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"features: asimd=1 asimddp={dotprod}\ntiers: {' '.join(tiers)}\n" in done.stdout
    passed = re.findall(r"tier (\w+): (\d+) of (\d+) cases pass", done.stdout)
    assert [t for t, _, _ in passed] == tiers
    assert all(ok == total and int(total) > 50 for _, ok, total in passed), passed
    assert done.stdout.endswith("PASS\n")


def test_the_driver_fails_when_the_expected_tier_did_not_run(driver):
    done = run_driver(driver, "cortex-a53", "neondot")
    assert done.returncode == 1
    assert "FAIL: the best tier is neon, expected neondot" in done.stdout
