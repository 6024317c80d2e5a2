"""The embedded synthetic 3DMM (jface.core.synthetic) and its rendered source (jface.data.synthetic_faces)."""
from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jface.data.synthetic_faces import SyntheticFaces, _rotation_angles
from jface.core import geometry, render, synthetic
from jface.core.load import load_model


@pytest.fixture(scope="module")
def model():
  return synthetic.face_model()


@pytest.fixture(scope="module")
def arrays():
  return synthetic.numpy_arrays()


B = 8  # every JAX call below uses whitened params of shape (B, 62): one compilation for the module


@pytest.fixture(scope="module")
def geo(model):
  """Jitted jface.core.geometry on the synthetic model: (B, 62) whitened -> dict of outputs."""
  @jax.jit
  def f(pw):
    return dict(lm2d=geometry.landmarks2d(model, pw), lm3d=geometry.landmarks3d(model, pw),
                dense=geometry.dense_vertices(model, pw), angles=geometry.pose_angles(model, pw),
                raw=geometry.dewhiten(model, pw))

  def run(pw):
    pw = np.asarray(pw, np.float32)
    n = len(pw)
    out = f(jnp.asarray(np.concatenate([pw, np.zeros((B - n, 62), np.float32)])))
    return {k: np.asarray(v)[:n] for k, v in out.items()}
  return run


def _pw(model, p_raw):
  return ((p_raw - np.asarray(model.param_mean, np.float64)) / np.asarray(model.param_std, np.float64)
          ).astype(np.float32)


def _fixed_pose(yaw=0.0, pitch=0.0, roll=0.0, n=1, seed=0):
  p = synthetic.sample_params(np.random.default_rng(seed), n, yaw_range=(yaw, yaw), pitch_range=(pitch, pitch),
                              roll_range=(roll, roll), scale_range=(1.0, 1.0), shift_px=0.0)
  p[:, 12:] = 0.0
  return p


def _edges(tri):
  e = np.concatenate([tri[:, [0, 1]], tri[:, [1, 2]], tri[:, [2, 0]]])
  return np.unique(np.sort(e, axis=1), axis=0)


def test_model_is_a_valid_dense_facemodel(model):
  assert model is load_model("synthetic") and model.name == "synthetic"
  model.check()
  assert model.has_dense_bases
  n = model.n_vertices
  assert 3000 <= n <= 5000
  chex.assert_shape([model.u_dense, model.w_shp_dense, model.w_exp_dense], [(3 * n,), (3 * n, 40), (3 * n, 10)])
  chex.assert_type([model.tri, model.keypoints, model.u_base], [jnp.int32, jnp.int32, jnp.float32])
  tri, kp, tex = np.asarray(model.tri), np.asarray(model.keypoints), np.asarray(model.tex)
  assert tri.min() >= 0 and tri.max() < n and len(np.unique(kp)) == 68
  assert np.all(np.isin(kp, tri))  # landmarks are on the drawn surface
  assert tex.shape == (n, 3) and tex.min() >= 0.0 and tex.max() <= 1.0
  for a in (model.u_dense, model.w_shp_dense, model.w_exp_dense, model.param_mean, model.param_std):
    assert np.all(np.isfinite(np.asarray(a)))
  assert np.all(np.asarray(model.param_std) > 0)


def test_landmark_rows_are_the_dense_rows_at_keypoints(model, geo):
  kp = np.asarray(model.keypoints)
  rows = (3 * kp[:, None] + np.arange(3)).reshape(-1)
  np.testing.assert_array_equal(np.asarray(model.u_base), np.asarray(model.u_dense)[rows])
  np.testing.assert_array_equal(np.asarray(model.w_shp_base), np.asarray(model.w_shp_dense)[rows])
  np.testing.assert_array_equal(np.asarray(model.w_exp_base), np.asarray(model.w_exp_dense)[rows])
  out = geo(_pw(model, synthetic.sample_params(np.random.default_rng(3), 4)))
  np.testing.assert_allclose(out["lm3d"], out["dense"][:, kp], rtol=1e-5, atol=1e-3)


