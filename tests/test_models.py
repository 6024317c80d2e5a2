"""Tests for jface.models: shapes, closed-form parameter / MAC counts, BN train/eval and cross-device BN, bf16.

The full-size networks are only traced (jax.eval_shape); compiled tests use narrow or tiny nets.
"""
from __future__ import annotations

import os
import pathlib
import subprocess
import sys
import textwrap

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jface import models as M
from jface.models import layers

ROOT = pathlib.Path(__file__).resolve().parents[1]
X120 = jax.ShapeDtypeStruct((2, 120, 120, 4), jnp.float32)


def key(i: int = 0):
  """An 'rbg' PRNG key: compiling an init with the default threefry keys costs ~5x more on CPU."""
  return jax.random.key(i, impl="rbg")


def abstract_init(model, *inputs, **kw):
  return jax.eval_shape(lambda *xs: model.init(key(0), *xs, **kw), *inputs)


def abstract_apply(model, variables, *inputs, **kw):
  return jax.eval_shape(lambda v, *xs: model.apply(v, *xs, **kw), variables, *inputs)


# --------------------------------------------------------------------------------- closed forms

def resnet_closed_form(stages, bottleneck, in_ch, num_out, size=120, layout="2dasl", width=64):
  """(params, MACs per image) of a PyTorch-style ResNet, layer by layer from the architecture's definition."""
  ceil2 = lambda n: -(-n // 2)
  exp = 4 if bottleneck else 1
  hw = ceil2(size)                                   # stem 7x7/2, pad 3
  params = 49 * in_ch * width + 2 * width
  macs = hw * hw * 49 * in_ch * width
  hw = ceil2(hw)                                     # max-pool 3/2, pad 1
  cin = width
  for i, n in enumerate(stages):
    planes = width * 2 ** i
    cout = planes * exp
    for j in range(n):
      stride = 1 if (j > 0 or i == 0 or (i == len(stages) - 1 and layout == "2dasl")) else 2
      hw_out = ceil2(hw) if stride == 2 else hw
      if bottleneck:
        params += cin * planes + 9 * planes * planes + planes * cout + 2 * (planes + planes + cout)
        macs += hw * hw * cin * planes + hw_out ** 2 * (9 * planes * planes + planes * cout)
      else:
        params += 9 * cin * planes + 9 * planes * planes + 4 * planes
        macs += hw_out ** 2 * (9 * cin * planes + 9 * planes * planes)
      if stride != 1 or cin != cout:
        params += cin * cout + 2 * cout
        macs += hw_out ** 2 * cin * cout
      cin, hw = cout, hw_out
  feat = cin * ((hw - 7) // 2 + 1) ** 2 if layout == "2dasl" else cin
  return params + feat * num_out + num_out, macs + feat * num_out


def mobilenet_closed_form(width, in_ch, num_out):
  c = int(32 * width)
  params = 9 * in_ch * c + 2 * c
  for ch, _ in M.mobilenet.BLOCKS:
    co = int(ch * width)
    params += 9 * c + 2 * c + c * co + 2 * co
    c = co
  return params + c * num_out + num_out


def test_closed_form_matches_torchvision_counts():
  # Sanity of the closed form itself: torchvision's published counts (3 channels, 1000 classes).
  assert resnet_closed_form((3, 4, 6, 3), True, 3, 1000, layout="standard")[0] == 25_557_032
  assert resnet_closed_form((2, 2, 2, 2), False, 3, 1000, layout="standard")[0] == 11_689_512


# ------------------------------------------------------------------------- factory, shapes, sizes

def test_build_regressor_unknown_name():
  with pytest.raises(ValueError, match="resnet50_standard.*tiny_cnn"):
    M.build_regressor("resnet51")


@pytest.mark.parametrize("name", M.REGRESSORS)
def test_regressor_shapes_and_param_counts(name):
  model = M.build_regressor(name)
  v = abstract_init(model, X120)
  assert set(v) == {"params", "batch_stats"}
  y = abstract_apply(model, v, X120)
  chex.assert_shape(y, (2, 62))
  assert y.dtype == jnp.float32
  y, upd = abstract_apply(model, v, X120, train=True, mutable=["batch_stats"])
  chex.assert_shape(y, (2, 62))
  n = M.count_params(v["params"])
  if name.startswith("resnet"):
    stages, bottleneck = ((3, 4, 6, 3), True) if name.startswith("resnet50") else ((2, 2, 2, 2), False)
    assert n == resnet_closed_form(stages, bottleneck, 4, 62)[0]
  elif name.startswith("mobilenet"):
    assert n == mobilenet_closed_form(float(name.rsplit("_", 1)[1]), 4, 62)
  assert {x.dtype for x in jax.tree_util.tree_leaves(v)} == {jnp.dtype(jnp.float32)}


def test_resnet50_param_count_value():
  # 25,557,032 (torchvision) + 64*49 (4th input channel) - 2,049,000 (1000-way fc) + 2048*62+62.
  assert M.count_params(abstract_init(M.ResNet50(), X120)["params"]) == 23_638_206
  assert M.count_params(abstract_init(M.ResNet18(), X120)["params"]) == 11_211_454


@pytest.mark.parametrize("layout, stage_hw", [("2dasl", (30, 15, 8, 8)), ("standard", (30, 15, 8, 4))])
def test_resnet50_feature_map_sizes(layout, stage_hw):
  model = M.ResNet50(layout=layout)
  v = abstract_init(model, X120)
  _, inter = abstract_apply(model, v, X120, capture_intermediates=True, mutable=["intermediates"])
  inter = inter["intermediates"]
  chex.assert_shape(inter["stem_conv"]["__call__"][0], (2, 60, 60, 64))
  for i, (n, hw) in enumerate(zip((3, 4, 6, 3), stage_hw)):
    chex.assert_shape(inter[f"stage{i + 1}_block{n}"]["__call__"][0], (2, hw, hw, 256 * 2 ** i))
  chex.assert_shape(inter["head"]["__call__"][0], (2, 62))


@pytest.mark.parametrize("layout, gmac", [("2dasl", 1.96), ("standard", 1.27)])
def test_resnet50_macs(layout, gmac):
  x1 = jax.ShapeDtypeStruct((1, 120, 120, 4), jnp.float32)
  macs = M.count_macs(M.ResNet50(layout=layout), x1)
  assert macs == resnet_closed_form((3, 4, 6, 3), True, 4, 62, layout=layout)[1]
  assert abs(macs / 1e9 - gmac) / gmac < 0.03
  # MACs scale with the batch.
  assert M.count_macs(M.ResNet50(layout=layout), X120) == 2 * macs


def test_resnet18_macs():
  x1 = jax.ShapeDtypeStruct((1, 120, 120, 4), jnp.float32)
  for layout in ("2dasl", "standard"):
    assert M.count_macs(M.ResNet18(layout=layout), x1) == resnet_closed_form((2, 2, 2, 2), False, 4, 62,
                                                                             layout=layout)[1]


def test_input_validation():
  with pytest.raises(ValueError, match="4 input channels"):
    abstract_init(M.build_regressor("resnet50"), jax.ShapeDtypeStruct((1, 120, 120, 3), jnp.float32))
  with pytest.raises(ValueError, match="at least 7x7"):
    abstract_init(M.build_regressor("resnet18"), jax.ShapeDtypeStruct((1, 64, 64, 4), jnp.float32))
  with pytest.raises(ValueError, match="layout"):
    abstract_init(M.ResNet18(layout="torch"), X120)
  # 3-channel variant and the standard layout at other sizes are fine.
  v = abstract_init(M.build_regressor("resnet18_standard", in_channels=3), jax.ShapeDtypeStruct((1, 64, 64, 3),
                                                                                                 jnp.float32))
  chex.assert_shape(v["params"]["stem_conv"]["kernel"], (7, 7, 3, 64))


def _np_conv_torch(x, w, stride, pad):
  """Plain-numpy NHWC conv with PyTorch semantics (symmetric zero padding)."""
  x = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  k = w.shape[0]
  ho = (x.shape[1] - k) // stride + 1
  wo = (x.shape[2] - k) // stride + 1
  out = np.zeros((x.shape[0], ho, wo, w.shape[-1]))
  for i in range(ho):
    for j in range(wo):
      patch = x[:, i * stride:i * stride + k, j * stride:j * stride + k, :]
      out[:, i, j] = np.einsum("bhwc,hwco->bo", patch, w)
  return out


def test_conv_and_pool_use_pytorch_padding():
  rng = np.random.default_rng(1)
  x = rng.normal(size=(1, 7, 7, 2)).astype(np.float32) - 3.0   # negative: max-pool must pad with -inf
  conv = layers.conv(3, 3, 2)
  v = conv.init(key(0), x)
  w = np.asarray(v["params"]["kernel"])

  @jax.jit
  def f(v, x):
    return conv.apply(v, x), layers.max_pool_3x3_s2(x)

  y, mp = f(v, x)
  np.testing.assert_allclose(y, _np_conv_torch(x, w, 2, 1), rtol=1e-5, atol=1e-5)
  xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), constant_values=-np.inf)
  ref = np.stack([np.stack([xp[:, 2 * i:2 * i + 3, 2 * j:2 * j + 3].max((1, 2)) for j in range(4)], 1)
                  for i in range(4)], 1)
  np.testing.assert_allclose(mp, ref)


