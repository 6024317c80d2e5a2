"""jface.methods.twodasl.losses against plain-numpy loop references and closed forms."""
from __future__ import annotations

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.helpers.fakes import random_face_model
from jface.methods.twodasl import losses as L

B = 3


# ------------------------------------------------------------------------------------ fixtures

@pytest.fixture(scope="module")
def model():
  return random_face_model()


@pytest.fixture(scope="module")
def params():
  rng = np.random.default_rng(1)
  gt = rng.normal(size=(B, 62)).astype(np.float32) * 0.5
  pred = (gt + rng.normal(size=(B, 62)) * 0.2).astype(np.float32)
  return jnp.asarray(pred), jnp.asarray(gt)


@pytest.fixture(scope="module")
def jitted():
  return dict(
      weights=jax.jit(L.coefficient_weights),
      l3d=jax.jit(L.weighted_coefficient_loss),
      l3d_grad=jax.jit(jax.grad(L.weighted_coefficient_loss, argnums=1)),
  )


def _landmarks_np(model, pw, dense=False):
  """The 3DDFA recipe, literally (float64): (3, K) with order='F', then y -> 121 - y. -> (K, 3)."""
  p = np.asarray(pw, np.float64) * np.asarray(model.param_std, np.float64) + np.asarray(model.param_mean, np.float64)
  P = p[:12].reshape(3, 4)
  if dense:
    u, ws, we = model.u_dense, model.w_shp_dense, model.w_exp_dense
  else:
    u, ws, we = model.u_base, model.w_shp_base, model.w_exp_base
  s = np.asarray(u, np.float64) + np.asarray(ws, np.float64) @ p[12:52] + np.asarray(we, np.float64) @ p[52:]
  v = P[:, :3] @ s.reshape(3, -1, order="F") + P[:, 3:]
  v[1] = 121 - v[1]
  return v.T


def _weights_np(model, pred, gt, dims=2):
  pred, gt = np.asarray(pred, np.float64), np.asarray(gt, np.float64)
  out = np.zeros(pred.shape)
  for b in range(pred.shape[0]):
    h_gt = _landmarks_np(model, gt[b])[:, :dims]
    for i in range(62):
      mixed = gt[b].copy()
      mixed[i] = pred[b, i]
      out[b, i] = np.linalg.norm(_landmarks_np(model, mixed)[:, :dims] - h_gt)
    if dims == 3:
      out[b, 11] = 0.0  # t_z, as 3DDFA's WPDC
    out[b] /= out[b].sum()
  return out


def _subset_np(pts68, mask68, subset):
  pts, mask = [], []
  for i in subset.indices:
    pts.append(pts68[i])
    mask.append(mask68[i])
  if subset.add_mouth_centre:
    pts.append((pts68[48] + pts68[54]) / 2)
    mask.append(mask68[48] and mask68[54])
  return np.array(pts), np.array(mask)


def _l2d_np(x, y, mask, subset, normalize=True):
  per, n = [], 0
  for b in range(x.shape[0]):
    xs, ms = _subset_np(x[b], mask[b], subset)
    ys, _ = _subset_np(y[b], np.ones(68, bool), subset)
    num = den = 0.0
    for i in range(len(xs)):
      if ms[i] and np.all(np.isfinite(xs[i])) and np.all(np.isfinite(ys[i])):
        num += subset.weights[i] * np.linalg.norm(xs[i] - ys[i])
        den += subset.weights[i]
    if den > 0:
      per.append(num / den if normalize else num)
      n += 1
  return sum(per) / max(n, 1)


def _l3d_con_np(x, y, mask, normalize=True):
  total, n = 0.0, 0
  for b in range(x.shape[0]):
    d = [np.linalg.norm(x[b, i] - y[b, i]) for i in range(x.shape[1])
         if mask[b, i] and np.all(np.isfinite(x[b, i])) and np.all(np.isfinite(y[b, i]))]
    if d:
      total += np.mean(d) if normalize else np.sum(d)
      n += 1
  return total / max(n, 1)


