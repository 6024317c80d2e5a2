"""PGN as a jface method (jface.methods.pgn): the 3DMM from perfect landmarks, the identity fusion, the multi-frame
terms on exact geometry, each stage's train step, the stage plan, and an end-to-end :smoke-style run
(3 stages -> evaluate.py --checkpoint -> predict). All on the embedded synthetic face."""
from __future__ import annotations

import json

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jface import configs, methods, training
from jface.core import geometry, synthetic
from jface.methods.pgn import method as M, model, step
from jface.methods.prnet import uv_layout
from jface.train import parallel

S = 64


@pytest.fixture(scope="module")
def face():
  return synthetic.face_model()


@pytest.fixture(scope="module")
def lay():
  return uv_layout.layout("synthetic", S)


@pytest.fixture(scope="module")
def pw(face):
  raw = synthetic.sample_params(np.random.default_rng(5), 6)
  return jnp.asarray(geometry.whiten(face, jnp.asarray(raw, jnp.float32)))


def tiny_config(steps=(3, 2, 2)):
  """:smoke with a tiny network (width 1/8, 32 x 32 input), 16 train / 8 dev faces, 4 groups of 2."""
  c = configs.load("pgn:smoke")
  c.image_size = 32
  c.model_kwargs = {"width_mult": 0.125, "bn_momentum": 0.9, "head_features": 16}
  c.data.train_3d, c.data.train_2d, c.data.dev = "synthetic:16:0", "synthetic2d:8:1", "synthetic:8:7"
  c.data.train_mf, c.data.num_threads = "synthetic_groups:4:2:3", 1
  c.batch_size_2d = 4
  for s, n in zip((1, 2, 3), steps):
    c[f"stage{s}"].num_steps, c[f"stage{s}"].batch_size = n, 4
  c.log_every, c.checkpoint_every, c.eval_every = 1, 100, 100
  c.tensorboard = False
  return c


def test_face_params_of_perfect_landmarks(face, pw):
  """X_UV = the true landmarks (map units, z shifted) and the true coefficients -> the closed-form pose gives
  back the same 3D landmarks (z up to a constant) and the same pose angles."""
  lm = geometry.landmarks3d(face, pw)
  x_uv = step.landmark_targets(lm, S, face.crop_size)
  _, _, a_shp, a_exp = geometry.parse_params(pw)
  got, tx, y = step.face_params(face, x_uv, a_shp, a_exp, S, reg=1e-6)
  chex.assert_shape(got, (6, 62))
  lm2 = geometry.landmarks3d(face, got)
  np.testing.assert_allclose(lm2[..., :2], lm[..., :2], atol=2e-2)
  dz = lm2[..., 2] - lm[..., 2]
  np.testing.assert_allclose(dz - dz.mean(-1, keepdims=True), 0, atol=2e-2)
  np.testing.assert_allclose(tx, y, atol=2e-2)
  np.testing.assert_allclose(geometry.pose_angles(face, got), geometry.pose_angles(face, pw), atol=0.1)


def test_fuse_groups_and_source_index():
  f = jnp.arange(12.0).reshape(6, 2)
  fused = model.fuse_groups(f, 2)
  np.testing.assert_allclose(fused, [[1, 2], [1, 2], [5, 6], [5, 6], [9, 10], [9, 10]])
  np.testing.assert_array_equal(model.fuse_groups(f, 1), f)
  with pytest.raises(ValueError, match="groups"):
    model.fuse_groups(f, 4)
  np.testing.assert_array_equal(step.source_index(6, 2), [1, 0, 3, 2, 5, 4])
  np.testing.assert_array_equal(step.source_index(6, 3), [1, 2, 0, 4, 5, 3])


