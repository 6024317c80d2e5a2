"""PGN's pose (Liu et al. 2020, Sec. 3.2, Eqs. 3-4): the affine ``T = [f R | t]`` (3, 4) that maps the model's
3D landmarks ``X`` onto the landmarks ``X_UV`` read from the predicted UV position map, in closed form.

Points are (..., K, 3), coordinates last; leading batch dimensions broadcast between the arguments (a shared
(K, 3) model against (B, K, 3) observations works). Crop coordinates (``jface.core.geometry``): 1-based pixel
centres, x right, y down, z larger = nearer the camera; the camera frame is ``(x, crop_size + 1 - y, z)`` (y up).
All functions are jittable and differentiable; float32 in, float32 out.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

# Relative floor on the squared RMS radius used for normalisation (times the mean squared norm of the points):
# bounds 1 / scale (and so the gradients) when all points coincide up to round-off.
_SCALE_FLOOR = 1e-8


def _positive_or_one(v: jax.Array) -> jax.Array:
  """``v`` where ``v > 0``, else 1 (with zero gradient there): a safe denominator."""
  return jnp.where(v > 0, v, jnp.ones_like(v))


def _normalise(p: jax.Array, w: jax.Array, w_sum: jax.Array):
  """Weighted centroid (..., 3), RMS radius (...,) about it, and the normalised points (..., K, 3)."""
  mean = jnp.sum(w[..., None] * p, axis=-2) / w_sum[..., None]
  centred = p - mean[..., None, :]
  var = jnp.sum(w * jnp.sum(jnp.square(centred), axis=-1), axis=-1) / w_sum
  msq = jnp.sum(w * jnp.sum(jnp.square(p), axis=-1), axis=-1) / w_sum
  scale = jnp.sqrt(_positive_or_one(var + _SCALE_FLOOR * msq))
  return mean, scale, centred / scale[..., None, None]


def solve_affine(x: jax.Array, y: jax.Array, weights: jax.Array | None = None, reg: float = 1e-4) -> jax.Array:
  """Eqs. 3-4: the affine ``T`` (..., 3, 4) minimising ``sum_k w_k ||T [x_k; 1] - y_k||^2``.

  Eq. 4's ``T = Y W Xh^T (Xh W Xh^T)^-1`` (``Xh = [X; 1]``), solved robustly: x and y are centred on their
  weighted centroids and divided by their weighted RMS radii, which decouples the translation (``t = m_y - A m_x``)
  and leaves the 3x3 linear part ``A_n = C_yx (C_xx + reg I)^-1`` of unit-scale covariances (``C`` = weighted
  means of outer products); ``A = A_n s_y / s_x``. ``reg`` is thus a ridge relative to the spread of x that does
  not touch the translation: it biases a well-posed fit by O(reg) and keeps degenerate inputs (coincident,
  collinear or coplanar points, all weights 0) finite and differentiable, with a near-zero linear part along the
  missing directions (all weights 0 -> T = 0).

  Args:
    x: (..., K, 3) model points (``X``, e.g. landmarks of the 3DMM shape).
    y: (..., K, 3) observed points (``X_UV``).
    weights: (..., K) non-negative per-point weights (e.g. a 0/1 validity mask), or None (all 1).
    reg: relative ridge on the normalised linear part; 0 gives the exact least-squares solution.
  Returns (..., 3, 4) ``[A | t]``, so that ``y ~ A x + t``.
  """
  x, y = jnp.asarray(x), jnp.asarray(y)
  dtype = jnp.result_type(x.dtype, y.dtype, jnp.float32)
  x, y = x.astype(dtype), y.astype(dtype)
  w = jnp.ones(x.shape[:-1], dtype) if weights is None else jnp.asarray(weights, dtype)
  w_sum = _positive_or_one(jnp.sum(w, axis=-1))
  mx, sx, xn = _normalise(x, w, w_sum)
  my, sy, yn = _normalise(y, w, w_sum)
  cxx = jnp.einsum("...k,...ki,...kj->...ij", w, xn, xn) / w_sum[..., None, None]
  cxy = jnp.einsum("...k,...ki,...kj->...ij", w, xn, yn) / w_sum[..., None, None]
  cxx, cxy = jnp.broadcast_arrays(cxx, cxy)
  an_t = jnp.linalg.solve(cxx + reg * jnp.eye(3, dtype=dtype), cxy)  # (C_xx + reg I)^-1 C_xy = A_n^T
  a = jnp.swapaxes(an_t, -1, -2) * (sy / sx)[..., None, None]
  t = my - jnp.einsum("...ij,...j->...i", a, mx)
  return jnp.concatenate([a, t[..., None]], axis=-1)


def apply_affine(t: jax.Array, x: jax.Array) -> jax.Array:
  """``T [x; 1]``: (..., 3, 4) affine applied to (..., K, 3) points -> (..., K, 3)."""
  return jnp.einsum("...ij,...kj->...ki", t[..., :3], x) + t[..., None, :, 3]


def crop_to_camera(points: jax.Array, crop_size: int) -> jax.Array:
  """Crop coordinates (x, y down, z) -> camera frame (x, crop_size + 1 - y, z) (y up); (..., K, 3)."""
  return jnp.stack([points[..., 0], crop_size + 1 - points[..., 1], points[..., 2]], axis=-1)


def camera_to_crop(points: jax.Array, crop_size: int) -> jax.Array:
  """Camera frame (x, y up, z) -> crop coordinates; the same flip as ``crop_to_camera`` (its own inverse)."""
  return crop_to_camera(points, crop_size)
