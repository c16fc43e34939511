"""Shared test set-up: CPU only, float32, fixed seeds."""
import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import pathlib  # noqa: E402

import pytest  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]
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
