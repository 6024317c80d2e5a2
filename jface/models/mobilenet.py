"""MobileNet-V1 regressor in 3DDFA's layout (NHWC).

conv 3x3/2 (32w) -> 13 depthwise-separable blocks (3x3 depthwise + BN + ReLU, 1x1 pointwise + BN + ReLU) with
widths 64, 128/2, 128, 256/2, 256, 512/2, 5 x 512, 1024/2, 1024 (times ``width``) -> global average pool ->
Dense. For a 120 x 120 input the maps are 60, 60, 30, 30, 15, 15, 8, 8 x 5, 4, 4.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from jface.models import layers

# (output channels at width 1, stride) of the 13 depthwise-separable blocks.
BLOCKS = ((64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2), (512, 1), (512, 1), (512, 1), (512, 1),
          (512, 1), (1024, 2), (1024, 1))


class MobileNetV1(nn.Module):
  """MobileNet-V1 regressor: (B, H, W, C) float images -> (B, num_outputs) float32.

  Attributes: ``width`` multiplies every channel count (3DDFA uses 1.0 and 0.5, int-truncated); the others are
  as in ``jface.models.resnet.ResNet``, except that ``conv1x1`` (the pointwise convs) and ``bn`` default to the
  plain "conv" / "flax" here (the fast variants are not measured on this network).
  """
  width: float = 1.0
  num_outputs: int = 62
  in_channels: int | None = None
  dtype: Any = jnp.float32
  bn_axis_name: str | None = None
  conv1x1: str = "conv"
  bn: str = "flax"

  @nn.compact
  def __call__(self, x, train: bool = False):
    layers.check_input(x, self.in_channels, "MobileNetV1")
    bn = lambda name: layers.batch_norm(train, dtype=self.dtype, axis_name=self.bn_axis_name, impl=self.bn,
                                        name=name)
    x = jnp.asarray(x, self.dtype)
    x = nn.relu(bn("stem_bn")(layers.conv(int(32 * self.width), 3, 2, dtype=self.dtype, name="stem_conv")(x)))
    for i, (ch, stride) in enumerate(BLOCKS):
      c_in = x.shape[-1]
      x = layers.conv(c_in, 3, stride, groups=c_in, dtype=self.dtype, name=f"dw{i + 1}_conv")(x)
      x = nn.relu(bn(f"dw{i + 1}_bn")(x))
      x = layers.conv(int(ch * self.width), 1, dtype=self.dtype, impl=self.conv1x1, name=f"pw{i + 1}_conv")(x)
      x = nn.relu(bn(f"pw{i + 1}_bn")(x))
    x = jnp.mean(x, axis=(1, 2))
    x = layers.head(self.num_outputs, self.dtype)(x)
    return jnp.asarray(x, jnp.float32)
