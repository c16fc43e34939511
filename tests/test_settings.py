"""Config files and overrides, typed sections declared once (defaults round trip), the repo configs."""

from __future__ import annotations

import dataclasses
import json

import ml_collections
import pytest

from animdreamer_jax import settings as config
from animdreamer_jax.csd import settings as csd_settings
from animdreamer_jax.errors import UserError
from animdreamer_jax.losses import reconstruction
from animdreamer_jax.stages.extraction import settings as extraction

CONFIG_TEXT = '''
import ml_collections
def get_config():
  c = ml_collections.ConfigDict()
  c.lr = 0.5
  c.steps = 10
  c.name = "x"
  c.flag = False
  c.gaps = (1, 2)
  c.model = ml_collections.ConfigDict(dict(width=8, scale=1.5))
  return c
'''


@pytest.fixture()
def config_file(tmp_path):
  path = tmp_path / "cfg.py"
  path.write_text(CONFIG_TEXT)
  return path


def test_load_and_override(config_file):
  c = config.load_config(config_file, ["--config.lr=1e-3", "--config.model.width=16",
                                       "--config.flag=true", "--config.gaps=(4, 8, 16)",
                                       "--config.model.scale=2", "--config.name=abc"])
  assert c.lr == 1e-3 and c.model.width == 16 and c.flag is True
  assert tuple(c.gaps) == (4, 8, 16) and isinstance(c.model.scale, float) and c.name == "abc"


@pytest.mark.parametrize("override,needle", [
    ("--config.lrr=1", "config.lrr: unknown config key"),
    ("--config.model.depth=3", "config.model.depth: unknown config key"),
    ("--config.steps=abc", "config.steps: expected an int"),
    ("--config.steps=1.5", "config.steps: expected an int"),
    ("--config.flag=7", "config.flag: expected a bool"),
    ("--config.model=3", "config.model: is a section"),
])
def test_bad_overrides(config_file, override, needle):
  with pytest.raises(UserError, match=needle.replace(".", r"\.")):
    config.load_config(config_file, [override])


def test_missing_and_broken_files(tmp_path):
  with pytest.raises(UserError, match="config file not found"):
    config.load_config(tmp_path / "nope.py")
  broken = tmp_path / "broken.py"
  broken.write_text("def get_config(:\n")
  with pytest.raises(UserError, match="cannot be loaded"):
    config.load_config(broken)


def test_split_overrides():
  rest, pairs = config.split_overrides(["--video", "v", "--config.a.b=1", "--config.c", "2", "--resume"])
  assert rest == ["--video", "v", "--resume"]
  assert pairs == [("a.b", "1"), ("c", "2")]


def test_save_config_roundtrip(config_file, tmp_path):
  c = config.load_config(config_file, ["--config.steps=3"])
  out = tmp_path / "run" / "config.json"
  config.save_config(c, out)
  data = json.loads(out.read_text())
  assert data["steps"] == 3 and data["model"]["width"] == 8
  assert not [p for p in out.parent.iterdir() if ".tmp-" in p.name]


def test_repo_configs_load(repo_root):
  paths = sorted((repo_root / "configs").glob("extract_*.py"))
  assert len(paths) >= 3
  for path in paths:
    settings = extraction.from_config(config.load_config(path))
    assert settings.train.total_steps > 0
    assert "Command" in path.read_text(), path  # the docstring gives the command
    # AnimatableDreamer's skeleton constraints are opt-in: no repo config builds them.
    assert not {"bone_inside", "skeleton"} & set(settings.loss.enabled()), path


