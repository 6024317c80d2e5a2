"""Another landmark source's 68 points for the landmark-map input of training examples (``flm_alt``).

A file (``.npz``: ``names`` (N,) image names, ``pts68`` (N, 68, 2) float ORIGINAL-image points, 1-based, NaN =
none for that image) gives, per image name, the points a test-time landmark source finds (e.g. MediaPipe's face
mesh + the 468 -> 68 map: ``python -m jface.inference.mesh68 landmarks``). ``WithAltLandmarks`` wraps a source
and adds them to each example as ``flm_alt`` (68, 2) crop points (through the example's ``roi_box``); the loader
draws the map from them with probability ``flm_alt_prob`` (``jface.data.pipeline``), so the model learns the
test-time source's landmark style as well as the training one's.
"""
from __future__ import annotations

import os

import numpy as np

from jface.core import crop as crop_lib
from jface.core.face_model import MissingAssetError


def read_alt_file(path: str) -> dict:
  """-> {image base name: (68, 2) float64 original-image points}. One-line errors for a missing / bad file."""
  if not os.path.isfile(path):
    raise MissingAssetError(f"missing landmark file {path}: written by `python -m jface.inference.mesh68 "
                            "landmarks --data SPLIT --out FILE`")
  try:
    with np.load(path, allow_pickle=False) as z:
      names, pts = [os.path.basename(str(n)) for n in z["names"]], np.asarray(z["pts68"], np.float64)
  except Exception as e:  # noqa: BLE001 -- numpy raises many types on corrupt files
    raise ValueError(f"{path}: unreadable landmark file ({type(e).__name__}: {' '.join(str(e).split())[:120]})")
  if pts.shape != (len(names), 68, 2):
    raise ValueError(f"{path}: pts68 has shape {pts.shape}, expected ({len(names)}, 68, 2)")
  return dict(zip(names, pts))


class WithAltLandmarks:
  """``source`` with ``flm_alt`` (68, 2) float32 crop points per example (NaN when the file has none)."""

  def __init__(self, source, path: str):
    self.source, self.table = source, read_alt_file(path)

  def __len__(self) -> int:
    return len(self.source)

  def __getitem__(self, i: int) -> dict:
    ex = dict(self.source[i])
    pts = self.table.get(os.path.basename(str(ex["name"])))
    size = int(np.asarray(ex["image"]).shape[0])
    if pts is None:
      ex["flm_alt"] = np.full((68, 2), np.nan, np.float32)
    else:
      ex["flm_alt"] = np.asarray(crop_lib.image_to_crop(pts, np.asarray(ex["roi_box"], np.float64), size),
                                 np.float32)
    return ex
