"""Evaluation sets as ground truth (``EvalData``): AFLW2000-3D (crop or original layout), AFLW (21 points),
synthetic faces; ``from_spec`` maps a training data spec (``config.data.dev``) to the same sets.

* ``aflw2000_3d``, crop layout (preferred when ``DIR/meta.npz`` exists): ``DIR/crops/`` + ``meta.npz`` (``names``,
  ``yaw``, ``roi_box``, ``pts68``, optional ``pts68_reannotated`` / ``fan_pts68_crop``). Original layout:
  ``DIR/AFLW2000/*.jpg|.mat`` (or ``DIR/*.jpg|.mat``): GT = ``pt3d_68``, roi box = 3DDFA's box from those landmarks
  clipped to the image (``jface.data.common.roi_box_from_landmarks``; equals the benchmark boxes), yaw =
  ``Pose_Para[1]`` in degrees, unwrapped like the benchmark's (= the meta's); image order = sorted file names.
* ``aflw``: ``DIR/crops/`` + ``meta.npz`` with ``names``, ``roi_box``, ``yaw``, ``pts21`` (``aflw_wild``).
* ``synthetic``: ``jface.data.synthetic_faces.SyntheticFaces(num, seed)``; GT = the sampled params' landmarks in
  the crop (roi box = the crop), binned by their yaw.
"""
from __future__ import annotations

import dataclasses
import glob
import os
import sys
from typing import Callable, Optional, Sequence

import cv2
import jax.numpy as jnp
import numpy as np

from jface.core import geometry
from jface.core.face_model import CROP_SIZE, MissingAssetError
from jface.core.load import load_model
from jface.data import common, mat_layout
from jface.data.common import BadExample
from jface.data.synthetic_faces import SyntheticFaces

CROP = CROP_SIZE
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEFAULT_BFM_DIR = os.path.join(os.path.dirname(ROOT), "shared", "data", "3dmm")
DATASETS = ("aflw2000_3d", "aflw", "synthetic")


class EvalError(ValueError):
  """A one-line user-facing error (bad flag combination, bad file)."""


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


def from_spec(spec: str, face) -> EvalData:
  """The evaluation set of a training data spec (``jface.data.registry``): ``crops:DIR`` (an AFLW2000-3D crop
  folder with ``pts68``, or an ``aflw_wild``-style one with ``pts21``), ``aflw_wild:DIR``, ``mat:DIR``
  (AFLW2000-3D original layout) or ``synthetic:N[:SEED]``. Rows follow the training source's order, so
  ``EvalData.take`` selects the same examples as an index subset of the source."""
  kind, _, rest = spec.partition(":")
  if kind == "synthetic":
    args = rest.split(":") if rest else []
    if not args or not args[0].isdigit():
      raise ValueError(f"data spec {spec!r}: expected synthetic:N[:SEED]")
    return load_synthetic(int(args[0]), int(args[1]) if len(args) > 1 else 0, face)
  if kind == "crops":
    meta = os.path.join(rest, "meta.npz")
    if os.path.exists(meta) and "pts21" in common.load_meta(meta) and "pts68" not in common.load_meta(meta):
      return load_aflw(rest)
    return load_aflw2000(rest, layout="crops")
  if kind == "aflw_wild":
    return load_aflw(rest)
  if kind == "mat":
    return load_aflw2000(rest, layout="original")
  raise ValueError(f"cannot evaluate on data spec {spec!r}: use crops:DIR, aflw_wild:DIR, mat:DIR or "
                   f"synthetic:N[:SEED]")


def load_face(spec: Optional[str], dense_bases_dir: Optional[str] = None):
  if not spec:
    raise MissingAssetError(f"missing 3DMM folder {DEFAULT_BFM_DIR}: params predictions need the face model; "
                            f"pass --bfm_dir (3DDFA's train.configs)")
  if spec == "synthetic":
    return load_model("synthetic")
  return load_model(spec, dense_bases_dir=dense_bases_dir or None)
