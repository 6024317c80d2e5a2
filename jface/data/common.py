"""Shared helpers of the dataset readers: decoding, the 3DDFA crop, the example dict, bad-example handling.

Every reader (``mat_layout``, ``crops_layout``, ``wild``, ``tfds_sources``) is a random-access ``Source``:
``len(src)``, ``src[i] -> dict`` (deterministic; negative indices allowed), ``src.names``. One example is::

  image:          (120, 120, 3) uint8 RGB crop
  params:         (62,) float32 whitened 3DMM params of the crop (zeros when unknown); has_params: bool
  landmarks:      (68, 2) float32 crop coordinates; landmarks_mask: (68,) bool (False = invisible/unknown;
                  masked-out entries are 0, never NaN)
  roi_box:        (4,) float32 (sx, sy, ex, ey) crop box in the original image
  yaw:            float32 degrees (NaN when unknown)
  source, name:   str
  (+ reader-specific extra keys, the same keys for every example of one source, e.g. ``gt_pts68``.)

Coordinates (3DDFA v1 / 2DASL): original-image points are 1-based (array pixel ``[r, c]`` has its centre at
``(x, y) = (c + 1, r + 1)``), as ``pt3d_68`` of AFLW2000-3D. Crop coordinates: ``x = (x_img - sx) * 120 / (ex - sx)``,
``y = (y_img - sy) * 120 / (ey - sy)`` (``image_to_crop``; numpy twins of ``jface.core.geometry``'s).

The crop (``crop_image``) reproduces the AFLW2000-3D benchmark crops: the box is rounded to integers and taken as
the INCLUSIVE 1-based pixel range ``sx..ex`` x ``sy..ey`` (array ``img[sy-1:ey, sx-1:ex]``, zero padded outside the
image), then resized to 120 x 120 (``INTER_AREA`` when shrinking, ``INTER_LINEAR`` when enlarging); measured
against ``../shared`` crops: mean |diff| 1.7 grey levels (JPEG noise), the other off-by-one variants 3.4-7.8.

The box from 68 landmarks (``roi_box_from_landmarks``) is 3DDFA's ``parse_roi_box_from_landmark``: bbox of the
points -> square of side ``L = max(w, h)`` about the bbox centre -> enlarged to its diagonal ``sqrt(2) L`` (same
centre, no shift); then ``sx = round(cx - sqrt(2) L / 2)``, ``ex = sx + round(sqrt(2) L)`` (same for y) and, when
the image size is known, clipped to ``[1, W] x [1, H]`` (the box may then be non-square: the crop is stretched
and ``image_to_crop`` uses separate x/y scales). From ``pt3d_68`` this reproduces the ``roi_box`` of all 1000
AFLW2000-3D images in ``../shared`` exactly. (3DDFA's detector-box variant, not used here, instead shifts the
centre down by 0.14 size and scales by 1.58.)

Corrupt/missing files raise ``BadExample`` (a ``ValueError``) whose one-line message names the file, so the
pipeline can skip and count them (``ErrorCounter`` does that for plain loops).
"""
from __future__ import annotations

import collections
import logging
import math
import os
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from jface.core.face_model import CROP_SIZE

log = logging.getLogger(__name__)

N_LANDMARKS = 68
N_PARAMS = 62
EXAMPLE_KEYS = ("image", "params", "has_params", "landmarks", "landmarks_mask", "roi_box", "yaw", "source",
                "name")


class BadExample(ValueError):
  """One example cannot be read (missing/corrupt file, bad content). ``str(err)`` is one line naming the file."""


def bad(path: Any, what: str) -> BadExample:
  """-> ``BadExample("<path>: <what>")`` on one line."""
  return BadExample(f"{path}: {' '.join(str(what).split())}")


# ------------------------------------------------------------------------------------------- files

def read_bytes(path: str) -> bytes:
  try:
    with open(path, "rb") as f:
      return f.read()
  except OSError as e:
    raise bad(path, f"cannot read file ({type(e).__name__}: {e.strerror or e})") from None


def _check_complete(data: bytes, path: str) -> None:
  """Rejects truncated JPEG/PNG files that OpenCV would silently decode into grey-padded garbage."""
  if data[:2] == b"\xff\xd8":  # JPEG: needs its end-of-image marker (FFD9 only occurs as a marker)
    if b"\xff\xd9" not in data[-4096:]:
      raise bad(path, "truncated JPEG (no end-of-image marker)")
  elif data[:8] == b"\x89PNG\r\n\x1a\n":
    if b"IEND" not in data[-64:]:
      raise bad(path, "truncated PNG (no IEND chunk)")


