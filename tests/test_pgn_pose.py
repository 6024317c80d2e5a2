"""jface.methods.pgn.pose: the closed-form affine (Eqs. 3-4) against numpy least squares, exact recovery,
gradients against finite differences (float64), degenerate inputs, jit and broadcasting; apply_affine and the
crop/camera flip."""
from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jface.methods.pgn import pose

B, K = 4, 68


def lstsq_affine(x, y, w=None):
  """numpy reference: argmin_T sum_k w_k ||T [x_k; 1] - y_k||^2 for one (K, 3) problem, float64."""
  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
  w = np.ones(len(x)) if w is None else np.asarray(w, np.float64)
  r = np.sqrt(w)[:, None]
  xh = np.concatenate([x, np.ones((len(x), 1))], 1)
  sol, *_ = np.linalg.lstsq(xh * r, y * r, rcond=None)
  return sol.T


def random_rotation(rng):
  q, r = np.linalg.qr(rng.normal(size=(3, 3)))
  q = q * np.sign(np.diag(r))
  return q * np.linalg.det(q)


@pytest.fixture
def points():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(B, K, 3)) * [40.0, 50.0, 30.0] + [5.0, -3.0, 10.0]
  t_true = rng.normal(size=(B, 3, 4)) + np.concatenate([np.eye(3), np.zeros((3, 1))], 1)
  t_true[..., 3] *= 30
  y = np.einsum("bij,bkj->bki", t_true[..., :3], x) + t_true[:, None, :, 3] + rng.normal(size=(B, K, 3)) * 2.0
  return x.astype(np.float32), y.astype(np.float32)


def rel_err(a, b):
  return np.abs(np.asarray(a, np.float64) - b).max() / np.abs(b).max()


def test_matches_lstsq(points):
  x, y = points
  t = pose.solve_affine(x, y)
  chex.assert_shape(t, (B, 3, 4))
  chex.assert_type(t, jnp.float32)
  ref = np.stack([lstsq_affine(x[b], y[b]) for b in range(B)])
  assert rel_err(t, ref) < 2e-3  # the ridge's O(reg) bias
  assert rel_err(pose.solve_affine(x, y, reg=0.0), ref) < 2e-5


def test_weights_and_masks(points):
  x, y = points
  rng = np.random.default_rng(1)
  w = rng.uniform(0.1, 2.0, size=(B, K)).astype(np.float32)
  t = pose.solve_affine(x, y, w, reg=0.0)
  ref = np.stack([lstsq_affine(x[b], y[b], w[b]) for b in range(B)])
  assert rel_err(t, ref) < 2e-5
  mask = rng.uniform(size=(B, K)) < 0.5
  y_bad = np.where(mask[..., None], y, 1e4).astype(np.float32)  # outliers on the dropped points
  for m in (mask, mask.astype(np.float32)):
    t = pose.solve_affine(x, y_bad, m, reg=0.0)
    ref = np.stack([lstsq_affine(x[b][mask[b]], y[b][mask[b]]) for b in range(B)])
    assert rel_err(t, ref) < 2e-5
  t = pose.solve_affine(x, y_bad, mask)
  assert rel_err(t, ref) < 2e-3


def test_exact_recovery(points):
  x, _ = points
  rng = np.random.default_rng(2)
  sim = np.stack([np.concatenate([s * random_rotation(rng), rng.normal(size=(3, 1)) * 50], 1)
                  for s in rng.uniform(0.5, 2.0, size=B)])
  general = rng.normal(size=(B, 3, 4)) * [1.0, 1.0, 1.0, 40.0]
  for t_true in (sim, general):
    y = np.einsum("bij,bkj->bki", t_true[..., :3], x) + t_true[:, None, :, 3]
    assert rel_err(pose.solve_affine(x, y.astype(np.float32), reg=0.0), t_true) < 1e-5
    assert rel_err(pose.solve_affine(x, y.astype(np.float32)), t_true) < 1e-3


