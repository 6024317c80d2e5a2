"""Tests for jface.core.fitting: 3DMM fitting to (partial, noisy) 2D landmarks.

Fits run with batch 7 and 1; both are padded to 8 inside, so the module compiles the fit once for both models.
"""
from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jface.core import fitting, geometry
from jface.core.face_model import FaceModel

B = 7
EXACT = dict(shape_prior=1e-3, exp_prior=1e-3)  # (almost) no prior: noise-free data must be reproduced


def _tiny_model() -> FaceModel:
  """A random but face-like 68-point model: points on the front of an ellipsoid, small smooth random bases."""
  rng = np.random.default_rng(0)
  th = rng.uniform(-1.2, 1.2, 68)              # azimuth around y
  ph = rng.uniform(-0.9, 0.9, 68)              # elevation
  u = np.stack([0.8 * np.sin(th) * np.cos(ph), np.sin(ph), 0.6 * np.cos(th) * np.cos(ph) + 0.5], -1)
  w_shp = 0.05 * rng.normal(size=(204, 40)) / np.arange(1, 41) ** 0.5
  w_exp = 0.03 * rng.normal(size=(204, 10))
  mean, std = np.zeros(62), np.ones(62)
  mean[[0, 5, 10]], mean[[3, 7, 11]], mean[12:] = 40.0, (60.0, 60.0, -70.0), rng.normal(0, 0.3, 50)
  std[12:] = rng.uniform(0.5, 2.0, 50)
  f32 = lambda a: jnp.asarray(a, jnp.float32)
  return FaceModel(u_base=f32(u.reshape(-1)), w_shp_base=f32(w_shp), w_exp_base=f32(w_exp),
                   param_mean=f32(mean), param_std=f32(std), name="tiny").check()


@pytest.fixture(scope="module")
def tiny():
  return _tiny_model()


@pytest.fixture(scope="module", params=["tiny", "bfm"])
def model(request):
  return request.getfixturevalue(request.param)


def _true_params(model: FaceModel, seed: int = 1, coef_std: float = 0.7):
  """B plausible whitened params: yaw spread over [-70, 70], |pitch| <= 20, |roll| <= 15, face ~75 px wide."""
  rng = np.random.default_rng(seed)
  ang = np.stack([np.linspace(-70, 70, B), rng.uniform(-20, 20, B), rng.uniform(-15, 15, B)], -1)
  r = np.asarray(geometry.angles_to_matrix(jnp.asarray(ang, jnp.float32)))
  u = np.asarray(model.u_base).reshape(68, 3)
  c0 = u.mean(0)
  scale = rng.uniform(0.85, 1.15, B) * 35.0 / np.sqrt(np.mean(np.sum((u - c0) ** 2, -1)))
  fr = scale[:, None, None] * r
  t = np.concatenate([60.0 + rng.uniform(-5, 5, (B, 2)) - np.einsum("bij,j->bi", fr[:, :2], c0),
                      np.full((B, 1), float(model.param_mean[11]))], -1)
  a = (np.asarray(model.param_mean[12:]) + np.asarray(model.param_std[12:]) * rng.normal(0, coef_std, (B, 50)))
  p = geometry.compose_params(jnp.asarray(fr, jnp.float32), jnp.asarray(t, jnp.float32),
                              jnp.asarray(a[:, :40], jnp.float32), jnp.asarray(a[:, 40:], jnp.float32))
  pw = geometry.whiten(model, p)
  return pw, ang


def _angle_err(model, pw, ang):
  return np.abs(np.asarray(geometry.pose_angles(model, pw)) - ang)


