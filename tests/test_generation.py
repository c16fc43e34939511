"""The generation stage (stages/generation, `animdreamer generate`): gradients, schedule, end to end, bad input."""

from __future__ import annotations

import json
import pathlib
import shutil

import jax
import jax.numpy as jnp
import jax.test_util
import numpy as np
import pytest

from animdreamer_jax import assets
from animdreamer_jax import cli
from animdreamer_jax.commands import extract as extract_cmd
from animdreamer_jax.commands import generate as generate_cmd
from animdreamer_jax.commands import sample
from animdreamer_jax.data import synthetic
from animdreamer_jax.data import video as video_lib
from animdreamer_jax.eval import motion_kept
from animdreamer_jax.geometry import quaternion_np
from animdreamer_jax.losses.term import StepContext
from animdreamer_jax.model import skinning
from animdreamer_jax.prior import convert
from animdreamer_jax.skeleton import skeleton_file
from animdreamer_jax.stages import run_folder
from animdreamer_jax.stages.generation import plan as plan_lib
from animdreamer_jax.stages.generation import settings as gen_settings
from animdreamer_jax.train import loop
from animdreamer_jax.train import step as step_lib

import test_train_e2e as e2e

NUM_FRAMES = 6
RES = 20


def _video(path: pathlib.Path, repo_root: pathlib.Path, clip: str, frames: int = NUM_FRAMES):
  seq = assets.load_sequence(repo_root / "third_party" / "khronos_fox" / "Fox.gltf", clip=clip,
                             num_frames=frames)
  video_lib.write_video(path, synthetic.synthesize(seq, synthetic.SynthOptions(resolution=RES),
                                                   progress=False))
  return path


@pytest.fixture(scope="module")
def videos(tmp_path_factory, repo_root):
  """The source (Khronos Fox Walk) and a target with the same frame count (its Run)."""
  root = tmp_path_factory.mktemp("gen_videos")
  return {"source": _video(root / "walk", repo_root, "Walk"),
          "target": _video(root / "run", repo_root, "Run"),
          "short": _video(root / "short", repo_root, "Run", frames=NUM_FRAMES - 1)}


@pytest.fixture(scope="module")
def source_run(videos, tmp_path_factory, compile_cache):
  run = tmp_path_factory.mktemp("gen_source") / "run"
  extract_cmd.run_extraction(e2e.tiny_config(compile_cache), videos["source"], run, progress=False)
  return run


@pytest.fixture(scope="module")
def compile_cache():
  """The product's persistent XLA cache (as test_train_e2e): only affects speed."""
  loop.enable_compilation_cache(e2e.extraction.defaults("tiny").train.compilation_cache)
  return str(jax.config.jax_compilation_cache_dir or "")


def tiny_config(cache: str = "", rounds: int = 2):
  c = gen_settings.base_config()
  extraction = e2e.tiny_config(cache)
  for section in ("data", "render"):
    c[section] = extraction[section]
  c.loss.gauss_skin_points = 64
  c.train.num_rounds = rounds
  c.train.iters_per_round = 2
  c.train.mc_resolution = 12
  c.train.proxy_points = 32
  c.train.compilation_cache = cache
  c.extract.mc_resolution = 20
  c.extract.eval_samples = 300
  c.extract.contact_frames = 2
  c.extract.camera_frame_metrics = False
  c.csd.reduction = "mean"
  c.csd.resolution = 16
  c.csd.pixels_per_view = 32
  c.csd.num_samples = 8
  c.csd.object_size = 1.0
  c.generate.start_fit_steps = 20
  return c


def _plan(config, source_run, videos):
  model, params, _ = generation_source(source_run)
  config = gen_settings.with_skeleton_file(config, str(source_run / skeleton_file.FILE_NAME))
  settings = gen_settings.from_config(config)
  return settings, plan_lib.build_plan(settings, model, params,
                                       video_lib.load_video(videos["source"]),
                                       target=video_lib.load_video(videos["target"]))


def generation_source(source_run):
  from animdreamer_jax.stages.generation import run as gen_run
  return gen_run.load_source(source_run)


