"""Shared building blocks: PyTorch-compatible conv / batch-norm / dense defaults, and their fast CPU variants.

All modules are NHWC (batch, height, width, channels). Convolutions use explicit symmetric padding
``k // 2`` (PyTorch semantics, not XLA ``SAME``, which pads asymmetrically at stride 2), kernels are
He-normal over fan-out (the ``normal(0, sqrt(2 / (k * k * out)))`` init of 3DDFA / 2DASL), batch norm uses
PyTorch's momentum 0.1 / epsilon 1e-5. Parameters are float32; ``dtype`` is the computation dtype.

Two drop-in variants with exactly the variables of the flax layers they replace (checkpoints load either way):

- ``Conv1x1Dot`` (``conv(..., impl="dot")``): a bias-free 1 x 1 convolution as a strided slice + one GEMM over
  channels. On XLA:CPU its backward pass is two plain GEMMs on the row-major activations instead of convolutions
  whose operands are transposed first (ResNet-50 train step -25..35 %, docs/BENCHMARKS.md).
- ``FusedBatchNorm`` (``batch_norm(..., impl="fused")``): batch norm whose training mode has a hand-written VJP,
  one reduction + one elementwise pass each way (+1.5..2.5 %). Reverse mode only (``jax.grad`` / ``vjp``; no
  ``jax.jvp`` / forward-mode Hessians: use ``impl="flax"`` for those).
"""
from __future__ import annotations

import functools
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any

conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
# PyTorch nn.Linear default: U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
dense_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")

CONV1X1_IMPLS = ("conv", "dot")   # how conv() computes 1 x 1 kernels
BN_IMPLS = ("flax", "fused")      # which module batch_norm() builds


def _check_impl(kind: str, impl: str, valid: tuple[str, ...]):
  if impl not in valid:
    raise ValueError(f"unknown {kind} implementation {impl!r}; expected one of {valid}")


# ------------------------------------------------------------------------------------------- 1 x 1 conv

class Conv1x1Dot(nn.Module):
  """Bias-free 1 x 1 convolution with stride ``strides`` (no padding) as a GEMM.

  (B, H, W, C) -> x[:, ::s, ::s] (B, H', W', C), H' = ceil(H / s) -> (B*H'*W', C) @ (C, features) ->
  (B, H', W', features): the same numbers as ``nn.Conv(features, (1, 1), strides=s, padding="VALID",
  use_bias=False)`` and the same variables (params ``kernel`` of shape (1, 1, C, features), same init).
  """
  features: int
  strides: int = 1
  dtype: Dtype | None = None
  param_dtype: Dtype = jnp.float32
  kernel_init: Callable = conv_init
  precision: Any = None

  @nn.compact
  def __call__(self, x):
    kernel = self.param("kernel", self.kernel_init, (1, 1, x.shape[-1], self.features), self.param_dtype)
    dtype = self.dtype if self.dtype is not None else jnp.result_type(x, kernel)
    x, kernel = jnp.asarray(x, dtype), jnp.asarray(kernel, dtype)
    if self.strides != 1:
      x = x[:, ::self.strides, ::self.strides, :]
    b, h, w, c = x.shape
    y = jnp.dot(x.reshape(b * h * w, c), kernel.reshape(c, self.features), precision=self.precision)
    return y.reshape(b, h, w, self.features)


def conv(features: int, kernel: int, stride: int = 1, *, groups: int = 1, dtype: Dtype = jnp.float32,
         impl: str = "conv", name: str | None = None) -> nn.Module:
  """Bias-free k x k conv with PyTorch padding k // 2.

  ``impl="dot"`` computes ungrouped 1 x 1 kernels with ``Conv1x1Dot`` (other kernels stay ``nn.Conv``);
  ``impl="conv"`` is ``nn.Conv`` throughout. Both have the same variables.
  """
  _check_impl("conv1x1", impl, CONV1X1_IMPLS)
  if impl == "dot" and kernel == 1 and groups == 1:
    return Conv1x1Dot(features, stride, dtype=dtype, param_dtype=jnp.float32, kernel_init=conv_init, name=name)
  pad = kernel // 2
  return nn.Conv(features, (kernel, kernel), strides=(stride, stride), padding=((pad, pad), (pad, pad)),
                 feature_group_count=groups, use_bias=False, kernel_init=conv_init, dtype=dtype,
                 param_dtype=jnp.float32, name=name)


