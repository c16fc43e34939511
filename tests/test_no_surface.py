"""The one-line "no surface" error names what failed, from the run's round log."""

from __future__ import annotations

import json
import pathlib

from animdreamer_jax.stages.extraction import outputs
from animdreamer_jax.train import loop


def write_log(workdir: pathlib.Path, rows: list[dict], cut_line: bool = False) -> None:
  text = "".join(json.dumps(r) + "\n" for r in rows)
  (workdir / loop.ROUND_LOG).write_text(text + ('{"round": 9, "proxy' if cut_line else ""))


def test_round_log_keeps_the_last_row_of_each_round_and_skips_a_cut_line(tmp_path):
  write_log(tmp_path, [{"round": 1, "proxy_vertices": 5.0}, {"round": 2, "proxy_vertices": 0.0},
                       {"round": 2, "proxy_vertices": 7.0}], cut_line=True)
  assert loop.read_round_log(tmp_path) == [{"round": 1, "proxy_vertices": 5.0},
                                           {"round": 2, "proxy_vertices": 7.0}]
  assert loop.read_round_log(tmp_path / "missing") == []


def test_message_names_the_last_surface_round_and_the_fog(tmp_path):
  rows = [{"round": 1, "proxy_vertices": 900.0, "sdf_min": -0.07},
          {"round": 2, "proxy_vertices": 0.0, "sdf_min": 0.015}]
  message = outputs.no_surface_message(tmp_path, rows)
  assert "\n" not in message
  assert "round 1 was the last with one" in message and loop.SURFACE_CHECKPOINTS in message
  assert "+0.015" in message and "fog" in message and "root_pose_warmup_fraction" in message


def test_message_without_any_surface_or_log(tmp_path):
  rows = [{"round": 1, "proxy_vertices": 0.0, "sdf_min": -0.01}]
  message = outputs.no_surface_message(tmp_path, rows)
  assert "no round ended with a surface" in message and "left the searched box" in message
  assert "check the video's masks" in outputs.no_surface_message(tmp_path, [])
