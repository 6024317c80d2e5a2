"""Benchmark: training throughput of the jface regressors and of the full 2DASL step on this CPU.

Measures, on the first JAX device (CPU here):

(a) the jitted regressor-only train step: ``--model`` (default ResNet-50 in 2DASL's layout), batch ``--batch``
    (32), 120 x 120 x 4 float inputs, MSE on the 62 outputs, SGD with momentum 0.9, batch norm in training mode
    (batch statistics + running-average update) -- the same work as a PyTorch ``loss.backward(); opt.step()``;
(b) the full 2DASL step of ``jface.train_lib.make_train_step`` (configs/2dasl.py default variant: FLM input,
    cycle losses and self-critic; 3D batch + 2D batch of ``--batch`` each; regressor forward on both batches +
    the cycle's backward pass, encoder and critic update), run through ``jface.parallel.data_parallel`` on a
    1-device mesh exactly as ``train.py`` runs it;
(c) eval-mode forward latency at batch 1 and 64.

It also measures the machine's fp32 matmul peak (a jitted 2048^2 ``jnp.dot``, best of 10) and prints each
step's achieved GFLOP/s as a fraction of it. FLOPs: XLA's ``cost_analysis()`` of the compiled step, and the
usual estimate 3 x forward MACs x 2 (``jface.models.count_macs``; convs and dense layers only).

XLA flags must be set before jax is imported, so argv is parsed first and ``XLA_FLAGS`` is set from
``--xla_flags_preset`` (+ ``--xla_flags``) before the first ``import jax``.

Prototype model variants (same parameter and batch_stats trees; installed by patching ``jface.models.layers``
before the first trace; ``--verify`` compares outputs, batch stats and gradients with the plain net and a
float64 evaluation, ``--ab`` times plain and variant alternately in one process):
``--conv1x1 dot``: every 1 x 1 convolution (bottleneck conv1/conv3, projections) as a strided slice + reshape +
  ``jnp.dot`` over channels: its backward pass is two plain GEMMs instead of convolutions whose operands XLA
  transposes first;
``--bn fused``: batch norm with a hand-written VJP (one reduction + one elementwise pass each way);
``--maxpool slices``: the stem max-pool as the max of 9 strided slices (tried; no gain).

No flags = the best regressor-only setting measured here (``BEST``; see docs/BENCHMARKS.md): YNNPACK kept off
convolutions and dots, 1x1 convolutions as dots, fused batch norm, float32, batch 32.

Times are medians (and minima) of ``--steps`` calls after warm-up, with ``block_until_ready``. Other processes
on the 2 cores inflate them: the 1-minute load average is printed next to each number.

Output: one line per measurement; the LAST line is ``train_step images/s: <number>`` for (a).
"""
from __future__ import annotations

import argparse
import os
import pathlib
import statistics
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from _face import load_face  # noqa: E402

YNN = "--xla_cpu_experimental_ynn_fusion_type="
XLA_PRESETS = {
    "default": "",  # jax 0.10.2: most convolutions and dots go to YNNPACK
    "ynn_individual_conv": YNN + "-individual_convolution",  # convolutions to XLA's Eigen kernels
    "ynn_individual_conv_dot": YNN + "-individual_convolution,-individual_dot",  # convolutions and dots to Eigen
}
# The best regressor-only setting measured here (docs/BENCHMARKS.md); the no-flag default.
BEST = dict(xla_flags_preset="ynn_individual_conv_dot", conv1x1="dot", bn="fused", maxpool="reduce_window")


