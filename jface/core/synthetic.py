"""The embedded synthetic face model: a procedural head 3DMM in the BFM's 62-parameter convention (no files).

``face_model()`` builds (deterministically, in about a second, cached) a ``jface.core.face_model.FaceModel`` named
``"synthetic"`` that every jface function accepts unchanged:

* Mesh: a head (cranium, face, jaw, chin, neck, brow ridge, cheekbones, nose, lips, eye sockets with eyeballs,
  ears) written as a smooth-union signed distance function (``head_sdf``) and shrink-wrapped by a
  latitude/longitude sphere grid cast from a point inside the head (denser over the face): 4886 vertices,
  9336 triangles, closed, wound counter-clockwise seen from outside (so renderers may cull back faces:
  ``jface.core.render.render(..., cull=+1)``). Along the mouth line 4 extra rings coincide with the lip crease (a
  closed "mouth band", merged into one ring outside the mouth) that the jaw-open expression pulls apart into
  the mouth interior (teeth row, dark throat).
* 68 landmark vertices in iBUG-68 order (0-16 jaw contour from the subject's right ear, i.e. image left in a
  frontal view, 17-26 brows, 27-35 nose, 36-47 eyes, 48-67 mouth); the inner-lip points sit on the band's
  edge rings, so they part when the mouth opens.
* 40 identity modes: semantic smooth deformations (head width/height/depth, jaw, chin, nose, eye spacing/size,
  mouth, lips, brows, cheeks, forehead, ears) followed by random symmetric/antisymmetric radial-basis
  fields, Gram-Schmidt orthogonalised over the dense vertices in that order; mode ``k`` has coefficient std
  ``SHAPE_STD[k] = 6e5 / (k + 1)`` (BFM-like magnitudes) and moves the face by a few mm per std.
* 10 expression modes (``EXPRESSIONS``), in "natural" units (1 = a full expression, e.g. eyes fully closed,
  mouth wide open); coefficient std 0.2-0.5 as the BFM's; localised, hence nearly orthogonal.
* Per-vertex albedo from soft region masks (``face_regions``): skin, hair, brows, lips, mouth interior,
  teeth, sclera, iris, pupil, eye liner, nostrils, cheeks. ``albedo(...)`` recolours them.

Units and frame are the BFM's (3DDFA): model units ~1e5 per 10 cm (a head ~1.5e5 wide), x to the subject's
left (image right in a frontal view), y up, z out of the face (the nose tip has the largest z); the origin is
inside the head. Pose: ``fR = f * angles_to_matrix(yaw, pitch, roll)`` with ``f ~ 5.2e-4`` (the jaw is
~75 px wide in the 120 px crop), ``t`` puts the landmarks' centroid near the crop centre and at z = 0.
``sample_params`` draws raw parameters from the distribution whose mean/std are ``param_mean``/``param_std``.
"""
from __future__ import annotations

import functools
from typing import Dict, Optional, Tuple

import jax.numpy as jnp
import numpy as np

from jface.core.face_model import CROP_SIZE, FaceModel, N_EXP, N_LANDMARKS, N_SHP

UNIT = 1e5  # model units per design unit (design unit ~ 10 cm, as BFM coordinates / 1e5)
F_MEAN = 5.2e-4  # mean projection scale (pixels of the 120 px crop per model unit)
SHAPE_STD = 6e5 / np.arange(1, N_SHP + 1)  # identity coefficient std, BFM-like (5.9e5 ... 1.4e4 there)
EXPRESSIONS = ("jaw_open", "smile", "brow_raise", "eyes_close", "pucker", "frown", "jaw_left",
               "smile_asym", "wink", "upper_lip_raise")
# How sample_params draws expressions (natural units, 1 = full): see _sample_expressions.
_EXP_STD = dict(jaw_open=0.35, smile=0.45, brow_raise=0.4, pucker=0.3, frown=0.3, jaw_left=0.2,
                smile_asym=0.2, upper_lip_raise=0.25, eye=0.3)
_N_STATS = 20000  # samples behind the empirical param_mean/std of the pose and expression parameters

CENTER = np.array([0.0, 0.0, 0.15])  # the point the mesh rays are cast from (inside the head)
MOUTH_Y = -0.41  # design height of the mouth line
MOUTH_HALF_WIDTH = 0.25
BAND = (0.0, 0.25, 0.5, 0.75, 1.0)  # band-ring openings: 0 = upper inner lip, 1 = lower inner lip
EYE_X, EYE_Y, EYE_HALF_WIDTH = 0.315, 0.262, 0.12  # eye centres (+-x), almond half-width
EYE_UPPER, EYE_LOWER = 0.048, 0.036  # lid heights above/below the eye centre line
JAW_PIVOT = np.array([0.0, 0.12, 0.0])  # y, z of the jaw hinge (x unused)
JAW_OPEN_RAD = 0.3  # jaw rotation at jaw_open = 1


# ------------------------------------------------------------------------------ signed distances

def _ellipsoid(x, y, z, c, r):
  """Approximate signed distance to an axis-aligned ellipsoid (Quilez's bound) at points (x, y, z)."""
  qx, qy, qz = (x - c[0]) / r[0], (y - c[1]) / r[1], (z - c[2]) / r[2]
  k0 = np.sqrt(qx * qx + qy * qy + qz * qz)
  qx, qy, qz = qx / r[0], qy / r[1], qz / r[2]
  k1 = np.sqrt(qx * qx + qy * qy + qz * qz)
  return k0 * (k0 - 1.0) / np.maximum(k1, 1e-9)


def _tilted_ellipsoid(x, y, z, c, r, tilt):
  """Ellipsoid rotated by ``tilt`` radians about the x axis (its +y axis leans towards +z for tilt > 0)."""
  dy, dz = y - c[1], z - c[2]
  ct, st = np.cos(tilt), np.sin(tilt)
  return _ellipsoid(x - c[0], ct * dy - st * dz, st * dy + ct * dz, (0.0, 0.0, 0.0), r)


def _neck(x, y, z, r=0.44, zc=-0.08, y_top=-0.2, y_bottom=-2.0):
  """Vertical capped cylinder."""
  return np.maximum(np.hypot(x, z - zc) - r, np.maximum(y - y_top, y_bottom - y))


def _smin(a, b, k):
  """Polynomial smooth minimum (smooth union of distances) with blend radius k."""
  h = np.clip(0.5 + 0.5 * (b - a) / k, 0.0, 1.0)
  return b * (1.0 - h) + a * h - k * h * (1.0 - h)


