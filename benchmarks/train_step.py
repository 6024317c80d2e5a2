"""Benchmark: training throughput of the jface regressors on this CPU, side by side with PyTorch eager.

Measures, on the first JAX device (CPU here):

(a) the jitted regressor-only train step of ``jface.models.build_regressor(--model, ...)`` exactly as users get it
    (nothing patched; ``--conv1x1`` / ``--bn`` pass the layer implementations through, default: the library's):
    default ResNet-50 in 2DASL's layout, batch ``--batch`` (32), 120 x 120 x 4 float inputs, MSE on the 62
    outputs, SGD with momentum 0.9, batch norm in training mode (batch statistics + running-average update) --
    the same work as PyTorch's ``loss.backward(); opt.step()``;
(t) PyTorch eager doing the same work (``../shared/peers/peer_torch_bench.py``, 2 threads) with ``--torch_python``
    (default /tmp/torch/bin/python when it exists), interleaved as jax, torch, jax in one run so that both see
    the same background load;
(b) with ``--full``: the full 2DASL step (configs/2dasl.py default variant: FLM input, cycle losses and
    self-critic; 3D + 2D batch of ``--batch`` each) through ``jface.train.parallel.data_parallel`` on a 1-device
    mesh as ``train.py`` runs it (``_full_2dasl_step`` adapts the training library's API);
(c) eval-mode forward latency at batch 1 and 64.

It also measures the machine's fp32 matmul peak (a jitted 2048^2 ``jnp.dot``, best of 10) and prints each
step's achieved GFLOP/s as a fraction of it. FLOPs: XLA's ``cost_analysis()`` of the compiled step, and the
usual estimate 3 x forward MACs x 2 (``jface.models.count_macs``; convs and dense layers only).

XLA flags must be set before jax is imported, so argv is parsed first and ``XLA_FLAGS`` is set from
``--xla_flags_preset`` (+ ``--xla_flags``) before the first ``import jax``.

``--ab`` times two layer settings of the library's model alternately in one process (A: ``--ab_a``, default
the plain flax layers; B: ``--conv1x1`` / ``--bn``, default the library's); ``--verify`` compares their train-mode
outputs, batch stats and gradients with each other and with a float64 evaluation.

Times are medians (and minima) of ``--steps`` calls after warm-up, with ``block_until_ready``. Other processes
on the 2 cores inflate them: the 1-minute load average is printed next to each number.

Output: one line per measurement; then ``torch images/s: N`` and ``jax/torch ratio: R`` (when PyTorch ran);
the LAST line is ``train_step images/s: <number>`` for (a).
"""
from __future__ import annotations

import argparse
import os
import pathlib
import re
import statistics
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
PEER = ROOT.parent / "shared" / "peers" / "peer_torch_bench.py"
DEFAULT_TORCH_PYTHON = "/tmp/torch/bin/python"


def _full_2dasl_step(config, face, batch3d: dict, batch2d: dict):
  """Adapter to the training library (its API moves; keep every call to it here).

  -> (step, args): ``step(*args)`` runs one full 2DASL train step on a 1-device 'data' mesh, returning
  ``(new_state, metrics)``; ``args[0]`` is the state (donated).
  """
  from jface import methods
  from jface.train import parallel
  mesh = parallel.make_mesh(1)
  method = methods.of_config(config)
  mods = method.build(config)
  state = parallel.replicate(method.init_state(config, mods), mesh)
  step = parallel.data_parallel(method.make_train_step(config, mods), mesh, 2, 1)
  batches = {"train_3d": parallel.shard_batch(batch3d, mesh), "train_2d": parallel.shard_batch(batch2d, mesh)}
  return step, (state, parallel.replicate(face, mesh), batches)


sys.path.insert(0, str(ROOT))
from jface.runtime import XLA_CPU_FLAGS  # noqa: E402  (imports neither numpy nor jax)

