"""Faces of images: given landmarks or a detector -> crop boxes -> ``CROP_SIZE`` crops (``FaceFinder``), and what
inference returns per face (``FaceResult``).

Crop box: from landmarks, 3DDFA's landmark box clipped to the image (``jface.data.common.roi_box_from_landmarks``,
as the training readers); from a detector box, 3DDFA's ``parse_roi_box_from_bbox`` form with constants per
detector fitted to those landmark boxes (``jface.inference.detect.roi_box_from_bbox``); then
``jface.data.common.crop_image``. Detection needs OpenCV 4.x (Haar cascades; OpenCV 5 has none) or dlib; without
either, give landmarks or use the ``full`` detector for images that are face crops.

Landmark-map (FLM) points, only for models with a landmark-map input (``use_flm``; flm modes ``FLM_MODES``):
``given`` landmarks; ``dlib``'s 68-point predictor on the detector box (the crop box then comes from its
landmarks); or ``iterate`` (the predictor starts from the mean face and redraws; ``jface.inference.predictor``).
``auto`` = given when the face has landmarks, else dlib when installed, else iterate.

Image coordinates are 1-based pixel centres (array pixel ``[r, c]`` is at ``(x, y) = (c + 1, r + 1)``), y down.
"""
from __future__ import annotations

import dataclasses
from typing import Any, List, Optional, Sequence

import numpy as np

from jface.core import crop as crop_lib
from jface.core.face_model import CROP_SIZE

FLM_MODES = ("auto", "given", "dlib", "iterate")


@dataclasses.dataclass
class FaceResult:
  """One face.

  Attributes:
    roi_box: (4,) float32 (sx, sy, ex, ey) crop box in the image.
    landmarks: (68, 2) float32 image coordinates.
    pose: (3,) float32 (yaw, pitch, roll) degrees, or None (a method without pose).
    params: (62,) float32 whitened 3DMM params of the crop, or None (a method without 3DMM parameters).
    vertices: (N, 3) float32 image coordinates (z scaled like x, y; larger = nearer), or None.
    dense_shape: "full" (the method's dense prediction: identity + expression applied), "mean" (posed mean shape:
      no dense bases) or "none".
    box: (4,) float32 detector box (x0, y0, x1, y1) edges, or None when the face came from landmarks.
    flm: how the landmark map was made: "given", "dlib", "iterate:N" or "none" (no landmark-map input).
  """
  roi_box: np.ndarray
  landmarks: np.ndarray
  pose: Optional[np.ndarray] = None
  params: Optional[np.ndarray] = None
  vertices: Optional[np.ndarray] = None
  dense_shape: str = "none"
  box: Optional[np.ndarray] = None
  flm: str = "none"


@dataclasses.dataclass
class FaceCrop:
  """A face found in an image, ready for the network.

  Attributes:
    image: index of its image in the call.
    roi_box: (4,) crop box in the image.
    crop: (CROP_SIZE, CROP_SIZE, 3) uint8.
    flm_pts: (68, 2) crop coordinates of the given / dlib landmarks (NaN = unknown), or None.
    box: detector box (x0, y0, x1, y1), or None for given landmarks.
    flm: "given", "dlib", "iterate" (start from the mean face) or "none" (no landmark-map input).
  """
  image: int
  roi_box: np.ndarray
  crop: np.ndarray
  flm_pts: Optional[np.ndarray]
  box: Optional[np.ndarray]
  flm: str


def as_rgb(img, what: str = "image") -> np.ndarray:
  """(H, W[, 3|4]) uint8 -> contiguous (H, W, 3) uint8; ``ValueError`` (one line) otherwise."""
  a = np.asarray(img)
  if a.ndim == 2:
    a = np.repeat(a[..., None], 3, -1)
  if a.ndim != 3 or a.shape[2] not in (3, 4) or a.dtype != np.uint8 or min(a.shape[:2]) < 2:
    raise ValueError(f"{what} must be (H, W, 3) uint8 RGB, got shape {a.shape} dtype {a.dtype}")
  return np.ascontiguousarray(a[..., :3])


def landmark_sets(lm) -> List[np.ndarray]:
  """None | (68, 2) | (F, 68, 2) -> list of (68, 2) float32 (NaN = unknown)."""
  if lm is None:
    return []
  a = np.asarray(lm, np.float32)
  if a.shape == (68, 2):
    a = a[None]
  if a.ndim != 3 or a.shape[1:] != (68, 2):
    raise ValueError(f"landmarks must be (68, 2) or (F, 68, 2) image points, got shape {a.shape}")
  return list(a)