TINY = dict(channels=(4, 8), num_outputs=5, in_channels=4)


@pytest.fixture(scope="module")
def tiny():
  """A tiny_cnn, its variables and jitted train / eval applies on a (8, 16, 16, 4) batch."""
  model = M.build_regressor("tiny_cnn", **TINY)
  rng = np.random.default_rng(0)
  x = rng.normal(size=(8, 16, 16, 4)).astype(np.float32)
  x[4:] = 2.0 * x[4:] + 3.0                 # the two halves have very different statistics
  v = jax.jit(model.init)(key(0), x)
  train = jax.jit(lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"],
                                           capture_intermediates=True))
  evaluate = jax.jit(lambda v, x: model.apply(v, x, train=False, mutable=["batch_stats"]))
  return model, v, jnp.asarray(x), train, evaluate


def test_batch_norm_train_vs_eval(tiny):
  model, v, x, train, evaluate = tiny
  y, upd = train(v, x)
  conv1 = np.asarray(upd["intermediates"]["conv1"]["__call__"][0], np.float64)
  bs = upd["batch_stats"]["bn1"]
  # First running-average update from (mean 0, var 1) with momentum 0.9 (PyTorch 0.1), biased variance.
  np.testing.assert_allclose(bs["mean"], 0.1 * conv1.mean((0, 1, 2)), rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(bs["var"], 0.9 + 0.1 * conv1.var((0, 1, 2)), rtol=1e-4, atol=1e-6)
  # Eval: running averages are used and left untouched; a sample's output does not depend on the others.
  y_ev, upd_ev = evaluate(v, x)
  chex.assert_trees_all_equal(upd_ev["batch_stats"], v["batch_stats"])
  x2 = x.at[1:].multiply(-1.0)
  np.testing.assert_allclose(evaluate(v, x2)[0][0], y_ev[0], rtol=1e-6, atol=1e-6)
  assert not np.allclose(train(v, x2)[0][0], y[0], atol=1e-3)       # train mode: batch statistics
  chex.assert_shape(y, (8, 5))


def test_bn_axis_name_matches_global_batch(tiny):
  """Per-group BN statistics averaged over a vmapped 'data' axis equal the global-batch statistics."""
  _, v, x, train, _ = tiny
  y_ref, upd_ref = train(v, x)
  model = M.build_regressor("tiny_cnn", bn_axis_name="data", **TINY)
  f = jax.jit(jax.vmap(lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"]),
                       in_axes=(None, 0), axis_name="data"))
  y, upd = f(v, x.reshape(2, 4, *x.shape[1:]))
  np.testing.assert_allclose(y.reshape(8, -1), y_ref, rtol=1e-4, atol=1e-5)
  for g in range(2):
    chex.assert_trees_all_close(jax.tree.map(lambda a: a[g], upd["batch_stats"]), upd_ref["batch_stats"],
                                rtol=1e-4, atol=1e-5)


SHARD_MAP_SCRIPT = textwrap.dedent("""
  import jax, jax.numpy as jnp, numpy as np
  from jax.sharding import PartitionSpec as P, NamedSharding
  from jface import models as M
  kw = dict(channels=(4, 8), num_outputs=5, in_channels=4)
  x = np.random.default_rng(0).normal(size=(8, 16, 16, 4)).astype(np.float32)
  x[4:] = 2.0 * x[4:] + 3.0
  ref_model = M.build_regressor("tiny_cnn", **kw)
  model = M.build_regressor("tiny_cnn", bn_axis_name="data", **kw)
  v = jax.jit(ref_model.init)(jax.random.key(0, impl="rbg"), x)
  apply = lambda m: (lambda v, x: m.apply(v, x, train=True, mutable=["batch_stats"]))
  y_ref, s_ref = jax.jit(apply(ref_model))(v, x)
  mesh = jax.make_mesh((4,), ("data",))
  f = jax.jit(jax.shard_map(apply(model), mesh=mesh, in_specs=(P(), P("data")), out_specs=(P("data"), P())))
  y, s = f(v, jax.device_put(x, NamedSharding(mesh, P("data"))))
  print("DEVICES", jax.device_count())
  print("YDIFF", float(jnp.max(jnp.abs(y - y_ref))))
  print("SDIFF", max(float(jnp.max(jnp.abs(a - b))) for a, b in
                     zip(jax.tree.leaves(s), jax.tree.leaves(s_ref))))
""")


def test_bn_axis_name_under_shard_map():
  """The real path: jax.shard_map over 4 (forced host) devices, in a subprocess so the flag takes effect."""
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
  res = subprocess.run([sys.executable, "-c", SHARD_MAP_SCRIPT], env=env, cwd=ROOT, capture_output=True,
                       text=True, timeout=300)
  assert res.returncode == 0, res.stderr[-3000:]
  out = dict(line.split() for line in res.stdout.splitlines() if line.split()[0] in ("DEVICES", "YDIFF", "SDIFF"))
  assert int(out["DEVICES"]) == 4
  assert float(out["YDIFF"]) < 1e-4 and float(out["SDIFF"]) < 1e-4, out


def test_bf16_compute(tiny):
  _, v, x, _, evaluate = tiny
  model = M.build_regressor("tiny_cnn", dtype=jnp.bfloat16, **TINY)
  vb = abstract_init(model, x)
  assert {a.dtype for a in jax.tree.leaves(vb)} == {jnp.dtype(jnp.float32)}   # params stay float32
  (y_tr, upd), y_ev = jax.jit(lambda v, x: (model.apply(v, x, train=True, mutable=["batch_stats"]),
                                            model.apply(v, x)))(v, x)
  assert y_tr.dtype == y_ev.dtype == jnp.float32 and np.all(np.isfinite(y_tr))
  assert {a.dtype for a in jax.tree.leaves(upd)} == {jnp.dtype(jnp.float32)}
  y32 = evaluate(v, x)[0]
  np.testing.assert_allclose(y_ev, y32, rtol=0.05, atol=0.02 * float(np.abs(y32).max()))


def test_residual_blocks_zero_init_is_shortcut():
  """With zero_init_residual each block starts as relu(shortcut): identity or the 1x1/stride projection + BN."""
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(2, 6, 6, 8)), jnp.float32)
  identity = M.Bottleneck(features=2, zero_init_residual=True)                  # 8 -> 8 channels
  projected = M.BasicBlock(features=4, stride=2, zero_init_residual=True)        # 8 -> 4, 6x6 -> 3x3

  @jax.jit
  def run(x):
    out = []
    for m in (identity, projected):
      v = m.init(key(), x, train=True)
      out.append((v, m.apply(v, x, train=True, mutable=["batch_stats", "intermediates"],
                             capture_intermediates=True)))
    return out

  (v1, (y1, _)), (v2, (y2, upd2)) = run(x)
  np.testing.assert_array_equal(v1["params"]["bn3"]["scale"], 0.0)
  np.testing.assert_array_equal(v2["params"]["bn2"]["scale"], 0.0)
  np.testing.assert_array_equal(v2["params"]["bn1"]["scale"], 1.0)
  np.testing.assert_allclose(y1, jax.nn.relu(x), atol=1e-6)
  chex.assert_shape(y2, (2, 3, 3, 4))
  shortcut = upd2["intermediates"]["proj_bn"]["__call__"][0]
  np.testing.assert_allclose(y2, jax.nn.relu(shortcut), atol=1e-6)