# ------------------------------------------------------------------------------------------- batch norm

def _channel_sums(vs, axis_name):
  """The per-channel sums over all but the last axis of each (..., C) array in ``vs``, each (C,), summed over the
  mapped axis ``axis_name`` too (one collective) unless it is None."""
  sums = [jnp.sum(v, axis=tuple(range(v.ndim - 1))) for v in vs]
  return sums if axis_name is None else list(jax.lax.psum(jnp.stack(sums), axis_name))


def _count(x, axis_name):
  """Elements per channel of ``x`` (times the size of the mapped axis)."""
  n = x.size // x.shape[-1]
  return n if axis_name is None else n * jax.lax.axis_size(axis_name)


def _varying(a) -> frozenset:
  """The mapped axes ``a`` is typed as varying over (``jax.shard_map(check_vma=True)``); empty when untracked."""
  t = jax.typeof(a)
  mat = getattr(t, "manual_axis_type", None)
  return frozenset(mat.varying) if mat is not None else frozenset(getattr(t, "vma", ()))


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def _bn_train(x, scale, bias, epsilon, axis_name):
  """(x (..., C), scale (C,), bias (C,)) -> (y, batch mean (C,), biased batch var (C,)), all computed in x's dtype
  promoted to at least float32 (as flax)."""
  return _bn_train_fwd(x, scale, bias, epsilon, axis_name)[0]


def _bn_train_fwd(x, scale, bias, epsilon, axis_name):
  xf = x.astype(jnp.promote_types(x.dtype, jnp.float32))
  n = _count(x, axis_name)
  s, s2 = _channel_sums([xf, jnp.square(xf)], axis_name)
  mean = s / n
  var = jnp.maximum(s2 / n - jnp.square(mean), 0.0)  # as flax (use_fast_variance): E[x^2] - E[x]^2, clipped
  rstd = jax.lax.rsqrt(var + epsilon)
  a = scale * rstd
  y = xf * a + (bias - mean * a)
  return (y, mean, var), (x, mean, rstd, scale)


def _bn_train_bwd(epsilon, axis_name, res, cts):
  """dx = a gy - (a Sgy - Gm) / n - xhat (a Sgy.xhat - 2 Gv / rstd) / n with a = scale * rstd, where the sums S
  run over the global batch and Gm, Gv are the cotangents of the returned mean and variance summed over devices.

  Parameter cotangents as autodiff gives them: this device's own sums under ``vmap`` / ``pmap`` /
  ``shard_map(check_vma=False)`` (the caller averages gradients over the mapped axis); under
  ``shard_map(check_vma=True)`` the global sums for a replicated (unvarying) scale / bias.
  """
  del epsilon
  x, mean, rstd, scale = res
  gy, gmean, gvar = (jnp.asarray(c, mean.dtype) for c in cts)
  xhat = (x.astype(mean.dtype) - mean) * rstd
  dbias, dscale = _channel_sums([gy, gy * xhat], None)
  n = _count(x, axis_name)
  if axis_name is None:
    sg, sgx, gm, gv = dbias, dscale, gmean, gvar
  elif axis_name in _varying(gy):  # check_vma=True: the statistics are unvarying, their cotangents already totals
    (sg, sgx), gm, gv = _channel_sums([dbias, dscale], axis_name), gmean, gvar
    if axis_name not in _varying(scale):
      dbias, dscale = sg, sgx
  else:  # per-device cotangents (vmap / pmap / check_vma=False)
    sg, sgx, gm, gv = jax.lax.psum(jnp.stack([dbias, dscale, gmean, gvar]), axis_name)
  a = scale * rstd
  dx = a * gy - (a * sg - gm) / n - xhat * ((a * sgx - 2.0 * gv / rstd) / n)
  return dx.astype(x.dtype), dscale.astype(scale.dtype), dbias.astype(scale.dtype)


_bn_train.defvjp(_bn_train_fwd, _bn_train_bwd)


