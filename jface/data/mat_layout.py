"""Reader of the original AFLW2000-3D / 300W-LP layout: ``<name>.jpg`` + ``<name>.mat`` (3DDFA/HPEN fits).

The ``.mat`` holds ``Pose_Para`` (1, 7) = [pitch, yaw, roll (rad), tx, ty, tz, s], ``Shape_Para`` (199, 1),
``Exp_Para`` (29, 1) and, for AFLW2000-3D, ``pt3d_68`` (3, 68) (image pixels, 1-based).

Conversion to the 62 crop parameters (``mat_to_params``), all affine, so closed form:

* image space: ``q = s R S + t`` with ``S = u + W_shp a[:40] + W_exp b[:10]`` (68 or N, 3),
  ``R = Rx(pitch) Ry(yaw) Rz(roll)``, ``Rx = [[1,0,0],[0,c,s],[0,-s,c]]``, ``Ry = [[c,0,-s],[0,1,0],[s,0,c]]``,
  ``Rz = [[c,s,0],[-s,c,0],[0,0,1]]``; then ``x_img = q_x``, ``y_img = H + 1 - q_y``, ``z_img = q_z``
  (H = image height; this matches ``pt3d_68`` x, y AND z up to the 40/10-component truncation);
* crop (``image_to_crop``, roi box ``(sx, sy, ex, ey)``): ``x_c = ax (x_img - sx)``, ``y_c = ay (y_img - sy)``,
  ``z_c = az z_img`` with ``ax = 120 / (ex - sx)``, ``ay = 120 / (ey - sy)``, ``az = 240 / ((ex - sx) + (ey - sy))``;
* crop camera (the 62-param model): ``v = (x_c, 121 - y_c, z_c)``.

Hence ``v = fR S + t3`` with ``fR = diag(ax, ay, az) s R`` and
``t3 = (ax (tx - sx), ay (ty + sy - H - 1) + 121, az tz)``; ``p = [fR | t3] (row-major 12), a[:40], b[:10]``,
whitened with the model's ``param_mean/param_std``. Then ``crop_to_image(landmarks3d(params))`` gives back the
image-space fit (x, y, z), exactly for 40/10-component fits.

Measured on ../shared (benchmark roi boxes, 68 points, NME = mean 2D distance / sqrt(w h) of the pt3d_68 box):
residual of ``landmarks2d(mat_to_params(...))`` -> ``crop_to_image`` against ``pt3d_68``: dev (200) mean 0.862 %,
median 0.813, p5-p95 0.45-1.50, max 2.13 %; train (800) mean 0.910 %, median 0.854, p5-p95 0.44-1.64, max 2.61 %.
The same numbers come out in image space without any crop, so it is the 40/10 truncation, not a convention error.
Against 2DASL's released (predicted) params: landmark NME median 2.85 % (dev) / 2.95 % (train), yaw within a
median 2.2 deg; shape coefficients correlate weakly (0.2-0.3), expression ones 0.7 (predictions, not labels).

The z translation: ``az tz`` (pure affine, so 3D points map back to the image). 3DDFA's ``param_mean`` has
``tz = -76.6`` (std 18.3) while this conversion gives -31.7 +- 15 on AFLW2000-3D: 3DDFA's z offset convention
for its 300W-LP labels is not recoverable from the public files; it only shifts z, which no 2D metric sees.

Crop boxes: ``roi_boxes="landmarks"`` (default) = 3DDFA's box from the 68 landmarks, clipped to the image
(``common.roi_box_from_landmarks``; reproduces the benchmark ``roi_box`` of all 1000 ../shared images exactly),
or a ``meta.npz`` path whose ``names``/``roi_box`` give the boxes by file name. Landmarks: ``pt3d_68`` when
present, else (300W-LP) the 68 landmarks of the fit itself, projected with the model's 40/10 bases (its separate
``landmarks/*_pts.mat`` files are not used: their coordinate convention is unverified here).
"""
from __future__ import annotations

import glob
import os
from typing import Mapping, Optional, Sequence

import numpy as np

from jface.core.face_model import CROP_SIZE

from jface.core import crop
from jface.data import common
from jface.data.common import BadExample, bad

N_SHP, N_EXP = 40, 10


