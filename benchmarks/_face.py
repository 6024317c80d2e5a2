"""The face model the benchmarks run on: the real BFM when its folder exists, else a stand-in (no data needed)."""
from __future__ import annotations

import os
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]


def load_face(bfm_dir: str):
  """-> (FaceModel, description): 3DDFA-format BFM from ``bfm_dir``; else jface's synthetic model; else the tests'
  random 68-point model of BFM shapes."""
  from jface.core import bfm as bfm_lib
  from jface.core.load import load_model
  from jface.core.face_model import MissingAssetError
  if os.path.isdir(bfm_dir):
    return bfm_lib.load_3ddfa(bfm_dir, dense=False), f"real BFM from {bfm_dir}"
  try:
    return load_model("synthetic"), "jface.core.load.load_model('synthetic') (no BFM folder)"
  except (ImportError, AttributeError, MissingAssetError) as e:
    if str(ROOT) not in sys.path:
      sys.path.insert(0, str(ROOT))
    from tests.helpers.fakes import random_face_model
    return random_face_model(), f"random model of BFM shapes (no BFM folder; synthetic model unavailable: {e})"