def _random_points(seed, k=68, d=2, nan_frac=0.0):
  rng = np.random.default_rng(seed)
  x = rng.uniform(10, 110, size=(B, k, d)).astype(np.float32)
  y = (x + rng.normal(size=x.shape) * 3).astype(np.float32)
  mask = rng.uniform(size=(B, k)) > 0.2
  if nan_frac:
    x[rng.uniform(size=(B, k)) < nan_frac] = np.nan
  return x, y, mask


# --------------------------------------------------------------------------------- L3d / weights

def test_coefficient_weights_vs_numpy(model, params, jitted):
  pred, gt = params
  w = jitted["weights"](model, pred, gt)
  chex.assert_shape(w, (B, 62))
  chex.assert_type(w, jnp.float32)
  np.testing.assert_allclose(np.asarray(w), _weights_np(model, pred, gt), atol=2e-5, rtol=2e-3)
  np.testing.assert_allclose(np.asarray(w).sum(-1), 1.0, atol=1e-5)
  assert np.all(np.asarray(w) >= 0)
  # depth-only coefficients (3rd row of [fR | t]) do not move the 2D landmarks
  assert np.all(np.asarray(w)[:, 8:12] < 1e-5)


def test_coefficient_weights_3d_form_vs_numpy(model, params):
  """The WPDC-like 3D form: weights from the 68 3D landmarks, t_z weight 0; depth rows 8..10 now get weight."""
  pred, gt = params
  w = np.asarray(jax.jit(L.coefficient_weights, static_argnames="form")(model, pred, gt, form="3d"))
  chex.assert_shape(w, (B, 62))
  np.testing.assert_allclose(w, _weights_np(model, pred, gt, dims=3), atol=2e-5, rtol=2e-3)
  np.testing.assert_allclose(w.sum(-1), 1.0, atol=1e-5)
  assert np.all(w[:, 11] == 0) and np.all(w[:, 8:11].sum(-1) > 1e-4)
  r = np.asarray(gt, np.float64) - np.asarray(pred, np.float64)
  np.testing.assert_allclose(float(L.weighted_coefficient_loss(model, pred, gt, form="3d")),
                             np.mean(np.sum(_weights_np(model, pred, gt, dims=3) * r * r, -1)), rtol=2e-3)
  with pytest.raises(ValueError, match="form"):
    L.coefficient_weights(model, pred, gt, form="4d")


def test_weighted_coefficient_loss_vs_numpy(model, params, jitted):
  pred, gt = params
  w = _weights_np(model, pred, gt)
  r = np.asarray(gt, np.float64) - np.asarray(pred, np.float64)
  want = np.mean([sum(w[b, i] * r[b, i] ** 2 for i in range(62)) for b in range(B)])
  got = jitted["l3d"](model, pred, gt)
  chex.assert_shape(got, ())
  np.testing.assert_allclose(float(got), want, rtol=2e-3)


def test_weights_are_constant_for_the_gradient(model, params, jitted):
  pred, gt = params
  g = jitted["l3d_grad"](model, pred, gt)
  w_const = jitted["weights"](model, pred, gt)
  g_const = jax.grad(lambda p: jnp.mean(jnp.sum(w_const * (gt - p) ** 2, -1)))(pred)
  np.testing.assert_allclose(np.asarray(g), np.asarray(g_const), rtol=1e-5, atol=1e-9)
  g_w = jax.jit(jax.grad(lambda p: jnp.sum(L.coefficient_weights(model, p, gt) * jnp.arange(62.0))))(pred)
  assert np.all(np.asarray(g_w) == 0)


def test_prediction_equal_to_target(model, params, jitted):
  _, gt = params
  w = jitted["weights"](model, gt, gt)
  assert np.all(np.asarray(w) == 0)
  assert float(jitted["l3d"](model, gt, gt)) == 0.0
  g = jitted["l3d_grad"](model, gt, gt)
  assert np.all(np.isfinite(np.asarray(g)))


