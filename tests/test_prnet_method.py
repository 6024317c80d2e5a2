"""PRNet as a jface method (jface.methods.prnet): in-step targets against the numpy position-map recipe, the
synthetic UV layout, the loss against numpy, predict on a perfect map, a few train steps, the registry, and an
end-to-end :smoke-style run (train -> evaluate.py --checkpoint -> predict). All on the embedded synthetic face."""
from __future__ import annotations

import json

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jface import configs, methods, training
from jface.core import geometry, synthetic
from jface.core import uv as U
from jface.methods.prnet import losses, method as M, posmap, step, targets, uv_layout
from jface.train import parallel

S = 64  # map side of the layout / target tests (the :smoke size)


@pytest.fixture(scope="module")
def face():
  return synthetic.face_model()


@pytest.fixture(scope="module")
def lay():
  return uv_layout.layout("synthetic", S)


@pytest.fixture(scope="module")
def pw(face):
  """Whitened params of 6 random synthetic faces (poses up to +-80 degrees of yaw, expressions)."""
  raw = synthetic.sample_params(np.random.default_rng(3), 6)
  return np.asarray(geometry.whiten(face, jnp.asarray(raw, jnp.float32)))


def tiny_config(num_steps=3):
  """:smoke with a tiny ResFCN (width 1/8, 32 x 32 input), 16 train / 8 dev faces, batch 4."""
  c = configs.load("prnet:smoke")
  c.image_size = 32
  c.model_kwargs = {"width_mult": 0.125, "bn_momentum": 0.9}
  c.data.train_3d, c.data.dev, c.data.num_threads = "synthetic:16:0", "synthetic:8:7", 1
  c.batch_size = 4
  c.optimizer.learning_rate = 3e-3
  c.num_steps, c.log_every, c.checkpoint_every, c.eval_every = num_steps, 1, num_steps, num_steps
  c.tensorboard = False
  return c


# ----------------------------------------------------------------------------------------------- targets

def test_uv_sampling_equals_rasterize_uv_with_a_hole():
  """The precomputed pattern (barycentric weights + hole-filling weights) reproduces rasterize_uv."""
  n = 9
  ys, xs = np.mgrid[0:n, 0:n]
  px = np.stack([xs.ravel(), ys.ravel()], -1) * 1.7 + 0.6
  vid = np.arange(n * n).reshape(n, n)
  a, b, c, d = vid[:-1, :-1].ravel(), vid[:-1, 1:].ravel(), vid[1:, :-1].ravel(), vid[1:, 1:].ravel()
  tri = np.concatenate([np.stack([a, b, c], -1), np.stack([b, d, c], -1)])
  hole = np.isin(a, vid[3:5, 3:6].ravel())  # drop 6 cells in the middle: an enclosed hole
  tri = np.concatenate([np.stack([a, b, c], -1)[~hole], np.stack([b, d, c], -1)[~hole]])
  values = np.random.default_rng(0).normal(size=(n * n, 3)) * 10
  want, mask = U.rasterize_uv(values, px, tri, 16)
  smp = U.uv_sampling(px, tri, 16)
  assert len(smp.hole_dst) > 0 and np.array_equal(smp.mask, mask)
  got = np.asarray(U.apply_uv_sampling(smp, jnp.asarray(values, jnp.float32)[None]))[0]
  np.testing.assert_allclose(got, want, atol=1e-4)


