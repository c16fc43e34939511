"""The command line: one entry point, --help on every subcommand."""
import subprocess
import sys

import pytest

from animdreamer_jax import cli


def test_top_level_help_lists_subcommands(repo_root):
  out = subprocess.run([sys.executable, str(repo_root / "bin" / "animdreamer"), "--help"],
                       capture_output=True, text=True, check=True).stdout
  for name in cli.SUBCOMMANDS:
    assert name in out


@pytest.mark.parametrize("name", list(cli.SUBCOMMANDS))
def test_each_subcommand_has_help(repo_root, name):
  res = subprocess.run([sys.executable, str(repo_root / "bin" / "animdreamer"), name, "--help"],
                       capture_output=True, text=True)
  assert res.returncode == 0, res.stderr
  assert "usage: animdreamer " + name in res.stdout
