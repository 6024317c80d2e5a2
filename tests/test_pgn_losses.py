"""jface.methods.pgn.losses against numpy and closed forms: the landmark loss (Eq. 8, 3D / 2D / masked / empty),
the coefficient prior (Eq. 12), feature consistency (Eq. 11), normals of plane and sphere maps, facing masks of
a hemisphere and a sphere band in both UV orientations, visibility and texture swap (Eqs. 5-6), region weights."""
from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np

from jface.methods.pgn import losses as L

B, K = 3, 68


def test_landmark_loss():
  rng = np.random.default_rng(0)
  pred = rng.normal(size=(B, K, 3)).astype(np.float32) * 10
  target = rng.normal(size=(B, K, 3)).astype(np.float32) * 10
  mask = rng.uniform(size=(B, K)) < 0.7
  for dims in (3, 2):
    d = np.abs(pred[..., :dims] - target[..., :dims]).astype(np.float64)
    got = L.landmark_loss(pred, target, dims=dims)
    chex.assert_shape(got, ())
    chex.assert_type(got, jnp.float32)
    np.testing.assert_allclose(got, d.mean(), rtol=1e-5)
    ref = d[mask].mean()
    np.testing.assert_allclose(L.landmark_loss(pred, target, mask, dims=dims), ref, rtol=1e-5)
    np.testing.assert_allclose(L.landmark_loss(pred, target, mask.astype(np.float32), dims=dims), ref, rtol=1e-5)
  # masked entries may hold NaN (missing labels): neither the value nor the gradient sees them
  bad = np.where(mask[..., None], target, np.nan).astype(np.float32)
  np.testing.assert_allclose(L.landmark_loss(pred, bad, mask), np.abs(pred - target)[mask].mean(), rtol=1e-5)
  g = jax.grad(L.landmark_loss)(jnp.asarray(pred), bad, mask)
  assert np.isfinite(np.asarray(g)).all()
  np.testing.assert_array_equal(np.asarray(g)[~mask], 0)
  np.testing.assert_allclose(np.asarray(g)[mask], np.sign(pred - target)[mask] / (mask.sum() * 3), rtol=1e-5)
  # nothing valid: 0, finite zero gradient
  empty = np.zeros((B, K), bool)
  for dims in (3, 2):
    loss, g = jax.jit(jax.value_and_grad(L.landmark_loss), static_argnames="dims")(
        jnp.asarray(pred), bad, empty, dims=dims)
    assert float(loss) == 0.0
    np.testing.assert_array_equal(g, 0)


def test_coefficient_prior():
  rng = np.random.default_rng(1)
  a_id, a_exp = rng.normal(size=(B, 199)), rng.normal(size=(B, 29))
  s_id, s_exp = rng.uniform(0.5, 3, size=199), rng.uniform(0.5, 3, size=29)
  ref = np.mean(np.abs(a_id / s_id).sum(-1) + 0.5 * np.abs(a_exp / s_exp).sum(-1))
  got = L.coefficient_prior(*(jnp.asarray(v, jnp.float32) for v in (a_id, a_exp, s_id, s_exp)))
  chex.assert_shape(got, ())
  chex.assert_type(got, jnp.float32)
  np.testing.assert_allclose(got, ref, rtol=1e-5)
  np.testing.assert_allclose(L.coefficient_prior(np.zeros(199, np.float32), np.zeros(29, np.float32), s_id, s_exp), 0)


def test_feature_consistency():
  rng = np.random.default_rng(2)
  fa, fb = rng.normal(size=(2, B, 64)).astype(np.float32)
  ref = np.mean(1 - np.sum(fa * fb, -1) / (np.linalg.norm(fa, axis=-1) * np.linalg.norm(fb, axis=-1)))
  got = L.feature_consistency(fa, fb)
  chex.assert_shape(got, ())
  chex.assert_type(got, jnp.float32)
  np.testing.assert_allclose(got, ref, rtol=1e-5)
  np.testing.assert_allclose(L.feature_consistency(fa, 3 * fa), 0, atol=1e-6)
  np.testing.assert_allclose(L.feature_consistency(fa, -0.5 * fa), 2, atol=1e-6)
  # zero vectors: cosine 0, finite gradients
  z = np.zeros_like(fa)
  np.testing.assert_allclose(L.feature_consistency(z, fb), 1, atol=1e-6)
  for g in jax.grad(L.feature_consistency, argnums=(0, 1))(jnp.asarray(z), jnp.asarray(z)):
    assert np.isfinite(np.asarray(g)).all()


def test_grid_normals_plane():
  s = 6
  v, u = np.mgrid[0:s, 0:s].astype(np.float64)
  a, b, o = np.array([2.0, 0.3, -1.0]), np.array([-0.5, 1.5, 0.7]), np.array([10.0, 20.0, 30.0])
  pos = (o + u[..., None] * a + v[..., None] * b).astype(np.float32)
  n = L.grid_normals(jnp.asarray(np.stack([pos, pos[:, ::-1]])))  # batched, second map with u reversed
  chex.assert_shape(n, (2, s, s, 3))
  chex.assert_type(n, jnp.float32)
  ref = np.cross(a, b) / np.linalg.norm(np.cross(a, b))
  np.testing.assert_allclose(n[0], np.broadcast_to(ref, (s, s, 3)), atol=1e-5)  # borders included
  np.testing.assert_allclose(n[1], np.broadcast_to(-ref, (s, s, 3)), atol=1e-5)
  # a degenerate (constant) map: n = 0, no NaN
  np.testing.assert_array_equal(L.grid_normals(jnp.ones((s, s, 3))), 0)