def test_param_shape_errors(model):
  with pytest.raises(ValueError, match="params"):
    L.weighted_coefficient_loss(model, jnp.zeros((2, 61)), jnp.zeros((2, 61)))
  with pytest.raises(ValueError, match="differ"):
    L.coefficient_weights(model, jnp.zeros((2, 62)), jnp.zeros((3, 62)))


# ----------------------------------------------------------------------------------------- VDC

def test_vertex_distance_sparse_vs_numpy(model, params):
  pred, gt = params
  got = L.vertex_distance_loss(model, pred, gt)
  pm = np.array(pred)
  pm[:, 11] = np.asarray(gt)[:, 11]
  want = np.mean([(_landmarks_np(model, pm[b]) - _landmarks_np(model, gt[b])) ** 2 for b in range(B)])
  np.testing.assert_allclose(float(got), want, rtol=1e-3)
  # t_z is matched to the target: changing it changes nothing; without matching it does
  moved = pred.at[:, 11].add(3.0)
  vdc = jax.jit(L.vertex_distance_loss, static_argnames=("dense", "match_tz"))
  assert float(vdc(model, moved, gt)) == pytest.approx(float(got), rel=1e-6)
  assert float(vdc(model, moved, gt, match_tz=False)) > float(got)
  with pytest.raises(ValueError, match="dense bases"):
    L.vertex_distance_loss(model, pred, gt, dense=True)


def test_vertex_distance_dense_vs_numpy(params):
  dmodel = random_face_model(seed=3, n_dense=50)
  pred, gt = params
  got = L.vertex_distance_loss(dmodel, pred, gt)  # dense by default when the bases exist
  pm = np.array(pred)
  pm[:, 11] = np.asarray(gt)[:, 11]
  want = np.mean([(_landmarks_np(dmodel, pm[b], True) - _landmarks_np(dmodel, gt[b], True)) ** 2
                  for b in range(B)])
  np.testing.assert_allclose(float(got), want, rtol=1e-3)
  sparse = L.vertex_distance_loss(dmodel, pred, gt, dense=False)
  assert abs(float(sparse) - float(got)) > 1e-3 * float(got)
  assert float(L.vertex_distance_loss(dmodel, gt, gt)) == 0.0


# ----------------------------------------------------------------------------- landmark subsets

def test_default_subset():
  s = L.DEFAULT_SUBSET_18
  assert s.size == 18 and len(s.weights) == 18 and s.add_mouth_centre
  assert all(17 <= i < 68 for i in s.indices) and len(set(s.indices)) == 17
  w = np.array(s.weights)
  assert (np.sum(w == 4), np.sum(w == 2), np.sum(w == 1)) == (2, 4, 12)
  hash(s)  # usable as a static jit argument


def test_subset_validation():
  with pytest.raises(ValueError, match="weights"):
    L.LandmarkSubset(indices=(30, 31), weights=(1.0, 1.0), add_mouth_centre=True)
  with pytest.raises(ValueError, match="indices"):
    L.LandmarkSubset(indices=(68,), weights=(1.0,), add_mouth_centre=False)
  with pytest.raises(ValueError, match="positive"):
    L.LandmarkSubset(indices=(30,), weights=(0.0,), add_mouth_centre=False)


def test_select_subset():
  x, _, mask = _random_points(5)
  mask[0, 48], mask[1, 54] = False, False
  mask[2, 48] = mask[2, 54] = True
  pts, m = L.select_subset(jnp.asarray(x), jnp.asarray(mask))
  chex.assert_shape(pts, (B, 18, 2))
  chex.assert_shape(m, (B, 18))
  chex.assert_type(m, bool)
  for b in range(B):
    want_p, want_m = _subset_np(x[b], mask[b], L.DEFAULT_SUBSET_18)
    np.testing.assert_allclose(np.asarray(pts[b]), want_p, rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(m[b]), want_m)
  assert not m[0, 17] and not m[1, 17] and m[2, 17]
  _, m_all = L.select_subset(jnp.asarray(x), None)
  assert np.all(np.asarray(m_all))
  with pytest.raises(ValueError, match="68"):
    L.select_subset(jnp.zeros((2, 21, 2)))


