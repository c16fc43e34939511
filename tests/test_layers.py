"""The package's layers go one way: import-linter's contract in pyproject.toml holds, and it can fail."""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
import sys

import importlinter  # noqa: F401  (a test dependency: missing = a failure, not a skip)
import pytest

# `lint-imports` through this interpreter (its console script may not be on PATH).
_LINT = ("import sys; from importlinter import cli; "
         "sys.exit(cli.lint_imports(config_filenames=(sys.argv[1],), no_cache=True, no_logo=True))")


def _lint(repo: pathlib.Path, package_parent: pathlib.Path) -> subprocess.CompletedProcess:
  """lint-imports with the contract of `repo`/pyproject.toml on the package under `package_parent`."""
  env = {**os.environ, "PYTHONPATH": str(package_parent)}
  return subprocess.run([sys.executable, "-c", _LINT, str(repo / "pyproject.toml")],
                        cwd=package_parent, env=env, capture_output=True, text=True, timeout=300,
                        check=False)


@pytest.fixture(scope="module")
def lint():
  return _lint


def test_contract_holds(repo_root, lint):
  result = lint(repo_root, repo_root)
  assert result.returncode == 0, result.stdout + result.stderr
  assert "1 kept, 0 broken" in result.stdout


def test_an_upward_import_breaks_the_contract(repo_root, lint, tmp_path):
  """A copy of the package in which geometry imports the trainer: the check fails and names it."""
  copy = tmp_path / "animdreamer_jax"
  shutil.copytree(repo_root / "animdreamer_jax", copy,
                  ignore=shutil.ignore_patterns("__pycache__", "node_modules"))
  target = copy / "geometry" / "rays.py"
  target.write_text(target.read_text() + "\nfrom animdreamer_jax.train import loop  # planted\n")
  result = lint(repo_root, tmp_path)
  assert result.returncode != 0
  assert "animdreamer_jax.geometry.rays -> animdreamer_jax.train.loop" in result.stdout
