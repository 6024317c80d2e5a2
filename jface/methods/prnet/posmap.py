"""Ground-truth UV position maps (PRNet's training targets), following face3d's recipe for 300W-LP
(``examples/8_generate_posmap_300WLP.py``): dense vertices of the 3DMM fit in the original image, a square crop
around the 68 landmarks warped to ``size`` x ``size``, z scaled by the same factor and shifted so that the
minimum z over the mesh is 0, rendered in UV space (``jface.core.uv.rasterize_uv``), kept as float32.

Coordinates (three frames; the names below are used throughout):

* image: jface's original-image coordinates, **1-based** pixel centres (array pixel ``[r, c]`` has its centre at
  ``(x, y) = (c + 1, r + 1)``), x right, y down; z in pixels, larger = nearer the camera (the camera frame
  ``s R S + t``'s z; ``jface.core.render``'s convention).
* map values (what a position map stores, PRNet's convention): **0-based** pixel coordinates of the
  ``size`` x ``size`` cropped image (pixel ``[r, c]`` at ``(c, r)``), y down; z = ``k z_image - min``, in the
  same pixel units, so min z over the mesh vertices is 0.
* UV pixels (where a value is stored): ``jface.core.uv``'s 0-based ``(x, y)``; ``posmap[y, x]``.

A crop box is ``(sx, sy, ex, ey)`` in image coordinates; the crop maps ``x = sx -> 0`` and ``x = ex -> size - 1``
(face3d/PRNet send the box corners to the pixel centres 0 and 255), likewise y: ``x_map = kx (x - sx)``,
``kx = (size - 1) / (ex - sx)``; z is scaled by ``(kx + ky) / 2`` (= kx = ky for the square boxes used here).

Differences from face3d, on purpose: the box is not rounded (face3d truncates the keypoints and the size to
integers); vertices use jface's ``y = H + 1 - y`` (1-based, checked against ``pt3d_68``) where face3d writes
``h - 1 - y`` in 0-based pixels, i.e. one pixel higher; the augmentation scale applies to z exactly (face3d's
rotating variant scales z by ``tform.params[0, 0] = k cos(angle)``).
"""
from __future__ import annotations

import math
from typing import Mapping, Optional, Sequence, Tuple

import cv2
import jax
import jax.numpy as jnp
import numpy as np

from jface.core import crop, geometry
from jface.core import uv as uv_lib
from jface.data import augment, mat_layout

POSMAP_SIZE = uv_lib.UV_SIZE  # 256
TRAIN_CROP_SCALE = 1.5  # face3d's 300W-LP recipe: box side = 1.5 x the landmarks' box size
TEST_CROP_SCALE = 1.6  # PRNet's API at test time (landmark or box input)
_BORDERS = {"constant": cv2.BORDER_CONSTANT, "replicate": cv2.BORDER_REPLICATE, "reflect": cv2.BORDER_REFLECT_101}


# ----------------------------------------------------------------------------------------------- crop box

def crop_box_for_posmap(pts: np.ndarray, scale: float = TRAIN_CROP_SCALE, shift: Sequence[float] = (0.0, 0.0),
                        zoom: float = 1.0, side: str = "mean") -> np.ndarray:
  """Square crop box around landmarks (face3d / PRNet).

  Args:
    pts: (K, 2) image points ``(x, y)`` (any base: the box is in the same coordinates); non-finite rows ignored.
      face3d uses the fit's 68 keypoint vertices (``vertices[model.keypoints, :2]``); ``pt3d_68`` differs by the
      40/10 truncation (~1 % NME).
    scale: box side / landmark-box size (1.5 to make training maps, 1.6 in PRNet's test-time API).
    shift: (dx, dy) centre shift in units of the landmark-box size (face3d: each ``U(-0.1, 0.1)`` in training).
    zoom: extra factor on the side (face3d: ``U(0.9, 1.1)``). ``sample_box_jitter`` draws ``shift`` and ``zoom``.
    side: landmark-box size = ``"mean"`` of its width and height (face3d's and PRNet's code:
      ``(right - left + bottom - top) / 2``) or its ``"max"`` side.
  Returns:
    (4,) float64 ``(sx, sy, ex, ey)``, ``ex - sx = ey - sy = scale * zoom * size``. ``ValueError`` with fewer than
    2 finite points or a zero-size box.
  """
  p = np.asarray(pts, np.float64).reshape(-1, 2)
  p = p[np.all(np.isfinite(p), axis=1)]
  if len(p) < 2:
    raise ValueError(f"crop_box_for_posmap needs >= 2 finite points, got {len(p)}")
  lo, hi = p.min(0), p.max(0)
  if side == "mean":
    old = float(np.mean(hi - lo))
  elif side == "max":
    old = float(np.max(hi - lo))
  else:
    raise ValueError(f"side must be 'mean' or 'max', got {side!r}")
  if not old > 0:
    raise ValueError("crop_box_for_posmap: the points have zero extent")
  c = (lo + hi) / 2 + np.asarray(shift, np.float64).reshape(2) * old
  half = scale * zoom * old / 2
  return np.concatenate([c - half, c + half])