# ----------------------------------------------------------------------- L2d-con, L3d-con, Lcyc

@pytest.mark.parametrize("normalize", [True, False])
def test_landmark_consistency_2d_vs_numpy(normalize):
  x, y, mask = _random_points(7, nan_frac=0.1)
  got = L.landmark_consistency_2d(jnp.asarray(x), jnp.asarray(y), jnp.asarray(mask), normalize=normalize)
  chex.assert_shape(got, ())
  np.testing.assert_allclose(float(got), _l2d_np(x, y, mask, L.DEFAULT_SUBSET_18, normalize), rtol=1e-5)
  cyc = L.cycle_consistency_loss(jnp.asarray(x), jnp.asarray(y), jnp.asarray(mask), normalize=normalize)
  assert float(cyc) == float(got)


def test_landmark_consistency_2d_custom_subset():
  x, y, mask = _random_points(8)
  s = L.LandmarkSubset(indices=(30, 8), weights=(3.0, 0.5), add_mouth_centre=False)
  got = L.landmark_consistency_2d(jnp.asarray(x), jnp.asarray(y), jnp.asarray(mask), subset=s)
  np.testing.assert_allclose(float(got), _l2d_np(x, y, mask, s), rtol=1e-5)


def test_uniform_shift_closed_form():
  x, _, _ = _random_points(9)
  y = x + np.array([3.0, 4.0], np.float32)  # every point moved by 5 px
  sv = sum(L.DEFAULT_SUBSET_18.weights)
  assert float(L.landmark_consistency_2d(jnp.asarray(x), jnp.asarray(y))) == pytest.approx(5.0, rel=1e-5)
  assert float(L.landmark_consistency_2d(jnp.asarray(x), jnp.asarray(y), normalize=False)) == pytest.approx(
      5.0 * sv, rel=1e-5)
  x3 = np.concatenate([x, x[..., :1]], -1)
  y3 = x3 + np.array([2.0, 3.0, 6.0], np.float32)  # 7 px
  assert float(L.landmark_consistency_3d(jnp.asarray(x3), jnp.asarray(y3))) == pytest.approx(7.0, rel=1e-5)
  assert float(L.landmark_consistency_3d(jnp.asarray(x3), jnp.asarray(y3), normalize=False)) == pytest.approx(
      7.0 * 68, rel=1e-5)


@pytest.mark.parametrize("normalize", [True, False])
def test_landmark_consistency_3d_vs_numpy(normalize):
  x, y, mask = _random_points(10, d=3, nan_frac=0.1)
  got = L.landmark_consistency_3d(jnp.asarray(x), jnp.asarray(y), jnp.asarray(mask), normalize=normalize)
  np.testing.assert_allclose(float(got), _l3d_con_np(x, y, mask, normalize), rtol=1e-5)
  got_nomask = L.landmark_consistency_3d(jnp.asarray(x), jnp.asarray(y), normalize=normalize)
  np.testing.assert_allclose(float(got_nomask), _l3d_con_np(x, y, np.ones(mask.shape, bool), normalize),
                             rtol=1e-5)


def test_empty_sample_is_excluded_from_the_batch_mean():
  x, _, _ = _random_points(11)
  y = x + np.array([3.0, 4.0], np.float32)
  mask = np.ones((B, 68), bool)
  mask[0] = False
  got = L.landmark_consistency_2d(jnp.asarray(x), jnp.asarray(y), jnp.asarray(mask))
  assert float(got) == pytest.approx(5.0, rel=1e-5)
  none = L.landmark_consistency_2d(jnp.asarray(x), jnp.asarray(y), jnp.zeros((B, 68), bool))
  assert float(none) == 0.0