@dataclasses.dataclass
class FaceFinder:
  """Finds the faces of images and crops them (see the module docstring).

  Attributes:
    use_flm: the model reads a landmark map (decides how faces get their FLM points; False: flm "none").
    flm_mode: one of ``FLM_MODES``.
    detector: ``auto | haar | dlib | full`` (``jface.inference.detect``; built lazily, only when an image has no
      landmarks), or a callable ``image -> list[jface.inference.detect.FaceBox]``.
    min_face_size, max_faces: detector face filter (smaller box side in px; 0 = all faces).
    dlib_predictor: path of dlib's 68-point ``.dat`` (default: ``face_recognition_models``' copy).
    crop_size: crop side.
  ``dataclasses.replace`` gives a finder with other settings (and a fresh detector).
  """
  use_flm: bool = False
  flm_mode: str = "auto"
  detector: Any = "auto"
  min_face_size: int = 20
  max_faces: int = 0
  dlib_predictor: Optional[str] = None
  crop_size: int = CROP_SIZE
  _detector: Any = dataclasses.field(default=None, init=False, repr=False, compare=False)
  _dlib: Any = dataclasses.field(default=None, init=False, repr=False, compare=False)

  def __post_init__(self):
    if self.flm_mode not in FLM_MODES:
      raise ValueError(f"flm must be one of {', '.join(FLM_MODES)}, got {self.flm_mode!r}")

  def _get_detector(self):
    if self._detector is None:
      if callable(self.detector):
        self._detector = self.detector
      else:
        from jface.inference import detect
        self._detector = detect.make_detector(self.detector, self.min_face_size)
    return self._detector

  def _use_dlib(self) -> bool:
    """Whether detector faces get their FLM (and crop) from dlib's 68 points."""
    if not self.use_flm or self.flm_mode not in ("auto", "dlib"):
      return False
    if self._dlib is None:
      from jface.inference import detect
      try:
        self._dlib = detect.DlibLandmarks(self.dlib_predictor)
      except detect.NoDetectorError:
        if self.flm_mode == "dlib":
          raise
        self._dlib = False
    return self._dlib is not False

  def find(self, image: np.ndarray, landmarks=None, image_index: int = 0) -> List[FaceCrop]:
    """Faces of one RGB image with their crops: from ``landmarks`` (None | (68, 2) | (F, 68, 2) image points,
    NaN = unknown) when given, else from the detector (largest faces first)."""
    from jface.data import common
    from jface.inference import detect
    size = self.crop_size
    faces = []
    sets = landmark_sets(landmarks)
    if sets:
      if self.use_flm and self.flm_mode == "dlib":
        raise ValueError("flm='dlib' ignores given landmarks: use flm='given' or 'auto'")
      for pts in sets:
        mk = np.all(np.isfinite(pts), -1)
        roi = common.roi_box_from_landmarks(pts, mk, image_shape=image.shape)
        crop = common.crop_image(image, roi, size)
        flm_pts, flm = None, "none"
        if self.use_flm:
          if self.flm_mode in ("auto", "given"):
            flm_pts, flm = np.where(mk[:, None], crop_lib.image_to_crop(pts, roi, size), np.nan), "given"
          else:
            flm = "iterate"
        faces.append(FaceCrop(image_index, roi, crop, flm_pts, None, flm))
      return faces
    if self.use_flm and self.flm_mode == "given":
      raise ValueError("no landmarks given for this image (flm='given')")
    found = detect.select_faces(self._get_detector()(image), self.min_face_size, self.max_faces)
    use_dlib = self._use_dlib() if found else False
    for fb in found:
      if use_dlib:
        pts = self._dlib(image, fb.box)
        roi = common.roi_box_from_landmarks(pts, image_shape=image.shape)
        crop = common.crop_image(image, roi, size)
        faces.append(FaceCrop(image_index, roi, crop, crop_lib.image_to_crop(pts, roi, size).astype(np.float32),
                              fb.box, "dlib"))
      else:
        roi = detect.roi_box_from_bbox(fb.box, fb.kind)
        crop = common.crop_image(image, roi, size)
        faces.append(FaceCrop(image_index, roi, crop, None, fb.box, "iterate" if self.use_flm else "none"))
    return faces

  def find_all(self, images: Sequence[np.ndarray], landmarks: Optional[Sequence] = None,
               errors: Optional[List[Optional[str]]] = None) -> List[FaceCrop]:
    """``find`` over images (``landmarks``: None or one entry per image). ``errors``: an optional list that
    receives, per image, None or the one-line reason why the image has no faces (bad array, bad landmarks);
    without it such errors raise."""
    if landmarks is not None and len(landmarks) != len(images):
      raise ValueError(f"landmarks must have one entry per image ({len(images)}), got {len(landmarks)}")
    faces: List[FaceCrop] = []
    for i, img in enumerate(images):
      try:
        faces += self.find(as_rgb(img, f"image {i}"), None if landmarks is None else landmarks[i], i)
        if errors is not None:
          errors.append(None)
      except ValueError as e:
        if errors is None:
          raise
        errors.append(" ".join(str(e).split()))
    return faces