def sample_box_jitter(rng: np.random.Generator, max_shift: float = 0.1,
                      zoom_range: Tuple[float, float] = (0.9, 1.1)) -> Tuple[np.ndarray, float]:
  """face3d's training jitter of the crop box: draws ``shift`` (2,) from ``U(-max_shift, max_shift)`` (x then y),
  then ``zoom`` from ``U(zoom_range)``, from ``rng`` in this order -> (shift, zoom) for ``crop_box_for_posmap``."""
  shift = rng.uniform(-max_shift, max_shift, size=2)
  return shift, float(rng.uniform(*zoom_range))


def crop_affine(crop_box, size: int = POSMAP_SIZE) -> np.ndarray:
  """(2, 3) float64 affine from image coordinates (1-based) to map coordinates (0-based crop pixels):
  ``x_map = kx (x - sx)``, ``y_map = ky (y - sy)``, ``k = (size - 1) / box side``."""
  sx, sy, ex, ey = (float(v) for v in np.asarray(crop_box, np.float64).reshape(4))
  if not (ex > sx and ey > sy):
    raise ValueError(f"empty crop box {[sx, sy, ex, ey]}")
  kx, ky = (size - 1) / (ex - sx), (size - 1) / (ey - sy)
  return np.array([[kx, 0.0, -kx * sx], [0.0, ky, -ky * sy]])


def _z_scale(crop_aff: np.ndarray) -> float:
  """z factor of a ``crop_affine``: the mean of the two axis scales."""
  return (crop_aff[0, 0] + crop_aff[1, 1]) / 2


# ----------------------------------------------------------------------------------------------- vertices

def image_vertices(model, pw, roi_box) -> np.ndarray:
  """Whitened (62,) params of a crop box -> (N, 3) float64 dense vertices in image coordinates (1-based, y down,
  z as ``jface.core.crop.crop_to_image``). ``model`` needs the dense bases (``load_model(bfm_dir,
  dense_bases_dir)``); computed in float32 by ``jface.core.geometry.dense_vertices``."""
  v = geometry.dense_vertices(model, jnp.asarray(pw, jnp.float32).reshape(-1))
  return crop.crop_to_image(np.asarray(v, np.float64), np.asarray(roi_box, np.float64), model.crop_size)


def _coeffs(mat: Mapping, key: str, n: int) -> np.ndarray:
  a = np.asarray(mat[key], np.float64).reshape(-1)[:n] if key in mat else np.zeros(0)
  if a.size < n or not np.all(np.isfinite(a)):
    raise ValueError(f"{key} must hold >= {n} finite values")
  return a


