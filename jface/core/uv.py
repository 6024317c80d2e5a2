"""UV-space geometry for position maps (PRNet, Feng et al. 2018): layout, rasterisation, sampling, weights.

A *position map* is a (S, S, 3) image whose pixel stores the 3D position of the face point with that UV
coordinate; any per-vertex quantity (C channels) can be stored the same way.

Conventions:

* UV layout (``BFM_UV.mat``, the one PRNet's 256 x 256 assets use): a vertex with texture coordinates
  ``(u, v)`` in [0, 1] sits at pixel coordinates ``x = (S - 1) u``, ``y = (S - 1) (1 - v)``.
* Pixel coordinates are 0-based pixel *centres*, ``x`` right (column), ``y`` down (row): the centre of array
  pixel ``[r, c]`` is ``(x, y) = (c, r)`` (PRNet's ``uv_kpt_ind`` convention; note that crop coordinates in
  ``jface.core.geometry`` are 1-based). Points are (..., K, 2) as ``(x, y)``; maps are (..., H, W, C).
* Seen in the map, the mean face looks like a frontal image: ``u`` grows with model ``x`` (towards the
  subject's left), ``v`` with model ``y`` (up), so the forehead is at the top.
* The BFM triangles are wound with positive signed area ``(p1 - p0) x (p2 - p0)`` in pixel coordinates
  (x right, y down) for 105,830 of 105,840 triangles; ``map_to_mesh`` winds its grid triangles the same way.

The asset side (loading, ``rasterize_uv``, ``uv_sampling``, ``map_to_mesh``, ``weight_map``) is numpy; what sits
on the training path (``apply_uv_sampling``: position maps from vertices with a precomputed rasterisation pattern,
``sample_map``, ``weighted_error``) is JAX, jittable, with any leading batch dimensions.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Tuple, Union

import jax
import jax.numpy as jnp
import numpy as np

from jface.core.face_model import MissingAssetError, N_LANDMARKS

PathLike = Union[str, os.PathLike]

UV_SIZE = 256  # side of PRNet's position maps and of the masks in its uv-data folder

_WHERE_BFM = ("face3d's BFM folder (github.com/YadiraF/face3d, examples/Data/BFM); pass the 3DMM folder "
              "(e.g. ../shared/data/3dmm)")
_WHERE_PRNET = ("PRNet's uv-data folder (github.com/YadiraF/PRNet, Data/uv-data); pass the folder "
                "(e.g. ../shared/data/prnet_uv)")

# uv_weight_mask.png grey levels of the paper's 16:4:3:0 regions (keypoints : eyes/nose/mouth : face : neck).
_KPT_LEVEL, _ORGAN_LEVEL, _FACE_LEVEL = 255, 64, 48
WEIGHTS = {"keypoints": 16.0, "eyes_nose_mouth": 4.0, "face": 3.0, "other": 0.0}


def _need(folder: PathLike, fname: str, what: str, where: str) -> str:
  path = os.path.join(os.fspath(folder), fname)
  if not os.path.exists(path):
    raise MissingAssetError(f"missing {path}: {what}, from {where}")
  return path


def _read_png(path: str) -> np.ndarray:
  import cv2
  img = cv2.imread(path, cv2.IMREAD_UNCHANGED)
  if img is None:
    raise ValueError(f"cannot read {path} as an image")
  return img


# ---------------------------------------------------------------------------------------------- layout

def load_uv_coords(bfm_dir: PathLike) -> np.ndarray:
  """(N, 2) float64 texture coordinates ``(u, v)`` in [0, 1] of the 53,215 BFM vertices (``BFM_UV.mat``, key
  ``UV``). ``MissingAssetError`` (one line) when the file is absent."""
  from jface.core.bfm import _read_mat
  path = _need(bfm_dir, "BFM_UV.mat", "the BFM's UV coordinates (53215, 2)", _WHERE_BFM)
  m = _read_mat(path)
  if "UV" not in m:
    raise ValueError(f"{path} has no key 'UV' (keys: {sorted(k for k in m if not k.startswith('__'))})")
  uv = np.asarray(m["UV"], np.float64)
  if uv.ndim != 2 or uv.shape[1] != 2:
    raise ValueError(f"{path}: UV has shape {uv.shape}, expected (N, 2)")
  return uv


def uv_pixel_coords(uv: np.ndarray, size: int = UV_SIZE) -> np.ndarray:
  """(N, 2) ``(u, v)`` -> (N, 2) float64 pixel coordinates ``(x, y) = ((size - 1) u, (size - 1) (1 - v))``."""
  uv = np.asarray(uv, np.float64)
  return np.stack([(size - 1) * uv[..., 0], (size - 1) * (1.0 - uv[..., 1])], axis=-1)


def keypoint_pixels(src: Union[PathLike, np.ndarray]) -> np.ndarray:
  """The 68 landmark pixels of the position map, (68, 2) int32 ``(x, y)`` (``map[y, x]`` is the landmark).

  Args:
    src: ``uv_kpt_ind.txt`` (or the folder holding it), or its content as a (2, K) array (row 0 = x).
  """
  if isinstance(src, (str, os.PathLike)):
    path = os.fspath(src)
    if os.path.isdir(path):
      path = _need(path, "uv_kpt_ind.txt", "the 68 landmark pixels of the 256 x 256 UV map", _WHERE_PRNET)
    elif not os.path.exists(path):
      raise MissingAssetError(f"missing {path}: the 68 landmark pixels of the UV map, from {_WHERE_PRNET}")
    arr = np.loadtxt(path)
  else:
    arr = np.asarray(src)
  if arr.ndim != 2 or arr.shape[0] != 2:
    raise ValueError(f"keypoint pixels must be (2, K) (row 0 = x, row 1 = y), got shape {arr.shape}")
  return np.rint(arr.T).astype(np.int32)


# ---------------------------------------------------------------------------------------- rasterising

def _raster_uv(uv_px: np.ndarray, triangles: np.ndarray, size: int) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
  """The pixels a UV layout covers: (pix (F,) flat ids ``y * size + x``, corners (F, 3) vertex ids of the
  winning triangle, bary (F, 3) float64 barycentric weights of those vertices at the pixel centre)."""
  from jface.core import render
  uv_px = np.asarray(uv_px, np.float64)
  tri = np.asarray(triangles, np.int64)
  if uv_px.ndim != 2 or uv_px.shape[1] != 2:
    raise ValueError(f"uv_px must be (N, 2), got shape {uv_px.shape}")
  if tri.ndim != 2 or tri.shape[1] != 3:
    raise ValueError(f"triangles must be (T, 3), got shape {tri.shape}")
  # Coverage and the winning triangle per pixel from the crop renderer (1-based coordinates, flat z).
  verts = np.concatenate([uv_px + 1.0, np.zeros((len(uv_px), 1))], axis=1)
  pix, face, _, _ = render.rasterize(verts, tri, size, size)
  # Barycentric weights again in float64 (the renderer's are float32) at the pixel centres.
  p = np.stack([pix % size, pix // size], axis=-1).astype(np.float64)
  q0, q1, q2 = (uv_px[tri[face, i]] for i in range(3))
  cross = lambda a, b: a[:, 0] * b[:, 1] - a[:, 1] * b[:, 0]  # noqa: E731
  area = cross(q1 - q0, q2 - q0)
  b1 = cross(p - q0, q2 - q0) / area
  b2 = cross(q1 - q0, p - q0) / area
  return pix, tri[face], np.stack([1.0 - b1 - b2, b1, b2], axis=-1)


def rasterize_uv(values: np.ndarray, uv_px: np.ndarray, triangles: np.ndarray, size: int = UV_SIZE,
                 fill_holes: bool = True) -> Tuple[np.ndarray, np.ndarray]:
  """Renders per-vertex values into UV space (e.g. vertex positions -> a position map).

  Each pixel whose centre lies inside (or on an edge of) a triangle gets the barycentric (linear)
  interpolation of the triangle's three vertex values, barycentric weights in float64. Where UV triangles
  overlap (the BFM layout has 10 folded ones) one of them wins, deterministically.

  Args:
    values: (N, C) per-vertex values (or (N,) for one channel).
    uv_px: (N, 2) pixel coordinates ``(x, y)`` of the vertices (``uv_pixel_coords``).
    triangles: (T, 3) 0-based vertex ids.
    size: side of the square map.
    fill_holes: also fill enclosed holes, see ``fill_uv_holes``. The BFM layout at 256 x 256 covers 65,407 pixels;
      the other 129 are the mouth slit (x 112-143, y 138-142), an enclosed hole (face3d closes it with extra
      mouth triangles that are not part of the BFM files).
  Returns:
    (size, size, C) float32 map, 0 where no value; (size, size) bool mask of the pixels with a value
    (covered by a triangle, or filled).
  """
  values = np.asarray(values, np.float64)
  if values.ndim == 1:
    values = values[:, None]
  uv_px = np.asarray(uv_px, np.float64)
  if values.ndim != 2 or uv_px.shape != (len(values), 2):
    raise ValueError(f"values must be (N, C) and uv_px (N, 2), got {values.shape} and {uv_px.shape}")
  pix, corners, bary = _raster_uv(uv_px, triangles, size)
  vals = values[corners]  # (F, 3, C)
  out = np.zeros((size * size, values.shape[1]), np.float64)
  out[pix] = bary[:, 0, None] * vals[:, 0] + bary[:, 1, None] * vals[:, 1] + bary[:, 2, None] * vals[:, 2]
  covered = np.zeros(size * size, bool)
  covered[pix] = True
  out, covered = out.reshape(size, size, -1), covered.reshape(size, size)
  if fill_holes:
    out, filled = fill_uv_holes(out, covered)
    covered = covered | filled
  return out.astype(np.float32), covered


def fill_uv_holes(image: np.ndarray, covered: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
  """Fills the enclosed holes of a partly covered map.

  A hole pixel is an uncovered pixel not 4-connected to the image border through uncovered pixels, so its
  row and its column both meet covered pixels on either side. Its value is the mean of the row-wise and the
  column-wise linear interpolations between those nearest covered pixels, weighted by the inverse *squared*
  length of each gap: the short direction dominates (across the mouth slit: from lip to lip, like face3d's
  mouth triangles), and a function linear in (x, y) is reproduced exactly. Uncovered pixels that reach the
  border are left as they are. Measured on the BFM mean face against PRNet's ``canonical_vertices.npy`` (made
  with face3d's mouth triangles) over the 129 slit pixels: median distance 0.92 (its units; face extent ~210)
  with these weights, 1.04 column-wise only, 1.29 with inverse (not squared) gaps, 5.8 row-wise only.

  Args:
    image: (H, W, C) or (H, W) values; only covered pixels are read.
    covered: (H, W) bool.
  Returns:
    the image with the holes filled (float64, other pixels unchanged), and the (H, W) bool mask of the
    filled pixels.
  """
  covered = np.asarray(covered, bool)
  img = np.asarray(image, np.float64)
  squeeze = img.ndim == 2
  if squeeze:
    img = img[..., None]
  if img.shape[:2] != covered.shape:
    raise ValueError(f"image {img.shape} and covered {covered.shape} differ in size")
  holes, dst, src, wts = _hole_weights(covered)
  out = img.copy()
  flat = out.reshape(-1, out.shape[-1])
  flat[dst] = np.einsum("hj,hjc->hc", wts, flat[src])  # src pixels are covered, never holes
  return (out[..., 0] if squeeze else out), holes


# ------------------------------------------------------------------------- precomputed rasterisation

@dataclasses.dataclass(frozen=True)
class UVSampling:
  """A UV layout's rasterisation pattern, fixed once per (layout, size), as sparse interpolation weights.

  Every map pixel is a weighted sum of vertex values: ``map[p] = sum_k w[p, k] values[idx[p, k]]`` over the
  triangle covering pixel ``p`` (``rasterize_uv``'s barycentric weights; ``w = 0``, ``idx = 0`` where nothing
  covers it), then the enclosed holes (``fill_uv_holes``, e.g. the BFM mouth slit) are set from four covered
  pixels each: ``map[hole_dst[h]] = sum_j hole_w[h, j] map[hole_src[h, j]]``. ``apply_uv_sampling`` does this
  in JAX, batched and jittable, equal to ``rasterize_uv`` of the same values up to float32 rounding.

  Attributes (numpy): idx (S*S, 3) int32 vertex ids; w (S*S, 3) float32; mask (S, S) bool, pixels with a value
  (covered or filled); hole_dst (H,) int32 flat pixel ids; hole_src (H, 4) int32 flat ids of covered pixels;
  hole_w (H, 4) float32; size S.
  """
  idx: np.ndarray
  w: np.ndarray
  mask: np.ndarray
  hole_dst: np.ndarray
  hole_src: np.ndarray
  hole_w: np.ndarray
  size: int


def _hole_weights(covered: np.ndarray) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
  """``fill_uv_holes`` as weights: (holes (H, W) bool, dst (K,) flat ids, src (K, 4) flat ids, w (K, 4) float64),
  src = the row-wise (left, right) then column-wise (up, down) nearest covered pixels of each hole pixel."""
  import scipy.ndimage
  covered = np.asarray(covered, bool)
  h, w = covered.shape
  holes = scipy.ndimage.binary_fill_holes(covered) & ~covered
  hy, hx = np.nonzero(holes)

  def bounds(cov, i, j):
    n = cov.shape[1]
    idx = np.broadcast_to(np.arange(n), cov.shape)
    lo = np.maximum.accumulate(np.where(cov, idx, -1), axis=1)[i, j]
    hi = np.minimum.accumulate(np.where(cov, idx, n)[:, ::-1], axis=1)[:, ::-1][i, j]
    return lo, hi

  lo_r, hi_r = bounds(covered, hy, hx)  # columns left / right of the hole pixel in its row
  lo_c, hi_c = bounds(covered.T, hx, hy)  # rows above / below in its column
  gap_r, gap_c = (hi_r - lo_r).astype(np.float64), (hi_c - lo_c).astype(np.float64)
  t_r, t_c = (hx - lo_r) / gap_r, (hy - lo_c) / gap_c
  wr, wc = 1.0 / gap_r ** 2, 1.0 / gap_c ** 2
  a_r, a_c = wr / (wr + wc), wc / (wr + wc)
  src = np.stack([hy * w + lo_r, hy * w + hi_r, lo_c * w + hx, hi_c * w + hx], axis=-1)
  wts = np.stack([a_r * (1.0 - t_r), a_r * t_r, a_c * (1.0 - t_c), a_c * t_c], axis=-1)
  return holes, hy * w + hx, src, wts


def uv_sampling(uv_px: np.ndarray, triangles: np.ndarray, size: int = UV_SIZE,
                fill_holes: bool = True) -> UVSampling:
  """The rasterisation pattern of a UV layout (``UVSampling``): for every pixel of a ``size`` x ``size`` map the
  covering triangle's three vertex ids and barycentric weights, plus the hole-filling weights of ``fill_uv_holes``
  (``fill_holes``). Same coverage and triangle choice as ``rasterize_uv(values, uv_px, triangles, size)``.

  Args: uv_px (N, 2) vertex pixel coordinates ``(x, y)`` at this size; triangles (T, 3) 0-based vertex ids.
  """
  pix, corners, bary = _raster_uv(uv_px, triangles, size)
  idx = np.zeros((size * size, 3), np.int32)
  wts = np.zeros((size * size, 3), np.float32)
  idx[pix], wts[pix] = corners, bary
  covered = np.zeros(size * size, bool)
  covered[pix] = True
  covered = covered.reshape(size, size)
  if fill_holes:
    holes, dst, src, hw = _hole_weights(covered)
  else:
    holes, dst, src, hw = np.zeros_like(covered), np.zeros(0, np.int64), np.zeros((0, 4), np.int64), np.zeros((0, 4))
  return UVSampling(idx=idx, w=wts, mask=covered | holes, hole_dst=dst.astype(np.int32),
                    hole_src=src.astype(np.int32), hole_w=hw.astype(np.float32), size=int(size))


def apply_uv_sampling(sampling: UVSampling, values: jax.Array) -> jax.Array:
  """Per-vertex values (..., N, C) -> their UV maps (..., S, S, C) through a precomputed ``UVSampling``
  (jittable, differentiable in ``values``; pixels outside ``sampling.mask`` are 0)."""
  values = jnp.asarray(values)
  s = sampling.size
  idx = jnp.asarray(sampling.idx)
  w = jnp.asarray(sampling.w, values.dtype)
  flat = jnp.einsum("pk,...pkc->...pc", w, jnp.take(values, idx, axis=-2))  # (..., S*S, C)
  if len(sampling.hole_dst):
    filled = jnp.einsum("hj,...hjc->...hc", jnp.asarray(sampling.hole_w, values.dtype),
                        jnp.take(flat, jnp.asarray(sampling.hole_src), axis=-2))
    flat = flat.at[..., jnp.asarray(sampling.hole_dst), :].set(filled)
  return flat.reshape(flat.shape[:-2] + (s, s, flat.shape[-1]))


# -------------------------------------------------------------------------------------------- sampling

def _sample_one(m: jax.Array, pts: jax.Array) -> jax.Array:
  h, w = m.shape[0], m.shape[1]
  x = jnp.clip(pts[:, 0], 0.0, w - 1.0)
  y = jnp.clip(pts[:, 1], 0.0, h - 1.0)
  x0 = jnp.clip(jnp.floor(x), 0.0, max(w - 2, 0))
  y0 = jnp.clip(jnp.floor(y), 0.0, max(h - 2, 0))
  fx, fy = (x - x0)[:, None], (y - y0)[:, None]
  xi, yi = x0.astype(jnp.int32), y0.astype(jnp.int32)
  xj, yj = jnp.minimum(xi + 1, w - 1), jnp.minimum(yi + 1, h - 1)
  top = (1.0 - fx) * m[yi, xi] + fx * m[yi, xj]
  bottom = (1.0 - fx) * m[yj, xi] + fx * m[yj, xj]
  return (1.0 - fy) * top + fy * bottom


def sample_map(maps: jax.Array, pts: jax.Array) -> jax.Array:
  """Bilinear samples of maps at pixel coordinates (jittable, differentiable in both).

  Args:
    maps: (..., H, W, C) maps.
    pts: (..., K, 2) pixel coordinates ``(x, y)`` (0-based centres, ``maps[..., y, x, :]``); points outside
      the map are clamped to its border. Leading dimensions broadcast against those of ``maps``.
  Returns:
    (..., K, C) in the maps' dtype (float32 for integer maps); weights are computed in at least float32.
  """
  maps = jnp.asarray(maps)
  if not jnp.issubdtype(maps.dtype, jnp.floating):
    maps = maps.astype(jnp.float32)
  pts = jnp.asarray(pts, jnp.promote_types(maps.dtype, jnp.float32))
  out = jnp.vectorize(_sample_one, signature="(h,w,c),(k,d)->(k,c)")(maps, pts)
  return out.astype(maps.dtype)


def weighted_error(pred: jax.Array, target: jax.Array, weights: jax.Array) -> jax.Array:
  """The paper's Eq. (1) normalised by the total weight: ``sum W ||P - P~|| / sum W`` per map (jittable).

  Args:
    pred, target: (..., H, W, C) maps (e.g. position maps).
    weights: (..., H, W) weights broadcasting against them (e.g. ``weight_map``).
  Returns:
    (...,) weighted mean of the per-pixel Euclidean distance (NaN when all weights are 0). The gradient at
    ``pred == target`` is 0 (not NaN).
  """
  d2 = jnp.sum(jnp.square(pred - target), axis=-1)
  nz = d2 > 0
  dist = jnp.where(nz, jnp.sqrt(jnp.where(nz, d2, 1.0)), 0.0)
  weights = jnp.asarray(weights, dist.dtype)
  num = jnp.sum(dist * weights, axis=(-2, -1))
  return num / jnp.sum(jnp.broadcast_to(weights, dist.shape), axis=(-2, -1))


# ------------------------------------------------------------------------------------------ map -> mesh

def map_to_mesh(mask: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
  """Grid triangulation of the pixels of a mask, to turn a position map into a mesh.

  Every 2 x 2 cell whose four corners are mask pixels gives two triangles (split along its anti-diagonal,
  top-right to bottom-left); a cell with exactly three gives the one triangle of those three. Triangles
  have positive signed area in pixel coordinates (x right, y down), the BFM triangles' winding in UV.

  Args:
    mask: (H, W) bool, e.g. ``uv_face_mask.png > 0``.
  Returns:
    pixels (M,) int64 flat ids ``y * W + x`` of the mask pixels in row-major order (``face_ind.txt`` for
    PRNet's face mask): the mesh vertices are ``posmap.reshape(-1, C)[pixels]``;
    triangles (T, 3) int32 indices into ``pixels``.
  """
  mask = np.asarray(mask, bool)
  if mask.ndim != 2:
    raise ValueError(f"mask must be (H, W), got shape {mask.shape}")
  h, w = mask.shape
  pixels = np.flatnonzero(mask)
  vid = np.full(h * w, -1, np.int64)
  vid[pixels] = np.arange(len(pixels))
  vid = vid.reshape(h, w)
  # Corners of each cell: a = top-left, b = top-right, c = bottom-left, d = bottom-right.
  a, b, c, d = vid[:-1, :-1].ravel(), vid[:-1, 1:].ravel(), vid[1:, :-1].ravel(), vid[1:, 1:].ravel()
  ia, ib, ic, id_ = a >= 0, b >= 0, c >= 0, d >= 0
  n = ia.astype(int) + ib + ic + id_
  full, three = n == 4, n == 3
  tris = [
      np.stack([a, b, c], -1)[full | (three & ~id_)],  # (a, b, c): full cells, or d missing
      np.stack([b, d, c], -1)[full | (three & ~ia)],   # (b, d, c): full cells, or a missing
      np.stack([a, d, c], -1)[three & ~ib],
      np.stack([a, b, d], -1)[three & ~ic],
  ]
  return pixels, np.concatenate(tris).astype(np.int32)


# --------------------------------------------------------------------------------------------- weights

def weight_map(prnet_uv_dir: PathLike, size: int = UV_SIZE) -> np.ndarray:
  """The paper's loss weights, (size, size) float32 with values exactly 16 (the 68 keypoint pixels), 4 (eyes,
  nose, mouth), 3 (the rest of the face) and 0 (neck and outside the face).

  Built from ``uv_weight_mask.png`` x (``uv_face_mask.png`` > 0): the shipped weight mask alone does not zero
  the neck (21,413 of its weight-3 pixels lie outside the face mask). Its grey levels are 255 / 64 / 48 with
  anti-aliased edges, which are snapped back to a class (measured on PRNet's file): levels between 48 and 64
  go to the nearer one; the halo pixels around keypoints (64 < level < 255, a 1/3 blend with 255) are
  unblended, ``(3 level - 255) / 2``, and then snapped the same way. (The PNG's levels are these weights
  times 255 / 16, up to 8-bit rounding.)

  Other sizes: the region classes are resampled with nearest neighbours in the UV layout
  (``x_256 = round(x (255 / (size - 1)))``), and the 68 keypoints are re-stamped at
  ``round(uv_kpt_ind (size - 1) / 255)``.
  """
  w_path = _need(prnet_uv_dir, "uv_weight_mask.png", "the 16:4:3:0 loss weight mask", _WHERE_PRNET)
  f_path = _need(prnet_uv_dir, "uv_face_mask.png", "the face mask of the UV map", _WHERE_PRNET)
  k_path = _need(prnet_uv_dir, "uv_kpt_ind.txt", "the 68 landmark pixels of the UV map", _WHERE_PRNET)
  level = _read_png(w_path).astype(np.float64)
  face = _read_png(f_path)
  if level.ndim == 3:
    level = level[..., 0]
  if face.ndim == 3:
    face = face[..., 0]
  if level.shape != (UV_SIZE, UV_SIZE) or face.shape != level.shape:
    raise ValueError(f"{w_path} / {f_path}: expected {UV_SIZE} x {UV_SIZE} masks, got {level.shape} / {face.shape}")
  kpt = keypoint_pixels(k_path)
  if len(kpt) != N_LANDMARKS:
    raise ValueError(f"{k_path}: expected {N_LANDMARKS} keypoints, got {len(kpt)}")
  halo = (level > _ORGAN_LEVEL) & (level < _KPT_LEVEL)
  level = np.where(halo, (3.0 * level - _KPT_LEVEL) / 2.0, level)
  mid = (_ORGAN_LEVEL + _FACE_LEVEL) / 2.0
  regions = np.where(level >= mid, WEIGHTS["eyes_nose_mouth"], WEIGHTS["face"])
  regions = np.where((face > 0) & (level > 0), regions, WEIGHTS["other"])
  if size != UV_SIZE:
    src = np.rint(np.arange(size) * ((UV_SIZE - 1) / max(size - 1, 1))).astype(np.int64)
    regions = regions[src[:, None], src[None, :]]
    kpt = np.rint(kpt * ((size - 1) / (UV_SIZE - 1))).astype(np.int64)
  regions[kpt[:, 1], kpt[:, 0]] = WEIGHTS["keypoints"]
  return regions.astype(np.float32)
