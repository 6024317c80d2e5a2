"""Face profiling (Zhu et al. 2016, the 3DDFA paper, how 300W-LP was made): a photo and its 3DMM fit -> the same face
turned further towards profile, re-rendered with the photo's own texture, with exactly consistent labels.

``python -m jface.data.profiling --data crops:../shared/data/aflw2000_3d_train --out DIR
[--yaws 20,40,60,80] [--pitch_jitter 5] [--limit N] [--seed 0] [--background decay|rigid]``

Coordinates are ``jface.core.geometry``'s: crop coords (120 x 120) ``x = v_x``, ``y = 121 - v_y`` (1-based pixel
centres, y down), ``z = v_z`` (larger = nearer the camera), camera coords ``v = fR S + t`` (y up).

Per input (a 120 px crop and its whitened 62 params, from any 3D-labelled data spec):

1. **Geometry and texture.** Dense vertices ``V0`` (N, 3) from the params (crop coords). The face mesh is
   rasterised (``jface.core.render.rasterize``); a vertex is *visible* when it faces the camera (normal z > 0,
   normals oriented outwards once per model) and its z is within ``vis_tol`` (2 crop px, plus 0.75 px times the
   surface's depth slope) of the z-buffer at its nearest pixel. Visible vertices take the photo's colour there
   (bilinear). Invisible ones take the colour of the **nearest visible vertex along the mesh** (geodesic over the
   mean shape's edges, one multi-source Dijkstra), then 30 neighbour-averaging iterations over those filled
   vertices only smooth the copied patches.
2. **New pose.** ``R0, s = P2sRt(p)``, ``(yaw, pitch, roll) = matrix2angle(R0)``; the new rotation is
   ``R1 = angles_to_matrix(sign * target, pitch + dpitch, roll)`` (``dpitch ~ U(-pitch_jitter, pitch_jitter)``,
   ``sign`` = the side the face already turns to, random for ``|yaw| < 2``), i.e. the head turns about its own
   (roll-tilted) vertical axis and **the new params' yaw is exactly the target**. ``fR1 = s R1`` (scale kept),
   shape/expression unchanged. The rotation centre ``c`` is the mesh centroid: it keeps its depth, and x, y of
   ``t1`` are shifted so that the centre of the 68 landmarks' bounding box stays where it was (3DDFA crops are
   centred on that box). Targets not at least ``min_step`` (5) degrees beyond ``|yaw|`` are skipped.
   The params are written as a ``.mat`` fit (``Pose_Para`` = [pitch, yaw, roll, tx, ty, tz, s] in the
   AFLW2000-3D convention ``R = Rx Ry Rz``), and the *canonical* whitened params are that file read back by
   ``mat_layout.mat_to_params`` (what the ``crops:`` reader returns); image, landmarks and meta all come from them.
3. **Background** (a simplified version of 3DDFA's image meshing). Anchors: (a) *contour anchors*: every
   ``contour_step`` (3) px along the outer contour of the face's filled silhouette mask, the nearest visible mesh
   vertex (so they move exactly with the face); (b) *grid anchors*: a regular ``grid_step`` (8) px grid over the
   crop, its outer row/column on the crop border, minus the points closer than ``0.6 grid_step`` to the face mask.
   A 2D Delaunay triangulation of all anchors, minus the triangles whose centroid falls inside the face mask,
   is the background mesh (a hole where the face is). Each grid anchor gets a weight
   ``w = d_border / (d_border + d_face)`` (distances to the crop border and to the face mask: 1 at the face, 0 on
   the border) and a depth ``z = w z_c + (1 - w) c_z``, ``z_c`` the inverse-distance mean depth of its 8 nearest
   contour anchors, ``c_z`` the rotation centre's depth. It moves by the face's motion *scaled by w*:
   ``X' = c + w (c1 - c) + R(w) (X - c)`` with ``R(w)`` the face's rotation ``R1 R0^T`` with its angle times w
   (axis-angle), so hair/ears/neck next to the face turn with it and the crop border stays put
   (``background="rigid"``: ``w = 1`` everywhere, the border moves too and the uncovered margin is in-painted).
   The background mesh is rendered with the ORIGINAL crop as its texture (texture coordinates = the anchors'
   original positions; its own z-buffer resolves folds), then the face is drawn over it: pixels whose triangle
   has three visible vertices sample the photo at the interpolated original position (texture mapping, exact for
   a zero rotation), others interpolate the vertex colours of step 1. Pixels covered by neither (thin slivers
   between the moved contour and the new silhouette) are in-painted (``cv2.inpaint``, Telea) and counted
   (``holes`` in the manifest). All of this is drawn at ``supersample`` (3) x the resolution; an output pixel is
   the centre sample of its 3 x 3 block (= the plain 1x render, no blur) unless the block mixes face, background
   or hole, where it is the block mean (anti-aliased silhouette).
   Measured on 6 train crops (targets 20-80): ``decay`` leaves 0-1.1 % of the crop to in-painting, ``rigid``
   8-43 % (its border moves in: large smears), so ``decay`` is the default. On all 800 train crops: holes
   0.3 % of the crop on average, 1.9 % at the 99th percentile.
4. **Outputs** in the ``crops:`` layout (``jface.data.crops_layout``), so ``crops:OUT`` reads them as 3D-labelled
   data: ``OUT/crops/<stem>_y<target>.jpg`` (120 x 120), ``OUT/AFLW2000/<stem>_y<target>.mat`` (the fit; the crop
   is its own "original image", hard-linked as ``OUT/AFLW2000/<name>``, with ``roi_box = (0, 0, 120, 120)``, so
   image coords = crop coords), ``OUT/meta.npz`` (``names``, ``roi_box``, ``yaw`` = the new params' yaw,
   ``pts68`` (N, 3, 68) and ``fan_pts68_crop`` (N, 68, 2) = the 68 landmarks of the canonical params, plus
   ``params`` (N, 62) whitened, ``source_name``, ``source_roi_box``, ``target_yaw``, ``dpitch``).
   ``OUT/manifest.jsonl`` gets one line per input as it is done (resumable: finished inputs are skipped; bad
   inputs are reported, counted and skipped), ``meta.npz`` is rewritten from it every 25 inputs and at the end,
   ``OUT/summary.json`` holds this run's counts and timing, the totals, and every run's numbers (``runs``).

Speed (2-core CPU, beside a training run, ``nice -n 15``): 800 AFLW2000-3D train crops with targets 20/40/60/80
-> 1998 new crops in 12 min 56 s (0.97 s per input, 0.39 s per output crop).

Limitations: the texture is the 120 px crop's (no detail beyond it); surfaces hidden in the photo are filled
from their visible neighbours (no symmetry); hair, ears and neck are not modelled, only dragged by the background
warp (ears and hair stretched on the side the face turns away from, as in 300W-LP); hair or hands over the face's
edge in the photo become face texture; crops with non-square roi boxes (clipped at the image border) come out
unstretched; a target of exactly 60 degrees sits on the (30, 60] / (60, 90] yaw-bin edge.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import time
import zlib
from typing import Dict, List, Optional, Sequence

import cv2
import numpy as np
import scipy.io
import scipy.sparse
import scipy.sparse.csgraph
from scipy.spatial import Delaunay, QhullError, cKDTree
from scipy.spatial.transform import Rotation

from jface.core import render as render_lib
from jface.core.face_model import CROP_SIZE, N_EXP, N_SHP, FaceModel
from jface.data import common, mat_layout

ROI = np.array([0.0, 0.0, CROP_SIZE, CROP_SIZE], np.float32)  # output crops are their own "original image"
META_EVERY = 25  # inputs between meta.npz rewrites


@dataclasses.dataclass(frozen=True)
class Options:
  """Profiling settings (module docstring). Angles in degrees, lengths in crop pixels."""
  yaws: tuple = (20.0, 40.0, 60.0, 80.0)
  pitch_jitter: float = 5.0
  min_step: float = 5.0
  background: str = "decay"
  grid_step: float = 8.0
  contour_step: float = 3.0
  vis_tol: float = 2.0
  supersample: int = 3

  def __post_init__(self):
    if self.supersample < 1 or self.supersample % 2 == 0:
      raise ValueError(f"supersample must be odd (1, 3, ...), got {self.supersample}")
    if self.background not in ("decay", "rigid"):
      raise ValueError(f"background must be 'decay' or 'rigid', got {self.background!r}")
    for y in self.yaws:
      if not 0.0 < float(y) < 90.0:
        raise ValueError(f"target yaws must be in (0, 90) degrees, got {y}")


# ------------------------------------------------------------------------------------------ pose math

def _p2srt(p: np.ndarray):
  """Raw (62,) -> (R (3, 3) orthonormal, s) as ``geometry.rotation_from_params`` (3DDFA's P2sRt)."""
  fr = p[:12].reshape(3, 4)[:, :3]
  n1, n2 = np.linalg.norm(fr[0]), np.linalg.norm(fr[1])
  r1, r2 = fr[0] / n1, fr[1] / n2
  return np.stack([r1, r2, np.cross(r1, r2)]), (n1 + n2) / 2


def matrix_to_angles(r: np.ndarray) -> np.ndarray:
  """(3, 3) -> (yaw, pitch, roll) degrees, numpy twin of ``geometry.matrix_to_angles``."""
  yaw = math.asin(float(np.clip(r[2, 0], -1.0, 1.0)))
  c = math.cos(yaw)
  return np.degrees([yaw, math.atan2(r[2, 1] / c, r[2, 2] / c), math.atan2(r[1, 0] / c, r[0, 0] / c)])


def angles_to_matrix(yaw: float, pitch: float, roll: float) -> np.ndarray:
  """Degrees -> (3, 3) = Rz(roll) Ry(-yaw) Rx(pitch), numpy twin of ``geometry.angles_to_matrix``."""
  y, p, r = np.radians([-yaw, pitch, roll])
  rx = np.array([[1, 0, 0], [0, math.cos(p), -math.sin(p)], [0, math.sin(p), math.cos(p)]])
  ry = np.array([[math.cos(y), 0, math.sin(y)], [0, 1, 0], [-math.sin(y), 0, math.cos(y)]])
  rz = np.array([[math.cos(r), -math.sin(r), 0], [math.sin(r), math.cos(r), 0], [0, 0, 1]])
  return rz @ ry @ rx


def pose_para_from_matrix(r: np.ndarray) -> np.ndarray:
  """Orthonormal (3, 3) -> (pitch, yaw, roll) radians with ``r = Rx Ry Rz`` in AFLW2000-3D's convention
  (``mat_layout.pose_para_to_srt``): ``r[0] = (cy cz, cy sz, -sy)``, ``r[1, 2] = sx cy``, ``r[2, 2] = cx cy``."""
  yaw = -math.asin(float(np.clip(r[0, 2], -1.0, 1.0)))
  return np.array([math.atan2(r[1, 2], r[2, 2]), yaw, math.atan2(r[0, 1], r[0, 0])])


def _bbox_centre(pts: np.ndarray) -> np.ndarray:
  return (pts.min(0) + pts.max(0)) / 2


# ------------------------------------------------------------------------------------------ profiler

class Profiler:
  """Profiles crops of one face model (which needs dense bases and triangles).

  ``profile(image, pw, rng)`` -> list of output dicts (``image`` (120, 120, 3) uint8, ``params`` (62,) float32
  whitened, ``pts68`` (68, 3) float32 crop coords, ``mat`` the .mat fields, ``target_yaw``, ``yaw``, ``dpitch``,
  ``holes``); ``state`` / ``new_pose`` / ``render`` are its steps.
  """

  SMOOTH_ITERS = 30  # smoothing of the colours filled in for invisible vertices

  def __init__(self, model: FaceModel, options: Options = Options()):
    if not model.has_dense_bases or model.tri is None:
      raise ValueError("profiling needs a face model with dense bases and triangles (BFM: --dense_bases_dir)")
    self.model, self.opt = model, options
    f64 = lambda a: np.asarray(a, np.float64)  # noqa: E731
    self.u, self.w_shp, self.w_exp = f64(model.u_dense), f64(model.w_shp_dense), f64(model.w_exp_dense)
    self.u_base, self.w_shp_base, self.w_exp_base = f64(model.u_base), f64(model.w_shp_base), f64(model.w_exp_base)
    self.mean, self.std = f64(model.param_mean), f64(model.param_std)
    self.tri = np.asarray(model.tri, np.int64)
    n = len(self.u) // 3
    e = np.concatenate([self.tri[:, [0, 1]], self.tri[:, [1, 2]], self.tri[:, [2, 0]]])
    m = self.u.reshape(-1, 3)
    e = np.unique(np.sort(e, axis=1), axis=0)
    # Mesh edges weighted by their length on the mean shape (the geodesic of _fill).
    self.edges = scipy.sparse.csr_matrix((np.linalg.norm(m[e[:, 0]] - m[e[:, 1]], axis=1) + 1e-9,
                                          (e[:, 0], e[:, 1])), shape=(n, n))
    deg = np.bincount(e.ravel(), minlength=n).astype(np.float64)
    ones = scipy.sparse.csr_matrix((np.ones(len(e)), (e[:, 0], e[:, 1])), shape=(n, n))
    self.adj_mean = scipy.sparse.diags(1.0 / np.maximum(deg, 1.0)) @ (ones + ones.T)  # row-normalised adjacency
    # Outward orientation of the triangle winding, from the mean shape: normals . (x - centroid) > 0 on average.
    self.orient = 1.0 if np.sum(self._normals(m) * (m - m.mean(0))) >= 0 else -1.0

  # --- geometry
  def _normals(self, v: np.ndarray) -> np.ndarray:
    """(N, 3) -> (N, 3) area-weighted vertex normals of ``tri`` in the frame of ``v`` (winding-defined sign)."""
    fn = np.cross(v[self.tri[:, 1]] - v[self.tri[:, 0]], v[self.tri[:, 2]] - v[self.tri[:, 0]])
    n, ids = len(v), self.tri.ravel()
    acc = np.stack([np.bincount(ids, weights=np.repeat(fn[:, k], 3), minlength=n) for k in range(3)], -1)
    return acc / np.maximum(np.linalg.norm(acc, axis=1, keepdims=True), 1e-12)

  def shape(self, p: np.ndarray) -> np.ndarray:
    """Raw (62,) -> model-space dense shape (N, 3)."""
    s = self.u + self.w_shp @ p[12:12 + N_SHP] + self.w_exp @ p[12 + N_SHP:12 + N_SHP + N_EXP]
    return s.reshape(-1, 3)

  @staticmethod
  def pose(p: np.ndarray, s: np.ndarray) -> np.ndarray:
    """Raw (62,), model-space points (K, 3) -> crop coords (K, 3)."""
    P = p[:12].reshape(3, 4)
    v = s @ P[:, :3].T + P[:, 3]
    return np.stack([v[:, 0], CROP_SIZE + 1 - v[:, 1], v[:, 2]], -1)

  def raw(self, pw) -> np.ndarray:
    return np.asarray(pw, np.float64) * self.std + self.mean

  # --- step 1 + background mesh: everything that does not depend on the new pose
  def state(self, image: np.ndarray, pw) -> dict:
    """Source-pose analysis of one crop. Raises ``ValueError`` when the face is not in the crop.

    Returns a dict: ``p`` (62,) raw params, ``S`` (N, 3) model-space shape, ``V0`` (N, 3) crop coords, ``vis`` (N,)
    bool, ``col`` (N, 3) float32 vertex colours (0-255), ``img`` (H, W, 3) float32, ``mask`` (H, W) uint8 0/1 filled
    face silhouette, ``anchors`` (K, 3) crop coords, ``contour_ids`` (C,) vertex ids of the first C anchors,
    ``weight`` (K,) motion weights, ``bg_tri`` (B, 3) background triangles."""
    h, w = image.shape[:2]
    p = self.raw(pw)
    if not np.all(np.isfinite(p)):
      raise ValueError("non-finite params")
    S = self.shape(p)
    V0 = self.pose(p, S)
    pix, _, _, depth = render_lib.rasterize(V0, self.tri, h, w)
    if len(pix) < 50:
      raise ValueError(f"the face covers {len(pix)} pixels of the crop")
    zbuf = np.full(h * w, -np.inf)
    zbuf[pix] = depth
    cam = V0 * np.array([1.0, -1.0, 1.0])  # y up again: a similarity of the model frame, normals keep their sense
    nrm = self.orient * self._normals(cam)
    nz = nrm[:, 2]
    # z changes by ~|n_xy| / n_z per pixel on a slanted surface: the nearest pixel centre is up to 0.71 px away.
    tol = self.opt.vis_tol + np.minimum(0.75 * np.hypot(nrm[:, 0], nrm[:, 1]) / np.maximum(nz, 0.05), 15.0)
    c = np.clip(np.rint(V0[:, 0] - 1), 0, w - 1).astype(np.int64)
    r = np.clip(np.rint(V0[:, 1] - 1), 0, h - 1).astype(np.int64)
    inside = (V0[:, 0] >= 0.5) & (V0[:, 0] <= w + 0.5) & (V0[:, 1] >= 0.5) & (V0[:, 1] <= h + 0.5)
    vis = inside & (nz > 0) & (V0[:, 2] >= zbuf[r * w + c] - tol)
    if vis.sum() < 20:
      raise ValueError(f"only {int(vis.sum())} visible vertices")
    img = image.astype(np.float32)
    col = np.zeros((len(V0), 3), np.float32)
    col[vis] = _sample(img, V0[vis, :2])
    col = self._fill(col, vis)
    mask = np.zeros(h * w, np.uint8)
    mask[pix] = 1
    mask = _fill_holes(mask.reshape(h, w))
    bg = self._background(V0, vis, mask, p, S)
    return dict(p=p, S=S, V0=V0, vis=vis, col=col, img=img, mask=mask, **bg)

  def _fill(self, col: np.ndarray, known: np.ndarray) -> np.ndarray:
    """Every vertex not ``known`` (N,) takes the colour of the nearest known vertex along the mesh (geodesic
    distance over the edges of the mean shape: one multi-source Dijkstra)."""
    col = col.copy()
    if known.all():
      return col
    _, _, nearest = scipy.sparse.csgraph.dijkstra(self.edges, directed=False, indices=np.flatnonzero(known),
                                                  min_only=True, return_predecessors=True)
    ok = ~known & (nearest >= 0)
    col[ok] = col[nearest[ok]]
    col[~known & (nearest < 0)] = col[known].mean(0)  # a component without any visible vertex
    # Smooth the copied patches: Jacobi iterations of the neighbour mean on the filled vertices only.
    free = ~known
    for _ in range(self.SMOOTH_ITERS):
      col[free] = (self.adj_mean @ col)[free]
    return col

  def _background(self, V0, vis, mask, p, S) -> dict:
    """Anchors, triangles and weights of the background mesh (module docstring, step 3)."""
    o = self.opt
    h, w = mask.shape
    cs, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    cont = max(cs, key=len).reshape(-1, 2).astype(np.float64) + 1.0  # 1-based crop coords
    step = max(1, int(round(o.contour_step)))
    vis_ids = np.flatnonzero(vis)
    _, nn = cKDTree(V0[vis_ids, :2]).query(cont[::step])
    contour_ids = np.unique(vis_ids[nn])
    ca = V0[contour_ids]
    # Grid anchors (the outer row/column on the crop border), away from the face.
    nx, ny = max(2, int(round(w / o.grid_step)) + 1), max(2, int(round(h / o.grid_step)) + 1)
    gx, gy = np.meshgrid(np.linspace(0.5, w + 0.5, nx), np.linspace(0.5, h + 0.5, ny))
    g = np.stack([gx.ravel(), gy.ravel()], -1)
    dist = cv2.distanceTransform((1 - mask).astype(np.uint8), cv2.DIST_L2, 5)
    gi = np.clip(np.rint(g - 1), 0, [w - 1, h - 1]).astype(np.int64)
    d_face = dist[gi[:, 1], gi[:, 0]]
    d_border = np.min(np.stack([g[:, 0] - 0.5, w + 0.5 - g[:, 0], g[:, 1] - 0.5, h + 0.5 - g[:, 1]]), axis=0)
    keep = (d_face >= 0.6 * o.grid_step) | (d_border == 0)
    g, d_face, d_border = g[keep], d_face[keep], d_border[keep]
    gw = d_border / np.maximum(d_border + d_face, 1e-9)
    if o.background == "rigid":
      gw = np.ones_like(gw)
    # Depth: inverse-distance mean of the 8 nearest contour anchors, decaying to the rotation centre's depth.
    cz = self.pose(p, S.mean(0, keepdims=True))[0, 2]
    k = min(8, len(ca))
    dd, ii = cKDTree(ca[:, :2]).query(g, k=k)
    dd, ii = dd.reshape(len(g), k), ii.reshape(len(g), k)
    iw = 1.0 / np.maximum(dd, 1e-3)
    zc = np.sum(iw * ca[ii, 2], 1) / np.sum(iw, 1)
    gz = gw * zc + (1 - gw) * cz
    anchors = np.concatenate([ca, np.concatenate([g, gz[:, None]], 1)])
    weight = np.concatenate([np.ones(len(ca)), gw])
    try:
      tri = Delaunay(anchors[:, :2]).simplices.astype(np.int64)
    except QhullError as e:
      raise ValueError(f"background triangulation failed: {e}") from None
    cen = anchors[tri, :2].mean(1)
    ci = np.clip(np.rint(cen - 1), 0, [w - 1, h - 1]).astype(np.int64)
    tri = tri[mask[ci[:, 1], ci[:, 0]] == 0]
    return dict(anchors=anchors, contour_ids=contour_ids, weight=weight, bg_tri=tri)

  # --- step 2
  def new_pose(self, st: dict, target_yaw: float, dpitch: float) -> dict:
    """The new params for a signed ``target_yaw`` (degrees) and pitch offset: the ``.mat`` fields, the canonical
    whitened params (read back as ``crops:`` does), the motion (``dR`` (3, 3) camera frame, centres ``c0``,
    ``c1`` (3,) camera coords)."""
    p, S = st["p"], st["S"]
    R0, s = _p2srt(p)
    _, pitch, roll = matrix_to_angles(R0)
    R1 = angles_to_matrix(target_yaw, pitch + dpitch, roll)
    P0 = p[:12].reshape(3, 4)
    cm = S.mean(0)
    c0 = P0[:, :3] @ cm + P0[:, 3]
    t1 = c0 - s * R1 @ cm
    lm = (self.u_base + self.w_shp_base @ p[12:12 + N_SHP] + self.w_exp_base @ p[12 + N_SHP:]).reshape(-1, 3)
    lm0 = lm @ P0[:, :3].T + P0[:, 3]
    lm1 = lm @ (s * R1).T + t1
    shift = np.zeros(3)
    shift[:2] = _bbox_centre(lm0[:, :2]) - _bbox_centre(lm1[:, :2])
    t1 = t1 + shift
    pose_para = np.concatenate([pose_para_from_matrix(R1), t1, [s]])
    mat = {"Pose_Para": pose_para[None, :], "Shape_Para": p[12:12 + N_SHP, None],
           "Exp_Para": p[12 + N_SHP:12 + N_SHP + N_EXP, None], "roi": ROI[None].astype(np.float64)}
    pw1 = mat_layout.mat_to_params(mat, ROI, CROP_SIZE, self.model)
    return dict(mat=mat, params=pw1, dR=R1 @ R0.T, c0=c0, c1=c0 + shift)

  # --- step 3
  def render(self, st: dict, pw1: np.ndarray, dR: np.ndarray, c0: np.ndarray, c1: np.ndarray):
    """The new crop: background mesh, then the face over it, then in-painting. -> ((H, W, 3) uint8, hole
    fraction)."""
    img = st["img"]
    h, w = img.shape[:2]
    V1 = self.pose(self.raw(pw1), st["S"])
    # Background anchors: contour anchors exactly with the face, grid anchors by the w-scaled motion.
    a0 = st["anchors"]
    cam = a0 * np.array([1.0, -1.0, 1.0]) + np.array([0.0, CROP_SIZE + 1, 0.0])
    rv = Rotation.from_matrix(dR).as_rotvec()
    wt = st["weight"][:, None]
    rots = Rotation.from_rotvec(wt * rv[None, :]).as_matrix()
    moved = c0 + wt * (c1 - c0) + np.einsum("kij,kj->ki", rots, cam - c0)
    a1 = np.stack([moved[:, 0], CROP_SIZE + 1 - moved[:, 1], moved[:, 2]], -1)
    nc = len(st["contour_ids"])
    a1[:nc] = V1[st["contour_ids"]]
    ss = self.opt.supersample
    hs, ws = h * ss, w * ss
    up = lambda v: np.concatenate([(v[:, :2] - 0.5) * ss + 0.5, v[:, 2:]], 1)  # noqa: E731 -- to the fine raster
    out = np.zeros((hs * ws, 3), np.float32)
    layer = np.zeros(hs * ws, np.int8)  # 0 = nothing, 1 = background, 2 = face
    pix, face, bary, _ = render_lib.rasterize(up(a1), st["bg_tri"], hs, ws)
    if len(pix):
      src = np.einsum("fk,fkc->fc", bary, a0[st["bg_tri"][face], :2])
      out[pix] = _sample(img, src)
      layer[pix] = 1
    pix, face, bary, _ = render_lib.rasterize(up(V1), self.tri, hs, ws)
    if len(pix):
      ids = self.tri[face]
      allvis = st["vis"][ids].all(1)
      col = np.einsum("fk,fkc->fc", bary, st["col"][ids])
      src = np.einsum("fk,fkc->fc", bary[allvis], st["V0"][ids[allvis], :2])
      col[allvis] = _sample(img, src)
      out[pix] = col
      layer[pix] = 2
    res = np.clip(np.rint(out), 0, 255).astype(np.uint8).reshape(hs, ws, 3)
    holes = (layer == 0).reshape(hs, ws)
    if holes.any():
      res = cv2.inpaint(res, holes.astype(np.uint8), 3 * ss, cv2.INPAINT_TELEA)
    if ss > 1:  # the block's centre sample (= the plain render) inside a layer, the block mean across an edge
      blocks = res.reshape(h, ss, w, ss, 3).astype(np.float32)
      lay = layer.reshape(h, ss, w, ss)
      edge = (lay.min((1, 3)) != lay.max((1, 3)))[..., None]
      res = np.where(edge, np.rint(blocks.mean((1, 3))), blocks[:, ss // 2, :, ss // 2]).astype(np.uint8)
    return res, float(holes.mean())

  def landmarks(self, pw: np.ndarray) -> np.ndarray:
    """Whitened (62,) float32 -> (68, 3) float32 crop coords via ``geometry.landmarks3d`` (what readers check)."""
    from jface.core import geometry
    return np.asarray(geometry.landmarks3d(self.model, np.asarray(pw, np.float32)), np.float32)

  def targets(self, yaw0: float, rng: np.random.Generator) -> List[float]:
    """Signed target yaws for a source yaw (degrees); draws the side for near-frontal faces."""
    sign = (1.0 if rng.random() < 0.5 else -1.0) if abs(yaw0) < 2.0 else math.copysign(1.0, yaw0)
    return [sign * float(t) for t in self.opt.yaws if float(t) >= abs(yaw0) + self.opt.min_step]

  def profile(self, image: np.ndarray, pw, rng: np.random.Generator) -> List[dict]:
    """All targets of one crop (see the class docstring). Raises ``ValueError`` on a bad input."""
    st = self.state(np.asarray(image), pw)
    yaw0 = matrix_to_angles(_p2srt(st["p"])[0])[0]
    outs = []
    for t in self.targets(yaw0, rng):
      dp = float(rng.uniform(-self.opt.pitch_jitter, self.opt.pitch_jitter)) if self.opt.pitch_jitter > 0 else 0.0
      new = self.new_pose(st, t, dp)
      img, holes = self.render(st, new["params"], new["dR"], new["c0"], new["c1"])
      pts = self.landmarks(new["params"])
      yaw = float(matrix_to_angles(_p2srt(self.raw(new["params"]))[0])[0])
      outs.append(dict(image=img, params=new["params"], pts68=pts, mat=new["mat"], target_yaw=abs(t), yaw=yaw,
                       dpitch=dp, holes=holes, source_yaw=float(yaw0)))
    return outs


def _sample(img: np.ndarray, xy: np.ndarray) -> np.ndarray:
  """Bilinear colours (K, 3) float32 of ``img`` (H, W, 3) float32 at 1-based crop points ``xy`` (K, 2); points
  outside take the nearest border pixel."""
  h, w = img.shape[:2]
  x = np.clip(np.asarray(xy[:, 0], np.float64) - 1.0, 0.0, w - 1.0)
  y = np.clip(np.asarray(xy[:, 1], np.float64) - 1.0, 0.0, h - 1.0)
  x0 = np.minimum(np.floor(x).astype(np.int64), w - 2)
  y0 = np.minimum(np.floor(y).astype(np.int64), h - 2)
  fx, fy = (x - x0)[:, None].astype(np.float32), (y - y0)[:, None].astype(np.float32)
  top = img[y0, x0] * (1 - fx) + img[y0, x0 + 1] * fx
  bot = img[y0 + 1, x0] * (1 - fx) + img[y0 + 1, x0 + 1] * fx
  return top * (1 - fy) + bot * fy


def _fill_holes(mask: np.ndarray) -> np.ndarray:
  """(H, W) 0/1 -> uint8 mask with its outer contours filled (the mouth slit and gaps closed)."""
  cs, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
  out = np.zeros(mask.shape, np.uint8)
  cv2.drawContours(out, cs, -1, 1, thickness=-1)
  return out | mask.astype(np.uint8)


# ------------------------------------------------------------------------------------------ outputs

def _write_jpeg(path: str, image: np.ndarray) -> None:
  tmp = path + ".tmp.jpg"
  if not cv2.imwrite(tmp, image[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 95]):
    raise OSError(f"cannot write {path}")
  os.replace(tmp, path)


def write_output(out_dir: str, name: str, res: dict, source_name: str, source_roi) -> None:
  """One profiled crop: ``crops/<name>``, ``AFLW2000/<stem>.mat`` and the "original" ``AFLW2000/<name>``."""
  crop_path = os.path.join(out_dir, "crops", name)
  _write_jpeg(crop_path, res["image"])
  stem = os.path.splitext(name)[0]
  mat = dict(res["mat"], pt3d_68=res["pts68"].T.astype(np.float64), source_image=source_name,
             source_roi=np.asarray(source_roi, np.float64)[None])
  scipy.io.savemat(os.path.join(out_dir, "AFLW2000", stem + ".mat"), mat)
  orig = os.path.join(out_dir, "AFLW2000", name)
  if os.path.lexists(orig):
    os.remove(orig)
  try:
    os.link(crop_path, orig)
  except OSError:
    _write_jpeg(orig, res["image"])


def read_manifest(out_dir: str) -> Dict[str, dict]:
  """``manifest.jsonl`` -> {input name: its last complete record} (a torn last line is ignored)."""
  path = os.path.join(out_dir, "manifest.jsonl")
  recs: Dict[str, dict] = {}
  if os.path.exists(path):
    with open(path) as f:
      for line in f:
        try:
          r = json.loads(line)
        except json.JSONDecodeError:
          continue
        recs[r["input"]] = r
  return recs


def _done(out_dir: str, rec: dict) -> bool:
  if rec.get("status") == "bad":
    return True
  return all(os.path.exists(os.path.join(out_dir, "crops", o["name"])) and
             os.path.exists(os.path.join(out_dir, "AFLW2000", os.path.splitext(o["name"])[0] + ".mat"))
             for o in rec.get("outputs", []))


def write_meta(out_dir: str, recs: Dict[str, dict]) -> int:
  """Rebuilds ``meta.npz`` (atomically) from the manifest records; -> number of outputs."""
  outs = [(r, o) for r in recs.values() if r.get("status") == "ok" for o in r["outputs"]]
  n = len(outs)
  pts = np.asarray([o["pts68"] for _, o in outs], np.float32).reshape(n, 68, 3)
  meta = dict(
      names=np.asarray([o["name"] for _, o in outs], dtype=str),
      roi_box=np.tile(ROI, (n, 1)),
      yaw=np.asarray([o["yaw"] for _, o in outs], np.float32),
      pts68=np.transpose(pts, (0, 2, 1)).copy(),
      fan_pts68_crop=pts[:, :, :2].copy(),
      params=np.asarray([o["params"] for _, o in outs], np.float32).reshape(n, 62),
      source_name=np.asarray([r["input"] for r, _ in outs], dtype=str),
      source_roi_box=np.asarray([r["roi_box"] for r, _ in outs], np.float32).reshape(n, 4),
      target_yaw=np.asarray([o["target_yaw"] for _, o in outs], np.float32),
      dpitch=np.asarray([o["dpitch"] for _, o in outs], np.float32))
  tmp = os.path.join(out_dir, "meta.tmp.npz")
  np.savez(tmp, **meta)
  os.replace(tmp, os.path.join(out_dir, "meta.npz"))
  return n


def _fmt_time(s: float) -> str:
  s = int(round(s))
  return f"{s // 3600}h{s // 60 % 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def run(source, profiler: Profiler, out_dir: str, limit: Optional[int] = None, seed: int = 0,
        log=print, progress_every: float = 10.0) -> dict:
  """Profiles ``source[0:limit]`` into ``out_dir`` (resumable; module docstring). -> summary dict."""
  for sub in ("crops", "AFLW2000"):
    os.makedirs(os.path.join(out_dir, sub), exist_ok=True)
  recs = read_manifest(out_dir)
  n = len(source) if limit is None else min(int(limit), len(source))
  inner = getattr(source, "source", None)  # registry.Cached wraps the reader
  names = getattr(source, "names", None) or getattr(inner, "names", None)
  label = inner if isinstance(inner, str) else str(getattr(inner, "source", "source"))
  by_index = {r.get("index"): r for r in recs.values()}

  def finished(i):
    r = recs.get(names[i]) if names is not None else by_index.get(i)
    return r is not None and _done(out_dir, r)
  todo = [i for i in range(n) if not finished(i)]
  log(f"profiling: {n} inputs, {n - len(todo)} already done in {out_dir}, {len(todo)} to go")
  t0 = last = time.time()
  counts = dict(done=0, outputs=0, bad=0, skipped_targets=0)
  errors = common.ErrorCounter()
  mf = open(os.path.join(out_dir, "manifest.jsonl"), "a")
  try:
    for k, i in enumerate(todo):
      name = names[i] if names is not None else f"#{i}"
      rec = dict(input=name, index=i)
      try:
        ex = source[i]
        name = rec["input"] = str(ex["name"])
        rec["roi_box"] = [float(v) for v in ex["roi_box"]]
        if not ex["has_params"]:
          raise common.bad(name, "no 3D params")
        rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
        res = profiler.profile(ex["image"], ex["params"], rng)
        stem = os.path.splitext(os.path.basename(name))[0]
        rec["outputs"] = []
        for r in res:
          oname = f"{stem}_y{int(round(r['target_yaw'])):02d}.jpg"
          write_output(out_dir, oname, r, name, ex["roi_box"])
          rec["outputs"].append(dict(name=oname, target_yaw=r["target_yaw"], yaw=r["yaw"], dpitch=r["dpitch"],
                                     holes=round(r["holes"], 6), params=[float(v) for v in r["params"]],
                                     pts68=[[float(v) for v in pt] for pt in r["pts68"]]))
        rec["status"] = "ok"
        counts["outputs"] += len(res)
        counts["skipped_targets"] += len(profiler.opt.yaws) - len(res)
      except (ValueError, OSError) as e:  # BadExample is a ValueError
        rec.update(status="bad", error=" ".join(str(e).split()))
        errors.record(e, label)
        counts["bad"] += 1
      mf.write(json.dumps(rec) + "\n")
      mf.flush()
      recs[rec["input"]] = rec
      counts["done"] += 1
      now = time.time()
      if (k + 1) % META_EVERY == 0:
        write_meta(out_dir, recs)
      if now - last >= progress_every or k + 1 == len(todo):
        last = now
        rate = (k + 1) / (now - t0)
        log(f"  {k + 1}/{len(todo)} inputs, {counts['outputs']} crops written, {counts['bad']} bad, "
            f"{rate:.2f} inputs/s, ETA {_fmt_time((len(todo) - k - 1) / max(rate, 1e-9))}")
  finally:
    mf.close()
  n_meta = write_meta(out_dir, recs)
  wall = time.time() - t0
  summary = dict(inputs=n, processed=counts["done"], outputs_written=counts["outputs"], bad=counts["bad"],
                 targets_skipped=counts["skipped_targets"], outputs_in_meta=n_meta, wall_s=round(wall, 1),
                 s_per_input=round(wall / counts["done"], 4) if counts["done"] else None,
                 s_per_output=round(wall / counts["outputs"], 4) if counts["outputs"] else None,
                 options=dataclasses.asdict(profiler.opt), seed=seed, bad_messages=errors.messages)
  # summary.json: this run's numbers, the totals over the manifest, and the earlier runs' numbers (resumes).
  path = os.path.join(out_dir, "summary.json")
  runs = []
  if os.path.exists(path):
    try:
      with open(path) as f:
        runs = json.load(f).get("runs", [])
    except (OSError, ValueError):
      runs = []
  runs.append({k: summary[k] for k in ("processed", "outputs_written", "bad", "wall_s", "s_per_input",
                                       "s_per_output")})
  total = dict(inputs_done=len(recs), bad=sum(r.get("status") == "bad" for r in recs.values()),
               outputs=n_meta)
  with open(path, "w") as f:
    json.dump(dict(summary, total=total, runs=runs), f, indent=1)
  log(f"profiling: {counts['done']} inputs in {_fmt_time(wall)}, {counts['outputs']} crops written "
      f"({n_meta} in meta.npz), {counts['bad']} bad ({errors.summary()}), "
      f"{counts['skipped_targets']} targets skipped (< {profiler.opt.min_step:g} degrees beyond the source |yaw|)")
  return summary


# ------------------------------------------------------------------------------------------ sample grid

def _tile(img: np.ndarray, scale: float, pts: Optional[np.ndarray] = None) -> np.ndarray:
  """(120, 120, 3) -> upscaled tile with the (68, 2|3) crop-coordinate landmarks drawn (scaled the same way)."""
  out = cv2.resize(img, None, fx=scale, fy=scale, interpolation=cv2.INTER_CUBIC)
  if pts is not None:
    out = render_lib.draw_landmarks(out, (np.asarray(pts)[:, :2] - 0.5) * scale + 0.5, color=(40, 255, 40),
                                    radius=0.45 * scale)
  return out


def sample_grid(source, profiler: Profiler, indices: Sequence[int], seed: int = 0, scale: float = 1.5) -> np.ndarray:
  """A (rows, cols) grid, RGB uint8: per input, the original crop with its landmarks, the background mesh on it
  (yellow triangles, red contour anchors), then one column per target yaw (blank when skipped) with the
  landmarks of the new params. Same random draws as ``run`` (seeded by the input name)."""
  from jface.core import geometry
  yaws = [float(t) for t in profiler.opt.yaws]
  size = int(round(CROP_SIZE * scale))
  head = np.full((28, size * (2 + len(yaws)), 3), 255, np.uint8)
  for k, label in enumerate(["input", "background mesh"] + [f"|yaw| {t:g}" for t in yaws]):
    cv2.putText(head, label, (k * size + 6, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
  rows = [head]
  for i in indices:
    ex = source[i]
    name = str(ex["name"])
    st = profiler.state(ex["image"], ex["params"])
    mesh = _tile(ex["image"], scale)
    a = (st["anchors"][:, :2] - 0.5) * scale + 0.5
    for tr in st["bg_tri"]:
      cv2.polylines(mesh, [np.round((a[tr] - 1) * 16).astype(np.int32)], True, (255, 230, 0), 1, cv2.LINE_AA,
                    shift=4)
    for x, y in a[:len(st["contour_ids"])]:
      cv2.circle(mesh, (int(round((x - 1) * 16)), int(round((y - 1) * 16))), 16, (255, 40, 40), -1, cv2.LINE_AA,
                 shift=4)
    outs = {round(o["target_yaw"]): o for o in
            profiler.profile(ex["image"], ex["params"], np.random.default_rng([seed, zlib.crc32(name.encode())]))}
    tiles = [_tile(ex["image"], scale, np.asarray(geometry.landmarks2d(profiler.model, ex["params"]))), mesh]
    for t in yaws:
      o = outs.get(round(t))
      tiles.append(_tile(o["image"], scale, o["pts68"]) if o is not None else np.full((size, size, 3), 235, np.uint8))
    rows.append(np.concatenate(tiles, 1))
  return np.concatenate(rows, 0)


# ------------------------------------------------------------------------------------------ CLI

def _default_model_dirs(spec: str):
  kind, _, rest = spec.partition(":")
  if kind.startswith("synthetic"):
    return "synthetic", None
  parent = os.path.dirname(os.path.normpath(rest.split(":")[0]))
  dense = os.path.join(parent, "3dmm_dense")
  return os.path.join(parent, "3dmm"), (dense if os.path.isdir(dense) else None)


def main(argv: Optional[Sequence[str]] = None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--data", required=True, help="3D-labelled data spec, e.g. crops:../shared/data/aflw2000_3d_train")
  ap.add_argument("--out", default=None, help="output folder (crops: layout); resumes when it exists")
  ap.add_argument("--grid", default=None, help="also/only write a sample grid image (.jpg/.png) of --grid_inputs")
  ap.add_argument("--grid_inputs", default="0,1,2,3,4,5", help="source indices of the grid rows")
  ap.add_argument("--yaws", default="20,40,60,80", help="target |yaw| values in degrees, comma separated")
  ap.add_argument("--pitch_jitter", type=float, default=5.0, help="dpitch ~ U(-x, x) degrees")
  ap.add_argument("--min_step", type=float, default=5.0, help="skip targets less than this beyond |source yaw|")
  ap.add_argument("--background", default="decay", choices=("decay", "rigid"))
  ap.add_argument("--limit", type=int, default=None, help="only the first N inputs")
  ap.add_argument("--seed", type=int, default=0)
  ap.add_argument("--bfm_dir", default=None, help="face model (default: DATA/../3dmm, or 'synthetic')")
  ap.add_argument("--dense_bases_dir", default=None, help="default: DATA/../3dmm_dense when it exists")
  args = ap.parse_args(argv)
  from jface.core.load import load_model
  from jface.data.registry import build_source
  bfm_dir, dense_dir = _default_model_dirs(args.data)
  model = load_model(args.bfm_dir or bfm_dir, dense_bases_dir=args.dense_bases_dir or dense_dir)
  opt = Options(yaws=tuple(float(v) for v in args.yaws.split(",") if v.strip()), pitch_jitter=args.pitch_jitter,
                min_step=args.min_step, background=args.background)
  source = build_source(args.data, model)
  profiler = Profiler(model, opt)
  if args.out is None and args.grid is None:
    ap.error("give --out and/or --grid")
  if args.grid:
    g = sample_grid(source, profiler, [int(v) for v in args.grid_inputs.split(",")], seed=args.seed)
    if not cv2.imwrite(args.grid, g[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 88]):
      raise SystemExit(f"cannot write {args.grid}")
    print(f"wrote {args.grid} ({g.shape[1]}x{g.shape[0]}, {os.path.getsize(args.grid) // 1024} KB)")
  if args.out:
    run(source, profiler, args.out, limit=args.limit, seed=args.seed, log=lambda s: print(s, flush=True))
  return 0


if __name__ == "__main__":
  sys.exit(main())
