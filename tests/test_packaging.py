"""The package as users install it: the wheel's contents, suite lookup, and every command run outside the clone.

Why build from a copy of the build inputs: pip builds in the source tree (``build/``, ``*.egg-info``),
which other processes may be using, and a build that silently needs a file outside the list below
would also break the sdist. ``--no-build-isolation`` keeps it offline (setuptools>=70.1 is in the test
extra and needs no ``wheel`` package).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from sgq_bench.config import suite as suite_mod
from sgq_bench.errors import UsageError

REPO = Path(__file__).resolve().parent.parent
BUILD_INPUTS = ("pyproject.toml", "README.md", "MANIFEST.in", "build_hooks.py", "sgq_bench", "configs", "baselines")
# What the installed copy must not borrow from the current environment: sgq-bench itself (the editable
# install and its finder), and packages of earlier layouts or of other tests.
NOT_BORROWED = ("sgq_bench", "__editable__", "baselines", "configs", "sgq_example_plugin", "sgq_broken_plugin")


def build_wheel(dest: Path) -> Path:
    src = dest / "src"
    src.mkdir(parents=True)
    for name in BUILD_INPUTS:
        path = REPO / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(path, src / name)
    cmd = [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "--no-index",
           "--disable-pip-version-check", "-w", str(dest / "dist"), str(src)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"pip wheel failed:\n{done.stdout}\n{done.stderr}"
    (wheel,) = (dest / "dist").glob("sgq_bench-*.whl")
    return wheel


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_wheel(tmp_path_factory.mktemp("wheel"))


def test_wheel_ships_the_suites_and_the_method_table(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    suites = sorted(p.name for p in (REPO / "configs").glob("*.toml"))
    assert {"smoke.toml", "quick.toml", "full.toml"} <= set(suites)
    for suite in suites:
        shipped = f"sgq_bench/config/suites/{suite}"
        assert shipped in names, f"{suite} is not in the wheel"
        assert zipfile.ZipFile(wheel).read(shipped) == (REPO / "configs" / suite).read_bytes()
    assert "sgq_bench/config/methods.toml" in names


def test_wheel_installs_only_the_sgq_bench_namespace(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert tops == {"sgq_bench"}, f"top-level names other than sgq_bench: {sorted(tops - {'sgq_bench'})}"
    top_level = next(n for n in names if n.endswith(".dist-info/top_level.txt"))
    assert zipfile.ZipFile(wheel).read(top_level).decode().split() == ["sgq_bench"]
    assert "build_hooks.py" not in names


def test_wheel_holds_every_module_of_the_source_tree(wheel: Path) -> None:
    """A subpackage missing from the wheel (e.g. no __init__.py) imports in a clone and fails installed."""
    names = set(zipfile.ZipFile(wheel).namelist())
    source = {p.relative_to(REPO).as_posix() for p in (REPO / "sgq_bench").rglob("*.py")
              if "__pycache__" not in p.parts}
    # the top-level baselines/ ships as sgq_bench/builtin/
    source |= {"sgq_bench/builtin/" + p.relative_to(REPO / "baselines").as_posix()
               for p in (REPO / "baselines").rglob("*.py") if "__pycache__" not in p.parts}
    assert source - names == set()
    for path in source:
        if path.count("/") > 1:
            assert f"{path.rsplit('/', 1)[0]}/__init__.py" in names, f"{path}: its folder is not a package"


def test_entry_points_name_only_modules_inside_the_wheel(wheel: Path) -> None:
    zf = zipfile.ZipFile(wheel)
    text = zf.read(next(n for n in zf.namelist() if n.endswith(".dist-info/entry_points.txt"))).decode()
    names = set(zf.namelist())
    refs = [line.split("=", 1)[1].strip() for line in text.splitlines() if "=" in line]
    assert refs
    for ref in refs:
        module = ref.split(":")[0].strip().replace(".", "/")
        assert f"{module}.py" in names or f"{module}/__init__.py" in names, ref


def test_a_suite_name_resolves_to_the_clone_configs_first() -> None:
    assert suite_mod.CONFIG_DIR == REPO / "configs"
    assert suite_mod.suite_path("smoke") == REPO / "configs" / "smoke.toml"


def test_installed_lookup_uses_the_packaged_suites(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    packaged = tmp_path / "site" / "sgq_bench" / "config" / "suites"
    packaged.mkdir(parents=True)
    shutil.copy2(REPO / "configs" / "smoke.toml", packaged / "smoke.toml")
    monkeypatch.setattr(suite_mod, "SUITE_DIRS", (packaged,))
    monkeypatch.chdir(tmp_path)
    assert suite_mod.suite_path("smoke") == packaged / "smoke.toml"
    with pytest.raises(UsageError, match=r"unknown suite 'smok' \(looked in .*suites\)\. Did you mean 'smoke'"):
        suite_mod.suite_path("smok")
    (tmp_path / "mine.toml").write_bytes((REPO / "configs" / "smoke.toml").read_bytes())
    assert suite_mod.suite_path("mine.toml") == Path("mine.toml")  # a path is a path


def _fresh_venv(root: Path) -> Path:
    """A venv whose third-party packages are the current environment's (offline), minus sgq-bench."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root / "venv")], check=True, timeout=120)
    python = root / "venv" / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    deps = root / "deps"
    deps.mkdir()
    for entry in Path(sysconfig.get_paths()["purelib"]).iterdir():
        if entry.name.endswith(".pth") or entry.name.startswith(NOT_BORROWED) or entry.name == "__pycache__":
            continue
        (deps / entry.name).symlink_to(entry)
    Path(site, "_borrowed_deps.pth").write_text(f"{deps}\n")
    return python


@pytest.mark.slow
def test_installed_wheel_runs_every_command_outside_the_clone(wheel: Path, tmp_path: Path) -> None:
    python = _fresh_venv(tmp_path)
    cmd = [sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet", "--no-deps", "--no-index",
           "--disable-pip-version-check", str(wheel)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg", "SGQ_BENCH_CACHE": str(tmp_path / "cache"),
           "PATH": f"{python.parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.pop("PYTHONPATH", None)

    def run(*args: str) -> subprocess.CompletedProcess:
        done = subprocess.run(list(args), capture_output=True, text=True, cwd=work, env=env, timeout=1200)
        assert done.returncode == 0, f"{' '.join(args)} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
        return done

    where = run(str(python), "-c", "import sgq_bench; print(sgq_bench.__file__)").stdout.strip()
    assert Path(where).is_relative_to(tmp_path / "venv"), where
    sgq = str(python.parent / "sgq-bench")
    run(sgq, "run", "--suite", "smoke", "--out", "runs/smoke")
    out = work / "runs" / "smoke"
    assert (out / "results.jsonl").stat().st_size > 0
    assert "sgq_bench/config/suites/smoke.toml" in (out / "manifest.json").read_text()
    run(sgq, "report", "runs/smoke")
    assert (out / "summary.csv").is_file() and (out / "summary.md").is_file()
    shown = run(sgq, "leaderboard", "show", "--leaderboards", str(REPO / "leaderboards"))
    assert "mnist" in shown.stdout and "baseline" in shown.stdout
    assert not (work / "configs").exists() and not (work / "leaderboards").exists()
