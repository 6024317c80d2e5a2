"""Benchmark: the 2DASL losses of ``jface.methods.twodasl.losses``, jitted JAX vs a plain Python-loop numpy version, on CPU.

Two cases at batch ``--batch`` (default 32):

(a) L3d (``weighted_coefficient_loss``): 62 substituted-coefficient landmark projections per sample;
(b) the full 2DASL regressor loss of paper Eq. 1 with ``PAPER_LAMBDAS``: L3d on a 3D-annotated batch plus
    L2d-con, L3d-con and Lcyc on an in-the-wild batch (forward- and backward-pass predictions) plus both
    self-critic terms (``critic_loss`` and ``adversarial_loss``) on fixed random logits.

JAX: ``jax.jit(jax.value_and_grad(loss))`` w.r.t. the predictions, i.e. forward AND backward;
numpy: forward only, looping over the samples (and, for L3d, over the 62 coefficients) with float64 math.
The numpy side therefore does less work; the reported speedup is conservative. Both print their loss value
as a cross-check. Times are medians of ``--runs`` calls after one warm-up call, with ``block_until_ready``.

The 3DMM is the real BFM from ``--bfm_dir`` (default ``<repo>/../shared/data/3dmm``) when it exists, else
``jface.core.load.load_model("synthetic")``, else a random model of the BFM's shapes (the output says which).

Output: one line per timing; the LAST line is ``speedup: <numpy loop time / jitted time>`` for case (a),
the L3d loss (case (b)'s ratio is printed on the line before it as ``speedup_full``).
"""
from __future__ import annotations

import argparse
import os
import sys
import pathlib
import statistics
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from _face import load_face  # noqa: E402


# ------------------------------------------------------------------------------- numpy reference

class NumpyLosses:
  """The same math as jface.methods.twodasl.losses, written as plain Python loops over samples, points and coefficients."""

  def __init__(self, model):
    self.mean = np.asarray(model.param_mean, np.float64)
    self.std = np.asarray(model.param_std, np.float64)
    self.u = np.asarray(model.u_base, np.float64)
    self.ws = np.asarray(model.w_shp_base, np.float64)
    self.we = np.asarray(model.w_exp_base, np.float64)
    self.crop = model.crop_size

  def landmarks3d(self, pw):  # (62,) -> (68, 3)
    p = pw * self.std + self.mean
    P = p[:12].reshape(3, 4)
    s = (self.u + self.ws @ p[12:52] + self.we @ p[52:]).reshape(-1, 3).T
    v = P[:, :3] @ s + P[:, 3:]
    v[1] = self.crop + 1 - v[1]
    return v.T

  def l3d(self, pred, gt):
    total = 0.0
    for b in range(pred.shape[0]):
      h_gt = self.landmarks3d(gt[b])[:, :2]
      d = np.zeros(62)
      for i in range(62):
        mixed = gt[b].copy()
        mixed[i] = pred[b, i]
        d[i] = np.linalg.norm(self.landmarks3d(mixed)[:, :2] - h_gt)
      w = d / d.sum() if d.sum() > 0 else d
      total += float(np.sum(w * (gt[b] - pred[b]) ** 2))
    return total / pred.shape[0]

  @staticmethod
  def point_loss(x, y, mask, weights):
    total, n = 0.0, 0
    for b in range(x.shape[0]):
      num = den = 0.0
      for i in range(x.shape[1]):
        if mask[b, i] and np.all(np.isfinite(x[b, i])) and np.all(np.isfinite(y[b, i])):
          num += weights[i] * np.linalg.norm(x[b, i] - y[b, i])
          den += weights[i]
      if den > 0:
        total += num / den
        n += 1
    return total / max(n, 1)

  @staticmethod
  def subset(pts, mask, subset):
    idx = list(subset.indices)
    p, m = pts[:, idx], mask[:, idx]
    if subset.add_mouth_centre:
      p = np.concatenate([p, (pts[:, 48:49] + pts[:, 54:55]) / 2], 1)
      m = np.concatenate([m, mask[:, 48:49] & mask[:, 54:55]], 1)
    return p, m

  def full(self, pred, gt, fwd, bwd, x2d, mask, real_logits, fake_logits, subset, lambdas):
    l3d = self.l3d(pred, gt)
    x3 = np.stack([self.landmarks3d(p) for p in fwd])
    xh3 = np.stack([self.landmarks3d(p) for p in bwd])
    xs, ms = self.subset(x2d, mask, subset)
    ys, _ = self.subset(x3[..., :2], np.ones(mask.shape, bool), subset)
    yhs, _ = self.subset(xh3[..., :2], np.ones(mask.shape, bool), subset)
    l2d = self.point_loss(xs, ys, ms, subset.weights)
    cyc = self.point_loss(xs, yhs, ms, subset.weights)
    l3c = self.point_loss(x3, xh3, np.ones(mask.shape, bool), [1.0] * 68)
    bce = lambda z, t: np.mean([np.logaddexp(0, -v) if t else np.logaddexp(0, v) for v in z])
    critic = bce(real_logits, 1) + bce(fake_logits, 0)
    adv = bce(fake_logits, 1)
    total = (l3d + lambdas["l2d_con"] * l2d + lambdas["l3d_con"] * l3c + lambdas["cyc"] * cyc
             + lambdas["sc"] * adv)
    return total + critic


