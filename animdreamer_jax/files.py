"""Atomic file and folder writes: nothing half-written ever looks complete.

A file is written to a temporary name beside its target and renamed over it
(`os.replace` is atomic within a folder), so a crash leaves either the old file
or the new one. A folder is assembled under a temporary name and renamed into
place the same way.
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import shutil
import tempfile
from typing import Any, BinaryIO, Callable, Iterator

import cv2
import numpy as np

# Results are for people to read; mkstemp makes 0o600 files.
_FILE_MODE = 0o644


def atomic_write(path: str | os.PathLike, writer: Callable[[BinaryIO], Any]) -> None:
  """Calls writer(binary file) on a temporary file beside `path`, then renames it to `path`.

  The parent folder is created. If `writer` raises, neither `path` nor a
  temporary file is left behind (an existing `path` is kept).
  """
  with atomic_path(path) as tmp, open(tmp, "wb") as f:
    writer(f)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[pathlib.Path]:
  """Yields a temporary path beside `path` (same suffix) for writers that need a file name
  (ffmpeg); on success it is renamed to `path`, on an exception removed."""
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.tmp-", suffix=path.suffix, dir=path.parent)
  os.close(fd)
  try:
    yield pathlib.Path(tmp)
    os.chmod(tmp, _FILE_MODE)
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.unlink(tmp)
    raise


def save_bytes(path: str | os.PathLike, data: bytes) -> None:
  atomic_write(path, lambda f: f.write(data))


def save_text(path: str | os.PathLike, text: str) -> None:
  save_bytes(path, text.encode())


def save_json(path: str | os.PathLike, data: Any, indent: int = 1) -> None:
  save_text(path, json.dumps(data, indent=indent) + "\n")


def save_npz(path: str | os.PathLike, **arrays: np.ndarray) -> None:
  """Compressed NPZ (np.savez_compressed), atomically."""
  atomic_write(path, lambda f: np.savez_compressed(f, **arrays))


def save_png(path: str | os.PathLike, image: np.ndarray) -> None:
  """(H, W, 3) uint8 RGB (or (H, W) grey) as PNG, atomically."""
  image = np.ascontiguousarray(image)
  if image.ndim == 3:
    image = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
  ok, buf = cv2.imencode(".png", image)
  if not ok:
    raise RuntimeError(f"{path}: PNG encoding failed")
  save_bytes(path, buf.tobytes())


@contextlib.contextmanager
def atomic_folder(target: str | os.PathLike, replace: bool = False) -> Iterator[pathlib.Path]:
  """Yields an empty temporary folder beside `target`; on success it becomes `target`.

  Args:
    target: the folder to create.
    replace: an existing `target` is replaced (after the new one is complete);
      otherwise an existing `target` raises FileExistsError before anything is written.

  On an exception the temporary folder is removed and `target` is untouched.
  """
  target = pathlib.Path(target)
  if target.exists() and not replace:
    raise FileExistsError(f"{target}: exists")
  target.parent.mkdir(parents=True, exist_ok=True)
  tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
  try:
    yield tmp
    os.chmod(tmp, 0o755)
    if target.exists():
      old = pathlib.Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
      os.replace(target, old / target.name)
      os.replace(tmp, target)
      shutil.rmtree(old, ignore_errors=True)
    else:
      os.replace(tmp, target)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