class FusedBatchNorm(nn.Module):
  """Batch norm over all but the last axis: a drop-in for ``nn.BatchNorm(axis=-1)`` with a hand-written VJP.

  (..., C) -> (..., C) in ``dtype``. Same variables and semantics as flax: params ``scale`` / ``bias`` (C,),
  batch_stats ``mean`` / ``var`` (C,) float32; training mode (``use_running_average=False``) normalises with the
  batch mean and biased variance (E[x^2] - E[x]^2 clipped at 0, at least float32), averaged over ``axis_name``
  when run under that mapped axis (ignored during ``init``), and updates ``ra = momentum * ra + (1 - momentum) *
  stat`` except during ``init``; eval mode uses the running averages and leaves them unchanged. Reverse-mode
  autodiff only (a ``jax.custom_vjp``).
  """
  use_running_average: bool | None = None
  momentum: float = 0.99
  epsilon: float = 1e-5
  dtype: Dtype | None = None
  param_dtype: Dtype = jnp.float32
  axis_name: str | None = None
  scale_init: Callable = nn.initializers.ones
  bias_init: Callable = nn.initializers.zeros

  @nn.compact
  def __call__(self, x, use_running_average: bool | None = None):
    use_running_average = nn.merge_param("use_running_average", self.use_running_average, use_running_average)
    c = x.shape[-1]
    ra_mean = self.variable("batch_stats", "mean", lambda s: jnp.zeros(s, jnp.float32), (c,))
    ra_var = self.variable("batch_stats", "var", lambda s: jnp.ones(s, jnp.float32), (c,))
    scale = self.param("scale", self.scale_init, (c,), self.param_dtype)
    bias = self.param("bias", self.bias_init, (c,), self.param_dtype)
    dtype = self.dtype if self.dtype is not None else jnp.result_type(x, scale, bias)
    if use_running_average:
      a = scale * jax.lax.rsqrt(ra_var.value + self.epsilon)
      xf = x.astype(jnp.promote_types(x.dtype, jnp.float32))
      return jnp.asarray(xf * a + (bias - ra_mean.value * a), dtype)
    init = self.is_initializing()
    y, mean, var = _bn_train(x, scale, bias, self.epsilon, None if init else self.axis_name)
    if not init:
      ra_mean.value = self.momentum * ra_mean.value + (1 - self.momentum) * mean
      ra_var.value = self.momentum * ra_var.value + (1 - self.momentum) * var
    return jnp.asarray(y, dtype)


def batch_norm(train: bool, *, dtype: Dtype = jnp.float32, axis_name: str | None = None,
               momentum: float = 0.9, zero_scale: bool = False, impl: str = "flax",
               name: str | None = None) -> nn.Module:
  """BatchNorm over all but the channel axis; batch statistics (and a running-average update) when ``train``.

  ``axis_name`` averages the statistics over a mapped axis (``jax.shard_map`` / ``vmap`` / ``pmap``), so each
  device normalises with the global-batch statistics. It is ignored during ``init``. ``impl="flax"`` builds
  ``nn.BatchNorm``, ``impl="fused"`` ``FusedBatchNorm`` (same variables and numbers up to float32 rounding).
  """
  _check_impl("batch norm", impl, BN_IMPLS)
  cls = FusedBatchNorm if impl == "fused" else nn.BatchNorm
  return cls(use_running_average=not train, momentum=momentum, epsilon=1e-5, dtype=dtype,
             param_dtype=jnp.float32, axis_name=axis_name,
             scale_init=nn.initializers.zeros if zero_scale else nn.initializers.ones, name=name)


# ------------------------------------------------------------------------------------------- misc

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


def max_pool_3x3_s2(x):
  """3 x 3 max pool at stride 2 over (B, H, W, C), padded by 1 with -inf (as PyTorch); the padding is an explicit
  ``jnp.pad`` before a VALID pool (the same numbers as ``nn.max_pool(padding=((1, 1), (1, 1)))``, and it exports
  to ONNX)."""
  x = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), constant_values=-jnp.inf)
  return nn.max_pool(x, window_shape=(3, 3), strides=(2, 2), padding="VALID")


def append_coordinates(x):
  """(B, H, W, C) -> (B, H, W, C + 2): appends x (column) and y (row) coordinate channels, each linear from -1
  (first pixel) to +1 (last pixel)."""
  b, h, w, _ = x.shape
  ys = jnp.linspace(-1.0, 1.0, h, dtype=x.dtype)
  xs = jnp.linspace(-1.0, 1.0, w, dtype=x.dtype)
  grid = jnp.stack(jnp.meshgrid(xs, ys, indexing="xy"), axis=-1)  # (H, W, 2): [..., 0] = x, [..., 1] = y
  return jnp.concatenate([x, jnp.broadcast_to(grid, (b, h, w, 2))], axis=-1)