def parse_args(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--model", default=None, help="jface.models.build_regressor name (default resnet50; resnet18 "
                                                 "with --quick)")
  ap.add_argument("--batch", type=int, default=32, help="regressor-only batch; also each of the 2 full-step batches")
  ap.add_argument("--steps", type=int, default=8, help="timed regressor-only steps (median)")
  ap.add_argument("--full_steps", type=int, default=3, help="timed full 2DASL steps")
  ap.add_argument("--latency_runs", type=int, default=5, help="timed forward calls per latency batch size")
  ap.add_argument("--xla_flags_preset", default=BEST["xla_flags_preset"], choices=sorted(XLA_PRESETS))
  ap.add_argument("--xla_flags", default="", help="extra XLA flags appended to the preset's")
  ap.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"),
                  help="computation dtype (params stay float32)")
  ap.add_argument("--conv1x1", default=BEST["conv1x1"], choices=("conv", "dot"),
                  help="1x1 convolutions as XLA convs or as reshape + jnp.dot")
  ap.add_argument("--bn", default=BEST["bn"], choices=("flax", "fused"),
                  help="flax.linen.BatchNorm or the FusedBatchNorm prototype (hand-written VJP)")
  ap.add_argument("--maxpool", default=BEST["maxpool"], choices=("reduce_window", "slices"),
                  help="the stem's 3x3/2 max-pool as flax's reduce_window or as the max of 9 strided slices")
  ap.add_argument("--skip_full", action="store_true", help="skip (b), the full 2DASL step")
  ap.add_argument("--skip_latency", action="store_true", help="skip (c), the forward latencies")
  ap.add_argument("--verify", action="store_true",
                  help="compare the net with --conv1x1/--bn/--maxpool against the plain one and a float64 "
                       "evaluation (train-mode outputs, batch stats, gradients), then exit")
  ap.add_argument("--ab", action="store_true",
                  help="interleaved A/B of the plain net against --conv1x1/--bn/--maxpool (regressor step), then exit")
  ap.add_argument("--ab_base", default="", help="variants installed in both arms of --ab: comma list of "
                                               "dot, fused, slices")
  ap.add_argument("--profile", default="", help="write a jax.profiler trace of 2 regressor steps to this folder "
                                                "and print the ops that take the most time")
  ap.add_argument("--quick", action="store_true",
                  help="smoke run: narrow nets (8 filters; resnet18 unless --model), batch 4, 2 steps; numbers "
                       "are meaningless")
  ap.add_argument("--bfm_dir", default=str(ROOT.parent / "shared" / "data" / "3dmm"),
                  help="3DDFA-format 3DMM for the full step (a random model of the same shapes if absent)")
  args = ap.parse_args(argv)
  if args.model is None:
    args.model = "resnet18" if args.quick else "resnet50"
  if args.quick:
    args.batch, args.steps, args.full_steps, args.latency_runs = min(args.batch, 4), 2, 1, 1
  return args


def set_xla_flags(args) -> str:
  flags = " ".join(f for f in (XLA_PRESETS[args.xla_flags_preset], args.xla_flags) if f)
  if "jax" in sys.modules:
    raise RuntimeError("jax was imported before the XLA flags were set")
  if flags:
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + flags).strip()
  return os.environ.get("XLA_FLAGS", "")


def load1() -> float:
  return os.getloadavg()[0]


def timed(fn, n: int, warmup: int = 1):
  """-> (median s, min s, load average before, after, process CPU s per call) of ``n`` calls of ``fn`` after
  ``warmup`` calls. CPU time (all threads) is less sensitive to other processes than wall time."""
  for _ in range(warmup):
    fn()
  la0, c0 = load1(), time.process_time()
  ts = []
  for _ in range(n):
    t0 = time.perf_counter()
    fn()
    ts.append(time.perf_counter() - t0)
  return statistics.median(ts), min(ts), la0, load1(), (time.process_time() - c0) / n


# --------------------------------------------------------------------------- prototypes (model variants)

def install_conv1x1_dot():
  """Makes ``jface.models.layers.conv`` build ``Conv1x1Dot`` for 1 x 1 kernels (ResNet blocks call it at trace
  time, so this must run before the first trace). Same parameter names, shapes and init."""
  import flax.linen as nn
  import jax.numpy as jnp
  from jface.models import layers

  class Conv1x1Dot(nn.Conv):
    """A bias-free 1 x 1 conv (stride s, no padding) as x[:, ::s, ::s] reshaped to (N, C) @ kernel (C, O)."""

    @nn.compact
    def __call__(self, x):
      s = self.strides[0] if isinstance(self.strides, (tuple, list)) else (self.strides or 1)
      kernel = self.param("kernel", self.kernel_init, (1, 1, x.shape[-1], self.features), self.param_dtype)
      if s != 1:
        x = x[:, ::s, ::s, :]
      b, h, w, c = x.shape
      y = jnp.dot(jnp.asarray(x, self.dtype).reshape(b * h * w, c),
                  jnp.asarray(kernel, self.dtype).reshape(c, self.features))
      return y.reshape(b, h, w, self.features)

  orig = layers.conv

  def conv(features, kernel, stride=1, *, groups=1, dtype=jnp.float32, name=None):
    if kernel != 1 or groups != 1:
      return orig(features, kernel, stride, groups=groups, dtype=dtype, name=name)
    return Conv1x1Dot(features, (1, 1), strides=(stride, stride), padding="VALID", use_bias=False,
                      kernel_init=layers.conv_init, dtype=dtype, param_dtype=jnp.float32, name=name)

  layers.conv = conv
  return orig


