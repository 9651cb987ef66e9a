"""A virtual environment of its own for fastai, the reference the benchmarks measure fitcycle against: fastai is
never a dependency of the project, so the benchmarks install it here, from the package registry, with pip.

torch and torchvision are not installed again (with their CUDA libraries they take about 6 GB): the new
environment sees the project's own copies, and what they need (numpy, pillow, ...), through a folder of symbolic
links to those distributions alone, named by a .pth file; everything else (fastai, fastcore, pandas, spaCy, ...)
pip installs into the new environment. Both sides of a comparison so run the same torch, numpy and pillow.

Two guards keep pip's hands off the project's environment: the folder of links lies outside the new environment
(pip never uninstalls a distribution outside its environment), and every linked distribution is pinned to its
version by a constraints file (pip never wants to replace one). Made once: a stamp file records what it was made
from, and a later call with the same project versions returns at once.

    .venv/bin/python bench/fastai_venv.py [--venv ~/.cache/fitcycle-bench/fastai-venv]   # prints its python
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import venv
from importlib import metadata
from pathlib import Path

FASTAI = "fastai==2.8.12"
SHARED = ("torch", "torchvision")  # what the new environment takes from the project's, with what they need
OWN = ("setuptools",)  # what the new environment has of its own (venv installs it with pip)
DEFAULT_VENV = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "fitcycle-bench" / "fastai-venv"
STAMP = ".fitcycle-bench.json"


def _canonical(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def shared_closure(roots: tuple[str, ...] = SHARED) -> dict[str, metadata.Distribution]:
    """The installed distributions `roots` need, recursively (markers evaluated here, extras followed), by
    canonical name."""
    from packaging.requirements import Requirement

    found: dict[str, metadata.Distribution] = {}
    todo: list[tuple[str, frozenset[str]]] = [(r, frozenset()) for r in roots]
    seen: set[tuple[str, frozenset[str]]] = set()
    while todo:
        name, extras = todo.pop()
        key = (_canonical(name), extras)
        if key in seen:
            continue
        seen.add(key)
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue  # a requirement this platform's marker still let through but nothing installed
        if _canonical(dist.metadata["Name"]) in OWN:
            continue
        found[_canonical(dist.metadata["Name"])] = dist
        for line in dist.requires or []:
            req = Requirement(line)
            if req.marker is not None and not any(req.marker.evaluate({"extra": e}) for e in {"", *extras}):
                continue
            todo.append((req.name, frozenset(req.extras)))
    return found


def top_level_entries(dist: metadata.Distribution) -> set[str]:
    """The names a distribution puts directly in site-packages (packages, modules, its .dist-info)."""
    names = set()
    for f in dist.files or []:
        parts = Path(str(f)).parts
        if parts and parts[0] not in ("..", "__pycache__") and not parts[0].endswith(".pth"):
            names.add(parts[0])
    return names


def link_farm(dists: dict[str, metadata.Distribution], folder: Path) -> list[str]:
    """A folder of symbolic links to the distributions' top-level entries in the project's site-packages."""
    site = Path(sysconfig.get_paths()["purelib"])
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    linked = []
    for dist in dists.values():
        for name in sorted(top_level_entries(dist)):
            target = site / name
            if target.exists() and not (folder / name).exists():
                (folder / name).symlink_to(target)
                linked.append(name)
    return sorted(linked)


def fastai_python(venv_dir: Path | None = None, quiet: bool = True) -> Path:
    """The python of a virtual environment with fastai installed and the project's torch visible; made (or
    brought up to date) first when needed."""
    venv_dir = Path(venv_dir or DEFAULT_VENV).expanduser().resolve()
    python = venv_dir / "bin" / "python"
    shared = shared_closure()
    versions = {name: d.version for name, d in sorted(shared.items())}
    made_from = {"fastai": FASTAI, "python": sys.version.split()[0], "shared": versions}
    stamp = venv_dir / STAMP
    if python.exists() and stamp.exists() and json.loads(stamp.read_text()) == made_from:
        return python

    # The links live beside the environment, not in it: pip uninstalls nothing outside its environment.
    farm = venv_dir.with_name(venv_dir.name + ".shared")
    if not python.exists():
        venv.EnvBuilder(with_pip=True, clear=True).create(venv_dir)
    linked = link_farm(shared, farm)
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    (Path(purelib) / "fitcycle-project-torch.pth").write_text(f"{farm}\n")
    pins = venv_dir / "shared-constraints.txt"
    pins.write_text("".join(f"{name}=={version}\n" for name, version in versions.items()))
    cmd = [str(python), "-m", "pip", "install", *(["-q"] if quiet else []), "-c", str(pins), FASTAI]
    subprocess.run(cmd, check=True)
    check_environment(python, versions["torch"], farm)
    stamp.write_text(json.dumps(made_from, indent=1))
    digest = hashlib.sha256("\n".join(linked).encode()).hexdigest()[:12]
    print(f"fastai venv ready: {venv_dir} ({len(linked)} entries shared from the project, {digest})", file=sys.stderr)
    return python


def check_environment(python: Path, torch_version: str, farm: Path) -> None:
    """fastai imports, and torch is the project's (through the links), not a second copy."""
    probe = (
        "import json, fastai, torch, torchvision; "
        "print(json.dumps([fastai.__version__, torch.__version__, torch.__file__]))"
    )
    out = subprocess.run([str(python), "-c", probe], check=True, capture_output=True, text=True).stdout
    fastai_version, version, where = json.loads(out.strip().splitlines()[-1])
    want = FASTAI.split("==")[1]
    same_torch = version.split("+")[0] == torch_version  # 2.14.1+cu130 is the wheel's 2.14.1
    if fastai_version != want or not same_torch or not where.startswith(str(farm)):
        raise RuntimeError(
            f"{python}: expected fastai {want} on the project's torch {torch_version} (under {farm}); "
            f"found fastai {fastai_version}, torch {version} at {where}. Remove {python.parents[1]} and run again."
        )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--venv", type=Path, default=DEFAULT_VENV, help=f"where (default {DEFAULT_VENV})")
    args = p.parse_args()
    print(fastai_python(args.venv, quiet=False))


if __name__ == "__main__":
    main()