def test_apply_affine_and_broadcasting(points):
  x, y = points
  t = pose.solve_affine(x, y)
  fit = pose.apply_affine(t, x)
  chex.assert_shape(fit, (B, K, 3))
  chex.assert_type(fit, jnp.float32)
  np.testing.assert_allclose(fit, np.einsum("bij,bkj->bki", t[..., :3], x) + np.asarray(t)[:, None, :, 3],
                             rtol=1e-5, atol=1e-3)
  # a shared (K, 3) model against (B, K, 3) observations, and a shared (K,) weight vector
  shared = pose.solve_affine(x[0], y, jnp.ones(K))
  chex.assert_shape(shared, (B, 3, 4))
  np.testing.assert_allclose(shared, pose.solve_affine(np.broadcast_to(x[0], x.shape), y), rtol=1e-5, atol=1e-4)
  # more leading dims
  tt = pose.solve_affine(x.reshape(2, 2, K, 3), y.reshape(2, 2, K, 3))
  np.testing.assert_allclose(tt.reshape(B, 3, 4), t, rtol=1e-5, atol=1e-5)
  chex.assert_shape(pose.apply_affine(tt, x.reshape(2, 2, K, 3)), (2, 2, K, 3))


def test_jit(points):
  x, y = points
  w = np.ones((B, K), np.float32)
  np.testing.assert_allclose(jax.jit(pose.solve_affine)(x, y, w), pose.solve_affine(x, y, w), rtol=1e-5, atol=1e-4)


def lstsq_jnp(x, y, w):
  """The unnormalised Eq. 4 in jnp (T = Y W Xh^T (Xh W Xh^T)^-1), for gradients of well-posed problems."""
  xh = jnp.concatenate([x, jnp.ones(x.shape[:-1] + (1,), x.dtype)], -1)
  a = jnp.einsum("k,ki,kj->ij", w, xh, xh)
  c = jnp.einsum("k,ki,kj->ij", w, y, xh)
  return jnp.linalg.solve(a, c.T).T


def test_gradients_float64():
  with jax.enable_x64(True):
    rng = np.random.default_rng(3)
    k = 10
    x = jnp.asarray(rng.normal(size=(k, 3)) * 3 + 1)
    y = jnp.asarray(rng.normal(size=(k, 3)) * 2 - 1)
    w = jnp.asarray(rng.uniform(0.2, 1.5, size=k))
    proj = jnp.asarray(rng.normal(size=(3, 4)))

    @jax.jit
    def f(x, y, w, reg=1e-4):
      return jnp.sum(pose.solve_affine(x, y, w, reg=reg) * proj)

    def f_ref(x, y, w):
      return jnp.sum(lstsq_jnp(x, y, w) * proj)

    grads = jax.grad(f, argnums=(0, 1, 2))(x, y, w)
    for g in grads:
      assert g.dtype == jnp.float64
    # against central finite differences of the function itself (all 7k perturbations in one vmap)
    flat = jnp.concatenate([x.ravel(), y.ravel(), w])
    f_flat = jax.jit(jax.vmap(lambda p: f(p[:3 * k].reshape(k, 3), p[3 * k:6 * k].reshape(k, 3), p[6 * k:])))
    steps = 1e-6 * np.eye(flat.size)
    fd = (f_flat(flat + steps) - f_flat(flat - steps)) / 2e-6
    g = np.concatenate([np.asarray(a).ravel() for a in grads])
    np.testing.assert_allclose(g, fd, rtol=1e-6, atol=1e-7)
    # reg = 0: the same gradients as the plain unnormalised formula
    g0 = jax.grad(f, argnums=(0, 1, 2))(x, y, w, 0.0)
    g_ref = jax.grad(f_ref, argnums=(0, 1, 2))(x, y, w)
    for a, b in zip(g0, g_ref):
      np.testing.assert_allclose(a, b, rtol=1e-8, atol=1e-10)