def install_fused_bn():
  """Makes ``jface.models.layers.batch_norm`` build ``FusedBatchNorm``: the same variables as flax's BatchNorm
  (params scale/bias, batch_stats mean/var, momentum and epsilon as given) with a hand-written VJP, so training
  mode is exactly one reduction pass + one elementwise pass forward and the same backward. Prototype: with an
  ``axis_name`` the statistics are psum-ed over it (checked on a 1-device mesh only)."""
  import functools
  import flax.linen as nn
  import jax
  import jax.numpy as jnp
  from jface.models import layers

  def _sum(v, axis_name):  # sum over all but the channel axis (and over the mapped axis)
    v = jnp.sum(v, tuple(range(v.ndim - 1)))
    return v if axis_name is None else jax.lax.psum(v, axis_name)

  def _count(x, axis_name):
    n = x.size // x.shape[-1]
    return n if axis_name is None else n * jax.lax.psum(1, axis_name)

  @functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
  def bn_train(x, scale, bias, eps, axis_name):
    return _fwd(x, scale, bias, eps, axis_name)[0]

  def _fwd(x, scale, bias, eps, axis_name):
    xf = x.astype(jnp.float32)
    n = _count(x, axis_name)
    mean = _sum(xf, axis_name) / n
    var = jnp.maximum(_sum(jnp.square(xf), axis_name) / n - jnp.square(mean), 0.0)
    rstd = jax.lax.rsqrt(var + eps)
    a = scale * rstd
    y = (xf * a + (bias - mean * a)).astype(x.dtype)
    # mean / var are returned for the running averages only: their cotangents are ignored (stop_gradient'ed)
    return (y, jax.lax.stop_gradient(mean), jax.lax.stop_gradient(var)), (x, mean, rstd, scale)

  def _bwd(eps, axis_name, res, g):
    x, mean, rstd, scale = res
    gy = g[0].astype(jnp.float32)
    xhat = (x.astype(jnp.float32) - mean) * rstd
    axes = tuple(range(x.ndim - 1))
    dbias, dscale = jnp.sum(gy, axes), jnp.sum(gy * xhat, axes)  # this device's parameter gradients
    gb, gs = (dbias, dscale) if axis_name is None else (jax.lax.psum(dbias, axis_name),
                                                         jax.lax.psum(dscale, axis_name))
    dx = (scale * rstd) * (gy - (gb + xhat * gs) / _count(x, axis_name))
    return dx.astype(x.dtype), dscale, dbias

  bn_train.defvjp(_fwd, _bwd)

  class FusedBatchNorm(nn.Module):
    use_running_average: bool
    momentum: float = 0.9
    epsilon: float = 1e-5
    dtype: object = jnp.float32
    axis_name: str | None = None
    scale_init: object = nn.initializers.ones

    @nn.compact
    def __call__(self, x):
      c = x.shape[-1]
      ra_mean = self.variable("batch_stats", "mean", lambda: jnp.zeros((c,), jnp.float32))
      ra_var = self.variable("batch_stats", "var", lambda: jnp.ones((c,), jnp.float32))
      scale = self.param("scale", self.scale_init, (c,), jnp.float32)
      bias = self.param("bias", nn.initializers.zeros, (c,), jnp.float32)
      x = jnp.asarray(x, self.dtype)
      if self.use_running_average:
        a = scale * jax.lax.rsqrt(ra_var.value + self.epsilon)
        return (x.astype(jnp.float32) * a + (bias - ra_mean.value * a)).astype(self.dtype)
      y, mean, var = bn_train(x, scale, bias, self.epsilon, self.axis_name)
      if not self.is_initializing():
        ra_mean.value = self.momentum * ra_mean.value + (1 - self.momentum) * mean
        ra_var.value = self.momentum * ra_var.value + (1 - self.momentum) * var
      return y

  orig = layers.batch_norm

  def batch_norm(train, *, dtype=jnp.float32, axis_name=None, momentum=0.9, zero_scale=False, name=None):
    return FusedBatchNorm(use_running_average=not train, momentum=momentum, epsilon=1e-5, dtype=dtype,
                          axis_name=axis_name, scale_init=nn.initializers.zeros if zero_scale else
                          nn.initializers.ones, name=name)

  layers.batch_norm = batch_norm
  return orig