def _smax(a, b, k):
  return -_smin(-a, -b, k)


def head_sdf(p: np.ndarray) -> np.ndarray:
  """Signed distance (<0 inside) of the neutral synthetic head at points p (..., 3), design units."""
  x, y, z = p[..., 0], p[..., 1], p[..., 2]
  ax = np.abs(x)  # left/right symmetric pairs
  E = _ellipsoid  # noqa: N806
  d = E(x, y, z, (0.0, 0.30, -0.04), (0.75, 0.93, 0.97))  # cranium
  d = _smin(d, E(x, y, z, (0.0, -0.02, 0.22), (0.67, 0.62, 0.79)), 0.12)  # mid face
  d = _smin(d, E(x, y, z, (0.0, -0.44, 0.17), (0.60, 0.45, 0.77)), 0.10)  # jaw
  d = _smin(d, E(x, y, z, (0.0, -0.71, 0.70), (0.25, 0.18, 0.26)), 0.08)  # chin
  d = _smin(d, _neck(x, y, z), 0.12)
  d = _smin(d, E(ax, y, z, (0.2, 0.43, 0.84), (0.25, 0.09, 0.15)), 0.1)  # brow ridge
  d = _smin(d, E(ax, y, z, (0.40, 0.05, 0.64), (0.18, 0.12, 0.2)), 0.1)  # cheekbones
  d = _smin(d, E(ax, y, z, (0.70, 0.10, -0.09), (0.08, 0.24, 0.15)), 0.08)  # ears
  # Eye sockets (smooth subtraction), then eyeballs.
  d = _smax(d, -E(ax, y, z, (EYE_X, EYE_Y + 0.01, 1.0), (0.16, 0.10, 0.17)), 0.06)
  d = _smin(d, E(ax, y, z, (EYE_X, EYE_Y, 0.795), (0.125, 0.125, 0.125)), 0.03)
  # Nose: bridge (leaning forward), tip, wings.
  d = _smin(d, _tilted_ellipsoid(x, y, z, (0.0, 0.06, 1.04), (0.085, 0.24, 0.14), 0.6), 0.07)
  d = _smin(d, E(x, y, z, (0.0, -0.065, 1.185), (0.09, 0.08, 0.085)), 0.05)
  d = _smin(d, E(ax, y, z, (0.1, -0.11, 1.08), (0.075, 0.06, 0.075)), 0.05)
  # Lips: upper and lower meet at MOUTH_Y with a sharp crease.
  lips = np.minimum(E(x, y, z, (0.0, MOUTH_Y + 0.075, 0.985), (0.26, 0.08, 0.12)),
                    E(x, y, z, (0.0, MOUTH_Y - 0.07, 0.965), (0.23, 0.075, 0.12)))
  return _smin(d, lips, 0.035)


def _cast(dirs: np.ndarray, sdf=head_sdf, r_max: float = 2.6, step: float = 0.03, iters: int = 12):
  """Distance from CENTER to the first exit of the surface along unit directions (M, 3): a march with
  ``step`` brackets it, bisection narrows it to ``step / 2**iters``, a secant step finishes."""
  r = np.arange(0.3, r_max, step)
  f = sdf(CENTER + r[:, None, None] * dirs[None])  # (R, M)
  outside = f > 0
  first = np.argmax(outside, axis=0)
  if not np.all(outside[first, np.arange(len(dirs))]) or np.any(first == 0):
    raise RuntimeError("synthetic head: a ray does not leave the surface within the march")
  lo, hi = r[first - 1], r[first]
  for _ in range(iters):
    mid = 0.5 * (lo + hi)
    out = sdf(CENTER + mid[:, None] * dirs) > 0
    hi, lo = np.where(out, mid, hi), np.where(out, lo, mid)
  f_lo, f_hi = sdf(CENTER + lo[:, None] * dirs), sdf(CENTER + hi[:, None] * dirs)
  return lo + (hi - lo) * np.clip(-f_lo / np.maximum(f_hi - f_lo, 1e-12), 0.0, 1.0)


def _dirs(theta, phi):
  return np.stack([np.cos(phi) * np.sin(theta), np.sin(phi), np.cos(phi) * np.cos(theta)], axis=-1)


def _inverse_cdf(density, lo, hi, u):
  grid = np.linspace(lo, hi, 4001)
  cdf = np.concatenate([[0.0], np.cumsum(0.5 * (density(grid[1:]) + density(grid[:-1])) * np.diff(grid))])
  return np.interp(u * cdf[-1], cdf, grid)


def _smoothstep(e0, e1, x):
  t = np.clip((x - e0) / (e1 - e0), 0.0, 1.0)
  return t * t * (3.0 - 2.0 * t)


def _gauss(p, c, s):
  """exp(-|(p - c) / s|^2 / 2) for p (N, 3); c, s broadcastable 3-vectors."""
  return np.exp(-0.5 * np.sum(((p - np.asarray(c)) / np.asarray(s)) ** 2, axis=-1))


# ------------------------------------------------------------------------------------ the mesh

N_COLS = 74
N_ROWS = 62  # before the band rings are inserted


def _grid():
  """Ray angles: columns theta (K,), rows phi (R,), index of the mouth row."""
  u = np.arange(N_COLS) / N_COLS * 2.0 - 1.0  # includes 0 (midline) and -1 (back)
  dens_t = lambda t: 0.45 + np.exp(-(np.abs(t) / np.radians(62.0)) ** 4)  # noqa: E731
  half = _inverse_cdf(dens_t, 0.0, np.pi, np.abs(u))
  theta = np.sign(u) * half
  theta[0] = -np.pi
  phi_lo, phi_hi = np.radians(-86.0), np.radians(86.0)
  dens_p = lambda f: 0.35 + np.exp(-(np.abs(f - np.radians(0.0)) / np.radians(38.0)) ** 4)  # noqa: E731
  phi = _inverse_cdf(dens_p, phi_lo, phi_hi, np.linspace(0.0, 1.0, N_ROWS))
  # The mouth row sits exactly on the lip crease (the local minimum of the midline radius).
  cand = np.radians(np.linspace(-30.0, -18.0, 241))
  rad = _cast(_dirs(np.zeros_like(cand), cand), step=0.01)
  mid = np.arange(1, len(cand) - 1)
  mins = mid[(rad[mid] < rad[mid - 1]) & (rad[mid] <= rad[mid + 1])]
  phi_m = cand[mins[np.argmin(np.abs(cand[mins] - np.radians(-24.0)))]] if len(mins) else np.radians(-24.0)
  i_m = int(np.argmin(np.abs(phi - phi_m)))
  phi[i_m] = phi_m
  return theta, phi, i_m


