r"""``Predictor``: a trained workdir of any method applied to images -> per face, landmarks, pose and a dense mesh.

::

  pred = Predictor("WORKDIR")                       # a train.py workdir (config.json + checkpoints/)
  results = pred.predict_images([rgb, ...])          # per image, a list of FaceResult
  results = pred.predict_images([rgb], landmarks=[pts68])   # faces given by 68 image points instead

The workdir is loaded with ``jface.methods.workdir.load_checkpoint`` (its ``config.method`` names the method);
the method's ``make_predict_fn`` runs through ``jface.methods.run.predict_arrays`` (the one batched-inference
loop): all faces of all images are cropped first (``jface.inference.faces``) and go through the network together,
in chunks of ``max_batch``.

Landmark map (FLM), only when the method's ``input_fields(config)`` asks for landmarks (``flm_landmarks``,
``landmarks_mask``): ``given`` points or a landmark source's (face mesh, dlib; ``jface.inference.faces``), or
``iterate`` (2DASL's cycle idea):
start from the mean face's landmarks (``geometry.landmarks2d`` of whitened params 0) in the crop, predict, redraw
the map from the predicted landmarks (``FaceOutput.landmarks[..., :2]``), ``iterations`` times (``iterations + 1``
forward passes; default 0, i.e. the mean face's map: see ``DEFAULT_ITERATIONS`` for the measurement).

Outputs per face (``FaceResult``): ``FaceOutput`` mapped from crop to image pixels (``jface.core.crop``): 68
landmarks, pose, params (None for methods without 3DMM params) and dense vertices: the method's own
(``dense=True``; for 3DMM methods this needs a face model with dense bases: the synthetic model, or a BFM folder
with ``w_shp_sim.npy``/``w_exp_sim.npy``), else, for methods with params and a face model with only the dense
mean (3DDFA's public files), the POSED MEAN SHAPE (``jface.inference.mean_shape``, ``dense_shape = "mean"``).
"""
from __future__ import annotations

import dataclasses
from typing import List, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jface.core import crop as crop_lib
from jface.core import geometry
from jface.core.face_model import N_PARAMS
from jface.inference import mean_shape
from jface.inference.faces import FaceCrop, FaceFinder, FaceResult
from jface.methods import run, workdir
from jface.methods.base import FaceOutput

# FLM redraws from the model's own prediction when no landmarks are given (0 = the mean face's FLM only).
# Measured (2D NME %, mean of |yaw| bins, 256 held-out synthetic faces, tiny_cnn (32,64,128,256,256), 1500 steps
# of the :smoke recipe on 2048 pre-rendered faces): without the cycle loss, GT-landmark FLM 8.69, mean-face FLM
# (N=0) 12.97, N=1 14.10, N=2 16.70, N=3 18.41, empty map 14.45; with the cycle loss (a weaker model): GT 16.64,
# N=0 12.67, N=1 13.11, N=2 13.38, N=3 13.58; the :smoke config (resnet18/16, cyc + sc) at 300 steps: GT 18.24,
# N=0 18.19, N=1..3 18.60-18.65; the mean face without network 15.77. Redrawing never helped, so the default
# is 0. (Weak synthetic models only: re-measure with a real 2DASL model.)
DEFAULT_ITERATIONS = 0
FLM_FIELDS = ("flm_landmarks", "landmarks_mask")  # the predict inputs this package can supply beyond ``image``