def test_target_map_matches_numpy_posmap(face, lay, pw):
  """The jitted in-step target of one example equals posmap.position_map (numpy, float64) of its dense vertices
  in the crop box that maps crop coordinates onto the 64 x 64 input as jax.image.resize does, over the layout's
  vertices. Measured max difference 1.1e-5 map pixels (float32)."""
  maps = np.asarray(jax.jit(lambda p: targets.target_maps(face, p, lay))(jnp.asarray(pw[:2])))
  chex.assert_shape(maps, (2, S, S, 3))
  v = np.asarray(geometry.dense_vertices(face, jnp.asarray(pw[0])), np.float64)
  k = S / face.crop_size
  sx = 0.5 + 0.5 / k
  box = [sx, sx, sx + (S - 1) / k, sx + (S - 1) / k]
  uv, tri, inside = uv_layout.synthetic_uv(face)
  ids = np.nonzero(inside)[0]
  remap = np.full(len(v), -1)
  remap[ids] = np.arange(len(ids))
  sub = remap[tri[inside[tri].all(1)]]  # the triangles of the held vertices (posmap takes the min z over all)
  px = U.uv_pixel_coords(uv, S)[ids]
  want = posmap.position_map(v[ids], box, px, sub, S)
  _, covered = U.rasterize_uv(np.zeros(len(ids)), px, sub, S)
  assert covered.sum() > 0.9 * S * S
  np.testing.assert_allclose(maps[0][covered], want[covered], atol=1e-3)
  assert want[covered][:, 2].min() >= 0  # z shifted to min 0 over the held vertices


@pytest.mark.shared_data
def test_bfm_targets_and_keypoints(shared_data):
  """The BFM path (BFM_UV.mat, PRNet's keypoints and 16:4:3:0 weights, dense bases) at 128 x 128 on an
  AFLW2000-3D training fit: the in-step target equals posmap.position_map (measured 3e-5 map px), and the map's
  keypoints (PRNet's uv_kpt_ind, rounded at 256) read back the 68 landmarks (measured 2D mean 0.25 px, max 1.2)."""
  from jface.core.load import load_model
  from jface.data import registry
  size, bfm = 128, str(shared_data / "3dmm")
  face = load_model(bfm, dense_bases_dir=str(shared_data / "3dmm_dense"))
  lay = uv_layout.layout(bfm, size, str(shared_data / "prnet_uv"))
  assert lay.inside.all() and len(lay.sampling.hole_dst) > 0  # the mouth slit, filled
  np.testing.assert_array_equal(np.unique(lay.weights), [0, 3, 4, 16])
  src = registry.build_source(f"crops:{shared_data}/aflw2000_3d_train", face)
  pw = np.stack([src[i]["params"] for i in range(2)])
  maps = np.asarray(jax.jit(lambda p: targets.target_maps(face, p, lay))(jnp.asarray(pw)))
  k = size / face.crop_size
  sx = 0.5 + 0.5 / k
  v = np.asarray(geometry.dense_vertices(face, jnp.asarray(pw[0])), np.float64)
  want = posmap.position_map(v, [sx, sx, sx + (size - 1) / k, sx + (size - 1) / k],
                             U.uv_pixel_coords(U.load_uv_coords(bfm), size), np.asarray(face.tri), size)
  np.testing.assert_allclose(maps[0], want, atol=1e-3)
  lm = np.asarray(jax.jit(lambda m: M.outputs_from_maps(m, face, lay, dense=False).landmarks)(maps))
  e = np.linalg.norm(lm[..., :2] - np.asarray(geometry.landmarks3d(face, jnp.asarray(pw)))[..., :2], axis=-1)
  assert e.mean() < 0.5 and e.max() < 2.0, (e.mean(), e.max())


# ------------------------------------------------------------------------------------------------ layout