_PROJ = np.random.default_rng(4).normal(size=(3, 4)).astype(np.float32)


@jax.jit
def _solve_and_grads(x, y, w):
  """solve_affine and the gradients of a random projection of it w.r.t. x, y, w."""
  f = lambda x, y, w: jnp.sum(pose.solve_affine(x, y, w) * _PROJ)  # noqa: E731
  return pose.solve_affine(x, y, w), jax.grad(f, argnums=(0, 1, 2))(x, y, w)


def _finite_with_grads(x, y, w):
  t, grads = _solve_and_grads(x, y, w)
  assert np.isfinite(np.asarray(t)).all()
  for g in grads:
    assert np.isfinite(np.asarray(g)).all()
  return t


def test_degenerate_inputs():
  rng = np.random.default_rng(5)
  y = jnp.asarray(rng.normal(size=(K, 3)) * 20 + 60, jnp.float32)
  ones = jnp.ones(K, jnp.float32)
  # all model points identical: finite, and T maps them (near) to the mean observation
  for c in ((1.0, 2.0, 3.0), (0.0, 0.0, 0.0), (1e5, -2e4, 7e4)):
    x = jnp.broadcast_to(jnp.asarray(c, jnp.float32), (K, 3))
    t = _finite_with_grads(x, y, ones)
    np.testing.assert_allclose(pose.apply_affine(t, x), np.broadcast_to(np.mean(y, 0), (K, 3)), atol=0.05 * 20)
  # all observations identical: T x = that point, linear part ~ 0
  x = jnp.asarray(rng.normal(size=(K, 3)) * 30, jnp.float32)
  t = _finite_with_grads(x, jnp.broadcast_to(y[0], (K, 3)), ones)
  np.testing.assert_allclose(pose.apply_affine(t, x), np.broadcast_to(y[0], (K, 3)), atol=1e-3)
  # all weights 0
  t = _finite_with_grads(x, y, jnp.zeros(K, jnp.float32))
  np.testing.assert_allclose(t, 0, atol=1e-6)
  # collinear and coplanar model points: the fit of the spanned directions is exact, the rest stays ~0
  line = jnp.asarray(rng.normal(size=(K, 1)) * [[3.0, -1.0, 2.0]] + 7, jnp.float32)
  plane = jnp.asarray(np.concatenate([rng.normal(size=(K, 2)) * 10, np.full((K, 1), 4.0)], 1), jnp.float32)
  a_true = jnp.asarray(rng.normal(size=(3, 3)), jnp.float32)
  for x in (line, plane):
    yy = x @ a_true.T + 5.0
    t = _finite_with_grads(x, yy, ones)
    np.testing.assert_allclose(pose.apply_affine(t, x), yy, rtol=1e-3, atol=1e-2)
    assert np.abs(np.asarray(t[:, :3])).max() < 10 * np.abs(np.asarray(a_true)).max()
  # only one point kept by the mask
  mask = jnp.zeros(K, jnp.float32).at[3].set(1.0)
  t = _finite_with_grads(x, y, mask)
  np.testing.assert_allclose(pose.apply_affine(t, x[3:4]), y[3:4], atol=1e-3)


def test_crop_camera_round_trip():
  rng = np.random.default_rng(6)
  p = jnp.asarray(rng.uniform(1, 120, size=(2, 5, 3)), jnp.float32)
  cam = pose.crop_to_camera(p, 120)
  chex.assert_shape(cam, (2, 5, 3))
  chex.assert_type(cam, jnp.float32)
  np.testing.assert_allclose(cam, np.stack([p[..., 0], 121 - p[..., 1], p[..., 2]], -1))
  np.testing.assert_allclose(pose.camera_to_crop(cam, 120), p, atol=1e-5)
  np.testing.assert_allclose(pose.crop_to_camera(jnp.asarray([[1.0, 1.0, 0.0], [120.0, 120.0, 5.0]]), 120),
                             [[1.0, 120.0, 0.0], [120.0, 1.0, 5.0]])
