"""Shared building blocks: PyTorch-compatible conv / batch-norm / dense defaults.

All modules are NHWC (batch, height, width, channels). Convolutions use explicit symmetric padding
``k // 2`` (PyTorch semantics, not XLA ``SAME``, which pads asymmetrically at stride 2), kernels are
He-normal over fan-out (the ``normal(0, sqrt(2 / (k * k * out)))`` init of 3DDFA / 2DASL), batch norm uses
PyTorch's momentum 0.1 / epsilon 1e-5. Parameters are float32; ``dtype`` is the computation dtype.
"""
from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

Dtype = Any

conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
# PyTorch nn.Linear default: U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
dense_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def conv(features: int, kernel: int, stride: int = 1, *, groups: int = 1, dtype: Dtype = jnp.float32,
         name: str | None = None) -> nn.Conv:
  """Bias-free k x k conv with PyTorch padding k // 2."""
  pad = kernel // 2
  return nn.Conv(features, (kernel, kernel), strides=(stride, stride), padding=((pad, pad), (pad, pad)),
                 feature_group_count=groups, use_bias=False, kernel_init=conv_init, dtype=dtype,
                 param_dtype=jnp.float32, name=name)


def batch_norm(train: bool, *, dtype: Dtype = jnp.float32, axis_name: str | None = None,
               momentum: float = 0.9, zero_scale: bool = False, name: str | None = None) -> nn.BatchNorm:
  """BatchNorm over all but the channel axis; batch statistics (and a running-average update) when ``train``.

  ``axis_name`` averages the statistics over a mapped axis (``jax.shard_map`` / ``vmap`` / ``pmap``), so each
  device normalises with the global-batch statistics. It is ignored during ``init``.
  """
  return nn.BatchNorm(use_running_average=not train, momentum=momentum, epsilon=1e-5, dtype=dtype,
                      param_dtype=jnp.float32, axis_name=axis_name,
                      scale_init=nn.initializers.zeros if zero_scale else nn.initializers.ones, name=name)


def head(num_outputs: int, dtype: Dtype, name: str = "head") -> nn.Dense:
  """The final regression layer (bias zero-initialised)."""
  return nn.Dense(num_outputs, kernel_init=dense_init, bias_init=nn.initializers.zeros, dtype=dtype,
                  param_dtype=jnp.float32, name=name)


def check_input(x, in_channels: int | None, name: str):
  """Raise a one-line ValueError unless ``x`` is (B, H, W, in_channels)."""
  if x.ndim != 4:
    raise ValueError(f"{name} expects (batch, height, width, channels) input, got shape {x.shape}")
  if in_channels is not None and x.shape[-1] != in_channels:
    raise ValueError(f"{name} was built for {in_channels} input channels, got shape {x.shape}")


max_pool_3x3_s2 = functools.partial(nn.max_pool, window_shape=(3, 3), strides=(2, 2),
                                    padding=((1, 1), (1, 1)))  # pads with -inf, as PyTorch


def append_coordinates(x):
  """(B, H, W, C) -> (B, H, W, C + 2): appends x (column) and y (row) coordinate channels, each linear from -1
  (first pixel) to +1 (last pixel)."""
  b, h, w, _ = x.shape
  ys = jnp.linspace(-1.0, 1.0, h, dtype=x.dtype)
  xs = jnp.linspace(-1.0, 1.0, w, dtype=x.dtype)
  grid = jnp.stack(jnp.meshgrid(xs, ys, indexing="xy"), axis=-1)  # (H, W, 2): [..., 0] = x, [..., 1] = y
  return jnp.concatenate([x, jnp.broadcast_to(grid, (b, h, w, 2))], axis=-1)
