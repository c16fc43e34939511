"""`animdreamer_jax.allocator`: the command line re-executes itself once under jemalloc (when the machine
has it), keeps the user's choices, and can be turned off."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import pytest

from animdreamer_jax import allocator

LIB = "/lib/libjemalloc.so.2"


def test_plan_preloads_jemalloc_with_freed_memory_kept():
  assert allocator.plan({}, LIB) == {"LD_PRELOAD": LIB, "MALLOC_CONF": allocator.RETAIN,
                                     allocator.MARKER: f"jemalloc ({LIB})"}
  # The user's preload stays first, and their MALLOC_CONF is theirs.
  updates = allocator.plan({"LD_PRELOAD": "/x/libfoo.so", "MALLOC_CONF": "narenas:2"}, LIB)
  assert updates["LD_PRELOAD"] == f"/x/libfoo.so {LIB}" and "MALLOC_CONF" not in updates


@pytest.mark.parametrize("environ, jemalloc", [
    ({allocator.OPT_OUT: "system"}, LIB),  # opted out
    ({allocator.OPT_OUT: "off"}, LIB),
    ({allocator.MARKER: "jemalloc (x)"}, LIB),  # already re-executed: never twice
    ({"LD_PRELOAD": "/usr/lib/libjemalloc.so.2"}, LIB),  # the user preloads it
    ({}, None),  # no jemalloc on this machine
])
def test_plan_runs_as_it_is(environ, jemalloc):
  assert allocator.plan(environ, jemalloc) is None


def _child(env_extra: dict) -> str:
  code = ("from animdreamer_jax import allocator; allocator.setup(); import os; "
          "print(allocator.current())")
  env = {k: v for k, v in os.environ.items()
         if k not in (allocator.OPT_OUT, allocator.MARKER, "LD_PRELOAD", "MALLOC_CONF")}
  proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                        env={**env, **env_extra}, cwd=pathlib.Path(__file__).parents[1], timeout=120)
  assert proc.returncode == 0, proc.stderr
  return proc.stdout.strip()


@pytest.mark.skipif(allocator.find_jemalloc() is None, reason="no jemalloc on this machine")
def test_setup_re_executes_under_jemalloc_once_and_not_when_opted_out():
  assert _child({}) == f"jemalloc ({allocator.find_jemalloc()})"
  assert _child({allocator.OPT_OUT: "system"}) == "system malloc"


def test_tests_calling_main_are_never_re_executed(capsys):
  """`cli.main([...])` (a test, or Python code) runs in its own process as it is."""
  from animdreamer_jax import cli  # pylint: disable=import-outside-toplevel
  with pytest.raises(SystemExit):
    cli.main(["bench", "--help"])
  assert capsys.readouterr().out.startswith("usage: animdreamer bench")