def install_slice_maxpool():
  """Makes ``jface.models.layers.max_pool_3x3_s2`` (the ResNet stem pool) the max of 9 strided slices of the
  -inf-padded input. Same forward; its autodiff gradient is a chain of selects instead of XLA's variadic
  reduce-window argmax (4 int32 iota maps of the padded input). Ties split the gradient where the argmax picks
  one input, but the pool follows a ReLU, whose gradient is zero at the only likely ties (zeros)."""
  import jax.numpy as jnp
  from jface.models import layers

  def max_pool_3x3_s2(x):
    b, h, w, c = x.shape
    ho, wo = (h - 1) // 2 + 1, (w - 1) // 2 + 1
    xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), constant_values=-jnp.inf)
    out = None
    for i in range(3):
      for j in range(3):
        tap = xp[:, i:i + 2 * ho - 1:2, j:j + 2 * wo - 1:2, :]
        out = tap if out is None else jnp.maximum(out, tap)
    return out

  orig = layers.max_pool_3x3_s2
  layers.max_pool_3x3_s2 = max_pool_3x3_s2
  return orig


def install_variants(args):
  if args.conv1x1 == "dot":
    install_conv1x1_dot()
  if args.bn == "fused":
    install_fused_bn()
  if args.maxpool == "slices":
    install_slice_maxpool()


# ------------------------------------------------------------------------------------------ pieces

def matmul_peak(n: int = 2048, reps: int = 10):
  import jax
  import jax.numpy as jnp
  a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
  b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
  f = jax.jit(jnp.dot)
  med, best, la0, la1, cpu = timed(lambda: f(a, b).block_until_ready(), reps, warmup=2)
  return 2 * n ** 3 / best / 1e9, 2 * n ** 3 / med / 1e9, la0


def flops_of(compiled) -> float:
  ca = compiled.cost_analysis()
  if isinstance(ca, (list, tuple)):
    ca = ca[0]
  return float(ca.get("flops", float("nan"))) if ca else float("nan")


def build_model(args, bn_axis_name=None):
  import jax.numpy as jnp
  from jface import models
  kw = {"num_filters": 8} if args.quick and args.model.startswith("resnet") else {}
  return models.build_regressor(args.model, in_channels=4, dtype=jnp.dtype(args.dtype), bn_axis_name=bn_axis_name,
                                **kw)


def regressor_step_fns(args, model):
  """-> (init_state(), step(state, x, y) jitted with state donated, example inputs)."""
  import jax
  import jax.numpy as jnp
  import numpy as np
  import optax

  tx = optax.sgd(1e-3, momentum=0.9)

  def init():
    v = jax.jit(lambda k: model.init(k, jnp.zeros((2, 120, 120, 4)), train=False))(jax.random.key(0))
    return v["params"], v["batch_stats"], tx.init(v["params"])

  def step(state, x, y):
    params, batch_stats, opt_state = state

    def loss_fn(p):
      out, new = model.apply({"params": p, "batch_stats": batch_stats}, x, train=True, mutable=["batch_stats"])
      return jnp.mean(jnp.square(out - y)), new["batch_stats"]

    (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return (optax.apply_updates(params, updates), batch_stats, opt_state), loss

  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.uniform(-1, 1, size=(args.batch, 120, 120, 4)).astype(np.float32))
  y = jnp.asarray(rng.normal(size=(args.batch, 62)).astype(np.float32))
  return init, jax.jit(step, donate_argnums=(0,)), (x, y)