def sphere_band(s, r, lon_max, lat_max, flip_u=False):
  """(s, s, 3) positions of a sphere of radius r (centre (60, 60, 0), crop coordinates: y down, z to the
  camera) over longitudes [-lon_max, lon_max] (columns) and latitudes [-lat_max, lat_max] (rows, y down), its
  outward normals, and the longitudes."""
  lon = np.linspace(-lon_max, lon_max, s)
  lat = np.linspace(-lat_max, lat_max, s)
  lat, lon = np.meshgrid(lat, lon, indexing="ij")
  if flip_u:
    lon = lon[:, ::-1]
  nrm = np.stack([np.cos(lat) * np.sin(lon), np.sin(lat), np.cos(lat) * np.cos(lon)], -1)
  return (np.array([60.0, 60.0, 0.0]) + r * nrm).astype(np.float32), nrm, lon


def test_grid_normals_sphere():
  s, r = 64, 40.0
  pos, nrm, _ = sphere_band(s, r, np.radians(120), np.radians(60))
  n = np.asarray(L.grid_normals(jnp.asarray(pos)))
  # with u = longitude (x grows), v = latitude (y down), dP/du x dP/dv is the outward normal
  assert np.abs(n[1:-1, 1:-1] - nrm[1:-1, 1:-1]).max() < 1e-4
  np.testing.assert_allclose(np.linalg.norm(n, axis=-1), 1, atol=1e-5)


def test_facing_mask_hemisphere():
  s, r = 41, 15.0
  v, u = np.mgrid[0:s, 0:s].astype(np.float64)
  x, y = u - 20, v - 20  # crop coordinates up to a shift: x = column, y = row (down)
  z = np.sqrt(np.maximum(r * r - x * x - y * y, 0))
  pos = np.stack([x, y, z], -1).astype(np.float32)
  inside = x * x + y * y < (r - 2) ** 2
  # the height field's normals (-z_x, -z_y, 1) / |.| face the camera everywhere
  n = np.asarray(L.grid_normals(jnp.asarray(pos)))
  ref = np.stack([x, y, np.sqrt(np.maximum(r * r - x * x - y * y, 1e-9))], -1) / r
  assert np.abs(n[inside] - ref[inside]).max() < 0.02
  for flip, sign in ((False, 1.0), (True, -1.0)):
    p = pos[:, ::-1] if flip else pos
    normals = L.grid_normals(jnp.asarray(p))
    m = L.facing_mask(normals, sign)
    chex.assert_shape(m, (s, s))
    chex.assert_type(m, jnp.float32)
    np.testing.assert_array_equal(np.asarray(m)[inside[:, ::-1] if flip else inside], 1)
    np.testing.assert_array_equal(np.asarray(L.facing_mask(normals, -sign))[inside], 0)


def test_facing_mask_sphere_band():
  s = 64
  lon_max = np.radians(150)
  step = 2 * lon_max / (s - 1)
  for flip in (False, True):
    pos, nrm, lon = sphere_band(s, 40.0, lon_max, np.radians(60), flip_u=flip)
    normals = L.grid_normals(jnp.asarray(np.stack([pos, pos])))
    # the layout's orientation from the frontal centre, as a caller does once with a mean face
    sign = float(np.sign(normals[0, s // 2, s // 2, 2]))
    assert sign == (-1.0 if flip else 1.0)
    m = np.asarray(L.facing_mask(normals, sign))
    chex.assert_shape(m, (2, s, s))
    clear = np.abs(np.abs(lon) - np.pi / 2) > 1.5 * step  # away from the silhouette
    ref = (nrm[..., 2] > 0).astype(np.float32)
    np.testing.assert_array_equal(m[0][clear], ref[clear])
    np.testing.assert_array_equal(m[1], m[0])
    assert 0 < ref[clear].mean() < 1


def test_visibility_and_swap():
  rng = np.random.default_rng(3)
  m1 = (rng.uniform(size=(B, 8, 8)) < 0.6).astype(np.float32)
  m2 = (rng.uniform(size=(B, 8, 8)) < 0.6).astype(np.float32)
  m12 = L.common_visibility(m1, m2)
  np.testing.assert_array_equal(m12, np.logical_and(m1, m2))
  c1, c2 = rng.uniform(size=(2, B, 8, 8, 3)).astype(np.float32)
  out = L.swap_texture(c1, c2, m12)
  chex.assert_shape(out, (B, 8, 8, 3))
  chex.assert_type(out, jnp.float32)
  np.testing.assert_allclose(out, np.where(np.asarray(m12)[..., None] > 0, c1, c2))
  soft = rng.uniform(size=(B, 8, 8)).astype(np.float32)
  np.testing.assert_allclose(L.swap_texture(c1, c2, soft), c1 * soft[..., None] + c2 * (1 - soft[..., None]),
                             rtol=1e-6)


def test_region_weights():
  w = np.array([[16, 4, 3, 0], [4, 4, 3, 0], [3, 3, 3, 0]], np.float32)
  got = L.region_weights(w)
  chex.assert_shape(got, (3, 4))
  chex.assert_type(got, jnp.float32)
  np.testing.assert_array_equal(got, [[5, 5, 1, 0], [5, 5, 1, 0], [1, 1, 1, 0]])
  np.testing.assert_array_equal(L.region_weights(w, high=2.0, low=0.5)[0], [2, 2, 0.5, 0])
