"""The 3D morphable model as an immutable pytree (``FaceModel``) and the conventions every method shares.

Conventions (3DDFA v1 / 2DASL):

* Shapes are stored *interleaved*: a 3N vector is ``x0, y0, z0, x1, ...``, so ``v.reshape(N, 3)`` gives points.
* 62 parameters: ``p[:12].reshape(3, 4) = [f*R | t]`` (pixels of the ``CROP_SIZE`` x ``CROP_SIZE`` crop),
  ``p[12:52]`` = shape coefficients, ``p[52:62]`` = expression coefficients. Networks see whitened params
  ``(p - param_mean) / param_std``.

Loaders: ``jface.core.bfm.load_3ddfa`` (a 3DDFA-format folder), ``jface.core.synthetic.face_model`` (the embedded
model), ``jface.core.load.load_model`` (either, by spec).
"""
from __future__ import annotations

from typing import Optional

import flax.struct
import jax

CROP_SIZE = 120  # side (pixels) of the face crops every reader, network input and pose parameter uses

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
  crop_size: int = flax.struct.field(pytree_node=False, default=CROP_SIZE)

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
