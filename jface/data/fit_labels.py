"""Pseudo-3D labels for 2D-only images: the 62 whitened params fitted to each image's landmarks, in chunks.

  python -m jface.data.fit_labels --data aflw_wild:../shared/data/aflw_wild --out DIR [--landmarks FILE68]
  python -m jface.data.fit_labels mesh --data SPEC --out FILE.npz       # face-mesh 68 points of stored crops
  python -m jface.data.fit_labels points21 --data DIR --out FILE.npz    # an AFLW2000-3D split's .mat pt2d
  python -m jface.data.fit_labels tune --data ../shared/data/aflw2000_3d_train [--landmarks FILE]  # priors

Points (crop coordinates, ``jface.data.common``), per image, from up to two sets, each with a weight and a weight
factor for the 17 jaw-line points (``fitting.contour_weights``):

* the source's own ``landmarks`` / ``landmarks_mask`` (``aflw_wild``: the visible AFLW-21 points on their iBUG-68
  indices; ``crops``: FAN points), or instead a landmarks file ``--points``: ``--points_weight`` (0 = unused),
  ``--points_jaw_weight``;
* a landmarks file (``--landmarks``, ``wild.read_landmarks_file``: names + (N, 68, 2) ORIGINAL-image points, NaN
  = unknown; e.g. the output of ``mesh``), mapped into the crop with each example's ``roi_box``:
  ``--landmarks_weight``, ``--landmarks_jaw_weight``.

Where both give an index, the fit sees their weighted mean with the summed weight (the same least-squares cost up
to a constant). Points outside ``[-0.5, 1.5] x crop size`` are dropped as annotation errors; images with fewer
than ``--min_points`` usable indices, unreadable images and non-finite fits are skipped and counted.

Defaults, chosen with ``tune`` on aflw2000_3d_train (AFLW-21 points from the ``.mat`` ``pt2d``, face-mesh points
from ``mesh``), scored by the dev protocol's 2D NME (68 points, mean of the |yaw| bins): shape / expression priors
0.7 / 7 and a Cauchy loss of scale 8 px (21 points: 3.360 on train, within 0.04 for shape 0.5-1, exp 5-10, robust
0-16); face-mesh points at weight 0.01 with the 21 points (2.986; 0.1 gives 3.27: the mesh hurts profiles).
Measured on dev (``evaluate.py``, 2D NME mean of bins): 21 points 3.209, 21 points + face mesh 2.887, FAN points
(``--points_jaw_weight 0.03``) 3.703, face mesh alone 4.794 (179 of 200 meshes), the mean face 24.707.

Output folder ``DIR``:

* ``config.json``: data spec and paths (absolute), model, fit settings, chunk size, number of images;
* ``chunks/chunk_NNNNN.npz``: source rows ``[k C, (k + 1) C)`` (``C`` = ``--chunk``), written atomically as they
  finish (a rerun with the same settings skips finished chunks; other settings are refused);
* ``labels.npz`` once all chunks exist: the chunks merged (a valid ``evaluate.py --predictions`` file);
* ``summary.json``: images fitted / skipped by reason, point counts (``invisible_21``: AFLW points marked x = -1;
  ``outside``: dropped as outside the crop; ``file_unknown``: NaN points of the files; ``file_missing``: images
  absent from a file), residual percentiles, wall clock (the chunks' sum over all runs: reading + fitting).

Arrays of a chunk / ``labels.npz`` (n rows, source order): ``names`` (n,) str, ``params`` (n, 62) float32
whitened (NaN when not fitted), ``residual`` (n,) float32 pixels of the 120 px crop: the weighted mean distance
of the fitted landmarks to the points used (with the default weights, ~ to the AFLW-21 points), ``n_points`` (n,)
int32 indices used, ``angles`` (n, 3) (yaw, pitch, roll) degrees, ``status`` (n,) int8 (``STATUS``);
``labels.npz`` adds ``param_mean`` / ``param_std`` (62,) of the whitening.

Reader: the data spec ``fitted:DIR[:MAX_RESIDUAL]`` (``FittedSource``): the examples of the fitted data spec with
``params`` / ``has_params`` True where the fit succeeded (and ``residual <= MAX_RESIDUAL``), plus ``fit_residual``.
"""
from __future__ import annotations

