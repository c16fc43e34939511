"""Shared test set-up: CPU only, float32, fixed seeds."""
import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import atexit  # noqa: E402
import pathlib  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402

import jax  # noqa: E402
import pytest  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]

# One XLA compilation cache for this test session (a fresh folder, so nothing carries over
# between runs): tests that build the same program (the tiny model's renders, train steps)
# compile it once. It only affects speed.
_SESSION_CACHE = tempfile.mkdtemp(prefix="animdreamer-test-xla-")
atexit.register(shutil.rmtree, _SESSION_CACHE, ignore_errors=True)
jax.config.update("jax_compilation_cache_dir", _SESSION_CACHE)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.3)
SHARED_ASSETS = REPO.parent / "shared" / "assets"


@pytest.fixture(scope="session")
def repo_root() -> pathlib.Path:
  return REPO


@pytest.fixture(scope="session")
def shared_assets() -> pathlib.Path:
  """../shared/assets (tests may use it; the product never does)."""
  if not SHARED_ASSETS.is_dir():
    pytest.skip("../shared/assets is not present")
  return SHARED_ASSETS