@functools.lru_cache(maxsize=None)
def _mesh():
  """Rest mesh (design units) and per-vertex bookkeeping. Cached."""
  theta, phi, i_m = _grid()
  n_band = len(BAND) - 1  # extra rings
  rows = np.concatenate([phi[:i_m], np.full(len(BAND), phi[i_m]), phi[i_m + 1:]])
  # Rows go from the neck (bottom) up: below the mouth beta = 1 (moves with the jaw), the band rings from the
  # lower inner lip (1) to the upper inner lip (0), above the mouth 0.
  beta_row = np.concatenate([np.ones(i_m), np.asarray(BAND)[::-1], np.zeros(len(phi) - i_m - 1)])
  tt, pp = np.meshgrid(theta, rows)
  dirs = _dirs(tt, pp).reshape(-1, 3)
  dirs = np.concatenate([dirs, [[0.0, 1.0, 0.0], [0.0, -1.0, 0.0]]])  # top and bottom poles
  r = _cast(dirs)
  pts = CENTER + r[:, None] * dirs
  n_rows, k = len(rows), len(theta)
  idx = np.arange(n_rows * k).reshape(n_rows, k)
  a, b = idx[:-1], np.roll(idx, -1, axis=1)[:-1]
  c, d = idx[1:], np.roll(idx, -1, axis=1)[1:]
  tri = np.concatenate([np.stack([a, b, d], -1).reshape(-1, 3), np.stack([a, d, c], -1).reshape(-1, 3)])
  top, bottom = idx[-1], idx[0]
  fans = [np.stack([top, np.roll(top, -1), np.full(k, n_rows * k)], -1),
          np.stack([np.full(k, n_rows * k + 1), np.roll(bottom, -1), bottom], -1)]
  # theta grows towards +x at the front and rows go up, so (a, b, d) is counter-clockwise seen from outside
  # (outward normals); the pole fans follow suit.
  tri = np.concatenate([tri] + fans)
  # Outside the mouth opening the band rings are merged into the lowest one (no seam in the skin there);
  # the merged-away vertices are left unreferenced.
  lowest = idx[i_m]
  shut = _mouth_lens(pts[lowest, 0]) <= 0.0  # (K,) columns where the mouth never opens
  remap = np.arange(len(pts))
  for ring in range(i_m + 1, i_m + n_band + 1):
    remap[idx[ring][shut]] = lowest[shut]
  tri = remap[tri]
  # The triangles between the coincident band rings have zero area until the mouth opens.
  tri = tri[(tri[:, 0] != tri[:, 1]) & (tri[:, 1] != tri[:, 2]) & (tri[:, 0] != tri[:, 2])].astype(np.int32)
  beta = np.concatenate([np.repeat(beta_row, k), [0.0, 1.0]])
  band_mask = np.concatenate([np.repeat((np.arange(n_rows) >= i_m) & (np.arange(n_rows) <= i_m + n_band), k),
                              [False, False]])
  return dict(pts=pts, tri=tri, beta=beta, band=band_mask)


# ------------------------------------------------------------------------------------- layout

def _eye_lids(x, side):
  """Upper and lower lid heights (design y) of the eye on ``side`` (+1 subject's left = +x) at x."""
  s = (x - side * EYE_X) / EYE_HALF_WIDTH
  inner = np.clip(1.0 - s * s, 0.0, 1.0)
  # Almond: slightly higher towards the inner corner of the upper lid.
  skew = 1.0 + 0.12 * np.clip(-side * s, -1, 1)
  return EYE_Y + EYE_UPPER * inner ** 0.75 * skew, EYE_Y - EYE_LOWER * inner ** 0.9


def _lip_heights(x):
  """Heights of the upper lip top and lower lip bottom above/below the mouth line at x (>= 0)."""
  s = np.clip(np.abs(x) / MOUTH_HALF_WIDTH, 0.0, 1.0)
  bow = 1.0 - 0.25 * np.exp(-(x / 0.03) ** 2) + 0.15 * np.exp(-((np.abs(x) - 0.07) / 0.04) ** 2)
  up = 0.062 * np.sqrt(1.0 - s ** 2) * bow
  low = 0.085 * (1.0 - s ** 2) ** 0.65
  return up, low


def _front_points(xy: np.ndarray) -> np.ndarray:
  """(M, 2) design (x, y) -> (M, 3) surface points seen head-on: the first surface hit along -z."""
  xy = np.asarray(xy, np.float64).reshape(-1, 2)
  z = np.arange(2.0, 0.0, -0.004)
  q = np.concatenate([np.broadcast_to(xy[None], (len(z),) + xy.shape),
                      np.broadcast_to(z[:, None, None], (len(z), len(xy), 1))], axis=-1)
  i = np.argmax(head_sdf(q) < 0, axis=0)
  return np.concatenate([xy, z[np.maximum(i - 1, 0), None] - 0.002], axis=-1)