def _grads(plan, kind_name: str, seed: int = 0):
  """The gradient of one step of `kind_name` (with the schedule's step-0 scalars)."""
  trainer = loop.Trainer(plan, loop.TrainSettings(), pathlib.Path("/nonexistent"))
  state = plan.initial_state(True)
  state, _ = loop.update_geometry(state, trainer, ema=0.0)
  kind = plan.kinds[kind_name]
  _, scalars = plan.schedule(0 if kind_name == plan_lib.CSD else 1, 100)
  ctx = StepContext(data=plan.data, aux=state.aux, scalars=scalars,
                    key=jax.random.PRNGKey(seed), step=jnp.int32(0))

  def loss(params):
    params = jax.tree_util.tree_map(lambda p, t: p if t else jax.lax.stop_gradient(p), params,
                                    kind.trainable)
    return step_lib.total_loss(kind, params, ctx)[0]

  return jax.grad(loss)(state.params)["params"]


def _norm(tree) -> float:
  return float(sum(jnp.sum(jnp.square(x)) for x in jax.tree_util.tree_leaves(tree)))


def test_csd_gradient_reaches_the_canonical_field_and_the_bones(source_run, videos):
  """Through the warp, CSD moves the SDF, the colour and the bones; never the root pose (motion)."""
  _, plan = _plan(tiny_config(), source_run, videos)
  grads = _grads(plan, plan_lib.CSD)
  assert _norm(grads["canonical"]["sdf_trunk"]) > 0
  assert _norm(grads["canonical"]["rgb_out"]) > 0
  assert _norm(grads["bones"]) > 0
  assert _norm(grads["log_gauss"]) > 0
  assert _norm(grads["root_pose"]) == 0 and _norm(grads["intrinsics"]) == 0


def test_canonical_sds_gives_the_bones_no_gradient(source_run, videos):
  """generate.warp=False (the ablation): the views never see the warp, so the bones get nothing."""
  config = tiny_config()
  config.generate.warp = False
  _, plan = _plan(config, source_run, videos)
  grads = _grads(plan, plan_lib.CSD)
  assert _norm(grads["canonical"]["sdf_trunk"]) > 0
  assert _norm(grads["bones"]) == 0 and _norm(grads["log_gauss"]) == 0


def test_reconstruction_step_carries_l_skel_to_the_bones(source_run, videos):
  """Generation's other step holds the bones to the source skeleton: with the articulation
  perturbed (joints pulled apart), L_skel alone gives the bones a gradient; weighted 0, none."""
  _, plan = _plan(tiny_config(), source_run, videos)
  kind = plan.kinds[plan_lib.RECONSTRUCTION]
  _, scalars = plan.schedule(1, 100)
  assert scalars["w_skeleton"] == pytest.approx(0.1) and scalars["w_bone_inside"] > 0
  state = plan.initial_state(True)
  keys = iter(jax.random.split(jax.random.PRNGKey(4), 64))
  bones = jax.tree_util.tree_map(lambda p: p + 0.3 * jax.random.normal(next(keys), p.shape),
                                 state.params["params"]["bones"])
  params = {"params": {**state.params["params"], "bones": bones}}
  aux = {**state.aux, "aabb": jnp.asarray([[-0.6] * 3, [0.6] * 3], jnp.float32)}

  @jax.jit
  def grads_for(only):
    ctx = StepContext(data=plan.data, aux=aux, scalars=only, key=jax.random.PRNGKey(0),
                      step=jnp.int32(1))
    return jax.grad(lambda p: step_lib.total_loss(kind, p, ctx)[0])(params)["params"]

  def bone_grad(w_skeleton):  # the scalars are arguments: one compile for both weights
    return grads_for({k: (jnp.float32(w_skeleton) if k == "w_skeleton" else jnp.float32(0.0))
                      if k.startswith("w_") else jnp.asarray(v) for k, v in scalars.items()})

  with_skel = bone_grad(1.0)
  assert _norm(with_skel["bones"]) > 0
  assert _norm(with_skel["canonical"]) == 0  # L_skel acts on the bones only
  assert _norm(bone_grad(0.0)["bones"]) == 0