def test_synthetic_layout(face, lay):
  """Landmarks inside the map at distinct pixels; u / v follow the longitude / latitude about the cast centre;
  the mean face's map samples back to its vertices on the face region; the weight classes."""
  uv, tri, inside = uv_layout.synthetic_uv(face)
  kp = np.asarray(face.keypoints)
  assert inside[kp].all()
  k = np.rint(lay.kpt_px).astype(int)
  assert k.min() >= 0 and k.max() <= S - 1 and len({tuple(p) for p in k}) == 68
  d = np.linalg.norm(lay.kpt_px[:, None] - lay.kpt_px[None], axis=-1) + 99 * np.eye(68)
  assert d.min() > 1.0  # measured 1.07 px at S = 64 (one grid cell)
  # u grows with the longitude, v with the latitude of the mean shape about synthetic.CENTER
  p = np.asarray(face.u_dense, np.float64).reshape(-1, 3) / synthetic.UNIT - synthetic.CENTER
  lon, lat = np.arctan2(p[:, 0], p[:, 2]), np.arcsin(p[:, 1] / np.linalg.norm(p, axis=1))
  row = inside & (np.abs(uv[:, 1] - uv[kp[30], 1]) < 1e-9)  # the grid row through the nose tip
  col = inside & (np.abs(uv[:, 0] - uv[kp[30], 0]) < 1e-9)  # the midline column
  assert row.sum() > 40 and col.sum() > 40
  assert np.all(np.diff(lon[row][np.argsort(uv[row, 0])]) > 0)
  assert np.all(np.diff(lat[col][np.argsort(uv[col, 1], kind="stable")]) > -1e-6)  # (the mouth rings coincide)
  # round trip of the mean face, in crop pixels (F_MEAN px per model unit), on the vertices of weighted pixels.
  # Measured at S = 64: median 0.05 px, p99 1.4 px, max 3.4 px (the nostrils and lips, where the grid cells are
  # 1 map pixel but the surface bends); the 68 landmarks: mean 2D 0.15 px.
  xyz = np.asarray(face.u_dense).reshape(-1, 3)
  m = U.apply_uv_sampling(lay.sampling, jnp.asarray(xyz))
  err = np.linalg.norm(np.asarray(U.sample_map(m, lay.vertex_px)) - xyz, axis=1) * synthetic.F_MEAN
  w_at = np.asarray(U.sample_map(jnp.asarray(lay.weights)[..., None], lay.vertex_px))[:, 0]
  on_face = inside & (w_at > 0)
  assert on_face.sum() > 2000
  e = err[on_face]
  assert np.median(e) < 0.1 and np.percentile(e, 99) < 2.0 and e.max() < 4.0, (np.median(e), e.max())
  e2d = np.linalg.norm((np.asarray(U.sample_map(m, lay.kpt_px)) - xyz[kp])[:, :2], axis=1) * synthetic.F_MEAN
  assert e2d.mean() < 0.25 and e2d.max() < 1.0, e2d
  # weights: 16 at the 68 keypoint pixels, 4 around eyes / nose / mouth, 3 on the face, 0 elsewhere
  values, counts = np.unique(lay.weights, return_counts=True)
  np.testing.assert_array_equal(values, [0, 3, 4, 16])
  assert counts[-1] == 68 and np.all(lay.weights[k[:, 1], k[:, 0]] == 16)
  assert lay.sampling.mask.all() and 0.5 < (lay.weights > 0).mean() < 0.8


# -------------------------------------------------------------------------------------------------- loss

def test_loss_vs_numpy():
  rng = np.random.default_rng(1)
  pred, target = rng.normal(size=(2, 3, 8, 8, 3)) * 5
  w = rng.choice([0.0, 3.0, 4.0, 16.0], size=(8, 8))
  dist = np.linalg.norm(pred - target, axis=-1)
  want = {"distance": np.mean((dist * w).sum((1, 2)) / w.sum()),
          "mse": np.mean((dist ** 2 * w).sum((1, 2)) / w.sum())}
  for kind, v in want.items():
    got = float(losses.position_map_loss(jnp.asarray(pred, jnp.float32), jnp.asarray(target, jnp.float32),
                                         jnp.asarray(w, jnp.float32), kind))
    assert got == pytest.approx(v, rel=1e-5), kind
  with pytest.raises(ValueError):
    losses.position_map_loss(pred, target, w, "l1")


# ----------------------------------------------------------------------------------------------- predict