YNN = "--xla_cpu_experimental_ynn_fusion_type="
XLA_PRESETS = {
    "default": "",  # jax 0.10.2: most convolutions and dots go to YNNPACK
    "ynn_individual_conv": YNN + "-individual_convolution",  # convolutions to XLA's Eigen kernels
    "ynn_individual_conv_dot": YNN + "-individual_convolution,-individual_dot",  # convolutions and dots to Eigen
    "jface": XLA_CPU_FLAGS,  # what train.py / evaluate.py / predict.py set (jface.runtime): the default
}
BEST_XLA_PRESET = "jface"
PLAIN = {"conv1x1": "conv", "bn": "flax"}  # the plain flax layers


def parse_args(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--model", default=None, help="jface.models.build_regressor name (default resnet50; resnet18 "
                                                 "with --quick)")
  ap.add_argument("--batch", type=int, default=32, help="regressor-only batch; also each of the 2 full-step batches")
  ap.add_argument("--steps", type=int, default=8, help="timed regressor-only steps per jax round (median)")
  ap.add_argument("--full", action="store_true", help="also time (b), the full 2DASL step (off by default)")
  ap.add_argument("--full_steps", type=int, default=3, help="timed full 2DASL steps")
  ap.add_argument("--latency_runs", type=int, default=5, help="timed forward calls per latency batch size")
  ap.add_argument("--xla_flags_preset", default=BEST_XLA_PRESET, choices=sorted(XLA_PRESETS))
  ap.add_argument("--xla_flags", default="", help="extra XLA flags appended to the preset's")
  ap.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"),
                  help="computation dtype (params stay float32)")
  ap.add_argument("--conv1x1", default=None, choices=("conv", "dot"),
                  help="the model's conv1x1 option: 1x1 convolutions as nn.Conv or as GEMMs (default: the "
                       "library's)")
  ap.add_argument("--bn", default=None, choices=("flax", "fused"),
                  help="the model's bn option: nn.BatchNorm or FusedBatchNorm (default: the library's)")
  ap.add_argument("--torch_python", default=None,
                  help=f"python with torch for the side-by-side PyTorch run of {PEER.name} (default "
                       f"{DEFAULT_TORCH_PYTHON} if it exists; 'none' to skip)")
  ap.add_argument("--torch_steps", type=int, default=None, help="timed PyTorch steps (default: as --steps)")
  ap.add_argument("--skip_latency", action="store_true", help="skip (c), the forward latencies")
  ap.add_argument("--verify", action="store_true",
                  help="compare --ab_a with --conv1x1/--bn and a float64 evaluation (train-mode outputs, batch "
                       "stats, gradients), then exit")
  ap.add_argument("--ab", action="store_true",
                  help="interleaved A/B of --ab_a against --conv1x1/--bn (regressor step), then exit")
  ap.add_argument("--ab_a", default="conv,flax",
                  help="arm A of --ab / --verify as CONV1X1,BN (default conv,flax: the plain flax layers)")
  ap.add_argument("--profile", default="", help="write a jax.profiler trace of 2 regressor steps to this folder "
                                                "and print the ops that take the most time")
  ap.add_argument("--quick", action="store_true",
                  help="smoke run: narrow nets (8 filters; resnet18 unless --model), batch 4, 2 steps, no PyTorch "
                       "unless --torch_python is given (then 1 step); numbers are meaningless")
  ap.add_argument("--bfm_dir", default=str(ROOT.parent / "shared" / "data" / "3dmm"),
                  help="3DDFA-format 3DMM for the full step (a random model of the same shapes if absent)")
  args = ap.parse_args(argv)
  if args.model is None:
    args.model = "resnet18" if args.quick else "resnet50"
  if args.quick:
    args.batch, args.steps, args.full_steps, args.latency_runs = min(args.batch, 4), 2, 1, 1
    args.torch_steps = 1 if args.torch_steps is None else args.torch_steps
  if args.torch_steps is None:
    args.torch_steps = args.steps
  if args.torch_python is None and not args.quick and os.path.exists(DEFAULT_TORCH_PYTHON):
    args.torch_python = DEFAULT_TORCH_PYTHON
  if args.torch_python in ("", "none"):
    args.torch_python = None
  a = args.ab_a.split(",")
  if len(a) != 2 or a[0] not in ("conv", "dot") or a[1] not in ("flax", "fused"):
    ap.error(f"--ab_a must be CONV1X1,BN with CONV1X1 in conv|dot and BN in flax|fused, got {args.ab_a!r}")
  args.ab_a = {"conv1x1": a[0], "bn": a[1]}
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
  """-> (list of n wall times s, load average before, after, process CPU s per call) of ``n`` calls of ``fn``
  after ``warmup`` calls. CPU time (all threads) is less sensitive to other processes than wall time."""
  for _ in range(warmup):
    fn()
  la0, c0 = load1(), time.process_time()
  ts = []
  for _ in range(n):
    t0 = time.perf_counter()
    fn()
    ts.append(time.perf_counter() - t0)
  return ts, la0, load1(), (time.process_time() - c0) / n


