"""Faces of images: given landmarks or a detector -> 68 points -> crop boxes -> ``CROP_SIZE`` crops
(``FaceFinder``), and what inference returns per face (``FaceResult``).

Pipeline for an image without given landmarks: detector (``jface.inference.detect.make_detector``; default
BlazeFace when installed, else OpenCV's Haar cascades) -> a 68-point landmark source on each detected face ->
the crop box from those 68 points exactly as the training crops (3DDFA's landmark box clipped to the image,
``jface.data.common.roi_box_from_landmarks``) -> ``jface.data.common.crop_image``. Landmark sources
(``landmarks``): ``mesh`` (MediaPipe's face mesh + the fitted 468 -> 68 map, ``jface.inference.mesh68``; optional
install), ``dlib`` (dlib's 68-point predictor; optional) or ``none``; ``auto`` = mesh when installed, else dlib,
else none. Without 68 points (no source, or the mesh failed on the face: score below its ``min_score``) the crop
box comes from the detector box (``jface.inference.detect.roi_box_from_bbox``).

Landmark-map (FLM) points, only for models with a landmark-map input (``use_flm``; ``flm_mode``, one of
``FLM_MODES``): ``given`` landmarks; ``source``: the landmark source's 68 points; ``iterate``: the predictor starts
from the mean face and redraws (``jface.inference.predictor``). ``auto`` = given when the face has landmarks,
else the source's points, else iterate. A face whose map is the mean face says so (``FaceResult.flm``
``"iterate:N"``; the CLI warns): such predictions follow the mean face, not the photo.

Image coordinates are 1-based pixel centres (array pixel ``[r, c]`` is at ``(x, y) = (c + 1, r + 1)``), y down.
"""
from __future__ import annotations

import dataclasses
from typing import Any, List, Optional, Sequence

import numpy as np

from jface.core import crop as crop_lib
from jface.core.face_model import CROP_SIZE

