"""Face detection for inference, and the detector box -> crop (roi) box mapping.

Detectors (``make_detector(name)``), each ``detector(image (H, W, 3) uint8 RGB) -> list[FaceBox]``:

* ``"blazeface"`` / ``"blazeface_full"``: MediaPipe's BlazeFace short-range / full-range models run by LiteRT
  (``jface.inference.blazeface``; optional: ``pip install -e '.[photos]'`` and
  ``python -m jface.inference.tflite fetch``). Boxes come with 6 keypoints (eyes, nose, mouth, ears).
* ``"haar"``: OpenCV's Haar cascades. OpenCV 4.x wheels ship ``haarcascade_frontalface_default.xml`` and
  ``haarcascade_profileface.xml`` under ``cv2.data.haarcascades``; the frontal cascade runs once, the profile
  cascade (trained on faces turned one way) on the image and on its mirror image, and overlapping boxes are
  merged by non-maximum suppression (frontal boxes win ties). OpenCV 5 dropped ``cv2.CascadeClassifier`` and the
  cascade files from the main package, so this detector is then unavailable.
* ``"dlib"``: dlib's HOG + linear SVM frontal detector (``pip install jface[dlib]``; optional, never required).
* ``"full"``: the whole image is one face (images that already are face crops).
* ``"auto"``: blazeface if installed, else haar, else dlib, else ``NoDetectorError``.

Boxes are ``(x0, y0, x1, y1)`` float32 in image coordinates (1-based pixel centres, as ``jface.core.geometry``:
array pixel ``[r, c]`` covers ``[c + 0.5, c + 1.5] x [r + 0.5, r + 1.5]``), i.e. the box's outer edges.

Detector box -> the training crop (``roi_box_from_bbox``): 3DDFA's ``parse_roi_box_from_bbox`` form (made for
dlib's boxes): ``size = mean(w, h)``, centre moved down by ``shift * size``, square of side ``scale * size``;
3DDFA uses shift 0.14, scale 1.58. Our training crops are ``jface.data.common.roi_box_from_landmarks`` boxes, so
each detector has its own (shift, scale) fitted to those on the ``aflw2000_3d_dev`` images (``BOX_TO_ROI``). The
result is rounded to integers like ``roi_box_from_landmarks`` (``crop_image`` crops the rounded box, so the
coordinate mapping must use the same box).
"""
from __future__ import annotations

import dataclasses
import os
from typing import Callable, List, Optional, Sequence

import numpy as np

# (centre shift down as a fraction of size, side / size) with size = mean(w, h) of the detector box: the medians,
# over the aflw2000_3d_dev images where the detector's face overlaps the GT landmarks (IoU > 0.2), of the offset
# from the detector box to roi_box_from_landmarks(pt3d_68) (the training crops):
# - dlib HOG (dlib 20.0, upsample 1; 132 faces, median |yaw| 15 deg): x shift 0.006, y shift 0.092 (IQR
#   0.03..0.12), scale 1.38 (1.29..1.45); 68 of 200 images without an overlapping face.
# - haar frontal (OpenCV 4.14; 103 faces, median |yaw| 12 deg): x -0.004 (IQR -0.07..0.07), y 0.140 (0.11..0.16),
#   scale 1.19 (1.13..1.27); haar_profile (42 faces, median |yaw| 49 deg): y 0.132 (0.10..0.18), scale 1.06
#   (0.94..1.18); 55 of 200 images without an overlapping Haar face.
# - blazeface short (LiteRT 2.3.0; on the 800 aflw2000_3d_train photos, 790 faces containing the GT centre,
#   median |yaw| 30 deg): x -0.004 (IQR -0.03..0.02), y 0.050 (0.02..0.08), scale 1.36 (1.30..1.45);
#   full range (649 faces, median |yaw| 21 deg): y 0.086 (0.06..0.11), scale 1.29 (1.23..1.40).
#   Only used when a face has no 68 points (the crop box normally comes from them).
# - "3ddfa": 3DDFA's own constants for dlib boxes (its crops are larger than sqrt(2) x the landmark box).
BOX_TO_ROI = {"dlib": (0.092, 1.38), "haar": (0.14, 1.19), "haar_profile": (0.13, 1.06), "3ddfa": (0.14, 1.58),
              "blazeface_short": (0.05, 1.36), "blazeface_full": (0.086, 1.29), "full": (0.0, 1.0)}


class NoDetectorError(RuntimeError):
  """No face detector is installed (one-line message with what to install or pass instead)."""