def test_multi_frame_terms_grow_with_misalignment(face, lay):
  """Two 'frames' that are the same rendered face: with the true params for both, the texture swap re-renders
  the frame itself (Ls = 0; Lp and Lf are left with the resampling blur of sampling + splatting: measured Lp 6.4,
  Lf 0.10 px at S = 64); moving frame 2's face by d px makes Lp and Lf grow with d (measured 12.8 / 17.0 / 21.8
  and 0.72 / 1.39 / 1.94 px for d = 1, 2, 4)."""
  from jface.data.synthetic_faces import SyntheticFaces
  ex = SyntheticFaces(1, seed=4)[0]
  img = jnp.asarray(np.stack([ex["image"]] * 2), jnp.float32)
  p = jnp.asarray(np.stack([ex["params"]] * 2))
  enc = lambda x: jnp.mean(x, axis=(1, 2))  # noqa: E731  (any encoder: same images -> same features)
  same = step.multi_frame_terms(face, img, p, lay, 2, ("lp", "lf", "ls"), encode=enc, feats=enc(img))
  assert 0.05 < float(same["coverage"]) < 0.5 and float(same["ls"]) < 1e-6, same
  lp, lf = [float(same["lp"])], [float(same["lf"])]
  raw = geometry.dewhiten(face, p)
  for d in (1.0, 2.0, 4.0):
    moved = step.multi_frame_terms(face, img, geometry.whiten(face, raw.at[1, 3].add(d).at[1, 7].add(-d)), lay, 2,
                                   ("lp", "lf"))
    lp.append(float(moved["lp"]))
    lf.append(float(moved["lf"]))
  assert np.all(np.diff(lp) > 0.5) and np.all(np.diff(lf) > 0.2), (lp, lf)
  assert lf[0] < 0.3, lf


def _batches(cfg, face, stage, mesh):
  from jface.data.synthetic_faces import SyntheticFaces
  src = SyntheticFaces(4, seed=0, model=face)
  exs = [src[i] for i in range(4)]
  b3 = {"image": np.stack([e["image"] for e in exs]), "params": np.stack([e["params"] for e in exs])}
  if stage == 1:
    b2 = {"image": b3["image"][::-1].copy(), "landmarks": np.stack([e["landmarks"] for e in exs])[::-1].copy(),
          "landmarks_mask": np.ones((4, 68), bool)}
    return {"train_3d": parallel.shard_batch(b3, mesh), "train_2d": parallel.shard_batch(b2, mesh)}
  if stage == 2:
    return {"train_3d": parallel.shard_batch({"image": b3["image"]}, mesh)}
  from jface.data import registry
  g = registry.build_source("synthetic_groups:2:2:3", face)
  return {"train_mf": parallel.shard_batch({"image": np.stack([g[i]["image"] for i in range(4)])}, mesh)}


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_stage_steps(face, stage):
  """Each stage's step on a fixed batch: finite terms, only the stage's parts change, and the loss falls."""
  cfg = tiny_config()
  cfg.stage = stage
  cfg.batch_size = 4
  cfg.optimizer.learning_rate = 3e-3 if stage == 1 else 1e-3
  meth = methods.get("pgn")
  mods = meth.build(cfg)
  mesh = parallel.make_mesh(1)
  state0 = meth.init_state(cfg, mods)
  before = jax.tree_util.tree_map(np.array, state0.params)  # host copies (the step donates its input buffers)
  state = parallel.replicate(state0, mesh)
  fn = parallel.data_parallel(meth.make_train_step(cfg, mods), mesh, 2, 1)
  batch, face_r = _batches(cfg, face, stage, mesh), parallel.replicate(face, mesh)
  hist = []
  for _ in range(6):
    state, metrics = fn(state, face_r, batch)
    hist.append({k: float(v) for k, v in metrics.items()})
  want = {1: {"loss", "l3d", "l2d"}, 2: {"loss", "ll", "lr"}, 3: {"loss", "ll", "lr", "lp", "lf", "ls", "coverage"}}
  assert set(hist[0]) == want[stage] and all(np.isfinite(v) for h in hist for v in h.values()), hist
  assert hist[-1]["loss"] < hist[0]["loss"], hist
  after = jax.device_get(state.params)
  changed = {k for k in before if not all(np.array_equal(a, b) for a, b in zip(jax.tree_util.tree_leaves(before[k]),
                                                                               jax.tree_util.tree_leaves(after[k])))}
  assert changed == set(step.TRAINED[stage]) & set(before), changed