def test_recovers_known_params(model):
  pw_true, ang = _true_params(model)
  pts = geometry.landmarks2d(model, pw_true)
  pw, info = fitting.fit_landmarks(model, pts, jnp.ones((B, 68), bool), return_info=True, **EXACT)
  chex.assert_shape(pw, (B, 62))
  chex.assert_type(pw, jnp.float32)
  chex.assert_shape(info["reproj_err"], (B,))
  chex.assert_shape(info["angles"], (B, 3))
  np.testing.assert_array_equal(info["n_visible"], 68)
  assert _angle_err(model, pw, ang).max() < 1.0
  d = np.linalg.norm(np.asarray(geometry.landmarks2d(model, pw)) - np.asarray(pts), axis=-1)
  assert d.mean() < 0.5 and d.max() < 2.0
  np.testing.assert_allclose(info["reproj_err"], d.mean(-1), atol=1e-3)
  np.testing.assert_allclose(info["angles"], geometry.pose_angles(model, pw), atol=1e-4)
  # fR = s R with R a proper rotation; t_z is the whitening mean
  fr = np.asarray(geometry.parse_params(geometry.dewhiten(model, pw))[0])
  s = np.linalg.norm(fr[:, 0], axis=-1)
  rot = fr / s[:, None, None]
  np.testing.assert_allclose(rot @ np.swapaxes(rot, 1, 2), np.broadcast_to(np.eye(3), (B, 3, 3)), atol=1e-4)
  np.testing.assert_allclose(np.linalg.det(rot), 1.0, atol=1e-4)
  np.testing.assert_allclose(np.asarray(pw)[:, 11], 0.0, atol=1e-6)


def test_masked_fit_ignores_hidden_points(model):
  pw_true, _ = _true_params(model, seed=2)
  pts = np.asarray(geometry.landmarks2d(model, pw_true))
  rng = np.random.default_rng(3)
  mask = np.ones((B, 68), bool)
  for b in range(B):
    mask[b, rng.choice(68, 20, replace=False)] = False
  with_nan = np.where(mask[..., None], pts, np.nan)
  with_junk = np.where(mask[..., None], pts, 1e4 * rng.normal(size=pts.shape))
  pw_nan = fitting.fit_landmarks(model, with_nan, mask, **EXACT)
  pw_junk = fitting.fit_landmarks(model, with_junk, mask, **EXACT)
  np.testing.assert_allclose(pw_nan, pw_junk, atol=1e-4)
  d = np.linalg.norm(np.asarray(geometry.landmarks2d(model, pw_nan)) - pts, axis=-1)
  assert d.mean() < 1.0
  # zero weights are the same as a False mask; NaN points count as hidden even when the mask says visible
  pw_w = fitting.fit_landmarks(model, with_nan, None, weights=mask.astype(np.float32), **EXACT)
  np.testing.assert_allclose(pw_w, pw_nan, atol=1e-4)


def test_noisy_landmarks_pose(model):
  pw_true, ang = _true_params(model, seed=4)
  pts = np.asarray(geometry.landmarks2d(model, pw_true))
  noisy = pts + np.random.default_rng(5).normal(0, 1.0, pts.shape)
  pw = fitting.fit_landmarks(model, noisy)           # default prior
  assert _angle_err(model, pw, ang).max() < 3.0


def test_too_few_points_give_nan(tiny):
  pw_true, _ = _true_params(tiny, seed=6)
  pts = np.array(geometry.landmarks2d(tiny, pw_true))
  mask = np.ones((B, 68), bool)
  mask[0] = False
  mask[1, 5:] = False       # 5 visible
  mask[2, 6:] = False       # 6 visible: fitted
  pts[3, 10:] = np.nan      # 10 finite
  pts[4, 4:] = np.nan       # 4 finite
  pw, info = fitting.fit_landmarks(tiny, pts, mask, return_info=True)
  np.testing.assert_array_equal(info["n_visible"], [0, 5, 6, 10, 4, 68, 68])
  bad = np.array([True, True, False, False, True, False, False])
  assert np.all(np.isnan(np.asarray(pw)[bad]))
  assert np.all(np.isfinite(np.asarray(pw)[~bad]))
  assert np.all(np.isnan(np.asarray(info["reproj_err"])[bad]))


def test_batch_one_matches_batch(tiny):
  pw_true, _ = _true_params(tiny, seed=7)
  pts = geometry.landmarks2d(tiny, pw_true) + 0.5
  pw7 = fitting.fit_landmarks(tiny, pts)
  pw1 = fitting.fit_landmarks(tiny, pts[3:4])
  chex.assert_shape(pw1, (1, 62))
  chex.assert_type(pw1, jnp.float32)
  np.testing.assert_allclose(pw1[0], pw7[3], rtol=1e-3, atol=1e-3)


