"""Report writers of an evaluation, apart from the metrics: text table, results.json values, per-image CSV, CED
plot and the best/worst image grid."""
from __future__ import annotations

import csv
import math
import os
from typing import Mapping, Optional, Sequence

import cv2
import numpy as np

from jface.core import crop, render
from jface.data.common import BadExample
from jface.eval import metrics
from jface.eval.data import CROP, EvalData, EvalError


def nan_to_none(x):
  if isinstance(x, dict):
    return {k: nan_to_none(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [nan_to_none(v) for v in x]
  if isinstance(x, (float, np.floating)):
    return None if not math.isfinite(float(x)) else float(x)
  if isinstance(x, np.integer):
    return int(x)
  return x


def _fmt(v: float, w: int = 9) -> str:
  return f"{v:{w}.4f}" if v is not None and np.isfinite(v) else f"{'-':>{w}}"


def format_table(title: str, rows: Sequence[tuple[str, dict]]) -> str:
  """Text table of yaw-bin summaries: one row per (label, summary)."""
  labels = rows[0][1]["labels"]
  head = f"{'metric (%)':<16}" + "".join(f"{lb:>11}" for lb in labels) + f"{'mean':>10}{'overall':>10}" \
      f"{'n':>6}{'failed':>8}"
  lines = [title, head, "-" * len(head)]
  for name, s in rows:
    lines.append(f"{name:<16}" + "".join(_fmt(b, 11) for b in s["bins"]) + _fmt(s["mean_of_bins"], 10)
                 + _fmt(s["overall"], 10) + f"{s['n']:>6}{s['n_failed']:>8}")
  s = rows[0][1]
  lines.append(f"{'images per bin':<16}" + "".join(f"{c:>11}" for c in s["counts"]))
  return "\n".join(lines)


def best_worst_grid(data: EvalData, pred_lm: np.ndarray, errors: np.ndarray, k: int = 8,
                    tile: int = 128) -> Optional[np.ndarray]:
  """(H, W, 3) uint8 RGB: the ``k`` best (top row) and ``k`` worst (bottom row) images by 2D NME, prediction in
  green and ground truth in red on the crops (drawn at ``tile`` px), with name and NME. None without a finite
  error."""
  ok = np.nonzero(np.isfinite(errors))[0]
  if ok.size == 0:
    return None
  order = ok[np.argsort(errors[ok], kind="stable")]
  k = min(k, max(1, len(order) // 2)) if len(order) > 1 else 1
  best, worst = order[:k], order[::-1][:k]
  scale = tile / CROP

  def gt_crop(i):
    if data.dataset == "synthetic":
      return data.gt[i][:, :2], None
    if data.dataset == "aflw":
      pts, vis = metrics.aflw21_from_meta(data.gt[i:i + 1])
      return crop.image_to_crop(np.nan_to_num(pts[0]), data.roi_box[i]), vis[0]
    return crop.image_to_crop(np.swapaxes(data.gt[i], 0, 1)[:, :2], data.roi_box[i]), None

  def one(i):
    try:
      img = data.crop(int(i), tile)
    except (BadExample, ValueError):
      img = np.full((tile, tile, 3), 64, np.uint8)
    g, vis = gt_crop(i)
    pred = pred_lm[i][:, :2]
    if data.dataset == "aflw":
      pred = metrics.pts68_to_aflw21(pred)
    r = max(1.0, tile / 110)
    # (1-based crop coords -> tile coords: keep pixel centres aligned)
    to_tile = lambda p: (np.asarray(p, np.float64) - 0.5) * scale + 0.5
    img = render.draw_landmarks(img, to_tile(g), color=(255, 40, 40), radius=r, mask=vis)
    img = render.draw_landmarks(img, to_tile(pred), color=(40, 255, 40), radius=r)
    img = np.ascontiguousarray(img)
    stem = os.path.splitext(str(data.names[i]))[0]
    stem = "#" + stem[len("synthetic_"):] if stem.startswith("synthetic_") else stem[-10:]
    label = f"{stem} {errors[i]:.2f}%"
    cv2.putText(img, label, (3, 12), cv2.FONT_HERSHEY_SIMPLEX, 0.36, (0, 0, 0), 3, cv2.LINE_AA)
    cv2.putText(img, label, (3, 12), cv2.FONT_HERSHEY_SIMPLEX, 0.36, (255, 255, 255), 1, cv2.LINE_AA)
    return img

  def row(idx, title):
    tiles = [one(i) for i in idx] + [np.zeros((tile, tile, 3), np.uint8)] * (k - len(idx))
    band = np.full((18, tile * k, 3), 255, np.uint8)
    cv2.putText(band, title, (4, 13), cv2.FONT_HERSHEY_SIMPLEX, 0.42, (0, 0, 0), 1, cv2.LINE_AA)
    return np.concatenate([band, np.concatenate(tiles, 1)], 0)

  return np.concatenate([
      row(best, f"best {k} by 2D NME (green: prediction, red: ground truth)"),
      row(worst, f"worst {k} by 2D NME")], 0)


def write_png(path: str, rgb: np.ndarray, colors: int = 256) -> None:
  """RGB PNG; ``colors`` > 0 -> a palette PNG (octree quantised: ~3x smaller for photo grids)."""
  from PIL import Image
  im = Image.fromarray(np.ascontiguousarray(rgb))
  if colors:
    im = im.quantize(colors, method=Image.Quantize.FASTOCTREE)
  try:
    im.save(path, optimize=True)
  except OSError as e:
    raise EvalError(f"cannot write {path}: {e}") from None


def write_csv(path: str, names, yaw, e2, e3, status) -> None:
  f2 = lambda v: "" if v is None or not np.isfinite(v) else f"{v:.6f}"
  with open(path, "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(["name", "yaw", "nme_2d", "nme_3d", "status"])
    for i, name in enumerate(names):
      w.writerow([name, f2(yaw[i]), f2(e2[i]), f2(None if e3 is None else e3[i]), status[i] or "ok"])


def plot_ced(curves: Mapping[str, Sequence[float]], path: str, max_error: float = 10.0,
             title: str | None = None, xlabel: str = "NME (%)") -> str:
  """Writes a PNG of the CED curves ``{name: per-image errors}``; the legend gives each AUC and mean.

  Uses matplotlib's Agg canvas directly (no global backend change). Returns ``path``.
  """
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure
  if not curves:
    raise ValueError("plot_ced: no curves")
  fig = Figure(figsize=(6, 4.5), dpi=100)
  FigureCanvasAgg(fig)
  ax = fig.add_subplot(1, 1, 1)
  for name, errs in curves.items():
    thr, frac = metrics.ced(errs, max_error)
    e = metrics._f64(errs)
    mean = float(e[np.isfinite(e)].mean()) if np.isfinite(e).any() else float("nan")
    ax.plot(thr, frac, label=f"{name} (AUC {metrics.ced_auc(errs, max_error):.3f}, mean {mean:.2f})")
  ax.set_xlim(0, max_error)
  ax.set_ylim(0, 1)
  ax.set_xlabel(xlabel)
  ax.set_ylabel("fraction of images")
  ax.grid(True, alpha=0.4)
  ax.legend(loc="lower right", fontsize=8)
  if title:
    ax.set_title(title)
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig.savefig(path)
  return path