def pose_para_to_srt(pose_para) -> tuple[float, np.ndarray, np.ndarray]:
  """``Pose_Para`` (7,) = [pitch, yaw, roll, tx, ty, tz, s] -> (s, R (3, 3), t (3,)), R = Rx Ry Rz (README)."""
  pp = np.asarray(pose_para, np.float64).reshape(-1)
  if pp.shape != (7,) or not np.all(np.isfinite(pp)):
    raise ValueError(f"Pose_Para must be 7 finite values, got {pp.shape} {pp.tolist()[:7]}")
  (cx, cy, cz), (sx, sy, sz) = np.cos(pp[:3]), np.sin(pp[:3])
  rx = np.array([[1, 0, 0], [0, cx, sx], [0, -sx, cx]])
  ry = np.array([[cy, 0, -sy], [0, 1, 0], [sy, 0, cy]])
  rz = np.array([[cz, sz, 0], [-sz, cz, 0], [0, 0, 1]])
  return float(pp[6]), rx @ ry @ rz, pp[3:6].copy()


def pose_para_yaw(pose_para) -> float:
  """The dataset's own yaw label: ``Pose_Para[1]`` in degrees, wrapped to (-180, 180] (= meta.npz ``yaw`` of
  AFLW2000-3D, which keeps one unwrapped -351 deg). Same sign as ``jface.core.geometry.pose_angles``'s yaw of the
  converted params (those differ by a median 1.2 deg: 3DDFA's angle decomposition uses another axis order)."""
  y = float(np.degrees(np.asarray(pose_para, np.float64).reshape(-1)[1]))
  return float(180.0 - (180.0 - y) % 360.0)


def _coeffs(mat: Mapping, key: str, n: int) -> np.ndarray:
  if key not in mat:
    raise ValueError(f"missing {key}")
  a = np.asarray(mat[key], np.float64).reshape(-1)
  if a.size < n or not np.all(np.isfinite(a[:n])):
    raise ValueError(f"{key} must have >= {n} finite values, got {a.size}")
  return a[:n]


def mat_to_raw_params(mat: Mapping, roi_box, image_height: float, crop_size: int = CROP_SIZE) -> np.ndarray:
  """Un-whitened version of ``mat_to_params``: -> (62,) float64 raw crop params."""
  if "Pose_Para" not in mat:
    raise ValueError("missing Pose_Para")
  s, r, t = pose_para_to_srt(mat["Pose_Para"])
  a_shp, a_exp = _coeffs(mat, "Shape_Para", N_SHP), _coeffs(mat, "Exp_Para", N_EXP)
  sx, sy, ex, ey = (float(v) for v in np.asarray(roi_box, np.float64).reshape(4))
  if not (ex > sx and ey > sy):
    raise ValueError(f"empty roi box {[sx, sy, ex, ey]}")
  ax, ay = crop_size / (ex - sx), crop_size / (ey - sy)
  az = 2 * crop_size / ((ex - sx) + (ey - sy))
  fr = np.diag([ax, ay, az]) @ (s * r)
  t3 = np.array([ax * (t[0] - sx), ay * (t[1] + sy - image_height - 1) + crop_size + 1, az * t[2]])
  return np.concatenate([np.concatenate([fr, t3[:, None]], 1).reshape(12), a_shp, a_exp])


def mat_to_params(mat: Mapping, roi_box, image_height: float, model) -> np.ndarray:
  """AFLW2000-3D / 300W-LP fit -> (62,) float32 WHITENED crop params (derivation in the module docstring).

  Args:
    mat: dict with ``Pose_Para`` (7 values), ``Shape_Para`` (>= 40), ``Exp_Para`` (>= 10) (e.g. ``loadmat``).
    roi_box: (4,) (sx, sy, ex, ey) crop box in the original image.
    image_height: H of the original image (the fits' y axis is flipped as ``H + 1 - y``).
    model: ``FaceModel`` (only ``param_mean``, ``param_std``, ``crop_size`` are used).
  Raises ``ValueError`` (one line) on missing/non-finite fields.
  """
  arr = common.model_arrays(model)
  p = mat_to_raw_params(mat, roi_box, image_height, arr["crop_size"])
  return ((p - arr["param_mean"]) / arr["param_std"]).astype(np.float32)


def fit_landmarks_image(mat: Mapping, image_height: float, model) -> np.ndarray:
  """The 68 landmarks of the fit in image coordinates (68, 3) (x, y 1-based; truncated 40/10 bases)."""
  arr = common.model_arrays(model)
  s, r, t = pose_para_to_srt(mat["Pose_Para"])
  shp = arr["u_base"] + arr["w_shp_base"] @ _coeffs(mat, "Shape_Para", N_SHP) \
      + arr["w_exp_base"] @ _coeffs(mat, "Exp_Para", N_EXP)
  q = s * shp.reshape(-1, 3) @ r.T + t
  q[:, 1] = image_height + 1 - q[:, 1]
  return q