def fit_image_vertices(model, mat: Mapping, image_height: float) -> np.ndarray:
  """AFLW2000-3D / 300W-LP ``.mat`` fit -> (N, 3) float64 dense vertices in image coordinates.

  ``q = s R (u + W_shp a[:40] + W_exp b[:10]) + t``, ``x = q_x``, ``y = H + 1 - q_y``, ``z = q_z``
  (``jface.data.mat_layout``'s conventions; the 68 keypoint vertices reproduce ``pt3d_68`` up to the 40/10
  truncation). Equals ``image_vertices(model, mat_to_params(mat, box, H, model), box)`` for any box.
  """
  if not model.has_dense_bases:
    raise ValueError("fit_image_vertices needs the dense bases w_shp_sim.npy / w_exp_sim.npy "
                     "(python -m jface.core.dense_bases fetch; load_model(bfm_dir, dense_bases_dir))")
  s, r, t = mat_layout.pose_para_to_srt(mat["Pose_Para"])
  a, b = _coeffs(mat, "Shape_Para", mat_layout.N_SHP), _coeffs(mat, "Exp_Para", mat_layout.N_EXP)
  shape = (np.asarray(model.u_dense, np.float64) + np.asarray(model.w_shp_dense) @ a
           + np.asarray(model.w_exp_dense) @ b)
  q = s * shape.reshape(-1, 3) @ r.T + t
  q[:, 1] = image_height + 1 - q[:, 1]
  return q


# ---------------------------------------------------------------------------------------- position maps

def position_map(vertices: np.ndarray, crop_box, uv_px: np.ndarray, triangles: np.ndarray,
                 size: int = POSMAP_SIZE) -> np.ndarray:
  """Dense image-space vertices -> the (size, size, 3) float32 position map of a crop.

  Args:
    vertices: (N, 3) image coordinates (``fit_image_vertices`` / ``image_vertices``).
    crop_box: (4,) ``(sx, sy, ex, ey)`` image coordinates (``crop_box_for_posmap``).
    uv_px: (N, 2) UV pixel coordinates of the vertices for this ``size``
      (``uv.uv_pixel_coords(uv.load_uv_coords(bfm_dir), size)``).
    triangles: (T, 3) 0-based vertex ids (``model.tri``).
  Returns:
    map values (module docstring): x, y = crop pixels (0-based), z = ``k z - min_vertices(k z)``; rasterised with
    ``uv.rasterize_uv`` (the mouth slit filled; pixels no triangle covers stay 0; for the BFM layout there are none).
    float32: 8-bit maps lose up to half a crop pixel per coordinate (measured up to 0.68 px at the keypoints)
    and clip the values of vertices outside the crop (neck and ears of profiles: up to 19 px), see the tests.
  """
  v = np.asarray(vertices, np.float64)
  if v.ndim != 2 or v.shape[1] != 3:
    raise ValueError(f"vertices must be (N, 3), got shape {v.shape}")
  a = crop_affine(crop_box, size)
  out = np.empty_like(v)
  out[:, :2] = v[:, :2] @ a[:, :2].T + a[:, 2]
  out[:, 2] = v[:, 2] * _z_scale(a)
  out[:, 2] -= out[:, 2].min()
  posmap, _ = uv_lib.rasterize_uv(out, uv_px, triangles, size)
  return posmap


def map_to_image(points, crop_box, size: int = POSMAP_SIZE) -> np.ndarray:
  """Inverse of the crop: map values (..., 3) (a whole map or sampled points) -> image coordinates, float64.

  x, y exactly (1-based image pixels); z = ``z_map / k``: image z up to the unknown offset of the z shift (the
  vertex with the smallest z comes back at 0).
  """
  p = np.asarray(points, np.float64)
  a = crop_affine(crop_box, size)
  out = np.empty_like(p)
  out[..., 0] = (p[..., 0] - a[0, 2]) / a[0, 0]
  out[..., 1] = (p[..., 1] - a[1, 2]) / a[1, 1]
  out[..., 2] = p[..., 2] / _z_scale(a)
  return out


def landmarks_from_map(posmap, kpt_px) -> jax.Array:
  """(..., S, S, 3) maps -> (..., K, 3) map values at the keypoint pixels (``uv.keypoint_pixels``, (K, 2) 0-based
  ``(x, y)``, integers: exact pixel reads) via ``uv.sample_map``; jittable."""
  return uv_lib.sample_map(jnp.asarray(posmap), jnp.asarray(kpt_px, jnp.float32))