def _landmark_targets():
  """Design positions of the 68 landmarks: (68, 3) targets and a (68,) code: 0 a surface vertex nearest the
  target, 1 / 2 / 3 the upper-edge / lower-edge / middle band ring (inner lips), 4 the lowest ring (corners)."""
  pts, code = np.zeros((N_LANDMARKS, 3)), np.zeros(N_LANDMARKS, np.int32)
  # Jaw contour 0..16: from the subject's right ear (-x) down the jaw line to the chin and up to the left
  # ear; cast radially from CENTER through guide points so that they lie on the side of the jaw.
  jaw = [(0.72, 0.17, 0.12), (0.71, 0.04, 0.22), (0.69, -0.10, 0.32), (0.66, -0.25, 0.42),
         (0.61, -0.40, 0.52), (0.53, -0.55, 0.62), (0.42, -0.69, 0.72), (0.25, -0.80, 0.84), (0.0, -0.86, 0.95)]
  guide = np.array([(-x, y, z) for x, y, z in jaw] + [(x, y, z) for x, y, z in jaw[-2::-1]])
  d = guide - CENTER
  d /= np.linalg.norm(d, axis=-1, keepdims=True)
  pts[:17] = CENTER + _cast(d)[:, None] * d
  front = {}  # landmark id -> design (x, y), resolved on the surface seen head-on
  brow = [(0.50, 0.365), (0.415, 0.415), (0.32, 0.435), (0.225, 0.425), (0.13, 0.395)]
  for i, (x, y) in enumerate(brow):
    front[17 + i], front[26 - i] = (-x, y), (x, y)
  for i, y in enumerate((0.25, 0.15, 0.05, -0.055)):
    front[27 + i] = (0.0, y)
  for i, (x, y) in enumerate([(-0.10, -0.13), (-0.05, -0.155), (0.0, -0.165), (0.05, -0.155), (0.10, -0.13)]):
    front[31 + i] = (x, y)
  # Eyes: side -1 (image left) is 36 outer corner, 37, 38 upper lid, 39 inner corner, 40, 41 lower lid;
  # side +1 mirrors it: 45 outer, 44, 43 upper, 42 inner, 47, 46 lower.
  for side, ids in ((-1, (36, 37, 38, 39, 40, 41)), (1, (45, 44, 43, 42, 47, 46))):
    xc, hw = side * EYE_X, EYE_HALF_WIDTH
    xs = np.array([xc + side * hw * 0.97, xc + side * hw / 3, xc - side * hw / 3, xc - side * hw * 0.97])
    up, low = _eye_lids(xs, side)
    front[ids[0]], front[ids[3]] = (xs[0], EYE_Y), (xs[3], EYE_Y)
    front[ids[1]], front[ids[2]] = (xs[1], up[1]), (xs[2], up[2])
    front[ids[4]], front[ids[5]] = (xs[2], low[2]), (xs[1], low[1])
  up_x = np.array([-0.16, -0.07, 0.0, 0.07, 0.16])
  low_x = np.array([0.16, 0.08, 0.0, -0.08, -0.16])
  hu, hl = _lip_heights(up_x)[0], _lip_heights(low_x)[1]
  for i in range(5):
    front[49 + i] = (up_x[i], MOUTH_Y + hu[i] * 0.92)
    front[55 + i] = (low_x[i], MOUTH_Y - hl[i] * 0.92)
  ids = sorted(front)
  pts[ids] = _front_points(np.array([front[i] for i in ids]))
  band = {48: (-MOUTH_HALF_WIDTH * 0.98, 4), 54: (MOUTH_HALF_WIDTH * 0.98, 4), 60: (-0.2, 3), 64: (0.2, 3),
          61: (-0.09, 1), 62: (0.0, 1), 63: (0.09, 1), 65: (0.09, 2), 66: (0.0, 2), 67: (-0.09, 2)}
  for i, (x, c) in band.items():
    pts[i], code[i] = (x, MOUTH_Y, 0.0), c
  return pts, code


def _keypoints(mesh) -> np.ndarray:
  targets, code = _landmark_targets()
  pts, beta, band = mesh["pts"], mesh["beta"], mesh["band"]
  free = ~band  # ordinary vertices (band rings excluded)
  out = np.zeros(N_LANDMARKS, np.int32)
  for j in range(N_LANDMARKS):
    if code[j] == 0:
      cand = np.nonzero(free)[0]
      out[j] = cand[np.argmin(np.linalg.norm(pts[cand] - targets[j], axis=-1))]
    else:  # a band ring: 1 upper edge, 2 lower edge, 3 the middle ring, 4 the lowest (= merged) ring
      b = {1: 0.0, 2: 1.0, 3: 0.5, 4: 1.0}[int(code[j])]
      cand = np.nonzero(band & (beta == b) & (pts[:, 2] > 0.5))[0]
      out[j] = cand[np.argmin(np.abs(pts[cand, 0] - targets[j, 0]))]
  return out


# --------------------------------------------------------------------------------------- albedo

SKIN = (0.86, 0.66, 0.55)
DEFAULT_COLORS = dict(skin=SKIN, hair=(0.28, 0.19, 0.12), brows=(0.24, 0.16, 0.11), lips=(0.74, 0.38, 0.38),
                      mouth=(0.22, 0.06, 0.07), teeth=(0.92, 0.9, 0.82), sclera=(0.93, 0.91, 0.88),
                      iris=(0.33, 0.22, 0.13), pupil=(0.03, 0.03, 0.03), liner=(0.16, 0.1, 0.08),
                      nostrils=(0.35, 0.2, 0.17), cheeks=(0.88, 0.52, 0.48))
REGIONS = tuple(DEFAULT_COLORS)


