"""BlazeFace (MediaPipe's face detectors) as a jface detector: SSD anchors, box decoding, weighted NMS.

Two models (``jface.inference.tflite``): ``short`` (``face_detection_short_range.tflite``, 128x128 input, faces
that fill a good part of the image, 896 anchors) and ``full`` (``face_detection_full_range_sparse.tflite``,
192x192, also small faces, 2304 anchors). The constants are MediaPipe's graph options (SsdAnchorsCalculator,
TensorsToDetectionsCalculator, NonMaxSuppression "weighted"); the functions are our own, tested against numpy
references.

Coordinates: the network sees the image letterboxed (aspect kept, zero border, centred) into its square input;
decoded boxes and the 6 keypoints (right eye, left eye, nose tip, mouth, right ear, left ear; "right" = the
subject's) are in [0, 1] units of that square, then mapped to 1-based image coordinates (box edges, pixel centres).
"""
from __future__ import annotations

import dataclasses
from typing import List, Optional, Sequence, Tuple

import numpy as np

from jface.inference.detect import FaceBox


@dataclasses.dataclass(frozen=True)
class BlazeFaceSpec:
  """One BlazeFace model: file, input side, anchor layers (strides; layers with equal strides share a grid),
  anchors per layer (2 = aspect 1 + the interpolated scale), coordinate scale and score threshold."""
  file: str
  size: int
  strides: Tuple[int, ...]
  anchors_per_layer: int
  min_score: float


SPECS = {
    "short": BlazeFaceSpec("face_detection_short_range.tflite", 128, (8, 16, 16, 16), 2, 0.5),
    "full": BlazeFaceSpec("face_detection_full_range_sparse.tflite", 192, (4,), 1, 0.6),
}
NUM_KEYPOINTS = 6


def ssd_anchors(size: int, strides: Sequence[int], per_layer: int) -> np.ndarray:
  """Anchor centres (A, 2) in [0, 1] (x, y) of a square input of side ``size`` (fixed anchor size 1).

  Consecutive layers with the same stride share one feature grid: each cell of a ``size/stride`` grid gets
  ``per_layer`` anchors per such layer, cells in row-major order (MediaPipe's SsdAnchorsCalculator with
  ``fixed_anchor_size``, anchor offset 0.5).
  """
  out = []
  i = 0
  strides = list(strides)
  while i < len(strides):
    j = i
    while j < len(strides) and strides[j] == strides[i]:
      j += 1
    n = int(np.ceil(size / strides[i]))
    yy, xx = np.meshgrid((np.arange(n) + 0.5) / n, (np.arange(n) + 0.5) / n, indexing="ij")
    cells = np.stack([xx.reshape(-1), yy.reshape(-1)], -1)
    out.append(np.repeat(cells, per_layer * (j - i), axis=0))
    i = j
  return np.concatenate(out).astype(np.float64)


def decode(raw: np.ndarray, logits: np.ndarray, anchors: np.ndarray, size: int) -> tuple:
  """Raw outputs -> (boxes (A, 4) (x0, y0, x1, y1), keypoints (A, 6, 2), scores (A,)), all in [0, 1] units.

  ``raw`` (A, 16): centre offset (x, y) and size (w, h) in input pixels relative to the anchor, then 6 keypoint
  offsets; ``logits`` (A,): sigmoid of the logit clipped to +-100.
  """
  raw = np.asarray(raw, np.float64).reshape(len(anchors), 4 + 2 * NUM_KEYPOINTS)
  c = anchors + raw[:, :2] / size
  wh = raw[:, 2:4] / size
  boxes = np.concatenate([c - wh / 2, c + wh / 2], -1)
  kps = anchors[:, None, :] + raw[:, 4:].reshape(-1, NUM_KEYPOINTS, 2) / size
  scores = 1.0 / (1.0 + np.exp(-np.clip(np.asarray(logits, np.float64).reshape(-1), -100, 100)))
  return boxes, kps, scores


