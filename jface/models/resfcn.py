"""PRNet's encoder-decoder (Feng et al. 2018, Sec. 3.2; the ``resfcn256`` network of the public PRNet code).

(B, S, S, 3) float images (PRNet: RGB / 255 in [0, 1]; S = 256 in the paper, any multiple of 32 here) ->
(B, S, S, 3) float32 UV position maps in crop pixels. With ``b = base_filters`` (16 in the paper):

* encoder: a 4 x 4 conv (b) at stride 1, then 10 residual blocks of widths 2b, 2b, 4b, 4b, 8b, 8b, 16b, 16b, 32b,
  32b, the first of each pair at stride 2: (B, S, S, 3) -> (B, S/32, S/32, 32b) (8 x 8 x 512 for the paper);
* decoder: 17 transposed 4 x 4 convs of widths 32b, 16b (/2), 16b, 16b, 8b (/2), 8b, 8b, 4b (/2), 4b, 4b,
  2b (/2), 2b, b (/2), b, 3, 3, 3 ("/2": stride 2, i.e. the map doubles) -> (B, S, S, 3).

Every conv and transposed conv is bias-free and followed by batch norm and a ReLU (TF-slim's ``arg_scope`` of the
reference), except inside a residual block (``ResBlock``) and the last layer, whose batch norm is followed by a
sigmoid. The output is ``sigmoid * pos_scale * S`` (PRNet's ``MaxPos = 1.1 * resolution``): the targets are crop
pixels, x, y in [0, S - 1] for the visible crop and z shifted to min 0 (``jface.methods.prnet.posmap``), so the
1.1 leaves 10 % of headroom above S (points rotated or jittered out of the crop, deep faces); values below 0 are
out of reach, as in PRNet (clip targets or mask them).

Layer semantics follow the TF reference, so its checkpoint could be converted one to one: "SAME" padding (for a
4 x 4 kernel at stride 1, 1 pixel before and 2 after), transposed convs that are TF's ``conv2d_transpose`` (the
gradient of a SAME conv; flax ``ConvTranspose(transpose_kernel=True)``, kernels laid out as TF's (4, 4, out, in)),
batch norm with TF-slim's defaults (``decay`` 0.999 -> ``momentum``, ``epsilon`` 1e-3, ``scale=True`` as set by
the reference's ``arg_scope``), Glorot-uniform kernels (TF-slim's ``xavier_initializer``). Not part of the module:
the reference's L2 regulariser (scale 2e-4 on every kernel, ``2e-4 * sum(w ** 2) / 2`` added to the loss).
By default the five stride-2 transposed convs are computed as sub-pixel convolutions (``SubpixelConvTranspose``:
same variables, same numbers up to float32 rounding; faster on XLA:CPU in a one-off timing, not yet a repo
benchmark); ``deconv="flax"`` uses
``nn.ConvTranspose`` throughout.

Parameters of the paper configuration (b = 16, any S): 13,353,618 (encoder 3,587,872, decoder 9,765,746) and
11,890 BN running averages: the ~13 M of the public model, and 3 x 4 x 13.35 M = 160 MB, the paper's "model
size", is what a checkpoint with Adam's two slots per weight takes (tests/test_resfcn.py derives it by hand). The
count scales about as ``width_mult ** 2``.
"""
from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jface.models import layers

# (width / base_filters, stride) of the residual blocks and of the transposed convs before the 3-channel ones.
ENCODER = ((2, 2), (2, 1), (4, 2), (4, 1), (8, 2), (8, 1), (16, 2), (16, 1), (32, 2), (32, 1))
DECODER = ((32, 1), (16, 2), (16, 1), (16, 1), (8, 2), (8, 1), (8, 1), (4, 2), (4, 1), (4, 1), (2, 2), (2, 1),
           (1, 2), (1, 1))
NUM_OUT_LAYERS = 3  # transposed convs with 3 output channels at the end (the last one has the sigmoid)
DOWNSAMPLE = 2 ** sum(s == 2 for _, s in ENCODER)  # 32
PAPER_BASE_FILTERS = 16

DECONV_IMPLS = ("subpixel", "flax")  # how the stride-2 transposed convs are computed

kernel_init = nn.initializers.xavier_uniform()  # TF-slim's default weights_initializer