@functools.lru_cache(maxsize=None)
def _regions() -> Dict[str, np.ndarray]:
  mesh = _mesh()
  p, beta, band = mesh["pts"], mesh["beta"], mesh["band"]
  x, y, z = p[:, 0], p[:, 1], p[:, 2]
  front = _smoothstep(0.55, 0.75, z)
  reg = {}
  # Hair: above a rounded hairline in front, over the top and the back of the head down to the nape.
  hairline = 0.70 - 0.32 * (np.abs(x) / 0.75) ** 2.2
  hair_front = _smoothstep(hairline - 0.02, hairline + 0.03, y)
  back = _smoothstep(0.25, -0.05, z) * _smoothstep(-0.30, -0.12, y)
  side = _smoothstep(0.58, 0.66, np.abs(x)) * _smoothstep(0.28, 0.36, y)
  ears = _smoothstep(0.16, 0.12, np.abs(np.abs(x) - 0.72)) * _smoothstep(0.30, 0.26, np.abs(y - 0.1))
  reg["hair"] = np.clip(np.maximum(np.maximum(hair_front, back), side) * (1.0 - 0.9 * ears), 0, 1)
  # Brows: a tapered arc over each eye.
  ax = np.abs(x)
  t = np.clip((ax - 0.12) / (0.52 - 0.12), 0.0, 1.0)
  yb = 0.395 + 0.15 * t - 0.19 * t * t
  thick = 0.034 * (1.0 - 0.55 * t)
  brow = _smoothstep(thick + 0.012, thick - 0.004, np.abs(y - yb)) * _smoothstep(0.105, 0.125, ax)
  brow *= _smoothstep(0.56, 0.53, ax) * front
  reg["brows"] = brow
  # Eyes (almonds), iris/pupil discs, a dark liner along the upper lid.
  sclera = np.zeros_like(x)
  iris = np.zeros_like(x)
  pupil = np.zeros_like(x)
  liner = np.zeros_like(x)
  for side in (-1, 1):
    up, low = _eye_lids(x, side)
    inside = np.minimum(_smoothstep(-0.004, 0.006, up - y), _smoothstep(-0.004, 0.006, y - low))
    inside *= _smoothstep(1.02, 0.97, np.abs(x - side * EYE_X) / EYE_HALF_WIDTH)
    eye = inside * front
    sclera = np.maximum(sclera, eye)
    rr = np.hypot(x - side * (EYE_X - 0.008 * side), y - (EYE_Y + 0.004))
    iris = np.maximum(iris, eye * _smoothstep(0.052, 0.044, rr))
    pupil = np.maximum(pupil, eye * _smoothstep(0.022, 0.016, rr))
    lid = _smoothstep(0.016, 0.006, np.abs(y - up - 0.006)) * _smoothstep(1.12, 1.0,
                                                                           np.abs(x - side * EYE_X) / EYE_HALF_WIDTH)
    liner = np.maximum(liner, lid * front)
  reg["sclera"], reg["iris"], reg["pupil"], reg["liner"] = sclera, iris, pupil, liner
  # Lips: between the outline curves; band rings inside the mouth are the mouth interior / teeth.
  hu, hl = _lip_heights(np.clip(x, -MOUTH_HALF_WIDTH, MOUTH_HALF_WIDTH))
  inx = _smoothstep(MOUTH_HALF_WIDTH + 0.01, MOUTH_HALF_WIDTH - 0.01, np.abs(x))
  lip_up = _smoothstep(-0.005, 0.008, MOUTH_Y + hu - y) * _smoothstep(-0.01, 0.0, y - MOUTH_Y)
  lip_low = _smoothstep(-0.005, 0.008, y - (MOUTH_Y - hl)) * _smoothstep(-0.01, 0.0, MOUTH_Y - y)
  reg["lips"] = np.maximum(lip_up, lip_low) * inx * front
  lens = _mouth_lens(x)
  inner = band & (beta > 0.0) & (beta < 1.0)
  reg["teeth"] = (inner & (beta == 0.25)) * _smoothstep(0.0, 0.25, lens) * 1.0
  reg["mouth"] = (inner & (beta > 0.25)) * _smoothstep(0.0, 0.2, lens) * 1.0
  reg["lips"] = np.where(inner, np.minimum(reg["lips"], 1.0 - _smoothstep(0.0, 0.2, lens)), reg["lips"])
  reg["nostrils"] = np.maximum(_gauss(p, (-0.055, -0.135, 1.08), (0.028, 0.014, 0.06)),
                               _gauss(p, (0.055, -0.135, 1.08), (0.028, 0.014, 0.06))) * 0.9
  reg["cheeks"] = 0.2 * np.maximum(_gauss(p, (-0.42, -0.12, 0.85), (0.12, 0.09, 0.2)),
                                    _gauss(p, (0.42, -0.12, 0.85), (0.12, 0.09, 0.2)))
  return reg


def face_regions() -> Dict[str, np.ndarray]:
  """Soft (N,) masks in [0, 1] of the albedo regions other than skin; ``albedo`` paints them over the skin in
  the order ``_PAINT_ORDER`` (cheeks, hair, brows, lips, nostrils, mouth, teeth, sclera, iris, pupil, liner)."""
  return {k: v.copy() for k, v in _regions().items()}


_PAINT_ORDER = ("cheeks", "hair", "brows", "lips", "nostrils", "mouth", "teeth", "sclera", "iris", "pupil", "liner")


@functools.lru_cache(maxsize=None)
def _albedo_coefs() -> np.ndarray:
  """(N, 12) weights of (skin, *_PAINT_ORDER) colours: painting the regions in order over the skin is linear
  in the colours, ``albedo = coefs @ colours``."""
  reg = _regions()
  names = ("skin",) + _PAINT_ORDER
  n = len(_mesh()["pts"])
  coefs = np.zeros((n, len(names)))
  coefs[:, 0] = 1.0
  for j, name in enumerate(names[1:], start=1):
    w = reg[name]
    coefs *= (1.0 - w)[:, None]
    coefs[:, j] = w
  return coefs


def albedo(colors: Optional[Dict[str, Tuple[float, float, float]]] = None) -> np.ndarray:
  """(N, 3) per-vertex albedo in [0, 1]: ``DEFAULT_COLORS`` updated with ``colors`` (RGB per region), the
  regions painted over the skin in a fixed order (see ``face_regions``)."""
  cols = dict(DEFAULT_COLORS)
  if colors:
    unknown = set(colors) - set(cols)
    if unknown:
      raise ValueError(f"unknown albedo regions {sorted(unknown)}; known: {', '.join(REGIONS)}")
    cols.update(colors)
  table = np.array([cols[k] for k in ("skin",) + _PAINT_ORDER], np.float64)
  return np.clip(_albedo_coefs() @ table, 0.0, 1.0)


# ---------------------------------------------------------------------------------- deformations

def _mouth_lens(x):
  """Opening profile of the mouth along x: 1 at the centre, 0 at the corners."""
  return np.clip(1.0 - (x / (MOUTH_HALF_WIDTH * 0.96)) ** 2, 0.0, 1.0) ** 0.6


def _jaw_weight(p, beta, band):
  """How much each vertex follows the mandible (0..1): lips part along the band, cheeks stretch."""
  x, y, z = p[:, 0], p[:, 1], p[:, 2]
  lens = _mouth_lens(x)
  # Skin below the line from the mouth corner (|x| = 0.25, y = MOUTH_Y) up to the hinge follows the jaw.
  ax = np.abs(x)
  line_y = MOUTH_Y + np.maximum(ax - MOUTH_HALF_WIDTH, 0.0) * (0.12 - MOUTH_Y) / (0.7 - MOUTH_HALF_WIDTH)
  cheek = _smoothstep(line_y, line_y - 0.22, y)
  # Inside the mouth opening (lens > 0) the band's beta splits upper (0) from lower (1) lip; elsewhere the
  # weight is continuous in space (band rings coincide there).
  w = lens * beta + (1.0 - lens) * cheek
  return w * _smoothstep(-1.7, -0.85, y) * _smoothstep(-0.15, 0.15, z)


def _rot_x_field(p, pivot_y, pivot_z):
  """Displacement per radian of a rotation about the x axis through (y, z) = pivot (chin down and back)."""
  return np.stack([np.zeros(len(p)), -(p[:, 2] - pivot_z), p[:, 1] - pivot_y], axis=-1)


_LIDS = {-1: ((36, 37, 38, 39), (36, 41, 40, 39)), 1: ((42, 43, 44, 45), (42, 47, 46, 45))}


