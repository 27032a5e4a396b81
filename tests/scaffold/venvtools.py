"""A throw-away virtualenv that sees this environment's packages (karen-hooks, pytest, pydantic).

Built with ``--without-pip`` and a ``.pth`` that adds this interpreter's
site-packages (``site.addsitedir``, so editable installs work too), which is
fast; packages installed into it stay in it. One venv serves the whole test
session (tests/cli, tests/scaffold and tests/compat load this file by path).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest


class Venv:
    def __init__(self, root: Path) -> None:
        venv.EnvBuilder(with_pip=False, clear=True).create(root)
        self.root = root
        self._build_tools = False
        self.python = root / "bin" / "python"
        purelib = subprocess.run(
            [str(self.python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            capture_output=True, text=True, check=True,
        ).stdout.strip()
        parents = dict.fromkeys([sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]])
        Path(purelib, "_karen_parent_env.pth").write_text(
            "".join(f"import site; site.addsitedir({p!r})\n" for p in parents), encoding="utf-8"
        )

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("KAREN_", "KARI_", "PYTEST_"))}
        env.update(PIP_DISABLE_PIP_VERSION_CHECK="1", PYTHONDONTWRITEBYTECODE="1", **extra)
        env["PATH"] = f"{self.root / 'bin'}{os.pathsep}{env.get('PATH', '')}"
        return env

    def run(self, *args: str, cwd: Path | None = None, timeout: float = 120, **extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self.python), *args], cwd=cwd, env=self.env(**extra), capture_output=True, text=True, timeout=timeout
        )

    def pip_install(self, *paths: Path) -> None:
        """``pip install --no-deps`` local projects, building them with this venv's own setuptools.

        The build tools are installed once per venv (from pip's cache after the first run); every
        build after that is ``--no-build-isolation`` and needs no index.
        """
        if not self._build_tools:
            proc = self.run("-m", "pip", "install", "--quiet", "setuptools>=68", "wheel", timeout=240)
            assert proc.returncode == 0, proc.stdout + proc.stderr
            self._build_tools = True
        proc = self.run(
            "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation", *map(str, paths), timeout=240
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr

    def run_package_tests(self, root: Path, workdir: Path) -> subprocess.CompletedProcess[str]:
        """Run an installed package's own tests from a copy without its source, so the installed code is tested."""
        shutil.copytree(root / "tests", workdir / "tests")
        shutil.copy(root / "pyproject.toml", workdir / "pyproject.toml")
        return self.run("-m", "pytest", "-q", "-p", "no:cacheprovider", cwd=workdir)

    def karen(self, *args: str, **extra: str) -> subprocess.CompletedProcess[str]:
        return self.run("-m", "karen_hooks.cli", *args, **extra)



def shared_venv(config: pytest.Config, tmp_path_factory: pytest.TempPathFactory) -> Venv:
    """The session's venv, made on first use."""
    if sys.platform == "win32":  # pragma: no cover
        pytest.skip("the venv helper uses POSIX paths")
    found = getattr(config, "_karen_test_venv", None)
    if found is None:
        found = Venv(tmp_path_factory.mktemp("venv") / "env")
        config._karen_test_venv = found  # type: ignore[attr-defined]
    return found


@pytest.fixture
def plugin_venv(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Venv:
    """The session's shared venv (import this fixture into a conftest to use it)."""
    return shared_venv(request.config, tmp_path_factory)