class Predictor:
  """A trained method ready for images (see the module docstring).

  Args:
    checkpoint_dir: a ``train.py`` workdir (``config.json`` + ``checkpoints/`` or ``best/``).
    bfm_dir: the face model the checkpoint was trained with: ``"synthetic"`` or a 3DDFA-format folder
      (default: the checkpoint config's ``bfm_dir``). Its whitening must be the training one.
    which: ``"latest"`` or ``"best"`` checkpoint.
    flm: ``auto | given | source | iterate`` (``jface.inference.faces``).
    iterations: FLM redraws in ``iterate`` mode.
    detector: ``auto | blazeface | blazeface_full | haar | dlib | full`` or a callable (``FaceFinder.detector``).
    landmarks: 68-point source for detected faces: ``auto | mesh | dlib | none`` or a callable
      (``FaceFinder.landmarks``); mesh_min_score, mesh_retry, model_dir, mesh_map: its settings.
    dense: compute dense vertices (False: landmarks and pose only).
    dense_bases_dir: folder with ``w_shp_sim.npy``/``w_exp_sim.npy`` (default: the config's, else none).
    max_batch: faces per forward pass (``jface.methods.run.predict_arrays``).
    min_face_size, max_faces: detector face filter (smaller box side in px; 0 = all faces).
    dlib_predictor: path of dlib's 68-point ``.dat`` (default: ``face_recognition_models``' copy).

  Attributes: ``config``, ``method``, ``state`` (on the device), ``model`` (the FaceModel), ``use_flm`` (the
  method reads a landmark map), ``empty_map`` (it was trained with empty maps too: faces without landmarks get an
  empty map instead of the mean face's, ``FaceResult.flm`` "empty"), ``iterations``, ``dense``, ``dense_shape`` (what ``dense`` gives with this face
  model: "full", "mean" or "none"), ``max_batch``, ``finder`` (the ``FaceFinder``; ``flm_mode`` is its).
  Raises ``jface.train.checkpoint.CheckpointError``, ``jface.core.face_model.MissingAssetError``, ``ValueError``
  (one line each).
  """

  def __init__(self, checkpoint_dir: str, bfm_dir: Optional[str] = None, *, which: str = "latest",
               flm: str = "auto", iterations: int = DEFAULT_ITERATIONS, detector="auto", landmarks="auto",
               dense: bool = True, dense_bases_dir: Optional[str] = None, max_batch: int = 32,
               min_face_size: int = 20, max_faces: int = 0, dlib_predictor: Optional[str] = None,
               mesh_min_score: Optional[float] = None, model_dir: Optional[str] = None, mesh_map: Optional[str] = None,
               mesh_retry: bool = True):
    from jface.core.load import load_model
    if iterations < 0:
      raise ValueError(f"iterations must be >= 0, got {iterations}")
    if max_batch < 1:
      raise ValueError(f"max_batch must be >= 1, got {max_batch}")
    finder = FaceFinder(flm_mode=flm, detector=detector, landmarks=landmarks, min_face_size=int(min_face_size),
                        max_faces=int(max_faces), model_dir=model_dir, mesh_retry=bool(mesh_retry),
                        **({} if mesh_min_score is None else {"mesh_min_score": float(mesh_min_score)}),
                        mesh_map=mesh_map, dlib_predictor=dlib_predictor)  # checks flm and landmarks
    config, method, state = workdir.load_checkpoint(checkpoint_dir, which)
    fields = tuple(method.input_fields(config))
    if set(fields) - set(FLM_FIELDS):
      raise ValueError(f"the {method.name} model of {checkpoint_dir} needs the inputs {', '.join(fields)}; "
                       f"inference supplies image, {', '.join(FLM_FIELDS)}")
    trained_on = str(config.get("bfm_dir", "") or "")
    spec = bfm_dir or trained_on
    if not spec:
      raise ValueError(f"{checkpoint_dir}/config.json names no bfm_dir: pass bfm_dir (--bfm_dir)")
    if trained_on and (trained_on == "synthetic") != (spec == "synthetic"):
      raise ValueError(f"the checkpoint was trained with bfm_dir={trained_on!r}; bfm_dir={spec!r} has another "
                       "parameter convention")
    model = load_model(spec, dense_bases_dir=dense_bases_dir or config.get("dense_bases_dir") or None)
    self.config, self.method, self.input_fields = config, method, fields
    self.model = jax.device_put(model)
    self.state = jax.device_put(state)
    self.use_flm = "flm_landmarks" in fields
    data = config.get("data") or {}
    self.empty_map = self.use_flm and float(data.get("flm_dropout", 0.0) or 0.0) > 0
    self.finder = dataclasses.replace(finder, use_flm=self.use_flm, crop_size=model.crop_size)
    self.iterations, self.max_batch, self.dense = int(iterations), int(max_batch), bool(dense)
    self.dense_shape = mean_shape.dense_kind(model)
    mods = method.build(config, bn_axis_name=None)
    self._predict = method.make_predict_fn(config, mods, dense=False)
    if self.dense_shape == "full":
      self._predict_dense = method.make_predict_fn(config, mods, dense=True)
    elif self.dense_shape == "mean":
      self._predict_dense = mean_shape.with_posed_mean_shape(self._predict)
    else:
      self._predict_dense = self._predict
    self._mean_flm = np.asarray(geometry.landmarks2d(model, jnp.zeros(N_PARAMS, jnp.float32)), np.float32)

  @property
  def flm_mode(self) -> str:
    return self.finder.flm_mode

  def predict_fn(self, dense: bool = False):
    """The jitted ``predict(state, face, batch) -> FaceOutput`` that ``predict_crops`` runs (``dense``: with this
    predictor's dense vertices)."""
    return self._predict_dense if dense else self._predict

  @property
  def mean_flm(self) -> np.ndarray:
    """(68, 2) float32 crop pixels: the mean face's landmarks, the default landmark-map points."""
    return self._mean_flm

  @property
  def triangles(self) -> Optional[np.ndarray]:
    """(T, 3) int32 0-based triangles of the dense mesh (the face model's), or None."""
    return None if self.model.tri is None else np.asarray(self.model.tri)

  def find_faces(self, image: np.ndarray, landmarks=None, image_index: int = 0) -> List[FaceCrop]:
    """Faces of one image with their crops (``FaceFinder.find``)."""
    return self.finder.find(image, landmarks, image_index)

  def predict_crops(self, crops: np.ndarray, flm_landmarks: Optional[np.ndarray] = None,
                    mask: Optional[np.ndarray] = None, dense: bool = False) -> FaceOutput:
    """The method over crops (B, S, S, 3) uint8 (S = ``model.crop_size``) with landmark-map points (B, 68, 2)
    crop pixels (NaN = not drawn; ignored by models without the map; default: the mean face) -> ``FaceOutput``
    of numpy arrays in crop pixels; ``dense``: with this predictor's dense vertices (``dense_shape``)."""
    crops = np.asarray(crops, np.uint8)
    n = len(crops)
    inputs = {"image": crops}
    if self.input_fields:
      pts = np.broadcast_to(self._mean_flm, (n, 68, 2)) if flm_landmarks is None else np.asarray(flm_landmarks)
      m = np.all(np.isfinite(pts), -1)
      if mask is not None:
        m &= np.asarray(mask, bool)
      feed = {"flm_landmarks": np.where(m[..., None], pts, 0).astype(np.float32), "landmarks_mask": m}
      inputs.update({k: feed[k] for k in self.input_fields})
    return run.predict_arrays(self._predict_dense if dense else self._predict, self.state, self.model, inputs,
                              self.max_batch)

  def _no_points(self, face: FaceCrop) -> str:
    """How a face without landmark-map points is fed: "empty" (no points drawn: the checkpoint was trained with
    empty maps, ``config.data.flm_dropout > 0``, and flm is auto) or "iterate" (the mean face)."""
    if face.flm == "iterate" and self.empty_map and self.flm_mode == "auto":
      return "empty"
    return face.flm

  def _run(self, faces: List[FaceCrop]) -> FaceOutput:
    """All faces: the FLM iterations (sparse passes) for the faces that start from the mean face, then one
    batched pass over all faces (with dense vertices when ``dense``)."""
    crops = np.stack([f.crop for f in faces])
    pts = np.stack([f.flm_pts if f.flm_pts is not None else self._mean_flm for f in faces]).astype(np.float32)
    kinds = [self._no_points(f) for f in faces]
    pts[[k == "empty" for k in kinds]] = np.nan
    idx = np.nonzero([k == "iterate" for k in kinds])[0]
    if self.use_flm and len(idx):
      for _ in range(self.iterations):
        pts[idx] = self.predict_crops(crops[idx], pts[idx]).landmarks[..., :2]
    return self.predict_crops(crops, pts, dense=self.dense)

  def predict_images(self, images: Sequence[np.ndarray], landmarks: Optional[Sequence] = None,
                     errors: Optional[List[Optional[str]]] = None) -> List[List[FaceResult]]:
    """Faces in RGB images (each (H, W, 3) uint8) -> per image, a list of ``FaceResult`` (largest faces first
    for detected faces; in the given order for landmarks).

    ``landmarks``: None, or per image None | (68, 2) | (F, 68, 2) image points (NaN = unknown): those faces
    are used instead of detection. ``errors``: an optional list that receives, per image, None or the one-line
    reason why the image has no faces (bad array, bad landmarks); without it such errors raise.
    All faces of all images share the batched forward passes.
    """
    faces = self.finder.find_all(images, landmarks, errors)
    out: List[List[FaceResult]] = [[] for _ in images]
    if not faces:
      return out
    pred = self._run(faces)
    if pred.vertices is not None and pred.topology not in (None, self.model.name):
      raise ValueError(f"the {self.method.name} model's vertices index the {pred.topology!r} mesh; the face "
                       f"model is {self.model.name!r}")
    kind = "none" if pred.vertices is None else ("mean" if self.dense_shape == "mean" else "full")
    size = self.model.crop_size
    f32 = lambda a: np.asarray(a, np.float32)  # noqa: E731
    for k, f in enumerate(faces):
      roi = f.roi_box.astype(np.float32)
      out[f.image].append(FaceResult(
          roi_box=roi, landmarks=f32(crop_lib.crop_to_image(pred.landmarks[k, :, :2], roi, size)),
          landmarks_3d=(f32(crop_lib.crop_to_image(pred.landmarks[k], roi, size))
                        if pred.landmarks.shape[-1] == 3 else None),
          pose=None if pred.pose is None else f32(pred.pose[k]),
          params=None if pred.params is None else f32(pred.params[k]),
          vertices=None if pred.vertices is None else f32(crop_lib.crop_to_image(pred.vertices[k], roi, size)),
          dense_shape=kind, box=f.box,
          flm={"iterate": f"iterate:{self.iterations}"}.get(self._no_points(f), self._no_points(f)),
          landmarks_from=f.landmarks_from, source_score=f.source_score, source_landmarks=f.source_landmarks))
    return out
