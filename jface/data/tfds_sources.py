"""TFDS ``the300w_lp`` and ``aflw2k3d`` through ``tfds.data_source`` (array_record; TensorFlow NOT needed).

Feature names (tensorflow_datasets 4.9.10 builders, checked in their source):

* ``aflw2k3d`` (one split ``train`` = all 2000 AFLW2000-3D images, i.e. it CONTAINS the benchmark: evaluation
  only): ``image`` (450, 450, 3) uint8, ``landmarks_68_3d_xy_normalized`` (68, 2) = ``pt3d_68[:2].T / 450``,
  ``landmarks_68_3d_z`` (68, 1) = ``pt3d_68[2]``. No fit parameters -> ``has_params`` False, yaw NaN. Landmarks
  = the xy * 450 (1-based image pixels) in crop coords, box = 3DDFA's box from them (clipped; = the benchmark
  box), extra ``gt_pts68`` (3, 68) float32 image coords (as ``crops_layout``).
* ``the300w_lp`` (split ``train``, the non-flipped images): ``image`` (450, 450, 3), ``pose_params`` (7,),
  ``shape_params`` (199,), ``exp_params`` (29,), ``landmarks_origin`` (68, 2) (``.mat`` ``pt2d`` / 450),
  ``landmarks_2d`` / ``landmarks_3d`` (68, 2) (``landmarks/*_pts.mat`` / 450), ``roi`` (4,), ``color_params``
  (7,), ``illum_params`` (10,), ``tex_params`` (199,). Params = ``mat_layout.mat_to_params`` of
  pose/shape/exp with H = image height; box = 3DDFA's box of the fit's own 68 landmarks (projected with the
  model's 40/10 bases, clipped); landmarks = the projection of the converted params (consistent with the
  labels; the 300W-LP landmark files are not used: their coordinate convention is unverified here);
  yaw = ``Pose_Para`` yaw (``mat_layout.pose_para_yaw``); extra ``gt_pts68`` (3, 68) = that projection in image
  coords. Needs a model.

Testing: ``tfds.testing.mock_data(num_examples=n)`` patches ``tfds.data_source`` with random examples of the
builders' features; it works with ``data_source`` in tfds 4.9.10 WITHOUT TensorFlow (checked: the mocked
``ArrayRecordDataSource`` decodes to numpy; ``tensorflow`` never gets imported).
"""
from __future__ import annotations

from typing import Any, Mapping, Optional

import numpy as np

from jface.core.face_model import CROP_SIZE

from jface.core import crop
from jface.data import common, mat_layout
from jface.data.common import BadExample, bad

BUILDERS = ("aflw2k3d", "the300w_lp")


def _image(ex: Mapping[str, Any], name: str) -> np.ndarray:
  img = ex["image"]
  if isinstance(img, (bytes, bytearray)):
    return common.decode_image(bytes(img), name)
  img = np.asarray(img)
  if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
    raise bad(name, f"image must be (H, W, 3) uint8, got {img.shape} {img.dtype}")
  return img


def example_from_aflw2k3d(ex: Mapping[str, Any], name: str, source: str = "aflw2k3d",
                          crop_size: int = CROP_SIZE) -> dict:
  """One ``aflw2k3d`` TFDS record -> the example dict (module docstring)."""
  img = _image(ex, name)
  xy = np.asarray(ex["landmarks_68_3d_xy_normalized"], np.float64).reshape(68, 2) * 450.0
  z = np.asarray(ex["landmarks_68_3d_z"], np.float64).reshape(68)
  try:
    box = common.roi_box_from_landmarks(xy, image_shape=img.shape)
    patch = common.crop_image(img, box, crop_size)
  except ValueError as e:
    raise bad(name, e) from None
  gt = np.concatenate([xy.T, z[None]], 0).astype(np.float32)
  return common.make_example(patch, box, source=source, name=name, landmarks=crop.image_to_crop(xy, box, crop_size),
                             landmarks_mask=np.ones(68, bool), crop_size=crop_size, gt_pts68=gt)