def test_fade_reaches_its_floor_on_schedule():
  """Data terms x1 -> x floor log-linearly over recon_fade_fraction; regularisers untouched."""
  settings = gen_settings.from_config(gen_settings.with_skeleton_file(gen_settings.base_config(),
                                                                      "unused.json"))
  ext = gen_settings.as_extraction(settings, e2e.extraction.default_model("tiny"))
  schedule = plan_lib.make_schedule(settings, ext)
  total = 1000
  fade = int(settings.generate.recon_fade_fraction * total)
  base_rgb = settings.loss.weights.rgb
  floor = settings.generate.recon_floor
  for step, factor in ((1, floor ** (1 / fade)), (fade // 2 + 1, floor ** ((fade // 2 + 1) / fade)),
                       (fade + 1, floor), (total - 1, floor)):
    _, scalars = schedule(step, total)
    assert scalars["w_rgb"] == pytest.approx(base_rgb * factor, rel=1e-4)
    assert scalars["w_mask"] == pytest.approx(settings.loss.weights.mask * factor, rel=1e-4)
    assert scalars["w_cycle"] == pytest.approx(settings.loss.weights.cycle)
    assert scalars["w_skeleton"] == pytest.approx(settings.loss.weights.skeleton)
    assert scalars["alpha"] == 1.0  # no coarse-to-fine restart


def test_bones_sdf_against_a_loop():
  """The bones' ellipsoid union, against a per-point, per-bone loop in NumPy."""
  rng = np.random.default_rng(3)
  quat = quaternion_np.normalize(rng.standard_normal((4, 4)))
  trans = rng.uniform(-0.3, 0.3, (4, 3))
  log_scale = np.log(rng.uniform(0.03, 0.1, (4, 3)))
  points = rng.uniform(-0.5, 0.5, (50, 3))
  got = np.asarray(plan_lib.bones_sdf(skinning.Bones(quat=jnp.asarray(quat, jnp.float32),
                                                     trans=jnp.asarray(trans, jnp.float32)),
                                      jnp.asarray(log_scale, jnp.float32), 2.0)(
                                          jnp.asarray(points, jnp.float32)))
  want = []
  for x in points:
    values = []
    for b in range(4):
      rotation = quaternion_np.quaternion_to_matrix(quat[b])
      local = rotation.T @ (x - trans[b])
      sigma = np.exp(log_scale[b])
      values.append((np.linalg.norm(local / sigma) - 2.0) * sigma.min())
    want.append(min(values))
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
  # Its gradient (the SDF fit differentiates it in the points) against finite differences.
  fn = plan_lib.bones_sdf(skinning.Bones(quat=jnp.asarray(quat, jnp.float32),
                                         trans=jnp.asarray(trans, jnp.float32)),
                          jnp.asarray(log_scale, jnp.float32), 2.0)
  jax.test_util.check_grads(lambda x: jnp.sum(fn(x)), (jnp.asarray(points[:8], jnp.float32),),
                            order=1, modes=["rev"], eps=1e-3, atol=2e-2, rtol=2e-2)


def _motion(rng, frames=5, bones=3):
  quat = quaternion_np.normalize(rng.standard_normal((frames, bones, 4)))
  return {"rest_bone_quat": quaternion_np.normalize(rng.standard_normal((bones, 4))),
          "rest_bone_trans": rng.standard_normal((bones, 3)) * 0.2,
          "bone_quat": quat, "bone_trans": rng.standard_normal((frames, bones, 3)) * 0.2}


def _chain_skeleton(bones=3):
  rng = np.random.default_rng(0)
  rest = rng.standard_normal((bones, 3)) * 0.2
  zeros = np.zeros(bones, np.float32)
  return skeleton_file.Skeleton(
      names=np.array([f"j{k}" for k in range(bones)]), parent=np.arange(-1, bones - 1),
      bone=np.arange(bones), rest_position=rest, weight_target=np.arange(bones),
      skin_mass=zeros + 1.0 / bones, strength=zeros, rest_length=zeros,
      length_range=np.zeros((bones, 2)), dislocation_max=zeros,
      angle_range_deg=np.zeros((bones, 2)), end_position=rest + 0.05)


def test_motion_kept_is_zero_for_the_same_motion_up_to_a_similarity():
  rng = np.random.default_rng(1)
  skel = _chain_skeleton()
  source = _motion(rng)
  same = motion_kept.motion_kept(skel, source, source)
  assert same["joint_drift"] < 1e-6
  assert same["bone_length_variation"] == pytest.approx(same["source_bone_length_variation"])
  # The same motion of an animal 1.5x as large, turned and moved: still kept.
  turn = quaternion_np.normalize(np.array([0.2, -0.4, 0.1, 0.9]))
  rotation = quaternion_np.quaternion_to_matrix(turn)

  def similar(quat, trans):
    turned = quaternion_np.matrix_to_quaternion(rotation @ quaternion_np.quaternion_to_matrix(quat))
    return turned, 1.5 * trans @ rotation.T + np.array([0.3, -0.1, 0.2])

  moved = dict(source)
  moved["rest_bone_quat"], moved["rest_bone_trans"] = similar(source["rest_bone_quat"],
                                                              source["rest_bone_trans"])
  moved["bone_quat"], moved["bone_trans"] = similar(source["bone_quat"], source["bone_trans"])
  kept = motion_kept.motion_kept(skel, source, moved)
  assert kept["joint_drift"] < 1e-4
  assert kept["similarity_scale"] == pytest.approx(1 / 1.5, rel=1e-4)
  # One bone's motion changed: drift shows.
  changed = dict(source)
  changed["bone_trans"] = source["bone_trans"].copy()
  changed["bone_trans"][:, 2] += rng.standard_normal((5, 3)) * 0.1
  assert motion_kept.motion_kept(skel, source, changed)["joint_drift"] > 1e-3


def test_bone_length_variation_against_a_loop():
  rng = np.random.default_rng(2)
  joints = rng.standard_normal((7, 4, 3))
  parent = np.array([-1, 0, 1, 1])
  per_edge = []
  for k in (1, 2, 3):
    lengths = [np.linalg.norm(joints[t, k] - joints[t, parent[k]]) for t in range(7)]
    per_edge.append(np.std(lengths) / np.mean(lengths))
  assert motion_kept.bone_length_variation(joints, parent) == pytest.approx(np.mean(per_edge))


@pytest.fixture(scope="module")
def generated(source_run, videos, tmp_path_factory, compile_cache):
  workdir = tmp_path_factory.mktemp("gen_out") / "wolf"
  result = generate_cmd.run_generation(tiny_config(compile_cache, rounds=1), source_run, workdir,
                                       target=str(videos["target"]), progress=False)
  return workdir, result


def test_end_to_end_writes_a_run_folder_that_exports(generated, source_run, tmp_path):
  workdir, result = generated
  for name in run_folder.FINISHED_FILES + ("skeleton.json", "generation.png", "turntable.mp4",
                                          "metrics.json"):
    assert (workdir / name).is_file(), name
  info = json.loads((workdir / "run.json").read_text())
  assert info["stage"] == "generate" and info["source_run"] == str(source_run)
  assert info["steps"] == 2
  metrics = json.loads((workdir / "metrics.json").read_text())
  assert np.isfinite(metrics["mean"]["all"]["chamfer"])
  assert metrics["motion_kept"]["joint_drift"] >= 0
  glb = tmp_path / "gen.glb"
  assert cli.main(["export", "--run", str(workdir), "--out", str(glb)]) == 0
  assert glb.stat().st_size > 1000


def test_resume_continues_from_the_right_step(generated, source_run, videos, compile_cache):
  workdir, _ = generated
  result = generate_cmd.run_generation(tiny_config(compile_cache, rounds=2), source_run, workdir,
                                       target=str(videos["target"]), resume=True, progress=False)
  assert result["resumed_from"] == 2 and result["steps"] == 4


def test_start_from_bones_refits_the_sdf(source_run, videos):
  config = tiny_config()
  config.generate.start = "bones"
  _, plan = _plan(config, source_run, videos)
  model, params, _ = generation_source(source_run)
  started = plan.initial_state(True).params
  points = jnp.asarray(np.random.default_rng(0).uniform(-0.3, 0.3, (64, 3)), jnp.float32)
  before = model.apply(params, points, method="sdf")
  after = model.apply(started, points, method="sdf")
  assert float(jnp.max(jnp.abs(after - before))) > 1e-3
  # Only the canonical field is refitted: the bones (the motion) are the source's.
  for a, b in zip(jax.tree_util.tree_leaves(started["params"]["bones"]),
                  jax.tree_util.tree_leaves(params["params"]["bones"])):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def _one_line_error(capsys, argv) -> str:
  assert cli.main(argv) == 2
  err = capsys.readouterr().err.strip()
  assert err.startswith("error: ") and len(err.splitlines()) == 1, err
  return err


def test_bad_input_is_one_clear_line(source_run, videos, tmp_path, capsys, repo_root):
  config = repo_root / "configs" / "generate_bench_cpu_oracle.py"
  base = ["generate", "--config", str(config), "--run", str(source_run)]
  out = tmp_path / "out"
  # Config typo.
  err = _one_line_error(capsys, base + ["--workdir", str(out), "--target", str(videos["target"]),
                                        "--config.generate.warpp=false"])
  assert "warpp" in err
  # Target with another frame count.
  err = _one_line_error(capsys, base + ["--workdir", str(out), "--target", str(videos["short"])])
  assert "frames" in err
  # --prompt without MVDream weights: the file to get and where.
  err = _one_line_error(capsys, base + ["--workdir", str(out), "--prompt", "a wolf"])
  assert "sd-v2.1-base-4view.pt" in err and "MVDream/MVDream" in err
  # A run without a skeleton, and one whose skeleton has another bone count.
  broken = tmp_path / "broken"
  shutil.copytree(source_run, broken)
  (broken / "skeleton.json").unlink()
  err = _one_line_error(capsys, ["generate", "--config", str(config), "--run", str(broken),
                                 "--workdir", str(out), "--target", str(videos["target"])])
  assert "skeleton" in err
  skel = skeleton_file.load(source_run / "skeleton.json")
  data = skeleton_file.to_json(skel)
  data["num_model_bones"] = int(skel.num_model_bones) + 1
  data["weight_target"] = data["weight_target"] + [0]  # one more model bone than the checkpoint
  (broken / "skeleton.json").write_text(json.dumps(data))
  err = _one_line_error(capsys, ["generate", "--config", str(config), "--run", str(broken),
                                 "--workdir", str(out), "--target", str(videos["target"])])
  assert "bones" in err
  assert not out.exists()  # nothing written by any of them


def test_prompt_path_with_tiny_random_mvdream(source_run, videos, tmp_path, compile_cache):
  """--prompt end to end with a converted folder of tiny random networks (the production path)."""
  prior = sample.tiny_prior(0)
  weights = convert.save_prior({"unet": (prior.unet_config.to_dict(), prior.unet_params),
                                "vae": (prior.vae_config.to_dict(), prior.vae_params),
                                "text_encoder": (prior.text_config.to_dict(), prior.text_params)},
                               tmp_path / "weights")
  config = tiny_config(compile_cache, rounds=1)
  config.csd.pixels_per_view = 0  # the UNet judges whole views
  config.csd.reduction = "sum"
  config.csd.mvdream.weights = str(weights)
  config.csd.mvdream.encode_resolution = 32
  result = generate_cmd.run_generation(config, source_run, tmp_path / "gen", prompt="a wolf",
                                       progress=False)
  assert result["steps"] == 2 and result["metrics"] is None
  saved = json.loads((tmp_path / "gen" / "config.json").read_text())
  assert saved["csd"]["prior"] == "mvdream" and saved["csd"]["mvdream"]["prompt"] == "a wolf"
