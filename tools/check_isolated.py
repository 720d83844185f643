"""Prove that each package is pip-installable on its own.

For every package directory given, create a fresh venv under ``.venv-iso/<name>``, install only that
package (non-editable, from its directory) with its ``[test]`` extra plus the local nanoforge packages it
declares, honouring ``constraints.txt``, and run that package's own tests there. Nothing from the workspace
venv leaks in. pytest's "no tests collected" (exit 5) counts as a failure.

Usage: python tools/check_isolated.py packages/tokenizer packages/core-model ...
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import time
import tomllib
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ISO = ROOT / ".venv-iso"


def _project(pkg_dir: Path) -> dict:
    return tomllib.loads((pkg_dir / "pyproject.toml").read_text())["project"]


def _local_packages() -> dict[str, Path]:
    """Distribution name -> package directory, for every package in the workspace."""
    return {
        _project(p.parent)["name"]: p.parent for p in sorted((ROOT / "packages").glob("*/pyproject.toml"))
    }


def _dep_name(requirement: str) -> str:
    return re.split(r"[\s<>=!~;\[(]", requirement, maxsplit=1)[0].strip().lower()


def _local_closure(pkg_dir: Path, local: dict[str, Path]) -> list[Path]:
    """The local nanoforge packages that ``pkg_dir`` and its tests need (transitively), dependencies first."""
    seen: list[Path] = []

    def visit(d: Path, extras: tuple[str, ...] = ()) -> None:
        project = _project(d)
        reqs = list(project.get("dependencies", []))
        for extra in extras:
            reqs += project.get("optional-dependencies", {}).get(extra, [])
        for req in reqs:
            name = _dep_name(req)
            if name in local and local[name] not in seen:
                visit(local[name])
                seen.append(local[name])

    visit(pkg_dir, ("test",))  # local packages named by the [test] extra come from here too
    return seen


def check(pkg_dir: Path, local: dict[str, Path]) -> bool:
    name = _project(pkg_dir)["name"]
    env = ISO / name
    shutil.rmtree(env, ignore_errors=True)
    venv.EnvBuilder(with_pip=True, clear=True).create(env)
    py = env / "bin" / "python"
    deps = [str(p) for p in _local_closure(pkg_dir, local)]
    install = [str(py), "-m", "pip", "install", "-q", "-c", str(ROOT / "constraints.txt"), *deps]
    install += [f"{pkg_dir}[test]", "pytest-timeout"]  # the root pytest config sets a per-test timeout
    t0 = time.time()
    print(
        f"[isolated] {name}: installing {' '.join(Path(d).name for d in deps) or '(no local deps)'}",
        flush=True,
    )
    proc = subprocess.run(install, cwd=ROOT, capture_output=True, text=True, check=False)
    noise = "WARNING: Location"  # this machine's pip.conf names local index dirs that may not exist
    for line in (proc.stdout + proc.stderr).splitlines():
        if line.strip() and not line.startswith(noise):
            print(f"[isolated] {name}: {line}", flush=True)
    if proc.returncode != 0:
        print(f"[isolated] {name}: FAILED to install", flush=True)
        return False
    tests = pkg_dir / "tests"
    cmd = [str(py), "-m", "pytest", "-q", "-c", str(ROOT / "pyproject.toml"), "--rootdir", str(ROOT)]
    cmd += ["-p", "no:cacheprovider", "-m", "not slow and not gpu", str(tests)]
    rc = subprocess.call(cmd, cwd=ROOT)
    status = {0: "ok", 5: "FAILED (no tests collected)"}.get(rc, f"FAILED (pytest exit {rc})")
    print(f"[isolated] {name}: {status} in {time.time() - t0:.0f} s", flush=True)
    return rc == 0


def main(argv: list[str]) -> int:
    local = _local_packages()
    dirs = [Path(a).resolve() for a in argv] or sorted(local.values())
    failed = [d.name for d in dirs if not check(d, local)]
    if failed:
        print(f"[isolated] failed: {', '.join(failed)}", flush=True)
        return 1
    print(f"[isolated] all {len(dirs)} packages pass in isolation", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
