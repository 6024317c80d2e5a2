"""2DASL's network input: normalised RGB plus the facial landmark map (FLM) drawn from 2D landmarks.

The FLM (paper Sec. 3.1) is the 4th input channel: +1 at the pixels of the 68 landmarks of a 2D detector (at
test time) or of the labels / the model's own projection (in training), -1 elsewhere.
"""
from __future__ import annotations

from typing import Mapping

import jax
import jax.numpy as jnp

from jface.core.face_model import CROP_SIZE


def landmark_map(pts: jax.Array, size: int = CROP_SIZE, mask: jax.Array | None = None) -> jax.Array:
  """2DASL's facial landmark map (FLM): +1 at landmark pixels, -1 elsewhere.

  Args:
    pts: (..., K, 2) crop coordinates (1-based: the point (x, y) lights array pixel [round(y)-1, round(x)-1]).
    size: map side.
    mask: optional (..., K) bool/0-1; masked-out, non-finite and out-of-crop points are not drawn.
  Returns:
    (..., size, size) float32.
  """
  batch = pts.shape[:-2]
  k = pts.shape[-2]
  pts = pts.reshape((-1, k, 2))
  m = jnp.ones(pts.shape[:2], bool) if mask is None else jnp.asarray(mask, bool).reshape((-1, k))

  def one(p, mk):
    finite = jnp.all(jnp.isfinite(p), axis=-1)
    ij = jnp.round(jnp.where(finite[:, None], p, -10.0)).astype(jnp.int32) - 1
    c, r = ij[:, 0], ij[:, 1]
    ok = mk & finite
    # one-hot rows x one-hot columns (no scatter: exports to ONNX); out-of-crop points match no pixel
    grid = jnp.arange(size, dtype=jnp.int32)
    rows = jnp.where(ok[:, None] & (r[:, None] == grid), 1.0, 0.0)
    cols = jnp.where(c[:, None] == grid, 1.0, 0.0)
    return jnp.where(jnp.einsum("kr,kc->rc", rows, cols) > 0, 1.0, -1.0).astype(jnp.float32)

  return jax.vmap(one)(pts, m).reshape(batch + (size, size))


def normalise_image(image: jax.Array) -> jax.Array:
  """uint8 (..., H, W, 3) -> float32 ``(x - 127.5) / 128`` (3DDFA's normalisation), in [-0.996, 0.996]."""
  return (image.astype(jnp.float32) - 127.5) / 128.0


def network_input(batch: Mapping[str, jax.Array], use_flm: bool) -> jax.Array:
  """(B, S, S, 4|3) float32 regressor input: normalised ``image`` (+ the FLM of ``flm_landmarks`` (B, 68, 2) crop
  pixels, drawn where ``landmarks_mask`` (B, 68) is set)."""
  img = normalise_image(batch["image"])
  if not use_flm:
    return img
  flm = landmark_map(batch["flm_landmarks"], img.shape[1], batch["landmarks_mask"])
  return jnp.concatenate([img, flm[..., None]], axis=-1)