# ------------------------------------------------------------------------------ images and augmentation

def crop_image(image: np.ndarray, crop_box, size: int = POSMAP_SIZE, border: str = "constant") -> np.ndarray:
  """(H, W[, C]) image -> its (size, size[, C]) crop, consistent with ``position_map``'s map values (a point at
  image ``(x, y)`` appears at crop pixel ``crop_affine @ (x, y, 1)``). Bilinear, same dtype; ``border`` is
  ``"constant"`` (black), ``"replicate"`` or ``"reflect"``."""
  a = crop_affine(crop_box, size)
  a0 = a.copy()  # the same map on 0-based image pixels (x - 1), as OpenCV indexes them
  a0[:, 2] += a[:, :2].sum(axis=1)
  return cv2.warpAffine(np.asarray(image), a0, (size, size), flags=cv2.INTER_LINEAR, borderMode=_BORDERS[border])


def pixel_similarity(angle_deg: float, scale: float, shift: Sequence[float] = (0.0, 0.0),
                     size: int = POSMAP_SIZE) -> np.ndarray:
  """(2, 3) similarity on 0-based crop pixels: rotate by ``angle_deg`` (counter-clockwise as displayed) and scale
  about the crop centre, then shift by ``shift`` pixels (``jface.data.augment.similarity_affine``, re-based).
  PRNet's augmentation: angle ``U(-45, 45)``, scale ``U(0.9, 1.2)``, shift ``U(-10 %, 10 %)`` of ``size``."""
  return augment.pixel_affine(augment.similarity_affine(angle_deg, scale, shift, size))


def transform_map(posmap: np.ndarray, affine: np.ndarray, mask: Optional[np.ndarray] = None) -> np.ndarray:
  """Moves the values of a position map by a similarity of its crop: ``xy' = M xy + b``, ``z' = k z``
  (``k = sqrt(det M)``; min z stays 0). The UV grid does not move (no resampling: exact).

  Args:
    posmap: (..., S, S, 3) map values.
    affine: (2, 3) similarity on 0-based crop pixels (``pixel_similarity``); reflections are refused (a mirrored
      face needs a mirrored UV layout).
    mask: optional (S, S) bool; pixels outside keep their values (e.g. 0 where no triangle covers).
  Returns float32 maps.
  """
  a = np.asarray(affine, np.float64)
  m = a[:, :2]
  if a.shape != (2, 3) or not np.allclose([m[0, 0] - m[1, 1], m[0, 1] + m[1, 0]], 0, atol=1e-9 * np.abs(m).max()) \
      or np.linalg.det(m) <= 0:
    raise ValueError(f"transform_map needs a (2, 3) similarity without reflection, got {a.tolist()}")
  p = np.asarray(posmap, np.float64)
  out = np.concatenate([p[..., :2] @ m.T + a[:, 2], p[..., 2:] * math.sqrt(np.linalg.det(m))], axis=-1)
  if mask is not None:
    out = np.where(np.asarray(mask, bool)[..., None], out, p)
  return out.astype(np.float32)


def warp_example(image: np.ndarray, posmap: np.ndarray, affine: np.ndarray, mask: Optional[np.ndarray] = None,
                 border: str = "constant") -> Tuple[np.ndarray, np.ndarray]:
  """Warps a cropped image and its position map by the same similarity, so they stay consistent.

  Args:
    image: (S', S'[, C]) crop (usually S' = S); warped with ``cv2.warpAffine`` (bilinear, same shape and dtype).
    posmap: (S, S, 3) map whose x, y are pixels of ``image``.
    affine: (2, 3) similarity on 0-based pixels (``pixel_similarity``).
    mask, border: as ``transform_map`` / ``crop_image``.
  Returns (image, posmap): a keypoint read from the new map lands on the same image feature in the new image.
  """
  img = np.asarray(image)
  h, w = img.shape[:2]
  new_map = transform_map(posmap, affine, mask)
  new_img = cv2.warpAffine(img, np.asarray(affine, np.float64), (w, h), flags=cv2.INTER_LINEAR,
                           borderMode=_BORDERS[border])
  return new_img, new_map
