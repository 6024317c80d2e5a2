"""Pure, jittable 3DMM geometry. Every function accepts any number of leading batch dimensions.

Coordinate conventions (3DDFA v1 / 2DASL benchmarks):

* Params: ``pw`` are whitened (what networks output and datasets store); ``p = pw * std + mean``.
* Model space: ``S = u + W_shp a_shp + W_exp a_exp`` reshaped to (..., K, 3); y points up.
* Camera: ``v = fR @ S + t`` with ``fR, t = P[:, :3], P[:, 3]``, ``P = p[:12].reshape(3, 4)``.
* Crop coordinates (120x120): ``x = v_x``, ``y = crop_size + 1 - v_y``, ``z = v_z`` (1-based: the centre of
  array pixel ``[r, c]`` is at ``(x, y) = (c + 1, r + 1)``). Points are (..., K, 2|3), coordinates last.
* Original image through a roi box ``(sx, sy, ex, ey)``: ``x_img = x (ex - sx) / crop + sx``,
  ``y_img = y (ey - sy) / crop + sy``, ``z_img = z ((ex - sx) + (ey - sy)) / (2 crop)``.
* Angles (degrees, 3DDFA's ``matrix2angle``): ``R = Rz(roll) @ Ry(-yaw) @ Rx(pitch)`` with right-handed
  elementary rotations, so ``yaw = asin(R[2, 0])``.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from jface.core.face_model import CROP_SIZE, FaceModel, N_EXP, N_SHP


# ----------------------------------------------------------------------------------- parameters

def whiten(model: FaceModel, p: jax.Array) -> jax.Array:
  """(..., 62) raw params -> whitened."""
  return (p - model.param_mean) / model.param_std


def dewhiten(model: FaceModel, pw: jax.Array) -> jax.Array:
  """(..., 62) whitened params -> raw."""
  return pw * model.param_std + model.param_mean


def parse_params(p: jax.Array):
  """Raw (..., 62) -> (fR (..., 3, 3) scaled rotation, t (..., 3), a_shp (..., 40), a_exp (..., 10))."""
  P = p[..., :12].reshape(p.shape[:-1] + (3, 4))
  return P[..., :3], P[..., 3], p[..., 12:12 + N_SHP], p[..., 12 + N_SHP:12 + N_SHP + N_EXP]


def compose_params(fR: jax.Array, t: jax.Array, a_shp: jax.Array, a_exp: jax.Array) -> jax.Array:
  """Inverse of ``parse_params``: -> raw (..., 62)."""
  P = jnp.concatenate([fR, t[..., None]], axis=-1)
  return jnp.concatenate([P.reshape(P.shape[:-2] + (12,)), a_shp, a_exp], axis=-1)


# -------------------------------------------------------------------------------------- shapes

def _shape(u, w_shp, w_exp, a_shp, a_exp):
  s = u + jnp.einsum("kp,...p->...k", w_shp, a_shp) + jnp.einsum("kp,...p->...k", w_exp, a_exp)
  return s.reshape(s.shape[:-1] + (-1, 3))


def _camera_to_crop(v: jax.Array, crop_size: int) -> jax.Array:
  return jnp.stack([v[..., 0], crop_size + 1 - v[..., 1], v[..., 2]], axis=-1)


def pose_points(p: jax.Array, pts: jax.Array, crop_size: int = CROP_SIZE) -> jax.Array:
  """Applies the pose of raw params (..., 62) to model-space points (..., K, 3) -> crop coords (..., K, 3)."""
  fR, t, _, _ = parse_params(p)
  # broadcast multiply-sum: on CPU much faster than a batched tiny einsum for (3, 3) x (K, 3)
  v = jnp.sum(fR[..., None, :, :] * pts[..., :, None, :], axis=-1) + t[..., None, :]
  return _camera_to_crop(v, crop_size)


def landmarks_model_space(model: FaceModel, pw: jax.Array) -> jax.Array:
  """Whitened (..., 62) -> the 68 landmarks in model space (..., 68, 3), before pose."""
  _, _, a_shp, a_exp = parse_params(dewhiten(model, pw))
  return _shape(model.u_base, model.w_shp_base, model.w_exp_base, a_shp, a_exp)


def landmarks3d(model: FaceModel, pw: jax.Array) -> jax.Array:
  """Whitened (..., 62) -> 68 landmarks in crop coordinates (..., 68, 3)."""
  p = dewhiten(model, pw)
  _, _, a_shp, a_exp = parse_params(p)
  return pose_points(p, _shape(model.u_base, model.w_shp_base, model.w_exp_base, a_shp, a_exp),
                     model.crop_size)


def landmarks2d(model: FaceModel, pw: jax.Array) -> jax.Array:
  """Whitened (..., 62) -> 68 landmarks in crop coordinates (..., 68, 2). This is H(.) of the 2DASL paper."""
  return landmarks3d(model, pw)[..., :2]


def dense_vertices(model: FaceModel, pw: jax.Array) -> jax.Array:
  """Whitened (..., 62) -> all N vertices in crop coordinates (..., N, 3). Needs the dense bases."""
  if not model.has_dense_bases:
    raise ValueError("dense_vertices needs the dense bases w_shp_sim.npy / w_exp_sim.npy "
                     "(3DDFA train.configs); this FaceModel has none")
  p = dewhiten(model, pw)
  _, _, a_shp, a_exp = parse_params(p)
  return pose_points(p, _shape(model.u_dense, model.w_shp_dense, model.w_exp_dense, a_shp, a_exp),
                     model.crop_size)


# -------------------------------------------------------------------------------------- pose

def rotation_from_params(p: jax.Array):
  """Raw (..., 62) -> (R (..., 3, 3) orthonormal, scale (...,)), as 3DDFA's P2sRt.

  Rows 1-2 of fR are normalised, row 3 is their cross product; scale is the mean of the two row norms.
  """
  fR = parse_params(p)[0]
  n1 = jnp.linalg.norm(fR[..., 0, :], axis=-1)
  n2 = jnp.linalg.norm(fR[..., 1, :], axis=-1)
  r1 = fR[..., 0, :] / n1[..., None]
  r2 = fR[..., 1, :] / n2[..., None]
  return jnp.stack([r1, r2, jnp.cross(r1, r2)], axis=-2), (n1 + n2) / 2


def matrix_to_angles(R: jax.Array) -> jax.Array:
  """Rotation (..., 3, 3) -> (..., 3) = (yaw, pitch, roll) in degrees (3DDFA's matrix2angle)."""
  x = jnp.arcsin(jnp.clip(R[..., 2, 0], -1.0, 1.0))
  c = jnp.cos(x)
  pitch = jnp.arctan2(R[..., 2, 1] / c, R[..., 2, 2] / c)
  roll = jnp.arctan2(R[..., 1, 0] / c, R[..., 0, 0] / c)
  return jnp.degrees(jnp.stack([x, pitch, roll], axis=-1))


def angles_to_matrix(angles: jax.Array) -> jax.Array:
  """(..., 3) = (yaw, pitch, roll) in degrees -> rotation (..., 3, 3); inverse of ``matrix_to_angles``."""
  yaw, pitch, roll = (jnp.radians(angles[..., i]) for i in range(3))
  one, zero = jnp.ones_like(yaw), jnp.zeros_like(yaw)

  def mat(rows):
    return jnp.stack([jnp.stack(r, axis=-1) for r in rows], axis=-2)
  cx, sx = jnp.cos(pitch), jnp.sin(pitch)
  cy, sy = jnp.cos(-yaw), jnp.sin(-yaw)
  cz, sz = jnp.cos(roll), jnp.sin(roll)
  rx = mat([[one, zero, zero], [zero, cx, -sx], [zero, sx, cx]])
  ry = mat([[cy, zero, sy], [zero, one, zero], [-sy, zero, cy]])
  rz = mat([[cz, -sz, zero], [sz, cz, zero], [zero, zero, one]])
  return rz @ ry @ rx


def pose_angles(model: FaceModel, pw: jax.Array) -> jax.Array:
  """Whitened (..., 62) -> (..., 3) = (yaw, pitch, roll) in degrees."""
  return matrix_to_angles(rotation_from_params(dewhiten(model, pw))[0])