def _eye_close_field(p, side, lm):
  """Displacement at full closure of one eye: the opening collapses onto the lower lid, the lid skin above
  follows. The lids are the polylines through the eye's landmark vertices ``lm`` (68, 3), so that the
  upper-lid landmarks land exactly on the lower lid."""
  x, y, z = p[:, 0], p[:, 1], p[:, 2]
  upper, lower = (lm[list(ids)] for ids in _LIDS[side])
  upper, lower = upper[np.argsort(upper[:, 0])], lower[np.argsort(lower[:, 0])]
  up, low = np.interp(x, upper[:, 0], upper[:, 1]), np.interp(x, lower[:, 0], lower[:, 1])
  inside = (x > upper[0, 0]) & (x < upper[-1, 0])
  gap = np.where(inside, np.maximum(up - low, 0.0), 0.0)
  dy = np.where(y <= low, 0.0, np.where(y <= up, -(y - low), -gap * np.clip(1.0 - (y - up) / 0.1, 0.0, 1.0)))
  dy = np.where(inside, dy, 0.0) * _smoothstep(0.6, 0.75, z)
  return np.stack([np.zeros_like(dy), dy, np.zeros_like(dy)], axis=-1)


def _smile_field(p, side):
  c = np.array([side * MOUTH_HALF_WIDTH, MOUTH_Y, 0.98])
  g = _gauss(p, c, (0.11, 0.1, 0.25))
  ch = _gauss(p, (side * 0.36, -0.12, 0.9), (0.13, 0.11, 0.3))
  lid = _gauss(p, (side * EYE_X, EYE_Y - 0.05, 0.9), (0.09, 0.03, 0.2))
  d = g[:, None] * np.array([side * 0.06, 0.055, -0.035]) + ch[:, None] * np.array([side * 0.01, 0.035, 0.02])
  return d + lid[:, None] * np.array([0.0, 0.012, 0.0])


def _expression_fields(mesh, kp) -> np.ndarray:
  """(N, 3, 10) displacements (design units) of the expressions at coefficient 1."""
  p, beta, band = mesh["pts"], mesh["beta"], mesh["band"]
  x, y, z = p[:, 0], p[:, 1], p[:, 2]
  jaw = _jaw_weight(p, beta, band)
  fields = {}
  open_ = JAW_OPEN_RAD * _rot_x_field(p, JAW_PIVOT[1], JAW_PIVOT[2]) * jaw[:, None]
  inner = band & (beta > 0) & (beta < 1)
  open_[:, 2] -= 0.14 * np.sin(np.pi * beta) * _mouth_lens(x) * inner
  fields["jaw_open"] = open_
  fields["smile"] = _smile_field(p, -1) + _smile_field(p, 1)
  brow = sum(_gauss(p, (s * 0.32, 0.44, 0.85), (0.26, 0.13, 0.35)) for s in (-1, 1))
  fore = _gauss(p, (0.0, 0.62, 0.8), (0.5, 0.2, 0.4))
  fields["brow_raise"] = np.stack([np.zeros_like(x), 0.055 * np.minimum(brow + 0.4 * fore, 1.0),
                                   np.zeros_like(x)], -1) * _smoothstep(0.35, 0.6, z)[:, None]
  lm = p[kp]
  fields["eyes_close"] = _eye_close_field(p, -1, lm) + _eye_close_field(p, 1, lm)
  mouth = _gauss(p, (0.0, MOUTH_Y, 1.0), (0.22, 0.1, 0.3))
  fields["pucker"] = mouth[:, None] * np.stack([-0.12 * x, -0.3 * (y - MOUTH_Y), 0.08 * np.ones_like(x)], -1)
  fr = sum(_gauss(p, (s * 0.16, 0.41, 0.95), (0.1, 0.08, 0.3))[:, None] * np.array([-s * 0.04, -0.015, 0.01])
           for s in (-1, 1))
  fields["frown"] = fr
  fields["jaw_left"] = np.stack([0.07 * jaw, np.zeros_like(x), np.zeros_like(x)], -1)
  fields["smile_asym"] = _smile_field(p, 1) - _smile_field(p, -1)
  fields["wink"] = _eye_close_field(p, -1, lm) - _eye_close_field(p, 1, lm)  # the subject's right eye (image left)
  ul = _gauss(p, (0.0, MOUTH_Y + 0.07, 1.02), (0.18, 0.06, 0.2)) * (1.0 - jaw)
  wings = sum(_gauss(p, (s * 0.1, -0.11, 1.1), (0.06, 0.05, 0.1)) for s in (-1, 1))
  fields["upper_lip_raise"] = (ul[:, None] * np.array([0.0, 0.035, 0.012])
                               + wings[:, None] * np.array([0.0, 0.015, 0.0]))
  return np.stack([fields[k] for k in EXPRESSIONS], axis=-1)