# ------------------------------------------------------------------------------------------ pieces

def layer_kw(args) -> dict:
  """The layer options given on the command line (none: the library's defaults)."""
  return {k: v for k, v in (("conv1x1", args.conv1x1), ("bn", args.bn)) if v is not None}


def build_model(args, bn_axis_name=None, **layer_options):
  """``jface.models.build_regressor`` as a user calls it (``layer_options`` only when given)."""
  import jax.numpy as jnp
  from jface import models
  kw = {"num_filters": 8} if args.quick and args.model.startswith("resnet") else {}
  return models.build_regressor(args.model, in_channels=4, dtype=jnp.dtype(args.dtype), bn_axis_name=bn_axis_name,
                                **kw, **layer_options)


def describe(model) -> str:
  fields = [f"{k}={getattr(model, k)!r}" for k in ("conv1x1", "bn") if hasattr(model, k)]
  return f"{type(model).__name__}({', '.join(fields) or 'no layer options'})"


def matmul_peak(n: int = 2048, reps: int = 10):
  import jax
  import jax.numpy as jnp
  a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
  b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
  f = jax.jit(jnp.dot)
  ts, la0, _, _ = timed(lambda: f(a, b).block_until_ready(), reps, warmup=2)
  return 2 * n ** 3 / min(ts) / 1e9, 2 * n ** 3 / statistics.median(ts) / 1e9, la0


def flops_of(compiled) -> float:
  ca = compiled.cost_analysis()
  if isinstance(ca, (list, tuple)):
    ca = ca[0]
  return float(ca.get("flops", float("nan"))) if ca else float("nan")


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


class RegressorBench:
  """The compiled regressor-only step (a) of the library's model; ``round()`` times ``--steps`` more steps."""

  def __init__(self, args, macs_per_image: int, peak: float, **layer_options):
    model = build_model(args, **layer_options)
    self.args, self.peak, self.desc = args, peak, describe(model)
    init, step, (self.x, self.y) = regressor_step_fns(args, model)
    self.state = init()
    t0 = time.perf_counter()
    self.compiled = step.lower(self.state, self.x, self.y).compile()
    self.t_compile = time.perf_counter() - t0
    self.xla_flops = flops_of(self.compiled)
    self.est_flops = 3 * 2 * macs_per_image * args.batch
    self.times = []
    self.warm = False

  def step(self):
    import jax
    self.state, loss = self.compiled(self.state, self.x, self.y)
    jax.block_until_ready(loss)

  def round(self, label: str) -> float:
    args = self.args
    ts, la0, la1, cpu = timed(self.step, args.steps, warmup=0 if self.warm else 2)
    self.warm = True
    self.times += ts
    med = statistics.median(ts)
    print(f"(a) {label}: {args.model} {self.desc} batch {args.batch} {args.dtype}: median {med * 1e3:.0f} ms "
          f"(min {min(ts) * 1e3:.0f} ms) over {args.steps} steps = {args.batch / med:.2f} images/s, "
          f"load {la0:.2f}->{la1:.2f}, CPU {cpu * 1e3:.0f} ms/step")
    return args.batch / med

  def summary(self) -> float:
    args, med = self.args, statistics.median(self.times)
    print(f"(a) compile {self.t_compile:.1f} s; FLOPs/step: XLA cost analysis {self.xla_flops / 1e9:.1f} G, 3x fwd "
          f"MACs x2 {self.est_flops / 1e9:.1f} G; achieved {self.est_flops / med / 1e9:.1f} GFLOP/s (estimate) = "
          f"{self.est_flops / med / 1e9 / self.peak:.1%} of the matmul peak "
          f"({self.xla_flops / med / 1e9 / self.peak:.1%} with XLA's count)")
    ips = args.batch / med
    print(f"(a) images/s: {ips:.2f} (median of all {len(self.times)} steps), {args.batch / min(self.times):.2f} "
          f"(best step), load {load1():.2f}")
    return ips