def decode_image(data: bytes, path: str = "<bytes>") -> np.ndarray:
  """Encoded image bytes -> (H, W, 3) uint8 RGB (grey images are expanded). Raises ``BadExample``."""
  import cv2
  if len(data) == 0:
    raise bad(path, "empty image file")
  _check_complete(data, path)
  img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
  if img is None or img.ndim != 3 or img.shape[0] == 0 or img.shape[1] == 0:
    raise bad(path, "cannot decode image")
  return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def read_image(path: str) -> np.ndarray:
  """Image file -> (H, W, 3) uint8 RGB. Raises ``BadExample`` naming the file."""
  return decode_image(read_bytes(path), path)


def image_size(path: str) -> tuple[int, int]:
  """(height, width) of an image file from its header (Pillow), decoding it only as a fallback."""
  try:
    from PIL import Image
    with Image.open(path) as im:
      w, h = im.size
    return int(h), int(w)
  except FileNotFoundError:
    raise bad(path, "missing file") from None
  except Exception:  # noqa: BLE001 -- unknown format for Pillow: decode fully
    return read_image(path).shape[:2]


def read_mat(path: str) -> dict:
  """MATLAB .mat -> dict (scipy.io.loadmat). Raises ``BadExample`` naming the file."""
  import scipy.io
  if not os.path.exists(path):
    raise bad(path, "missing file")
  try:
    return scipy.io.loadmat(path)
  except Exception as e:  # noqa: BLE001 -- scipy raises many types on corrupt files
    raise bad(path, f"cannot read .mat ({type(e).__name__}: {e})") from None


def load_meta(path: str) -> dict:
  """meta.npz -> dict of arrays (no pickles). Raises ``BadExample`` naming the file."""
  if not os.path.exists(path):
    raise bad(path, "missing meta file")
  try:
    with np.load(path, allow_pickle=False) as z:
      return {k: z[k] for k in z.files}
  except Exception as e:  # noqa: BLE001
    raise bad(path, f"cannot read meta ({type(e).__name__}: {e})") from None


# ------------------------------------------------------------------------------------ coordinates

def roi_box_from_landmarks(pts: np.ndarray, mask: Optional[np.ndarray] = None,
                           image_shape: Optional[Sequence[int]] = None, scale: float = math.sqrt(2)) -> np.ndarray:
  """3DDFA's landmark crop box (see module docstring).

  Args:
    pts: (K, 2) image points (x, y), 1-based.
    mask: optional (K,) bool; only these (and finite) points count.
    image_shape: optional (H, W, ...): clip the box to ``[1, W] x [1, H]``, as the AFLW2000-3D benchmark.
    scale: box side / max(bbox w, h) (3DDFA: sqrt(2)).
  Returns:
    (4,) float32 integer-valued (sx, sy, ex, ey). Raises ``ValueError`` with fewer than 2 usable points.
  """
  pts = np.asarray(pts, np.float64).reshape(-1, 2)
  ok = np.all(np.isfinite(pts), -1)
  if mask is not None:
    ok &= np.asarray(mask, bool).reshape(-1)
  if ok.sum() < 2:
    raise ValueError(f"roi_box_from_landmarks: needs >= 2 usable points, got {int(ok.sum())}")
  p = pts[ok]
  lo, hi = p.min(0), p.max(0)
  c = (lo + hi) / 2
  side = scale * float(np.max(hi - lo))
  if not side > 0:
    raise ValueError("roi_box_from_landmarks: the points have zero extent")
  s = np.round(c - side / 2)
  box = np.concatenate([s, s + np.round(side)])
  if image_shape is not None:
    h, w = int(image_shape[0]), int(image_shape[1])
    box = np.clip(box, 1, [w, h, w, h])
  return box.astype(np.float32)


# ------------------------------------------------------------------------------------------- crop

