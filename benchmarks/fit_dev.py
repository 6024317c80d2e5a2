"""NME of ``jface.core.fitting.fit_landmarks`` on AFLW2000-3D (the 68-point 2D protocol of 3DDFA / 2DASL).

Fits the 62 params to the FAN landmarks of the crops (``fan_pts68_crop``, the inputs 2DASL used at test time) and
to the GT landmarks themselves (the fitting floor: the 40/10-component basis against GT made with 199/29), and
prints NME (percent) per |yaw| bin [0,30], (30,60], (60,90+] and the mean of the bins, next to the oracle anchors
(FAN landmarks alone, released 2DASL params) computed with the same code (``jface.eval.metrics.aflw2000_nme``). Also
prints the fit speed. Last line: ``fit NME (FAN input): <mean of bins>``.

  python benchmarks/fit_dev.py --data_dir ../shared/data/aflw2000_3d_dev --bfm_dir ../shared/data/3dmm

The defaults (priors, jaw weight) were chosen on ``aflw2000_3d_train``; run with ``--data_dir`` on it to see.
"""
from __future__ import annotations

import argparse
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from jface.core import crop
from jface.core import bfm, fitting, geometry
from jface.eval import metrics

_SHARED = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "data")


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--data_dir", default=os.path.join(_SHARED, "aflw2000_3d_dev"))
  ap.add_argument("--bfm_dir", default=os.path.join(_SHARED, "3dmm"))
  ap.add_argument("--n_iters", type=int, default=None, help="default: fit_landmarks' default")
  ap.add_argument("--n_alt", type=int, default=None, help="default: fit_landmarks' default")
  ap.add_argument("--shape_prior", type=float, default=None, help="default: fit_landmarks' default")
  ap.add_argument("--exp_prior", type=float, default=None, help="default: fit_landmarks' default")
  ap.add_argument("--jaw_weight", type=float, default=0.03,
                  help="weight of the 17 jaw-line FAN points (a detector's contour is unreliable; chosen on the "
                       "train split); the GT-input fit always uses uniform weights")
  ap.add_argument("--batch", type=int, default=200)
  ap.add_argument("--repeats", type=int, default=3, help="timing: best of this many runs")
  args = ap.parse_args(argv)

  meta_path = os.path.join(args.data_dir, "meta.npz")
  if not os.path.exists(meta_path):
    raise SystemExit(f"missing {meta_path}: pass --data_dir (an aflw2000_3d_* folder with meta.npz)")
  meta = np.load(meta_path)
  model = bfm.load_3ddfa(args.bfm_dir, dense=False)
  roi, yaw, names, gt = meta["roi_box"], meta["yaw"], meta["names"], meta["pts68"]
  n = len(yaw)
  kw = {k: getattr(args, k) for k in ("n_iters", "n_alt", "shape_prior", "exp_prior")
        if getattr(args, k) is not None}

  def fit(pts_crop, weights=None):
    pws, errs = [], []
    for i in range(0, len(pts_crop), args.batch):
      pw, info = fitting.fit_landmarks(model, pts_crop[i:i + args.batch], None, weights=weights,
                                       return_info=True, **kw)
      pws.append(np.asarray(pw))
      errs.append(np.asarray(info["reproj_err"]))
    return np.concatenate(pws), np.concatenate(errs)

  def timed(pts_crop, weights=None):
    fit(pts_crop[:args.batch], weights)  # compile
    best = float("inf")
    for _ in range(args.repeats):
      t0 = time.perf_counter()
      out = fit(pts_crop, weights)
      best = min(best, time.perf_counter() - t0)
    return out, n / best

  rows = []

  def report(name, pred_crop, extra=""):
    s = metrics.aflw2000_nme(np.asarray(pred_crop), roi, gt, yaw, names)["summary2d"]
    rows.append((name, s["bins"], s["mean_of_bins"], extra))
    return s["mean_of_bins"]

  fan = meta["fan_pts68_crop"].astype(np.float32)
  report("FAN landmarks alone (dev: 5.4962)", fan)
  if "released_2dasl_params" in meta:
    rel = jnp.asarray(meta["released_2dasl_params"], jnp.float32)
    report("released 2DASL params (dev: 3.4631)", geometry.landmarks2d(model, rel))

  gt_crop = np.asarray(crop.image_to_crop(jnp.asarray(np.swapaxes(gt[:, :2], 1, 2), jnp.float32),
                                              jnp.asarray(roi, jnp.float32)))
  (pw_gt, err_gt), speed_gt = timed(gt_crop)
  report("fit to GT landmarks (floor)", geometry.landmarks2d(model, pw_gt), f"reproj {np.nanmean(err_gt):.3f} px")
  pw_uni, err_uni = fit(fan)
  report("fit to FAN, uniform weights", geometry.landmarks2d(model, pw_uni), f"reproj {np.nanmean(err_uni):.3f} px")
  (pw_fan, err_fan), speed_fan = timed(fan, fitting.contour_weights(args.jaw_weight))
  mean_fan = report(f"fit to FAN, jaw weight {args.jaw_weight:g}", geometry.landmarks2d(model, pw_fan),
                    f"reproj {np.nanmean(err_fan):.3f} px")

  print(f"{os.path.basename(os.path.normpath(args.data_dir))}: {n} images, fit {kw or 'defaults'}, "
        f"{int(np.sum(~np.isfinite(pw_fan).all(-1)))} failed")
  print(f"{'NME (%), 68 points, 2D':38s} {'[0,30]':>8s} {'(30,60]':>8s} {'(60,90]':>8s} {'mean':>8s}")
  for name, bins, mean, extra in rows:
    print(f"{name:38s} " + " ".join(f"{b:8.4f}" for b in bins) + f" {mean:8.4f}  {extra}")
  print(f"fit speed ({jax.default_backend()}, batch {args.batch}, best of {args.repeats}): "
        f"{speed_gt:.0f} images/s (GT input), {speed_fan:.0f} images/s (FAN input)")
  print(f"fit NME (FAN input): {mean_fan:.4f}")


if __name__ == "__main__":
  main()
