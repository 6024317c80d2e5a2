"""Flax linen networks of jface: the 3DMM regressors and a factory (2DASL's critic lives in jface.methods.twodasl).

Every regressor maps (B, H, W, C) float images (NHWC, 120 x 120; C = 4: RGB + landmark map, or 3; 2DASL and
3DDFA scale pixels as (x - 127.5) / 128 and draw the landmark map as +-1) to (B, num_outputs) float32 whitened
3DMM params. It takes ``train`` (batch statistics and a ``batch_stats`` update when True: apply with
``mutable=['batch_stats']``; running averages when False), keeps float32 params with ``dtype`` as the computation
dtype, and averages BN statistics over ``bn_axis_name`` when run under that mapped axis (``jax.shard_map`` /
``vmap``; ignored by ``init``). The ResNets compute 1 x 1 convolutions as GEMMs and batch norm with a hand-written
VJP by default (``conv1x1="dot"``, ``bn="fused"``; ``"conv"`` / ``"flax"`` for the plain flax layers): the
variables are the same either way, so checkpoints load into both.
"""
from __future__ import annotations

from typing import Any

import jax.numpy as jnp

from jface.models.mobilenet import MobileNetV1
from jface.models.resnet import BasicBlock, Bottleneck, ResNet, ResNet18, ResNet50
from jface.models.stats import count_macs, count_params
from jface.models.tiny import TinyCNN

__all__ = ["BasicBlock", "Bottleneck", "MobileNetV1", "REGRESSORS", "ResNet", "ResNet18",
           "ResNet50", "TinyCNN", "build_regressor", "count_macs", "count_params"]

_BUILDERS = {
    "resnet50": lambda **kw: ResNet50(layout="2dasl", **kw),
    "resnet50_standard": lambda **kw: ResNet50(layout="standard", **kw),
    "resnet18": lambda **kw: ResNet18(layout="2dasl", **kw),
    "resnet18_standard": lambda **kw: ResNet18(layout="standard", **kw),
    "mobilenet_v1_0.5": lambda **kw: MobileNetV1(width=0.5, **kw),
    "mobilenet_v1_1.0": lambda **kw: MobileNetV1(width=1.0, **kw),
    "tiny_cnn": lambda **kw: TinyCNN(**kw),
}
REGRESSORS = tuple(_BUILDERS)


def build_regressor(name: str, num_outputs: int = 62, in_channels: int = 4, dtype: Any = jnp.float32,
                    bn_axis_name: str | None = None, **kw):
  """A regressor by name (see ``REGRESSORS``): "resnet50" is 2DASL's (stride-1 last stage, AvgPool(7, 2)),
  "*_standard" the torchvision layout. ``in_channels`` is checked on every call; extra ``kw`` go to the module
  (e.g. ``num_filters=8`` for a narrow ResNet, ``zero_init_residual=True``, ``conv1x1="conv", bn="flax"`` for the
  plain flax layers, ``channels=`` for tiny_cnn).
  """
  if name not in _BUILDERS:
    raise ValueError(f"unknown regressor {name!r}; valid names: {', '.join(REGRESSORS)}")
  return _BUILDERS[name](num_outputs=num_outputs, in_channels=in_channels, dtype=dtype, bn_axis_name=bn_axis_name,
                         **kw)
