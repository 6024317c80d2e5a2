"""2D-only in-the-wild readers: AFLW crops with 21 points, and a generic folder of images + landmarks file.

AFLW 21 points -> iBUG-68 (``AFLW21_TO_IBUG68``, 0-based; -1 = no iBUG counterpart, mask False). AFLW order,
"left" = image left: 0-2 left brow (left end, centre, right end), 3-5 right brow, 6-8 left eye (left corner,
centre, right corner), 9-11 right eye, 12 left ear lobe, 13-15 nose (left wing, tip, right wing), 16 right ear
lobe, 17-19 mouth (left corner, centre, right corner), 20 chin. Mapping: brow ends/centres 17 19 21 22 24 26, eye
corners 36 39 42 45, nose 31 30 35, mouth corners 48 54, chin 8, ear lobes 2 and 14 (jaw points; ``ears=False``
drops them); eye centres and the mouth centre have no single iBUG point (the mouth centre sits between 62 and
66, which are 4 % of the face size apart at the median: open mouths) and stay masked.
Verified on ../shared: (a) AFLW2000-3D ``.mat`` files carry both ``pt2d`` (the AFLW 21 points) and ``pt3d_68``:
each mapped pair is the nearest pt3d_68 point, median distance 1.8-3.9 % of sqrt(w h) of the 68-point box
(nose wings 3.9 %, ears 2.5 / 2.8 %, others 1.8-2.8 %), p90 <= 6.2 %, over 999 images; (b) on aflw_wild, for
|yaw| < 20 deg, brow centre < eye < nose tip < mouth centre < chin in y and every left/right pair ordered in x
for >= 98.9 % of 3000+ faces.

``aflw_wild`` layout: ``root/crops/<name>`` (120 x 120) + ``root/meta.npz`` with ``names``, ``roi_box`` (N, 4),
``yaw`` (N,), ``pts21`` (N, 2, 21) in ORIGINAL image coordinates, invisible points with x = -1.

Generic folder: images under ``image_dir`` + a landmarks file (``read_landmarks_file``):

* CSV (written by ``write_landmarks_csv`` and ``jface.data.pseudo_label``): optional ``#`` comment lines, a header
  ``name,x0,y0,x1,y1,...,x67,y67``, then one row per image: ``name`` = path relative to ``image_dir``, then the
  68 iBUG points in ORIGINAL-image pixels, 1-based (array pixel ``[r, c]`` has its centre at ``(c + 1, r + 1)``,
  as ``pt3d_68``); an empty field or ``nan`` = unknown point (mask False). A name repeated later overrides.
* or ``.npz`` with ``names`` (N,) str and ``landmarks`` (N, 68, 2) float (NaN = unknown), same conventions.

The crop box is 3DDFA's box from the known landmarks, clipped to the image (``roi="landmarks"``), or the whole
image (``roi="full"``: for folders that already hold face crops). Rows with < 2 known points are ``BadExample``.
"""
from __future__ import annotations

import csv
import io
import os
from typing import Iterable, Sequence

import numpy as np

from jface.core.face_model import CROP_SIZE

from jface.core import crop
from jface.data import common
from jface.data.common import bad

AFLW21_TO_IBUG68 = np.array([17, 19, 21, 22, 24, 26, 36, -1, 39, 42, -1, 45, 2, 31, 30, 35, 14, 48, -1, 54, 8])
AFLW21_EARS = (12, 16)
CSV_HEADER = ["name"] + [f"{a}{k}" for k in range(68) for a in "xy"]
CSV_COMMENT = ("# jface landmarks: name, then x0,y0..x67,y67 (iBUG-68) in original-image pixels, 1-based "
               "(pixel [r, c] centre = (c+1, r+1)); empty or nan = unknown")