FLM_MODES = ("auto", "given", "source", "iterate")
LANDMARK_SOURCES = ("auto", "mesh", "dlib", "none")
# A face mesh scoring below this has failed: its points are not used (crop from the detector box, empty or mean
# map). Chosen on the 100 images a data.holdout=100 run held out of aflw2000_3d_train (not on dev): pipeline NME
# mean of bins 7.34 at 0.5, 7.23 at 0.3, 7.13 at 0.1, 8.20 at 0 (docs/RESULTS.md, "Real photos").
MESH_MIN_SCORE = 0.1


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
    flm: how the landmark map was made: "given", "mesh", "dlib" (a landmark source's points), "iterate:N" (the
      mean face, redrawn N times from the model's own prediction), "empty" (no points: a model trained with
      empty maps) or "none" (no landmark-map input).
    landmarks_from: where the 68 points that placed the crop came from: "given", "mesh", "dlib" or "detector"
      (no 68 points: the detector box).
    source_score: the landmark source's face score (mesh: in [0, 1]), or None.
    source_landmarks: (68, 2) float32 image points of the landmark source (before the model), or None.
    landmarks_3d: (68, 3) float32 image points with depth (z scaled like x, y; larger = nearer), or None.
  """
  roi_box: np.ndarray
  landmarks: np.ndarray
  pose: Optional[np.ndarray] = None
  params: Optional[np.ndarray] = None
  vertices: Optional[np.ndarray] = None
  dense_shape: str = "none"
  box: Optional[np.ndarray] = None
  flm: str = "none"
  landmarks_from: str = "given"
  source_score: Optional[float] = None
  source_landmarks: Optional[np.ndarray] = None
  landmarks_3d: Optional[np.ndarray] = None


@dataclasses.dataclass
class FaceCrop:
  """A face found in an image, ready for the network.

  Attributes:
    image: index of its image in the call.
    roi_box: (4,) crop box in the image.
    crop: (CROP_SIZE, CROP_SIZE, 3) uint8.
    flm_pts: (68, 2) crop coordinates of the given / source landmarks (NaN = unknown), or None.
    box: detector box (x0, y0, x1, y1), or None for given landmarks.
    flm: "given", "mesh", "dlib", "iterate" (start from the mean face) or "none" (no landmark-map input).
    landmarks_from, source_score, source_landmarks: as ``FaceResult``.
  """
  image: int
  roi_box: np.ndarray
  crop: np.ndarray
  flm_pts: Optional[np.ndarray]
  box: Optional[np.ndarray]
  flm: str
  landmarks_from: str = "given"
  source_score: Optional[float] = None
  source_landmarks: Optional[np.ndarray] = None


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
    detector: ``auto | blazeface | blazeface_full | haar | dlib | full`` (``jface.inference.detect``; built lazily,
      only when an image has no landmarks), or a callable ``image -> list[jface.inference.detect.FaceBox]``.
    landmarks: one of ``LANDMARK_SOURCES``, or a callable ``(image, faces) -> list of (pts (68, 2), score)``.
    min_face_size, max_faces: detector face filter (smaller box side in px; 0 = all faces).
    mesh_min_score: a mesh below this face score has failed (its points are not used).
    mesh_retry: retry failed meshes on other regions (``jface.inference.mesh68.MeshLandmarks``).
    model_dir: folder of the MediaPipe ``.tflite`` files; mesh_map: the 468 -> 68 map file (defaults:
      ``jface.inference.tflite``, ``jface.inference.mesh68``).
    dlib_predictor: path of dlib's 68-point ``.dat`` (default: ``face_recognition_models``' copy).
    crop_size: crop side.
  ``dataclasses.replace`` gives a finder with other settings (and a fresh detector and landmark source).
  """
  use_flm: bool = False
  flm_mode: str = "auto"
  detector: Any = "auto"
  landmarks: Any = "auto"
  min_face_size: int = 20
  max_faces: int = 0
  mesh_min_score: float = MESH_MIN_SCORE
  mesh_retry: bool = True
  model_dir: Optional[str] = None
  mesh_map: Optional[str] = None
  dlib_predictor: Optional[str] = None
  crop_size: int = CROP_SIZE
  _detector: Any = dataclasses.field(default=None, init=False, repr=False, compare=False)
  _source: Any = dataclasses.field(default=None, init=False, repr=False, compare=False)
  _source_name: str = dataclasses.field(default="none", init=False, repr=False, compare=False)

  def __post_init__(self):
    if self.flm_mode not in FLM_MODES:
      raise ValueError(f"flm must be one of {', '.join(FLM_MODES)}, got {self.flm_mode!r}")
    if not callable(self.landmarks) and self.landmarks not in LANDMARK_SOURCES:
      raise ValueError(f"landmarks must be one of {', '.join(LANDMARK_SOURCES)}, got {self.landmarks!r}")

  def get_detector(self):
    """The detector callable, built on first use (``NoDetectorError``, one line, when it cannot run)."""
    if self._detector is None:
      if callable(self.detector):
        self._detector = self.detector
      else:
        from jface.inference import detect
        self._detector = detect.make_detector(self.detector, self.min_face_size, self.model_dir)
    return self._detector

  def source(self):
    """(name, callable or None): the 68-point landmark source for detected faces, built on first use.
    ``auto`` skips sources that are not installed; a named one raises ``MissingAssetError`` /
    ``NoDetectorError`` (one line) when it cannot run."""
    if self._source is None:
      self._source_name, self._source = _make_source(self)
    return self._source_name, (self._source or None)

  def find(self, image: np.ndarray, landmarks=None, image_index: int = 0) -> List[FaceCrop]:
    """Faces of one RGB image with their crops: from ``landmarks`` (None | (68, 2) | (F, 68, 2) image points,
    NaN = unknown) when given, else from the detector (largest faces first)."""
    from jface.data import common
    from jface.inference import detect
    size = self.crop_size
    faces = []
    sets = landmark_sets(landmarks)
    if sets:
      if self.use_flm and self.flm_mode == "source":
        raise ValueError("flm='source' ignores given landmarks: use flm='given' or 'auto'")
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
    found = detect.select_faces(self.get_detector()(image), self.min_face_size, self.max_faces)
    name, source = self.source() if found else ("none", None)
    if self.use_flm and self.flm_mode == "source" and source is None:
      raise ValueError("flm='source' but no 68-point landmark source is available")
    points = source(image, found) if source is not None else [(None, None)] * len(found)
    for fb, (pts, score) in zip(found, points):
      ok = pts is not None and (score is None or score >= self.mesh_min_score or name != "mesh")
      if ok:
        roi = common.roi_box_from_landmarks(pts, image_shape=image.shape)
      else:
        roi = detect.roi_box_from_bbox(fb.box, fb.kind)
      crop = common.crop_image(image, roi, size)
      flm_pts, flm = None, "none"
      if self.use_flm:
        if ok and self.flm_mode in ("auto", "source"):
          flm_pts, flm = crop_lib.image_to_crop(pts, roi, size).astype(np.float32), name
        else:
          flm = "iterate"
      faces.append(FaceCrop(image_index, roi, crop, flm_pts, fb.box, flm, name if ok else "detector",
                            None if score is None else float(score),
                            None if pts is None else np.asarray(pts, np.float32)))
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


def _make_source(finder: FaceFinder):
  """(name, callable or False) for ``finder.landmarks`` (see ``FaceFinder.source``)."""
  from jface.core.face_model import MissingAssetError
  from jface.inference import detect
  want = finder.landmarks
  if callable(want):
    return "custom", want
  if want == "none":
    return "none", False
  if want in ("auto", "mesh"):
    from jface.inference import mesh68, tflite
    if want == "mesh" or (tflite.models_available(["face_landmark.tflite"], finder.model_dir)
                          and mesh68.find_map(finder.mesh_map, finder.model_dir) is not None):
      try:
        return "mesh", mesh68.MeshLandmarks(finder.model_dir, finder.mesh_map, retry=finder.mesh_retry)
      except MissingAssetError:
        if want == "mesh":
          raise
  if want in ("auto", "dlib"):
    try:
      dl = detect.DlibLandmarks(finder.dlib_predictor)
      return "dlib", lambda image, faces: [(dl(image, f.box), None) for f in faces]
    except detect.NoDetectorError:
      if want == "dlib":
        raise
  return "none", False