def _iou_one(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
  lo = np.maximum(box[:2], boxes[:, :2])
  hi = np.minimum(box[2:], boxes[:, 2:])
  inter = np.prod(np.clip(hi - lo, 0, None), -1)
  area = lambda b: np.prod(np.clip(b[..., 2:] - b[..., :2], 0, None), -1)  # noqa: E731
  union = area(box) + area(boxes) - inter
  return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def weighted_nms(boxes: np.ndarray, keypoints: np.ndarray, scores: np.ndarray, min_score: float,
                 iou_threshold: float = 0.3) -> List[tuple]:
  """MediaPipe's "weighted" NMS: take the best remaining candidate, average it with every remaining candidate of
  IoU > ``iou_threshold`` (itself included), weights = scores; keep the best score. -> list of
  (box (4,), keypoints (6, 2), score), best first. Candidates below ``min_score`` are dropped first."""
  keep = np.nonzero(scores >= min_score)[0]
  order = keep[np.argsort(-scores[keep], kind="stable")]
  out = []
  while len(order):
    overlap = _iou_one(boxes[order[0]], boxes[order]) > iou_threshold
    overlap[0] = True
    group = order[overlap]
    w = scores[group][:, None]
    box = (boxes[group] * w).sum(0) / w.sum()
    kp = (keypoints[group] * w[:, :, None]).sum(0) / w.sum()
    out.append((box, kp, float(scores[order[0]])))
    order = order[~overlap]
  return out


def letterbox(image: np.ndarray, size: int) -> tuple:
  """(H, W, 3) uint8 -> ((size, size, 3) float32 in [-1, 1], (sx, sy), (pad_x, pad_y)): the image resized to fit
  the square (aspect kept; area interpolation when shrinking), centred, on a border of 0. The square's edge
  coordinate ``u * size`` is ``pad + e * s`` for the image's 0-based edge coordinate ``e`` (``to_image``)."""
  import cv2
  h, w = image.shape[:2]
  scale = size / max(h, w)
  nw, nh = max(1, int(round(w * scale))), max(1, int(round(h * scale)))
  interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
  small = cv2.resize(np.ascontiguousarray(image), (nw, nh), interpolation=interp)
  px, py = (size - nw) // 2, (size - nh) // 2
  out = np.zeros((size, size, 3), np.float32)
  out[py:py + nh, px:px + nw] = small.astype(np.float32) / 127.5 - 1.0
  return out, (nw / w, nh / h), (px, py)


def to_image(pts01: np.ndarray, size: int, scale: tuple, pad: tuple) -> np.ndarray:
  """[0, 1] square units (..., 2) -> 1-based image edge coordinates (..., 2) (the inverse of ``letterbox``'s
  placement: square edge coordinate ``u * size`` minus the pad, over the scale, plus 0.5 for 1-based pixel
  centres at the array's 0.5-shifted edges)."""
  p = np.asarray(pts01, np.float64) * size - np.asarray(pad, np.float64)
  return p / np.asarray(scale, np.float64) + 0.5


class BlazeFaceDetector:
  """``detector(image (H, W, 3) uint8 RGB) -> list[FaceBox]`` (best first), with ``FaceBox.keypoints`` (6, 2).

  Args:
    model: ``"short"`` or ``"full"`` (``SPECS``).
    model_dir: where the ``.tflite`` files are (``jface.inference.tflite.find_model``).
    min_score: detection threshold (default: MediaPipe's, 0.5 short / 0.6 full).
  Raises ``jface.core.face_model.MissingAssetError`` (one line) without LiteRT or the model file.
  """

  def __init__(self, model: str = "short", model_dir: Optional[str] = None, min_score: Optional[float] = None,
               iou_threshold: float = 0.3):
    from jface.inference.tflite import TFLiteModel
    if model not in SPECS:
      raise ValueError(f"unknown BlazeFace model {model!r}; choose {', '.join(SPECS)}")
    self.spec = SPECS[model]
    self.kind = f"blazeface_{model}"
    self.net = TFLiteModel(self.spec.file, model_dir)
    self.anchors = ssd_anchors(self.spec.size, self.spec.strides, self.spec.anchors_per_layer)
    self.min_score = self.spec.min_score if min_score is None else float(min_score)
    self.iou_threshold = float(iou_threshold)

  def detect_batch(self, images: Sequence[np.ndarray]) -> List[List[FaceBox]]:
    """Faces of several images in one batched forward pass."""
    if not images:
      return []
    s = self.spec.size
    boxes = [letterbox(im, s) for im in images]
    raw, logits = self.net(np.stack([b[0] for b in boxes]))
    out = []
    for k in range(len(images)):
      bx, kp, sc = decode(raw[k], logits[k], self.anchors, s)
      faces = []
      for box, pts, score in weighted_nms(bx, kp, sc, self.min_score, self.iou_threshold):
        _, scale, pad = boxes[k]
        b = to_image(box.reshape(2, 2), s, scale, pad).reshape(4).astype(np.float32)
        faces.append(FaceBox(b, score, self.kind, to_image(pts, s, scale, pad).astype(np.float32)))
      out.append(faces)
    return out

  def __call__(self, image: np.ndarray) -> List[FaceBox]:
    return self.detect_batch([image])[0]