def test_numpy_twins_match_geometry(model, arrays, geo):
  out = geo(_pw(model, synthetic.sample_params(np.random.default_rng(4), 3)))
  v = synthetic.vertices_np(out["raw"].astype(np.float64), arrays)
  np.testing.assert_allclose(v, out["dense"], atol=2e-3)
  ang = np.array([[10.0, -15.0, 5.0], [-70.0, 12.0, -18.0]])
  np.testing.assert_allclose(synthetic._np_angles_to_matrix(ang[:, 0], ang[:, 1], ang[:, 2]),
                             np.asarray(geometry.angles_to_matrix(jnp.asarray(ang))), atol=1e-6)


def test_build_is_deterministic(model):
  before = {k: np.asarray(getattr(model, k)) for k in ("u_dense", "w_shp_dense", "w_exp_dense", "tri", "tex",
                                                      "keypoints", "param_mean", "param_std")}
  synthetic.clear_cache()  # the rebuilt model stays cached for the tests below
  again = synthetic.face_model()
  assert again is not model
  for k, v in before.items():
    np.testing.assert_array_equal(np.asarray(getattr(again, k)), v, err_msg=k)


def test_modes_are_smooth_and_identity_orthogonal(arrays):
  n = len(arrays["tex"])
  u = arrays["u"].reshape(n, 3)
  e = _edges(arrays["tri"])
  length = np.linalg.norm(u[e[:, 0]] - u[e[:, 1]], axis=1)
  ok = length > 1e-3 * synthetic.UNIT  # band rings coincide at rest; they part on purpose
  for name, w in (("shape", arrays["w_shp"]), ("expression", arrays["w_exp"])):
    d = w.reshape(n, 3, -1)
    peak = np.linalg.norm(d, axis=1).max(0)
    assert np.all(peak > 0), name
    # Relative Lipschitz constant along mesh edges: the modes vary on scales >= 4 mm (0.04 design units).
    grad = (np.linalg.norm(d[e[ok, 0]] - d[e[ok, 1]], axis=1) / length[ok, None]).max(0) * synthetic.UNIT
    assert np.all(grad / peak < 25.0), (name, grad / peak)
  g = arrays["w_shp"].T @ arrays["w_shp"]
  cos = g / np.sqrt(np.outer(np.diag(g), np.diag(g)))
  np.testing.assert_allclose(cos, np.eye(40), atol=1e-8)
  g = arrays["w_exp"].T @ arrays["w_exp"]
  cos = g / np.sqrt(np.outer(np.diag(g), np.diag(g)))
  assert np.abs(cos - np.eye(10)).max() < 0.5  # localised, nearly orthogonal


def test_expressions_do_what_their_names_say(model):
  kp = np.asarray(model.keypoints)

  def lm(**coef):
    a_exp = np.zeros(10)
    for k, v in coef.items():
      a_exp[synthetic.EXPRESSIONS.index(k)] = v
    s = np.asarray(model.u_dense, np.float64) + np.asarray(model.w_exp_dense, np.float64) @ a_exp
    return s.reshape(-1, 3)[kp] / synthetic.UNIT

  rest = lm()
  lids = [(37, 41), (38, 40), (43, 47), (44, 46)]
  gap = lambda s: np.array([s[a, 1] - s[b, 1] for a, b in lids])  # noqa: E731
  assert np.all(gap(rest) > 0.05)
  np.testing.assert_allclose(gap(lm(eyes_close=1.0)), 0.0, atol=0.005)
  wink = gap(lm(wink=1.0))
  assert np.all(wink[:2] < 0.005) and np.all(wink[2:] > 0.08)  # the subject's right eye (36-41) only
  assert abs(rest[62, 1] - rest[66, 1]) < 1e-6  # inner lips touch at rest
  opened = lm(jaw_open=1.0)
  assert opened[62, 1] - opened[66, 1] > 0.2 and opened[8, 1] < rest[8, 1] - 0.2
  smile = lm(smile=1.0)
  assert smile[48, 1] > rest[48, 1] + 0.03 and smile[54, 1] > rest[54, 1] + 0.03
  assert smile[48, 0] < rest[48, 0] and smile[54, 0] > rest[54, 0]
  assert np.all(lm(brow_raise=1.0)[17:27, 1] > rest[17:27, 1] + 0.02)


