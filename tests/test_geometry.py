"""jface.core.bfm and jface.core.geometry against plain numpy references and closed forms."""
from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jface.core import crop
from jface.core import bfm as bfm_lib
from jface.core.face_model import FaceModel, MissingAssetError
from jface.core import geometry as g
from tests.helpers.fakes import random_face_model


def np_landmarks(model, pw):
  """The 3DDFA recipe, literally: (3, 68) with order='F', then y -> 121 - y."""
  p = np.asarray(pw, np.float64) * np.asarray(model.param_std) + np.asarray(model.param_mean)
  P = p[:12].reshape(3, 4)
  s = (np.asarray(model.u_base) + np.asarray(model.w_shp_base, np.float64) @ p[12:52]
       + np.asarray(model.w_exp_base, np.float64) @ p[52:62])
  v = P[:, :3] @ s.reshape(3, -1, order="F") + P[:, 3:]
  v[1] = 121 - v[1]
  return v.T  # (68, 3)


def np_rot(yaw, pitch, roll):
  """R = Rz(roll) Ry(-yaw) Rx(pitch), degrees."""
  y, p, r = np.radians([yaw, pitch, roll])
  rx = np.array([[1, 0, 0], [0, np.cos(p), -np.sin(p)], [0, np.sin(p), np.cos(p)]])
  ry = np.array([[np.cos(-y), 0, np.sin(-y)], [0, 1, 0], [-np.sin(-y), 0, np.cos(-y)]])
  rz = np.array([[np.cos(r), -np.sin(r), 0], [np.sin(r), np.cos(r), 0], [0, 0, 1]])
  return rz @ ry @ rx


@pytest.fixture(scope="module")
def model():
  return random_face_model()


def test_whiten_roundtrip(model):
  pw = jnp.asarray(np.random.default_rng(1).normal(size=(5, 62)), jnp.float32)
  p = g.dewhiten(model, pw)
  np.testing.assert_allclose(np.asarray(p), np.asarray(pw) * np.asarray(model.param_std)
                             + np.asarray(model.param_mean), rtol=1e-6)
  np.testing.assert_allclose(g.whiten(model, p), pw, atol=1e-4)


def test_parse_compose_roundtrip():
  p = jnp.asarray(np.random.default_rng(2).normal(size=(3, 4, 62)), jnp.float32)
  fR, t, a, e = g.parse_params(p)
  chex.assert_shape([fR, t, a, e], [(3, 4, 3, 3), (3, 4, 3), (3, 4, 40), (3, 4, 10)])
  np.testing.assert_array_equal(fR[1, 2, 0], p[1, 2, 0:3])  # row-major [fR | t]
  np.testing.assert_array_equal(t[1, 2], p[1, 2, [3, 7, 11]])
  np.testing.assert_array_equal(g.compose_params(fR, t, a, e), p)


def test_landmarks_match_numpy_reference(model):
  pw = np.random.default_rng(3).normal(size=(4, 62)).astype(np.float32)
  got = jax.jit(g.landmarks3d)(model, jnp.asarray(pw))
  chex.assert_shape(got, (4, 68, 3))
  chex.assert_type(got, jnp.float32)
  for i in range(4):
    ref = np_landmarks(model, pw[i])
    np.testing.assert_allclose(got[i], ref, rtol=2e-4, atol=2e-2 * np.abs(ref).max() / 100)
  np.testing.assert_allclose(g.landmarks2d(model, jnp.asarray(pw)), got[..., :2], rtol=1e-5, atol=1e-3)


def test_hand_checked_projection():
  """Identity-like camera, mean shape = one point: closed-form crop coordinates."""
  pts = np.zeros((68, 3), np.float32)
  pts[0] = [10.0, 20.0, 30.0]
  f = jnp.asarray
  m = FaceModel(u_base=f(pts.reshape(-1)), w_shp_base=f(np.zeros((204, 40), np.float32)),
                        w_exp_base=f(np.zeros((204, 10), np.float32)),
                        param_mean=f(np.zeros(62, np.float32)), param_std=f(np.ones(62, np.float32)))
  p = np.zeros(62, np.float32)
  p[:12] = [2, 0, 0, 5, 0, 2, 0, 7, 0, 0, 2, 1]  # f = 2, R = I, t = (5, 7, 1)
  v = g.landmarks3d(m, jnp.asarray(p))[0]
  np.testing.assert_allclose(v, [2 * 10 + 5, 121 - (2 * 20 + 7), 2 * 30 + 1])
  box = jnp.asarray([100.0, 50.0, 340.0, 290.0])  # 240 px box: factor 2
  img = crop.crop_to_image(v[None], box)[0]
  np.testing.assert_allclose(img, [25 * 2 + 100, 74 * 2 + 50, 61 * 2], rtol=1e-6)


def test_crop_image_roundtrip():
  rng = np.random.default_rng(4)
  pts = jnp.asarray(rng.uniform(0, 120, size=(6, 68, 3)), jnp.float32)
  box = jnp.asarray(np.c_[rng.uniform(0, 50, (6, 2)), rng.uniform(200, 400, (6, 2))], jnp.float32)
  back = crop.image_to_crop(crop.crop_to_image(pts, box), box)
  np.testing.assert_allclose(back, pts, atol=1e-3)
  np.testing.assert_allclose(crop.crop_to_image(pts[..., :2], box), crop.crop_to_image(pts, box)[..., :2], rtol=1e-6)