import argparse
import glob
import json
import logging
import os
import sys
import time
from typing import Optional, Sequence

import numpy as np

from jface.data import common

log = logging.getLogger(__name__)

STATUS = {0: "ok", 1: "unreadable", 2: "too few points", 3: "fit failed"}
OUTSIDE = 0.5  # points beyond this fraction of the crop size outside the crop are dropped
# chosen on aflw2000_3d_train with `tune` (module docstring)
DEFAULTS = dict(shape_prior=0.7, exp_prior=7.0, robust_scale=8.0, n_iters=10, n_alt=3, points_weight=1.0,
                points_jaw_weight=1.0, landmarks_weight=0.01, landmarks_jaw_weight=1.0, min_points=6)
FIT_KEYS = ("shape_prior", "exp_prior", "robust_scale", "n_iters", "n_alt")


# ------------------------------------------------------------------------------------------- points

def combine(sets: Sequence[tuple]) -> tuple[np.ndarray, np.ndarray]:
  """Point sets ``[(pts (B, 68, 2), w (B, 68)), ...]`` (w >= 0, 0 = unused) -> (pts (B, 68, 2) weighted mean,
  0 where no set has the index; w (B, 68) summed weight)."""
  num = sum(np.where(w[..., None] > 0, np.nan_to_num(p) * w[..., None], 0.0) for p, w in sets)
  den = sum(np.maximum(w, 0.0) for _, w in sets)
  pts = np.where(den[..., None] > 0, num / np.maximum(den, 1e-12)[..., None], 0.0)
  return pts.astype(np.float32), den.astype(np.float32)


def _jaw_vector(weight: float, jaw: float) -> np.ndarray:
  from jface.core.fitting import CONTOUR
  v = np.full(68, weight, np.float32)
  v[list(CONTOUR)] *= jaw
  return v


def clean_points(pts: np.ndarray, known: np.ndarray, crop_size: int = common.CROP_SIZE) -> tuple[np.ndarray, int]:
  """(..., 68, 2) crop points + (..., 68) bool -> (usable (..., 68) bool: known, finite and within ``OUTSIDE`` x
  crop size of the crop; the number of known points dropped for lying farther out)."""
  lo, hi = -OUTSIDE * crop_size, (1 + OUTSIDE) * crop_size
  inside = np.all((pts >= lo) & (pts <= hi), -1)  # False for NaN
  known = known & np.all(np.isfinite(pts), -1)
  return known & inside, int(np.sum(known & ~inside))


def read_landmarks(path: str) -> dict:
  """Landmarks file -> {name (and basename): (68, 2) float32 original-image points, NaN = unknown}."""
  from jface.data import wild
  names, pts = wild.read_landmarks_file(path)
  out = {os.path.basename(n): p for n, p in zip(names, pts)}
  out.update(zip(names, pts))
  return out


# ------------------------------------------------------------------------------------------- fitting

def fit_points(model, pts: np.ndarray, weights: np.ndarray, *, batch: int = 256, min_points: int = 6,
               **fit_kw) -> dict:
  """Fits (B, 68, 2) crop points with (B, 68) weights (0 = unused) in batches of ``batch``.

  Returns dict(params (B, 62) float32 whitened, NaN when not fitted; residual (B,) weighted mean pixel distance of
  the fitted landmarks to the points (weights as given); n_points (B,) int32;
  angles (B, 3) degrees; status (B,) int8: 0 ok, 2 fewer than ``min_points`` indices, 3 non-finite fit).
  """
  from jface.core import fitting
  kw = {k: v for k, v in fit_kw.items() if k in FIT_KEYS}
  b = len(pts)
  out = dict(params=np.full((b, 62), np.nan, np.float32), residual=np.full(b, np.nan, np.float32),
             n_points=np.sum(weights > 0, -1).astype(np.int32), angles=np.full((b, 3), np.nan, np.float32),
             status=np.zeros(b, np.int8))
  few = out["n_points"] < max(min_points, fitting.MIN_VISIBLE)
  out["status"][few] = 2
  todo = np.nonzero(~few)[0]
  for s in range(0, len(todo), batch):
    idx = todo[s:s + batch]
    pw, info = fitting.fit_landmarks(model, pts[idx], weights[idx] > 0, weights=weights[idx], return_info=True, **kw)
    out["params"][idx] = np.asarray(pw)
    out["angles"][idx] = np.asarray(info["angles"])
  failed = (out["status"] == 0) & ~np.all(np.isfinite(out["params"]), -1)
  out["status"][failed] = 3
  out["params"][out["status"] != 0] = np.nan
  if len(todo):
    from jface.core import geometry
    d = np.linalg.norm(np.asarray(geometry.landmarks2d(model, np.nan_to_num(out["params"]))) - pts, axis=-1)
    out["residual"] = (np.sum(weights * d, -1) / np.maximum(np.sum(weights, -1), 1e-12)).astype(np.float32)
  out["residual"][out["status"] != 0] = np.nan
  return out


