"""CPU mesh rendering (numpy + OpenCV): z-buffered, Gouraud-shaded Lambertian triangles; overlays.

Coordinates (as ``jface.core.geometry`` produces them): ``vertices`` (N, 3) are *crop/image coordinates*, ``x`` to
the right, ``y`` DOWN, 1-based (the centre of array pixel ``[r, c]`` is ``(x, y) = (c + 1, r + 1)``), and
``z = v_z`` of the camera frame ``v = fR S + t``. That frame is right-handed with y up and the viewer on +z (the
BFM's nose has the largest model z), so **larger z is nearer the camera**; the z-buffer keeps the largest z.

Shading: per-vertex normals (area-weighted face normals, each vertex normal turned towards the viewer, so the
triangle winding does not matter), ``colour = albedo * (ambient + diffuse * max(0, n . l))`` with ``l`` the unit
direction *towards* the light in the same crop frame: ``(0, 0, 1)`` is a head-on light, ``(0, -1, 1)`` lights
from above (y is down). Colours are linearly interpolated over triangles (Gouraud); a pixel is covered when its
centre lies inside (or on an edge of) a triangle.

Rasterisation is vectorised over triangles: triangles are bucketed by bounding-box side (powers of two), the
candidate pixels of each bucket are tested with edge functions at once, and the fragment with the largest z
wins each pixel (one ``lexsort``). Cost is ~linear in the number of covered pixels plus triangles.
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple, Union

import cv2
import numpy as np

from jface.core.face_model import CROP_SIZE

Size = Union[int, Tuple[int, int]]
_WINDOW_MIN_LOG2 = 1  # smallest candidate window: 2 x 2 pixels


def _hw(size: Size, background: Optional[np.ndarray]) -> Tuple[int, int]:
  if background is not None:
    background = np.asarray(background)
    if background.ndim != 3 or background.shape[2] != 3 or background.dtype != np.uint8:
      raise ValueError(f"background must be (H, W, 3) uint8, got shape {background.shape} dtype {background.dtype}")
    return int(background.shape[0]), int(background.shape[1])
  if isinstance(size, (int, np.integer)):
    return int(size), int(size)
  h, w = size
  return int(h), int(w)


def _check_mesh(vertices: np.ndarray, tri: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
  vertices = np.asarray(vertices)
  tri = np.asarray(tri)
  if vertices.ndim != 2 or vertices.shape[1] != 3:
    raise ValueError(f"vertices must be (N, 3), got shape {vertices.shape}")
  if tri.ndim != 2 or tri.shape[1] != 3:
    raise ValueError(f"tri must be (T, 3), got shape {tri.shape}")
  if tri.size and (tri.min() < 0 or tri.max() >= len(vertices)):
    raise ValueError(f"tri indexes vertices outside [0, {len(vertices)})")
  return vertices.astype(np.float64), tri.astype(np.int64)


def vertex_normals(vertices: np.ndarray, tri: np.ndarray) -> np.ndarray:
  """(N, 3) unit normals, area-weighted mean of the incident face normals, oriented towards +z (the viewer).

  Vertices in no triangle get (0, 0, 1).
  """
  vertices, tri = _check_mesh(vertices, tri)
  v0, v1, v2 = (vertices[tri[:, i]] for i in range(3))
  fn = np.cross(v1 - v0, v2 - v0)  # length = 2 * area
  n = len(vertices)
  acc = np.stack([np.bincount(tri.ravel(), weights=np.repeat(fn[:, k], 3), minlength=n) for k in range(3)], -1)
  norm = np.sqrt(np.einsum("ij,ij->i", acc, acc))
  empty = norm == 0
  acc[empty] = (0.0, 0.0, 1.0)
  norm[empty] = 1.0
  # Unit length, and turned towards the viewer (+z) so that any winding shades the same.
  return acc * (np.where(acc[:, 2] < 0, -1.0, 1.0) / norm)[:, None]


def shade(vertices: np.ndarray, tri: np.ndarray, colors: np.ndarray,
          light_dir: Sequence[float] = (0.0, 0.0, 1.0), ambient: float = 0.35,
          diffuse: Optional[float] = None) -> np.ndarray:
  """Lambertian per-vertex colours (N, 3) in [0, 1]: ``colors * (ambient + diffuse * max(0, n . l))``.

  ``diffuse`` defaults to ``1 - ambient``; ``light_dir`` is towards the light, crop frame (y down, z to viewer).
  """
  light = np.asarray(light_dir, np.float64)
  if light.shape != (3,) or not np.all(np.isfinite(light)) or np.linalg.norm(light) == 0:
    raise ValueError(f"light_dir must be a finite non-zero 3-vector, got {light_dir!r}")
  light = light / np.linalg.norm(light)
  diffuse = 1.0 - ambient if diffuse is None else diffuse
  lam = np.maximum(vertex_normals(vertices, tri) @ light, 0.0)
  return np.clip(np.asarray(colors, np.float64) * (ambient + diffuse * lam)[:, None], 0.0, 1.0)


def rasterize(vertices: np.ndarray, tri: np.ndarray, height: int, width: int, cull: int = 0):
  """Z-buffer visibility of a triangle mesh.

  Args:
    vertices: (N, 3) crop/image coordinates (1-based pixel centres, y down, larger z nearer).
    tri: (T, 3) int vertex ids.
    height, width: raster size.
    cull: 0 draws every triangle; +1 / -1 skips triangles whose signed image-plane area
      ``(p1 - p0) x (p2 - p0)`` (x right, y down) is positive / negative. A closed mesh wound
      counter-clockwise seen from outside in a y-up model frame (``jface.core.synthetic``) is seen from its front
      with negative area here, so ``cull=+1`` drops its back faces (about half the work).
  Returns:
    pix (F,) flat pixel ids ``r * width + c`` of the covered pixels, face (F,) winning triangle id,
    bary (F, 3) barycentric weights of its three vertices at the pixel centre, depth (F,) interpolated z.
  """
  vertices, tri = _check_mesh(vertices, tri)
  empty = (np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros((0, 3)), np.zeros(0))
  if len(tri) == 0:
    return empty
  xy = vertices[:, :2] - 1.0  # 0-based pixel-centre coordinates: column, row
  z = vertices[:, 2]
  p0, p1, p2 = xy[tri[:, 0]], xy[tri[:, 1]], xy[tri[:, 2]]
  area = (p1[:, 0] - p0[:, 0]) * (p2[:, 1] - p0[:, 1]) - (p1[:, 1] - p0[:, 1]) * (p2[:, 0] - p0[:, 0])
  lo = np.ceil(np.minimum(np.minimum(p0, p1), p2) - 1e-9)
  hi = np.floor(np.maximum(np.maximum(p0, p1), p2) + 1e-9)
  lim = np.array([width - 1, height - 1], np.float64)
  lo = np.maximum(lo, 0.0)
  hi = np.minimum(hi, lim)
  finite = np.all(np.isfinite(vertices), axis=1)[tri].all(axis=1)
  ok = finite & (np.abs(area) > 1e-12) & np.all(hi >= lo, axis=1)
  if cull not in (0, 1, -1):
    raise ValueError(f"cull must be 0, 1 or -1, got {cull!r}")
  if cull:
    ok &= np.sign(area) != cull
  ids = np.nonzero(ok)[0]
  if len(ids) == 0:
    return empty
  lo, hi = lo[ids].astype(np.int64), hi[ids].astype(np.int64)
  q0, q1, q2, inv = p0[ids], p1[ids], p2[ids], 1.0 / area[ids]
  # Edge functions as planes w_i(x, y) = a_i x + b_i y + c_i, normalised by the signed area (any winding):
  # w_i is the barycentric weight of vertex i, evaluated at the window's corner (lo) plus offsets.
  coef = []
  for qa, qb in ((q1, q2), (q2, q0)):
    a = (qa[:, 1] - qb[:, 1]) * inv
    b = (qb[:, 0] - qa[:, 0]) * inv
    c = (qa[:, 0] * qb[:, 1] - qa[:, 1] * qb[:, 0]) * inv
    coef.append((a, b, a * lo[:, 0] + b * lo[:, 1] + c))
  ext = hi - lo + 1
  # Square windows with power-of-two sides >= WINDOW_MIN: few buckets (numpy call overhead dominates).
  side = np.maximum(np.max(ext, axis=1), 1)
  key = np.maximum(np.ceil(np.log2(side)).astype(np.int64), _WINDOW_MIN_LOG2)
  win = np.stack([1 << key, 1 << key], axis=-1)
  order = np.argsort(key, kind="stable")
  bounds = np.flatnonzero(np.diff(key[order])) + 1
  all_pix, all_face, all_bary = [], [], []
  # The candidate tests run in float32 (memory bound); edges are inclusive with a small tolerance so that
  # a pixel centre on an edge shared by two triangles is never dropped (the z-test picks one).
  eps = np.float32(-2e-6)
  coef = [tuple(v.astype(np.float32) for v in abc) for abc in coef]
  for sel in np.split(order, bounds):
    kx, ky = int(win[sel[0], 0]), int(win[sel[0], 1])
    oy, ox = np.divmod(np.arange(kx * ky), kx)
    oxf, oyf = ox.astype(np.float32), oy.astype(np.float32)
    (a0, b0, c0), (a1, b1, c1) = ((a[sel, None], b[sel, None], c[sel, None]) for a, b, c in coef)
    w0 = c0 + a0 * oxf + b0 * oyf
    w1 = c1 + a1 * oxf + b1 * oyf
    inside = (w0 >= eps) & (w1 >= eps) & (w0 + w1 <= 1 - eps)
    # A pixel inside the triangle is inside its bounding box; only the image border needs checking.
    r, c = np.nonzero(inside)
    px, py = lo[sel[r], 0] + ox[c], lo[sel[r], 1] + oy[c]
    keep = (px < width) & (py < height)
    r, c, px, py = r[keep], c[keep], px[keep], py[keep]
    if len(r) == 0:
      continue
    u0, u1 = w0[r, c].astype(np.float64), w1[r, c].astype(np.float64)
    all_bary.append(np.stack([u0, u1, 1.0 - u0 - u1], axis=-1))
    all_pix.append(py * width + px)
    all_face.append(ids[sel[r]])
  if not all_pix:
    return empty
  pix, face, bary = np.concatenate(all_pix), np.concatenate(all_face), np.concatenate(all_bary)
  zf = z[tri[face]]
  depth = bary[:, 0] * zf[:, 0] + bary[:, 1] * zf[:, 1] + bary[:, 2] * zf[:, 2]
  # One int64 sort by (pixel, depth rank): depth is quantised monotonically to 31 bits over its range
  # (ties are resolved by fragment order, deterministically); the last fragment of each pixel is nearest.
  lo_z, span = depth.min(), depth.max() - depth.min()
  q = np.zeros(len(depth), np.int64) if span <= 0 else ((depth - lo_z) * ((2 ** 31 - 1) / span)).astype(np.int64)
  order = np.argsort(pix * 2 ** 31 + q, kind="stable")
  pix_s = pix[order]
  last = np.ones(len(order), bool)
  last[:-1] = pix_s[1:] != pix_s[:-1]
  keep = order[last]
  return pix[keep], face[keep], bary[keep], depth[keep]


def render(vertices: np.ndarray, tri: np.ndarray, colors: np.ndarray, size: Size = CROP_SIZE,
           light_dir: Sequence[float] = (0.0, 0.0, 1.0), ambient: float = 0.35,
           background: Optional[np.ndarray] = None, diffuse: Optional[float] = None,
           return_depth: bool = False, cull: int = 0):
  """Renders a Lambert-shaded mesh.

  Args:
    vertices: (N, 3) crop coordinates (x right, y down, 1-based pixel centres; larger z = nearer).
    tri: (T, 3) int vertex ids (any winding).
    colors: (N, 3) float albedo in [0, 1] (RGB, or whatever channel order ``background`` uses).
    size: output side, or (H, W); ignored when ``background`` is given.
    light_dir: (3,) direction towards the light, crop frame (y down, z towards the viewer).
    ambient, diffuse: ``colour = albedo * (ambient + diffuse * max(0, n . l))``; diffuse defaults to 1 - ambient.
    background: (H, W, 3) uint8 image under the mesh, or None for black.
    return_depth: also return the (H, W) float depth buffer (-inf where empty).
    cull: back-face culling by the sign of the projected area, see ``rasterize`` (0 = off).
  Returns:
    (H, W, 3) uint8 image (and the depth buffer if ``return_depth``).
  """
  h, w = _hw(size, background)
  colors = np.asarray(colors)
  if colors.shape != (len(vertices), 3):
    raise ValueError(f"colors must be (N, 3) = ({len(vertices)}, 3), got shape {colors.shape}")
  out = (np.zeros((h, w, 3), np.uint8) if background is None
         else np.array(background, dtype=np.uint8, copy=True))
  pix, face, bary, depth = rasterize(vertices, tri, h, w, cull)
  if len(pix):
    vcol = shade(vertices, tri, colors, light_dir, ambient, diffuse)
    col = np.einsum("fk,fkc->fc", bary, vcol[np.asarray(tri)[face]])
    out.reshape(-1, 3)[pix] = np.clip(np.rint(col * 255.0), 0, 255).astype(np.uint8)
  if return_depth:
    zbuf = np.full(h * w, -np.inf)
    zbuf[pix] = depth
    return out, zbuf.reshape(h, w)
  return out


def draw_mesh_overlay(image: np.ndarray, vertices: np.ndarray, tri: np.ndarray, alpha: float = 0.6,
                      color: Sequence[float] = (0.75, 0.8, 1.0),
                      light_dir: Sequence[float] = (0.0, 0.0, 1.0)) -> np.ndarray:
  """Blends a shaded, z-buffered mesh over an image (visualisation of a fitted 3DMM).

  Args:
    image: (H, W, 3) uint8.
    vertices: (N, 3) image coordinates (x right, y down, 1-based pixel centres, larger z nearer), e.g.
      ``jface.core.crop.crop_to_image(geometry.dense_vertices(...), roi_box)``.
    tri: (T, 3) int vertex ids.
    alpha: opacity of the mesh.
    color: RGB albedo in [0, 1] of the whole mesh.
  Returns:
    (H, W, 3) uint8 copy of ``image`` with the mesh blended where it covers a pixel.
  """
  image = np.asarray(image)
  if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
    raise ValueError(f"image must be (H, W, 3) uint8, got shape {image.shape} dtype {image.dtype}")
  h, w = image.shape[:2]
  vertices, tri = _check_mesh(vertices, tri)
  out = image.copy()
  pix, face, bary, _ = rasterize(vertices, tri, h, w)
  if len(pix) == 0:
    return out
  # Only the vertices of visible triangles need normals/shading, but normals need all their faces: compute all.
  vcol = shade(vertices, tri, np.broadcast_to(np.asarray(color, np.float64), (len(vertices), 3)),
               light_dir, ambient=0.25, diffuse=0.85)
  col = np.einsum("fk,fkc->fc", bary, vcol[tri[face]]) * 255.0
  flat = out.reshape(-1, 3)
  flat[pix] = np.clip(np.rint((1.0 - alpha) * flat[pix] + alpha * col), 0, 255).astype(np.uint8)
  return out


def draw_landmarks(image: np.ndarray, pts: np.ndarray, color: Sequence[int] = (0, 255, 0),
                   radius: float = 1.0, mask: Optional[np.ndarray] = None) -> np.ndarray:
  """Draws filled dots at (K, 2|3) points (x, y: 1-based pixel-centre coordinates, y down; z ignored) on a
  copy of ``image``.

  ``mask`` (K,) bool hides points; non-finite points are skipped.
  """
  image = np.asarray(image)
  if image.ndim != 3 or image.dtype != np.uint8:
    raise ValueError(f"image must be (H, W, C) uint8, got shape {image.shape} dtype {image.dtype}")
  pts = np.asarray(pts, np.float64)
  if pts.ndim != 2 or pts.shape[1] not in (2, 3):
    raise ValueError(f"pts must be (K, 2) or (K, 3), got shape {pts.shape}")
  pts = pts[:, :2]
  out = np.ascontiguousarray(image.copy())
  shift = 4
  scale = 1 << shift
  keep = np.all(np.isfinite(pts), axis=1)
  if mask is not None:
    keep &= np.asarray(mask, bool)
  col = tuple(int(c) for c in color)
  for x, y in pts[keep]:
    cv2.circle(out, (int(round((x - 1) * scale)), int(round((y - 1) * scale))), max(int(round(radius * scale)), 1),
               col, thickness=-1, lineType=cv2.LINE_AA, shift=shift)
  return out
