"""Benchmark evaluation (the logic behind ``evaluate.py``): AFLW2000-3D (68 points), AFLW (21 points), synthetic.

Usage (``python evaluate.py --help`` for every flag)::

  python evaluate.py --dataset aflw2000_3d --data_dir DIR [--subset 1998|2000] [--gt original|reannotated]
                     (--predictions FILE | --checkpoint WORKDIR | --labels) --out OUTDIR
  python evaluate.py --dataset aflw --data_dir ../shared/data/aflw_wild --predictions FILE.npz --out OUTDIR
  python evaluate.py --dataset synthetic [--num 200 --seed 12345] (--predictions FILE | --checkpoint WD) --out O

Data (``--data_dir``):

* ``aflw2000_3d``, crop layout (preferred when ``DIR/meta.npz`` exists; ``--layout`` forces one): ``DIR/crops/``
  + ``meta.npz`` (``names``, ``yaw``, ``roi_box``, ``pts68``, optional ``pts68_reannotated`` / ``fan_pts68_crop``).
  Original layout: ``DIR/AFLW2000/*.jpg|.mat`` (or ``DIR/*.jpg|.mat``): GT = ``pt3d_68``, roi box = 3DDFA's box
  from those landmarks clipped to the image (``datasets.common.roi_box_from_landmarks``; equals the benchmark
  boxes), yaw = ``Pose_Para[1]`` in degrees, unwrapped like the benchmark's (= the meta's); image order = sorted
  file names. ``--gt reannotated`` needs the meta.
  ``--subset 1998`` (default) drops image02139 / image03862 as the 2DASL/3DDFA benchmark.
* ``aflw``: ``DIR/crops/`` + ``meta.npz`` with ``names``, ``roi_box``, ``yaw``, ``pts21`` (``aflw_wild``).
* ``synthetic``: ``datasets.synthetic.SyntheticFaces(--num, --seed)`` (no data dir); GT = the sampled params'
  landmarks in the 120 px crop (roi box = the crop), binned by their yaw.

Predictions: ``--predictions FILE``: ``.npy`` (N, 62) whitened params (or (N, 68, 2|3) crop landmarks) in the
image order above (meta ``names``; synthetic: index order), or ``.npz`` with ``names`` plus ``params`` (N, 62) or
``landmarks`` (N, 68, 2|3) in 120 x 120 crop pixels (the convention of ``jface.geometry.landmarks2d``; params
win when both are present). Params need the 3DMM (``--bfm_dir``, default ``../shared/data/3dmm`` next to the
repo when it exists).
``--labels`` evaluates the dataset's own 3DMM labels as if predicted: for AFLW2000-3D, the ``.mat`` fits converted
to the 62 params exactly as the training readers convert them (40/10 components), which is the floor that
training on those labels can reach; for synthetic faces, the sampled params (a check of the pipeline).
``--checkpoint WORKDIR`` runs a ``train.py`` workdir's regressor (``jface.train_lib.load_checkpoint``) on the
crops; its face model is ``config.bfm_dir`` unless ``--bfm_dir`` is given. Models with a landmark-map input
(``config.use_flm``) get it from ``--flm``: ``auto`` = the meta's ``fan_pts68_crop`` (FAN detections, the 2DASL
test protocol) when present, else ``mean`` = the 68 landmarks of the mean face (zero whitened params) -- a weak
stand-in for a detector; ``gt`` = the ground-truth landmarks (an oracle input; what ``train_lib``'s synthetic dev
evaluation feeds).

Failures: a missing/corrupt image or ``.mat``, a prediction missing from an ``.npz`` or with a non-finite value
is a counted failure (NaN per-image error, excluded from the means, listed in the table and results.json); bad
files/flags are one ``error:`` line. ``main`` returns 0 when at least one image was evaluated, 1 when none could
be, 2 on an input error.

Outputs in ``--out``: ``results.json`` (percent; ``nme_2d_68`` / ``nme_3d_68`` or ``nme_2d_21`` = dict(bins,
mean_of_bins, overall, n, n_failed, counts, labels); ``nme_dense_2d`` / ``nme_dense_3d`` / ``nme_icp`` when
computed; subset, gt, n_failed, failures (by reason), failed_images, skipped (what and why), command),
``per_image.csv`` (name, yaw, nme_2d, nme_3d, status), ``ced.png`` (``metrics.plot_ced``) and
``best_worst.png`` (best and worst images: prediction green, ground truth red).

Dense / ICP reconstruction NME (``metrics.nme_dense`` 2D and 3D normalised by the GT vertices' box,
``metrics.reconstruction_nme`` on every ``--icp_stride``-th vertex) need predicted params, a face model with
dense bases and dense ground truth: the synthetic set (its GT params) or, with the BFM, AFLW2000-3D ``.mat`` fits
(truncated to the model's 40/10 components, so an approximation of the full-BFM GT). Otherwise one line says why
they were skipped.
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import glob
import json
import math
import os
import shlex
import sys
from typing import Callable, Optional, Sequence

import numpy as np

from datasets import common
from datasets.common import BadExample
from jface import metrics
from jface.bfm import MissingAssetError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_BFM_DIR = os.path.join(os.path.dirname(ROOT), "shared", "data", "3dmm")
DATASETS = ("aflw2000_3d", "aflw", "synthetic")
CROP = 120


class EvalError(ValueError):
  """A one-line user-facing error (bad flag combination, bad file)."""


# ------------------------------------------------------------------------------------------ progress

class Progress:
  """A ``\\r`` progress line on stderr (only when it is a terminal and ``total >= min_total``)."""

  def __init__(self, total: int, label: str, min_total: int = 20, stream=None):
    self.stream = stream or sys.stderr
    self.total, self.label, self.done = int(total), label, 0
    self.on = self.total >= min_total and getattr(self.stream, "isatty", lambda: False)()

  def update(self, k: int = 1) -> None:
    self.done += k
    if self.on and (self.done == self.total or self.done % max(1, self.total // 100) == 0):
      self.stream.write(f"\r{self.label}: {self.done}/{self.total} ({100 * self.done // max(self.total, 1)}%)")
      self.stream.flush()

  def close(self) -> None:
    if self.on:
      self.stream.write("\n")
      self.stream.flush()


# ---------------------------------------------------------------------------------------------- data

@dataclasses.dataclass
class EvalData:
  """Ground truth of one evaluation set (numpy; N images).

  names (N,) str; yaw (N,) degrees (NaN unknown); roi_box (N, 4) (sx, sy, ex, ey) crop box in the original image;
  gt: ``aflw2000_3d`` (N, 3|2, 68) original-image points as meta ``pts68`` / ``pts68_reannotated``;
  ``synthetic`` (N, 68, 3) crop coords; ``aflw`` (N, 2, 21) meta ``pts21`` (x = -1 invisible).
  problems (N,) str: '' or why the image could not be read (a failure). detector (N, 68, 2) crop landmarks
  (meta ``fan_pts68_crop``) or None. gt_params (N, 62) whitened GT params (synthetic) or None.
  crop(i) -> (S, S, 3) uint8 RGB crop of image i at side S (raises ``BadExample``).
  """
  dataset: str
  names: np.ndarray
  yaw: np.ndarray
  roi_box: np.ndarray
  gt: np.ndarray
  problems: np.ndarray
  crop: Callable[[int, int], np.ndarray]
  layout: str
  order: str  # what the rows of a .npy predictions file follow
  detector: Optional[np.ndarray] = None
  gt_params: Optional[np.ndarray] = None
  mat_dir: Optional[str] = None  # folder of the .mat fits (dense GT), if any
  gt_kind: str = "original"

  def __len__(self) -> int:
    return len(self.names)

  def take(self, idx: np.ndarray) -> "EvalData":
    idx = np.asarray(idx)
    base = self.crop
    pos = np.arange(len(self))[idx]
    sub = lambda a: None if a is None else a[idx]
    return dataclasses.replace(
        self, names=self.names[idx], yaw=self.yaw[idx], roi_box=self.roi_box[idx], gt=self.gt[idx],
        problems=self.problems[idx], detector=sub(self.detector), gt_params=sub(self.gt_params),
        crop=lambda i, size=CROP: base(int(pos[i]), size))


def _basename(n) -> str:
  return os.path.basename(str(n))


def _need_dir(path: Optional[str], what: str) -> str:
  if not path:
    raise EvalError(f"--data_dir is required for --dataset {what}")
  if not os.path.isdir(path):
    raise MissingAssetError(f"missing data folder {path} (--data_dir of --dataset {what})")
  return path


def _crop_reader(crops_dir: str, names: Sequence[str], orig_dir: Optional[str], boxes: np.ndarray):
  """crop(i, size): the stored 120 px benchmark crop at size 120 (what models see); larger tiles come from the
  original image through the roi box when it exists (sharper), else the stored crop resized."""
  import cv2

  def crop(i: int, size: int = CROP) -> np.ndarray:
    name = names[i]
    path = os.path.join(crops_dir, name)
    use_orig = orig_dir is not None and os.path.exists(os.path.join(orig_dir, name))
    if use_orig and (size != CROP or not os.path.exists(path)):
      return common.crop_image(common.read_image(os.path.join(orig_dir, name)), boxes[i], size)
    img = common.read_image(path)
    if img.shape[:2] != (CROP, CROP):
      raise common.bad(path, f"crop must be {CROP}x{CROP}, got {img.shape[1]}x{img.shape[0]}")
    return img if size == CROP else cv2.resize(img, (size, size), interpolation=cv2.INTER_LINEAR)
  return crop


def load_aflw2000(data_dir: str, gt: str = "original", layout: str = "auto") -> EvalData:
  """AFLW2000-3D ground truth from the crop layout (meta.npz) or the original layout (.jpg + .mat)."""
  from datasets import mat_layout
  _need_dir(data_dir, "aflw2000_3d")
  meta_path = os.path.join(data_dir, "meta.npz")
  orig = os.path.join(data_dir, "AFLW2000")
  orig = orig if os.path.isdir(orig) else None
  if layout == "auto":
    layout = "crops" if os.path.exists(meta_path) else "original"
  if layout == "crops":
    meta = common.load_meta(meta_path)
    key = "pts68" if gt == "original" else "pts68_reannotated"
    for k in ("names", "roi_box", "yaw", key):
      if k not in meta:
        raise EvalError(f"{meta_path}: missing {k!r}" + (" (needed by --gt reannotated)" if k == key else ""))
    names = np.array([_basename(n) for n in meta["names"]])
    boxes = np.asarray(meta["roi_box"], np.float64)
    det = np.asarray(meta["fan_pts68_crop"], np.float64) if "fan_pts68_crop" in meta else None
    crops_dir = os.path.join(data_dir, "crops")
    if not os.path.isdir(crops_dir) and orig is None:
      raise MissingAssetError(f"missing {crops_dir} (the 120x120 crops next to {meta_path})")
    return EvalData("aflw2000_3d", names, np.asarray(meta["yaw"], np.float64), boxes,
                    np.asarray(meta[key], np.float64), np.full(len(names), "", object),
                    _crop_reader(crops_dir, list(names), orig, boxes), "crops", f"the names of {meta_path}",
                    detector=det, mat_dir=orig, gt_kind=gt)
  if layout != "original":
    raise EvalError(f"--layout must be auto, crops or original, got {layout!r}")
  if gt != "original":
    raise EvalError(f"--gt {gt} needs {meta_path} (pts68_reannotated); the original layout has only pt3d_68")
  folder = orig or data_dir
  names = sorted(_basename(f) for f in glob.glob(os.path.join(folder, "*.jpg")))
  if not names:
    raise MissingAssetError(f"no meta.npz in {data_dir} and no *.jpg in {folder}: not an AFLW2000-3D folder")
  n = len(names)
  yaw, boxes = np.full(n, np.nan), np.full((n, 4), np.nan)
  pts, problems = np.full((n, 3, 68), np.nan), np.full(n, "", object)
  bar = Progress(n, "reading .mat files")
  for i, name in enumerate(names):
    img_path = os.path.join(folder, name)
    mat_path = os.path.splitext(img_path)[0] + ".mat"
    try:
      mat = common.read_mat(mat_path)
      img = common.read_image(img_path)
      try:
        p = mat_layout.mat_pts68(mat)
        if p is None:
          raise ValueError("no pt3d_68")
        if not np.all(np.isfinite(p)):
          raise ValueError("non-finite pt3d_68")
        boxes[i] = common.roi_box_from_landmarks(p[:2].T, image_shape=img.shape)
        # the benchmark's yaw (= meta.npz ``yaw``): Pose_Para[1] in degrees, NOT wrapped (two AFLW2000-3D
        # images have -351 / 188 deg and so sit in the open (60, 90+] bin, as in 3DDFA's benchmark)
        yaw[i] = float(np.degrees(np.asarray(mat["Pose_Para"], np.float64).reshape(-1)[1])) \
            if "Pose_Para" in mat else np.nan
      except (ValueError, IndexError, TypeError) as e:
        raise common.bad(mat_path, e) from None
      pts[i] = p
    except BadExample as e:
      problems[i] = f"unreadable input: {e}"
    bar.update()
  bar.close()

  def crop(i: int, size: int = CROP) -> np.ndarray:
    return common.crop_image(common.read_image(os.path.join(folder, names[i])), boxes[i], size)
  return EvalData("aflw2000_3d", np.array(names), yaw, boxes, pts, problems, crop, "original",
                  f"the sorted *.jpg names of {folder}", mat_dir=folder, gt_kind=gt)


def load_aflw(data_dir: str) -> EvalData:
  """AFLW 21-point ground truth (``aflw_wild`` layout: crops/ + meta.npz with pts21)."""
  _need_dir(data_dir, "aflw")
  meta_path = os.path.join(data_dir, "meta.npz")
  meta = common.load_meta(meta_path)
  for k in ("names", "roi_box", "pts21"):
    if k not in meta:
      raise EvalError(f"{meta_path}: missing {k!r} (--dataset aflw needs an aflw_wild-style meta)")
  names = np.array([_basename(n) for n in meta["names"]])
  n = len(names)
  yaw = np.asarray(meta["yaw"], np.float64) if "yaw" in meta else np.full(n, np.nan)
  boxes = np.asarray(meta["roi_box"], np.float64)
  crops_dir = os.path.join(data_dir, "crops")
  return EvalData("aflw", names, yaw, boxes, np.asarray(meta["pts21"], np.float64), np.full(n, "", object),
                  _crop_reader(crops_dir, list(names), None, boxes), "crops", f"the names of {meta_path}",
                  gt_kind="pts21")


def load_synthetic(num: int, seed: int, face) -> EvalData:
  """``num`` synthetic faces (rendered once, deterministic in ``seed``); GT = landmarks3d of their params."""
  import cv2
  import jax.numpy as jnp
  from datasets.synthetic import SyntheticFaces
  from jface import geometry
  if num < 1:
    raise EvalError(f"--num must be >= 1, got {num}")
  src = SyntheticFaces(num, seed=seed, model=face)
  images, params, yaw, names = [], [], [], []
  bar = Progress(num, "rendering synthetic faces")
  for i in range(num):
    ex = src[i]
    images.append(ex["image"])
    params.append(ex["params"])
    yaw.append(float(ex["yaw"]))
    names.append(str(ex["name"]))
    bar.update()
  bar.close()
  params = np.stack(params).astype(np.float64)
  gt = np.asarray(geometry.landmarks3d(face, jnp.asarray(params, jnp.float32)), np.float64)

  def crop(i: int, size: int = CROP) -> np.ndarray:
    img = images[i]
    return img if size == CROP else cv2.resize(img, (size, size), interpolation=cv2.INTER_LINEAR)
  return EvalData("synthetic", np.array(names), np.array(yaw), np.tile([0.0, 0.0, CROP, CROP], (num, 1)), gt,
                  np.full(num, "", object), crop, "synthetic", f"synthetic index order (seed {seed})",
                  gt_params=params, gt_kind="synthetic")


# ----------------------------------------------------------------------------------------- predictions

@dataclasses.dataclass
class Predictions:
  """params (N, 62) whitened or None; landmarks (N, 68, 2|3) crop coords (NaN rows = failures) or None until
  computed from params; missing (N,) bool = not in the predictions file."""
  params: Optional[np.ndarray]
  landmarks: Optional[np.ndarray]
  missing: np.ndarray
  source: str


def _load_array_file(path: str) -> dict:
  if not os.path.exists(path):
    raise MissingAssetError(f"missing predictions file {path}")
  ext = os.path.splitext(path)[1].lower()
  if ext not in (".npy", ".npz"):
    raise EvalError(f"{path}: predictions must be a .npy or .npz file")
  try:
    if ext == ".npy":
      return {"__array__": np.load(path, allow_pickle=False)}
    with np.load(path, allow_pickle=False) as z:
      return {k: z[k] for k in z.files}
  except Exception as e:  # noqa: BLE001 -- numpy raises many types on corrupt files
    raise EvalError(f"{path}: cannot read ({type(e).__name__}: {' '.join(str(e).split())})") from None


def _kind_of(arr: np.ndarray, n: Optional[int], path: str, what: str) -> str:
  if arr.ndim == 2 and arr.shape[1] == 62 and (n is None or arr.shape[0] == n):
    return "params"
  if arr.ndim == 3 and arr.shape[1] == 68 and arr.shape[2] in (2, 3) and (n is None or arr.shape[0] == n):
    return "landmarks"
  want = "N" if n is None else str(n)
  raise EvalError(f"{path}: {what} has shape {arr.shape}; expected ({want}, 62) whitened params or "
                  f"({want}, 68, 2|3) crop landmarks")


def read_predictions(path: str, names: Sequence[str], order: str) -> Predictions:
  """Reads a predictions file and aligns it with ``names`` (see the module docstring)."""
  data = _load_array_file(path)
  n = len(names)
  if "__array__" in data:
    arr = data["__array__"]
    if arr.dtype.kind not in "fiu":
      raise EvalError(f"{path}: expected a float array, got dtype {arr.dtype}")
    kind = _kind_of(arr, None, path, "the array")
    if arr.shape[0] != n:
      raise EvalError(f"{path}: {arr.shape[0]} rows but the dataset has {n} images (rows follow {order}); "
                      f"use an .npz with 'names' to evaluate a subset")
    arr = arr.astype(np.float64)
    return Predictions(arr if kind == "params" else None, arr if kind == "landmarks" else None,
                       np.zeros(n, bool), path)
  if "names" not in data:
    raise EvalError(f"{path}: an .npz of predictions needs 'names' plus 'params' or 'landmarks' "
                    f"(has {sorted(data)})")
  key = "params" if "params" in data else "landmarks" if "landmarks" in data else None
  if key is None:
    raise EvalError(f"{path}: no 'params' (N, 62) or 'landmarks' (N, 68, 2) array (has {sorted(data)})")
  arr = data[key]
  if arr.dtype.kind not in "fiu":
    raise EvalError(f"{path}: {key!r} must be numbers, got dtype {arr.dtype}")
  pnames = [_basename(x) for x in np.asarray(data["names"]).reshape(-1)]
  if len(pnames) != arr.shape[0]:
    raise EvalError(f"{path}: {len(pnames)} names but {key!r} has {arr.shape[0]} rows")
  kind = _kind_of(arr, len(pnames), path, repr(key))
  if kind != key:
    raise EvalError(f"{path}: {key!r} has shape {arr.shape}, which is not {key}")
  if len(set(pnames)) != len(pnames):
    dup = sorted({x for x in pnames if pnames.count(x) > 1})
    raise EvalError(f"{path}: repeated names: {', '.join(dup[:5])}{' ...' if len(dup) > 5 else ''}")
  index = {nm: i for i, nm in enumerate(names)}
  unknown = [x for x in pnames if x not in index]
  if unknown:
    raise EvalError(f"{path}: {len(unknown)} of {len(pnames)} names are not in the dataset ({order}), e.g. "
                    f"{', '.join(unknown[:5])}")
  out = np.full((n,) + arr.shape[1:], np.nan)
  rows = np.array([index[x] for x in pnames], int)
  out[rows] = arr
  missing = np.ones(n, bool)
  missing[rows] = False
  return Predictions(out if key == "params" else None, out if key == "landmarks" else None, missing, path)


def mean_face_landmarks(face) -> np.ndarray:
  """(68, 2) crop landmarks of zero whitened params (the model's mean face in its mean pose)."""
  import jax.numpy as jnp
  from jface import geometry
  return np.asarray(geometry.landmarks2d(face, jnp.zeros((62,), jnp.float32)), np.float64)


def flm_landmarks(data: EvalData, mode: str, face) -> tuple[np.ndarray, np.ndarray, str]:
  """The landmark-map input of a checkpoint: -> (pts (N, 68, 2) crop coords, mask (N, 68), description)."""
  n = len(data)
  if mode == "auto":
    mode = "detector" if data.detector is not None else "mean"
  if mode == "detector":
    if data.detector is None:
      raise EvalError("--flm detector needs meta.npz 'fan_pts68_crop' (detector landmarks on the crops)")
    pts = data.detector
    return pts, np.all(np.isfinite(pts), -1), "meta fan_pts68_crop (FAN detections)"
  if mode == "mean":
    pts = np.broadcast_to(mean_face_landmarks(face), (n, 68, 2))
    return pts, np.ones((n, 68), bool), "the 68 landmarks of the mean face (no detector)"
  if mode == "gt":
    if data.dataset == "synthetic":
      pts = data.gt[..., :2]
    elif data.dataset == "aflw2000_3d":
      pts = np.stack([common.image_to_crop(np.swapaxes(g, 0, 1)[:, :2], b) for g, b in zip(data.gt, data.roi_box)])
    else:
      from datasets.wild import aflw21_to_ibug68
      pm = [aflw21_to_ibug68(g) for g in data.gt]
      img = np.stack([p for p, _ in pm]).astype(np.float64)
      mask = np.stack([m for _, m in pm])
      pts = np.stack([common.image_to_crop(p, b) for p, b in zip(img, data.roi_box)])
      return pts, mask, "the ground-truth points (oracle input)"
    return pts, np.all(np.isfinite(pts), -1), "the ground-truth landmarks (oracle input)"
  raise EvalError(f"--flm must be auto, detector, mean or gt, got {mode!r}")


def predict_checkpoint(config, state, data: EvalData, face, flm: str = "auto", batch_size: int = 32,
                       log=print) -> tuple[np.ndarray, np.ndarray]:
  """Runs a checkpoint's regressor over ``data``'s crops. -> (pw (N, 62) NaN where the image was unreadable,
  problems (N,) str)."""
  import jax
  from jface import train_lib
  mods = train_lib.make_modules(config, bn_axis_name=None)
  predict = train_lib.make_predict_fn(mods, bool(config.use_flm))
  n = len(data)
  if config.use_flm:
    pts, mask, what = flm_landmarks(data, flm, face)
    log(f"landmark-map input: {what}")
  else:
    pts, mask = np.zeros((n, 68, 2)), np.zeros((n, 68), bool)
  params, batch_stats = jax.device_get((state.params, state.batch_stats))
  out = np.full((n, 62), np.nan)
  problems = data.problems.copy()
  bs = max(1, min(int(batch_size), n))
  bar = Progress(n, "predicting")
  for s in range(0, n, bs):
    idx = list(range(s, min(s + bs, n)))
    imgs = np.zeros((bs, CROP, CROP, 3), np.uint8)
    ok = np.zeros(bs, bool)
    for j, i in enumerate(idx):
      if problems[i]:
        continue
      try:
        imgs[j] = data.crop(i, CROP)
        ok[j] = True
      except (BadExample, ValueError) as e:
        problems[i] = f"unreadable input: {e}"
    p = np.zeros((bs, 68, 2), np.float32)
    m = np.zeros((bs, 68), bool)
    p[:len(idx)] = np.nan_to_num(pts[idx])
    m[:len(idx)] = mask[idx]
    feed = {"image": imgs, "landmarks_mask": m, "flm_landmarks": p}  # padded to one shape: one compile
    pw = np.asarray(predict(params, batch_stats, feed), np.float64)
    for j, i in enumerate(idx):
      if ok[j]:
        out[i] = pw[j]
    bar.update(len(idx))
  bar.close()
  return out, problems


def landmarks_from_params(face, pw: np.ndarray) -> np.ndarray:
  """(N, 62) whitened -> (N, 68, 3) crop landmarks (NaN rows stay NaN)."""
  import jax.numpy as jnp
  from jface import geometry
  return np.asarray(geometry.landmarks3d(face, jnp.asarray(pw, jnp.float32)), np.float64)


# ------------------------------------------------------------------------------------------ face model

def load_face(spec: Optional[str], dense_bases_dir: Optional[str] = None):
  from jface import bfm as bfm_lib
  if not spec:
    raise MissingAssetError(f"missing 3DMM folder {DEFAULT_BFM_DIR}: params predictions need the face model; "
                            f"pass --bfm_dir (3DDFA's train.configs)")
  if spec == "synthetic":
    return bfm_lib.load_model("synthetic")
  return bfm_lib.load_3ddfa(spec, dense_bases_dir=dense_bases_dir or None)


# ------------------------------------------------------------------------------------------- metrics

def dense_errors(face, pred_pw: np.ndarray, gt_pw: np.ndarray, roi_box: np.ndarray, icp_stride: int = 0,
                 chunk: int = 8) -> dict:
  """Dense-vertex NME (2D, 3D; ``metrics.nme_dense``) and ICP reconstruction NME (``reconstruction_nme`` on every
  ``icp_stride``-th vertex; 0 = 50 for meshes > 20k vertices as 2DASL's script, else all) in the original image.

  Args: pred_pw, gt_pw (N, 62) whitened (NaN rows = failures); roi_box (N, 4). Returns dict of (N,) percent.
  """
  import jax.numpy as jnp
  from jface import geometry
  n = len(pred_pw)
  nv = face.n_vertices
  stride = icp_stride or (50 if nv > 20000 else 1)
  out = {k: np.full(n, np.nan) for k in ("dense_2d", "dense_3d", "icp")}
  ok = np.all(np.isfinite(pred_pw), -1) & np.all(np.isfinite(gt_pw), -1) & np.all(np.isfinite(roi_box), -1)
  idx = np.nonzero(ok)[0]
  for s in range(0, len(idx), chunk):
    ii = idx[s:s + chunk]
    v = lambda pw: np.asarray(geometry.crop_to_image(
        geometry.dense_vertices(face, jnp.asarray(pw[ii], jnp.float32)),
        jnp.asarray(roi_box[ii], jnp.float32), face.crop_size), np.float64)
    vp, vg = v(pred_pw), v(gt_pw)
    out["dense_2d"][ii] = metrics.nme_dense(vp, vg, dims=2)
    out["dense_3d"][ii] = metrics.nme_dense(vp, vg, dims=3)
    out["icp"][ii] = metrics.reconstruction_nme(vp[:, ::stride], vg[:, ::stride])
  return out


def _gt_params_from_mats(data: EvalData, face) -> tuple[Optional[np.ndarray], str]:
  """Whitened GT params of AFLW2000-3D fits (40/10 truncated) in the data's crop boxes, or (None, reason)."""
  from datasets import mat_layout
  if face.name != "bfm":
    return None, f"the AFLW2000-3D .mat fits are BFM coefficients but the face model is {face.name!r}"
  if data.mat_dir is None:
    return None, f"no .mat fits next to the data (expected {os.path.join('DIR', 'AFLW2000')})"
  out = np.full((len(data), 62), np.nan)
  for i, name in enumerate(data.names):
    stem = os.path.splitext(name)[0]
    try:
      mat = common.read_mat(os.path.join(data.mat_dir, stem + ".mat"))
      h = common.image_size(os.path.join(data.mat_dir, name))[0]
      out[i] = mat_layout.mat_to_params(mat, data.roi_box[i], h, face)
    except (BadExample, ValueError, KeyError):
      pass
  return out, ""


def label_params(data: EvalData, face) -> tuple[Optional[np.ndarray], str]:
  """(N, 62) whitened params of the dataset's own labels (NaN rows where a label is unreadable), or (None, reason).

  AFLW2000-3D: the ``.mat`` fits converted as the training readers do (``datasets.mat_layout.mat_to_params``, 40/10
  components, in the data's crop boxes); synthetic: the sampled params. AFLW has no 3DMM labels. Used by
  ``--labels`` (as predictions) and as the dense ground truth.
  """
  if data.gt_params is not None:
    return np.asarray(data.gt_params, np.float64), ""
  if data.dataset != "aflw2000_3d":
    return None, f"the {data.dataset} data have no 3DMM labels"
  return _gt_params_from_mats(data, face)


def compute_errors(data: EvalData, pred_lm: np.ndarray) -> dict:
  """Per-image errors (percent): dict(nme_2d (N,), nme_3d (N,) or None, key, npts)."""
  n = len(data)
  if data.dataset == "aflw2000_3d":
    res = metrics.aflw2000_nme(pred_lm, data.roi_box, data.gt, data.yaw, data.names, subset="2000")
    return dict(nme_2d=res["nme2d"], nme_3d=res.get("nme3d"), npts=68)
  if data.dataset == "aflw":
    res = metrics.aflw_nme(pred_lm, data.roi_box, data.gt, data.yaw)
    return dict(nme_2d=res["nme"], nme_3d=None, npts=21)
  e2 = metrics.nme_2d(pred_lm[..., :2], data.gt[..., :2])
  e3 = metrics.nme_3d(pred_lm, data.gt) if pred_lm.shape[-1] == 3 else None
  assert e2.shape == (n,)
  return dict(nme_2d=e2, nme_3d=e3, npts=68)


def _summary(errors: np.ndarray, yaw: np.ndarray) -> dict:
  s = metrics.yaw_bin_summary(errors, yaw)
  return {k: s[k] for k in ("bins", "mean_of_bins", "overall", "n", "n_failed", "counts", "failed", "labels",
                            "n_unbinned", "std_of_bins")}


def _nan_to_none(x):
  if isinstance(x, dict):
    return {k: _nan_to_none(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [_nan_to_none(v) for v in x]
  if isinstance(x, (float, np.floating)):
    return None if not math.isfinite(float(x)) else float(x)
  if isinstance(x, np.integer):
    return int(x)
  return x


# ------------------------------------------------------------------------------------------- outputs

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
  import cv2
  from jface import render
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
      return common.image_to_crop(np.nan_to_num(pts[0]), data.roi_box[i]), vis[0]
    return common.image_to_crop(np.swapaxes(data.gt[i], 0, 1)[:, :2], data.roi_box[i]), None

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


def _write_png(path: str, rgb: np.ndarray, colors: int = 256) -> None:
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


# ---------------------------------------------------------------------------------------------- main

def build_parser() -> argparse.ArgumentParser:
  ap = argparse.ArgumentParser(
      prog="evaluate.py", description="Evaluate 3DMM-parameter or landmark predictions (or a train.py checkpoint) "
      "on AFLW2000-3D (68 points, per |yaw| bin), AFLW (21 points) or synthetic faces.",
      epilog="Docs: jface/evaluation.py. Outputs in --out: results.json, per_image.csv, ced.png, best_worst.png.")
  ap.add_argument("--dataset", choices=DATASETS, default="aflw2000_3d")
  ap.add_argument("--data_dir", help="aflw2000_3d: crop layout (crops/ + meta.npz) or original layout "
                  "(AFLW2000/*.jpg|.mat); aflw: aflw_wild-style folder (crops/ + meta.npz with pts21)")
  ap.add_argument("--layout", choices=("auto", "crops", "original"), default="auto",
                  help="aflw2000_3d layout; auto = meta.npz when present")
  ap.add_argument("--subset", choices=("1998", "2000"), default="1998",
                  help="AFLW2000-3D images: 1998 drops image02139/image03862 (2DASL/3DDFA benchmark)")
  ap.add_argument("--gt", choices=("original", "reannotated"), default="original",
                  help="AFLW2000-3D ground truth: pts68 (original) or pts68_reannotated (2D) of the meta")
  src = ap.add_mutually_exclusive_group(required=True)
  src.add_argument("--predictions", help=".npy (N, 62) whitened params in the dataset's image order, or .npz "
                   "with names + params (N, 62) or landmarks (N, 68, 2) in 120x120 crop pixels")
  src.add_argument("--checkpoint", help="a train.py workdir (config.json + checkpoints/)")
  src.add_argument("--labels", action="store_true", help="evaluate the dataset's own 3DMM labels as predictions: "
                   "aflw2000_3d: the .mat fits converted to the 62 params (what training sees; the label floor); "
                   "synthetic: the sampled params")
  ap.add_argument("--which", choices=("latest", "best"), default="latest", help="checkpoint to load")
  ap.add_argument("--out", required=True, help="output folder")
  ap.add_argument("--bfm_dir", default=None, help="3DDFA-format 3DMM folder (default: the checkpoint's "
                  f"config.bfm_dir, else {DEFAULT_BFM_DIR} when it exists)")
  ap.add_argument("--dense_bases_dir", default=None, help="folder with w_shp_sim.npy / w_exp_sim.npy (enables "
                  "dense / ICP NME with the real BFM)")
  ap.add_argument("--flm", choices=("auto", "detector", "mean", "gt"), default="auto",
                  help="landmark-map input of checkpoints with use_flm: auto = meta fan_pts68_crop when present, "
                  "else the mean face's landmarks; gt = ground truth (oracle)")
  ap.add_argument("--num", type=int, default=200, help="synthetic: number of faces")
  ap.add_argument("--seed", type=int, default=12345, help="synthetic: seed")
  ap.add_argument("--limit", type=int, default=0, help="evaluate only the first N images (0 = all)")
  ap.add_argument("--batch_size", type=int, default=32, help="checkpoint inference batch")
  ap.add_argument("--grid", type=int, default=8, help="images per row of best_worst.png")
  ap.add_argument("--tile", type=int, default=128, help="tile side (px) of best_worst.png")
  ap.add_argument("--icp_stride", type=int, default=0, help="ICP on every k-th vertex (0 = auto: 50 for the "
                  "53k-vertex BFM as 2DASL's script, else 1)")
  ap.add_argument("--no_dense", action="store_true", help="skip dense / ICP NME")
  return ap


def main(argv: Optional[Sequence[str]] = None, log=print) -> int:
  """The CLI. Returns the exit code (0 evaluated, 1 nothing could be evaluated, 2 input error: one ``error:`` line
  on stderr; set ``JFACE_DEBUG=1`` for the traceback). ``log`` receives the report lines (default ``print``)."""
  argv = list(sys.argv[1:] if argv is None else argv)
  args = build_parser().parse_args(argv)
  try:
    return run(args, argv, log)
  except (EvalError, MissingAssetError, BadExample, FileNotFoundError, ValueError) as e:
    if os.environ.get("JFACE_DEBUG"):
      raise
    msg = " ".join(str(e).split())
    print(f"error: {msg}", file=sys.stderr)
    return 2


def _source(args) -> str:
  if args.predictions:
    return "predictions " + args.predictions
  return "checkpoint " + args.checkpoint if args.checkpoint else "the dataset's own 3DMM labels"


def _default_bfm_dir() -> Optional[str]:
  return DEFAULT_BFM_DIR if os.path.isdir(DEFAULT_BFM_DIR) else None


def run(args: argparse.Namespace, argv: Sequence[str], log=print) -> int:
  """Evaluates per the parsed ``args`` (see ``build_parser``); writes ``args.out``. Returns the exit code."""
  # ---- face model / checkpoint
  config = state = face = None
  face_spec = args.bfm_dir
  if args.checkpoint:
    from jface import train_lib
    if not os.path.isdir(args.checkpoint):
      raise MissingAssetError(f"missing checkpoint workdir {args.checkpoint}")
    config, state = train_lib.load_checkpoint(args.checkpoint, args.which)
    face_spec = args.bfm_dir or config.bfm_dir
    log(f"checkpoint {args.checkpoint} ({args.which}, step {int(state.step)}, model {config.model})")
  if args.dataset == "synthetic":
    if face_spec not in (None, "", "synthetic"):
      if args.checkpoint and not args.bfm_dir:
        raise EvalError(f"--dataset synthetic needs a checkpoint trained with the synthetic face model "
                        f"(its config.bfm_dir is {face_spec!r})")
      log(f"note: --dataset synthetic uses the embedded synthetic face model (ignoring --bfm_dir {face_spec})")
    face_spec = "synthetic"
  face_loader = lambda: load_face(face_spec or _default_bfm_dir(), args.dense_bases_dir)

  # ---- ground truth
  if args.dataset == "synthetic":
    face = face_loader()
    data = load_synthetic(args.num, args.seed, face)
  elif args.dataset == "aflw2000_3d":
    data = load_aflw2000(_need_dir(args.data_dir, args.dataset), args.gt, args.layout)
  else:
    data = load_aflw(_need_dir(args.data_dir, args.dataset))

  # ---- predictions aligned with all the dataset's images, then subset / limit
  preds = None
  if args.predictions:
    preds = read_predictions(args.predictions, list(data.names), data.order)
  keep = np.ones(len(data), bool)
  if args.dataset == "aflw2000_3d":
    keep &= metrics.subset_mask(data.names, args.subset)
  keep = np.nonzero(keep)[0]
  if args.limit > 0:
    keep = keep[:args.limit]
  data = data.take(keep)
  status = data.problems.copy()
  n = len(data)
  if n == 0:
    raise EvalError("no images to evaluate")

  pred_pw = pred_lm = None
  if preds is not None:
    pred_pw = None if preds.params is None else preds.params[keep]
    pred_lm = None if preds.landmarks is None else preds.landmarks[keep]
    missing = preds.missing[keep]
    for i in np.nonzero(missing & (status == ""))[0]:
      status[i] = "missing prediction"
    if missing.any():
      log(f"note: {int(missing.sum())} of {n} images have no prediction in {args.predictions}: counted as "
          f"failures (e.g. {', '.join(data.names[missing][:3])})")
  elif args.labels:
    face = face or face_loader()
    pred_pw, why = label_params(data, face)
    if pred_pw is None:
      raise EvalError(f"--labels: {why}")
    for i in np.nonzero(~np.all(np.isfinite(pred_pw), -1) & (status == ""))[0]:
      status[i] = "unreadable label (.mat)"
  else:
    face = face or face_loader()
    pred_pw, status = predict_checkpoint(config, state, data, face, args.flm, args.batch_size, log)
  if pred_pw is not None:
    face = face or face_loader()
    pred_lm = landmarks_from_params(face, pred_pw)
  pred_lm = np.array(pred_lm, np.float64)
  finite = np.all(np.isfinite(pred_lm.reshape(n, -1)), -1)
  for i in np.nonzero(~finite & (status == ""))[0]:
    status[i] = "non-finite prediction"
  bad = status != ""
  pred_lm[bad] = np.nan  # unreadable inputs fail even when a prediction exists

  # ---- landmark errors
  err = compute_errors(data, pred_lm)
  e2, e3 = err["nme_2d"], err["nme_3d"]
  npts = err["npts"]
  key2, key3 = f"nme_2d_{npts}", f"nme_3d_{npts}"
  s2 = _summary(e2, data.yaw)
  results = {"dataset": args.dataset, "data_dir": args.data_dir, "layout": data.layout,
             "subset": args.subset if args.dataset == "aflw2000_3d" else None,
             "gt": data.gt_kind, "predictions": args.predictions, "checkpoint": args.checkpoint,
             "labels": bool(args.labels),
             "n_images": n, key2: s2}
  rows = [(f"NME 2D {npts}", s2)]
  skipped = {}
  if e3 is not None:
    s3 = _summary(e3, data.yaw)
    results[key3] = s3
    rows.append((f"NME 3D {npts}", s3))
  else:
    why = ("the AFLW 21-point GT is 2D" if args.dataset == "aflw" else "the re-annotated GT is 2D"
           if data.gt_kind == "reannotated" else "the predictions are 2D landmarks")
    results[key3] = None
    skipped[key3] = why

  # ---- dense / ICP
  dense = None
  if args.no_dense:
    skipped["dense"] = "--no_dense"
  elif pred_pw is None:
    skipped["dense"] = "the predictions are landmarks, not 3DMM params"
  elif args.dataset == "aflw":
    skipped["dense"] = "AFLW has no 3D ground truth"
  elif not face.has_dense_bases:
    skipped["dense"] = (f"the face model ({face_spec or _default_bfm_dir()}) has no dense shape/expression bases "
                        f"(w_shp_sim.npy, w_exp_sim.npy; pass --dense_bases_dir), so neither the predicted nor "
                        f"the ground-truth dense shapes can be built")
  else:
    gt_pw, why = (pred_pw, "") if args.labels else label_params(data, face)
    if gt_pw is None:
      skipped["dense"] = why
    else:
      pw = np.where(bad[:, None], np.nan, pred_pw)
      dense = dense_errors(face, pw, gt_pw, data.roi_box, args.icp_stride)
      for k, lab in (("dense_2d", "dense 2D"), ("dense_3d", "dense 3D"), ("icp", "ICP 3D recon")):
        results[f"nme_{k}"] = _summary(dense[k], data.yaw)
        rows.append((f"NME {lab}", results[f"nme_{k}"]))
      if args.dataset == "aflw2000_3d":
        results["dense_note"] = "dense GT = the .mat fits truncated to the model's 40/10 components"

  # ---- failures
  reasons = {}
  for st in status:
    if st:
      key = st.split(":")[0]
      reasons[key] = reasons.get(key, 0) + 1
  results.update(n_failed=int(s2["n_failed"]), failures=reasons,
                 failed_images={str(nm): str(st) for nm, st in zip(data.names, status) if st},
                 skipped=skipped, command="python evaluate.py " + shlex.join(list(argv)))

  # ---- report
  if args.dataset == "aflw2000_3d":
    title = (f"AFLW2000-3D ({args.subset} subset, {data.gt_kind} GT, {data.layout} layout): {n} images, "
             f"{_source(args)}")
  elif args.dataset == "aflw":
    title = f"AFLW 21 points: {n} images"
  else:
    title = f"synthetic faces (num {args.num}, seed {args.seed}): {n} images"
  log(format_table(title, rows))
  for k, why in skipped.items():
    log(f"{k.replace('_', ' ')} skipped: {why}")
  if reasons:
    log(f"failures: {sum(reasons.values())} ({', '.join(f'{v} {k}' for k, v in reasons.items())}); e.g. "
        + "; ".join(f"{nm}: {st}" for nm, st in list(results["failed_images"].items())[:3]))

  # ---- files
  os.makedirs(args.out, exist_ok=True)
  with open(os.path.join(args.out, "results.json"), "w") as f:
    json.dump(_nan_to_none(results), f, indent=2)
  write_csv(os.path.join(args.out, "per_image.csv"), data.names, data.yaw, e2, e3, status)
  if s2["n"] == 0:
    log(f"error: nothing could be evaluated ({n} images, all failed); wrote {args.out}/results.json")
    return 1
  curves = {f"2D {npts} pts": e2}
  if e3 is not None:
    curves[f"3D {npts} pts"] = e3
  metrics.plot_ced(curves, os.path.join(args.out, "ced.png"), title=title.split(":")[0])
  grid = best_worst_grid(data, pred_lm, e2, args.grid, args.tile)
  if grid is not None:
    _write_png(os.path.join(args.out, "best_worst.png"), grid)
  log(f"wrote {args.out}/results.json, per_image.csv, ced.png, best_worst.png")
  return 0