@dataclasses.dataclass
class FaceBox:
  """A detected face: ``box`` (4,) float32 (x0, y0, x1, y1) box edges in 1-based image coordinates,
  ``score`` (higher = more confident; detector-specific scale), ``kind`` (which detector / cascade),
  ``keypoints`` (K, 2) float32 image points the detector gives (BlazeFace: 6), or None."""
  box: np.ndarray
  score: float
  kind: str
  keypoints: Optional[np.ndarray] = None

  @property
  def size(self) -> float:
    return float(min(self.box[2] - self.box[0], self.box[3] - self.box[1]))


# ------------------------------------------------------------------------------------------ geometry

def roi_box_from_bbox(box, kind: str = "dlib", image_shape: Optional[Sequence[int]] = None) -> np.ndarray:
  """3DDFA-style crop box from a detector box (module docstring) -> (4,) float32 integer-valued (sx, sy, ex, ey).

  ``kind`` picks the constants in ``BOX_TO_ROI`` (unknown kinds use 3DDFA's). The box is square and NOT clipped to
  the image (``crop_image`` zero-pads), unless ``kind == "full"`` where it is the image itself.
  """
  b = np.asarray(box, np.float64).reshape(4)
  if not np.all(np.isfinite(b)) or b[2] <= b[0] or b[3] <= b[1]:
    raise ValueError(f"roi_box_from_bbox: bad box {b.tolist()}")
  if kind == "full":
    return np.round(b).astype(np.float32)
  shift, scale = BOX_TO_ROI.get(kind, BOX_TO_ROI["3ddfa"])
  size = ((b[2] - b[0]) + (b[3] - b[1])) / 2
  cx, cy = (b[0] + b[2]) / 2, (b[1] + b[3]) / 2 + shift * size
  side = np.round(scale * size)
  sx, sy = np.round(cx - side / 2), np.round(cy - side / 2)
  return np.array([sx, sy, sx + side, sy + side], np.float32)


def iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """Intersection over union of boxes a (N, 4) and b (M, 4) (x0, y0, x1, y1) -> (N, M)."""
  a, b = np.asarray(a, np.float64).reshape(-1, 4), np.asarray(b, np.float64).reshape(-1, 4)
  lo = np.maximum(a[:, None, :2], b[None, :, :2])
  hi = np.minimum(a[:, None, 2:], b[None, :, 2:])
  inter = np.prod(np.clip(hi - lo, 0, None), -1)
  area = lambda x: np.prod(np.clip(x[:, 2:] - x[:, :2], 0, None), -1)  # noqa: E731
  union = area(a)[:, None] + area(b)[None, :] - inter
  return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def nms(boxes: np.ndarray, scores: np.ndarray, threshold: float = 0.3) -> np.ndarray:
  """Greedy non-maximum suppression: indices of the kept boxes, by decreasing score (ties: lower index first).
  A box is dropped when its IoU with a kept box exceeds ``threshold``."""
  boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
  order = np.argsort(-np.asarray(scores, np.float64), kind="stable")
  keep: List[int] = []
  for i in order:
    if not keep or np.all(iou(boxes[i], boxes[keep])[0] <= threshold):
      keep.append(int(i))
  return np.asarray(keep, np.int64)


def drop_contained(faces: List[FaceBox], threshold: float = 0.6) -> List[FaceBox]:
  """Drops faces whose box lies mostly (intersection / own area > ``threshold``) inside a larger face's box
  (the Haar cascades fire on parts of large faces, e.g. the nose)."""
  if len(faces) < 2:
    return list(faces)
  b = np.stack([f.box for f in faces]).astype(np.float64)
  area = np.prod(b[:, 2:] - b[:, :2], -1)
  lo = np.maximum(b[:, None, :2], b[None, :, :2])
  hi = np.minimum(b[:, None, 2:], b[None, :, 2:])
  inter = np.prod(np.clip(hi - lo, 0, None), -1)
  inside = (inter / area[:, None] > threshold) & (area[None, :] > area[:, None])
  return [f for f, drop in zip(faces, inside.any(1)) if not drop]


def select_faces(faces: List[FaceBox], min_size: float = 0.0, max_faces: int = 0) -> List[FaceBox]:
  """Faces at least ``min_size`` px (smaller box side), largest first; at most ``max_faces`` (0 = all)."""
  faces = sorted((f for f in faces if f.size >= min_size), key=lambda f: -f.size)
  return faces[:max_faces] if max_faces > 0 else faces