def bench_regressor(args, macs_per_image: int, peak: float):
  import jax
  model = build_model(args)
  init, step, (x, y) = regressor_step_fns(args, model)
  state = init()
  t0 = time.perf_counter()
  compiled = step.lower(state, x, y).compile()
  t_compile = time.perf_counter() - t0
  xla_flops = flops_of(compiled)
  box = [state]

  def run():
    box[0], loss = compiled(box[0], x, y)
    jax.block_until_ready(loss)

  med, best, la0, la1, cpu = timed(run, args.steps, warmup=2)
  est_flops = 3 * 2 * macs_per_image * args.batch
  ips = args.batch / med
  print(f"(a) regressor step {args.model} batch {args.batch} {args.dtype}: compile {t_compile:.1f} s, "
        f"median {med * 1e3:.0f} ms (min {best * 1e3:.0f} ms) over {args.steps} steps, load {la0:.2f}->{la1:.2f}, CPU {cpu * 1e3:.0f} ms/step")
  print(f"(a) FLOPs/step: XLA cost analysis {xla_flops / 1e9:.1f} G, 3x fwd MACs x2 {est_flops / 1e9:.1f} G; "
        f"achieved {est_flops / med / 1e9:.1f} GFLOP/s (estimate) = {est_flops / med / 1e9 / peak:.1%} of the "
        f"matmul peak ({xla_flops / med / 1e9 / peak:.1%} with XLA's count)")
  print(f"(a) images/s: {ips:.2f} (median), {args.batch / best:.2f} (best step)")
  return ips


def fake_batch(face, n: int, seed: int, with_params: bool) -> dict:
  """A pipeline-like batch (numpy): uint8 120 x 120 RGB, params, landmarks consistent with the params."""
  import jax.numpy as jnp
  import numpy as np
  from jface import geometry
  rng = np.random.default_rng(seed)
  pw = (rng.normal(size=(n, 62)) * 0.3).astype(np.float32)
  lm = np.asarray(geometry.landmarks2d(face, jnp.asarray(pw)), np.float32)
  return {"image": rng.integers(0, 256, size=(n, 120, 120, 3), dtype=np.uint8),
          "params": pw if with_params else np.zeros_like(pw), "landmarks": lm, "flm_landmarks": lm,
          "landmarks_mask": rng.uniform(size=(n, 68)) > 0.1}


def bench_full(args, peak: float):
  import importlib.util
  import jax
  from jface import parallel, train_lib
  spec = importlib.util.spec_from_file_location("config_2dasl", ROOT / "configs" / "2dasl.py")
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  config = mod.get_config(None)
  config.model, config.dtype = args.model, args.dtype
  config.batch_size = config.batch_size_2d = args.batch
  if args.quick:
    config.model_kwargs = {"num_filters": 8} if args.model.startswith("resnet") else {}
    config.encoder_kwargs = {"channels": (8, 8, 8, 8, 8, 8)}
  face, desc = load_face(args.bfm_dir)
  mesh = parallel.make_mesh(1)
  mods = train_lib.make_modules(config)
  state = parallel.replicate(train_lib.init_state(config, mods), mesh)
  step = parallel.data_parallel(train_lib.make_train_step(config, mods), mesh, 2, 2)
  face_r = parallel.replicate(face, mesh)
  b3 = parallel.shard_batch(fake_batch(face, args.batch, 1, True), mesh)
  b2 = parallel.shard_batch(fake_batch(face, args.batch, 2, False), mesh)
  t0 = time.perf_counter()
  compiled = step.lower(state, face_r, b3, b2).compile()
  t_compile = time.perf_counter() - t0
  xla_flops = flops_of(compiled)
  box = [state]

  def run():
    box[0], metrics = compiled(box[0], face_r, b3, b2)
    jax.block_until_ready(metrics)

  med, best, la0, la1, cpu = timed(run, args.full_steps, warmup=1)
  n_img = 2 * args.batch
  print(f"(b) full 2DASL step (variant {config.variant}: flm+cyc+sc, {args.model}, {args.batch}+{args.batch}, "
        f"{args.dtype}, {desc}): compile {t_compile:.1f} s, median {med:.2f} s (min {best:.2f} s) over "
        f"{args.full_steps} steps, load {la0:.2f}->{la1:.2f}, CPU {cpu:.2f} s/step")
  print(f"(b) XLA FLOPs/step {xla_flops / 1e9:.1f} G = {xla_flops / med / 1e9:.1f} GFLOP/s = "
        f"{xla_flops / med / 1e9 / peak:.1%} of the matmul peak")
  print(f"(b) full step images/s: {n_img / med:.2f} ({n_img} images per step; {1 / med:.3f} steps/s)")


