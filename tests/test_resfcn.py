"""jface.models.resfcn: PRNet's encoder-decoder. Parameter count of the paper configuration against a count derived
by hand from the layer list, shapes at S = 256 (abstractly, via eval_shape), a real forward in train / eval mode at
a small size, TF-SAME transposed-conv semantics, and finite non-zero gradients."""
from __future__ import annotations

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from jface.models import count_params
from jface.models import resfcn as R

# Small whole-network programs are compiled without LLVM optimisations (as tests/test_models_fast.py): faster to
# compile, the same computation.
FAST_COMPILE = {"xla_backend_optimization_level": 0}


def key(i: int = 0):
  return jax.random.key(i, impl="rbg")


def fast_jit(f, *args):
  return jax.jit(f).lower(*args).compile(FAST_COMPILE)(*args)


def abstract_variables(model, size: int, batch: int = 1):
  x = jax.ShapeDtypeStruct((batch, size, size, 3), jnp.float32)
  return x, jax.eval_shape(lambda x: model.init(key(), x), x)


def numpy_variables(model, size: int, seed: int = 0):
  """Variables as ``init`` draws them (Glorot-uniform kernels, BN scale 1 / bias 0, running mean 0 / var 1), made
  with numpy from the abstract tree: compiling ``init`` would take longer than the whole test otherwise."""
  rng = np.random.default_rng(seed)

  def fill(path, a):
    name = jax.tree_util.keystr(path[-1:])
    if "kernel" in name:
      k = a.shape[0] * a.shape[1]
      lim = np.sqrt(6.0 / (k * a.shape[2] + k * a.shape[3]))
      return jnp.asarray(rng.uniform(-lim, lim, a.shape), jnp.float32)
    return jnp.full(a.shape, 1.0 if ("scale" in name or "var" in name) else 0.0, jnp.float32)
  return jax.tree_util.tree_map_with_path(fill, abstract_variables(model, size)[1])


# ------------------------------------------------------------------------------------------- paper configuration

def hand_count(b: int = 16) -> tuple[int, int]:
  """(trainable params, BN running averages) of PRNet's resfcn256 with base width b, from the layer list:
  bias-free kernels k*k*cin*cout, and per batch norm a scale and a bias (+ mean and variance in batch_stats)."""
  params = stats = 0

  def conv(k, cin, cout):
    nonlocal params
    params += k * k * cin * cout

  def bn(c):
    nonlocal params, stats
    params += 2 * c
    stats += 2 * c

  conv(4, 3, b)  # stem 4x4 conv + BN
  bn(b)
  cin = b
  for cout, stride in [(2 * b, 2), (2 * b, 1), (4 * b, 2), (4 * b, 1), (8 * b, 2), (8 * b, 1), (16 * b, 2),
                       (16 * b, 1), (32 * b, 2), (32 * b, 1)]:
    half = cout // 2
    if stride != 1 or cin != cout:
      conv(1, cin, cout)  # shortcut: 1x1, no BN
    conv(1, cin, half)
    bn(half)
    conv(4, half, half)
    bn(half)
    conv(1, half, cout)  # no BN before the addition
    bn(cout)  # after the addition
    cin = cout
  for cout in [32 * b, 16 * b, 16 * b, 16 * b, 8 * b, 8 * b, 8 * b, 4 * b, 4 * b, 4 * b, 2 * b, 2 * b, b, b, 3, 3, 3]:
    conv(4, cin, cout)  # 17 transposed 4x4 convs, each + BN
    bn(cout)
    cin = cout
  return params, stats


def test_paper_parameter_count():
  params, stats = hand_count(16)
  assert (params, stats) == (13_353_618, 11_890)  # the public model: ~13 M
  _, v = abstract_variables(R.ResFCN(), 256)
  assert count_params(v["params"]) == params
  assert count_params(v["batch_stats"]) == stats
  # narrower variants: the same layer list with b = 16 * width_mult
  _, v = abstract_variables(R.ResFCN(width_mult=0.25), 64)
  assert count_params(v["params"]) == hand_count(4)[0]
  # encoder: 1 + 10 * 3 convs (+ 5 shortcuts), decoder: 17 transposed convs
  kernels = [p for p, _ in jax.tree_util.tree_flatten_with_path(v["params"])[0] if "kernel" in str(p[-1])]
  assert len(kernels) == 1 + 30 + 5 + 17