# _PHASE_TAPS[p, a, t] = 1 when output phase p (out[2m + p]) reads input m - 1 + a through kernel tap t in TF's
# conv2d_transpose(k=4, s=2, SAME) (the input gradient of a SAME conv that pads 1 on each side):
# out[2m] = x[m - 1] w[3] + x[m] w[1], out[2m + 1] = x[m] w[2] + x[m + 1] w[0].
_PHASE_TAPS = np.zeros((2, 3, 4), np.float32)
_PHASE_TAPS[0, 0, 3] = _PHASE_TAPS[0, 1, 1] = _PHASE_TAPS[1, 1, 2] = _PHASE_TAPS[1, 2, 0] = 1.0


class SubpixelConvTranspose(nn.Module):
  """TF's ``conv2d_transpose(k=4, stride=2, padding="SAME")`` as a sub-pixel convolution: (B, H, W, C) ->
  (B, 2H, 2W, ``features``), the same numbers as ``nn.ConvTranspose(features, (4, 4), strides=(2, 2),
  padding="SAME", use_bias=False, transpose_kernel=True)`` and the same variables (params ``kernel`` of shape
  (4, 4, features, C), same init).

  The four output phases (even / odd row x even / odd column) are each a 2 x 2 correlation of the input, so one
  3 x 3 stride-1 conv with 4 * ``features`` outputs (each phase's taps placed in a 3 x 3 window, the rest zero)
  followed by a depth-to-space gives the map. That is 9 / 4 of the multiplies of the transposed conv, but XLA:CPU
  runs the input-dilated convolution of ``nn.ConvTranspose`` at stride 2 slower than this (a one-off timing).
  """
  features: int
  dtype: Any = None
  param_dtype: Any = jnp.float32
  kernel_init: Callable = kernel_init

  @nn.compact
  def __call__(self, x):
    cin = x.shape[-1]
    kernel = self.param("kernel", self.kernel_init, (4, 4, self.features, cin), self.param_dtype)
    dtype = self.dtype if self.dtype is not None else jnp.result_type(x, kernel)
    taps = jnp.asarray(_PHASE_TAPS, kernel.dtype)
    k3 = jnp.einsum("pat,qbu,tuoi->abipqo", taps, taps, kernel).reshape(3, 3, cin, 4 * self.features)
    y = jax.lax.conv_general_dilated(jnp.asarray(x, dtype), jnp.asarray(k3, dtype), (1, 1), ((1, 1), (1, 1)),
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
    b, h, w, _ = y.shape
    y = y.reshape(b, h, w, 2, 2, self.features).transpose(0, 1, 3, 2, 4, 5)
    return y.reshape(b, 2 * h, 2 * w, self.features)


class _Layer(nn.Module):
  """Fields shared by the modules below: computation dtype and batch-norm settings, conv / BN builders."""
  dtype: Any = jnp.float32
  bn_axis_name: str | None = None
  bn_momentum: float = 0.999
  bn_epsilon: float = 1e-3

  def _conv(self, features: int, kernel: int, stride: int = 1, *, name: str) -> nn.Conv:
    return nn.Conv(features, (kernel, kernel), strides=(stride, stride), padding="SAME", use_bias=False,
                   kernel_init=kernel_init, dtype=self.dtype, param_dtype=jnp.float32, name=name)

  def _bn(self, train: bool, *, name: str) -> nn.BatchNorm:
    return nn.BatchNorm(use_running_average=not train, momentum=self.bn_momentum, epsilon=self.bn_epsilon,
                        dtype=self.dtype, param_dtype=jnp.float32, axis_name=self.bn_axis_name, name=name)


class ResBlock(_Layer):
  """PRNet's residual block: (B, H, W, C) -> (B, H / stride, W / stride, ``features``).

  y = conv1x1(f / 2) -> BN -> ReLU -> conv kxk(f / 2, stride) -> BN -> ReLU -> conv1x1(f) (no BN, no ReLU);
  out = ReLU(BN(y + shortcut)) with shortcut = conv1x1(f, stride) (no BN) when the stride or the width changes,
  else x. The batch norm comes after the addition (unlike ResNet), so the shortcut is normalised too.
  """
  features: int = 32
  stride: int = 1
  kernel: int = 4

  @nn.compact
  def __call__(self, x, train: bool):
    if self.features % 2:
      raise ValueError(f"ResBlock needs an even width, got {self.features}")
    half = self.features // 2
    shortcut = x
    if self.stride != 1 or x.shape[-1] != self.features:
      shortcut = self._conv(self.features, 1, self.stride, name="shortcut")(x)
    y = nn.relu(self._bn(train, name="bn1")(self._conv(half, 1, name="conv1")(x)))
    y = nn.relu(self._bn(train, name="bn2")(self._conv(half, self.kernel, self.stride, name="conv2")(y)))
    y = self._conv(self.features, 1, name="conv3")(y)
    return nn.relu(self._bn(train, name="bn")(y + shortcut))


class Encoder(_Layer):
  """ResFCN's encoder: (B, S, S, C) -> (B, S/32, S/32, 32 * ``base_filters``) in ``dtype`` (stem + 10 blocks)."""
  base_filters: int = PAPER_BASE_FILTERS

  @nn.compact
  def __call__(self, x, train: bool):
    b = self.base_filters
    x = jnp.asarray(x, self.dtype)
    x = nn.relu(self._bn(train, name="stem_bn")(self._conv(b, 4, name="stem_conv")(x)))
    for i, (mult, stride) in enumerate(ENCODER):
      x = ResBlock(features=mult * b, stride=stride, dtype=self.dtype, bn_axis_name=self.bn_axis_name,
                   bn_momentum=self.bn_momentum, bn_epsilon=self.bn_epsilon, name=f"block{i + 1}")(x, train)
    return x


class Decoder(_Layer):
  """ResFCN's decoder: (B, S/32, S/32, C) -> (B, S, S, 3) float32 sigmoid in [0, 1] (17 transposed convs; the
  stride-2 ones as ``SubpixelConvTranspose`` when ``deconv="subpixel"``, same variables either way)."""
  base_filters: int = PAPER_BASE_FILTERS
  deconv: str = "subpixel"

  @nn.compact
  def __call__(self, x, train: bool):
    if self.deconv not in DECONV_IMPLS:
      raise ValueError(f"unknown deconv implementation {self.deconv!r}; expected one of {DECONV_IMPLS}")
    widths = [(mult * self.base_filters, s) for mult, s in DECODER] + [(3, 1)] * NUM_OUT_LAYERS
    for i, (features, stride) in enumerate(widths):
      if stride == 2 and self.deconv == "subpixel":
        layer = SubpixelConvTranspose(features, dtype=self.dtype, name=f"deconv{i + 1}")
      else:
        layer = nn.ConvTranspose(features, (4, 4), strides=(stride, stride), padding="SAME", use_bias=False,
                                 transpose_kernel=True, kernel_init=kernel_init, dtype=self.dtype,
                                 param_dtype=jnp.float32, name=f"deconv{i + 1}")
      x = layer(x)
      x = self._bn(train, name=f"bn{i + 1}")(x)
      x = nn.relu(x) if i + 1 < len(widths) else jax.nn.sigmoid(jnp.asarray(x, jnp.float32))
    return x


class ResFCN(_Layer):
  """PRNet's position-map network: (B, S, S, 3) images -> (B, S, S, 3) float32 position maps (module docstring).

  Attributes:
    width_mult: width relative to the paper (``base_filters = 16 * width_mult`` must be a positive integer:
      1.0 is the paper's network, 0.5 / 0.25 / 0.125 narrower variants for the CPU). Stem b, encoder output 32b.
    pos_scale: the sigmoid is multiplied by ``pos_scale * S`` (PRNet: 1.1), so outputs lie in [0, pos_scale * S].
    scale_output: False returns the sigmoid itself in [0, 1] (the network's raw output, e.g. for a loss on
      targets divided by ``pos_scale * S``).
    in_channels: if set, inputs with another channel count raise ValueError.
    dtype: computation dtype (params stay float32; the output is float32).
    bn_axis_name: mapped axis over which batch-norm statistics are averaged (e.g. "data" inside
      ``jax.shard_map``); None for per-call statistics. Ignored by ``init``.
    bn_momentum, bn_epsilon: TF-slim's batch-norm defaults (decay 0.999, epsilon 1e-3) as in the reference.
    deconv: "subpixel" (the 5 stride-2 transposed convs as ``SubpixelConvTranspose``, default: faster on XLA:CPU)
      or "flax" (``nn.ConvTranspose`` throughout). Same variables and the same numbers up to float32 rounding.
    coord_channels: append x and y coordinate channels in [-1, 1] to the input (CoordConv, Liu et al. 2018; not
      in the paper): the stem sees C + 2 channels.

  ``__call__(x, train)`` uses batch statistics and updates ``batch_stats`` when ``train`` (apply with
  ``mutable=["batch_stats"]``), the running averages otherwise. ``features(x, train)`` runs the encoder only:
  (B, S, S, 3) -> (B, S/32, S/32, 32b); apply it with ``method=ResFCN.features`` (variables of ``init``). The
  variables are ``{"encoder": ..., "decoder": ...}``.
  """
  width_mult: float = 1.0
  pos_scale: float = 1.1
  scale_output: bool = True
  in_channels: int | None = 3
  deconv: str = "subpixel"
  coord_channels: bool = False

  @property
  def base_filters(self) -> int:
    b = PAPER_BASE_FILTERS * self.width_mult
    if b < 1 or abs(b - round(b)) > 1e-9:
      raise ValueError(f"16 * width_mult must be a positive integer, got width_mult={self.width_mult}")
    return int(round(b))

  def setup(self):
    kw = dict(base_filters=self.base_filters, dtype=self.dtype, bn_axis_name=self.bn_axis_name,
              bn_momentum=self.bn_momentum, bn_epsilon=self.bn_epsilon)
    self.encoder = Encoder(**kw)
    self.decoder = Decoder(deconv=self.deconv, **kw)

  def _check(self, x):
    layers.check_input(x, self.in_channels, "ResFCN")
    h, w = x.shape[1:3]
    if h != w or h % DOWNSAMPLE:
      raise ValueError(f"ResFCN needs square inputs whose side is a multiple of {DOWNSAMPLE}, got {h}x{w}")

  def features(self, x, train: bool = False):
    """Encoder only: (B, S, S, C) -> (B, S/32, S/32, 32 * base_filters) in ``dtype``."""
    self._check(x)
    return self.encoder(layers.append_coordinates(jnp.asarray(x, self.dtype)) if self.coord_channels else x, train)

  def __call__(self, x, train: bool = False):
    """(B, S, S, C) -> (B, S, S, 3) float32 in [0, pos_scale * S] (in [0, 1] when not ``scale_output``)."""
    y = self.decoder(self.features(x, train), train)
    return y * (self.pos_scale * x.shape[1]) if self.scale_output else y


class TemplateResFCN(ResFCN):
  """ResFCN whose map is an affine transform of a template map plus the decoder's bounded residual (not in the
  paper; a CPU-scale option for small data, ``configs/prnet.py`` ``head="template"``):

      map(u, v) = center + t + A (template(u, v) - center) + residual(u, v)

  * ``A`` (3 x 3) = I + a[:9] and ``t`` = a[9:] * S come from a dense layer on the encoder's pooled features
    (``affine``, zero-initialised: A = I, t = 0 at the start);
  * residual = (sigmoid - 0.5) * 2 * ``residual_scale`` * S: the paper's decoder output, re-centred; the decoder's
    last batch-norm scale starts at 0 (``jface.methods.prnet.step.init_variables``), so the first map is the
    template itself.

  ``__call__(x, template, center, train)``: x (B, S, S, 3) images, template (S, S, 3) map in output units (e.g. the
  mean face's position map), center (3,) the point the affine map turns about (e.g. the template's mean over the
  face) -> (B, S, S, 3) float32. ``scale_output`` and ``pos_scale`` are not used.
  """
  residual_scale: float = 0.25

  def setup(self):
    super().setup()
    self.affine = nn.Dense(12, kernel_init=nn.initializers.zeros, dtype=jnp.float32)

  def __call__(self, x, template=None, center=None, train: bool = False):
    if template is None or center is None:
      raise ValueError("TemplateResFCN needs a template map (S, S, 3) and its center (3,)")
    feats = self.features(x, train)
    y = self.decoder(feats, train)
    size = x.shape[1]
    a = self.affine(jnp.mean(jnp.asarray(feats, jnp.float32), axis=(1, 2)))
    mat = jnp.eye(3, dtype=jnp.float32) + a[:, :9].reshape(-1, 3, 3)
    t = a[:, 9:] * size
    center = jnp.asarray(center, jnp.float32)
    rel = jnp.asarray(template, jnp.float32) - center
    base = jnp.einsum("bij,uvj->buvi", mat, rel) + (center + t)[:, None, None, :]
    return base + (y - 0.5) * (2 * self.residual_scale * size)
