"""ResNet regressors (NHWC) in two layouts.

``layout="2dasl"`` is the network of 2DASL's released model (resnet_xgtu_4chls): the last stage keeps
stride 1 and the head is ``AvgPool(7, stride 2)`` (VALID) + flatten + Dense. For a 120 x 120 input the maps are
stem conv 7x7/2 -> 60, max-pool 3/2 -> 30, stage 1 -> 30, stage 2 (/2) -> 15, stage 3 (/2) -> 8, stage 4 (/1) -> 8,
avg-pool 7/2 -> 1 x 1, so the head sees 512 * expansion features (≈1.96 GMAC for ResNet-50, 4 channels).
``layout="standard"`` is torchvision's: stage 4 has stride 2 (8 -> 4) and global average pooling (≈1.27 GMAC).
In both, the stride of a bottleneck block sits on its 3x3 conv ("v1.5"), and a 1x1 conv + BN projection is used
when the stride or the width changes.

``conv1x1`` / ``bn`` choose how the 1 x 1 convolutions and the batch norms are computed: "dot" / "fused" (the
defaults, faster on XLA:CPU: docs/BENCHMARKS.md) or "conv" / "flax" (plain ``nn.Conv`` / ``nn.BatchNorm``).
Both give the same variables (checkpoints load either way) and the same numbers up to float32 rounding
(tests/test_models_fast.py). "fused" supports reverse-mode autodiff only; use ``bn="flax"`` for ``jax.jvp``.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import flax.linen as nn
import jax.numpy as jnp

from jface.models import layers

LAYOUTS = ("2dasl", "standard")


def _layer_factories(m: nn.Module, train: bool):
  """conv(features, kernel, stride=1, name=) and bn(name, zero_scale=False) builders with ``m``'s dtype,
  ``bn_axis_name``, ``conv1x1`` and ``bn`` implementation fields."""
  def conv(features, kernel, stride=1, *, name):
    return layers.conv(features, kernel, stride, dtype=m.dtype, impl=m.conv1x1, name=name)

  def bn(name, zero_scale=False):
    return layers.batch_norm(train, dtype=m.dtype, axis_name=m.bn_axis_name, zero_scale=zero_scale, impl=m.bn,
                             name=name)
  return conv, bn


class _Block(nn.Module):
  """The fields every residual block takes (as in ``ResNet``)."""
  features: int
  stride: int = 1
  dtype: Any = jnp.float32
  bn_axis_name: str | None = None
  zero_init_residual: bool = False
  conv1x1: str = "dot"
  bn: str = "fused"


class BasicBlock(_Block):
  """Two 3x3 convs (ResNet-18/34): (B, H, W, C) -> (B, ceil(H / stride), ceil(W / stride), ``features``).
  Fields as in ``ResNet`` (``conv1x1`` only affects the projection shortcut)."""
  expansion = 1

  @nn.compact
  def __call__(self, x, train: bool):
    conv, bn = _layer_factories(self, train)
    y = conv(self.features, 3, self.stride, name="conv1")(x)
    y = nn.relu(bn("bn1")(y))
    y = conv(self.features, 3, name="conv2")(y)
    y = bn("bn2", self.zero_init_residual)(y)
    if self.stride != 1 or x.shape[-1] != self.features:
      x = conv(self.features, 1, self.stride, name="proj_conv")(x)
      x = bn("proj_bn")(x)
    return nn.relu(x + y)


class Bottleneck(_Block):
  """1x1 -> 3x3 (stride) -> 1x1 (x4) bottleneck (ResNet-50+): (B, H, W, C) -> (B, ceil(H / stride), ceil(W / stride),
  4 * ``features``). Fields as in ``ResNet``."""
  expansion = 4

  @nn.compact
  def __call__(self, x, train: bool):
    conv, bn = _layer_factories(self, train)
    out = self.features * self.expansion
    y = conv(self.features, 1, name="conv1")(x)
    y = nn.relu(bn("bn1")(y))
    y = conv(self.features, 3, self.stride, name="conv2")(y)
    y = nn.relu(bn("bn2")(y))
    y = conv(out, 1, name="conv3")(y)
    y = bn("bn3", self.zero_init_residual)(y)
    if self.stride != 1 or x.shape[-1] != out:
      x = conv(out, 1, self.stride, name="proj_conv")(x)
      x = bn("proj_bn")(x)
    return nn.relu(x + y)


class ResNet(nn.Module):
  """ResNet regressor: (B, H, W, C) float images -> (B, num_outputs) float32.

  Attributes:
    stage_sizes: blocks per stage, e.g. (3, 4, 6, 3).
    block_cls: ``BasicBlock`` or ``Bottleneck``.
    num_outputs: regression outputs (62 whitened 3DMM params).
    layout: "2dasl" (last stage stride 1, AvgPool(7, 2) head; needs a final map >= 7; inputs of
      97..128 px give a 1 x 1 map, larger ones a bigger flattened feature) or "standard" (torchvision: last
      stage stride 2, global average pool).
    num_filters: width of the stem / first stage (64 for the real nets; small values for tests).
    in_channels: if set, inputs with another channel count raise ValueError (4 = RGB + landmark map).
    dtype: computation dtype (params stay float32; the output is cast to float32).
    bn_axis_name: mapped axis over which batch-norm statistics are averaged (e.g. "data" inside
      ``jax.shard_map``); None for per-call statistics.
    zero_init_residual: zero-init the scale of each block's last BN (each block starts as the identity).
    coord_channels: append two constant channels, x and y in [-1, 1] (CoordConv, Liu et al. 2018), to the
      input of the stem: with them a convolution + ReLU can turn "a landmark here" into "a landmark at x", which
      the average-pooled head can then read out. Off in the paper's network.
    conv1x1: "dot" (1 x 1 convs as ``layers.Conv1x1Dot`` GEMMs, default) or "conv" (``nn.Conv``).
    bn: "fused" (``layers.FusedBatchNorm``, hand-written VJP, default) or "flax" (``nn.BatchNorm``).
  """
  stage_sizes: Sequence[int]
  block_cls: Callable[..., nn.Module]
  num_outputs: int = 62
  layout: str = "2dasl"
  num_filters: int = 64
  in_channels: int | None = None
  dtype: Any = jnp.float32
  bn_axis_name: str | None = None
  zero_init_residual: bool = False
  coord_channels: bool = False
  conv1x1: str = "dot"
  bn: str = "fused"

  @nn.compact
  def __call__(self, x, train: bool = False):
    if self.layout not in LAYOUTS:
      raise ValueError(f"unknown ResNet layout {self.layout!r}; expected one of {LAYOUTS}")
    layers.check_input(x, self.in_channels, "ResNet")
    x = jnp.asarray(x, self.dtype)
    if self.coord_channels:
      x = layers.append_coordinates(x)
    conv, bn = _layer_factories(self, train)
    x = conv(self.num_filters, 7, 2, name="stem_conv")(x)
    x = bn("stem_bn")(x)
    x = layers.max_pool_3x3_s2(nn.relu(x))
    last = len(self.stage_sizes) - 1
    for i, n_blocks in enumerate(self.stage_sizes):
      # Stages after the first halve the map in their first block, except the last stage of "2dasl".
      stage_stride = 1 if i == 0 or (i == last and self.layout == "2dasl") else 2
      for j in range(n_blocks):
        stride = stage_stride if j == 0 else 1
        x = self.block_cls(self.num_filters * 2 ** i, stride, dtype=self.dtype, bn_axis_name=self.bn_axis_name,
                           zero_init_residual=self.zero_init_residual, conv1x1=self.conv1x1, bn=self.bn,
                           name=f"stage{i + 1}_block{j + 1}")(x, train)
    if self.layout == "2dasl":
      if x.shape[1] < 7 or x.shape[2] < 7:
        raise ValueError(f"layout '2dasl' needs a final feature map of at least 7x7 (AvgPool(7, stride 2)), "
                         f"got {x.shape[1]}x{x.shape[2]}; use larger inputs (e.g. 120x120) or layout='standard'")
      x = nn.avg_pool(x, window_shape=(7, 7), strides=(2, 2), padding="VALID")
      x = x.reshape(x.shape[0], -1)
    else:
      x = jnp.mean(x, axis=(1, 2))
    x = layers.head(self.num_outputs, self.dtype)(x)
    return jnp.asarray(x, jnp.float32)


def ResNet18(num_outputs: int = 62, layout: str = "2dasl", **kw) -> ResNet:
  """ResNet-18 (basic blocks, 2-2-2-2)."""
  return ResNet(stage_sizes=(2, 2, 2, 2), block_cls=BasicBlock, num_outputs=num_outputs, layout=layout, **kw)


def ResNet50(num_outputs: int = 62, layout: str = "2dasl", **kw) -> ResNet:
  """ResNet-50 (bottleneck blocks, 3-4-6-3); layout "2dasl" is 2DASL's regressor."""
  return ResNet(stage_sizes=(3, 4, 6, 3), block_cls=Bottleneck, num_outputs=num_outputs, layout=layout, **kw)
