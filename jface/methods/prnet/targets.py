"""Ground-truth position maps inside the jitted step, and the way back from a map to crop coordinates.

The network sees the ``CROP_SIZE`` (120) crop resized to S x S (``network_input``: ``jax.image.resize``,
bilinear, half-pixel centres); its map stores, per UV pixel, the 3D point in *map units*: 0-based pixel
coordinates of that S x S input, z in the same pixels (PRNet's convention, ``posmap.py``). With
``k = S / crop`` a crop point (1-based, ``jface.core.geometry``) maps as

  ``x_m = k (x - 1/2) - 1/2``, ``y_m = k (y - 1/2) - 1/2`` (where ``jax.image.resize`` puts it), ``z_m = k z - z0``,

``z0`` = the minimum of ``k z`` over the vertices the layout holds (``Layout.inside``; all of them for the BFM),
so the map's z starts at 0 as face3d/PRNet's (the sigmoid output cannot go below 0). ``posmap.position_map`` with
the crop box ``(sx, sy, ex, ey)``, ``sx = sy = 1/2 + 1/(2k)``, ``ex = ey = sx + (S - 1) / k`` gives the same
map (tested). Back from the map: ``x = (x_m + 1/2) / k + 1/2``, likewise y, ``z = z_m / k``: crop z up to an
offset (the z of the deepest held vertex is 0), which the evaluation's z alignment (min z = 0) ignores.

Targets are built on the fly from the example's (augmented) params: dense vertices
(``geometry.dense_vertices``), to map units, then the layout's fixed rasterisation pattern
(``uv.apply_uv_sampling``): sums of three vertices per pixel, batched, no mesh rendering in the input pipeline.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from jface.core import geometry
from jface.core import uv as uv_lib
from jface.core.face_model import FaceModel


def network_input(images: jax.Array, size: int) -> jax.Array:
  """(B, H, W, 3) uint8 crops -> (B, size, size, 3) float32 in [0, 1] (PRNet: RGB / 255), bilinear resize
  (antialiased when shrinking)."""
  x = jnp.asarray(images, jnp.float32) / 255.0
  if x.shape[1:3] != (size, size):
    x = jax.image.resize(x, x.shape[:1] + (size, size, x.shape[-1]), method="bilinear")
  return x


def crop_to_map(points: jax.Array, size: int, crop_size: int) -> jax.Array:
  """(..., 3) crop coordinates -> map units of a ``size`` x ``size`` input (no z shift)."""
  k = size / crop_size
  return jnp.concatenate([k * (points[..., :2] - 0.5) - 0.5, k * points[..., 2:]], axis=-1)


def map_to_crop(points: jax.Array, size: int, crop_size: int) -> jax.Array:
  """Inverse of ``crop_to_map``: (..., 3) map units -> crop coordinates (1-based)."""
  k = size / crop_size
  return jnp.concatenate([(points[..., :2] + 0.5) / k + 0.5, points[..., 2:] / k], axis=-1)


def vertex_targets(vertices: jax.Array, layout, crop_size: int) -> jax.Array:
  """(..., N, 3) dense crop vertices -> (..., N, 3) map units with z shifted to min 0 over ``layout.inside``."""
  m = crop_to_map(vertices, layout.size, crop_size)
  z0 = jnp.min(jnp.where(jnp.asarray(layout.inside), m[..., 2], jnp.inf), axis=-1)
  return m.at[..., 2].add(-z0[..., None])


def target_maps(face: FaceModel, pw: jax.Array, layout) -> jax.Array:
  """Whitened params (B, 62) -> (B, S, S, 3) ground-truth position maps in map units (0 outside the layout's
  mask). ``face`` needs dense bases."""
  v = geometry.dense_vertices(face, pw)
  return uv_lib.apply_uv_sampling(layout.sampling, vertex_targets(v, layout, face.crop_size))
