r"""Inference: images -> faces -> 3DMM parameters, 68 landmarks, head pose and a coloured dense mesh.

Python API::

  pred = Predictor("WORKDIR")                       # a train.py workdir (config.json + checkpoints/)
  results = pred.predict_images([rgb, ...])          # per image, a list of FaceResult
  results = pred.predict_images([rgb], landmarks=[pts68])   # faces given by 68 image points instead

CLI::

  python -m jface.predict IMAGE_OR_FOLDER --checkpoint WORKDIR --out OUTDIR [--landmarks FILE]
      [--flm auto|given|dlib|iterate] [--iterations N] [--bfm_dir DIR] [--detector auto|haar|dlib|full] [--no_mesh]

Pipeline:

1. Faces: given landmarks (``--landmarks FILE``: the ``datasets.wild.read_landmarks_file`` format, original-image
   pixels, names relative to the input folder) or a face detector (``jface.detect``). All faces of all images are
   cropped first and run through the network together, in chunks of ``max_batch``.
2. Crop box: from landmarks, 3DDFA's landmark box clipped to the image (``datasets.common.roi_box_from_landmarks``,
   as the training readers); from a detector box, 3DDFA's ``parse_roi_box_from_bbox`` form with constants per
   detector fitted to those landmark boxes (``jface.detect.roi_box_from_bbox``). Then
   ``datasets.common.crop_image`` to 120 x 120. Detection needs OpenCV 4.x (Haar cascades; OpenCV 5 has none)
   or dlib; without either, give landmarks or use ``--detector full`` for images that are face crops.
3. Landmark map (FLM) for models trained with ``use_flm`` (``--flm``): ``given`` landmarks; ``dlib``'s 68-point
   predictor on the detector box (the crop box then comes from its landmarks); or ``iterate`` (2DASL's cycle
   idea): start from the mean face's landmarks (whitened params = 0) in the crop, predict, redraw the FLM from
   the predicted landmarks, ``iterations`` times (``iterations + 1`` forward passes; default 0, i.e. the mean
   face's map: see ``DEFAULT_ITERATIONS`` for the measurement). ``auto`` = given when the face has landmarks,
   else dlib when installed, else iterate. RGB-only models ignore the FLM.
4. Outputs per face: whitened params, 68 landmarks in image coordinates (``geometry.landmarks3d`` ->
   ``crop_to_image``), (yaw, pitch, roll) degrees (``geometry.pose_angles``), and dense vertices in image
   coordinates: the full shape when the face model has dense bases (the synthetic model, or a BFM folder with
   ``w_shp_sim.npy``/``w_exp_sim.npy``); with the public 3DDFA files (dense mean, no dense bases) only the POSED
   MEAN SHAPE (identity and expression are not applied: ``dense_shape = "mean"``, said in the files and JSON).

Files (CLI): ``OUTDIR/<image>_face<k>.obj`` and ``.ply`` with per-vertex colours sampled bilinearly from the image
at the projected vertices (occluded vertices get the colour of whatever is in front), in a right-handed y-up frame
for mesh viewers: ``(x, H + 1 - y, z)`` of the image coordinates (pixels; z towards the viewer);
``OUTDIR/<image>_overlay.jpg`` (shaded mesh + landmarks); ``OUTDIR/results.json``.

Image coordinates are 1-based pixel centres (array pixel ``[r, c]`` is at ``(x, y) = (c + 1, r + 1)``), y down.
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import sys
import time
from typing import List, Optional, Sequence

import numpy as np

FLM_MODES = ("auto", "given", "dlib", "iterate")
# FLM redraws from the model's own prediction when no landmarks are given (0 = the mean face's FLM only).
# Measured (2D NME %, mean of |yaw| bins, 256 held-out synthetic faces, tiny_cnn (32,64,128,256,256), 1500 steps
# of the :smoke recipe on 2048 pre-rendered faces): without the cycle loss, GT-landmark FLM 8.69, mean-face FLM
# (N=0) 12.97, N=1 14.10, N=2 16.70, N=3 18.41, empty map 14.45; with the cycle loss (a weaker model): GT 16.64,
# N=0 12.67, N=1 13.11, N=2 13.38, N=3 13.58; the :smoke config (resnet18/16, cyc + sc) at 300 steps: GT 18.24,
# N=0 18.19, N=1..3 18.60-18.65; the mean face without network 15.77. Redrawing never helped, so the default
# is 0. (Weak synthetic models only: re-measure with a real 2DASL model.)
DEFAULT_ITERATIONS = 0
IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


class MissingCheckpointError(FileNotFoundError):
  """The checkpoint folder is missing or incomplete (one-line message)."""


def _no_checkpoint(path: str) -> MissingCheckpointError:
  return MissingCheckpointError(f"no checkpoint at {path}: expected a train.py workdir with config.json and "
                                "checkpoints/")


@dataclasses.dataclass
class FaceResult:
  """One face.

  Attributes:
    roi_box: (4,) float32 (sx, sy, ex, ey) crop box in the image.
    params: (62,) float32 whitened 3DMM params of the crop.
    landmarks: (68, 2) float32 image coordinates.
    pose: (3,) float32 (yaw, pitch, roll) degrees.
    vertices: (N, 3) float32 image coordinates (z scaled like x, y; larger = nearer), or None.
    dense_shape: "full" (identity + expression applied), "mean" (posed mean shape: no dense bases) or "none".
    box: (4,) float32 detector box (x0, y0, x1, y1) edges, or None when the face came from landmarks.
    flm: how the landmark map was made: "given", "dlib", "iterate:N" or "none" (RGB-only model).
  """
  roi_box: np.ndarray
  params: np.ndarray
  landmarks: np.ndarray
  pose: np.ndarray
  vertices: Optional[np.ndarray] = None
  dense_shape: str = "none"
  box: Optional[np.ndarray] = None
  flm: str = "none"


@dataclasses.dataclass
class _Face:
  image: int
  roi_box: np.ndarray
  crop: np.ndarray
  flm_pts: Optional[np.ndarray]  # (68, 2) crop coords of given / dlib landmarks, NaN unknown
  box: Optional[np.ndarray]
  flm: str


def _as_rgb(img, what: str = "image") -> np.ndarray:
  a = np.asarray(img)
  if a.ndim == 2:
    a = np.repeat(a[..., None], 3, -1)
  if a.ndim != 3 or a.shape[2] not in (3, 4) or a.dtype != np.uint8 or min(a.shape[:2]) < 2:
    raise ValueError(f"{what} must be (H, W, 3) uint8 RGB, got shape {a.shape} dtype {a.dtype}")
  return np.ascontiguousarray(a[..., :3])


def _landmark_sets(lm) -> List[np.ndarray]:
  """None | (68, 2) | (F, 68, 2) -> list of (68, 2) float32 (NaN = unknown)."""
  if lm is None:
    return []
  a = np.asarray(lm, np.float32)
  if a.shape == (68, 2):
    a = a[None]
  if a.ndim != 3 or a.shape[1:] != (68, 2):
    raise ValueError(f"landmarks must be (68, 2) or (F, 68, 2) image points, got shape {a.shape}")
  return list(a)


def _pow2_at_most(n: int, cap: int) -> int:
  p = 1
  while p < n and p < cap:
    p *= 2
  return min(p, cap)


def dense_kind(model) -> str:
  """"full" (dense bases), "mean" (dense mean shape only) or "none" (no dense mesh) for a FaceModel."""
  if model.has_dense_bases:
    return "full"
  return "mean" if model.u_dense is not None else "none"


@functools.lru_cache(maxsize=None)
def _dense_fn(kind: str):
  import jax

  from jface import geometry

  def full(model, pw, roi):
    return geometry.crop_to_image(geometry.dense_vertices(model, pw), roi, model.crop_size)

  def mean(model, pw, roi):
    pts = geometry.pose_points(geometry.dewhiten(model, pw), model.u_dense.reshape(-1, 3), model.crop_size)
    return geometry.crop_to_image(pts, roi, model.crop_size)
  return jax.jit({"full": full, "mean": mean}[kind])


def dense_vertices(model, pw: np.ndarray, roi_box: np.ndarray) -> tuple[np.ndarray, str]:
  """Whitened (B, 62) + roi boxes (B, 4) -> ((B, N, 3) float32 image coords, kind) with kind from
  ``dense_kind``: "full" = identity + expression applied; "mean" = the dense MEAN shape under the predicted pose
  (no dense bases). Raises ``ValueError`` for "none"."""
  kind = dense_kind(model)
  if kind == "none":
    raise ValueError(f"the face model {model.name!r} has no dense mesh (u_dense)")
  return np.asarray(_dense_fn(kind)(model, np.asarray(pw, np.float32), np.asarray(roi_box, np.float32)),
                    np.float32), kind


class Predictor:
  """A trained regressor ready for images (see the module docstring).

  Args:
    checkpoint_dir: a ``train.py`` workdir (``config.json`` + ``checkpoints/`` or ``best/``).
    bfm_dir: the face model the checkpoint was trained with: ``"synthetic"`` or a 3DDFA-format folder
      (default: the checkpoint config's ``bfm_dir``). Its whitening must be the training one.
    which: ``"latest"`` or ``"best"`` checkpoint.
    flm: ``auto | given | dlib | iterate`` (module docstring).
    iterations: FLM redraws in ``iterate`` mode.
    detector: ``auto | haar | dlib | full`` (``jface.detect``; built lazily, only when an image has no
      landmarks), or a callable ``image -> list[jface.detect.FaceBox]``.
    dense: compute dense vertices (False: landmarks and pose only).
    dense_bases_dir: folder with ``w_shp_sim.npy``/``w_exp_sim.npy`` (default: the config's, else none).
    max_batch: faces per forward pass (chunks are padded to a power of two, so few shapes get compiled).
    min_face_size, max_faces: detector face filter (smaller box side in px; 0 = all faces).
    dlib_predictor: path of dlib's 68-point ``.dat`` (default: ``face_recognition_models``' copy).
  Raises ``MissingCheckpointError``, ``jface.bfm.MissingAssetError``, ``ValueError`` (one line each).
  """

  def __init__(self, checkpoint_dir: str, bfm_dir: Optional[str] = None, *, which: str = "latest",
               flm: str = "auto", iterations: int = DEFAULT_ITERATIONS, detector="auto", dense: bool = True,
               dense_bases_dir: Optional[str] = None, max_batch: int = 32, min_face_size: int = 20,
               max_faces: int = 0, dlib_predictor: Optional[str] = None):
    import jax
    import jax.numpy as jnp

    from jface import bfm as bfm_lib
    from jface import geometry, train_lib
    if flm not in FLM_MODES:
      raise ValueError(f"flm must be one of {', '.join(FLM_MODES)}, got {flm!r}")
    if iterations < 0:
      raise ValueError(f"iterations must be >= 0, got {iterations}")
    if max_batch < 1:
      raise ValueError(f"max_batch must be >= 1, got {max_batch}")
    if not os.path.isfile(os.path.join(checkpoint_dir, "config.json")):
      raise _no_checkpoint(checkpoint_dir)
    try:
      config, state = train_lib.load_checkpoint(checkpoint_dir, which)
    except FileNotFoundError as e:
      raise MissingCheckpointError(f"cannot load a checkpoint from {checkpoint_dir}: {e}") from None
    trained_on = str(config.get("bfm_dir", "") or "")
    spec = bfm_dir or trained_on
    if not spec:
      raise ValueError(f"{checkpoint_dir}/config.json names no bfm_dir: pass bfm_dir (--bfm_dir)")
    if trained_on and (trained_on == "synthetic") != (spec == "synthetic"):
      raise ValueError(f"the checkpoint was trained with bfm_dir={trained_on!r}; bfm_dir={spec!r} has another "
                       "parameter convention")
    self.config = config
    self.model = bfm_lib.load_model(spec, dense_bases_dir=dense_bases_dir or config.get("dense_bases_dir") or None)
    self.use_flm = bool(config.use_flm)
    self.flm_mode, self.iterations = flm, int(iterations)
    self.max_batch, self.dense = int(max_batch), bool(dense)
    self.detector_name, self.min_face_size, self.max_faces = detector, int(min_face_size), int(max_faces)
    self._detector = None
    self._dlib = None
    self._dlib_path = dlib_predictor
    self._variables = jax.device_put((state.params, state.batch_stats))
    self._forward = train_lib.make_predict_fn(train_lib.make_modules(config, bn_axis_name=None), self.use_flm)
    crop = self.model.crop_size

    @jax.jit
    def decode(model, pw, roi):
      lm3 = geometry.landmarks3d(model, pw)
      return (geometry.crop_to_image(lm3[..., :2], roi, crop), geometry.pose_angles(model, pw), lm3[..., :2])

    self._decode = decode
    self._mean_flm = np.asarray(geometry.landmarks2d(self.model, jnp.zeros(62, jnp.float32)))
    self.dense_shape = dense_kind(self.model)

  # ----------------------------------------------------------------------------------- components

  @property
  def triangles(self) -> Optional[np.ndarray]:
    """(T, 3) int32 0-based triangles of the dense mesh, or None."""
    return None if self.model.tri is None else np.asarray(self.model.tri)

  def _get_detector(self):
    if self._detector is None:
      if callable(self.detector_name):
        self._detector = self.detector_name
      else:
        from jface import detect
        self._detector = detect.make_detector(self.detector_name, self.min_face_size)
    return self._detector

  def _use_dlib(self) -> bool:
    """Whether detector faces get their FLM (and crop) from dlib's 68 points."""
    if not self.use_flm or self.flm_mode not in ("auto", "dlib"):
      return False
    if self._dlib is None:
      from jface import detect
      try:
        self._dlib = detect.DlibLandmarks(self._dlib_path)
      except detect.NoDetectorError:
        if self.flm_mode == "dlib":
          raise
        self._dlib = False
    return self._dlib is not False

  def predict_crops(self, crops: np.ndarray, flm_landmarks: Optional[np.ndarray] = None,
                    mask: Optional[np.ndarray] = None) -> np.ndarray:
    """One forward pass (chunked) over crops (B, 120, 120, 3) uint8 with FLM points (B, 68, 2) crop coords
    (ignored by RGB-only models; default: the mean face) -> (B, 62) float32 whitened params."""
    crops = np.asarray(crops, np.uint8)
    n = len(crops)
    if n == 0:
      return np.zeros((0, 62), np.float32)
    pts = np.broadcast_to(self._mean_flm, (n, 68, 2)) if flm_landmarks is None else np.asarray(flm_landmarks)
    m = np.all(np.isfinite(pts), -1) if mask is None else np.asarray(mask, bool) & np.all(np.isfinite(pts), -1)
    pts = np.where(m[..., None], pts, 0).astype(np.float32)
    out = []
    for s in range(0, n, self.max_batch):
      e = min(s + self.max_batch, n)
      size = _pow2_at_most(e - s, self.max_batch)
      pad = size - (e - s)
      take = lambda a: np.concatenate([a[s:e], np.repeat(a[s:s + 1], pad, 0)]) if pad else a[s:e]  # noqa: E731
      batch = {"image": take(crops), "flm_landmarks": take(pts), "landmarks_mask": take(m)}
      out.append(np.asarray(self._forward(*self._variables, batch))[:e - s])
    return np.concatenate(out).astype(np.float32)

  def _chunked(self, fn, pw: np.ndarray, rois: np.ndarray) -> tuple:
    """``fn(model, pw, rois)`` over chunks of ``max_batch`` padded to powers of two (few compiled shapes)
    -> tuple of float32 numpy outputs, concatenated."""
    n, outs = len(pw), []
    for s in range(0, n, self.max_batch):
      e = min(s + self.max_batch, n)
      pad = _pow2_at_most(e - s, self.max_batch) - (e - s)
      take = lambda a: np.concatenate([a[s:e], np.repeat(a[s:s + 1], pad, 0)]) if pad else a[s:e]  # noqa: E731
      res = fn(self.model, take(np.asarray(pw, np.float32)), take(np.asarray(rois, np.float32)))
      res = res if isinstance(res, tuple) else (res,)
      outs.append([np.asarray(a, np.float32)[:e - s] for a in res])
    return tuple(np.concatenate(parts) for parts in zip(*outs))

  def _run(self, faces: List[_Face]) -> np.ndarray:
    """Params for all faces: one batched pass, then the FLM iterations for the faces without landmarks."""
    crops = np.stack([f.crop for f in faces])
    pts = np.stack([f.flm_pts if f.flm_pts is not None else self._mean_flm for f in faces]).astype(np.float32)
    pw = self.predict_crops(crops, pts)
    it = np.array([f.flm.startswith("iterate") for f in faces])
    if self.use_flm and it.any():
      idx = np.nonzero(it)[0]
      for _ in range(self.iterations):
        lm = self._chunked(self._decode, pw[idx], np.stack([faces[i].roi_box for i in idx]))[2]
        pw[idx] = self.predict_crops(crops[idx], lm)
    return pw

  # ---------------------------------------------------------------------------------------- API

  def find_faces(self, image: np.ndarray, landmarks=None, image_index: int = 0) -> List[_Face]:
    """Faces of one image with their crops (from landmarks when given, else from the detector)."""
    from datasets import common
    from jface import detect
    crop_size = self.model.crop_size
    faces = []
    sets = _landmark_sets(landmarks)
    if sets:
      if self.use_flm and self.flm_mode == "dlib":
        raise ValueError("flm='dlib' ignores given landmarks: use flm='given' or 'auto'")
      for pts in sets:
        mk = np.all(np.isfinite(pts), -1)
        roi = common.roi_box_from_landmarks(pts, mk, image_shape=image.shape)
        crop = common.crop_image(image, roi, crop_size)
        flm_pts, flm = None, "none"
        if self.use_flm:
          if self.flm_mode in ("auto", "given"):
            flm_pts, flm = np.where(mk[:, None], common.image_to_crop(pts, roi, crop_size), np.nan), "given"
          else:
            flm = f"iterate:{self.iterations}"
        faces.append(_Face(image_index, roi, crop, flm_pts, None, flm))
      return faces
    if self.use_flm and self.flm_mode == "given":
      raise ValueError("no landmarks given for this image (flm='given')")
    found = detect.select_faces(self._get_detector()(image), self.min_face_size, self.max_faces)
    use_dlib = self._use_dlib() if found else False
    for fb in found:
      if use_dlib:
        pts = self._dlib(image, fb.box)
        roi = common.roi_box_from_landmarks(pts, image_shape=image.shape)
        crop = common.crop_image(image, roi, crop_size)
        faces.append(_Face(image_index, roi, crop, common.image_to_crop(pts, roi, crop_size).astype(np.float32),
                           fb.box, "dlib"))
      else:
        roi = detect.roi_box_from_bbox(fb.box, fb.kind)
        crop = common.crop_image(image, roi, crop_size)
        faces.append(_Face(image_index, roi, crop, None, fb.box,
                           f"iterate:{self.iterations}" if self.use_flm else "none"))
    return faces

  def predict_images(self, images: Sequence[np.ndarray], landmarks: Optional[Sequence] = None,
                     errors: Optional[List[Optional[str]]] = None) -> List[List[FaceResult]]:
    """Faces in RGB images (each (H, W, 3) uint8) -> per image, a list of ``FaceResult`` (largest faces first
    for detected faces; in the given order for landmarks).

    ``landmarks``: None, or per image None | (68, 2) | (F, 68, 2) image points (NaN = unknown): those faces
    are used instead of detection. ``errors``: an optional list that receives, per image, None or the one-line
    reason why the image has no faces (bad array, bad landmarks); without it such errors raise.
    All faces of all images share the batched forward passes.
    """
    if landmarks is not None and len(landmarks) != len(images):
      raise ValueError(f"landmarks must have one entry per image ({len(images)}), got {len(landmarks)}")
    faces: List[_Face] = []
    for i, img in enumerate(images):
      try:
        faces += self.find_faces(_as_rgb(img, f"image {i}"), None if landmarks is None else landmarks[i], i)
        if errors is not None:
          errors.append(None)
      except ValueError as e:
        if errors is None:
          raise
        errors.append(" ".join(str(e).split()))
    out: List[List[FaceResult]] = [[] for _ in images]
    if not faces:
      return out
    pw = self._run(faces)
    rois = np.stack([f.roi_box for f in faces]).astype(np.float32)
    lm, pose, _ = self._chunked(self._decode, pw, rois)
    verts = [None] * len(faces)
    kind = dense_kind(self.model)
    if self.dense and kind != "none":
      verts = list(self._chunked(_dense_fn(kind), pw, rois)[0])
    for k, f in enumerate(faces):
      out[f.image].append(FaceResult(roi_box=f.roi_box.astype(np.float32), params=pw[k], landmarks=lm[k],
                                     pose=pose[k], vertices=verts[k],
                                     dense_shape=kind if verts[k] is not None else "none",
                                     box=f.box, flm=f.flm))
    return out


# ---------------------------------------------------------------------------------------- outputs

def mesh_colors(image: np.ndarray, vertices: np.ndarray) -> np.ndarray:
  """(N, 3) uint8 colours sampled bilinearly from ``image`` at the vertices' (x, y) image coordinates."""
  from jface import mesh_io
  return np.clip(np.rint(mesh_io.sample_colors(image, vertices[:, :2])), 0, 255).astype(np.uint8)


def viewer_frame(vertices: np.ndarray, image_height: int) -> np.ndarray:
  """Image coordinates (N, 3) (y down) -> a right-handed y-up frame for mesh viewers: (x, H + 1 - y, z)."""
  v = np.asarray(vertices, np.float64).copy()
  v[:, 1] = image_height + 1 - v[:, 1]
  return v


def outward_triangles(vertices: np.ndarray, tri: np.ndarray) -> np.ndarray:
  """``tri`` with its winding flipped if needed so that the area-weighted mean normal points to +z (the viewer)
  in ``vertices``' frame (right-handed)."""
  v, t = np.asarray(vertices, np.float64), np.asarray(tri)
  n = np.cross(v[t[:, 1]] - v[t[:, 0]], v[t[:, 2]] - v[t[:, 0]])
  return t[:, ::-1].copy() if n[:, 2].sum() < 0 else t


def save_meshes(stem: str, image: np.ndarray, face: FaceResult, tri: np.ndarray, binary_ply: bool = True) -> dict:
  """Writes ``stem.obj`` and ``stem.ply`` (vertex colours from ``image``) -> {"obj": path, "ply": path}."""
  from jface import mesh_io
  v = viewer_frame(face.vertices, image.shape[0])
  t = outward_triangles(v, tri)
  col = mesh_colors(image, face.vertices)
  note = ["jface.predict mesh: image pixels, x right, y up (H + 1 - y_image), z towards the viewer"]
  if face.dense_shape == "mean":
    note.append("dense_shape=mean: POSED MEAN SHAPE ONLY - identity and expression are not applied (the face "
                "model has no dense bases); the 68 landmarks and pose are the full prediction")
  else:
    note.append(f"dense_shape={face.dense_shape}")
  mesh_io.write_obj(stem + ".obj", v, t, col, comments=note)
  mesh_io.write_ply(stem + ".ply", v, t, col, comments=note, binary=binary_ply)
  return {"obj": stem + ".obj", "ply": stem + ".ply"}


def overlay(image: np.ndarray, faces: Sequence[FaceResult], tri: Optional[np.ndarray]) -> np.ndarray:
  """The image with each face's shaded mesh (when it has vertices) and 68 landmarks drawn."""
  from jface import render
  out = image
  radius = max(1.0, min(image.shape[:2]) / 250)
  for f in faces:
    if f.vertices is not None and tri is not None:
      out = render.draw_mesh_overlay(out, f.vertices, tri, alpha=0.5)
  for f in faces:
    out = render.draw_landmarks(out, f.landmarks, color=(40, 255, 40), radius=radius)
  return out


def face_json(face: FaceResult, meshes: Optional[dict]) -> dict:
  r = lambda a: np.round(np.asarray(a, np.float64), 3).tolist()  # noqa: E731
  return {
      "box": None if face.box is None else r(face.box),
      "roi_box": r(face.roi_box),
      "landmarks": r(face.landmarks),
      "pose": {"yaw": round(float(face.pose[0]), 3), "pitch": round(float(face.pose[1]), 3),
               "roll": round(float(face.pose[2]), 3)},
      "params": r(face.params),
      "flm": face.flm,
      "dense_shape": face.dense_shape,
      "mesh": meshes,
  }


# -------------------------------------------------------------------------------------------- CLI

def list_inputs(path: str) -> tuple[str, List[str]]:
  """-> (root folder, image paths relative to it). A file gives its folder and its name."""
  if os.path.isdir(path):
    from datasets.wild import list_images
    return path, list_images(path, IMAGE_EXTS)
  if os.path.isfile(path):
    return os.path.dirname(os.path.abspath(path)), [os.path.basename(path)]
  raise FileNotFoundError(f"no such image or folder: {path}")


def _stem(rel: str) -> str:
  return os.path.splitext(rel)[0].replace(os.sep, "__").replace("/", "__")


def _no_detector(image):
  raise ValueError("no landmarks given and no face detector installed")


def build_parser() -> argparse.ArgumentParser:
  ap = argparse.ArgumentParser(prog="python -m jface.predict",
                               description="3D face reconstruction of images with a trained jface checkpoint.")
  ap.add_argument("input", help="an image or a folder of images (searched recursively)")
  ap.add_argument("--checkpoint", required=True, help="train.py workdir")
  ap.add_argument("--out", required=True, help="output folder")
  ap.add_argument("--landmarks", default=None,
                  help="68-point landmarks file (CSV/.npz of datasets.wild.read_landmarks_file; names relative to "
                       "the input folder): these images use the given faces instead of detection")
  ap.add_argument("--flm", default="auto", choices=FLM_MODES, help="landmark map for FLM models: given = the --landmarks points; dlib = dlib's 68-point "
                       "predictor; iterate = the mean face, then redrawn from the model's own prediction "
                       "--iterations times; auto = given, else dlib if installed, else iterate")
  ap.add_argument("--iterations", type=int, default=DEFAULT_ITERATIONS, help="FLM redraws in iterate mode")
  ap.add_argument("--bfm_dir", default=None, help="face model (default: the checkpoint's config.bfm_dir)")
  ap.add_argument("--dense_bases_dir", default=None, help="folder with w_shp_sim.npy / w_exp_sim.npy")
  ap.add_argument("--which", default="latest", choices=("latest", "best"))
  ap.add_argument("--detector", default="auto", choices=("auto", "haar", "dlib", "full"))
  ap.add_argument("--min_face_size", type=int, default=20, help="px, smaller detector box side")
  ap.add_argument("--max_faces", type=int, default=0, help="largest faces kept per image (0 = all)")
  ap.add_argument("--max_batch", type=int, default=32, help="faces per forward pass")
  ap.add_argument("--group", type=int, default=256,
                  help="images read and predicted together (all their faces share the batched passes)")
  ap.add_argument("--dlib_predictor", default=None, help="dlib shape_predictor_68_face_landmarks.dat")
  ap.add_argument("--no_mesh", action="store_true", help="no .obj/.ply (landmarks, pose, overlays only)")
  ap.add_argument("--no_overlay", action="store_true")
  ap.add_argument("--ascii_ply", action="store_true")
  return ap


def main(argv: Optional[Sequence[str]] = None) -> int:
  """CLI entry point; returns the exit status: 0 = done (bad images are reported and skipped), 1 = no image could
  be processed, 2 = unusable arguments (missing checkpoint, face model, input, landmarks file, detector)."""
  args = build_parser().parse_args(argv)
  from datasets import common
  from datasets.wild import read_landmarks_file
  from jface import bfm as bfm_lib
  from jface import detect

  def fail(msg: str) -> int:
    print(f"error: {' '.join(str(msg).split())}", file=sys.stderr)
    return 2

  if args.group < 1:
    return fail(f"--group must be >= 1, got {args.group}")
  try:
    root, rels = list_inputs(args.input)
  except FileNotFoundError as e:
    return fail(e)
  if not rels:
    return fail(f"no images ({', '.join(IMAGE_EXTS)}) under {args.input}")
  given = {}
  if args.landmarks:
    try:
      names, pts = read_landmarks_file(args.landmarks)
    except (OSError, ValueError) as e:
      return fail(e)
    given = {os.path.normpath(n): p for n, p in zip(names, pts)}
    unused = len(set(given) - {os.path.normpath(r) for r in rels})
    if unused:
      print(f"warning: {unused} rows of {args.landmarks} name no image under {args.input}", file=sys.stderr)
  if not os.path.isfile(os.path.join(args.checkpoint, "config.json")):
    return fail(_no_checkpoint(args.checkpoint))
  detector = args.detector
  if any(os.path.normpath(r) not in given for r in rels):
    try:  # fail early, once, when some image needs a detector and none is installed
      detector = detect.make_detector(args.detector, args.min_face_size)
    except detect.NoDetectorError as e:
      if not given:
        return fail(e)
      print(f"warning: {' '.join(str(e).split())}; images without landmarks are skipped", file=sys.stderr)
      detector = _no_detector
  try:
    pred = Predictor(args.checkpoint, args.bfm_dir, which=args.which, flm=args.flm, iterations=args.iterations,
                     detector=detector, dense=not args.no_mesh or not args.no_overlay,
                     dense_bases_dir=args.dense_bases_dir, max_batch=args.max_batch,
                     min_face_size=args.min_face_size, max_faces=args.max_faces,
                     dlib_predictor=args.dlib_predictor)
  except (MissingCheckpointError, bfm_lib.MissingAssetError, ValueError) as e:
    return fail(e)
  os.makedirs(args.out, exist_ok=True)

  t0 = time.time()
  records: List[dict] = []
  tri = pred.triangles
  n_faces = 0
  for g in range(0, len(rels), args.group):
    images, lms, recs = [], [], []
    for rel in rels[g:g + args.group]:
      rec = {"image": rel, "status": "ok", "faces": []}
      records.append(rec)
      try:
        img = common.read_image(os.path.join(root, rel))
      except ValueError as e:
        rec.update(status="error", error=" ".join(str(e).split()))
        print(f"skipping {rel}: {rec['error']}", file=sys.stderr)
        continue
      rec["size"] = [int(img.shape[1]), int(img.shape[0])]
      images.append(img)
      lms.append(given.get(os.path.normpath(rel)))
      recs.append(rec)
    errors: List[Optional[str]] = []
    results = pred.predict_images(images, lms, errors=errors)
    for img, faces, err, rec in zip(images, results, errors, recs):
      if err is not None:
        rec.update(status="error", error=err)
        print(f"skipping {rec['image']}: {err}", file=sys.stderr)
        continue
      if not faces:
        rec["status"] = "no_face"
        print(f"{rec['image']}: no face found", file=sys.stderr)
        continue
      stem = os.path.join(args.out, _stem(rec["image"]))
      for k, f in enumerate(faces):
        meshes = None
        if not args.no_mesh and f.vertices is not None and tri is not None:
          meshes = save_meshes(f"{stem}_face{k}", img, f, tri, binary_ply=not args.ascii_ply)
          meshes = {key: os.path.relpath(p, args.out) for key, p in meshes.items()}
        rec["faces"].append(face_json(f, meshes))
      n_faces += len(faces)
      if not args.no_overlay:
        import cv2
        path = f"{stem}_overlay.jpg"
        cv2.imwrite(path, overlay(img, faces, tri)[..., ::-1])
        rec["overlay"] = os.path.relpath(path, args.out)
  n_bad = sum(r["status"] == "error" for r in records)
  n_none = sum(r["status"] == "no_face" for r in records)
  summary = {"images": len(records), "faces": n_faces, "errors": n_bad, "no_face": n_none,
             "seconds": round(time.time() - t0, 2)}
  doc = {"checkpoint": os.path.abspath(args.checkpoint), "face_model": pred.model.name,
         "use_flm": pred.use_flm, "flm_mode": args.flm, "iterations": args.iterations,
         "dense_shape": pred.dense_shape if not args.no_mesh else "none",
         "dense_shape_note": ("posed mean shape only: identity and expression not applied (no dense bases)"
                              if pred.dense_shape == "mean" else ""),
         "coordinates": "image pixels, 1-based pixel centres, y down; meshes: (x, H + 1 - y, z)",
         "summary": summary, "images": records}
  with open(os.path.join(args.out, "results.json"), "w") as f:
    json.dump(doc, f, indent=1)
  print(f"{summary['images']} images, {n_faces} faces, {n_bad} unreadable/bad, {n_none} without a face "
        f"-> {os.path.join(args.out, 'results.json')}")
  return 0 if len(records) > n_bad else 1


if __name__ == "__main__":
  sys.exit(main())