def test_config_checks_and_stage_plan():
  for variant in ("default", "smoke", "cpu"):
    c = configs.load(f"pgn:{variant}")
    M.check_config(c)
    plan = M.stages(c)
    assert [n for n, _ in plan] == ["stage1", "stage2", "stage3"]
    assert [p.stage for _, p in plan] == [1, 2, 3] and plan[2][1].batch_size == c.stage3.batch_size
    assert M.stages(plan[0][1]) == []
  c = configs.load("pgn:smoke")
  c.mf_losses = "lp,bogus"
  with pytest.raises(ValueError, match="mf_losses"):
    M.check_config(c)
  c = configs.load("pgn:smoke")
  c.group_size = 3
  with pytest.raises(ValueError, match="group_size"):
    M.check_config(c)
  assert methods.get("pgn").name == "pgn"


def test_end_to_end_stages_evaluate_predict(tmp_path, face):
  """The three stages through the shared loop (stages.json, one sub-workdir each, each initialised from the
  previous; checkpoints chosen on a hold-out of train_3d, which stage 3 does not read), resumed as a no-op, then
  ``evaluate.py --checkpoint`` and ``predict`` on the staged workdir."""
  from jface.eval import cli
  from jface.inference.predictor import Predictor
  wd = tmp_path / "wd"
  cfg = tiny_config()
  cfg.data.holdout = 4
  res = training.train_and_evaluate(cfg, str(wd))
  assert json.load(open(wd / "stages.json"))["final"] == "stage3"
  for s, n in (("stage1", 3), ("stage2", 2), ("stage3", 2)):
    assert json.load(open(wd / s / "results.json"))["step"] == n
  assert res["step"] == 2 and res["nme_2d_68"]["n"] == 4 and np.isfinite(res["nme_2d_68"]["mean_of_bins"])
  again = training.train_and_evaluate(cfg, str(wd))  # every stage is done: nothing to train
  assert again["step"] == 2
  lines = []
  rc = cli.main(["--dataset", "synthetic", "--num", "8", "--seed", "7", "--checkpoint", str(wd), "--icp_stride", "25",
                 "--out", str(tmp_path / "eval")], log=lambda s="": lines.extend(str(s).splitlines()))
  doc = json.load(open(tmp_path / "eval" / "results.json"))
  assert rc == 0 and doc["method"] == "pgn" and doc["nme_2d_68"]["n"] == 8
  assert np.isfinite(doc["nme_dense_3d"]["mean_of_bins"]) and any("step 2" in ln for ln in lines), lines
  from jface.data.synthetic_faces import SyntheticFaces
  src = SyntheticFaces(2, seed=7)
  out = Predictor(str(wd), max_batch=2).predict_crops(np.stack([src[i]["image"] for i in range(2)]), dense=True)
  chex.assert_shape([out.landmarks, out.vertices, out.params, out.pose],
                    [(2, 68, 3), (2, face.n_vertices, 3), (2, 62), (2, 3)])
  assert np.all(np.isfinite(out.vertices))


def test_four_devices_equal_one_device():
  """A PGN stage-3 step (texture swap, census, flow, features; identity fused over each group) on 4 forced CPU
  devices == on 1 device, same global batch of 4 groups x 2 frames: gradients are averaged over 'data' and every
  device holds whole groups (subprocess: tests/helpers/dp_equivalence.py pgn)."""
  import os
  import subprocess
  import sys
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", PYTHONPATH=root)
  out = subprocess.run([sys.executable, os.path.join(root, "tests", "helpers", "dp_equivalence.py"), "pgn"],
                       capture_output=True, text=True, env=env, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  line = [ln for ln in out.stdout.splitlines() if ln.startswith("update_rel")][-1]
  params = float(line.split()[1])
  metrics = float([ln for ln in out.stdout.splitlines() if ln.startswith("max_rel_diff")][-1].split()[4])
  assert params < 1e-3 and metrics < 1e-4, out.stdout