def _identity_fields(mesh, n_random: int) -> np.ndarray:
  """(N, 3, M) candidate identity deformations (design units, arbitrary scale) in the order of importance."""
  p = mesh["pts"]
  x, y, z = p[:, 0], p[:, 1], p[:, 2]
  zero = np.zeros_like(x)
  front = _smoothstep(0.45, 0.7, z)
  low = _smoothstep(0.0, -0.5, y)
  high = _smoothstep(0.0, 0.5, y)
  g = lambda c, s: _gauss(p, c, s)  # noqa: E731
  pair = lambda c, s: g(c, s) + g((-c[0],) + tuple(c[1:]), s)  # noqa: E731
  f = []
  f.append(np.stack([x, zero, zero], -1))  # head width
  f.append(np.stack([zero, y, zero], -1))  # head height
  f.append(np.stack([zero, zero, z - 0.1], -1))  # depth
  f.append(np.stack([x * low, zero, zero], -1))  # jaw width
  f.append(np.stack([zero, (y + 0.2) * low, zero], -1))  # lower face length
  f.append(np.stack([x * high, zero, zero], -1))  # forehead width
  f.append(np.stack([zero, zero, -(y - 0.4) * high * front], -1))  # forehead slope
  nose = g((0.0, 0.02, 1.15), (0.1, 0.2, 0.2))
  f.append(np.stack([zero, zero, nose], -1))  # nose projection
  f.append(np.stack([zero, -nose * _smoothstep(0.25, -0.1, y), zero], -1))  # nose length
  base = g((0.0, -0.1, 1.1), (0.14, 0.07, 0.15))
  f.append(np.stack([x * base, zero, zero], -1))  # nose width
  chin = g((0.0, -0.78, 0.9), (0.25, 0.15, 0.25))
  f.append(np.stack([zero, zero, chin], -1))  # chin projection
  f.append(np.stack([zero, -chin, zero], -1))  # chin height
  eyes = pair((EYE_X, EYE_Y + 0.05, 0.9), (0.13, 0.16, 0.3))
  f.append(np.stack([np.sign(x) * eyes, zero, zero], -1))  # eye spacing
  f.append(np.stack([zero, eyes, zero], -1))  # eye height
  mouth = g((0.0, MOUTH_Y, 1.0), (0.22, 0.12, 0.3))
  f.append(np.stack([x * mouth, zero, zero], -1))  # mouth width
  f.append(np.stack([zero, mouth, zero], -1))  # mouth height
  f.append(np.stack([zero, (y - MOUTH_Y) * mouth, 0.3 * mouth * _smoothstep(0.12, 0.0, np.abs(y - MOUTH_Y))],
                    -1))  # lip thickness
  f.append(np.stack([zero, zero, pair((0.28, 0.44, 0.9), (0.2, 0.08, 0.3))], -1))  # brow ridge
  cheek = pair((0.42, -0.15, 0.85), (0.14, 0.14, 0.3))
  f.append(np.stack([np.sign(x) * cheek, zero, cheek], -1))  # cheek fullness
  bones = pair((0.45, 0.08, 0.75), (0.12, 0.08, 0.3))
  f.append(np.stack([np.sign(x) * bones, zero, 0.5 * bones], -1))  # cheekbones
  f.append(np.stack([zero, zero, g((0.0, 0.26, 1.0), (0.08, 0.08, 0.2))], -1))  # nasal bridge
  size = pair((EYE_X, EYE_Y, 0.9), (0.09, 0.07, 0.2))
  f.append(np.stack([(x - np.sign(x) * EYE_X) * size, (y - EYE_Y) * size, zero], -1))  # eye size
  ears = pair((0.75, 0.1, -0.08), (0.1, 0.25, 0.2))
  f.append(np.stack([np.sign(x) * ears, zero, zero], -1))  # ear protrusion
  f.append(np.stack([zero, zero, -0.5 * (y - 0.4) * high * (1.0 - front)], -1))  # occiput
  rng = np.random.default_rng(1234)
  for i in range(n_random):
    d = np.zeros_like(p)
    antisym = i % 4 == 3
    for _ in range(3):
      c = np.array([rng.uniform(0.0, 0.6), rng.uniform(-0.9, 0.7), 0.0])
      c[2] = _front_points(c[None, :2])[0, 2]
      s = rng.uniform(0.15, 0.4)
      a = rng.normal(size=3) * np.array([0.6, 0.6, 1.0])
      for sx in (1.0, -1.0):
        cc = c * np.array([sx, 1.0, 1.0])
        aa = a * np.array([sx, 1.0, 1.0]) * (sx if antisym else 1.0)
        d += _gauss(p, cc, (s, s, 1.5 * s))[:, None] * aa
    f.append(d)
  return np.stack(f, axis=-1)


# ------------------------------------------------------------------------------------- sampling

def _np_angles_to_matrix(yaw, pitch, roll):
  """Numpy twin of ``geometry.angles_to_matrix`` (degrees) -> (..., 3, 3)."""
  y, p, r = np.radians(-np.asarray(yaw, np.float64)), np.radians(pitch), np.radians(roll)
  cx, sx, cy, sy, cz, sz = np.cos(p), np.sin(p), np.cos(y), np.sin(y), np.cos(r), np.sin(r)
  one, zero = np.ones_like(cx), np.zeros_like(cx)
  rx = np.stack([np.stack([one, zero, zero], -1), np.stack([zero, cx, -sx], -1), np.stack([zero, sx, cx], -1)], -2)
  ry = np.stack([np.stack([cy, zero, sy], -1), np.stack([zero, one, zero], -1), np.stack([-sy, zero, cy], -1)], -2)
  rz = np.stack([np.stack([cz, -sz, zero], -1), np.stack([sz, cz, zero], -1), np.stack([zero, zero, one], -1)], -2)
  return rz @ ry @ rx


def _sample_expressions(rng: np.random.Generator, n: int) -> np.ndarray:
  s = _EXP_STD
  e = np.zeros((n, N_EXP))
  e[:, 0] = np.minimum(np.abs(rng.normal(0.0, s["jaw_open"], n)), 1.0)  # the mouth is never "over-closed"
  e[:, 1] = np.clip(rng.normal(0.1, s["smile"], n), -0.8, 1.2)
  e[:, 2] = np.clip(rng.normal(0.0, s["brow_raise"], n), -1.0, 1.2)
  # Per-eye closure in [-0.6, 1] (negative = wide open), mostly open, sometimes blinking.
  close = np.clip(rng.normal(0.0, s["eye"], (n, 2)), -0.6, 1.0)
  blink = rng.random(n) < 0.08
  close[blink] = np.clip(1.0 - np.abs(rng.normal(0.0, 0.15, (blink.sum(), 1))), 0.0, 1.0)
  e[:, 3] = close.mean(-1)  # eyes_close: both
  e[:, 8] = 0.5 * (close[:, 0] - close[:, 1])  # wink: + closes the subject's right eye
  e[:, 4] = np.clip(rng.normal(0.0, s["pucker"], n), -0.8, 0.8)
  e[:, 5] = np.clip(rng.normal(0.0, s["frown"], n), -0.8, 0.8)
  e[:, 6] = np.clip(rng.normal(0.0, s["jaw_left"], n), -0.6, 0.6)
  e[:, 7] = np.clip(rng.normal(0.0, s["smile_asym"], n), -0.6, 0.6)
  e[:, 9] = np.clip(rng.normal(0.0, s["upper_lip_raise"], n), -0.6, 0.8)
  return e


def _sample_raw(rng, n, anchor, yaw_range, pitch_range, roll_range, scale_range, shift_px, crop_size):
  yaw = rng.uniform(*yaw_range, n)
  pitch = rng.uniform(*pitch_range, n)
  roll = rng.uniform(*roll_range, n)
  f = F_MEAN * rng.uniform(*scale_range, n)
  fR = f[:, None, None] * _np_angles_to_matrix(yaw, pitch, roll)
  centre = (crop_size + 1) / 2.0 + rng.normal(0.0, shift_px, (n, 2))
  target = np.stack([centre[:, 0], crop_size + 1 - centre[:, 1], np.zeros(n)], -1)  # camera frame, y up
  t = target - np.einsum("nij,j->ni", fR, anchor)
  shp = rng.normal(size=(n, N_SHP)) * SHAPE_STD
  exp = _sample_expressions(rng, n)
  P = np.concatenate([fR, t[:, :, None]], axis=-1).reshape(n, 12)
  return np.concatenate([P, shp, exp], axis=-1)