def mat_pts68(mat: Mapping) -> Optional[np.ndarray]:
  """``pt3d_68`` as (3, 68) float64 image coords, or None when absent."""
  if "pt3d_68" not in mat:
    return None
  p = np.asarray(mat["pt3d_68"], np.float64)
  if p.shape != (3, 68):
    raise ValueError(f"pt3d_68 must be (3, 68), got {p.shape}")
  return p


class MatLayoutSource(common.Source):
  """``*.jpg`` + ``*.mat`` pairs under ``root`` (recursively; ``root/AFLW2000`` is used when it exists).

  Args:
    root: folder (AFLW2000-3D's ``AFLW2000/`` or its parent; 300W-LP's root with AFW/, HELEN/, ...).
    model: ``FaceModel``; without it ``has_params`` is False (and ``.mat`` files without ``pt3d_68`` fail).
    roi_boxes: ``"landmarks"`` (3DDFA box, clipped to the image) or the path of a ``meta.npz`` with
      ``names``/``roi_box`` (looked up by file name).
    names: optional explicit list of image paths relative to the root (default: all ``*.jpg``, sorted).
    source: the ``source`` field (default ``"aflw2000_3d"`` if the folder is AFLW2000, else the folder name).
  Example keys: the standard ones (landmarks = ``pt3d_68`` x, y in crop coords, all visible; yaw =
  ``pose_para_yaw``) plus ``gt_pts68`` (3, 68) float32 image coords (``pt3d_68``,
  or the projected fit when absent).
  """

  def __init__(self, root: str, model=None, roi_boxes: str = "landmarks", names: Optional[Sequence[str]] = None,
               source: Optional[str] = None, crop_size: int = CROP_SIZE):
    sub = os.path.join(root, "AFLW2000")
    self.root = sub if os.path.isdir(sub) else root
    if not os.path.isdir(self.root):
      raise FileNotFoundError(f"MatLayoutSource: no folder {root}")
    if names is None:
      files = glob.glob(os.path.join(self.root, "**", "*.jpg"), recursive=True)
      names = sorted(os.path.relpath(f, self.root) for f in files)
    self.names = list(names)
    self.model = common.model_arrays(model)
    self.crop_size = crop_size
    base = os.path.basename(os.path.normpath(self.root))
    self.source = source or ("aflw2000_3d" if base == "AFLW2000" else base.lower())
    self.meta_boxes = None
    if roi_boxes != "landmarks":
      meta = common.load_meta(roi_boxes)
      self.meta_boxes = {str(n): b for n, b in zip(meta["names"], meta["roi_box"])}

  def _load(self, i: int) -> dict:
    name = self.names[i]
    img_path = os.path.join(self.root, name)
    mat_path = os.path.splitext(img_path)[0] + ".mat"
    mat = common.read_mat(mat_path)
    img = common.read_image(img_path)
    h = img.shape[0]
    try:
      pts = mat_pts68(mat)
      if pts is None:
        if self.model is None or "u_base" not in self.model:
          raise ValueError("no pt3d_68 and no model to project the fit's landmarks")
        pts = fit_landmarks_image(mat, h, self.model).T
      if self.meta_boxes is not None:
        key = os.path.basename(name)
        if key not in self.meta_boxes:
          raise ValueError(f"{key} not in the roi-box meta file")
        box = np.asarray(self.meta_boxes[key], np.float32)
      else:
        box = common.roi_box_from_landmarks(pts[:2].T, image_shape=img.shape)
      params = None
      if self.model is not None:
        params = mat_to_params(mat, box, h, self.model)
      yaw = pose_para_yaw(mat["Pose_Para"]) if "Pose_Para" in mat else None
      patch = common.crop_image(img, box, self.crop_size)
      lm = crop.image_to_crop(pts[:2].T, box, self.crop_size)
    except BadExample:
      raise
    except ValueError as e:
      raise bad(mat_path, e) from None
    return common.make_example(patch, box, source=self.source, name=name, params=params, landmarks=lm,
                               landmarks_mask=np.ones(68, bool), yaw=yaw, crop_size=self.crop_size,
                               gt_pts68=pts.astype(np.float32))