def test_predict_outputs_of_a_perfect_map(face, lay, pw):
  """The target map fed as the network's output: FaceOutput shapes; landmarks = the ground truth within the
  layout's interpolation error (measured on these 6 faces: 2D mean 0.26 px, max 1.5 px; z up to its offset);
  pose within a few degrees (a similarity fit of the mean face); dense vertices on the face region."""
  maps = targets.target_maps(face, jnp.asarray(pw), lay)
  out = jax.jit(lambda m: M.outputs_from_maps(m, face, lay, dense=True))(maps)
  b, n = len(pw), face.n_vertices
  chex.assert_shape([out.landmarks, out.vertices, out.pose], [(b, 68, 3), (b, n, 3), (b, 3)])
  assert out.params is None and out.topology == "synthetic"
  gt = np.asarray(geometry.landmarks3d(face, jnp.asarray(pw)))
  lm = np.asarray(out.landmarks)
  e2d = np.linalg.norm(lm[..., :2] - gt[..., :2], axis=-1)
  assert e2d.mean() < 0.5 and e2d.max() < 2.5, (e2d.mean(), e2d.max())
  dz = lm[..., 2] - gt[..., 2]
  assert np.abs(dz - np.median(dz, axis=1, keepdims=True)).max() < 3.0
  err_pose = np.abs(np.asarray(out.pose) - np.asarray(geometry.pose_angles(face, jnp.asarray(pw))))
  assert err_pose.max() < 4.0, err_pose  # measured <= 2.9 degrees
  v = np.asarray(out.vertices)
  gv = np.asarray(geometry.dense_vertices(face, jnp.asarray(pw)))
  w_at = np.asarray(U.sample_map(jnp.asarray(lay.weights)[..., None], lay.vertex_px))[:, 0]
  sel = lay.inside & (w_at > 0)
  e = np.linalg.norm(v[:, sel, :2] - gv[:, sel, :2], axis=-1)
  assert np.median(e) < 0.2 and np.percentile(e, 99) < 2.5, (np.median(e), np.percentile(e, 99))


# -------------------------------------------------------------------------------------------- training

def test_registry_and_config_checks():
  assert "prnet" in methods.NAMES and methods.get("prnet").name == "prnet"
  for variant in ("default", "smoke", "cpu"):
    c = configs.load(f"prnet:{variant}")
    assert methods.of_config(c).name == "prnet" and c.image_size % 32 == 0
    assert [s.name for s in methods.of_config(c).streams(c)] == ["train_3d"]
  c = tiny_config()
  c.image_size = 40
  with pytest.raises(ValueError, match="multiple of 32"):
    methods.get("prnet").check_config(c)
  c = configs.load("prnet")
  c.dense_bases_dir = ""
  with pytest.raises(ValueError, match="dense_bases_dir"):
    methods.get("prnet").check_config(c)


def test_init_variables_follow_flax_init():
  """The host-side init has net.init's tree; kernels Glorot-uniform with flax's xavier bound, BN 1 / 0."""
  from jface.methods.prnet.step import init_variables
  from jface.models import resfcn
  net = resfcn.ResFCN(width_mult=0.125)
  v = init_variables(net, 32, 0)
  want = jax.eval_shape(lambda k, x: net.init(k, x, train=False), jax.random.PRNGKey(0), jnp.zeros((2, 32, 32, 3)))
  assert jax.tree_util.tree_structure(v) == jax.tree_util.tree_structure(want)
  assert jax.tree_util.tree_all(jax.tree_util.tree_map(lambda a, b: a.shape == b.shape and a.dtype == b.dtype,
                                                       v, want))
  kernels = 0
  for path, a in jax.tree_util.tree_leaves_with_path(v):
    name, a = jax.tree_util.keystr(path), np.asarray(a)
    if name.endswith("['kernel']"):
      bound = np.sqrt(6.0 / (np.prod(a.shape[:-2]) * (a.shape[-2] + a.shape[-1])))  # xavier: fan_avg, uniform
      assert np.abs(a).max() <= bound, name
      if a.size >= 1000:
        assert abs(a.std() / (bound / np.sqrt(3)) - 1) < 0.1, name
        kernels += 1
    else:
      assert np.all(a == (1.0 if name.endswith(("['scale']", "['var']")) else 0.0)), name
  assert kernels > 10
  assert resfcn.kernel_init.__name__ == "init"  # flax's variance_scaling(1, "fan_avg", "uniform") closure