def sample_params(rng: np.random.Generator, n: int, yaw_range=(-80.0, 80.0), pitch_range=(-20.0, 20.0),
                  roll_range=(-20.0, 20.0), scale_range=(0.88, 1.12), shift_px: float = 2.5,
                  crop_size: int = CROP_SIZE) -> np.ndarray:
  """Raw (n, 62) float64 parameters of random synthetic faces in a ``crop_size`` crop.

  Pose: yaw/pitch/roll (degrees, ``geometry.angles_to_matrix`` convention, so ``geometry.pose_angles`` gives
  them back) uniform in the ranges; ``f = F_MEAN * U(scale_range)``; ``t`` puts the centroid of the 68 mean
  landmarks at the crop centre + N(0, shift_px) px and at z = 0. Identity ~ N(0, SHAPE_STD); expressions as
  ``EXPRESSIONS`` (jaw_open half-normal, per-eye closure clipped to <= 1, others clipped normals).
  ``face_model().param_mean/param_std`` are this distribution's statistics for the default arguments.
  """
  if n < 0:
    raise ValueError(f"n must be >= 0, got {n}")
  for name, (lo, hi) in (("yaw_range", yaw_range), ("pitch_range", pitch_range), ("roll_range", roll_range)):
    if not -90.0 <= lo <= hi <= 90.0:
      raise ValueError(f"{name} must satisfy -90 <= lo <= hi <= 90, got {(lo, hi)}")
  anchor = _anchor()
  return _sample_raw(rng, n, anchor, yaw_range, pitch_range, roll_range, scale_range, shift_px, crop_size)


# --------------------------------------------------------------------------------------- model

@functools.lru_cache(maxsize=None)
def _arrays() -> Dict[str, np.ndarray]:
  """All model arrays in model units (float64)."""
  mesh = _mesh()
  pts = mesh["pts"]
  n = len(pts)
  kp = _keypoints(mesh)
  # Identity: orthogonalise the fields in order, then scale each so that one std moves its busiest vertex
  # by `reach` design units (a few mm).
  raw = _identity_fields(mesh, N_SHP - 24)
  flat = raw.reshape(3 * n, -1)[:, :N_SHP]
  q, rr = np.linalg.qr(flat)
  q *= np.sign(np.diag(rr))[None, :]
  reach = np.concatenate([[0.05, 0.05, 0.05, 0.035, 0.035, 0.03, 0.03], np.full(N_SHP - 7, 0.022)])
  peak = np.max(np.linalg.norm(q.reshape(n, 3, N_SHP), axis=1), axis=0)
  w_shp = q * (reach / (peak * SHAPE_STD))[None, :] * UNIT
  w_exp = _expression_fields(mesh, kp).reshape(3 * n, N_EXP) * UNIT
  u = pts.reshape(-1) * UNIT
  return dict(u=u, w_shp=w_shp, w_exp=w_exp, tri=mesh["tri"], kp=kp, tex=albedo())


@functools.lru_cache(maxsize=None)
def _anchor() -> np.ndarray:
  a = _arrays()
  return a["u"].reshape(-1, 3)[a["kp"]].mean(0)


@functools.lru_cache(maxsize=None)
def _param_stats() -> Tuple[np.ndarray, np.ndarray]:
  """(62,) mean and std of ``sample_params`` with default arguments: empirical (fixed seed, _N_STATS draws)
  for the pose and expression entries, exact for the identity (0 and SHAPE_STD)."""
  p = sample_params(np.random.default_rng(20240601), _N_STATS)
  mean, std = p.mean(0), p.std(0)
  mean[12:12 + N_SHP], std[12:12 + N_SHP] = 0.0, SHAPE_STD
  return mean, std


@functools.lru_cache(maxsize=None)
def face_model() -> FaceModel:
  """The synthetic ``FaceModel`` (dense bases, triangles, albedo, keypoints); built once, then cached."""
  a = _arrays()
  kp = a["kp"]
  rows = (3 * kp[:, None] + np.arange(3)[None, :]).reshape(-1)  # interleaved x, y, z rows of the landmarks
  mean, std = _param_stats()
  f32 = lambda v: jnp.asarray(np.asarray(v, np.float32))  # noqa: E731
  return FaceModel(u_base=f32(a["u"][rows]), w_shp_base=f32(a["w_shp"][rows]), w_exp_base=f32(a["w_exp"][rows]),
                   param_mean=f32(mean), param_std=f32(std), u_dense=f32(a["u"]), w_shp_dense=f32(a["w_shp"]),
                   w_exp_dense=f32(a["w_exp"]), tri=jnp.asarray(a["tri"].astype(np.int32)), tex=f32(a["tex"]),
                   keypoints=jnp.asarray(kp.astype(np.int32)), name="synthetic").check()


def numpy_arrays() -> Dict[str, np.ndarray]:
  """float64/int copies of the model for fast numpy code: u (3N,), w_shp (3N, 40), w_exp (3N, 10),
  tri (T, 3), keypoints (68,), tex (N, 3), param_mean/param_std (62,)."""
  a = _arrays()
  mean, std = _param_stats()
  return dict(u=a["u"].copy(), w_shp=a["w_shp"].copy(), w_exp=a["w_exp"].copy(), tri=a["tri"].copy(),
              keypoints=a["kp"].copy(), tex=a["tex"].copy(), param_mean=mean.copy(), param_std=std.copy())


def vertices_np(p_raw: np.ndarray, arrays: Optional[Dict[str, np.ndarray]] = None, crop_size: int = CROP_SIZE):
  """Numpy twin of ``geometry.dense_vertices`` on RAW params (..., 62) -> crop coords (..., N, 3)."""
  a = arrays or _arrays()
  p_raw = np.asarray(p_raw, np.float64)
  s = a["u"] + p_raw[..., 12:12 + N_SHP] @ a["w_shp"].T + p_raw[..., 12 + N_SHP:] @ a["w_exp"].T
  s = s.reshape(s.shape[:-1] + (-1, 3))
  P = p_raw[..., :12].reshape(p_raw.shape[:-1] + (3, 4))
  v = s @ np.swapaxes(P[..., :3], -1, -2) + P[..., None, :, 3]  # matmul: ~10x faster than numpy einsum here
  return np.stack([v[..., 0], crop_size + 1 - v[..., 1], v[..., 2]], axis=-1)


def clear_cache() -> None:
  """Forgets the built model (the next ``face_model()`` rebuilds it); for tests of determinism."""
  for fn in (_mesh, _regions, _albedo_coefs, _arrays, _anchor, _param_stats, face_model):
    fn.cache_clear()