def torch_peer(args):
  """Runs the PyTorch peer once; -> (images/s or None, one-line description)."""
  if not PEER.exists():
    return None, f"PyTorch peer not found at {PEER}"
  variant = {"resnet50": "2dasl", "resnet50_standard": "torchvision"}.get(args.model)
  caveat = ""
  if variant is None or args.batch != 32 or args.dtype != "float32" or args.quick:
    variant = variant or "2dasl"
    caveat = (f" [NOT comparable: the peer always runs ResNet-50 ({variant}), batch 32, float32; this run is "
              f"{args.model}, batch {args.batch}, {args.dtype}{', --quick' if args.quick else ''}]")
  cmd = [args.torch_python, str(PEER), variant, str(args.torch_steps)]
  la0, t0 = load1(), time.perf_counter()
  try:
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)
  except (OSError, subprocess.TimeoutExpired) as e:
    return None, f"PyTorch peer failed to run: {e}"
  wall, la1 = time.perf_counter() - t0, load1()
  m = re.search(r"torch images/s:\s*([0-9.eE+-]+)", res.stdout)
  if res.returncode != 0 or not m:
    return None, f"PyTorch peer failed (rc {res.returncode}): {(res.stderr or res.stdout).strip()[-500:]}"
  ver = subprocess.run([args.torch_python, "-c", "import torch; print(torch.__version__)"], capture_output=True,
                       text=True).stdout.strip() or "?"
  ips = float(m.group(1))
  return ips, (f"(t) PyTorch {ver} eager ({PEER.name} {variant} {args.torch_steps}, 2 threads): {ips:.2f} images/s "
               f"(median), load {la0:.2f}->{la1:.2f}, wall {wall:.0f} s{caveat}")


def fake_batch(face, n: int, seed: int, with_params: bool) -> dict:
  """A pipeline-like batch (numpy): uint8 120 x 120 RGB, params, landmarks consistent with the params."""
  import jax.numpy as jnp
  import numpy as np
  from jface.core import geometry
  rng = np.random.default_rng(seed)
  pw = (rng.normal(size=(n, 62)) * 0.3).astype(np.float32)
  lm = np.asarray(geometry.landmarks2d(face, jnp.asarray(pw)), np.float32)
  return {"image": rng.integers(0, 256, size=(n, 120, 120, 3), dtype=np.uint8),
          "params": pw if with_params else np.zeros_like(pw), "landmarks": lm, "flm_landmarks": lm,
          "landmarks_mask": rng.uniform(size=(n, 68)) > 0.1}


def bench_full(args, peak: float):
  import jax
  from _face import load_face
  from jface import configs
  config = configs.load("2dasl")
  config.model, config.dtype = args.model, args.dtype
  config.batch_size = config.batch_size_2d = args.batch
  if args.quick:
    config.model_kwargs = {"num_filters": 8} if args.model.startswith("resnet") else {}
    config.encoder_kwargs = {"channels": (8, 8, 8, 8, 8, 8)}
  if layer_kw(args):
    config.model_kwargs = {**dict(getattr(config, "model_kwargs", None) or {}), **layer_kw(args)}
  face, desc = load_face(args.bfm_dir)
  step, step_args = _full_2dasl_step(config, face, fake_batch(face, args.batch, 1, True),
                                     fake_batch(face, args.batch, 2, False))
  t0 = time.perf_counter()
  compiled = step.lower(*step_args).compile()
  t_compile = time.perf_counter() - t0
  xla_flops = flops_of(compiled)
  box = list(step_args)

  def run():
    box[0], metrics = compiled(*box)
    jax.block_until_ready(metrics)

  ts, la0, la1, cpu = timed(run, args.full_steps, warmup=1)
  med, n_img = statistics.median(ts), 2 * args.batch
  print(f"(b) full 2DASL step (variant {config.variant}, {args.model}, {args.batch}+{args.batch}, {args.dtype}, "
        f"{desc}): compile {t_compile:.1f} s, median {med:.2f} s (min {min(ts):.2f} s) over {args.full_steps} "
        f"steps, load {la0:.2f}->{la1:.2f}, CPU {cpu:.2f} s/step")
  print(f"(b) XLA FLOPs/step {xla_flops / 1e9:.1f} G = {xla_flops / med / 1e9:.1f} GFLOP/s = "
        f"{xla_flops / med / 1e9 / peak:.1%} of the matmul peak")
  print(f"(b) full step images/s: {n_img / med:.2f} ({n_img} images per step; {1 / med:.3f} steps/s)")


