"""The memory allocator `animdreamer` runs under: jemalloc when the machine has it, set up before JAX starts.

XLA:CPU allocates and frees its large step buffers on every step; under glibc's malloc they come from fresh
mmaps each time, and the page faults of touching them again cost a training step about a fifth of its time
(lab4d sizes, 4096 rays x 64 samples: 8.68 s -> 6.98 s, minor faults 9.1 M -> 3.5 M; 1024 rays: 2.00 s ->
1.64 s; docs/results.md, "Allocator"). jemalloc with its freed pages kept for reuse (`dirty_decay_ms:-1,muzzy_decay_ms:-1`) avoids it;
glibc's own tunables did not (measured: no change).

The command-line entry point (`cli.main` with no argv) calls `setup()` first: when jemalloc is found and not
already loaded, it re-executes the same command once with LD_PRELOAD and MALLOC_CONF set (a preload takes
effect only at process start), telling a person at a terminal in one line. `ANIMDREAMER_ALLOCATOR=system`
keeps the system allocator; an explicit MALLOC_CONF is left as it is. Imports nothing heavy.
"""

from __future__ import annotations

import glob
import os
import sys
from typing import Mapping, Optional, Sequence

OPT_OUT = "ANIMDREAMER_ALLOCATOR"  # "system" (or "off"): no re-execution
MARKER = "_ANIMDREAMER_ALLOCATOR"  # set in the re-executed process: what was chosen
RETAIN = "dirty_decay_ms:-1,muzzy_decay_ms:-1"  # keep freed pages mapped for reuse
SEARCH = ("/usr/lib/x86_64-linux-gnu/libjemalloc.so.2", "/usr/lib/aarch64-linux-gnu/libjemalloc.so.2",
          "/usr/lib64/libjemalloc.so.2", "/usr/lib/libjemalloc.so.2", "/usr/local/lib/libjemalloc.so.2",
          "/opt/homebrew/lib/libjemalloc.2.dylib")


def find_jemalloc(candidates: Sequence[str] = SEARCH) -> Optional[str]:
  """The first jemalloc shared library that exists (then any under /usr/lib*), or None."""
  for path in candidates:
    if os.path.isfile(path):
      return path
  found = sorted(glob.glob("/usr/lib*/**/libjemalloc.so.2", recursive=True))
  return found[0] if found else None


def plan(environ: Mapping[str, str], jemalloc: Optional[str]) -> Optional[dict[str, str]]:
  """The environment variables to re-execute with, or None to run as we are.

  None when the user opted out, when this process was already re-executed (or preloads jemalloc
  itself), or when there is no jemalloc.
  """
  if environ.get(OPT_OUT, "").lower() in ("system", "off", "0", "glibc"):
    return None
  if MARKER in environ or jemalloc is None or "jemalloc" in environ.get("LD_PRELOAD", ""):
    return None
  preload = " ".join(p for p in (environ.get("LD_PRELOAD", ""), jemalloc) if p)
  updates = {"LD_PRELOAD": preload, MARKER: f"jemalloc ({jemalloc})"}
  if "MALLOC_CONF" not in environ:
    updates["MALLOC_CONF"] = RETAIN
  return updates


def current(environ: Mapping[str, str] = os.environ) -> str:
  """What this process runs under (recorded in run.json)."""
  if MARKER in environ:
    return environ[MARKER]
  if "jemalloc" in environ.get("LD_PRELOAD", ""):
    return "jemalloc (LD_PRELOAD set by the user)"
  return "system malloc"


def setup(argv: Optional[Sequence[str]] = None) -> None:
  """Re-executes this process under jemalloc when `plan` says so (never returns then)."""
  updates = plan(os.environ, find_jemalloc())
  if updates is None:
    return
  if sys.stderr.isatty():
    print(f"animdreamer: memory allocator {updates[MARKER]}, freed memory kept for reuse; "
          f"{OPT_OUT}=system to keep the system one", file=sys.stderr, flush=True)
  argv = list(argv if argv is not None else getattr(sys, "orig_argv", [sys.executable, *sys.argv]))
  try:
    os.execve(sys.executable, [sys.executable, *argv[1:]], {**os.environ, **updates})
  except OSError:
    return  # cannot re-execute: run on as we are
