"""Reader of the benchmark crop layout: ``root/crops/<name>`` (120 x 120) + ``root/meta.npz`` (+ ``root/AFLW2000``).

``meta.npz``: ``names`` (N,), ``yaw`` (N,) degrees, ``roi_box`` (N, 4), ``pts68`` (N, 3, 68) GT, optional
``pts68_reannotated`` (N, 2, 68), ``fan_pts68_crop`` (N, 68, 2) FAN detections on the crops,
``released_2dasl_params`` (N, 62) (2DASL's PREDICTIONS: never used as labels here; read ``source.meta``).

Example: the standard dict with ``landmarks`` = ``fan_pts68_crop`` (the detector input 2DASL used at test time;
mask all True), ``roi_box``/``yaw`` from the meta, plus ``gt_pts68`` (3, 68) float32 image coords and
``gt_pts68_reannotated`` (2, 68) float32 (NaN when the meta lacks it) for evaluation. Params: only when
``root/AFLW2000/<stem>.mat`` exists and a model is given, converted with ``mat_layout.mat_to_params`` using the
meta ``roi_box`` and the height of ``root/AFLW2000/<name>`` (so the labels match the crop pixels); otherwise
``has_params`` is False.
"""
from __future__ import annotations

import os
from typing import Optional

import numpy as np

from jface.data import common, mat_layout
from jface.data.common import BadExample, bad


class CropsLayoutSource(common.Source):
  """Args:
    root: folder with ``crops/`` and ``meta.npz`` (e.g. ``../shared/data/aflw2000_3d_dev``).
    model: ``FaceModel`` for the param labels (needs ``root/AFLW2000/*.mat``); None -> no labels.
    labels: ``"auto"`` (params where the .mat exists), ``"none"``, or ``"require"`` (a missing .mat is a
      ``BadExample``).
    source: the ``source`` field (default: the folder name).
  """

  def __init__(self, root: str, model=None, labels: str = "auto", source: Optional[str] = None,
               crop_size: int = common.CROP_SIZE):
    if labels not in ("auto", "none", "require"):
      raise ValueError(f"labels must be 'auto', 'none' or 'require', got {labels!r}")
    self.root = root
    self.meta, self.names = common.open_crop_folder(root, ("names", "roi_box", "fan_pts68_crop"), "CropsLayoutSource")
    n = len(self.names)
    self.model = common.model_arrays(model) if labels != "none" else None
    if labels == "require" and self.model is None:
      raise ValueError("CropsLayoutSource(labels='require') needs a model")
    self.labels = labels
    self.crop_size = crop_size
    self.source = source or os.path.basename(os.path.normpath(root))
    self._yaw = self.meta.get("yaw", np.full(n, np.nan, np.float32))
    self._gt = self.meta.get("pts68", np.full((n, 3, 68), np.nan, np.float32))
    self._gt_re = self.meta.get("pts68_reannotated", np.full((n, 2, 68), np.nan, np.float32))

  def _load(self, i: int) -> dict:
    name = self.names[i]
    img = common.read_crop(self.root, name, self.crop_size)
    box = np.asarray(self.meta["roi_box"][i], np.float32)
    params = None
    if self.model is not None:
      stem = os.path.splitext(name)[0]
      mat_path = os.path.join(self.root, "AFLW2000", stem + ".mat")
      if os.path.exists(mat_path) or self.labels == "require":
        mat = common.read_mat(mat_path)
        orig = os.path.join(self.root, "AFLW2000", name)
        h = common.image_size(orig)[0]
        try:
          params = mat_layout.mat_to_params(mat, box, h, self.model)
        except BadExample:
          raise
        except ValueError as e:
          raise bad(mat_path, e) from None
    return common.make_example(
        img, box, source=self.source, name=name, params=params,
        landmarks=np.asarray(self.meta["fan_pts68_crop"][i], np.float32), landmarks_mask=np.ones(68, bool),
        yaw=float(self._yaw[i]), crop_size=self.crop_size,
        gt_pts68=np.asarray(self._gt[i], np.float32), gt_pts68_reannotated=np.asarray(self._gt_re[i], np.float32))
