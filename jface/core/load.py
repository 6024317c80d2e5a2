"""``load_model(spec)``: the embedded synthetic face model or a 3DDFA-format folder, by one spec string."""
from __future__ import annotations

from typing import Optional

from jface.core import bfm, synthetic
from jface.core.face_model import FaceModel


def load_model(spec: str = "synthetic", dense_bases_dir: Optional[str] = None) -> FaceModel:
  """``"synthetic"`` -> the embedded face model; anything else is a 3DDFA-format folder."""
  if spec == "synthetic":
    return synthetic.face_model()
  return bfm.load_3ddfa(spec, dense_bases_dir=dense_bases_dir)