def example_from_300w_lp(ex: Mapping[str, Any], name: str, model, source: str = "the300w_lp",
                         crop_size: int = CROP_SIZE) -> dict:
  """One ``the300w_lp`` TFDS record -> the example dict (module docstring). ``model``: ``FaceModel``."""
  arr = common.model_arrays(model)
  img = _image(ex, name)
  h = img.shape[0]
  mat = {"Pose_Para": ex["pose_params"], "Shape_Para": ex["shape_params"], "Exp_Para": ex["exp_params"]}
  try:
    pts = mat_layout.fit_landmarks_image(mat, h, arr)
    box = common.roi_box_from_landmarks(pts[:, :2], image_shape=img.shape)
    raw = mat_layout.mat_to_raw_params(mat, box, h, crop_size)
    patch = common.crop_image(img, box, crop_size)
  except ValueError as e:
    raise bad(name, e) from None
  params = ((raw - arr["param_mean"]) / arr["param_std"]).astype(np.float32)
  if not np.all(np.isfinite(params)):
    raise bad(name, "non-finite converted params")
  return common.make_example(patch, box, source=source, name=name, params=params,
                             landmarks=crop.image_to_crop(pts[:, :2], box, crop_size),
                             landmarks_mask=np.ones(68, bool), yaw=mat_layout.pose_para_yaw(mat["Pose_Para"]),
                             crop_size=crop_size, gt_pts68=pts.T.astype(np.float32))


class TFDSSource(common.Source):
  """``tfds.data_source(builder, split=split, data_dir=data_dir)`` mapped to example dicts.

  Args:
    builder: ``"the300w_lp"`` or ``"aflw2k3d"``.
    split: TFDS split (both builders only have ``"train"``; slicing like ``"train[:90%]"`` works).
    data_dir: TFDS data dir holding the PREPARED array_record files (``tfds build --file_format=array_record``,
      which needs TensorFlow, e.g. on another machine); nothing is downloaded or built here: an unprepared
      dataset is a one-line ``FileNotFoundError``.
    data_source: optional ready random-access sequence of TFDS-style records (bypasses ``tfds``; tests).
    model: ``FaceModel`` (required for ``the300w_lp``).
  ``names[i]`` is ``"<builder>/<split>/<i>"`` (TFDS records carry no file name).
  """

  def __init__(self, builder: str, split: str = "train", data_dir: Optional[str] = None, model=None,
               crop_size: int = CROP_SIZE, data_source: Any = None):
    if builder not in BUILDERS:
      raise ValueError(f"TFDSSource: builder must be one of {BUILDERS}, got {builder!r}")
    if builder == "the300w_lp" and model is None:
      raise ValueError("TFDSSource('the300w_lp') needs a model to convert its parameters")
    if data_source is None:
      import tensorflow_datasets as tfds  # lazy: ~1 s import, no TensorFlow needed for data_source
      try:
        data_source = tfds.data_source(builder, split=split, data_dir=data_dir, download=False)
      except Exception as e:  # noqa: BLE001 -- tfds raises assorted types for an unprepared dataset
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise FileNotFoundError(
            f"TFDS {builder!r} split {split!r} is not readable as array_record in data_dir={data_dir!r} "
            f"({type(e).__name__}: {first}); prepare it once with `tfds build {builder} "
            "--file_format=array_record` (building needs TensorFlow; reading does not)") from None
    self.ds = data_source
    self.builder = builder
    self.source = builder
    self.crop_size = crop_size
    self.model = common.model_arrays(model)
    self.names = [f"{builder}/{split}/{i}" for i in range(len(self.ds))]

  def _load(self, i: int) -> dict:
    name = self.names[i]
    try:
      ex = self.ds[i]
    except BadExample:
      raise
    except Exception as e:  # noqa: BLE001 -- a corrupt record must not stop the pipeline
      raise bad(name, f"cannot read record ({type(e).__name__}: {e})") from None
    if self.builder == "aflw2k3d":
      return example_from_aflw2k3d(ex, name, crop_size=self.crop_size)
    return example_from_300w_lp(ex, name, self.model, crop_size=self.crop_size)