def aflw21_to_ibug68(pts21: np.ndarray, ears: bool = True) -> tuple[np.ndarray, np.ndarray]:
  """AFLW 21 points (2, 21) or (21, 2), invisible = x -1 -> (pts68 (68, 2) float32, 0 where unknown;
  mask (68,) bool)."""
  p = np.asarray(pts21, np.float64)
  if p.shape == (2, 21):
    p = p.T
  if p.shape != (21, 2):
    raise ValueError(f"aflw21_to_ibug68: expected (2, 21) or (21, 2), got {p.shape}")
  vis = (p[:, 0] != -1) & np.all(np.isfinite(p), -1) & (AFLW21_TO_IBUG68 >= 0)
  if not ears:
    vis[list(AFLW21_EARS)] = False
  out = np.zeros((68, 2), np.float32)
  mask = np.zeros(68, bool)
  out[AFLW21_TO_IBUG68[vis]] = p[vis]
  mask[AFLW21_TO_IBUG68[vis]] = True
  return out, mask


class AFLWWildSource(common.Source):
  """AFLW in-the-wild crops (``root/crops`` + ``root/meta.npz``), 2D labels only (``has_params`` False).

  Example: landmarks = the AFLW points mapped to iBUG-68 in crop coords (mask = visible and mapped), roi box and
  yaw from the meta, plus ``gt_pts21`` (2, 21) float32 = the meta's original-image points (x = -1 invisible).
  """

  def __init__(self, root: str, ears: bool = True, source: str = "aflw_wild", crop_size: int = common.CROP_SIZE):
    self.root = root
    self.meta, self.names = common.open_crop_folder(root, ("names", "roi_box", "pts21"), "AFLWWildSource")
    self.ears = ears
    self.source = source
    self.crop_size = crop_size
    self._yaw = self.meta.get("yaw", np.full(len(self.names), np.nan, np.float32))

  def _load(self, i: int) -> dict:
    name = self.names[i]
    img = common.read_crop(self.root, name, self.crop_size)
    box = np.asarray(self.meta["roi_box"][i], np.float32)
    pts21 = np.asarray(self.meta["pts21"][i], np.float32)
    pts, mask = aflw21_to_ibug68(pts21, self.ears)
    lm = crop.image_to_crop(pts, box, self.crop_size)
    return common.make_example(img, box, source=self.source, name=name, landmarks=lm, landmarks_mask=mask,
                               yaw=float(self._yaw[i]), crop_size=self.crop_size, gt_pts21=pts21)


# ------------------------------------------------------------------------------- landmarks file

def _parse_float(s: str) -> float:
  s = s.strip()
  return float("nan") if s == "" else float(s)


def read_landmarks_file(path: str) -> tuple[list[str], np.ndarray]:
  """Landmarks file (CSV or .npz, module docstring) -> (names, pts (N, 68, 2) float32, NaN = unknown).

  Raises ``ValueError`` (one line, naming the file and line) on a malformed file.
  """
  if not os.path.exists(path):
    raise FileNotFoundError(f"landmarks file not found: {path}")
  if path.endswith(".npz"):
    meta = common.load_meta(path)
    if "names" not in meta or "landmarks" not in meta:
      raise ValueError(f"{path}: needs 'names' (N,) and 'landmarks' (N, 68, 2)")
    pts = np.asarray(meta["landmarks"], np.float32)
    if pts.ndim != 3 or pts.shape[1:] != (68, 2) or len(pts) != len(meta["names"]):
      raise ValueError(f"{path}: landmarks must be (N, 68, 2) for N names, got {pts.shape}")
    return [str(n) for n in meta["names"]], pts
  rows: dict[str, np.ndarray] = {}
  with open(path, newline="", encoding="utf-8") as f:
    reader = csv.reader(line for line in f if not line.lstrip().startswith("#"))
    for k, row in enumerate(reader):
      if not row or (len(row) == 1 and not row[0].strip()):
        continue
      if row[0] == "name":
        continue  # header (possibly repeated by appends)
      if len(row) != 137:
        raise ValueError(f"{path}: row {k + 1} ({row[0]!r}) has {len(row)} fields, expected 137 "
                         "(name + 68 x,y)")
      try:
        vals = np.array([_parse_float(v) for v in row[1:]], np.float32).reshape(68, 2)
      except ValueError as e:
        raise ValueError(f"{path}: row {k + 1} ({row[0]!r}): {e}") from None
      rows[row[0]] = vals
  names = list(rows)
  pts = np.stack([rows[n] for n in names]) if names else np.zeros((0, 68, 2), np.float32)
  return names, pts


