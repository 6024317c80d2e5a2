"""Image <-> surface points for PGN's texture swapping (Liu et al. 2020, Sec. 3.3): sampling colours, splatting them.

``sample_image`` reads the colours of an image at projected surface points (the texture ``C1`` of Eq. 2, e.g. at
the UV texels of a face mesh); ``splat`` renders a dense set of coloured points back into an image by forward
bilinear splatting (a soft rasteriser: each point spreads its colour over its 4 neighbouring pixels), and
``composite`` lays the result over a background (``I_{1->2}`` over ``I_2``).

Conventions: crop coordinates as ``jface.core.geometry``: 1-based pixel centres, array pixel ``[r, c]`` has its
centre at ``(x, y) = (c + 1, r + 1)``, x right, y down. Images (B, H, W, C), points (B, P, 2) as ``(x, y)``.
Everything is jittable, float32 and differentiable w.r.t. points, values and weights.
"""
from __future__ import annotations

from typing import Tuple

import jax
import jax.numpy as jnp

from jface.core import uv as uv_lib


def sample_image(images: jax.Array, points: jax.Array) -> jax.Array:
  """Bilinear colours of images at crop-coordinate points (points outside clamp to the border).

  Args:
    images: (B, H, W, C) uint8 or float.
    points: (B, P, 2) 1-based crop coordinates ``(x, y)``: ``(c + 1, r + 1)`` returns ``images[:, r, c]``.
  Returns:
    (B, P, C) float32, differentiable w.r.t. points and (float) images.
  """
  images = jnp.asarray(images).astype(jnp.float32)
  return uv_lib.sample_map(images, jnp.asarray(points, jnp.float32) - 1.0)


def _splat_one(x: jax.Array, y: jax.Array, upd: jax.Array, height: int, width: int) -> jax.Array:
  """x, y (P,) 0-based coords, upd (P, K) -> (H * W, K) accumulated bilinear contributions."""
  x0, y0 = jnp.floor(x), jnp.floor(y)
  fx, fy = x - x0, y - y0
  xi, yi = x0.astype(jnp.int32), y0.astype(jnp.int32)
  acc = jnp.zeros((height * width, upd.shape[-1]), upd.dtype)
  for dx, dy, w in ((0, 0, (1 - fx) * (1 - fy)), (1, 0, fx * (1 - fy)),
                    (0, 1, (1 - fx) * fy), (1, 1, fx * fy)):
    cx, cy = xi + dx, yi + dy
    inside = (cx >= 0) & (cx < width) & (cy >= 0) & (cy < height)
    idx = jnp.where(inside, cy * width + cx, 0)
    acc = acc.at[idx].add(jnp.where(inside, w, 0.0)[:, None] * upd)
  return acc


def splat(points: jax.Array, values: jax.Array, weights: jax.Array, height: int, width: int,
          eps: float = 1e-6) -> Tuple[jax.Array, jax.Array]:
  """Forward bilinear splatting of weighted point values into an image (a soft rasteriser of dense point sets).

  Each point spreads ``weights[b, p] * values[b, p]`` and ``weights[b, p]`` over its 4 neighbouring pixels with
  bilinear weights (scatter-add); the parts that fall outside the image are dropped. For a point set about as
  dense as the pixels (or denser, e.g. the 256 x 256 UV texels of a face in a 120 x 120 crop) the accumulated
  weight is >= 1 over the face, sparser sets leave holes of coverage < 1.

  Args:
    points: (B, P, 2) 1-based crop coordinates ``(x, y)``.
    values: (B, P, C) point values (e.g. colours).
    weights: (B, P) >= 0 point weights (e.g. a visibility mask).
    height, width: static output size.
    eps: floor of the accumulated weight in the normalisation.
  Returns:
    image (B, H, W, C) float32: accumulated values / max(accumulated weight, eps) (0 where nothing landed);
    coverage (B, H, W) float32: accumulated weight clipped to [0, 1].
  """
  points = jnp.asarray(points, jnp.float32)
  values = jnp.asarray(values, jnp.float32)
  weights = jnp.asarray(weights, jnp.float32)
  upd = jnp.concatenate([values * weights[..., None], weights[..., None]], axis=-1)  # (B, P, C + 1)
  acc = jax.vmap(lambda p, u: _splat_one(p[:, 0] - 1.0, p[:, 1] - 1.0, u, height, width))(points, upd)
  acc = acc.reshape(acc.shape[0], height, width, -1)
  acc_w = acc[..., -1]
  image = acc[..., :-1] / jnp.maximum(acc_w, eps)[..., None]
  return image, jnp.clip(acc_w, 0.0, 1.0)


def composite(rendered: jax.Array, coverage: jax.Array, background: jax.Array) -> jax.Array:
  """``rendered * coverage + background * (1 - coverage)``: rendered, background (B, H, W, C), coverage
  (B, H, W) in [0, 1] -> (B, H, W, C) float32."""
  a = jnp.asarray(coverage, jnp.float32)[..., None]
  return jnp.asarray(rendered, jnp.float32) * a + jnp.asarray(background, jnp.float32) * (1.0 - a)
