"""Loader of a 3DDFA-format 3DMM folder (``train.configs`` style, e.g. ``../shared/data/3dmm``) into a
``FaceModel`` (conventions: ``jface.core.face_model``)."""
from __future__ import annotations

import os
import pickle
from typing import Optional

import jax.numpy as jnp
import numpy as np

from jface.core.face_model import FaceModel, MissingAssetError

# --------------------------------------------------------------------------------------------- loading

_WHERE = ("3DDFA's train.configs folder (github.com/cleardusk/3DDFA) or the BFM from its owners "
          "(faces.dmi.unibas.ch); pass the folder with --bfm_dir / config.bfm_dir")


def _need(folder: str, fname: str, what: str) -> str:
  path = os.path.join(folder, fname)
  if not os.path.exists(path):
    raise MissingAssetError(f"missing {path}: {what}, from {_WHERE}")
  return path


def read_pickle(path: str):
  """Reads a pickle from a path the *user* named. Never call this on paths from untrusted metadata."""
  with open(path, "rb") as f:
    return pickle.load(f)


def _read_mat(path: str) -> dict:
  import scipy.io
  try:
    return scipy.io.loadmat(path)
  except Exception as e:  # scipy raises several types for corrupt files
    raise ValueError(f"cannot read {path} as a .mat file: {type(e).__name__}: {e}") from None


def load_3ddfa(folder: str, dense_bases_dir: Optional[str] = None, dense: bool = True) -> FaceModel:
  """Loads a 3DDFA-format folder into a ``FaceModel``.

  Needs ``u_base.txt``, ``w_shp_base.txt``, ``w_exp_base.txt``, ``param_whitening.pkl``; optional
  ``u_shp.npy`` + ``u_exp.npy`` + ``Model_Shape_Sim.mat`` (dense mean, triangles, albedo, keypoints) and
  ``w_shp_sim.npy`` + ``w_exp_sim.npy`` (dense bases) looked up in ``dense_bases_dir`` (default: ``folder``).
  """
  if not os.path.isdir(folder):
    raise MissingAssetError(f"missing 3DMM folder {folder}: expected the 3DDFA-format files from {_WHERE}")
  f32 = lambda a: jnp.asarray(np.asarray(a, np.float32))
  u_base = np.loadtxt(_need(folder, "u_base.txt", "the 68-landmark mean shape"))
  w_shp = np.loadtxt(_need(folder, "w_shp_base.txt", "the 68-landmark shape basis"))
  w_exp = np.loadtxt(_need(folder, "w_exp_base.txt", "the 68-landmark expression basis"))
  wh = read_pickle(_need(folder, "param_whitening.pkl", "the 62-parameter whitening (param_mean/param_std)"))
  kw = {}
  if dense and os.path.exists(os.path.join(folder, "u_shp.npy")):
    u = np.load(_need(folder, "u_shp.npy", "the dense mean shape")).reshape(-1)
    u = u + np.load(_need(folder, "u_exp.npy", "the dense mean expression")).reshape(-1)
    kw["u_dense"] = f32(u)
    mat_path = os.path.join(folder, "Model_Shape_Sim.mat")
    if os.path.exists(mat_path):
      m = _read_mat(mat_path)
      kw["tri"] = jnp.asarray(m["tri"].T.astype(np.int32) - 1)
      kw["tex"] = f32(m["mu_tex"].reshape(-1, 3) / 255.0)
      kw["keypoints"] = jnp.asarray(m["keypoints"].reshape(-1).astype(np.int32) - 1)
    bdir = dense_bases_dir or folder
    shp_p, exp_p = os.path.join(bdir, "w_shp_sim.npy"), os.path.join(bdir, "w_exp_sim.npy")
    if dense_bases_dir is not None or (os.path.exists(shp_p) and os.path.exists(exp_p)):
      kw["w_shp_dense"] = f32(np.load(_need(bdir, "w_shp_sim.npy", "the dense shape basis (53215*3, 40)")))
      kw["w_exp_dense"] = f32(np.load(_need(bdir, "w_exp_sim.npy", "the dense expression basis (53215*3, 10)")))
  model = FaceModel(u_base=f32(u_base), w_shp_base=f32(w_shp), w_exp_base=f32(w_exp),
                    param_mean=f32(wh["param_mean"]), param_std=f32(wh["param_std"]), name="bfm", **kw)
  return model.check()