def bench_latency(args):
  import jax
  import jax.numpy as jnp
  import numpy as np
  model = build_model(args, **layer_kw(args))
  v = jax.jit(lambda k: model.init(k, jnp.zeros((2, 120, 120, 4)), train=False))(jax.random.key(0))
  fwd = jax.jit(lambda v, x: model.apply(v, x, train=False))
  for b in (1, 64):
    x = jnp.asarray(np.random.default_rng(b).uniform(-1, 1, size=(b, 120, 120, 4)).astype(np.float32))
    n = args.latency_runs if b > 1 else max(args.latency_runs, 1 if args.quick else 20)
    ts, la0, la1, cpu = timed(lambda: fwd(v, x).block_until_ready(), n, warmup=1)
    med = statistics.median(ts)
    print(f"(c) forward latency {args.model} eval batch {b}: median {med * 1e3:.1f} ms (min {min(ts) * 1e3:.1f} ms) "
          f"= {b / med:.1f} images/s, load {la0:.2f}->{la1:.2f}, CPU {cpu * 1e3:.1f} ms")


def verify(args):
  """Train-mode outputs, new batch stats and gradients of arm A (``--ab_a``) and arm B (``--conv1x1`` / ``--bn``)
  on the same variables: both in float32, each compared with a float64 evaluation of A (B should be about as close
  to it as A: float32 rounding only), and B in float64 against A in float64 (the same math: ~1e-12)."""
  import jax
  import jax.numpy as jnp
  import numpy as np
  _, _, (x, y) = regressor_step_fns(args, build_model(args))
  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
  v32 = jax.jit(lambda k: build_model(args).init(k, jnp.zeros((2, 120, 120, 4), jnp.float32), train=False))(
      jax.random.key(0))

  def run(dtype, **layer_options):
    model = build_model(args, **layer_options).clone(dtype=dtype)
    v = jax.tree_util.tree_map(lambda a: jnp.asarray(a, dtype), v32)

    def loss_fn(p, bs, x, y):
      out, new = model.apply({"params": p, "batch_stats": bs}, x, train=True, mutable=["batch_stats"])
      return jnp.mean(jnp.square(out - y)), (out, new["batch_stats"])

    (_, aux), g = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(v["params"], v["batch_stats"],
                                                                      jnp.asarray(x, dtype), jnp.asarray(y, dtype))
    return jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), jax.device_get((aux[0], aux[1], g))), model

  with jax.enable_x64(True):
    ref64, _ = run(jnp.float64, **args.ab_a)
    b64, _ = run(jnp.float64, **layer_kw(args))
  a32, model_a = run(jnp.float32, **args.ab_a)
  b32, model_b = run(jnp.float32, **layer_kw(args))
  print(f"verify: A = {describe(model_a)}, B = {describe(model_b)}, {args.model} batch {args.batch}")

  def err(a, b):  # worst leaf of max|a - b| / max|b|
    return max(float(np.max(np.abs(p - q)) / (np.max(np.abs(q)) + 1e-30))
               for p, q in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)))

  def gerr(a, b):  # ||a - b|| / ||b|| over all leaves together
    la, lb = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
    return float(np.sqrt(sum(np.sum((p - q) ** 2) for p, q in zip(la, lb)) / sum(np.sum(q ** 2) for q in lb)))

  for i, name in enumerate(("train output", "batch stats", "gradients")):
    print(f"verify {name}: worst-leaf max|diff|/max|f64|: A f32 {err(a32[i], ref64[i]):.2e}, "
          f"B f32 {err(b32[i], ref64[i]):.2e}; B vs A {err(b32[i], a32[i]):.2e} | "
          f"global ||diff||/||f64||: A {gerr(a32[i], ref64[i]):.2e}, B {gerr(b32[i], ref64[i]):.2e} | "
          f"B vs A in float64 (same math?): {err(b64[i], ref64[i]):.2e}")


