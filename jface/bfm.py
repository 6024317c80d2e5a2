"""The 3D morphable model as an immutable pytree, and its loaders.

One interface for two sources:

* ``load_3ddfa(folder)`` -- a 3DDFA-format folder (``train.configs`` style, e.g. ``../shared/data/3dmm``);
* ``synthetic`` -- the embedded face model we author (``jface.synthetic``), needing no download.

``load_model(spec)`` takes either ``"synthetic"`` or a folder path.

Conventions (3DDFA v1 / 2DASL):

* Shapes are stored *interleaved*: a 3N vector is ``x0, y0, z0, x1, ...``, so ``v.reshape(N, 3)`` gives points.
* 62 parameters: ``p[:12].reshape(3, 4) = [f*R | t]`` (pixels of the 120x120 crop), ``p[12:52]`` = shape
  coefficients, ``p[52:62]`` = expression coefficients. Networks see whitened params
  ``(p - param_mean) / param_std``.
"""
from __future__ import annotations

import os
import pickle
from typing import Optional

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

N_SHP = 40
N_EXP = 10
N_PARAMS = 12 + N_SHP + N_EXP  # 62
N_LANDMARKS = 68


class MissingAssetError(FileNotFoundError):
  """A required model/data file is absent. ``str(err)`` is one line naming the file and where it comes from."""


@flax.struct.dataclass
class FaceModel:
  """A linear 3DMM restricted to what jface needs.

  Attributes (f32 unless noted; N = dense vertex count, T = triangle count):
    u_base: (204,) mean of the 68 landmark vertices (mean shape + mean expression), interleaved.
    w_shp_base: (204, 40) shape basis rows of the 68 landmarks.
    w_exp_base: (204, 10) expression basis rows of the 68 landmarks.
    param_mean, param_std: (62,) whitening statistics.
    u_dense: (3N,) dense mean (shape + mean expression), or None.
    w_shp_dense: (3N, 40) dense shape basis, or None (not shipped with 3DDFA's public files).
    w_exp_dense: (3N, 10) dense expression basis, or None.
    tri: (T, 3) int32 0-based triangle vertex ids, or None.
    tex: (N, 3) mean albedo in [0, 1], or None.
    keypoints: (68,) int32 dense vertex id of each landmark, or None.
    name: static label, e.g. ``"bfm"`` or ``"synthetic"``.
    crop_size: static crop side the pose parameters are expressed in (120).
  """
  u_base: jax.Array
  w_shp_base: jax.Array
  w_exp_base: jax.Array
  param_mean: jax.Array
  param_std: jax.Array
  u_dense: Optional[jax.Array] = None
  w_shp_dense: Optional[jax.Array] = None
  w_exp_dense: Optional[jax.Array] = None
  tri: Optional[jax.Array] = None
  tex: Optional[jax.Array] = None
  keypoints: Optional[jax.Array] = None
  name: str = flax.struct.field(pytree_node=False, default="bfm")
  crop_size: int = flax.struct.field(pytree_node=False, default=120)

  @property
  def has_dense_bases(self) -> bool:
    return self.w_shp_dense is not None and self.w_exp_dense is not None and self.u_dense is not None

  @property
  def n_vertices(self) -> Optional[int]:
    return None if self.u_dense is None else self.u_dense.shape[0] // 3

  def check(self) -> "FaceModel":
    """Validates shapes; raises ``ValueError`` with one line on mismatch. Returns self."""
    def want(name, arr, shape):
      if arr is not None and tuple(arr.shape) != tuple(shape):
        raise ValueError(f"FaceModel.{name} has shape {tuple(arr.shape)}, expected {tuple(shape)}")
    want("u_base", self.u_base, (3 * N_LANDMARKS,))
    want("w_shp_base", self.w_shp_base, (3 * N_LANDMARKS, N_SHP))
    want("w_exp_base", self.w_exp_base, (3 * N_LANDMARKS, N_EXP))
    want("param_mean", self.param_mean, (N_PARAMS,))
    want("param_std", self.param_std, (N_PARAMS,))
    if self.u_dense is not None:
      n3 = self.u_dense.shape[0]
      want("w_shp_dense", self.w_shp_dense, (n3, N_SHP))
      want("w_exp_dense", self.w_exp_dense, (n3, N_EXP))
      want("tex", self.tex, (n3 // 3, 3))
      want("keypoints", self.keypoints, (N_LANDMARKS,))
    return self


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


def load_model(spec: str = "synthetic", dense_bases_dir: Optional[str] = None) -> FaceModel:
  """``"synthetic"`` -> the embedded face model; anything else is a 3DDFA-format folder."""
  if spec == "synthetic":
    from jface import synthetic
    return synthetic.face_model()
  return load_3ddfa(spec, dense_bases_dir=dense_bases_dir)
