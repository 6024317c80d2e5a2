"""Crop <-> original-image coordinates through a roi box, for numpy and JAX arrays alike.

A crop is the square ``roi_box = (sx, sy, ex, ey)`` of the original image resampled to ``crop_size`` pixels
(``CROP_SIZE``, 120, by default). Points are (..., K, 2|3) with x, y in pixels; a z column is scaled by the mean
of the two axis scales. roi_box is (4,) or (..., 4), broadcast against the points' leading dimensions.
numpy inputs are computed in float64 (the benchmark protocol's precision); JAX arrays (and tracers) in float32.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jface.core.face_model import CROP_SIZE


def _xp(*arrays):
  return jnp if any(isinstance(a, jax.Array) for a in arrays) else np


def _scales(roi_box, crop_size: int, xp):
  roi_box = xp.asarray(roi_box, np.float64 if xp is np else jnp.float32)
  sx, sy, ex, ey = (roi_box[..., i][..., None] for i in range(4))
  return sx, sy, (ex - sx) / crop_size, (ey - sy) / crop_size


def crop_to_image(pts, roi_box, crop_size: int = CROP_SIZE):
  """Crop coords (..., K, 2|3) -> original-image coords (same shape)."""
  xp = _xp(pts, roi_box)
  pts = xp.asarray(pts, np.float64) if xp is np else pts
  sx, sy, kx, ky = _scales(roi_box, crop_size, xp)
  out = [pts[..., 0] * kx + sx, pts[..., 1] * ky + sy]
  if pts.shape[-1] == 3:
    out.append(pts[..., 2] * (kx + ky) / 2)
  return xp.stack(out, axis=-1)


def image_to_crop(pts, roi_box, crop_size: int = CROP_SIZE):
  """Inverse of ``crop_to_image``."""
  xp = _xp(pts, roi_box)
  pts = xp.asarray(pts, np.float64) if xp is np else pts
  sx, sy, kx, ky = _scales(roi_box, crop_size, xp)
  out = [(pts[..., 0] - sx) / kx, (pts[..., 1] - sy) / ky]
  if pts.shape[-1] == 3:
    out.append(pts[..., 2] * 2 / (kx + ky))
  return xp.stack(out, axis=-1)