# ------------------------------------------------------------------------------------------ main

def median_time(fn, runs):
  fn()  # warm-up (compilation for the jitted side)
  ts = []
  for _ in range(runs):
    t0 = time.perf_counter()
    fn()
    ts.append(time.perf_counter() - t0)
  return statistics.median(ts)


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--bfm_dir", default=str(ROOT.parent / "shared" / "data" / "3dmm"))
  ap.add_argument("--batch", type=int, default=32)
  ap.add_argument("--runs", type=int, default=20, help="timed jitted calls (median)")
  ap.add_argument("--loop_runs", type=int, default=3, help="timed numpy-loop calls (median)")
  args = ap.parse_args()

  import jax
  import jax.numpy as jnp
  from jface.core import geometry
  from jface.methods.twodasl import losses as L

  model, desc = load_face(args.bfm_dir)
  print(f"model: {desc}")
  print(f"device: {jax.devices()[0].platform}, batch {args.batch}, jax {jax.__version__}")

  rng = np.random.default_rng(0)
  n = args.batch
  gt = (rng.normal(size=(n, 62)) * 0.5).astype(np.float32)
  pred = (gt + rng.normal(size=(n, 62)) * 0.2).astype(np.float32)
  wild = (rng.normal(size=(n, 62)) * 0.5).astype(np.float32)
  fwd = (wild + rng.normal(size=(n, 62)) * 0.1).astype(np.float32)
  bwd = (fwd + rng.normal(size=(n, 62)) * 0.05).astype(np.float32)
  x2d = np.asarray(geometry.landmarks2d(model, jnp.asarray(wild))) + rng.normal(size=(n, 68, 2)).astype(np.float32)
  mask = rng.uniform(size=(n, 68)) > 0.05
  real_logits = rng.normal(size=(n,)).astype(np.float32)
  fake_logits = rng.normal(size=(n,)).astype(np.float32)
  subset, lambdas = L.DEFAULT_SUBSET_18, L.PAPER_LAMBDAS

  # (a) L3d
  l3d_vg = jax.jit(jax.value_and_grad(L.weighted_coefficient_loss, argnums=1))
  jargs = (model, jnp.asarray(pred), jnp.asarray(gt))
  t_jax_a = median_time(lambda: jax.block_until_ready(l3d_vg(*jargs)), args.runs)
  ref = NumpyLosses(model)
  p64, g64 = pred.astype(np.float64), gt.astype(np.float64)
  t_np_a = median_time(lambda: ref.l3d(p64, g64), args.loop_runs)
  v_jax_a, v_np_a = float(l3d_vg(*jargs)[0]), ref.l3d(p64, g64)

  # (b) full 2DASL regressor loss (+ the critic's loss, as in one combined training step)
  def full_loss(pred, fwd, bwd, gt, x2d, mask, real_logits, fake_logits):
    terms = dict(l3d=L.weighted_coefficient_loss(model, pred, gt),
                 **L.cycle_losses(model, fwd, bwd, x2d, mask, subset),
                 sc=L.adversarial_loss(fake_logits))
    return L.combine(terms, lambdas) + L.critic_loss(real_logits, fake_logits)

  full_vg = jax.jit(jax.value_and_grad(full_loss, argnums=(0, 1, 2)))
  fargs = tuple(jnp.asarray(a) for a in (pred, fwd, bwd, gt, x2d, mask, real_logits, fake_logits))
  t_jax_b = median_time(lambda: jax.block_until_ready(full_vg(*fargs)), args.runs)
  nargs = (p64, g64, fwd.astype(np.float64), bwd.astype(np.float64), x2d.astype(np.float64), mask,
           real_logits.astype(np.float64), fake_logits.astype(np.float64), subset, lambdas)
  t_np_b = median_time(lambda: ref.full(*nargs), args.loop_runs)
  v_jax_b, v_np_b = float(full_vg(*fargs)[0]), ref.full(*nargs)

  print(f"(a) L3d value: jax {v_jax_a:.6g}, numpy {v_np_a:.6g}")
  print(f"(a) L3d  jitted value_and_grad: {t_jax_a * 1e3:.3f} ms   numpy loop (forward only): {t_np_a * 1e3:.1f} ms")
  print(f"(b) full value: jax {v_jax_b:.6g}, numpy {v_np_b:.6g}")
  print(f"(b) full jitted value_and_grad: {t_jax_b * 1e3:.3f} ms   numpy loop (forward only): {t_np_b * 1e3:.1f} ms")
  print(f"speedup_full: {t_np_b / t_jax_b:.1f}")
  print(f"speedup: {t_np_a / t_jax_a:.1f}")


if __name__ == "__main__":
  main()