def _from_xywh(rects, kind: str, score: float = 1.0) -> List[FaceBox]:
  """OpenCV (x, y, w, h) 0-based pixel rectangles -> FaceBox with 1-based edge coordinates."""
  out = []
  for x, y, w, h in np.asarray(rects, np.float64).reshape(-1, 4):
    out.append(FaceBox(np.array([x + 0.5, y + 0.5, x + w + 0.5, y + h + 0.5], np.float32), score, kind))
  return out


# ------------------------------------------------------------------------------------------ detectors

def haar_cascade_dir() -> Optional[str]:
  """Folder of OpenCV's bundled Haar cascades, or None (OpenCV >= 5 has none, nor ``CascadeClassifier``)."""
  try:
    import cv2
  except ImportError:
    return None
  d = getattr(getattr(cv2, "data", None), "haarcascades", None)
  if not hasattr(cv2, "CascadeClassifier") or not d:
    return None
  return d if os.path.exists(os.path.join(d, "haarcascade_frontalface_default.xml")) else None


def dlib_available() -> bool:
  try:
    import dlib  # noqa: F401
  except ImportError:
    return False
  return True


def blazeface_available(model_dir: Optional[str] = None, model: str = "short") -> bool:
  """LiteRT and the BlazeFace ``.tflite`` file are installed (``jface.inference.tflite``)."""
  from jface.inference import blazeface, tflite
  return tflite.models_available([blazeface.SPECS[model].file], model_dir)


def available_detectors() -> List[str]:
  """Names of the detectors that can run here (``"full"`` always can)."""
  out = [n for n, m in (("blazeface", "short"), ("blazeface_full", "full")) if blazeface_available(model=m)]
  if haar_cascade_dir():
    out.append("haar")
  if dlib_available():
    out.append("dlib")
  return out + ["full"]


class HaarDetector:
  """OpenCV Haar cascades: frontal + profile (on the image and its mirror), merged by NMS.

  Scores: frontal 2, profile 1 (frontal boxes win overlaps; the cascades give no comparable confidences).
  """

  def __init__(self, min_size: int = 20, profile: bool = True, scale_factor: float = 1.1, min_neighbors: int = 5,
               nms_threshold: float = 0.3):
    import cv2
    d = haar_cascade_dir()
    if d is None:
      raise NoDetectorError("OpenCV's Haar cascades are not available (OpenCV >= 5 removed them): "
                            "pip install 'opencv-python-headless<5' or jface[dlib], or pass landmarks")
    self._frontal = cv2.CascadeClassifier(os.path.join(d, "haarcascade_frontalface_default.xml"))
    prof = os.path.join(d, "haarcascade_profileface.xml")
    self._profile = cv2.CascadeClassifier(prof) if profile and os.path.exists(prof) else None
    self.min_size, self.scale_factor, self.min_neighbors = int(min_size), scale_factor, min_neighbors
    self.nms_threshold = nms_threshold

  def _run(self, cascade, gray):
    return cascade.detectMultiScale(gray, scaleFactor=self.scale_factor, minNeighbors=self.min_neighbors,
                                    minSize=(self.min_size, self.min_size))

  def __call__(self, image: np.ndarray) -> List[FaceBox]:
    import cv2
    gray = cv2.equalizeHist(cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2GRAY))
    faces = _from_xywh(self._run(self._frontal, gray), "haar", 2.0)
    if self._profile is not None:
      w = gray.shape[1]
      faces += _from_xywh(self._run(self._profile, gray), "haar_profile", 1.0)
      flipped = self._run(self._profile, np.ascontiguousarray(gray[:, ::-1]))
      for f in _from_xywh(flipped, "haar_profile", 1.0):
        x0, y0, x1, y1 = f.box
        # mirror x about the image: edge coordinate e (1-based, pixel c spans c+0.5..c+1.5) -> w + 1 - e
        f.box = np.array([w + 1 - x1, y0, w + 1 - x0, y1], np.float32)
        faces.append(f)
    if not faces:
      return []
    keep = nms(np.stack([f.box for f in faces]), np.array([f.score for f in faces]), self.nms_threshold)
    return drop_contained([faces[i] for i in keep])


