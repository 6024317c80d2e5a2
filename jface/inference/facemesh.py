"""MediaPipe's face mesh (``face_landmark.tflite``: 468 3D points) on rotated face boxes.

A face region (``Roi``) is a rotated square in the image: centre (1-based image coordinates), side (px) and the
angle (radians) of its x axis, measured from the image x axis towards y (down). From a BlazeFace detection
(``roi_from_detection``): the box centre, side ``1.5 x`` the box's longer side, x axis along the line from the
right eye keypoint to the left eye keypoint (the subject's). From 468 mesh points (``roi_from_mesh``, the
refinement pass): their bounding box in the eye-line frame of points 33 and 263, side ``1.5 x`` its longer side.
These are MediaPipe's graph options; the code is ours.

The network sees the region warped upright to 192x192, RGB in [0, 1]; it returns 468 (x, y, z) in input pixels
(x, y: edge coordinates of the 192 input; z: same scale, relative depth, smaller = nearer the camera) and a face
score (logit). ``FaceMesh`` maps them back to image coordinates (z scaled with the region, kept relative).
"""
from __future__ import annotations

import dataclasses
from typing import List, Optional, Sequence

import numpy as np

NUM_POINTS = 468
INPUT = 192
RIGHT_EYE, LEFT_EYE = 33, 263  # outer eye corners (the subject's right / left) in the 468-point mesh


@dataclasses.dataclass(frozen=True)
class Roi:
  """A rotated square: ``centre`` (2,) 1-based image coordinates, ``side`` px, ``angle`` radians (x axis from the
  image x axis towards y)."""
  centre: np.ndarray
  side: float
  angle: float

  def axes(self) -> np.ndarray:
    """(2, 2): rows = the region's x and y axes as unit image vectors."""
    c, s = np.cos(self.angle), np.sin(self.angle)
    return np.array([[c, s], [-s, c]])


def _angle(a: np.ndarray, b: np.ndarray) -> float:
  d = np.asarray(b, np.float64) - np.asarray(a, np.float64)
  return float(np.arctan2(d[1], d[0]))


def roi_from_detection(box, keypoints, scale: float = 1.5) -> Roi:
  """BlazeFace box (4,) edges (x0, y0, x1, y1) + keypoints (6, 2) (0 = right eye, 1 = left eye) -> ``Roi``."""
  b = np.asarray(box, np.float64).reshape(4)
  kp = np.asarray(keypoints, np.float64).reshape(-1, 2)
  side = scale * max(b[2] - b[0], b[3] - b[1])
  return Roi(np.array([(b[0] + b[2]) / 2, (b[1] + b[3]) / 2]), float(side), _angle(kp[0], kp[1]))


def roi_from_mesh(points, scale: float = 1.5) -> Roi:
  """468 image points (468, 2|3) -> ``Roi``: the points' box in the frame of the 33 -> 263 eye line."""
  p = np.asarray(points, np.float64)[:, :2]
  angle = _angle(p[RIGHT_EYE], p[LEFT_EYE])
  ax = Roi(np.zeros(2), 1.0, angle).axes()
  q = p @ ax.T  # coordinates along the region's axes
  lo, hi = q.min(0), q.max(0)
  return Roi(((lo + hi) / 2) @ ax, float(scale * np.max(hi - lo)), angle)


def to_image(pts, roi: Roi, size: int = INPUT) -> np.ndarray:
  """Points (..., 2|3) in input pixels of the warped region (edge coordinates, 0..size) -> image coordinates
  (1-based); a third coordinate is scaled by ``side / size``."""
  p = np.asarray(pts, np.float64)
  f = roi.side / size
  xy = roi.centre + ((p[..., :2] - size / 2) * f) @ roi.axes()
  return np.concatenate([xy, p[..., 2:] * f], -1)


def from_image(pts, roi: Roi, size: int = INPUT) -> np.ndarray:
  """Inverse of ``to_image``."""
  p = np.asarray(pts, np.float64)
  f = roi.side / size
  xy = ((p[..., :2] - roi.centre) @ roi.axes().T) / f + size / 2
  return np.concatenate([xy, p[..., 2:] / f], -1)


def warp(image: np.ndarray, roi: Roi, size: int = INPUT) -> np.ndarray:
  """(H, W, 3) uint8 -> (size, size, 3) float32 in [0, 1]: the region, upright (bilinear, zero border).

  Output pixel (i, j) has its centre at the region's edge coordinate (j + 0.5, i + 0.5); its image position
  (``to_image``) minus 1 is the array coordinate sampled (1-based -> 0-based pixel centres).
  """
  import cv2
  f = roi.side / size
  ax = roi.axes()
  # image array coords = centre - 1 + ((j + 0.5 - size/2) f) ax_x + ((i + 0.5 - size/2) f) ax_y
  m = np.zeros((2, 3))
  m[:, 0] = f * ax[0]
  m[:, 1] = f * ax[1]
  m[:, 2] = roi.centre - 1 + (0.5 - size / 2) * f * (ax[0] + ax[1])
  out = cv2.warpAffine(np.ascontiguousarray(image), m, (size, size), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                       borderMode=cv2.BORDER_CONSTANT, borderValue=0)
  return out.astype(np.float32) / 255.0


@dataclasses.dataclass
class MeshResult:
  """468 points (468, 3) image coordinates (z relative, image pixel scale), ``score`` in [0, 1] (face present),
  and the ``Roi`` the network saw."""
  points: np.ndarray
  score: float
  roi: Roi


class FaceMesh:
  """``face_landmark.tflite`` over regions of one image, batched.

  Args:
    model_dir: where the file is (``jface.inference.tflite.find_model``).
    refine: extra passes, each on the region of the previous pass's points (``roi_from_mesh``).
  """

  def __init__(self, model_dir: Optional[str] = None, refine: int = 1):
    from jface.inference.tflite import TFLiteModel
    self.net = TFLiteModel("face_landmark.tflite", model_dir)
    self.refine = int(refine)

  def run(self, image: np.ndarray, rois: Sequence[Roi]) -> List[MeshResult]:
    """One pass: the mesh of each region (no refinement)."""
    if not rois:
      return []
    x = np.stack([warp(image, r) for r in rois])
    raw, logit = self.net(x)
    pts = raw.reshape(len(rois), NUM_POINTS, 3)
    score = 1.0 / (1.0 + np.exp(-np.clip(logit.reshape(-1).astype(np.float64), -100, 100)))
    return [MeshResult(to_image(p, r).astype(np.float32), float(s), r) for p, s, r in zip(pts, score, rois)]

  def __call__(self, image: np.ndarray, rois: Sequence[Roi]) -> List[MeshResult]:
    """The mesh of each region, after ``refine`` passes."""
    out = self.run(image, rois)
    for _ in range(self.refine):
      out = self.run(image, [roi_from_mesh(m.points) for m in out])
    return out