def _name_of(src, i: int) -> str:
  """Name of row ``i`` without reading it (through wrappers such as ``registry.Cached``), else ``#i``."""
  while not hasattr(src, "names") and not isinstance(getattr(src, "source", ""), str):
    src = src.source
  return str(src.names[i]) if hasattr(src, "names") else f"#{i}"


def _abs_spec(spec: str) -> str:
  """Data spec with every path part made absolute (so ``fitted:DIR`` works from any folder)."""
  kind, _, rest = spec.partition(":")
  parts = rest.split(":") if rest else []
  return ":".join([kind] + [os.path.abspath(p) if p and os.path.exists(p) else p for p in parts])


def _write_npz(path: str, **arrays) -> None:
  tmp = path + ".tmp.npz"
  np.savez(tmp, **arrays)
  os.replace(tmp, path)


def _chunk_path(out: str, k: int) -> str:
  return os.path.join(out, "chunks", f"chunk_{k:05d}.npz")


def _from_file(lut: dict, ex: dict, crop_size: int):
  """The landmarks file's points of example ``ex`` in crop coordinates: (pts (68, 2), known (68,)) or None."""
  from jface.core import crop
  p = lut.get(ex["name"], lut.get(os.path.basename(ex["name"])))
  if p is None:
    return None
  pc = crop.image_to_crop(np.asarray(p, np.float64), np.asarray(ex["roi_box"], np.float64), crop_size)
  return np.asarray(pc, np.float32), np.all(np.isfinite(pc), -1)


