"""A tiny CNN regressor for smoke tests (a few ms per batch on CPU)."""
from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from jface.models import layers


class TinyCNN(nn.Module):
  """len(channels) x (conv + BN + ReLU) -> pool -> Dense: (B, H, W, C) -> (B, num_outputs) float32.

  The first conv is ``stem_kernel`` x ``stem_kernel`` with stride ``stem_stride``, the others 3x3/2.
  ``pool="avg"``: global average pool; ``pool="flatten"``: keep the spatial layout (position matters when
  regressing pose and landmarks: with a 4/2/2 stem at 120 px the head sees 8 x 8 x C).
  Same interface as the real regressors (``train`` flag, ``batch_stats``, ``bn_axis_name``, ``dtype``); ``bn``
  is "flax" (default) or "fused" as in ``jface.models.resnet.ResNet`` (there are no 1 x 1 convs).
  """
  channels: Sequence[int] = (16, 32, 64)
  stem_kernel: int = 3
  stem_stride: int = 2
  pool: str = "avg"
  num_outputs: int = 62
  in_channels: int | None = None
  dtype: Any = jnp.float32
  bn_axis_name: str | None = None
  bn: str = "flax"

  @nn.compact
  def __call__(self, x, train: bool = False):
    layers.check_input(x, self.in_channels, "TinyCNN")
    x = jnp.asarray(x, self.dtype)
    if self.pool not in ("avg", "flatten"):
      raise ValueError(f"TinyCNN.pool must be 'avg' or 'flatten', got {self.pool!r}")
    for i, ch in enumerate(self.channels):
      k, st = (self.stem_kernel, self.stem_stride) if i == 0 else (3, 2)
      x = layers.conv(ch, k, st, dtype=self.dtype, name=f"conv{i + 1}")(x)
      x = layers.batch_norm(train, dtype=self.dtype, axis_name=self.bn_axis_name, impl=self.bn,
                            name=f"bn{i + 1}")(x)
      x = nn.relu(x)
    x = jnp.mean(x, axis=(1, 2)) if self.pool == "avg" else x.reshape(x.shape[0], -1)
    return jnp.asarray(layers.head(self.num_outputs, self.dtype)(x), jnp.float32)
