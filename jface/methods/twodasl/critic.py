"""2DASL's self-critic pair (Sec. 3.2 / 3.5): an image ``Encoder`` and a fully connected ``Critic``.

The critic scores whether 3DMM coefficients are consistent with an image's latent code: real pairs are
(z of a 3D-annotated image, its ground-truth params), fake pairs (z of an in-the-wild image, predicted params).
It returns a logit; the paper's "softmax" over one output is ``sigmoid(logit)`` (losses, e.g.
``optax.sigmoid_binary_cross_entropy``, are written elsewhere from the logits).
"""
from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from jface.models import layers


class Encoder(nn.Module):
  """6 x (3x3 conv + ReLU + 2x2/2 max-pool), flattened: (B, H, W, C) -> (B, D) float32 latent z.

  With the default channels a 120 x 120 input goes 120 -> 60 -> 30 -> 15 -> 7 -> 3 -> 1 (VALID pooling), so
  z is 512-d (D = 512 * h * w for other sizes). No batch norm (the paper lists none, and it keeps the critic's
  real / fake batches independent).

  ``rgb_only`` (default True): the encoder sees only the first 3 channels, the face image, even when handed the
  regressor's 4-channel (RGB + landmark map) input — the paper feeds "2D images" to the encoder, and the critic
  should judge the coefficients against the appearance, not against the (possibly noisy) landmark map that the
  regressor already consumed. Set False to encode all channels.
  """
  channels: Sequence[int] = (32, 64, 128, 256, 256, 512)
  rgb_only: bool = True
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    layers.check_input(x, None, "Encoder")
    if self.rgb_only:
      x = x[..., :3]
    x = jnp.asarray(x, self.dtype)
    for i, ch in enumerate(self.channels):
      x = nn.Conv(ch, (3, 3), padding=((1, 1), (1, 1)), kernel_init=layers.conv_init, dtype=self.dtype,
                  param_dtype=jnp.float32, name=f"conv{i + 1}")(x)
      x = nn.max_pool(nn.relu(x), (2, 2), strides=(2, 2), padding="VALID")
    return jnp.asarray(x.reshape(x.shape[0], -1), jnp.float32)


class Critic(nn.Module):
  """MLP 512-1024-1024-1 on ``concat([z, params])``: (B, D), (B, 62) -> (B,) float32 logits.

  As in 2DASL's released discriminator: LeakyReLU(0.2) after each hidden layer and dropout (rate 0.4) after
  the 2nd and 3rd; dropout is active only when ``train`` (then pass ``rngs={'dropout': key}``). The released
  code's extra Linear(1, 1) before the sigmoid is an affine map of the logit and is folded into the last layer.
  """
  hidden: Sequence[int] = (512, 1024, 1024)
  dropout_rate: float = 0.4
  negative_slope: float = 0.2
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, z, params, train: bool = False):
    if z.ndim != 2 or params.ndim != 2 or z.shape[0] != params.shape[0]:
      raise ValueError(f"Critic expects z (B, D) and params (B, P), got {z.shape} and {params.shape}")
    x = jnp.concatenate([jnp.asarray(z, self.dtype), jnp.asarray(params, self.dtype)], axis=-1)
    for i, n in enumerate(self.hidden):
      x = nn.Dense(n, kernel_init=layers.dense_init, dtype=self.dtype, param_dtype=jnp.float32,
                   name=f"fc{i + 1}")(x)
      if i > 0 and self.dropout_rate > 0:
        x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
      x = nn.leaky_relu(x, self.negative_slope)
    x = nn.Dense(1, kernel_init=layers.dense_init, dtype=self.dtype, param_dtype=jnp.float32, name="out")(x)
    return jnp.asarray(x[:, 0], jnp.float32)