def test_shapes_at_paper_size():
  model = R.ResFCN()
  x, v = abstract_variables(model, 256, batch=2)
  out = jax.eval_shape(lambda v, x: model.apply(v, x), v, x)
  chex.assert_shape(out, (2, 256, 256, 3))
  chex.assert_type(out, jnp.float32)
  feats = jax.eval_shape(lambda v, x: model.apply(v, x, method=R.ResFCN.features), v, x)
  chex.assert_shape(feats, (2, 8, 8, 512))
  out, upd = jax.eval_shape(lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"]), v, x)
  chex.assert_shape(out, (2, 256, 256, 3))
  assert jax.tree_util.tree_structure(upd["batch_stats"]) == jax.tree_util.tree_structure(v["batch_stats"])


@pytest.mark.parametrize("size,width", [(64, 0.25), (96, 0.5), (128, 0.125)])
def test_encoder_reaches_s_over_32(size, width):
  model = R.ResFCN(width_mult=width)
  x, v = abstract_variables(model, size)
  feats = jax.eval_shape(lambda v, x: model.apply(v, x, method=R.ResFCN.features), v, x)
  chex.assert_shape(feats, (1, size // 32, size // 32, int(512 * width)))
  chex.assert_shape(jax.eval_shape(lambda v, x: model.apply(v, x), v, x), (1, size, size, 3))


def test_rejects_bad_inputs():
  with pytest.raises(ValueError, match="multiple of 32"):
    abstract_variables(R.ResFCN(width_mult=0.125), 48)
  with pytest.raises(ValueError, match="positive integer"):
    abstract_variables(R.ResFCN(width_mult=0.1), 32)
  x = jax.ShapeDtypeStruct((1, 32, 32, 4), jnp.float32)
  with pytest.raises(ValueError, match="input channels"):
    jax.eval_shape(lambda x: R.ResFCN(width_mult=0.125).init(key(), x), x)


# ------------------------------------------------------------------------------------------- layer semantics

@pytest.mark.parametrize("stride", [1, 2])
def test_transposed_conv_is_tf_conv2d_transpose(stride):
  """The decoder's layer is TF's conv2d_transpose(SAME): the input-gradient of a SAME conv with the same kernel,
  laid out (k, k, out, in) as TF stores it, so PRNet's weights would load as they are."""
  x = jax.random.normal(key(1), (2, 5, 5, 6))
  w = jax.random.normal(key(2), (4, 4, 7, 6))  # (k, k, out, in)
  layer = nn.ConvTranspose(7, (4, 4), strides=(stride, stride), padding="SAME", use_bias=False,
                           transpose_kernel=True)
  got = layer.apply({"params": {"kernel": w}}, x)
  conv = lambda z: lax.conv_general_dilated(z, w, (stride, stride), "SAME",
                                            dimension_numbers=("NHWC", "HWIO", "NHWC"))
  want = jax.vjp(conv, jnp.zeros((2, 5 * stride, 5 * stride, 7)))[1](x)[0]
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_subpixel_transposed_conv_matches_flax():
  """``SubpixelConvTranspose`` (the default for the stride-2 layers) is ``nn.ConvTranspose(4, stride 2, SAME,
  transpose_kernel=True)``: same variables and init, same outputs and gradients (input and kernel)."""
  ref = nn.ConvTranspose(5, (4, 4), strides=(2, 2), padding="SAME", use_bias=False, transpose_kernel=True,
                         kernel_init=R.kernel_init)
  sub = R.SubpixelConvTranspose(5)

  def both(x):
    v_ref, v_sub = ref.init(key(8), x), sub.init(key(8), x)
    loss = lambda m: lambda v, x: jnp.sum(jnp.sin(m.apply(v, x)))
    return (v_ref, v_sub, ref.apply(v_ref, x), sub.apply(v_ref, x), jax.grad(loss(ref), (0, 1))(v_ref, x),
            jax.grad(loss(sub), (0, 1))(v_ref, x))

  v_ref, v_sub, y_ref, y_sub, g_ref, g_sub = fast_jit(both, jax.random.normal(key(7), (2, 5, 3, 4)))
  chex.assert_trees_all_equal(v_ref, v_sub)
  chex.assert_shape(y_sub, (2, 10, 6, 5))
  chex.assert_trees_all_close(y_sub, y_ref, rtol=1e-5, atol=1e-5)
  chex.assert_trees_all_close(g_sub, g_ref, rtol=1e-4, atol=1e-4)
  # in the network: the same variable tree with either implementation
  trees = [abstract_variables(R.ResFCN(width_mult=0.125, deconv=d), 32)[1] for d in R.DECONV_IMPLS]
  chex.assert_trees_all_equal_shapes_and_dtypes(*trees)
  with pytest.raises(ValueError, match="deconv"):
    abstract_variables(R.ResFCN(width_mult=0.125, deconv="nope"), 32)


# ------------------------------------------------------------------------------------------- real forward / grad

def test_forward_train_and_eval_small():
  size, model = 64, R.ResFCN(width_mult=0.25)
  x = jax.random.uniform(key(3), (2, size, size, 3))
  v = numpy_variables(model, size)

  def run(v, x):
    out, upd = model.apply(v, x, train=True, mutable=["batch_stats"])
    v2 = {"params": v["params"], "batch_stats": upd["batch_stats"]}
    return out, upd, model.apply(v2, x, train=False), model.clone(scale_output=False).apply(v2, x, train=False)

  out, upd, ev, raw = fast_jit(run, v, x)
  chex.assert_shape(out, (2, size, size, 3))
  chex.assert_type(out, jnp.float32)
  chex.assert_tree_all_finite(out)
  out = np.asarray(out)
  assert out.min() >= 0.0 and out.max() <= 1.1 * size
  assert out.std() > 0
  # train mode moves the running averages (momentum 0.999: by 1e-3 of the way to the batch statistics)
  old, new = v["batch_stats"], upd["batch_stats"]
  moved = jax.tree_util.tree_map(lambda a, b: float(jnp.max(jnp.abs(a - b))), old, new)
  assert all(d > 0 for d in jax.tree_util.tree_leaves(moved))
  assert jax.tree_util.tree_structure(old) == jax.tree_util.tree_structure(new)
  # eval mode (the updated running averages; nothing mutable): a different, still bounded output
  ev, raw = np.asarray(ev), np.asarray(raw)
  chex.assert_shape(ev, (2, size, size, 3))
  assert np.isfinite(ev).all() and ev.min() >= 0.0 and ev.max() <= 1.1 * size
  assert not np.allclose(ev, out)
  np.testing.assert_allclose(raw * 1.1 * size, ev, rtol=1e-5, atol=1e-4)  # scale_output=False: the sigmoid


def test_gradient_flows_tiny():
  size, model = 32, R.ResFCN(width_mult=0.125)
  x = jax.random.uniform(key(4), (2, size, size, 3))
  target = jax.random.uniform(key(5), (2, size, size, 3)) * size
  v = numpy_variables(model, size, seed=1)

  def loss(params, stats, x, target):
    out, _ = model.apply({"params": params, "batch_stats": stats}, x, train=True, mutable=["batch_stats"])
    return jnp.mean((out - target) ** 2)

  grads = fast_jit(jax.grad(loss), v["params"], v["batch_stats"], x, target)
  chex.assert_tree_all_finite(grads)
  norms = jax.tree_util.tree_map(lambda g: float(jnp.linalg.norm(g)), grads)
  # every kernel gets a gradient, from the stem to the last transposed conv
  flat = jax.tree_util.tree_flatten_with_path(norms)[0]
  kernels = {jax.tree_util.keystr(p): n for p, n in flat if "kernel" in jax.tree_util.keystr(p)}
  assert len(kernels) == 53
  assert all(n > 0 for n in kernels.values()), {k: n for k, n in kernels.items() if n <= 0}


def test_bn_axis_name_averages_over_mapped_axis():
  """With ``bn_axis_name``, a batch split over a mapped axis (vmap here, as shard_map per device) is normalised with
  the statistics of the whole batch: the same train-mode output as the unsplit batch. The two halves are drawn
  from different ranges, so per-half statistics could not give that output."""
  size = 32
  u = jax.random.uniform(key(6), (4, size, size, 3))
  x = jnp.concatenate([0.5 * u[:2], 0.5 + 0.5 * u[2:]])  # halves in [0, 0.5) and [0.5, 1)
  whole = R.ResFCN(width_mult=0.0625, deconv="flax")  # cheaper to compile; same numbers as the default
  split = whole.clone(bn_axis_name="data")
  v = numpy_variables(whole, size, seed=2)

  def run(v, x):
    want = whole.apply(v, x, train=True, mutable=["batch_stats"])[0]
    halves = x.reshape(2, 2, size, size, 3)
    got = jax.vmap(lambda xs: split.apply(v, xs, train=True, mutable=["batch_stats"])[0], axis_name="data")(halves)
    return want, got.reshape(want.shape)

  want, got = (np.asarray(a) / (1.1 * size) for a in fast_jit(run, v, x))  # in sigmoid units
  np.testing.assert_allclose(got, want, atol=2e-3)  # float32 rounding through 27 layers of batch statistics


def test_coord_channels_widen_the_stem():
  """coord_channels: the stem sees RGB + x + y (5 channels); same output shape, and the coordinates matter."""
  size, model = 32, R.ResFCN(width_mult=0.125, coord_channels=True)
  _, shapes = abstract_variables(model, size)
  assert shapes["params"]["encoder"]["stem_conv"]["kernel"].shape == (4, 4, 5, 2)
  v = numpy_variables(model, size)
  x = jnp.zeros((1, size, size, 3))
  out = fast_jit(lambda v, x: model.apply(v, x, train=False), v, x)
  chex.assert_shape(out, (1, size, size, 3))
  stem = {"params": v["params"]["encoder"]["stem_conv"]}
  conv = nn.Conv(2, (4, 4), padding="SAME", use_bias=False)
  # a constant image still gives a spatially varying stem response: the coordinate channels
  assert float(jnp.std(conv.apply(stem, R.layers.append_coordinates(x)))) > 0


def test_template_head_is_affine_template_plus_residual():
  """TemplateResFCN: at zero affine parameters and zero last BN scale the map is the template itself; with a known
  affine A, t it is center + t + A (template - center) (numpy), plus (sigmoid - 0.5) * 2 r S from the decoder."""
  size = 32
  model = R.TemplateResFCN(width_mult=0.125)
  rng = np.random.default_rng(0)
  tmpl = jnp.asarray(rng.uniform(0, size, (size, size, 3)), jnp.float32)
  center = jnp.asarray([15.0, 16.0, 5.0])
  x = jax.random.uniform(key(7), (2, size, size, 3))
  shapes = jax.eval_shape(lambda x: model.init(key(), x, tmpl, center), x)
  v = jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
  v = jax.tree_util.tree_map_with_path(  # BN variances 1 (scale 0 everywhere: the decoder's sigmoid is 0.5)
      lambda p, a: jnp.ones_like(a) if jax.tree_util.keystr(p).endswith("['var']") else a, v)
  run = lambda v: model.apply(v, x, tmpl, center, train=False)  # noqa: E731
  np.testing.assert_allclose(np.asarray(fast_jit(run, v)), np.broadcast_to(tmpl, (2, size, size, 3)), atol=1e-5)
  a = rng.normal(size=12).astype(np.float32) * 0.1
  v["params"]["affine"]["bias"] = jnp.asarray(a)
  mat, t = np.eye(3) + a[:9].reshape(3, 3), a[9:] * size
  want = np.asarray(center) + t + (np.asarray(tmpl) - np.asarray(center)) @ mat.T
  np.testing.assert_allclose(np.asarray(fast_jit(run, v))[1], want, rtol=1e-5, atol=1e-4)
  with pytest.raises(ValueError, match="template"):
    model.apply(v, x, train=False)
