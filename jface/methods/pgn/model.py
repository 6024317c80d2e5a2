"""PGN's network (Liu et al. 2020, Sec. 3.1-3.2 and "Training Details"): a shared encoder, the pose guidance
network (PGN) and the identity / expression regressors.

(B, S, S, 3) float images in [0, 1] ->

* ``features``: PRNet's ResFCN encoder (``jface.models.resfcn.Encoder``): (B, S/32, S/32, 32b);
* ``landmarks``: the PGN branch, the 3D landmarks X_UV in map units (0-based pixels of the S x S input, z in the
  same pixels; ``jface.methods.prnet.targets``):
  - ``landmark_head="uv"`` (the paper's): ResFCN's decoder regresses a UV position map (B, S, S, 3) (sigmoid x
    1.1 S, as PRNet's) read bilinearly at the 68 keypoint pixels of the UV layout -> (B, 68, 3);
  - ``landmark_head="fc"`` (the paper's cheaper option): global average pool + two dense layers -> 68 x 3,
    sigmoid x 1.1 S -> (B, 68, 3) directly;
* ``coefficients``: the identity and expression regressors, each "one convolutional layer, one average pooling
  layer and three fully-connected layers" on the encoder output (``ParamHead``); the identity head reads the
  encoder features averaged over the K frames of one person (identity fusion, Sec. 3.3), the expression head each
  frame's own. Outputs are *whitened* coefficients (3DDFA convention: ``p = pw * std + mean``), 0 = the mean
  face; the last layers start at zero, so an untrained head gives the mean face.

Batch norm lives in the encoder and decoder only (TF-slim settings of ResFCN); the heads have none, so stages 2
and 3 run the frozen encoder in eval mode and train the heads alone.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jface.core import uv as uv_lib
from jface.models import resfcn

LANDMARK_HEADS = ("uv", "fc")


class ParamHead(nn.Module):
  """conv 3 x 3 (``conv_features``) + ReLU -> global average pool -> dense ``hidden`` (ReLU) x 2 -> dense ``out``
  (zero-initialised): (B, h, w, C) -> (B, out) float32."""
  out: int
  conv_features: int = 128
  hidden: tuple[int, int] = (256, 128)
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, feats):
    x = nn.Conv(self.conv_features, (3, 3), padding="SAME", dtype=self.dtype, param_dtype=jnp.float32,
                name="conv")(feats)
    x = jnp.mean(nn.relu(x), axis=(1, 2))
    for i, width in enumerate(self.hidden):
      x = nn.relu(nn.Dense(width, dtype=self.dtype, param_dtype=jnp.float32, name=f"fc{i + 1}")(x))
    out = nn.Dense(self.out, kernel_init=nn.initializers.zeros, dtype=jnp.float32, name=f"fc{len(self.hidden) + 1}")
    return out(jnp.asarray(x, jnp.float32))


def fuse_groups(feats: jax.Array, group_size: int) -> jax.Array:
  """Identity fusion (Sec. 3.3): (B, ...) features of B = G x K frames (K consecutive frames per person) ->
  the mean over each person's K frames, repeated for each frame (B, ...)."""
  if group_size <= 1:
    return feats
  b = feats.shape[0]
  if b % group_size:
    raise ValueError(f"fuse_groups: batch {b} is not a whole number of groups of {group_size}")
  g = feats.reshape((b // group_size, group_size) + feats.shape[1:])
  return jnp.repeat(jnp.mean(g, axis=1), group_size, axis=0)


class PGNNet(resfcn._Layer):
  """Shared encoder + PGN branch + identity / expression heads (module docstring).

  Attributes:
    kpt_px: (68, 2) UV pixels of the landmarks at map size S (``Layout.kpt_px``; ``landmark_head="uv"``).
    n_shp, n_exp: coefficients of the face model (40, 10 for 3DDFA's BFM).
    width_mult: ResFCN width (``base_filters = 16 * width_mult``).
    landmark_head: "uv" or "fc".
    pos_scale: output range factor of the landmarks (PRNet's 1.1).
    head_features: conv width of the identity / expression heads.
  """
  kpt_px: Any = None
  n_shp: int = 40
  n_exp: int = 10
  width_mult: float = 1.0
  landmark_head: str = "uv"
  pos_scale: float = 1.1
  head_features: int = 128

  def setup(self):
    if self.landmark_head not in LANDMARK_HEADS:
      raise ValueError(f"unknown landmark_head {self.landmark_head!r}; choose one of {', '.join(LANDMARK_HEADS)}")
    b = resfcn.PAPER_BASE_FILTERS * self.width_mult
    if b < 1 or abs(b - round(b)) > 1e-9:
      raise ValueError(f"16 * width_mult must be a positive integer, got width_mult={self.width_mult}")
    kw = dict(base_filters=int(round(b)), dtype=self.dtype, bn_axis_name=self.bn_axis_name,
              bn_momentum=self.bn_momentum, bn_epsilon=self.bn_epsilon)
    self.encoder = resfcn.Encoder(**kw)
    if self.landmark_head == "uv":
      self.decoder = resfcn.Decoder(**kw)
    else:
      self.lm_fc1 = nn.Dense(512, dtype=self.dtype, param_dtype=jnp.float32)
      self.lm_fc2 = nn.Dense(68 * 3, dtype=jnp.float32, param_dtype=jnp.float32)
    self.id_head = ParamHead(self.n_shp, conv_features=self.head_features, dtype=self.dtype)
    self.exp_head = ParamHead(self.n_exp, conv_features=self.head_features, dtype=self.dtype)

  def features(self, x, train: bool = False):
    """(B, S, S, 3) -> encoder features (B, S/32, S/32, 32b)."""
    h, w = x.shape[1:3]
    if h != w or h % resfcn.DOWNSAMPLE:
      raise ValueError(f"PGN needs square inputs whose side is a multiple of {resfcn.DOWNSAMPLE}, got {h}x{w}")
    return self.encoder(x, train)

  def landmarks(self, feats, size: int, train: bool = False):
    """Encoder features -> X_UV (B, 68, 3) in map units of an S x S input (``size`` = S)."""
    scale = self.pos_scale * size
    if self.landmark_head == "uv":
      maps = self.decoder(feats, train) * scale
      return uv_lib.sample_map(maps, jnp.asarray(np.asarray(self.kpt_px, np.float32)))
    x = nn.relu(self.lm_fc1(jnp.mean(feats, axis=(1, 2))))
    return jax.nn.sigmoid(self.lm_fc2(x)).reshape(-1, 68, 3) * scale

  def coefficients(self, feats, group_size: int = 1):
    """Encoder features (B, h, w, C) -> (whitened identity (B, n_shp), whitened expression (B, n_exp)); the
    identity head reads the features averaged over each group of ``group_size`` consecutive frames."""
    f = jnp.asarray(feats, jnp.float32)
    return self.id_head(fuse_groups(f, group_size)), self.exp_head(f)

  def __call__(self, x, train: bool = False):
    """Everything for one frame per person: (X_UV (B, 68, 3), identity (B, n_shp), expression (B, n_exp))."""
    feats = self.features(x, train)
    return (self.landmarks(feats, x.shape[1], train),) + self.coefficients(feats)
