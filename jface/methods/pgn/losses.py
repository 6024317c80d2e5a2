"""PGN's losses and their ingredients (Liu et al. 2020, Sec. 3.3-3.4, Eqs. 5-12), without the lambdas.

Pure, jittable functions with any leading batch dimensions. Points are in crop coordinates (x right, y down,
z larger = nearer the camera); maps are (..., S, S, C) in the UV layout (rows v, columns u). Scalar losses are
float32 means over the batch (the paper's sums become means so that they do not scale with K, S or B).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from jface.core import uv as uv_lib


def _positive_or_one(v: jax.Array) -> jax.Array:
  return jnp.where(v > 0, v, jnp.ones_like(v))


def landmark_loss(pred: jax.Array, target: jax.Array, mask: jax.Array | None = None, dims: int = 3) -> jax.Array:
  """``L_l`` (Eq. 8, ``sum |T X - X_UV|``) as the mean absolute error over valid points and coordinates.

  Args:
    pred, target: (B, K, 3) points (e.g. ``T X`` and ``X_UV``; any leading dims).
    mask: (B, K) bool/float validity (weights), or None (all valid). Masked entries may hold NaN.
    dims: coordinates compared: 3 for 3D-labelled batches, 2 (x, y) for 2D-only ones.
  Returns a scalar; 0 with zero gradients when nothing is valid.
  """
  d = pred[..., :dims] - target[..., :dims]
  m = jnp.ones(d.shape[:-1], d.dtype) if mask is None else jnp.asarray(mask, d.dtype)
  m = jnp.broadcast_to(m[..., None], d.shape)
  d = jnp.where(m > 0, d, 0)
  return jnp.sum(jnp.abs(d) * m) / _positive_or_one(jnp.sum(m))


def coefficient_prior(alpha_id: jax.Array, alpha_exp: jax.Array, sigma_id: jax.Array,
                      sigma_exp: jax.Array) -> jax.Array:
  """``L_r / lambda_r`` (Eq. 12): ``sum_i |alpha_id_i / sigma_id_i| + 1/2 sum_i |alpha_exp_i / sigma_exp_i|``.

  Args: alpha_id (..., N_id), alpha_exp (..., N_exp) coefficients; sigma_id (N_id,), sigma_exp (N_exp,) their
  standard deviations. Returns the mean over the leading dims (a scalar).
  """
  per = (jnp.sum(jnp.abs(alpha_id / sigma_id), axis=-1)
         + 0.5 * jnp.sum(jnp.abs(alpha_exp / sigma_exp), axis=-1))
  return jnp.mean(per)


def feature_consistency(f_a: jax.Array, f_b: jax.Array, eps: float = 1e-6) -> jax.Array:
  """``L_s / lambda_s`` (Eq. 11): ``1 - <f_a / ||f_a||, f_b / ||f_b||>`` for (..., C) features, mean over the
  leading dims. Norms are floored at ``eps`` (a zero vector gives cosine 0, finite gradients)."""
  na = jnp.sqrt(jnp.maximum(jnp.sum(jnp.square(f_a), axis=-1), eps * eps))
  nb = jnp.sqrt(jnp.maximum(jnp.sum(jnp.square(f_b), axis=-1), eps * eps))
  return jnp.mean(1.0 - jnp.sum(f_a * f_b, axis=-1) / (na * nb))


def _diff(p: jax.Array, axis: int) -> jax.Array:
  """Central differences along ``axis`` ((p[i+1] - p[i-1]) / 2), one-sided at both ends; needs size >= 2."""
  p = jnp.moveaxis(p, axis, 0)
  d = jnp.concatenate([p[1:2] - p[0:1], 0.5 * (p[2:] - p[:-2]), p[-1:] - p[-2:-1]], axis=0)
  return jnp.moveaxis(d, 0, axis)


def grid_normals(pos_map: jax.Array) -> jax.Array:
  """Unit normals ``n = dP/du x dP/dv`` (..., S, S, 3) of a position map (..., S, S, 3) (one point per UV pixel).

  ``u`` runs along the columns (axis -2), ``v`` along the rows (axis -3); central differences inside,
  one-sided at the borders. The sign follows the UV orientation; degenerate pixels get n = 0.
  """
  n = jnp.cross(_diff(pos_map, -2), _diff(pos_map, -3))
  n2 = jnp.sum(jnp.square(n), axis=-1, keepdims=True)
  return jnp.where(n2 > 0, n * jax.lax.rsqrt(_positive_or_one(n2)), 0)


def facing_mask(normals: jax.Array, sign: float) -> jax.Array:
  """Eq. 5's vertex visibility ``M`` (..., S, S) float32: 1 where ``sign * n_z > 0`` (the surface faces the
  camera: z points toward it in crop coordinates), else 0. ``sign`` (+1/-1) is the layout's orientation (the
  sign of ``n_z`` of ``grid_normals`` on a frontal face). No gradient."""
  n_z = jax.lax.stop_gradient(normals[..., 2])
  return (sign * n_z > 0).astype(jnp.float32)


def common_visibility(m1: jax.Array, m2: jax.Array) -> jax.Array:
  """Eq. 5: ``M_12 = M_1 * M_2``, 1 where a UV pixel is visible in both frames."""
  return m1 * m2


def swap_texture(c1: jax.Array, c2: jax.Array, m12: jax.Array) -> jax.Array:
  """Eq. 6: ``C_1->2 = C_1 * M_12 + C_2 * (1 - M_12)`` for textures (..., S, S, C) and ``M_12`` (..., S, S)."""
  m = m12[..., None]
  return c1 * m + c2 * (1 - m)


def region_weights(weights_map: jax.Array, high: float = 5.0, low: float = 1.0) -> jax.Array:
  """The weight mask ``W`` of Eqs. 9-10 (Sec. 3.4): ``high`` on the eyes, nose and mouth, ``low`` on the rest of
  the face, 0 elsewhere, (S, S) float32, from a PRNet-style map (``jface.core.uv.WEIGHTS``: 16 at the 68 keypoint
  pixels, 4 eyes/nose/mouth, 3 face, 0 neck/outside): ``high`` where the weight is >= the eyes/nose/mouth class
  (keypoints included), ``low`` where it is > 0.
  """
  w = jnp.asarray(weights_map, jnp.float32)
  organ = uv_lib.WEIGHTS["eyes_nose_mouth"]
  return jnp.where(w >= organ, high, jnp.where(w > 0, low, 0.0)).astype(jnp.float32)