def test_init_round_trip_and_refine(tiny):
  pw_true, ang = _true_params(tiny, seed=8)
  pts = geometry.landmarks2d(tiny, pw_true)
  # no iterations: the given params come back unchanged (checks the conversion to the internal units and back)
  pw0 = fitting.fit_landmarks(tiny, pts, init=pw_true, n_iters=0, n_alt=0)
  np.testing.assert_allclose(pw0, pw_true, atol=2e-3)
  # a perturbed start is refined to the exact fit (Levenberg-Marquardt only)
  start = np.asarray(pw_true) + np.random.default_rng(9).normal(0, 0.2, pw_true.shape) * (np.arange(62) >= 12)
  pw = fitting.fit_landmarks(tiny, pts, init=start, n_alt=0, n_iters=15, **EXACT)
  assert _angle_err(tiny, pw, ang).max() < 1.0
  assert np.abs(np.asarray(geometry.landmarks2d(tiny, pw)) - np.asarray(pts)).max() < 0.5


def test_camera_closed_form_matches_svd():
  rng = np.random.default_rng(10)
  shape = rng.normal(size=(68, 3)).astype(np.float32)
  aff = rng.normal(size=(2, 3)).astype(np.float32)
  t = rng.normal(size=2).astype(np.float32)
  q = shape @ aff.T + t
  r, s, t_fit = jax.jit(fitting._camera)(jnp.asarray(shape), jnp.asarray(q), jnp.ones(68))
  uu, sv, vt = np.linalg.svd(aff, full_matrices=False)
  r2 = uu @ vt
  np.testing.assert_allclose(r[:2], r2, atol=1e-4)
  np.testing.assert_allclose(r[2], np.cross(r2[0], r2[1]), atol=1e-4)
  np.testing.assert_allclose(s, sv.mean(), rtol=1e-4)
  # translation: the centroids correspond
  np.testing.assert_allclose(t_fit, q.mean(0) - sv.mean() * r2 @ shape.mean(0), atol=1e-4)


def test_ridge_solve_matches_lstsq():
  rng = np.random.default_rng(11)
  s0 = rng.normal(size=(68, 3))
  bw = rng.normal(size=(68, 3, 50)) * 0.1
  q = rng.normal(size=(68, 2))
  m = (rng.uniform(size=68) > 0.3).astype(np.float64)
  lam = rng.uniform(0.5, 2, 50)
  r = np.asarray(geometry.angles_to_matrix(jnp.asarray([20.0, -10.0, 5.0])))
  s, t = 1.3, np.array([0.2, -0.1])
  a = jax.jit(fitting._solve_coefs)(*(jnp.asarray(x, jnp.float32) for x in (r, s, t, s0, bw, q, m, lam)))
  # reference: stacked least squares [sqrt(m) J; sqrt(lam) I] a = [sqrt(m) res; 0]
  j = s * np.einsum("ij,kjc->kic", r[:2], bw)
  res = q - t - s * s0 @ r[:2].T
  lhs = np.concatenate([(np.sqrt(m)[:, None, None] * j).reshape(-1, 50), np.diag(np.sqrt(lam))])
  rhs = np.concatenate([(np.sqrt(m)[:, None] * res).reshape(-1), np.zeros(50)])
  np.testing.assert_allclose(a, np.linalg.lstsq(lhs, rhs, rcond=None)[0], rtol=1e-3, atol=1e-3)


def test_contour_weights_and_bad_input(tiny):
  w = np.asarray(fitting.contour_weights(0.1))
  np.testing.assert_allclose(w[:17], 0.1)
  np.testing.assert_allclose(w[17:], 1.0)
  with pytest.raises(ValueError, match="pts2d"):
    fitting.fit_landmarks(tiny, np.zeros((B, 67, 2)))
  with pytest.raises(ValueError, match="mask"):
    fitting.fit_landmarks(tiny, np.zeros((B, 68, 2)), np.ones((B, 5), bool))
  with pytest.raises(ValueError, match="weights"):
    fitting.fit_landmarks(tiny, np.zeros((B, 68, 2)), weights=np.ones(17))
  with pytest.raises(ValueError, match="pts2d"):
    fitting.fit_landmarks(tiny, np.zeros((0, 68, 2)))
  with pytest.raises(ValueError, match="init"):
    fitting.fit_landmarks(tiny, np.zeros((B, 68, 2)), init=np.zeros((B, 50)))
