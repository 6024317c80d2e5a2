"""PRNet's UV layout per face model: where each vertex sits in the position map, the rasterisation pattern,
the 68 keypoint pixels and the loss weights (``Layout``, built once per (face model, map size) by ``layout``).

* BFM (a 3DDFA folder): ``BFM_UV.mat`` (``jface.core.uv.load_uv_coords(bfm_dir)``), PRNet's 256 x 256 layout;
  keypoints = PRNet's ``uv_kpt_ind.txt`` scaled to the map (``(S - 1) / 255``: the same surface points at any
  size; exact pixels at S = 256); weights = the paper's 16:4:3:0 mask (``jface.core.uv.weight_map``).
* synthetic (``jface.core.synthetic``): ``synthetic_uv`` -- the face model has no texture coordinates, so the
  layout is read off its construction (see there); keypoints = the landmark vertices' own UV pixels
  (fractional, read bilinearly); weights = ``synthetic_weights``, the same four classes built from the 68
  landmarks and the model's hair mask.

Pixel conventions are ``jface.core.uv``'s: ``x = (S - 1) u``, ``y = (S - 1) (1 - v)``, 0-based pixel centres.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Tuple

import numpy as np

from jface.core import uv as uv_lib
from jface.core.face_model import FaceModel, N_LANDMARKS

# The synthetic layout: the map's [0, 1]^2 spans these (fractional) grid columns and rows (rows counted with the
# mouth band's rings, 0 = the ring next to the bottom pole): columns 9..65 are longitudes -106..+106 degrees
# (the jaw-contour landmarks 0 / 16 are on columns 11 / 63, the ears just outside), rows 3..61 latitudes -68
# (neck) ..+62 degrees (forehead above the hairline; the chin is on row 7, the brows on rows 50-51).
SYNTH_COLS = (8.5, 65.5)
SYNTH_ROWS = (2.5, 61.5)
ORGANS = tuple(range(27, N_LANDMARKS))  # nose 27-35, eyes 36-47, mouth 48-67: the "eyes, nose, mouth" class
ORGAN_RADIUS = 0.04  # of the map side: pixels this close to an organ landmark's pixel get weight 4 (synthetic)


@dataclasses.dataclass(frozen=True)
class Layout:
  """A face model's UV layout at one map size S (numpy; closed over by the jitted step and predict).

  Attributes:
    name: the face model's name ("bfm", "synthetic").
    size: S.
    sampling: ``uv.UVSampling`` (vertex values -> map, with hole filling).
    vertex_px: (N, 2) float32 UV pixel ``(x, y)`` of every vertex (outside [0, S - 1] for vertices the map does
      not hold; sampling clamps them to the border).
    inside: (N,) bool, the vertices the map holds (the z shift of the targets is taken over these).
    kpt_px: (68, 2) float32 UV pixels of the 68 landmarks (read bilinearly).
    weights: (S, S) float32 loss weights (16 / 4 / 3 / 0).
  """
  name: str
  size: int
  sampling: uv_lib.UVSampling
  vertex_px: np.ndarray
  inside: np.ndarray
  kpt_px: np.ndarray
  weights: np.ndarray


# ------------------------------------------------------------------------------------------ synthetic

def _grid_shape() -> Tuple[int, int]:
  from jface.core import synthetic
  return synthetic.N_ROWS + len(synthetic.BAND) - 1, synthetic.N_COLS


def synthetic_uv(model: FaceModel) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
  """The UV layout of the embedded synthetic face (``jface.core.synthetic``), from its sphere-grid construction.

  The mesh is a latitude/longitude grid of rays cast from ``synthetic.CENTER``: vertex ``r * N_COLS + c`` lies
  on column ``c`` (longitude theta, growing towards the subject's left, -180 degrees at column 0) and row ``r``
  (latitude, from the neck up), plus two poles. ``u`` and ``v`` are the column and row indices mapped linearly,
  so they are the longitude and latitude of each mean-shape vertex about the cast centre, through the grid's own
  spacing (denser over the face, like the mesh). The 4 extra rings of the mouth band (coincident with the lip
  crease at rest, parted by jaw_open) get rows of their own, so the inner-lip landmarks get distinct pixels and
  the opened mouth has UV area; band vertices merged away outside the mouth take the UV of the vertex they
  were merged into. ``SYNTH_COLS`` x ``SYNTH_ROWS`` (the face, from ear to ear and from the neck to above the
  hairline) is mapped to [0, 1]^2; the back of the head and the poles fall outside.

  Returns:
    uv (N, 2) float64 ``(u, v)`` (the face in [0, 1]; v up, u towards the subject's left, as ``BFM_UV.mat``);
    triangles (T, 3) int32 to rasterise (those crossing the seam at the back or touching a pole dropped);
    inside (N,) bool, vertices with ``(u, v)`` in [0, 1]^2.
  """
  n_rows, n_cols = _grid_shape()
  n = model.n_vertices
  if model.name != "synthetic" or n != n_rows * n_cols + 2 or model.tri is None:
    raise ValueError(f"synthetic_uv needs the embedded synthetic face model ({n_rows * n_cols + 2} vertices), got "
                     f"{model.name!r} with {n} vertices")
  ids = np.arange(n)
  row, col = (ids // n_cols).astype(np.float64), (ids % n_cols).astype(np.float64)
  row[-2], row[-1], col[-2:] = n_rows, -1.0, (n_cols - 1) / 2  # top and bottom poles
  tri = np.asarray(model.tri, np.int64)
  # merged band vertices (unreferenced, coincident at rest with a referenced one) take that vertex's place
  used = np.zeros(n, bool)
  used[tri.ravel()] = True
  pts = np.asarray(model.u_dense, np.float64).reshape(-1, 3)
  for i in np.nonzero(~used)[0]:
    d = np.linalg.norm(pts[used] - pts[i], axis=1)
    j = np.nonzero(used)[0][np.argmin(d)]
    if d.min() <= 1e-6 * np.abs(pts).max():
      row[i], col[i] = row[j], col[j]
  u = (col - SYNTH_COLS[0]) / (SYNTH_COLS[1] - SYNTH_COLS[0])
  v = (row - SYNTH_ROWS[0]) / (SYNTH_ROWS[1] - SYNTH_ROWS[0])
  uv = np.stack([u, v], axis=-1)
  poles = ids >= n - 2
  tc = col[tri]
  keep = (tc.max(1) - tc.min(1) <= 1) & ~poles[tri].any(1)
  inside = np.all((uv >= 0) & (uv <= 1), axis=1)
  return uv, tri[keep].astype(np.int32), inside


def synthetic_weights(model: FaceModel, sampling: uv_lib.UVSampling, kpt_px: np.ndarray,
                      radius: float = ORGAN_RADIUS) -> np.ndarray:
  """PRNet-style loss weights for the synthetic layout, (S, S) float32:

  * 16 at the 68 keypoint pixels (``kpt_px`` rounded);
  * 4 within ``radius * S`` pixels (at least 1.5) of the pixels of the nose, eye and mouth landmarks (27-67);
  * 3 on the rest of the face: pixels inside the jaw contour (landmarks 0-16, closed over the top of the map)
    where the model's hair mask (``synthetic.face_regions()["hair"]``, rasterised) is below 1/2;
  * 0 elsewhere (neck, ears, hair, the sides and back of the head), as the paper's neck.
  """
  import cv2
  from jface.core import synthetic
  s = sampling.size
  kpt = np.rint(kpt_px).astype(np.int64)
  poly = np.concatenate([kpt[:17], [[kpt[16, 0], 0], [kpt[0, 0], 0]]]).astype(np.int32)
  inside_jaw = np.zeros((s, s), np.uint8)
  cv2.fillPoly(inside_jaw, [poly], 1)
  hair = synthetic.face_regions()["hair"]
  hair_map = (sampling.w * hair[sampling.idx]).sum(-1).reshape(s, s)
  face = (inside_jaw > 0) & sampling.mask & (hair_map < 0.5)
  yy, xx = np.mgrid[0:s, 0:s]
  r = max(1.5, radius * s)
  organs = np.zeros((s, s), bool)
  for x, y in kpt_px[list(ORGANS)]:
    organs |= (xx - x) ** 2 + (yy - y) ** 2 <= r * r
  w = np.where(face, np.where(organs, uv_lib.WEIGHTS["eyes_nose_mouth"], uv_lib.WEIGHTS["face"]),
               uv_lib.WEIGHTS["other"])
  w[kpt[:, 1], kpt[:, 0]] = uv_lib.WEIGHTS["keypoints"]
  return w.astype(np.float32)


# ------------------------------------------------------------------------------------------- layouts

def make_layout(model: FaceModel, size: int, bfm_dir: str = "", prnet_uv_dir: str = "") -> Layout:
  """The layout of ``model`` at map size ``size``: synthetic (``synthetic_uv``) or BFM (``BFM_UV.mat`` in
  ``bfm_dir``, keypoints and weights from PRNet's ``prnet_uv_dir``). ``MissingAssetError`` when a file is absent."""
  if model.tri is None or model.u_dense is None:
    raise ValueError(f"the {model.name!r} face model has no dense mesh (u_dense, tri): PRNet needs one")
  if model.name == "synthetic":
    uv, tri, inside = synthetic_uv(model)
    px = uv_lib.uv_pixel_coords(uv, size)
    sampling = uv_lib.uv_sampling(px, tri, size)
    kpt_px = px[np.asarray(model.keypoints)]
    weights = synthetic_weights(model, sampling, kpt_px)
  else:
    uv = uv_lib.load_uv_coords(bfm_dir)
    if len(uv) != model.n_vertices:
      raise ValueError(f"{bfm_dir}/BFM_UV.mat has {len(uv)} vertices, the face model {model.n_vertices}")
    px = uv_lib.uv_pixel_coords(uv, size)
    sampling = uv_lib.uv_sampling(px, np.asarray(model.tri), size)
    inside = np.all((uv >= 0) & (uv <= 1), axis=1)
    kpt_px = uv_lib.keypoint_pixels(prnet_uv_dir).astype(np.float64) * ((size - 1) / (uv_lib.UV_SIZE - 1))
    weights = uv_lib.weight_map(prnet_uv_dir, size)
  return Layout(name=model.name, size=int(size), sampling=sampling, vertex_px=px.astype(np.float32),
                inside=np.asarray(inside, bool), kpt_px=np.asarray(kpt_px, np.float32),
                weights=np.asarray(weights, np.float32))


@functools.lru_cache(maxsize=8)
def layout(bfm_dir: str, size: int, prnet_uv_dir: str = "") -> Layout:
  """``make_layout`` of the face model ``bfm_dir`` names ("synthetic" or a 3DDFA folder), cached (the training
  loop, the dev evaluator and inference each build the method)."""
  from jface.core.load import load_model
  return make_layout(load_model(bfm_dir), int(size), bfm_dir, prnet_uv_dir)