def test_gradients_finite_with_nan_masked_and_identical_points():
  x, y, mask = _random_points(12, nan_frac=0.2)
  y[:, 30] = x[:, 30]  # identical points: norm at 0
  y[1] = x[1]
  y[2, 40] = np.nan  # NaN in the prediction side too
  mask[0] = False  # a sample with nothing valid
  xj, yj, mj = jnp.asarray(x), jnp.asarray(y), jnp.asarray(mask)
  for fn in (lambda a, b: L.landmark_consistency_2d(a, b, mj),
             lambda a, b: L.landmark_consistency_2d(a, b, mj, normalize=False),
             lambda a, b: L.cycle_consistency_loss(a, b),
             lambda a, b: L.landmark_consistency_3d(jnp.pad(a, ((0, 0), (0, 0), (0, 1))),
                                                    jnp.pad(b, ((0, 0), (0, 0), (0, 1))), mj)):
    val, (ga, gb) = jax.jit(jax.value_and_grad(fn, argnums=(0, 1)))(xj, yj)
    assert np.isfinite(float(val))
    assert np.all(np.isfinite(np.asarray(ga))) and np.all(np.isfinite(np.asarray(gb)))
  # masked / NaN points get exactly zero gradient
  gy = jax.jit(jax.grad(lambda b: L.landmark_consistency_2d(xj, b, mj)))(yj)
  assert np.all(np.asarray(gy)[0] == 0)
  # identical points everywhere: value 0, gradient 0
  v0, g0 = jax.jit(jax.value_and_grad(lambda b: L.landmark_consistency_2d(xj, b)))(xj)
  assert float(v0) == 0.0
  assert np.all(np.nan_to_num(np.asarray(g0), nan=1.0) == 0)


def test_landmark_visibility():
  pts = np.ones((2, 4, 2), np.float32)
  pts[0, 1, 0] = -1
  pts[1, 2, 1] = np.nan
  np.testing.assert_array_equal(np.asarray(L.landmark_visibility(jnp.asarray(pts))),
                                [[True, False, True, True], [True, True, False, True]])


def test_point_shape_errors():
  with pytest.raises(ValueError, match="same shape"):
    L.landmark_consistency_3d(jnp.zeros((2, 68, 3)), jnp.zeros((2, 68, 2)))
  with pytest.raises(ValueError, match="68 points"):
    L.landmark_consistency_2d(jnp.zeros((2, 18, 2)), jnp.zeros((2, 18, 2)))
  with pytest.raises(ValueError, match="mask"):
    L.landmark_consistency_2d(jnp.zeros((2, 68, 2)), jnp.zeros((2, 68, 2)), jnp.ones((2, 67), bool))


def test_cycle_losses_match_the_pieces(model, params):
  from jface.core import geometry
  fwd, bwd = params
  x2d = geometry.landmarks2d(model, bwd) + 1.5
  out = L.cycle_losses(model, fwd, bwd, x2d)
  assert set(out) == {"l2d_con", "l3d_con", "cyc"}
  x3, xh3 = geometry.landmarks3d(model, fwd), geometry.landmarks3d(model, bwd)
  np.testing.assert_allclose(float(out["l2d_con"]), float(L.landmark_consistency_2d(x2d, x3[..., :2])), rtol=1e-6)
  np.testing.assert_allclose(float(out["l3d_con"]), float(L.landmark_consistency_3d(x3, xh3)), rtol=1e-6)
  np.testing.assert_allclose(float(out["cyc"]), float(L.cycle_consistency_loss(x2d, xh3[..., :2])), rtol=1e-6)


# ---------------------------------------------------------------------------------- self-critic