def bench_latency(args):
  import jax
  import jax.numpy as jnp
  import numpy as np
  model = build_model(args)
  v = jax.jit(lambda k: model.init(k, jnp.zeros((2, 120, 120, 4)), train=False))(jax.random.key(0))
  fwd = jax.jit(lambda v, x: model.apply(v, x, train=False))
  for b in (1, 64):
    x = jnp.asarray(np.random.default_rng(b).uniform(-1, 1, size=(b, 120, 120, 4)).astype(np.float32))
    med, best, la0, la1, cpu = timed(lambda: fwd(v, x).block_until_ready(), args.latency_runs if b > 1 else
                                max(args.latency_runs, 20 if not args.quick else 1), warmup=1)
    print(f"(c) forward latency {args.model} eval batch {b}: median {med * 1e3:.1f} ms (min {best * 1e3:.1f} ms) "
          f"= {b / med:.1f} images/s, load {la0:.2f}->{la1:.2f}, CPU {cpu * 1e3:.1f} ms")


def verify_conv1x1(args):
  """Train-mode outputs, new batch stats and gradients of the net with 1x1 convs as convs and as dots (float32),
  each compared with a float64 evaluation of the conv version: the dot version must be as close to it as the
  conv version is (float32 rounding only)."""
  import jax
  import jax.numpy as jnp
  import numpy as np
  jax.config.update("jax_enable_x64", True)
  _, _, (x, y) = regressor_step_fns(args, build_model(args))
  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)

  def run(dtype):
    model = build_model(args).clone(dtype=dtype)
    v = jax.jit(lambda k: model.init(k, jnp.zeros((2, 120, 120, 4), jnp.float32), train=False))(jax.random.key(0))
    v = jax.tree_util.tree_map(lambda a: jnp.asarray(a, dtype), v)

    def loss_fn(p):
      out, new = model.apply({"params": p, "batch_stats": v["batch_stats"]}, jnp.asarray(x, dtype), train=True,
                             mutable=["batch_stats"])
      return jnp.mean(jnp.square(out - jnp.asarray(y, dtype))), (out, new["batch_stats"])

    (loss, aux), g = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(v["params"])
    return jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), jax.device_get((aux[0], aux[1], g)))

  ref64, conv32 = run(jnp.float64), run(jnp.float32)
  install_variants(args)
  dot32 = run(jnp.float32)

  def err(a, b):  # worst leaf of max|a - b| / max|b|
    return max(float(np.max(np.abs(p - q)) / (np.max(np.abs(q)) + 1e-30))
               for p, q in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)))

  def gerr(a, b):  # ||a - b|| / ||b|| over all leaves together
    la, lb = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
    return float(np.sqrt(sum(np.sum((p - q) ** 2) for p, q in zip(la, lb)) / sum(np.sum(q ** 2) for q in lb)))

  for i, name in enumerate(("train output", "batch stats", "gradients")):
    print(f"verify {name}: worst-leaf max|diff|/max|f64|: plain f32 {err(conv32[i], ref64[i]):.2e}, "
          f"variant f32 {err(dot32[i], ref64[i]):.2e}; variant vs plain {err(dot32[i], conv32[i]):.2e} | "
          f"global ||diff||/||f64||: plain {gerr(conv32[i], ref64[i]):.2e}, variant {gerr(dot32[i], ref64[i]):.2e}")


def ab_compare(args):
  """Interleaved A/B: the plain net (1x1 convs, flax BN) against ``--conv1x1`` / ``--bn`` as given, stepping them
  alternately in one process so that both see the same background load. Prints the median per-step wall and
  process-CPU time of each and the ratio."""
  import jax
  base = [v for v in args.ab_base.split(",") if v]
  if "dot" in base:
    install_conv1x1_dot()
  if "fused" in base:
    install_fused_bn()
  if "slices" in base:
    install_slice_maxpool()
  runs = {}
  for name in ("plain", "variant"):
    if name == "variant":
      install_variants(args)
    model = build_model(args)  # traced below, after the patches (if any) are installed
    init, step, (x, y) = regressor_step_fns(args, model)
    state = init()
    compiled = step.lower(state, x, y).compile()
    runs[name] = [compiled, state, x, y]
  times = {k: ([], []) for k in runs}
  for i in range(args.steps + 1):
    for name, r in (runs.items() if i % 2 == 0 else reversed(list(runs.items()))):
      c0, t0 = time.process_time(), time.perf_counter()
      r[1], loss = r[0](r[1], r[2], r[3])
      jax.block_until_ready(loss)
      if i > 0:  # the first round is warm-up
        times[name][0].append(time.perf_counter() - t0)
        times[name][1].append(time.process_time() - c0)
  med = {k: (statistics.median(v[0]), statistics.median(v[1])) for k, v in times.items()}
  for k, (w, c) in med.items():
    print(f"ab {k:8s}: median wall {w * 1e3:.0f} ms, CPU {c * 1e3:.0f} ms per step ({args.batch / w:.2f} images/s)")
  print(f"ab base [{args.ab_base}]; variant/plain (--conv1x1 {args.conv1x1} --bn {args.bn} --maxpool {args.maxpool}): wall {med['variant'][0] / med['plain'][0]:.3f}, "
        f"CPU {med['variant'][1] / med['plain'][1]:.3f}; load {load1():.2f}")