def _fmt(v: float) -> str:
  return "" if not np.isfinite(v) else f"{float(v):.3f}"


def write_landmarks_csv(path: str, names: Sequence[str], pts: np.ndarray, append: bool = False) -> None:
  """Writes (or appends) rows ``name, x0, y0, ..., x67, y67`` (pts (N, 68, 2) image pixels, 1-based, NaN =
  unknown, written as empty fields). Writes the comment + header when the file is new or empty."""
  pts = np.asarray(pts, np.float64).reshape(len(names), 68, 2)
  new = not (append and os.path.exists(path) and os.path.getsize(path) > 0)
  buf = io.StringIO()
  w = csv.writer(buf, lineterminator="\n")
  if new:
    buf.write(CSV_COMMENT + "\n")
    w.writerow(CSV_HEADER)
  for n, p in zip(names, pts):
    w.writerow([n] + [_fmt(v) for v in p.reshape(-1)])
  with open(path, "w" if new else "a", newline="", encoding="utf-8") as f:
    f.write(buf.getvalue())
    f.flush()


class FolderSource(common.Source):
  """Images under ``image_dir`` listed in a landmarks file (module docstring); 2D labels only.

  Args:
    image_dir: folder of images; names in the landmarks file are relative to it.
    landmarks_file: ``.csv`` or ``.npz``.
    roi: ``"landmarks"`` (3DDFA box from the known points, clipped to the image) or ``"full"`` (whole image).
    source: the ``source`` field.
  """

  def __init__(self, image_dir: str, landmarks_file: str, roi: str = "landmarks", source: str = "folder",
               crop_size: int = CROP_SIZE):
    if roi not in ("landmarks", "full"):
      raise ValueError(f"roi must be 'landmarks' or 'full', got {roi!r}")
    if not os.path.isdir(image_dir):
      raise FileNotFoundError(f"FolderSource: no folder {image_dir}")
    self.image_dir = image_dir
    self.names, self.pts = read_landmarks_file(landmarks_file)
    self.roi = roi
    self.source = source
    self.crop_size = crop_size

  def _load(self, i: int) -> dict:
    name = self.names[i]
    path = os.path.join(self.image_dir, name)
    img = common.read_image(path)
    pts = self.pts[i]
    mask = np.all(np.isfinite(pts), -1)
    h, w = img.shape[:2]
    if self.roi == "full":
      box = np.array([1, 1, w, h], np.float32)
    else:
      try:
        box = common.roi_box_from_landmarks(pts, mask, image_shape=img.shape)
      except ValueError as e:
        raise bad(path, f"no usable landmarks ({e})") from None
    try:
      patch = common.crop_image(img, box, self.crop_size)
    except ValueError as e:
      raise bad(path, e) from None
    lm = crop.image_to_crop(np.where(mask[:, None], pts, 0), box, self.crop_size)
    return common.make_example(patch, box, source=self.source, name=name, landmarks=lm, landmarks_mask=mask,
                               crop_size=self.crop_size)


def list_images(image_dir: str, exts: Iterable[str] = (".jpg", ".jpeg", ".png", ".bmp")) -> list[str]:
  """Image paths under ``image_dir`` (recursive), relative to it, sorted."""
  exts = tuple(e.lower() for e in exts)
  out = []
  for dirpath, _, files in os.walk(image_dir):
    for f in files:
      if f.lower().endswith(exts):
        out.append(os.path.relpath(os.path.join(dirpath, f), image_dir))
  return sorted(out)