class DlibDetector:
  """dlib's HOG frontal face detector (``upsample`` pyramid up-samplings for small faces)."""

  def __init__(self, upsample: int = 1):
    if not dlib_available():
      raise NoDetectorError("dlib is not installed: pip install 'jface[dlib]' (dlib-bin)")
    import dlib
    self._det = dlib.get_frontal_face_detector()
    self.upsample = int(upsample)

  def __call__(self, image: np.ndarray) -> List[FaceBox]:
    rects, scores, _ = self._det.run(np.ascontiguousarray(image), self.upsample, 0.0)
    out = []
    for r, s in zip(rects, scores):
      # dlib rectangles are inclusive 0-based pixel ranges
      out.append(FaceBox(np.array([r.left() + 0.5, r.top() + 0.5, r.right() + 1.5, r.bottom() + 1.5], np.float32),
                         float(s), "dlib"))
    return out


class FullImageDetector:
  """The whole image is one face: box = the image's pixel centres ``[1, W] x [1, H]`` (as the folder reader's
  ``roi="full"``)."""

  def __call__(self, image: np.ndarray) -> List[FaceBox]:
    h, w = image.shape[:2]
    return [FaceBox(np.array([1, 1, w, h], np.float32), 1.0, "full")]


def make_detector(name: str = "auto", min_size: int = 20,
                  model_dir: Optional[str] = None) -> Callable[[np.ndarray], List[FaceBox]]:
  """``"auto" | "blazeface" | "blazeface_full" | "haar" | "dlib" | "full"`` -> a detector (module docstring).
  Raises ``NoDetectorError`` (one line, what to install)."""
  from jface.core.face_model import MissingAssetError
  if name == "auto":
    if blazeface_available(model_dir):
      return make_detector("blazeface", min_size, model_dir)
    if haar_cascade_dir():
      return HaarDetector(min_size=min_size)
    if dlib_available():
      return DlibDetector()
    raise NoDetectorError("no face detector available: pip install -e '.[photos]' and python -m "
                          "jface.inference.tflite fetch (BlazeFace), or 'opencv-python-headless<5' (Haar), or pass "
                          "landmarks (--landmarks FILE), or use --detector full for images that are face crops")
  if name in ("blazeface", "blazeface_full"):
    from jface.inference.blazeface import BlazeFaceDetector
    try:
      return BlazeFaceDetector("full" if name == "blazeface_full" else "short", model_dir)
    except MissingAssetError as e:
      raise NoDetectorError(str(e)) from None
  if name == "haar":
    return HaarDetector(min_size=min_size)
  if name == "dlib":
    return DlibDetector()
  if name == "full":
    return FullImageDetector()
  raise ValueError(f"unknown detector {name!r}; choose {', '.join(DETECTORS)}")


DETECTORS = ("auto", "blazeface", "blazeface_full", "haar", "dlib", "full")


# ------------------------------------------------------------------------------------- dlib landmarks

def dlib_predictor_path(path: Optional[str] = None) -> Optional[str]:
  """The dlib 68-point shape predictor file: ``path`` if given, else the one ``face_recognition_models`` ships
  (``pip install jface[dlib]``), else None."""
  if path:
    if not os.path.exists(path):
      raise FileNotFoundError(f"dlib shape predictor not found: {path}")
    return path
  try:
    import face_recognition_models
  except ImportError:
    return None
  p = face_recognition_models.pose_predictor_model_location()
  return p if os.path.exists(p) else None


class DlibLandmarks:
  """dlib's 68-point shape predictor (iBUG-68 order): ``(image RGB, box (4,) edges) -> (68, 2)`` float32 in
  1-based image coordinates."""

  def __init__(self, path: Optional[str] = None):
    if not dlib_available():
      raise NoDetectorError("dlib is not installed: pip install 'jface[dlib]'")
    p = dlib_predictor_path(path)
    if p is None:
      raise NoDetectorError("no dlib 68-point shape predictor: pip install face-recognition-models or pass "
                            "--dlib_predictor shape_predictor_68_face_landmarks.dat")
    import dlib
    self._dlib = dlib
    self._pred = dlib.shape_predictor(p)

  def __call__(self, image: np.ndarray, box) -> np.ndarray:
    x0, y0, x1, y1 = (float(v) for v in np.asarray(box).reshape(4))
    rect = self._dlib.rectangle(int(round(x0 - 0.5)), int(round(y0 - 0.5)), int(round(x1 - 1.5)),
                                int(round(y1 - 1.5)))
    shape = self._pred(np.ascontiguousarray(image), rect)
    return np.array([[shape.part(i).x + 1.0, shape.part(i).y + 1.0] for i in range(shape.num_parts)],
                    np.float32)