@pytest.mark.parametrize("angles", [(30.0, 10.0, -20.0), (-75.0, 40.0, 5.0), (0.0, 0.0, 0.0), (89.0, -5.0, 3.0)])
def test_angles_closed_form(angles):
  R = g.angles_to_matrix(jnp.asarray(angles))
  np.testing.assert_allclose(R, np_rot(*angles), atol=1e-6)
  np.testing.assert_allclose(R @ R.T, np.eye(3), atol=1e-6)
  np.testing.assert_allclose(g.matrix_to_angles(R), angles, atol=2e-3)


def test_pure_yaw_has_yaw_only():
  R = np_rot(40.0, 0.0, 0.0)
  assert np.isclose(np.degrees(np.arcsin(R[2, 0])), 40.0)  # 3DDFA: yaw = asin(R[2, 0])
  np.testing.assert_allclose(g.matrix_to_angles(jnp.asarray(R)), [40, 0, 0], atol=1e-4)


def test_rotation_from_params_and_pose_angles(model):
  angles = np.array([[25.0, -10.0, 7.0], [-60.0, 15.0, -3.0]])
  p = np.zeros((2, 62), np.float32)
  for i, a in enumerate(angles):
    P = np.c_[3e-4 * np_rot(*a), [60.0, 70.0, -70.0]]
    p[i, :12] = P.reshape(-1)
  R, s = g.rotation_from_params(jnp.asarray(p))
  np.testing.assert_allclose(s, 3e-4, rtol=1e-5)
  np.testing.assert_allclose(R, [np_rot(*a) for a in angles], atol=1e-5)
  pw = g.whiten(model, jnp.asarray(p))
  np.testing.assert_allclose(g.pose_angles(model, pw), angles, atol=5e-2)


def test_gradients_are_finite(model):
  pw = jnp.asarray(np.random.default_rng(6).normal(size=(3, 62)), jnp.float32)
  grad = jax.grad(lambda q: jnp.sum(g.landmarks2d(model, q) ** 2) + jnp.sum(g.pose_angles(model, q)))(pw)
  chex.assert_tree_all_finite(grad)
  chex.assert_shape(grad, (3, 62))


def test_dense_needs_bases(model):
  with pytest.raises(ValueError, match="dense bases"):
    g.dense_vertices(model, jnp.zeros((62,)))


def test_check_rejects_bad_shapes(model):
  with pytest.raises(ValueError, match="w_shp_base"):
    model.replace(w_shp_base=jnp.zeros((204, 39))).check()


def test_missing_asset_is_one_line(tmp_path):
  with pytest.raises(MissingAssetError) as e:
    bfm_lib.load_3ddfa(str(tmp_path))
  msg = str(e.value)
  assert "\n" not in msg and "u_base.txt" in msg and "3DDFA" in msg
  missing = tmp_path / "nope"
  with pytest.raises(MissingAssetError, match="3DMM folder"):
    bfm_lib.load_3ddfa(str(missing))


def test_real_bfm_loads_and_matches_reference(bfm, bfm_dir):
  assert bfm.name == "bfm" and not bfm.has_dense_bases and bfm.n_vertices == 53215
  chex.assert_shape([bfm.tri, bfm.tex, bfm.keypoints], [(105840, 3), (53215, 3), (68,)])
  # the 68-landmark mean is the dense mean at the keypoint vertices
  dense = np.asarray(bfm.u_dense).reshape(-1, 3)[np.asarray(bfm.keypoints)]
  np.testing.assert_allclose(dense.reshape(-1), bfm.u_base, rtol=1e-5, atol=1e-2)
  pw = np.random.default_rng(7).normal(size=62).astype(np.float32) * 0.5
  np.testing.assert_allclose(g.landmarks3d(bfm, jnp.asarray(pw)), np_landmarks(bfm, pw), rtol=1e-3, atol=1e-2)


def test_real_bfm_dense_bases_from_user_folder(bfm_dir, tmp_path):
  """A user who has w_shp_sim/w_exp_sim points jface at them; dense vertices then agree with the landmarks."""
  base = bfm_lib.load_3ddfa(str(bfm_dir))
  n3 = base.u_dense.shape[0]
  kp = np.load(bfm_dir / "keypoints_sim.npy")
  rng = np.random.default_rng(8)
  w_shp = rng.normal(size=(n3, 40)).astype(np.float32) * 1e-3
  w_exp = rng.normal(size=(n3, 10)).astype(np.float32) * 1e-3
  w_shp[kp] = np.loadtxt(bfm_dir / "w_shp_base.txt")
  w_exp[kp] = np.loadtxt(bfm_dir / "w_exp_base.txt")
  np.save(tmp_path / "w_shp_sim.npy", w_shp)
  np.save(tmp_path / "w_exp_sim.npy", w_exp)
  m = bfm_lib.load_3ddfa(str(bfm_dir), dense_bases_dir=str(tmp_path))
  assert m.has_dense_bases
  pw = jnp.asarray(rng.normal(size=(2, 62)) * 0.5, jnp.float32)
  dense = g.dense_vertices(m, pw)
  chex.assert_shape(dense, (2, 53215, 3))
  np.testing.assert_allclose(dense[:, np.asarray(m.keypoints)], g.landmarks3d(m, pw), rtol=1e-3, atol=1e-2)
  with pytest.raises(MissingAssetError, match="w_shp_sim.npy"):
    bfm_lib.load_3ddfa(str(bfm_dir), dense_bases_dir=str(tmp_path / "missing"))
