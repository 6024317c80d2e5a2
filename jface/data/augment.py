"""Per-example training augmentation (numpy + OpenCV), deterministic given an ``np.random.Generator``.

What ``augment`` does (PRNet's recipe, Feng et al. 2018, Sec. 4; the 2DASL paper gives none):

* geometry -- ONE similarity warp of the crop: in-plane rotation ``U(-45, 45)`` degrees about the crop centre,
  scale ``U(0.9, 1.2)``, translation ``U(-10 %, +10 %)`` of the crop side per axis. The image is warped with
  ``cv2.warpAffine`` (bilinear, border replicate / reflect / constant / random among them); the 68 landmarks
  and the 62 params follow the same map exactly (``geometry.landmarks2d(model, augmented params)`` equals
  the warped ``landmarks2d(model, original params)``);
* colour -- every RGB channel scaled by ``U(0.6, 1.4)`` (clipped to uint8);
* occlusion -- with probability ``occlusion_prob`` one rectangle covering 2-25 % of the crop (aspect 1:2..2:1)
  filled with uniform noise or a random solid colour. Image only: landmarks under it keep their labels/mask.

Coordinates (see ``jface.core.geometry``): crop coords are 1-based, array pixel ``[r, c]`` has its centre at
``(x, y) = (c + 1, r + 1)``; camera space is ``v_x = x``, ``v_y = crop + 1 - y``. Affines are (2, 3) float64
``A = [M | b]`` acting on column vectors, ``x' = M x + b``.

Params: a crop-coordinate affine ``A`` is, in camera space (y flipped), ``L = D M D``, ``o = D M e + D b + e``
with ``D = diag(1, -1)``, ``e = (0, crop + 1)``; ``similarity_affine(theta, ...)`` (counter-clockwise as
displayed) is ``L = k Rz(theta)`` in camera space (y up). With ``k = sqrt|det M|``, ``G = blockdiag(L, k)`` (= ``k Rz`` for a similarity),
the raw pose becomes ``fR' = G fR``, ``t' = G t + (o, 0)``, so rows 1-2 follow the image and a scaled
rotation stays a scaled rotation (crop z scales by ``k``). Shape/expression are untouched; the result is
re-whitened with ``model.param_mean/std``. Examples with ``has_params=False`` keep their (zero) params.

Not changed by augmentation (documented, on purpose): ``landmarks_mask`` (a landmark pushed out of the crop
keeps its coordinates and its mask; ``geometry.landmark_map`` does not draw out-of-crop points), ``yaw`` (an
in-plane rotation leaves ``R[2, 0]`` and hence yaw unchanged), ``roi_box`` (it still describes the
UN-augmented crop; evaluation never augments). Horizontal flip is not offered: mirroring the 62 params needs a
mirrored shape basis, which the 68-point BFM rows do not provide.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping, Optional

import cv2
import numpy as np

from jface.core.face_model import CROP_SIZE

BORDERS = {"replicate": cv2.BORDER_REPLICATE, "reflect": cv2.BORDER_REFLECT_101, "constant": cv2.BORDER_CONSTANT}
_D = np.diag([1.0, -1.0])


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
  """Augmentation settings; defaults follow PRNet (rotation/translation/scale/colour) -- see module doc.

  Attributes:
    enabled: False makes ``augment`` return the example unchanged (a copy).
    max_rotation_deg: in-plane rotation drawn from ``U(-max, max)`` degrees.
    scale_range: zoom factor range (> 1 enlarges the face).
    max_translation: shift per axis drawn from ``U(-max, max)`` times the crop side.
    color_scale_range: per-channel multiplicative factor range.
    occlusion_prob: probability of one synthetic occluder (not given by the papers; our choice).
    occlusion_area_range: occluder area as a fraction of the crop.
    border: ``"replicate"``, ``"reflect"``, ``"constant"`` (black) or ``"random"`` (one of the three).
  """
  enabled: bool = True
  max_rotation_deg: float = 45.0
  scale_range: tuple = (0.9, 1.2)
  max_translation: float = 0.1
  color_scale_range: tuple = (0.6, 1.4)
  occlusion_prob: float = 0.5
  occlusion_area_range: tuple = (0.02, 0.25)
  border: str = "replicate"

  def __post_init__(self):
    for name in ("scale_range", "color_scale_range", "occlusion_area_range"):
      v = tuple(float(x) for x in getattr(self, name))
      if len(v) != 2 or not 0 <= v[0] <= v[1]:
        raise ValueError(f"AugmentConfig.{name} must be (lo, hi) with 0 <= lo <= hi, got {getattr(self, name)}")
      object.__setattr__(self, name, v)
    if self.scale_range[0] <= 0:
      raise ValueError(f"AugmentConfig.scale_range must be positive, got {self.scale_range}")
    if self.occlusion_area_range[1] > 1:
      raise ValueError(f"AugmentConfig.occlusion_area_range must lie in [0, 1], got {self.occlusion_area_range}")
    if not 0 <= self.occlusion_prob <= 1:
      raise ValueError(f"AugmentConfig.occlusion_prob must lie in [0, 1], got {self.occlusion_prob}")
    if self.max_rotation_deg < 0 or not 0 <= self.max_translation < 1:
      raise ValueError("AugmentConfig.max_rotation_deg must be >= 0 and max_translation in [0, 1), got "
                       f"{self.max_rotation_deg}, {self.max_translation}")
    if self.border not in BORDERS and self.border != "random":
      raise ValueError(f"AugmentConfig.border must be one of {sorted(BORDERS) + ['random']}, got {self.border!r}")


# ------------------------------------------------------------------------------------------ affines

def similarity_affine(angle_deg: float, scale: float, shift=(0.0, 0.0), size: int = CROP_SIZE) -> np.ndarray:
  """(2, 3) crop-coordinate affine: rotate by ``angle_deg`` (counter-clockwise as displayed, y down) and scale
  about the crop centre ``((size + 1) / 2, (size + 1) / 2)``, then shift by ``shift`` = (dx, dy) pixels."""
  a = math.radians(angle_deg)
  m = scale * np.array([[math.cos(a), math.sin(a)], [-math.sin(a), math.cos(a)]])
  c = np.full(2, (size + 1) / 2.0)
  return np.concatenate([m, (c - m @ c + np.asarray(shift, np.float64))[:, None]], axis=1)


def sample_affine(rng: np.random.Generator, cfg: AugmentConfig, size: int = CROP_SIZE) -> np.ndarray:
  """Draws (angle, scale, dx, dy) in this order from ``rng`` -> (2, 3) crop-coordinate affine."""
  angle = rng.uniform(-cfg.max_rotation_deg, cfg.max_rotation_deg)
  scale = rng.uniform(*cfg.scale_range)
  shift = rng.uniform(-cfg.max_translation, cfg.max_translation, size=2) * size
  return similarity_affine(angle, scale, shift, size)


def pixel_affine(a: np.ndarray) -> np.ndarray:
  """Crop-coordinate affine -> the same map on 0-based pixel centres (u, v) = (x - 1, y - 1), for OpenCV."""
  a = np.asarray(a, np.float64)
  one = np.ones(2)
  return np.concatenate([a[:, :2], (a[:, 2] + a[:, :2] @ one - one)[:, None]], axis=1)


def camera_affine(a: np.ndarray, size: int = CROP_SIZE) -> np.ndarray:
  """Crop-coordinate affine -> the same map in camera space (v_x = x, v_y = size + 1 - y)."""
  a = np.asarray(a, np.float64)
  m, b = a[:, :2], a[:, 2]
  e = np.array([0.0, size + 1.0])
  return np.concatenate([_D @ m @ _D, (_D @ m @ e + _D @ b + e)[:, None]], axis=1)


def transform_points(a: np.ndarray, pts: np.ndarray) -> np.ndarray:
  """Applies a (2, 3) affine to points (..., K, 2); float32 out. NaNs stay NaN."""
  a = np.asarray(a, np.float64)
  return (np.asarray(pts, np.float64) @ a[:, :2].T + a[:, 2]).astype(np.float32)


def transform_params(model, pw: np.ndarray, a: np.ndarray) -> np.ndarray:
  """Whitened (62,) params -> whitened params whose landmarks are the old ones moved by crop affine ``a``.

  ``model`` is a ``jface.core.face_model.FaceModel`` (only ``param_mean``, ``param_std`` and ``crop_size`` are used).
  """
  mean = np.asarray(model.param_mean, np.float64)
  std = np.asarray(model.param_std, np.float64)
  p = np.asarray(pw, np.float64) * std + mean
  ac = camera_affine(a, model.crop_size)
  g = np.zeros((3, 3))
  g[:2, :2] = ac[:, :2]
  g[2, 2] = math.sqrt(abs(np.linalg.det(ac[:, :2])))
  pose = p[:12].reshape(3, 4)
  new = g @ pose
  new[:2, 3] += ac[:, 2]
  p = p.copy()
  p[:12] = new.reshape(12)
  return ((p - mean) / std).astype(np.float32)


# --------------------------------------------------------------------------------------- image ops

def warp_image(image: np.ndarray, a: np.ndarray, border: str = "replicate") -> np.ndarray:
  """Warps a (H, W, C) uint8 image by crop-coordinate affine ``a`` (forward map, bilinear) -> same shape."""
  h, w = image.shape[:2]
  return cv2.warpAffine(image, pixel_affine(a), (w, h), flags=cv2.INTER_LINEAR,
                        borderMode=BORDERS[border], borderValue=(0, 0, 0))


def scale_colors(image: np.ndarray, factors) -> np.ndarray:
  """(H, W, 3) uint8 times per-channel ``factors`` (3,), rounded half up and clipped -> uint8."""
  lut = np.clip(np.floor(np.arange(256.0)[:, None] * np.asarray(factors, np.float64)[None, :] + 0.5), 0, 255)
  return cv2.LUT(np.ascontiguousarray(image), lut.astype(np.uint8)[:, None, :])


def occlude(image: np.ndarray, rng: np.random.Generator,
            area_range=(0.02, 0.25)) -> tuple[np.ndarray, tuple[int, int, int, int]]:
  """Pastes one random rectangle of uniform noise or a solid colour (50/50) into a copy of ``image``.

  Returns (image, box) with box = (r0, c0, r1, c1): array rows r0..r1-1, columns c0..c1-1 were replaced.
  The area is ``U(area_range)`` of the image (after rounding to whole pixels), the aspect ``exp(U(log .5, log 2))``.
  """
  h, w = image.shape[:2]
  area = rng.uniform(*area_range) * h * w
  aspect = math.exp(rng.uniform(math.log(0.5), math.log(2.0)))
  bh = int(np.clip(round(math.sqrt(area / aspect)), 1, h))
  bw = int(np.clip(round(math.sqrt(area * aspect)), 1, w))
  r0 = int(rng.integers(0, h - bh + 1))
  c0 = int(rng.integers(0, w - bw + 1))
  out = image.copy()
  if rng.random() < 0.5:
    out[r0:r0 + bh, c0:c0 + bw] = rng.integers(0, 256, size=(bh, bw) + image.shape[2:], dtype=np.uint8)
  else:
    out[r0:r0 + bh, c0:c0 + bw] = rng.integers(0, 256, size=image.shape[2:], dtype=np.uint8)
  return out, (r0, c0, r0 + bh, c0 + bw)


# ------------------------------------------------------------------------------------------ augment

def augment(example: Mapping[str, Any], rng: np.random.Generator, model=None,
            cfg: Optional[AugmentConfig] = None) -> dict:
  """One example dict -> a new augmented example dict (the input is not modified).

  Args:
    example: the dataset contract (``image`` (S, S, 3) uint8 with S = crop size, ``landmarks`` (68, 2) crop
      coords, ``params`` (62,) whitened, ``has_params``, ...). Other keys are copied through.
    rng: the only source of randomness; the same generator state gives the same output.
    model: ``jface.core.face_model.FaceModel`` for re-whitening params; needed only when ``has_params`` is True.
    cfg: ``AugmentConfig`` (default: paper defaults).
  Draw order: affine (4), border (if random), colour (3), occlusion (1 + occluder's draws).
  """
  cfg = AugmentConfig() if cfg is None else cfg
  out = dict(example)
  if not cfg.enabled:
    return out
  image = np.asarray(example["image"])
  if image.ndim != 3 or image.shape[0] != image.shape[1] or image.shape[2] != 3 or image.dtype != np.uint8:
    raise ValueError(f"augment needs a square (S, S, 3) uint8 image, got {image.shape} {image.dtype}")
  size = image.shape[0]
  a = sample_affine(rng, cfg, size)
  border = cfg.border if cfg.border != "random" else ("replicate", "reflect", "constant")[int(rng.integers(3))]
  img = warp_image(image, a, border)
  img = scale_colors(img, rng.uniform(*cfg.color_scale_range, size=3))
  if rng.random() < cfg.occlusion_prob:
    img, _ = occlude(img, rng, cfg.occlusion_area_range)
  out["image"] = img
  out["landmarks"] = transform_points(a, example["landmarks"])
  if "flm_alt" in example:  # other landmark-map points (jface.data.flm_alt), moved the same way
    out["flm_alt"] = transform_points(a, example["flm_alt"])
  if bool(example.get("has_params", False)):
    if model is None:
      raise ValueError("augment needs the FaceModel (param_mean/std) to transform an example with params")
    if model.crop_size != size:
      raise ValueError(f"image side {size} differs from the model's crop_size {model.crop_size}")
    out["params"] = transform_params(model, example["params"], a)
  return out