def run(data: str, out: str, model_spec: str, landmarks: Optional[str] = None, points: Optional[str] = None, *,
        chunk: int = 1024, batch: int = 256, max_chunks: Optional[int] = None, progress=print,
        **settings) -> Optional[dict]:
  """Fits every example of data spec ``data`` into ``out`` (module docstring); resumable.

  ``points``: a landmarks file that replaces the source's own points (e.g. an AFLW2000-3D split's ``points21``).
  ``settings``: ``DEFAULTS`` keys (None = default). ``max_chunks``: stop after fitting this many new chunks
  (returns None then). Returns the summary when every chunk exists (after writing ``labels.npz``, ``summary.json``).
  """
  from jface.core.load import load_model
  from jface.data import registry
  cfg = dict(DEFAULTS)
  unknown = set(settings) - set(cfg)
  if unknown:
    raise ValueError(f"unknown settings {sorted(unknown)}")
  cfg.update({k: v for k, v in settings.items() if v is not None})
  model = load_model(model_spec)
  src = registry.build_source(data)
  n = len(src)
  absf = lambda f: os.path.abspath(f) if f else None
  config = dict(data=_abs_spec(data), model=model_spec if model_spec == "synthetic" else os.path.abspath(model_spec),
                points=absf(points), landmarks=absf(landmarks), chunk=int(chunk), n=n, settings=cfg)
  os.makedirs(os.path.join(out, "chunks"), exist_ok=True)
  cpath = os.path.join(out, "config.json")
  if os.path.exists(cpath):
    with open(cpath) as f:
      old = json.load(f)
    if old != json.loads(json.dumps(config)):
      diff = sorted(k for k in set(old) | set(config) if json.dumps(old.get(k)) != json.dumps(config.get(k)))
      raise ValueError(f"{out} holds a run with other settings ({', '.join(diff)}); use another --out")
  else:
    with open(cpath, "w") as f:
      json.dump(config, f, indent=1)
  files = [read_landmarks(points) if points else None, read_landmarks(landmarks) if landmarks else None]
  wvec = [_jaw_vector(cfg["points_weight"], cfg["points_jaw_weight"]),
          _jaw_vector(cfg["landmarks_weight"], cfg["landmarks_jaw_weight"])]
  n_chunks = -(-n // chunk)
  todo = [k for k in range(n_chunks) if not os.path.exists(_chunk_path(out, k))]
  progress(f"{n} images in {n_chunks} chunks of {chunk}; {n_chunks - len(todo)} chunks already done")
  t0, done_imgs = time.time(), 0
  for j, k in enumerate(todo):
    if max_chunks is not None and j >= max_chunks:
      return None
    lo, hi = k * chunk, min(n, (k + 1) * chunk)
    m, t_chunk = hi - lo, time.time()
    names = np.full(m, "", object)
    sets_p, sets_w = np.zeros((2, m, 68, 2), np.float32), np.zeros((2, m, 68), np.float32)
    unreadable = np.zeros(m, bool)
    counts = dict(invisible_21=0, outside=0, file_unknown=0, file_missing=0)
    for r, i in enumerate(range(lo, hi)):
      try:
        ex = src[i]
      except common.BadExample as e:
        log.warning("%s", e)
        unreadable[r], names[r] = True, _name_of(src, i)
        continue
      names[r] = ex["name"]
      cs = np.asarray(ex["image"]).shape[0]
      if "gt_pts21" in ex and files[0] is None:  # aflw_wild: points marked invisible (x = -1)
        counts["invisible_21"] += int(np.sum(np.asarray(ex["gt_pts21"])[0] == -1))
      for s, lut in enumerate(files):
        if s == 0 and lut is None:
          got = np.asarray(ex["landmarks"], np.float32), np.asarray(ex["landmarks_mask"], bool)
        elif lut is None:
          continue
        else:
          got = _from_file(lut, ex, cs)
          if got is None:
            counts["file_missing"] += 1
            continue
          counts["file_unknown"] += int(np.sum(~got[1]))
        ok, c = clean_points(got[0], got[1], cs)
        sets_p[s, r], sets_w[s, r] = np.where(ok[:, None], got[0], 0.0), np.where(ok, wvec[s], 0.0)
        counts["outside"] += c
    pts, w = combine([(sets_p[0], sets_w[0]), (sets_p[1], sets_w[1])])
    fit = fit_points(model, pts, w, batch=batch, **cfg)
    fit["status"][unreadable] = 1
    _write_npz(_chunk_path(out, k), names=names.astype(str), index=np.arange(lo, hi), **fit,
               wall_s=np.float64(time.time() - t_chunk), **{f"count_{key}": np.int64(v) for key, v in counts.items()})
    done_imgs += m
    rate = done_imgs / max(time.time() - t0, 1e-9)
    left = sum(min(n, (q + 1) * chunk) - q * chunk for q in todo[j + 1:])
    progress(f"chunk {k + 1}/{n_chunks}: {done_imgs}/{done_imgs + left} images this run, {rate:.0f} img/s, "
             f"ETA {left / max(rate, 1e-9):.0f} s, skipped {int(np.sum(fit['status'] != 0))}/{m}")
  return merge(out, model)


def merge(out: str, model) -> dict:
  """Merges ``out/chunks`` into ``out/labels.npz`` and writes ``out/summary.json``; returns the summary."""
  files = sorted(glob.glob(os.path.join(out, "chunks", "chunk_*.npz")))
  parts = [dict(np.load(f, allow_pickle=False)) for f in files]
  keys = ("names", "params", "residual", "n_points", "angles", "status")
  lab = {k: np.concatenate([p[k] for p in parts]) for k in keys}
  _write_npz(os.path.join(out, "labels.npz"), **lab, param_mean=np.asarray(model.param_mean, np.float32),
             param_std=np.asarray(model.param_std, np.float32))
  res = lab["residual"][lab["status"] == 0]
  summary = dict(
      n=int(len(lab["names"])), fitted=int(np.sum(lab["status"] == 0)),
      skipped={STATUS[s]: int(np.sum(lab["status"] == s)) for s in (1, 2, 3)},
      point_counts={k[6:]: int(sum(int(p[k]) for p in parts)) for k in parts[0] if k.startswith("count_")},
      residual_px={f"p{q}": float(np.percentile(res, q)) if res.size else None for q in (10, 50, 90, 99)},
      residual_mean_px=float(res.mean()) if res.size else None,
      n_points_median=float(np.median(lab["n_points"])), wall_s=float(sum(float(p["wall_s"]) for p in parts)))
  with open(os.path.join(out, "summary.json"), "w") as f:
    json.dump(summary, f, indent=1)
  return summary


# ------------------------------------------------------------------------------------------- reader

class FittedSource(common.Source):
  """``fitted:DIR[:MAX_RESIDUAL]``: the fitted data spec's examples with the fitted params as 3D labels.

  Example: the base example with ``params`` (62,) whitened and ``has_params`` True where the fit succeeded and
  ``residual <= max_residual`` (else zeros / False: a 2D-only example), plus ``fit_residual`` float32 (px, NaN
  when not fitted). ``model``: when given, its whitening must equal the labels'.
  """

  def __init__(self, out: str, max_residual: Optional[float] = None, model=None):
    from jface.data import registry
    path = os.path.join(out, "labels.npz")
    if not os.path.exists(path):
      raise FileNotFoundError(f"{path} missing: the fit in {out} is unfinished; rerun `python -m "
                              "jface.data.fit_labels` with the same --out")
    with open(os.path.join(out, "config.json")) as f:
      self.config = json.load(f)
    with np.load(path, allow_pickle=False) as z:
      lab = {k: z[k] for k in z.files}
    if model is not None:
      for k in ("param_mean", "param_std"):
        if not np.allclose(np.asarray(getattr(model, k)), lab[k], rtol=1e-5, atol=1e-6):
          raise ValueError(f"{path}: labels whitened with another model's {k} than {getattr(model, 'name', '')}")
    self.base = registry.build_source(self.config["data"])
    if len(self.base) != len(lab["names"]):
      raise ValueError(f"{path}: {len(lab['names'])} labels but {self.config['data']} has {len(self.base)} images")
    self.names = [str(x) for x in lab["names"]]
    self.labels = lab
    ok = lab["status"] == 0
    if max_residual is not None:
      ok &= lab["residual"] <= float(max_residual)
    self.ok = ok
    self.source = getattr(self.base, "source", "fitted")

  def _load(self, i: int) -> dict:
    ex = dict(self.base[i])
    ok = bool(self.ok[i])
    ex["params"] = self.labels["params"][i].astype(np.float32) if ok else np.zeros(62, np.float32)
    ex["has_params"] = np.bool_(ok)
    ex["fit_residual"] = np.float32(self.labels["residual"][i])
    return ex


# ------------------------------------------------------------------------------------------- mesh points

def mesh_points(data: str, out: str, min_score: float = 0.5, model_dir: Optional[str] = None,
                map_path: Optional[str] = None, progress=print) -> dict:
  """Face-mesh 68 points of every crop of data spec ``data`` -> landmarks file ``out`` (.npz: ``names``,
  ``landmarks`` (N, 68, 2) ORIGINAL-image points via ``roi_box``, NaN where the mesh score < ``min_score``,
  ``score`` (N,)).

  No detector: the mesh runs on the whole crop (region centre (60.5, 60.5), side = crop size, upright), then once
  more on the region of its own points (``facemesh.roi_from_mesh``); the 468 -> 68 map is ``mesh68.Mesh68Map``
  (fitted on aflw2000_3d_train photos). Crop pixel positions (1-based centres) are crop coordinates + 0.5 (the
  crop resamples the inclusive box), hence the -0.5 (measured on train: -0.45 / -0.48 px).
  """
  from jface.core import crop
  from jface.data import registry
  from jface.inference import facemesh as fm, mesh68
  src = registry.build_source(data)
  mesh, mapping = fm.FaceMesh(model_dir, refine=1), mesh68.Mesh68Map.load(map_path, model_dir)
  n = len(src)
  names, pts, score = [], np.full((n, 68, 2), np.nan, np.float32), np.zeros(n, np.float32)
  t0 = time.time()
  for i in range(n):
    try:
      ex = src[i]
    except common.BadExample as e:
      log.warning("%s", e)
      names.append(_name_of(src, i))
      continue
    names.append(ex["name"])
    img = np.asarray(ex["image"])
    cs = img.shape[0]
    m = mesh(img, [fm.Roi(np.array([(cs + 1) / 2, (cs + 1) / 2]), float(cs), 0.0)])[0]
    score[i] = m.score
    if m.score >= min_score:
      pts[i] = crop.crop_to_image(mapping(m.points, m.roi).astype(np.float64) - 0.5,
                                  np.asarray(ex["roi_box"], np.float64), cs)
    if (i + 1) % 1000 == 0 or i + 1 == n:
      rate = (i + 1) / max(time.time() - t0, 1e-9)
      progress(f"{i + 1}/{n} crops, {rate:.0f} crops/s, ETA {(n - i - 1) / rate:.0f} s")
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  np.savez(out, names=np.array(names), landmarks=pts, score=score)
  return dict(n=n, with_points=int(np.sum(np.isfinite(pts[:, 0, 0]))), min_score=min_score,
              wall_s=time.time() - t0)


# ------------------------------------------------------------------------------------------- AFLW2000-3D

def aflw2000_points21(data_dir: str) -> tuple[list, np.ndarray]:
  """An AFLW2000-3D split (``meta.npz`` + ``AFLW2000/*.mat``) -> (names, (N, 68, 2) ORIGINAL-image points): the
  ``.mat`` ``pt2d`` AFLW-21 points on their iBUG-68 indices (``wild.aflw21_to_ibug68``), NaN elsewhere. One
  train file (image03189) has 23 columns: its first 21 are the usual points (checked by eye), the rest dropped."""
  from jface.data import wild
  meta = common.load_meta(os.path.join(data_dir, "meta.npz"))
  names = [str(x) for x in meta["names"]]
  out = np.full((len(names), 68, 2), np.nan, np.float32)
  for i, name in enumerate(names):
    p = np.asarray(common.read_mat(os.path.join(data_dir, "AFLW2000", os.path.splitext(name)[0] + ".mat"))["pt2d"])
    q, mask = wild.aflw21_to_ibug68(p[:, :21])
    out[i, mask] = q[mask]
  return names, out


def tune(data_dir: str, model_spec: str, landmarks: Optional[str], grid: dict, progress=print) -> list:
  """Grid search on an AFLW2000-3D split (never dev): fits the ``.mat`` AFLW-21 points (``points_weight``, plus
  ``landmarks`` when given) for every combination of ``grid`` (lists of ``DEFAULTS`` keys), scores the fitted
  landmarks by the 2D NME protocol against ``pts68`` (images with too few points are failures, left out of the
  means). Returns rows (mean of bins, bins, settings), best first."""
  import itertools
  from jface.core import crop, geometry
  from jface.core.load import load_model
  from jface.eval import metrics
  model = load_model(model_spec)
  meta = common.load_meta(os.path.join(data_dir, "meta.npz"))
  roi = np.asarray(meta["roi_box"], np.float64)
  names, p21 = aflw2000_points21(data_dir)
  sets = [np.asarray(crop.image_to_crop(p21.astype(np.float64), roi), np.float32)]
  if landmarks:
    lm = read_landmarks(landmarks)
    sets.append(np.stack([np.asarray(crop.image_to_crop(lm.get(nm, np.full((68, 2), np.nan)).astype(np.float64),
                                                         r), np.float32) for nm, r in zip(names, roi)]))
  keys = list(grid)
  rows = []
  for vals in itertools.product(*(grid[k] for k in keys)):
    s = dict(DEFAULTS, **dict(zip(keys, vals)))
    ws = [("points_weight", "points_jaw_weight"), ("landmarks_weight", "landmarks_jaw_weight")]
    pairs = [(p, np.where(clean_points(p, np.ones(p.shape[:2], bool))[0], _jaw_vector(s[a], s[b]), 0.0))
             for p, (a, b) in zip(sets, ws)]
    pts, w = combine(pairs)
    fit = fit_points(model, pts, w, **s)
    pred = np.asarray(geometry.landmarks2d(model, fit["params"]))  # NaN rows (too few points) = failures
    summ = metrics.aflw2000_nme(pred, roi, meta["pts68"], meta["yaw"], names)["summary2d"]
    rows.append((summ["mean_of_bins"], summ["bins"], dict(zip(keys, vals))))
    progress(f"{summ['mean_of_bins']:.4f}  " + " ".join(f"{b:.4f}" for b in summ["bins"]) +
             f"  failed {summ['n_failed']}  {rows[-1][2]}")
  return sorted(rows, key=lambda r: r[0])


# ------------------------------------------------------------------------------------------- CLI

def _floats(s: str) -> list:
  return [float(x) for x in s.split(",") if x]


def main(argv: Optional[Sequence[str]] = None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  logging.basicConfig(level=logging.INFO, format="%(message)s")
  cmd = argv.pop(0) if argv and argv[0] in ("mesh", "points21", "tune") else "fit"
  ap = argparse.ArgumentParser(prog=f"python -m jface.data.fit_labels{'' if cmd == 'fit' else ' ' + cmd}",
                               description=__doc__.split("\n\n")[0])
  ap.add_argument("--data", required=True, help="data spec (fit, mesh) or AFLW2000-3D split folder (points21, tune)")
  ap.add_argument("--out", required=cmd != "tune")
  ap.add_argument("--model", default="../shared/data/3dmm", help="3DDFA-format folder or 'synthetic'")
  if cmd in ("fit", "tune"):
    ap.add_argument("--landmarks", default=None, help="68-point landmarks file (.csv/.npz, original-image points)")
  if cmd == "fit":
    ap.add_argument("--points", default=None, help="a landmarks file replacing the source's own points")
    for k, v in DEFAULTS.items():
      ap.add_argument(f"--{k}", type=type(v), default=None, help=f"default {v}")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--chunk", type=int, default=1024)
    ap.add_argument("--max_chunks", type=int, default=None, help="stop after this many new chunks")
  if cmd == "mesh":
    ap.add_argument("--min_score", type=float, default=0.5, help="meshes scoring lower give no points")
    ap.add_argument("--model_dir", default=None)
  if cmd == "tune":
    for k, v in dict(shape_prior="0.5,1,2", exp_prior="2,5,10,20", robust_scale="0,6").items():
      ap.add_argument(f"--{k}", type=_floats, default=_floats(v), help=f"comma list, default {v}")
    ap.add_argument("--points_weight", type=_floats, default=[1.0], help="of the .mat AFLW-21 points (0 = unused)")
    ap.add_argument("--landmarks_weight", type=_floats, default=[0.003, 0.01, 0.03, 0.1])
    ap.add_argument("--landmarks_jaw_weight", type=_floats, default=[0.1, 0.3, 1.0])
  a = ap.parse_args(argv)
  try:
    if cmd == "fit":
      settings = {k: getattr(a, k) for k in DEFAULTS}
      summary = run(a.data, a.out, a.model, a.landmarks, a.points, chunk=a.chunk, batch=a.batch,
                    max_chunks=a.max_chunks, **settings)
      print(json.dumps(summary, indent=1) if summary else f"stopped after {a.max_chunks} chunks; rerun to go on")
    elif cmd == "mesh":
      print(mesh_points(a.data, a.out, a.min_score, a.model_dir))
    elif cmd == "points21":
      names, pts = aflw2000_points21(a.data)
      os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
      np.savez(a.out, names=np.array(names), landmarks=pts)
      print(f"{len(names)} images -> {a.out}")
    else:
      if os.path.basename(os.path.normpath(a.data)).endswith("_dev"):
        print("error: the dev split is for evaluation only; tune on the train split", file=sys.stderr)
        return 2
      grid = {k: getattr(a, k) for k in ("shape_prior", "exp_prior", "robust_scale", "points_weight")}
      if a.landmarks:
        grid.update(landmarks_weight=a.landmarks_weight, landmarks_jaw_weight=a.landmarks_jaw_weight)
      rows = tune(a.data, a.model, a.landmarks, grid)
      print("best: " + f"{rows[0][0]:.4f} " + json.dumps(rows[0][2]))
  except (FileNotFoundError, ValueError) as e:
    print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  sys.exit(main())
