"""PRNet's loss (Feng et al. 2018, Sec. 3.2, Eq. 1): the weight-masked error of the position map.

Eq. 1 is ``sum_{x,y} ||P(x, y) - P~(x, y)|| W(x, y)``: a weighted sum of per-pixel Euclidean *distances* (the text
around it speaks of MSE, which it replaces; the public PRNet code has no training loop). ``kind="distance"``
is Eq. 1 as printed, normalised by ``sum W`` so that it reads as the weighted mean distance in map pixels (that
is ``jface.core.uv.weighted_error``; the normalisation only rescales the gradient by a constant);
``kind="mse"`` squares the distances (``sum W ||P - P~||^2 / sum W``), the common reimplementation.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from jface.core import uv as uv_lib

KINDS = ("distance", "mse")


def position_map_loss(pred: jax.Array, target: jax.Array, weights: jax.Array, kind: str = "distance") -> jax.Array:
  """Weighted position-map error, averaged over the batch.

  Args:
    pred, target: (B, S, S, 3) maps.
    weights: (S, S) (or broadcastable (B, S, S)) loss weights, e.g. ``Layout.weights`` (16:4:3:0).
    kind: "distance" (Eq. 1: ``sum W ||d|| / sum W`` per map) or "mse" (``sum W ||d||^2 / sum W``).
  Returns a scalar (float32).
  """
  if kind == "distance":
    per_map = uv_lib.weighted_error(pred, target, weights)
  elif kind == "mse":
    d2 = jnp.sum(jnp.square(pred - target), axis=-1)
    w = jnp.broadcast_to(jnp.asarray(weights, d2.dtype), d2.shape)
    per_map = jnp.sum(d2 * w, axis=(-2, -1)) / jnp.sum(w, axis=(-2, -1))
  else:
    raise ValueError(f"unknown PRNet loss kind {kind!r}; choose one of {', '.join(KINDS)}")
  return jnp.mean(per_map)