def crop_image(img: np.ndarray, roi_box, size: int = CROP_SIZE, max_canvas: int = 4_000_000) -> np.ndarray:
  """Benchmark crop (see module docstring): (H, W, C) uint8 -> (size, size, C) uint8.

  Boxes beyond the image are zero padded. Boxes larger than ``max_canvas`` pixels (absurd labels) are cropped to
  their overlap with the image, which is resized into its place of the output (within 0.5 output pixel).
  Raises ``ValueError`` for an empty or non-finite box.
  """
  import cv2
  b = np.asarray(roi_box, np.float64).reshape(4)
  if not np.all(np.isfinite(b)):
    raise ValueError(f"crop_image: non-finite roi box {b.tolist()}")
  sx, sy, ex, ey = (int(v) for v in np.round(b))
  bw, bh = ex - sx + 1, ey - sy + 1
  if bw < 2 or bh < 2:
    raise ValueError(f"crop_image: empty roi box {b.tolist()}")
  h, w = img.shape[:2]
  squeeze = img.ndim == 2
  if squeeze:
    img = img[..., None]
  c = img.shape[2]
  r0, r1 = max(sy - 1, 0), min(ey, h)  # overlap with the image, 0-based half-open
  c0, c1 = max(sx - 1, 0), min(ex, w)

  def resize(a, ow, oh):
    interp = cv2.INTER_AREA if (a.shape[1] > ow or a.shape[0] > oh) else cv2.INTER_LINEAR
    out = cv2.resize(a, (ow, oh), interpolation=interp)
    return out.reshape(oh, ow, c)

  if bw * bh <= max_canvas:
    canvas = np.zeros((bh, bw, c), img.dtype)
    if r1 > r0 and c1 > c0:
      canvas[r0 - (sy - 1):r1 - (sy - 1), c0 - (sx - 1):c1 - (sx - 1)] = img[r0:r1, c0:c1]
    out = resize(canvas, size, size)
  else:
    out = np.zeros((size, size, c), img.dtype)
    if r1 > r0 and c1 > c0:
      kx, ky = size / bw, size / bh
      ox0, ox1 = int(round((c0 - (sx - 1)) * kx)), int(round((c1 - (sx - 1)) * kx))
      oy0, oy1 = int(round((r0 - (sy - 1)) * ky)), int(round((r1 - (sy - 1)) * ky))
      if ox1 > ox0 and oy1 > oy0:
        out[oy0:oy1, ox0:ox1] = resize(np.ascontiguousarray(img[r0:r1, c0:c1]), ox1 - ox0, oy1 - oy0)
  return out[..., 0] if squeeze else out


# ---------------------------------------------------------------------------------------- example

def make_example(image: np.ndarray, roi_box, *, source: str, name: str, params: Optional[np.ndarray] = None,
                 landmarks: Optional[np.ndarray] = None, landmarks_mask: Optional[np.ndarray] = None,
                 yaw: Optional[float] = None, crop_size: int = CROP_SIZE, **extra) -> dict:
  """Builds and validates the example dict (module docstring). Raises ``BadExample`` naming ``name``.

  ``params`` None -> zeros with ``has_params`` False; ``landmarks`` None -> zeros, mask all False;
  ``landmarks_mask`` None -> True where the landmark is finite. Non-finite or masked-out landmarks become 0.
  """
  image = np.asarray(image)
  if image.shape != (crop_size, crop_size, 3) or image.dtype != np.uint8:
    raise bad(name, f"image must be ({crop_size}, {crop_size}, 3) uint8, got {image.shape} {image.dtype}")
  if params is None:
    p, has = np.zeros(N_PARAMS, np.float32), False
  else:
    p, has = np.asarray(params, np.float32).reshape(-1), True
    if p.shape != (N_PARAMS,) or not np.all(np.isfinite(p)):
      raise bad(name, f"params must be {N_PARAMS} finite values, got shape {p.shape}")
  if landmarks is None:
    lm, mk = np.zeros((N_LANDMARKS, 2), np.float32), np.zeros(N_LANDMARKS, bool)
  else:
    lm = np.asarray(landmarks, np.float32)
    if lm.shape != (N_LANDMARKS, 2):
      raise bad(name, f"landmarks must be ({N_LANDMARKS}, 2), got {lm.shape}")
    fin = np.all(np.isfinite(lm), -1)
    mk = fin if landmarks_mask is None else (np.asarray(landmarks_mask, bool).reshape(-1) & fin)
    if mk.shape != (N_LANDMARKS,):
      raise bad(name, f"landmarks_mask must be ({N_LANDMARKS},), got {mk.shape}")
    lm = np.where(mk[:, None], lm, 0).astype(np.float32)
  box = np.asarray(roi_box, np.float32).reshape(-1)
  if box.shape != (4,) or not np.all(np.isfinite(box)):
    raise bad(name, f"roi_box must be 4 finite values, got {box.tolist()}")
  ex = {
      "image": image, "params": p, "has_params": np.bool_(has), "landmarks": lm, "landmarks_mask": mk,
      "roi_box": box, "yaw": np.float32(np.nan if yaw is None else yaw), "source": str(source), "name": str(name),
  }
  for k, v in extra.items():
    if k in ex:
      raise ValueError(f"make_example: extra key {k!r} shadows a standard field")
    ex[k] = v
  return ex


