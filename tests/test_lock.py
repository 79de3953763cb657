"""requirements-lock.txt agrees with pyproject.toml: `make setup` installs the lock with --no-deps,
so a requirement added to pyproject.toml (or a pin moved) without `make lock` would go untested."""

import re
from pathlib import Path

import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

tomllib = pytest.importorskip("tomllib")

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "requirements-lock.txt"
# the lock is for CPython 3.11 on linux x86_64: markers are evaluated there, whatever runs the test
LOCK_ENV = {
    **default_environment(),
    "python_version": "3.11",
    "python_full_version": "3.11.7",
    "sys_platform": "linux",
    "platform_system": "Linux",
    "platform_machine": "x86_64",
    "os_name": "posix",
    "implementation_name": "cpython",
    "platform_python_implementation": "CPython",
}
# resolved with the gguf extra but not written to the lock: the Makefile's setup-gguf builds it
NOT_EMITTED = {"llama-cpp-python"}


def makefile_var(name: str) -> str:
    m = re.search(rf"^{name}\s*:?=\s*(.+)$", (ROOT / "Makefile").read_text(), re.M)
    assert m, f"Makefile has no {name}"
    return m.group(1).strip()


def locked() -> dict[str, Version]:
    pins = {}
    for line in LOCK.read_text().splitlines():
        if not line or line[0] in "# -":  # comments, `# via` annotations, options
            continue
        m = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)", line.strip())
        assert m, f"{LOCK.name}: not an exact pin: {line!r}"
        pins[canonicalize_name(m.group(1))] = Version(m.group(2))
    return pins


def requirements() -> list[tuple[str, Requirement]]:
    """(where, requirement) for tunelab's dependencies and the extras the Makefile locks."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = makefile_var("LOCK_EXTRAS").split()
    unknown = set(extras) - set(project["optional-dependencies"])
    assert not unknown, f"Makefile LOCK_EXTRAS names extras pyproject.toml lacks: {unknown}"
    reqs = [("dependencies", Requirement(r)) for r in project["dependencies"]]
    reqs += [(f"extra {e}", Requirement(r)) for e in extras for r in project["optional-dependencies"][e]]
    reqs += [
        ("constraints.txt", Requirement(line))
        for line in (ROOT / "constraints.txt").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    return [(where, r) for where, r in reqs if r.marker is None or r.marker.evaluate(LOCK_ENV)]


def test_every_requirement_is_locked_at_a_version_it_allows():
    pins = locked()
    wrong = []
    for where, req in requirements():
        name = canonicalize_name(req.name)
        if name in NOT_EMITTED:
            continue
        if name not in pins:
            wrong.append(f"{req} ({where}): not in the lock")
        elif not req.specifier.contains(pins[name], prereleases=True):
            wrong.append(f"{req} ({where}): the lock has {pins[name]}")
    assert not wrong, "pyproject.toml and requirements-lock.txt disagree; run `make lock`:\n" + "\n".join(wrong)


def test_every_exact_pin_of_pyproject_is_the_locked_version():
    pins = locked()
    wrong = []
    for where, req in requirements():
        name = canonicalize_name(req.name)
        for spec in req.specifier:
            if spec.operator != "==" or name in NOT_EMITTED or where == "constraints.txt":
                continue
            if name not in pins or pins[name] != Version(spec.version):
                wrong.append(f"{req} ({where}): the lock has {pins.get(name)}")
    assert not wrong, "run `make lock`:\n" + "\n".join(wrong)


def test_torch_is_the_cpu_build_and_nothing_pulls_cuda():
    pins = locked()
    assert pins["torch"] == Version("2.13.0+cpu")
    cuda = sorted(n for n in pins if n.startswith(("nvidia-", "cuda-")) or n == "triton")
    assert not cuda, f"the lock pulls CUDA packages: {cuda}"


def test_llama_cpp_python_is_left_to_setup_gguf_at_the_version_pyproject_pins():
    """Left out of the lock (pip would build it from source for 11 minutes); the Makefile builds
    the version that the gguf extra pins, and the lock holds that version's dependencies."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    (req,) = (Requirement(r) for r in project["optional-dependencies"]["gguf"] if r.startswith("llama-cpp-python"))
    assert str(req.specifier) == f"=={makefile_var('LLAMA_CPP_VERSION')}"
    pins = locked()
    assert "llama-cpp-python" not in pins
    assert "diskcache" in pins  # llama-cpp-python's own dependency, only it asks for it