def test_tiny_cnn_flatten_head_and_stem():
  """pool="flatten" keeps the spatial map: 120 px with a 4/2 stem then one 3x3/2 conv -> 15 x 15 x C."""
  m = M.TinyCNN(channels=(4, 8), stem_kernel=5, stem_stride=4, pool="flatten")
  x = jnp.zeros((2, 120, 120, 4))
  shapes = jax.eval_shape(lambda: m.init(jax.random.PRNGKey(0), x))
  assert shapes["params"]["head"]["kernel"].shape == (15 * 15 * 8, 62)
  assert shapes["params"]["conv1"]["kernel"].shape == (5, 5, 4, 4)
  with pytest.raises(ValueError, match="pool"):
    M.TinyCNN(pool="max").init(jax.random.PRNGKey(0), x)


def test_append_coordinates_closed_form():
  x = jnp.arange(2 * 3 * 5, dtype=jnp.float32).reshape(2, 3, 5, 1)
  y = np.asarray(layers.append_coordinates(x))
  chex.assert_shape(y, (2, 3, 5, 3))
  np.testing.assert_array_equal(y[..., 0], np.asarray(x[..., 0]))
  np.testing.assert_allclose(y[1, 2, :, 1], [-1, -0.5, 0, 0.5, 1], atol=1e-6)  # x along columns
  np.testing.assert_allclose(y[0, :, 4, 2], [-1, 0, 1], atol=1e-6)  # y along rows


def test_resnet_coord_channels_widen_only_the_stem():
  x = jnp.zeros((2, 32, 32, 4))
  plain = M.build_regressor("resnet18_standard", num_filters=4)
  coord = M.build_regressor("resnet18_standard", num_filters=4, coord_channels=True)
  p0 = plain.init(jax.random.PRNGKey(0), x)["params"]
  p1 = coord.init(jax.random.PRNGKey(0), x)["params"]
  assert p1["stem_conv"]["kernel"].shape == (7, 7, 6, 4) and p0["stem_conv"]["kernel"].shape == (7, 7, 4, 4)
  out = coord.apply(coord.init(jax.random.PRNGKey(0), x), x, train=False)
  chex.assert_shape(out, (2, 62))
  assert np.isfinite(np.asarray(out)).all()