class Source:
  """Base of the readers: random access with bounds/negative-index handling over ``self.names``.

  Subclasses set ``names`` (list of str) and ``source`` (str) and implement ``_load(i) -> dict``.
  """
  names: list
  source: str = "source"

  def __len__(self) -> int:
    return len(self.names)

  def __getitem__(self, i) -> dict:
    n = len(self)
    i = int(i)
    if i < 0:
      i += n
    if not 0 <= i < n:
      raise IndexError(f"{type(self).__name__} index {i} out of range [0, {n})")
    return self._load(i)

  def _load(self, i: int) -> dict:
    raise NotImplementedError

  def __repr__(self) -> str:
    return f"{type(self).__name__}(source={self.source!r}, n={len(self)})"


def model_arrays(model) -> Optional[dict]:
  """FaceModel (or any object with the same attributes) -> dict of float64 numpy arrays, or None.
  Idempotent: a dict made by this function is returned as is."""
  if model is None or isinstance(model, dict):
    return model
  out = {k: np.asarray(getattr(model, k), np.float64) for k in ("param_mean", "param_std")}
  for k in ("u_base", "w_shp_base", "w_exp_base"):
    if getattr(model, k, None) is not None:
      out[k] = np.asarray(getattr(model, k), np.float64)
  out["crop_size"] = int(getattr(model, "crop_size", CROP_SIZE))
  return out


# ------------------------------------------------------------------------------------------ errors

class ErrorCounter:
  """Skips and counts ``BadExample`` in plain loops (the input pipeline does its own accounting).

  ``counter.get(src, i)`` -> the example, or None after logging its one-line reason (the first ``max_logged``
  reasons; later ones are only counted). ``counter.count``, ``counter.by_source``, ``counter.summary()``.
  """

  def __init__(self, max_logged: int = 20):
    self.max_logged = max_logged
    self.count = 0
    self.by_source: collections.Counter = collections.Counter()
    self.messages: list[str] = []

  def record(self, err: BaseException, source: str = "?") -> None:
    self.count += 1
    self.by_source[source] += 1
    msg = f"skipping bad example ({source}): {err}"
    if len(self.messages) < self.max_logged:
      self.messages.append(msg)
      log.warning("%s", msg)

  def get(self, src: Any, i: int) -> Optional[Mapping[str, Any]]:
    try:
      return src[i]
    except BadExample as e:
      self.record(e, getattr(src, "source", type(src).__name__))
      return None

  def summary(self) -> str:
    if not self.count:
      return "no bad examples"
    parts = ", ".join(f"{k}: {v}" for k, v in sorted(self.by_source.items()))
    return f"{self.count} bad examples skipped ({parts})"


def angles_from_raw_params(p: np.ndarray) -> np.ndarray:
  """Raw (..., 62) params -> (..., 3) (yaw, pitch, roll) degrees; numpy twin of ``jface.core.geometry.pose_angles``
  (3DDFA's P2sRt + matrix2angle) without the whitening."""
  p = np.asarray(p, np.float64)
  fr = p[..., :12].reshape(p.shape[:-1] + (3, 4))[..., :3]
  r1 = fr[..., 0, :] / np.linalg.norm(fr[..., 0, :], axis=-1, keepdims=True)
  r2 = fr[..., 1, :] / np.linalg.norm(fr[..., 1, :], axis=-1, keepdims=True)
  r3 = np.cross(r1, r2)
  yaw = np.arcsin(np.clip(r3[..., 0], -1.0, 1.0))
  c = np.cos(yaw)
  pitch = np.arctan2(r3[..., 1] / c, r3[..., 2] / c)
  roll = np.arctan2(r2[..., 0] / c, r1[..., 0] / c)
  return np.degrees(np.stack([yaw, pitch, roll], -1))


def open_crop_folder(root: str, required: Sequence[str], who: str) -> tuple[dict, list]:
  """A folder of stored crops (``root/crops/`` + ``root/meta.npz``) -> (meta dict, names). Raises
  ``FileNotFoundError`` / ``ValueError`` (one line) when the folder or one of the ``required`` meta keys is missing."""
  if not os.path.isdir(os.path.join(root, "crops")):
    raise FileNotFoundError(f"{who}: no folder {os.path.join(root, 'crops')}")
  meta = load_meta(os.path.join(root, "meta.npz"))
  for k in required:
    if k not in meta:
      raise ValueError(f"{os.path.join(root, 'meta.npz')}: missing {k!r}")
  return meta, [str(n) for n in meta["names"]]


def read_crop(root: str, name: str, crop_size: int) -> np.ndarray:
  """``root/crops/<name>`` as (S, S, 3) uint8 RGB; ``BadExample`` when unreadable or not ``crop_size`` square."""
  path = os.path.join(root, "crops", name)
  img = read_image(path)
  if img.shape[:2] != (crop_size, crop_size):
    raise bad(path, f"crop must be {crop_size}x{crop_size}, got {img.shape[1]}x{img.shape[0]}")
  return img
