"""Build hook: ship the suites of the top-level ``configs/`` inside the package.

Why: ``configs/`` is the folder people edit in a clone, but an installed package must find its suites
without the clone. At build time ``configs/*.toml`` is copied to ``sgq_bench/config/suites/`` in the
build tree (so in the wheel); ``sgq_bench.config.suite.suite_path`` looks in the clone's ``configs/``
first and in this packaged copy otherwise. Registered in ``pyproject.toml`` under
``[tool.setuptools.cmdclass]``; nothing here is installed.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from setuptools.command.build_py import build_py

SOURCE = "configs"
TARGET = ("sgq_bench", "config", "suites")


class BuildPy(build_py):
    """``build_py`` that also copies ``configs/*.toml`` to ``sgq_bench/config/suites/``."""

    def _suites(self) -> list[tuple[Path, Path]]:
        root = Path(self.distribution.src_root or Path.cwd())
        dest = Path(self.build_lib, *TARGET)
        return [(f, dest / f.name) for f in sorted((root / SOURCE).glob("*.toml"))]

    def run(self) -> None:
        if getattr(self, "editable_mode", False):  # an editable install reads the clone's configs/
            super().run()
            return
        # pip builds in the clone and setuptools packs all of build/lib: a module deleted or moved
        # since the last build (say the old top-level baselines/) would ship again. Start clean.
        shutil.rmtree(self.build_lib, ignore_errors=True)
        super().run()
        for src, dst in self._suites():
            self.mkpath(str(dst.parent))
            self.copy_file(str(src), str(dst))

    def get_outputs(self, include_bytecode: bool = True) -> list[str]:
        extra = [] if getattr(self, "editable_mode", False) else [str(dst) for _, dst in self._suites()]
        return [*super().get_outputs(include_bytecode), *extra]