def test_landmark_layout_is_ibug68(model, geo):
  # Frontal mean face in the crop: contour left to right, brows above eyes above nose tip above mouth above chin.
  lm = geo(_pw(model, _fixed_pose()))["lm2d"][0]
  x, y = lm[:, 0], lm[:, 1]
  assert np.all(np.diff(x[0:9]) > 0) and np.all(np.diff(x[8:17]) > 0)
  assert np.argmax(y[:17]) == 8
  assert np.all(np.diff(x[17:27]) > 0) and np.all(np.diff(y[27:31]) > 0)
  assert x[36] < x[39] < x[42] < x[45] and x[48] < x[54]
  assert y[17:27].max() < y[36:48].min() < y[30] < y[48:68].min() and y[48:68].max() < y[8]
  np.testing.assert_allclose(x[[8, 27, 30, 33, 51, 57, 62, 66]], x[8], atol=0.5)  # midline
  np.testing.assert_allclose(x[:17] + x[16::-1], 2 * x[8], atol=1.0)  # symmetric contour
  assert 70.0 < x[16] - x[0] < 90.0  # the jaw is ~70-90 px wide, centred in the crop
  assert abs(lm.mean(0) - 60.5).max() < 1.5


def test_larger_z_is_nearer_and_is_what_the_zbuffer_keeps(model, arrays):
  p = _fixed_pose()[0]
  v = synthetic.vertices_np(p, arrays)
  kp = arrays["keypoints"]
  assert v[kp[30], 2] > v[kp[36], 2] + 10  # the nose tip is nearer the camera than the eye corners
  _, depth = render.render(v, arrays["tri"], arrays["tex"], return_depth=True)
  c, r = np.rint(v[kp[30], :2] - 1).astype(int)
  assert abs(depth[r, c] - v[kp[30], 2]) < 1.5  # the nose, not the back of the head, is seen
  # Turned by 60 degrees of yaw, one side of the jaw contour is hidden behind the face, the other is seen.
  p = _fixed_pose(yaw=60.0)[0]
  v = synthetic.vertices_np(p, arrays)
  _, depth = render.render(v, arrays["tri"], arrays["tex"], return_depth=True)
  seen = []
  for j in (0, 16):
    c, r = np.rint(v[kp[j], :2] - 1).astype(int)
    seen.append(abs(depth[r, c] - v[kp[j], 2]) < 1.5)
  assert sorted(seen) == [False, True]


def test_mesh_is_wound_outwards_so_back_faces_can_be_culled(arrays):
  # SyntheticFaces renders with cull=+1: only silhouette folds may change (a few pixels at most).
  for p in synthetic.sample_params(np.random.default_rng(9), 6):
    v = synthetic.vertices_np(p, arrays)
    full = render.render(v, arrays["tri"], arrays["tex"])
    culled = render.render(v, arrays["tri"], arrays["tex"], cull=1)
    assert np.any(full != culled, axis=-1).sum() <= 12
    assert np.any(render.render(v, arrays["tri"], arrays["tex"], cull=-1) != full, axis=-1).sum() > 1000


def test_whitened_samples_are_standard(model):
  p = synthetic.sample_params(np.random.default_rng(11), 8000)
  pw = (p - np.asarray(model.param_mean, np.float64)) / np.asarray(model.param_std, np.float64)
  assert np.abs(pw.mean(0)).max() < 0.06
  np.testing.assert_allclose(pw.std(0), 1.0, atol=0.06)
  np.testing.assert_allclose(np.asarray(model.param_std)[12:52], synthetic.SHAPE_STD, rtol=1e-6)