def ab_compare(args):
  """Interleaved A/B: the library's model with ``--ab_a`` (default: plain flax layers) against ``--conv1x1`` /
  ``--bn`` (default: the library's), stepping them alternately in one process so that both see the same
  background load. Prints the median per-step wall and process-CPU time of each and the ratio B/A."""
  import jax
  runs = {}
  for name, opts in (("A", args.ab_a), ("B", layer_kw(args))):
    model = build_model(args, **opts)
    init, step, (x, y) = regressor_step_fns(args, model)
    state = init()
    runs[name] = [step.lower(state, x, y).compile(), state, x, y, describe(model)]
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
    print(f"ab {k} {runs[k][4]}: median wall {w * 1e3:.0f} ms, CPU {c * 1e3:.0f} ms per step "
          f"({args.batch / w:.2f} images/s)")
  print(f"ab B/A: wall {med['B'][0] / med['A'][0]:.3f}, CPU {med['B'][1] / med['A'][1]:.3f}; load {load1():.2f}")


def profile(args, folder: str):
  """Traces 2 regressor steps and prints the 25 op names with the most total time (from the perfetto trace)."""
  import collections
  import glob
  import gzip
  import json
  import jax
  init, step, (x, y) = regressor_step_fns(args, build_model(args, **layer_kw(args)))
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

  model = build_model(args, **layer_kw(args))
  print(f"setting: {args.model} {describe(model)} (options given: {layer_kw(args) or 'none, library defaults'}), "
        f"--xla_flags_preset {args.xla_flags_preset} --dtype {args.dtype} --batch {args.batch}")
  print(f"XLA_FLAGS={xla_flags!r}")
  print(f"jax {jax.__version__}, device {jax.devices()[0].device_kind} x{jax.device_count()}, "
        f"{os.cpu_count()} CPUs, load average {' '.join(f'{v:.2f}' for v in os.getloadavg())}"
        + (", QUICK (smoke run, numbers meaningless)" if args.quick else ""))
  if args.verify:
    verify(args)
    return
  if args.ab:
    ab_compare(args)
    return
  if args.profile:
    profile(args, args.profile)
    return
  macs = models.count_macs(model, jax.ShapeDtypeStruct((1, 120, 120, 4), jnp.float32))
  peak, peak_med, la = matmul_peak(512 if args.quick else 2048)
  print(f"fp32 matmul peak (jnp.dot {512 if args.quick else 2048}^2): {peak:.1f} GFLOP/s best, "
        f"{peak_med:.1f} median, load {la:.2f}")
  print(f"{args.model}: {macs / 1e9:.3f} GMAC per 120x120x4 image (forward)")
  if not args.skip_latency:
    bench_latency(args)
  if args.full:
    bench_full(args, peak)
  bench = RegressorBench(args, macs, peak, **layer_kw(args))
  bench.round("jax round 1")
  torch_ips = None
  if args.torch_python:
    torch_ips, line = torch_peer(args)  # between two jax rounds: both see the same background load
    print(line)
    bench.round("jax round 2")
  else:
    print(f"(t) PyTorch side-by-side skipped: no --torch_python ({DEFAULT_TORCH_PYTHON} "
          f"{'ignored with --quick' if args.quick else 'does not exist'})")
  ips = bench.summary()
  if torch_ips:
    print(f"torch images/s: {torch_ips:.2f}")
    print(f"jax/torch ratio: {ips / torch_ips:.3f}")
  print(f"train_step images/s: {ips:.2f}")


if __name__ == "__main__":
  main()