def test_train_steps_reduce_the_loss(face):
  """A tiny PRNet on 4 synthetic faces (one fixed batch): the Eq. 1 loss falls over 8 steps (Adam 3e-3)."""
  from jface.data.synthetic_faces import SyntheticFaces
  cfg = tiny_config()
  meth = methods.get("prnet")
  mods = meth.build(cfg)
  mesh = parallel.make_mesh(1)
  state = parallel.replicate(meth.init_state(cfg, mods), mesh)
  step = parallel.data_parallel(meth.make_train_step(cfg, mods), mesh, 2, 1)
  src = SyntheticFaces(4, seed=0, model=face)
  exs = [src[i] for i in range(4)]
  batch = {"train_3d": parallel.shard_batch({"image": np.stack([e["image"] for e in exs]),
                                             "params": np.stack([e["params"] for e in exs])}, mesh)}
  face_r = parallel.replicate(face, mesh)
  history = []
  for _ in range(8):
    state, metrics = step(state, face_r, batch)
    history.append({k: float(v) for k, v in metrics.items()})
  assert set(history[0]) == {"loss", "kpt_px"} and int(state.step) == 8
  assert all(np.isfinite(h["loss"]) for h in history)
  # measured: 14.95 -> 13.38 map px (kpt_px 41.8 -> 37.6 crop px), falling at every step
  assert history[-1]["loss"] < 0.95 * history[0]["loss"], history
  assert sum(b["loss"] < a["loss"] for a, b in zip(history, history[1:])) >= 6, history


def test_end_to_end_train_evaluate_predict(tmp_path, face):
  """train.py's loop on the :smoke recipe (tiny network, 3 steps), then ``evaluate.py --checkpoint`` (dense
  metrics from the map's vertices) and ``predict`` on the workdir, all through the method interface."""
  from jface.eval import cli
  from jface.inference.predictor import Predictor
  from jface.train import checkpoint
  wd = tmp_path / "wd"
  res = training.train_and_evaluate(tiny_config(3), str(wd))
  assert res["step"] == 3 and res["nme_2d_68"]["n"] == 8 and np.isfinite(res["nme_2d_68"]["mean_of_bins"])
  assert np.isfinite(res["nme_3d_68"]["mean_of_bins"])
  assert checkpoint.read_config(str(wd)).method == "prnet"
  # evaluate.py --checkpoint on the dev faces of the run: the training loop's numbers, plus dense metrics
  lines = []
  rc = cli.main(["--dataset", "synthetic", "--num", "8", "--seed", "7", "--checkpoint", str(wd), "--icp_stride", "25",
                 "--out", str(tmp_path / "eval")], log=lambda s="": lines.extend(str(s).splitlines()))
  doc = json.load(open(tmp_path / "eval" / "results.json"))
  assert rc == 0 and doc["method"] == "prnet" and any("step 3" in ln for ln in lines), lines
  assert doc["nme_2d_68"]["mean_of_bins"] == pytest.approx(res["nme_2d_68"]["mean_of_bins"], abs=1e-5)
  assert doc["nme_2d_68"]["n"] == 8 and "nme_dense_3d" in json.dumps(doc), doc.keys()

  # predict: the method's FaceOutput on the 8 crops (dense), then one image with the 8 faces given by landmarks
  from jface.data.synthetic_faces import SyntheticFaces
  src = SyntheticFaces(8, seed=7)
  exs = [src[i] for i in range(8)]
  pred = Predictor(str(wd), max_batch=8)
  out = pred.predict_crops(np.stack([e["image"] for e in exs]), dense=True)
  chex.assert_shape([out.landmarks, out.vertices, out.pose], [(8, 68, 3), (8, face.n_vertices, 3), (8, 3)])
  assert out.params is None and out.topology == "synthetic" and np.all(np.isfinite(out.vertices))
  canvas = np.zeros((140, 980, 3), np.uint8)
  pts = []
  for i, e in enumerate(exs):
    canvas[10:130, 10 + 120 * i:130 + 120 * i] = e["image"]
    pts.append(e["landmarks"] + np.array([10 + 120 * i, 10], np.float32))
  faces = pred.predict_images([canvas], landmarks=[np.stack(pts)])[0]
  assert len(faces) == 8
  for f in faces:
    assert f.params is None and f.vertices.shape == (face.n_vertices, 3) and f.landmarks.shape == (68, 2)
    assert f.pose.shape == (3,) and np.all(np.isfinite(f.pose)) and np.all(np.isfinite(f.vertices))