def test_critic_losses_vs_numpy():
  rng = np.random.default_rng(13)
  real, fake = rng.normal(size=(5, 1)) * 3, rng.normal(size=(5,)) * 3
  sig = lambda z: 1 / (1 + np.exp(-z))
  want_c = -np.mean(np.log(sig(real))) - np.mean(np.log(1 - sig(fake)))
  want_a = -np.mean(np.log(sig(fake)))
  got_c = L.critic_loss(jnp.asarray(real, jnp.float32), jnp.asarray(fake, jnp.float32))
  got_a = L.adversarial_loss(jnp.asarray(fake, jnp.float32))
  chex.assert_shape(got_c, ())
  chex.assert_type(got_c, jnp.float32)
  np.testing.assert_allclose(float(got_c), want_c, rtol=1e-5)
  np.testing.assert_allclose(float(got_a), want_a, rtol=1e-5)


def test_critic_closed_forms_and_extremes():
  z = jnp.zeros((4,))
  assert float(L.critic_loss(z, z)) == pytest.approx(2 * math.log(2), rel=1e-6)
  assert float(L.adversarial_loss(z)) == pytest.approx(math.log(2), rel=1e-6)
  big = jnp.array([1e4, -1e4, 80.0, -80.0])
  for fn in (lambda r, f: L.critic_loss(r, f), lambda r, f: L.adversarial_loss(f)):
    val, grads = jax.jit(jax.value_and_grad(fn, argnums=(0, 1)))(big, -big)
    assert np.isfinite(float(val))
    assert all(np.all(np.isfinite(np.asarray(g))) for g in grads)
  # confident, correct critic: loss ~ 0; fooled critic: large but finite
  assert float(L.critic_loss(jnp.full((2,), 1e4), jnp.full((2,), -1e4))) == pytest.approx(0.0, abs=1e-6)
  assert float(L.critic_loss(jnp.full((2,), -1e4), jnp.full((2,), 1e4))) == pytest.approx(2e4, rel=1e-5)


# ---------------------------------------------------------------------------------------- total

def test_combine():
  losses = dict(l3d=jnp.float32(2.0), l2d_con=jnp.float32(10.0), l3d_con=jnp.float32(20.0),
                cyc=jnp.float32(3.0), sc=jnp.float32(0.7))
  want = 2.0 + 0.005 * 10 + 0.005 * 20 + 1.0 * 3 + 0.005 * 0.7
  assert float(L.combine(losses)) == pytest.approx(want, rel=1e-6)
  assert L.PAPER_LAMBDAS == dict(l2d_con=0.005, l3d_con=0.005, cyc=1.0, sc=0.005)
  assert float(L.combine({"vdc": jnp.float32(4.0)})) == 4.0
  assert float(L.combine({"l3d": jnp.float32(1.0), "cyc": jnp.float32(1.0)}, {"cyc": 0.5})) == 1.5
  with pytest.raises(ValueError, match="no weight"):
    L.combine({"other": jnp.float32(1.0)})


# ---------------------------------------------------------------------------------- real BFM

def test_weights_on_real_bfm(bfm, jitted):
  rng = np.random.default_rng(14)
  gt = jnp.asarray(rng.normal(size=(2, 62)) * 0.5, jnp.float32)
  pred = gt + jnp.asarray(rng.normal(size=(2, 62)) * 0.2, jnp.float32)
  w = jitted["weights"](bfm, pred, gt)
  np.testing.assert_allclose(np.asarray(w), _weights_np(bfm, pred, gt), atol=2e-5, rtol=5e-3)
  np.testing.assert_allclose(np.asarray(w).sum(-1), 1.0, atol=1e-5)
  assert float(jitted["l3d"](bfm, gt, gt)) == 0.0
  vdc = jax.jit(L.vertex_distance_loss)  # no dense bases: the 68-landmark VDC
  assert float(vdc(bfm, gt, gt)) == 0.0
  assert float(vdc(bfm, pred, gt)) > 0