def test_the_skeleton_loss_needs_its_file_and_the_file_its_weight():
  base = extraction.base_config("tiny")
  loss = extraction.from_config(base).loss
  assert not {"bone_inside", "skeleton"} & set(loss.enabled())
  assert reconstruction.load_skeleton_constraints(loss, num_bones=3) is None  # nothing read
  base.loss.weights.skeleton = 1.0
  with pytest.raises(UserError, match=r"loss\.weights\.skeleton: needs config\.loss\.skeleton_file"):
    extraction.from_config(base)
  base = extraction.base_config("tiny")
  base.loss.skeleton_file = "runs/fox/skeleton.json"
  with pytest.raises(UserError, match=r"loss\.skeleton_file: set but config\.loss\.weights\.skeleton is 0"):
    extraction.from_config(base)
  base.loss.weights.skeleton = 1.0
  assert "skeleton" in extraction.from_config(base).loss.enabled()  # the file is read at plan time


@pytest.mark.parametrize("preset", ["cpu", "lab4d", "tiny"])
def test_the_default_config_is_the_declared_defaults(preset):
  """One set of defaults: the ConfigDict a config file starts from reads back as the
  dataclasses' declared defaults, section by section and field by field."""
  base = extraction.base_config(preset)
  got = extraction.from_config(base)
  assert got == extraction.defaults(preset)
  for section in dataclasses.fields(extraction.ExtractionSettings):
    if section.name == "model":
      continue
    declared = section.type if isinstance(section.type, type) else type(getattr(got, section.name))
    assert getattr(got, section.name) == declared(), section.name
  # Every field of every section is in the config (nothing only in code).
  def keys(tree, prefix=""):
    out = set()
    for k, v in tree.items():
      out |= keys(v, f"{prefix}{k}.") if isinstance(v, (dict, ml_collections.ConfigDict)) else {prefix + k}
    return out
  declared_keys = keys(config.to_config(extraction.defaults(preset)).to_dict())
  assert keys(base.to_dict()) == declared_keys - {"model.video_lengths", "model.image_size"}
  # The saved form (config.json) reads back too.
  assert extraction.from_config(json.loads(base.to_json())) == got


def test_sections_name_unknown_and_mistyped_keys():
  base = extraction.base_config("tiny").to_dict()
  base["csd"]["oracle"]["supersampel"] = 2
  with pytest.raises(UserError, match=r"config\.csd\.oracle\.supersampel: unknown config key"):
    extraction.from_config(base)
  base = extraction.base_config("tiny").to_dict()
  base["train"]["num_rounds"] = "many"
  with pytest.raises(UserError, match=r"config\.train\.num_rounds: expected an int"):
    extraction.from_config(base)
  base = extraction.base_config("tiny").to_dict()
  base["model"]["image_size"] = (8, 8)
  with pytest.raises(UserError, match="comes from the video"):
    extraction.from_config(base)
  with pytest.raises(UserError, match=r"config\.csd\.prior"):
    csd_settings.CsdSettings(prior="dreamfusion")


def test_a_run_of_an_earlier_version_reads_with_its_removed_keys_skipped():
  """config.json of a run written before settings were removed: a user's config with such a
  key is an error, a run folder's is read (its other values kept)."""
  saved = json.loads(extraction.base_config("tiny").to_json())
  saved["csd"]["anneal_steps"] = 8000  # removed in 2026-12
  saved["train"]["init_lr"] = 1e-2
  saved["train"]["num_rounds"] = 7
  with pytest.raises(UserError, match="unknown config key"):
    extraction.from_config(saved)
  settings = extraction.from_config(saved, ignore_unknown=True)
  assert settings.train.num_rounds == 7 and settings.csd == csd_settings.CsdSettings()


def test_string_overrides_keep_the_word(config_file):
  """`--config.csd.prior=none` is the word "none", not Python's None."""
  c = extraction.base_config("tiny")
  config.apply_overrides(c, [("csd.prior", "none"), ("csd.mvdream.prompt", "a fox"),
                             ("csd.elevation_range", "(0, 30)")])
  settings = extraction.from_config(c)
  assert settings.csd.prior == "none" and settings.csd.mvdream.prompt == "a fox"
  assert settings.csd.elevation_range == (0.0, 30.0)