def test_four_devices_equal_one_device():
  """A PRNet step on 4 forced CPU devices == on 1 device, same global batch: gradients and BN statistics are
  averaged over the 'data' axis (subprocess: tests/helpers/dp_equivalence.py prnet). Measured: the params differ
  by 0.13 % of the update (float rounding: reordering the batch on 1 device gives 0.03 %), the statistics by
  1.5e-7; with per-device BN statistics 2600 % and 2.8e-2."""
  import os
  import subprocess
  import sys
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", PYTHONPATH=root)
  out = subprocess.run([sys.executable, os.path.join(root, "tests", "helpers", "dp_equivalence.py"), "prnet"],
                       capture_output=True, text=True, env=env, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  lines = out.stdout.splitlines()
  metrics = float([ln for ln in lines if ln.startswith("max_rel_diff")][-1].split()[4])
  line = [ln for ln in lines if ln.startswith("update_rel")][-1]
  params, batch_stats = map(float, line.split()[1:])
  assert params < 1e-2 and batch_stats < 1e-5 and metrics < 1e-5, out.stdout


def test_template_head_starts_at_the_mean_face(face):
  """head="template": the initial state (zero affine kernel, zero last BN scale) maps every image to the mean
  face's position map, whose keypoints are the mean face's crop landmarks; an unknown head is refused."""
  cfg = tiny_config()
  cfg.head = "template"
  meth = methods.get("prnet")
  mods = meth.build(cfg, bn_axis_name=None)
  state = meth.init_state(cfg, mods)
  assert float(np.abs(state.params["affine"]["kernel"]).max()) == 0
  assert float(np.abs(state.params["decoder"]["bn17"]["scale"]).max()) == 0
  assert float(np.abs(state.params["decoder"]["bn16"]["scale"]).min()) == 1
  from jface.data.synthetic_faces import SyntheticFaces
  src = SyntheticFaces(3, seed=1, model=face)
  images = np.stack([src[i]["image"] for i in range(3)])
  maps = step.apply_net(mods.net, {"params": state.params, "batch_stats": state.batch_stats},
                        targets.network_input(images, cfg.image_size), face, mods.layout, train=False)
  np.testing.assert_allclose(np.asarray(maps), np.broadcast_to(step.template(face, mods.layout)[0], maps.shape),
                             atol=1e-4)
  out = meth.make_predict_fn(cfg, mods)(state, face, {"image": images})
  lm2 = np.asarray(geometry.landmarks2d(face, jnp.zeros(62, jnp.float32)))
  # read from a 32 x 32 map (3.75 crop px per map pixel): measured max 1.56 px from the exact mean landmarks
  np.testing.assert_allclose(np.asarray(out.landmarks)[:, :, :2], np.broadcast_to(lm2, (3, 68, 2)), atol=2.0)
  cfg.head = "bogus"
  with pytest.raises(ValueError, match="head"):
    meth.build(cfg)