def test_sampled_pose_is_what_pose_angles_reads(model, geo):
  want = np.array([(35.0, -12.0, 7.0), (-78.0, 19.0, -19.0), (0.0, 0.0, 0.0), (80.0, -20.0, 20.0)])
  p = np.concatenate([_fixed_pose(*a) for a in want])
  np.testing.assert_allclose(geo(_pw(model, p))["angles"], want, atol=0.02)
  p = synthetic.sample_params(np.random.default_rng(5), 500, yaw_range=(-30.0, 10.0))
  ang = np.stack([_rotation_angles(q) for q in p])  # the numpy twin of pose_angles (checked below)
  np.testing.assert_allclose(geo(_pw(model, p[:B]))["angles"], ang[:B], atol=0.02)
  assert ang[:, 0].min() >= -30.0 and ang[:, 0].max() <= 10.0 and np.abs(ang[:, 1:]).max() <= 20.0 + 1e-6
  assert ang[:, 0].max() - ang[:, 0].min() > 35.0
  with pytest.raises(ValueError, match="yaw_range"):
    synthetic.sample_params(np.random.default_rng(0), 2, yaw_range=(10.0, -10.0))


# ------------------------------------------------------------------------------ SyntheticFaces

@pytest.fixture(scope="module")
def source():
  return SyntheticFaces(40, seed=3)


def test_example_contract(source, model, geo):
  assert len(source) == 40
  ex = source[7]
  assert set(ex) == {"image", "params", "has_params", "landmarks", "landmarks_mask", "roi_box", "yaw",
                     "source", "name"}
  chex.assert_shape([ex["image"], ex["params"], ex["landmarks"], ex["landmarks_mask"], ex["roi_box"]],
                    [(120, 120, 3), (62,), (68, 2), (68,), (4,)])
  chex.assert_type([ex["image"], ex["params"], ex["landmarks"], ex["roi_box"]],
                   [np.uint8, np.float32, np.float32, np.float32])
  assert ex["landmarks_mask"].dtype == bool and ex["landmarks_mask"].all()
  assert ex["has_params"] and isinstance(ex["yaw"], np.float32)
  assert ex["source"] == "synthetic" and ex["name"] == "synthetic_000007"
  np.testing.assert_array_equal(ex["roi_box"], [0, 0, 120, 120])
  out = geo(ex["params"][None])
  np.testing.assert_allclose(ex["landmarks"], out["lm2d"][0], atol=2e-3)
  assert abs(out["angles"][0, 0] - ex["yaw"]) < 2e-3


def test_examples_are_deterministic_and_distinct(source):
  a, b = source[5], SyntheticFaces(40, seed=3)[5]
  for k in a:
    np.testing.assert_array_equal(a[k], b[k], err_msg=k)
  c, d = source[6], SyntheticFaces(40, seed=4)[5]
  assert not np.array_equal(a["image"], c["image"]) and not np.array_equal(a["params"], d["params"])
  with pytest.raises(IndexError):
    source[40]


def test_faces_are_in_the_crop_and_stand_out(source, arrays, model):
  inside, contrast = [], []
  mean, std = np.asarray(model.param_mean, np.float64), np.asarray(model.param_std, np.float64)
  for i in range(12):
    ex = source[i]
    lm = ex["landmarks"]
    inside.append(np.mean((lm >= 0.5) & (lm <= 120.5)))
    v = synthetic.vertices_np(ex["params"].astype(np.float64) * std + mean, arrays)
    pix = render.rasterize(v, arrays["tri"], 120, 120)[0]
    face = np.zeros(120 * 120, bool)
    face[pix] = True
    img = ex["image"].reshape(-1, 3).astype(np.float64)
    assert 0.15 < face.mean() < 0.9
    contrast.append(np.abs(img[face].mean(0) - img[~face].mean(0)).max())
  assert np.mean(inside) > 0.97
  assert np.mean(np.array(contrast) > 10.0) >= 0.75


def test_2d_labels_and_bad_arguments():
  src = SyntheticFaces(3, seed=1, labels="2d")
  ex, ex3 = src[1], SyntheticFaces(3, seed=1)[1]
  assert not ex["has_params"] and not ex["params"].any() and ex["source"] == "synthetic2d"
  np.testing.assert_array_equal(ex["image"], ex3["image"])
  np.testing.assert_array_equal(ex["landmarks"], ex3["landmarks"])
  with pytest.raises(ValueError, match="size"):
    SyntheticFaces(3, size=64)
  with pytest.raises(ValueError, match="labels"):
    SyntheticFaces(3, labels="3D")
