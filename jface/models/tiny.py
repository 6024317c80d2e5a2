"""A tiny CNN regressor for smoke tests (a few ms per batch on CPU)."""
from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from jface.models import layers


class TinyCNN(nn.Module):
  """3 x (3x3/2 conv + BN + ReLU) -> global average pool -> Dense: (B, H, W, C) -> (B, num_outputs) float32.

  Same interface as the real regressors (``train`` flag, ``batch_stats``, ``bn_axis_name``, ``dtype``).
  """
  channels: Sequence[int] = (16, 32, 64)
  num_outputs: int = 62
  in_channels: int | None = None
  dtype: Any = jnp.float32
  bn_axis_name: str | None = None

  @nn.compact
  def __call__(self, x, train: bool = False):
    layers.check_input(x, self.in_channels, "TinyCNN")
    x = jnp.asarray(x, self.dtype)
    for i, ch in enumerate(self.channels):
      x = layers.conv(ch, 3, 2, dtype=self.dtype, name=f"conv{i + 1}")(x)
      x = layers.batch_norm(train, dtype=self.dtype, axis_name=self.bn_axis_name, name=f"bn{i + 1}")(x)
      x = nn.relu(x)
    x = jnp.mean(x, axis=(1, 2))
    return jnp.asarray(layers.head(self.num_outputs, self.dtype)(x), jnp.float32)