def profile(args, folder: str):
  """Traces 2 regressor steps and prints the 25 op names with the most total time (from the perfetto trace)."""
  import collections
  import glob
  import gzip
  import json
  import jax
  model = build_model(args)
  init, step, (x, y) = regressor_step_fns(args, model)
  state = init()
  for _ in range(2):
    state, loss = step(state, x, y)
  jax.block_until_ready(loss)
  with jax.profiler.trace(folder, create_perfetto_trace=True):
    for _ in range(2):
      state, loss = step(state, x, y)
    jax.block_until_ready(loss)
  files = sorted(glob.glob(os.path.join(folder, "**", "*.trace.json.gz"), recursive=True), key=os.path.getmtime)
  if not files:
    print(f"profile: no perfetto trace under {folder}")
    return
  with gzip.open(files[-1]) as f:
    trace = json.load(f)
  tot, cnt = collections.Counter(), collections.Counter()
  for e in trace.get("traceEvents", []):
    if e.get("ph") == "X" and "dur" in e:
      tot[e["name"]] += e["dur"]
      cnt[e["name"]] += 1
  print(f"profile: {files[-1]}; top ops by total time over 2 steps (ms, calls):")
  for name, d in tot.most_common(25):
    print(f"  {d / 1e3:9.1f} ms  {cnt[name]:5d}  {name[:110]}")


def main(argv=None):
  args = parse_args(argv)
  xla_flags = set_xla_flags(args)
  import jax
  import jax.numpy as jnp
  from jface import models

  defaults = all(getattr(args, k) == v for k, v in BEST.items())
  print(f"setting: --xla_flags_preset {args.xla_flags_preset} --conv1x1 {args.conv1x1} --bn {args.bn} "
        f"--maxpool {args.maxpool} "
        f"--dtype {args.dtype} --batch {args.batch}"
        + (" (the best regressor-only setting measured, the default)" if defaults else ""))
  print(f"XLA_FLAGS={xla_flags!r}")
  print(f"jax {jax.__version__}, device {jax.devices()[0].device_kind} x{jax.device_count()}, "
        f"{os.cpu_count()} CPUs, load average {' '.join(f'{v:.2f}' for v in os.getloadavg())}"
        + (", QUICK (smoke run, numbers meaningless)" if args.quick else ""))
  if args.verify:
    verify_conv1x1(args)
    return
  if args.ab:
    ab_compare(args)
    return
  # MACs of the plain conv net (count_macs sees Conv1x1Dot as an nn.Conv too)
  macs = models.count_macs(build_model(args), jax.ShapeDtypeStruct((1, 120, 120, 4), jnp.float32))
  install_variants(args)
  if args.profile:
    profile(args, args.profile)
    return
  peak, peak_med, la = matmul_peak(512 if args.quick else 2048)
  print(f"fp32 matmul peak (jnp.dot {512 if args.quick else 2048}^2): {peak:.1f} GFLOP/s best, "
        f"{peak_med:.1f} median, load {la:.2f}")
  print(f"{args.model}: {macs / 1e9:.3f} GMAC per 120x120x4 image (forward)")
  if not args.skip_latency:
    bench_latency(args)
  if not args.skip_full:
    bench_full(args, peak)
  ips = bench_regressor(args, macs, peak)
  print(f"train_step images/s: {ips:.2f}")


if __name__ == "__main__":
  main()
