"""PGN's photometric consistency (Liu et al. 2020, Sec. 3.4, Eq. 9): census transform and Hamming distance.

``Lp = sum Hamming|Census(I2) - Census(I_{1->2})| * M2d * W / sum M2d * W`` with a 7 x 7 census transform. The
census is the soft, differentiable one of UnFlow (Meister et al. 2018): per neighbour offset ``d`` of the patch
(centre excluded) ``t = diff / sqrt(0.81 + diff^2)``, ``diff = I(p + d) - I(p)``, and the Hamming distance of two
transforms is ``sum_d (t1 - t2)^2 / (0.1 + (t1 - t2)^2)``. The constants 0.81 and 0.1 assume grey levels on the
[0, 255] scale (UnFlow's); multiply [0, 1] images by 255 (``scale=255.``). A brightness offset leaves the census
unchanged; ``photometric_l1`` is the paper's "Lp-" ablation without census.

Images (B, H, W, 3) or grey (B, H, W), masks and weights (B, H, W); everything jittable, float32, differentiable.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

_BT601 = (0.299, 0.587, 0.114)


def to_gray(images: jax.Array) -> jax.Array:
  """(B, H, W, 3) RGB -> (B, H, W) float32 luminance (BT.601: 0.299 R + 0.587 G + 0.114 B), same scale."""
  images = jnp.asarray(images).astype(jnp.float32)
  return jnp.tensordot(images, jnp.asarray(_BT601, jnp.float32), axes=([-1], [0]))


def _gray(images: jax.Array, scale: float) -> jax.Array:
  images = jnp.asarray(images).astype(jnp.float32)
  return (to_gray(images) if images.ndim == 4 else images) * scale


def census_transform(gray: jax.Array, patch: int = 7) -> jax.Array:
  """Soft census transform (UnFlow): (B, H, W) grey on the [0, 255] scale -> (B, H, W, patch^2 - 1) float32.

  Channel ``k`` is the neighbour offset ``(dy, dx)`` in raster order over ``[-r, r]^2`` (``r = patch // 2``, dy
  slowest) with the centre skipped; its value ``t = diff / sqrt(0.81 + diff^2)`` with ``diff = I(y + dy, x + dx)
  - I(y, x)``, in (-1, 1). Pixels beyond the border repeat the border (edge padding). The hard census,
  ``sign(diff)``, is the limit for ``|diff| >> 0.9``.
  """
  if patch < 3 or patch % 2 == 0:
    raise ValueError(f"patch must be odd and >= 3, got {patch}")
  gray = jnp.asarray(gray).astype(jnp.float32)
  h, w = gray.shape[-2:]
  r = patch // 2
  padded = jnp.pad(gray, ((0, 0), (r, r), (r, r)), mode="edge")
  diffs = [padded[:, r + dy:r + dy + h, r + dx:r + dx + w] - gray
           for dy in range(-r, r + 1) for dx in range(-r, r + 1) if (dy, dx) != (0, 0)]
  diff = jnp.stack(diffs, axis=-1)
  return diff / jnp.sqrt(0.81 + jnp.square(diff))


def soft_hamming(t1: jax.Array, t2: jax.Array) -> jax.Array:
  """Soft Hamming distance of two census transforms (B, H, W, K) -> (B, H, W): ``sum_k d^2 / (0.1 + d^2)``,
  ``d = t1 - t2`` (each term in [0, 1), about 1 where the hard census bits differ)."""
  d2 = jnp.square(jnp.asarray(t1, jnp.float32) - jnp.asarray(t2, jnp.float32))
  return jnp.sum(d2 / (0.1 + d2), axis=-1)


def _masked_mean(per_pixel: jax.Array, mask: jax.Array, weights: jax.Array, eps: float) -> jax.Array:
  w = jnp.asarray(mask, jnp.float32) * jnp.asarray(weights, jnp.float32)
  w = jnp.broadcast_to(w, per_pixel.shape)
  return jnp.sum(per_pixel * w) / jnp.maximum(jnp.sum(w), eps)


def census_loss(img_a: jax.Array, img_b: jax.Array, mask: jax.Array, weights: jax.Array, patch: int = 7,
                scale: float = 1.0, eps: float = 1e-6) -> jax.Array:
  """Lp (Eq. 9) without ``lambda_p``: ``sum Hamming(Census(a), Census(b)) * M * W / max(sum M * W, eps)``.

  Args:
    img_a, img_b: (B, H, W, 3) RGB (converted with ``to_gray``) or (B, H, W) grey, e.g. ``I2`` and ``I_{1->2}``.
    mask: (B, H, W) visibility ``M2d`` (1 where the rendered face covers the pixel; soft values allowed).
    weights: (B, H, W) region weights ``W`` (the paper: 5 on eyes, nose, mouth, 1 on the rest of the face).
    patch: census patch side (the paper's 7).
    scale: multiplies the grey levels to reach [0, 255] (255. for [0, 1] images).
    eps: floor of the denominator (all-zero masks give 0).
  Returns:
    scalar float32: one ratio of sums over the whole batch (pixels of all images weigh alike), in soft Hamming
    units (0 .. patch^2 - 1).
  """
  t_a = census_transform(_gray(img_a, scale), patch)
  t_b = census_transform(_gray(img_b, scale), patch)
  return _masked_mean(soft_hamming(t_a, t_b), mask, weights, eps)


def photometric_l1(img_a: jax.Array, img_b: jax.Array, mask: jax.Array, weights: jax.Array,
                   eps: float = 1e-6) -> jax.Array:
  """The "Lp-" ablation (Eq. 9 without census): per-pixel mean absolute difference over the channels of
  img_a, img_b (B, H, W, C) (or grey (B, H, W)), normalised as ``census_loss``: ``sum |a - b| * M * W /
  max(sum M * W, eps)`` over the whole batch. Scalar float32 in the images' scale."""
  a = jnp.asarray(img_a).astype(jnp.float32)
  b = jnp.asarray(img_b).astype(jnp.float32)
  d = jnp.abs(a - b)
  if d.ndim == 4:
    d = jnp.mean(d, axis=-1)
  return _masked_mean(d, mask, weights, eps)
