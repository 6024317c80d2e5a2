"""Evaluation metrics: landmark / dense NME, the AFLW2000-3D and AFLW protocols, ICP reconstruction error, CED.

Evaluation code, so plain numpy (float64) unless stated; every NME is returned in PERCENT.

Conventions and sources (papers in ../shared/papers, public evaluation code read, not copied):

* 2D landmark NME (3DDFA ``benchmark_aflw2000.py``, reused by 2DASL and 3DDFA_V2): per image, the mean
  Euclidean point distance in the ORIGINAL image divided by ``sqrt(w * h)`` of the box of the GT points.
* 3D landmark / dense NME (2DASL ``evaluation/nme_for_alignment_68pts_3d.m`` and ``..._dense_3d.m``): both
  clouds are first shifted in z so that their minimum z is 0 (the z origin of a weak-perspective fit is
  arbitrary), then the mean 3D distance is divided by the SAME 2D normaliser ``sqrt(w * h)`` of the GT
  landmarks' (x, y) box. ``z_align="mean"`` (centroid z) and ``None`` are offered as alternatives.
* Yaw bins (3DDFA ``ana``): |yaw| in [0, 30], (30, 60], (60, 90]; the last bin is OPEN-ENDED (|yaw| > 90 falls
  in it, as in 3DDFA, and AFLW2000-3D has |yaw| up to ~103 deg). The headline number is the mean of the bin means.
* 3D reconstruction (2DASL Sec. 4.3 "following [PRNet]", ``evaluation/nme_for_3DReconstruction.m``): rigid ICP
  (centroids matched, rotation by closed form on nearest-point pairs, no scale), each GT point paired with its
  nearest predicted point, mean distance divided by ``sqrt(w * h)`` of the GT vertices' (x, y) extent. The
  2DASL paper says "normalized by the face bounding box size"; PRNet's paper instead normalises by the 3D
  outer interocular distance (see ``outer_interocular``). 2DASL's script subsamples every 50th vertex; that is
  left to the caller.
* AFLW 21 points (3DDFA ``benchmark_aflw.py``): predicted 68 iBUG points are mapped to the AFLW-21 scheme with
  ``IBUG68_TO_AFLW21`` and only visible GT points count. 3DDFA normalised by the box of its FITTED 68-point GT
  (``AFLW_GT_pts68``), which our AFLW data does not have: by default we use the box of the VISIBLE 21 GT points
  (pass ``normaliser`` to use another one).

Failures: a non-finite prediction gives a NaN per-image error; summaries count NaN errors as ``n_failed`` and
exclude them from every mean (and ``ced`` counts them as never below any threshold).
"""
from __future__ import annotations

import contextlib
import os
import warnings
from typing import Sequence

import numpy as np

from jface.core.face_model import CROP_SIZE

from jface.core import crop

# ----------------------------------------------------------------------------------------- basics


def _f64(x) -> np.ndarray:
  return np.asarray(x, dtype=np.float64)


def _check_pair(pred: np.ndarray, gt: np.ndarray, what: str, dims: Sequence[int]):
  if pred.shape != gt.shape:
    raise ValueError(f"{what}: pred shape {pred.shape} != gt shape {gt.shape}")
  if pred.ndim < 2 or pred.shape[-1] not in dims:
    raise ValueError(f"{what}: expected (..., K, {'|'.join(map(str, dims))}) points, got shape {pred.shape}")


def _mask_or_all(mask, shape) -> np.ndarray:
  if mask is None:
    return np.ones(shape, bool)
  m = np.asarray(mask, bool)
  if m.shape != shape:
    raise ValueError(f"mask shape {m.shape} != points shape {shape}")
  return m


@contextlib.contextmanager
def _quiet():
  """Silences numpy's all-NaN-slice RuntimeWarnings (the results are NaN, which is what we want)."""
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", RuntimeWarning)
    yield


def box_size(pts, mask=None) -> np.ndarray:
  """``sqrt(w * h)`` of the (x, y) box of points (..., K, >=2), masked (..., K) points ignored -> (...,).

  NaN when no point is kept.
  """
  pts = _f64(pts)
  m = _mask_or_all(mask, pts.shape[:-1])
  x = np.where(m, pts[..., 0], np.nan)
  y = np.where(m, pts[..., 1], np.nan)
  with np.errstate(invalid="ignore"), _quiet():
    w = np.nanmax(x, -1) - np.nanmin(x, -1)
    h = np.nanmax(y, -1) - np.nanmin(y, -1)
  return np.sqrt(w * h)


def _masked_mean(d: np.ndarray, m: np.ndarray) -> np.ndarray:
  cnt = m.sum(-1)
  with np.errstate(invalid="ignore", divide="ignore"):
    return np.where(cnt > 0, np.where(m, d, 0.0).sum(-1) / np.maximum(cnt, 1), np.nan)


def _z_aligned(pts: np.ndarray, m: np.ndarray, z_align: str | None) -> np.ndarray:
  if z_align is None:
    return pts
  z = np.where(m, pts[..., 2], np.nan)
  with _quiet():
    if z_align == "min":
      z0 = np.nanmin(z, -1)
    elif z_align == "mean":
      z0 = np.nanmean(z, -1)
    else:
      raise ValueError(f"z_align must be 'min', 'mean' or None, got {z_align!r}")
  out = pts.copy()
  out[..., 2] = pts[..., 2] - z0[..., None]
  return out


# ------------------------------------------------------------------------------------ landmark NME


def nme_2d(pred, gt, mask=None) -> np.ndarray:
  """2D NME in percent.

  Args:
    pred, gt: (..., K, 2|3) points in the same (original-image) coordinates; only x, y are used.
    mask: optional (..., K) bool; False points are ignored both in the distance and in the GT box.
  Returns:
    (...,) ``100 * mean_k |pred_k - gt_k| / sqrt(w * h)`` with (w, h) the box of the kept GT points.
    NaN for a non-finite prediction (a failure) or when no point is kept.
  """
  pred, gt = _f64(pred), _f64(gt)
  _check_pair(pred, gt, "nme_2d", (2, 3))
  m = _mask_or_all(mask, gt.shape[:-1])
  d = np.linalg.norm(pred[..., :2] - gt[..., :2], axis=-1)
  return 100.0 * _masked_mean(d, m) / box_size(gt, m)


def nme_3d(pred, gt, mask=None, z_align: str | None = "min") -> np.ndarray:
  """3D NME in percent (2DASL's convention; see the module docstring).

  Args:
    pred, gt: (..., K, 3) points in original-image pixels (x, y as in the image, z in the same scale).
    mask: optional (..., K) bool of kept points.
    z_align: ``"min"`` (2DASL: each cloud shifted so that min z = 0), ``"mean"`` or None (no shift).
  Returns:
    (...,) ``100 * mean_k |pred_k - gt_k|_3 / sqrt(w * h)`` with (w, h) the 2D (x, y) box of the GT points.
  """
  pred, gt = _f64(pred), _f64(gt)
  _check_pair(pred, gt, "nme_3d", (3,))
  m = _mask_or_all(mask, gt.shape[:-1])
  d = np.linalg.norm(_z_aligned(pred, m, z_align) - _z_aligned(gt, m, z_align), axis=-1)
  return 100.0 * _masked_mean(d, m) / box_size(gt, m)


def nme_dense(pred, gt, normaliser=None, dims: int = 3, z_align: str | None = "min") -> np.ndarray:
  """Dense-vertex NME in percent (dense alignment, PRNet Sec. 4.2 / 2DASL Fig. 6 c-d).

  Args:
    pred, gt: (..., V, 3) corresponding vertices in original-image pixels.
    normaliser: None -> ``sqrt(w * h)`` of the (x, y) box of the GT vertices ("bounding box size", PRNet);
      or an array broadcastable to (...,), e.g. ``box_size`` of the 68 GT landmarks, which is what 2DASL's
      ``nme_for_alignment_dense_*.m`` used.
    dims: 2 (x, y only; "2D dense") or 3.
    z_align: as in ``nme_3d`` (ignored for dims=2).
  Returns:
    (...,) percent.
  """
  pred, gt = _f64(pred), _f64(gt)
  _check_pair(pred, gt, "nme_dense", (3,))
  if dims not in (2, 3):
    raise ValueError(f"nme_dense: dims must be 2 or 3, got {dims}")
  m = np.ones(gt.shape[:-1], bool)
  if dims == 3:
    pred, gt = _z_aligned(pred, m, z_align), _z_aligned(gt, m, z_align)
  d = np.linalg.norm(pred[..., :dims] - gt[..., :dims], axis=-1).mean(-1)
  norm = box_size(gt) if normaliser is None else _f64(normaliser)
  return 100.0 * d / norm


# ----------------------------------------------------------------------------------------- yaw bins


def yaw_bin_summary(errors, yaw, edges: Sequence[float] = (0, 30, 60, 90)) -> dict:
  """Per-|yaw|-bin means of per-image errors (3DDFA's ``ana``).

  Bins: ``[e0, e1]``, ``(e1, e2]``, ..., ``(e_{B-1}, inf)`` on |yaw| in degrees: the last bin is open-ended.
  Non-finite errors are failures: counted in ``n_failed`` (and per bin in ``failed``), excluded from the means.
  Images with a non-finite yaw (or |yaw| < e0) are in ``overall`` but in no bin (``n_unbinned``).

  Returns:
    dict(bins=[B bin means], counts=[B], failed=[B], mean_of_bins (mean over non-empty bins), std_of_bins,
    overall (mean of all finite errors), n (finite errors), n_failed, n_unbinned, labels=[B str], edges).
  """
  e = _f64(errors).reshape(-1)
  a = np.abs(_f64(yaw).reshape(-1))
  if e.shape != a.shape:
    raise ValueError(f"yaw_bin_summary: {e.shape[0]} errors but {a.shape[0]} yaws")
  edges = tuple(float(x) for x in edges)
  if len(edges) < 2 or any(b <= a_ for a_, b in zip(edges, edges[1:])):
    raise ValueError(f"yaw_bin_summary: edges must be >= 2 increasing values, got {edges}")
  ok = np.isfinite(e)
  bins, counts, failed, labels = [], [], [], []
  binned = np.zeros(e.shape, bool)
  for i in range(len(edges) - 1):
    lo, hi = edges[i], edges[i + 1]
    last = i == len(edges) - 2
    sel = (a >= lo) if i == 0 else (a > lo)
    if not last:
      sel &= a <= hi
    binned |= sel
    counts.append(int((sel & ok).sum()))
    failed.append(int((sel & ~ok).sum()))
    bins.append(float(e[sel & ok].mean()) if counts[-1] else float("nan"))
    labels.append(("[" if i == 0 else "(") + f"{lo:g}, {hi:g}" + ("+]" if last else "]"))
  finite_bins = [b for b in bins if np.isfinite(b)]
  return dict(
      bins=bins, counts=counts, failed=failed, labels=labels, edges=edges,
      mean_of_bins=float(np.mean(finite_bins)) if finite_bins else float("nan"),
      std_of_bins=float(np.std(finite_bins)) if finite_bins else float("nan"),
      overall=float(e[ok].mean()) if ok.any() else float("nan"),
      n=int(ok.sum()), n_failed=int((~ok).sum()), n_unbinned=int((ok & ~binned).sum()))


# ----------------------------------------------------------------------------- AFLW2000-3D protocol

EXCLUDED_1998 = ("image02139.jpg", "image03862.jpg")  # dropped by the 2DASL/3DDFA benchmark (detector failed)


def subset_mask(names, subset: str = "1998") -> np.ndarray:
  """(N,) bool: which AFLW2000-3D images belong to the ``"1998"`` (2DASL/3DDFA benchmark) or ``"2000"`` set.

  ``names`` are file names or paths (the base name is compared, e.g. ``image02139.jpg``).
  """
  names = [os.path.basename(str(n)) for n in np.asarray(names).reshape(-1)]
  if subset == "2000":
    return np.ones(len(names), bool)
  if subset == "1998":
    return np.array([n not in EXCLUDED_1998 for n in names], bool)
  raise ValueError(f"subset must be '1998' or '2000', got {subset!r}")


def aflw2000_nme(pred_crop_pts68, roi_box, gt, yaw, names, subset: str = "1998",
                 edges: Sequence[float] = (0, 30, 60, 90), z_align: str | None = "min",
                 crop_size: int = CROP_SIZE) -> dict:
  """The AFLW2000-3D 68-point protocol.

  Args:
    pred_crop_pts68: (N, 68, 2|3) predictions in CROP coordinates (``geometry.landmarks2d/3d``).
    roi_box: (N, 4) crop boxes (sx, sy, ex, ey) in the original image.
    gt: (N, 3, 68) or (N, 2, 68) GT as stored in meta.npz: ``pts68`` (original) or ``pts68_reannotated`` (2D).
    yaw: (N,) degrees; names: (N,) image names; subset: ``"1998"`` or ``"2000"``.
  Returns:
    dict(subset, mask (N,) bool, names (M,), nme2d (M,) percent, summary2d = ``yaw_bin_summary``) and, when
    both ``pred`` and ``gt`` have z, nme3d / summary3d (``nme_3d`` with ``z_align``).
  """

  pred = _f64(pred_crop_pts68)
  gt = _f64(gt)
  n = pred.shape[0]
  if pred.ndim != 3 or pred.shape[1:2] != (68,) or pred.shape[2] not in (2, 3):
    raise ValueError(f"aflw2000_nme: pred must be (N, 68, 2|3) crop coords, got {pred.shape}")
  if gt.shape[0] != n or gt.ndim != 3 or gt.shape[1] not in (2, 3) or gt.shape[2] != 68:
    raise ValueError(f"aflw2000_nme: gt must be (N, 2|3, 68) as in meta.npz, got {gt.shape} for N={n}")
  roi_box = _f64(roi_box)
  if roi_box.shape != (n, 4):
    raise ValueError(f"aflw2000_nme: roi_box must be ({n}, 4), got {roi_box.shape}")
  yaw, names = _f64(yaw).reshape(-1), np.asarray(names).reshape(-1)
  if yaw.shape[0] != n or names.shape[0] != n:
    raise ValueError(f"aflw2000_nme: {n} predictions but {yaw.shape[0]} yaws and {names.shape[0]} names")
  m = subset_mask(names, subset)
  pred_img = np.asarray(crop.crop_to_image(pred, roi_box, crop_size), np.float64)[m]
  gt_pts = np.swapaxes(gt, 1, 2)[m]
  e2 = nme_2d(pred_img[..., :2], gt_pts[..., :2])
  out = dict(subset=subset, mask=m, names=names[m], nme2d=e2, summary2d=yaw_bin_summary(e2, yaw[m], edges))
  if pred.shape[2] == 3 and gt.shape[1] == 3:
    e3 = nme_3d(pred_img, gt_pts, z_align=z_align)
    out.update(nme3d=e3, summary3d=yaw_bin_summary(e3, yaw[m], edges))
  return out


# -------------------------------------------------------------------------------- AFLW 21 points

# AFLW-21 order (verified on ../shared/data/aflw_wild pts21, image left -> right in a frontal face):
#  0-5 brows (left brow left end, centre, right end; right brow left end, centre, right end),
#  6-11 eyes (left eye left corner, centre, right corner; right eye ...), 12 left ear lobe,
#  13-15 nose (left wing, tip, right wing), 16 right ear lobe, 17-19 mouth (left corner, centre, right corner),
#  20 chin. "Left" = image left (the subject's right). Each entry lists the 0-based iBUG-68 points averaged
#  (3DDFA's benchmark_aflw.py mapping): eye centres = mean of the 6 eye points, mouth centre = mean of the 8
#  inner-lip points, ears -> jaw-contour points 2 and 14 (surrogates: the ear lobes have no iBUG point; on
#  near-frontal AFLW faces they sit ~9-10% of the box from these points, the nearest jaw points).
IBUG68_TO_AFLW21 = (
    (17,), (19,), (21,), (22,), (24,), (26,),
    (36,), (36, 37, 38, 39, 40, 41), (39,), (42,), (42, 43, 44, 45, 46, 47), (45,),
    (2,), (31,), (30,), (35,), (14,),
    (48,), (60, 61, 62, 63, 64, 65, 66, 67), (54,), (8,),
)
AFLW21_EARS = (12, 16)


def _aflw21_matrix() -> np.ndarray:
  w = np.zeros((21, 68))
  for i, idx in enumerate(IBUG68_TO_AFLW21):
    w[i, list(idx)] = 1.0 / len(idx)
  return w


def pts68_to_aflw21(pts68):
  """(..., 68, D) iBUG points -> (..., 21, D) AFLW points (``IBUG68_TO_AFLW21``). jax in -> jax out."""
  if pts68.shape[-2] != 68:
    raise ValueError(f"pts68_to_aflw21: expected (..., 68, D), got {tuple(pts68.shape)}")
  w = _aflw21_matrix()
  import jax
  if isinstance(pts68, jax.Array):
    import jax.numpy as jnp
    return jnp.einsum("ak,...kd->...ad", jnp.asarray(w, pts68.dtype), pts68)
  return np.einsum("ak,...kd->...ad", w, _f64(pts68))


def aflw21_from_meta(pts21) -> tuple[np.ndarray, np.ndarray]:
  """meta.npz ``pts21`` (N, 2, 21), invisible points marked x = -1 -> (pts (N, 21, 2) NaN where invisible,
  visible (N, 21) bool)."""
  p = _f64(pts21)
  if p.ndim != 3 or p.shape[1:] != (2, 21):
    raise ValueError(f"aflw21_from_meta: expected (N, 2, 21), got {p.shape}")
  p = np.swapaxes(p, 1, 2)
  vis = (p[..., 0] != -1) & np.all(np.isfinite(p), -1)
  return np.where(vis[..., None], p, np.nan), vis


def aflw21_nme(pred, gt, visible, normaliser=None, drop_ears: bool = False) -> np.ndarray:
  """AFLW 21-point NME in percent over the visible GT points.

  Args:
    pred, gt: (N, 21, 2) in original-image coordinates (gt may hold NaN at invisible points).
    visible: (N, 21) bool.
    normaliser: None -> ``sqrt(w * h)`` of the visible GT 21-point box; or (N,) given (3DDFA used the box of
      its fitted 68-point GT, which this data lacks).
    drop_ears: also ignore points 12 and 16 (their iBUG surrogates are the least faithful).
  Returns:
    (N,) percent; NaN for a non-finite prediction at a visible point or an image with no visible point.
  """
  pred, gt = _f64(pred), _f64(gt)
  _check_pair(pred, gt, "aflw21_nme", (2,))
  if gt.shape[-2] != 21:
    raise ValueError(f"aflw21_nme: expected 21 points, got {gt.shape}")
  vis = _mask_or_all(visible, gt.shape[:-1]).copy()
  if drop_ears:
    vis[..., list(AFLW21_EARS)] = False
  d = np.linalg.norm(pred - np.where(vis[..., None], gt, 0.0), axis=-1)
  norm = box_size(gt, vis) if normaliser is None else _f64(normaliser)
  return 100.0 * _masked_mean(d, vis) / norm


def aflw_nme(pred_crop_pts68, roi_box, pts21, yaw, edges: Sequence[float] = (0, 30, 60, 90),
             normaliser=None, drop_ears: bool = False, crop_size: int = CROP_SIZE) -> dict:
  """The AFLW 21-point protocol on meta.npz-style data.

  Args:
    pred_crop_pts68: (N, 68, 2|3) predictions in crop coordinates; roi_box (N, 4); pts21 (N, 2, 21) GT in
      the original image (x = -1 invisible); yaw (N,) degrees.
  Returns:
    dict(nme (N,) percent, summary = ``yaw_bin_summary``).
  """
  pred = _f64(pred_crop_pts68)
  if pred.ndim != 3 or pred.shape[1] != 68:
    raise ValueError(f"aflw_nme: pred must be (N, 68, 2|3) crop coords, got {pred.shape}")
  img = np.asarray(crop.crop_to_image(pred[..., :2], _f64(roi_box), crop_size), np.float64)
  gt, vis = aflw21_from_meta(pts21)
  e = aflw21_nme(pts68_to_aflw21(img), gt, vis, normaliser=normaliser, drop_ears=drop_ears)
  return dict(nme=e, summary=yaw_bin_summary(e, yaw, edges))


# --------------------------------------------------------------------------- ICP / reconstruction


def procrustes(src, dst, scale: bool = False):
  """Closed-form least-squares ``dst ~ s * R @ src + t`` for paired points (V, 3) (Umeyama 1991).

  Returns (R (3, 3) proper rotation, t (3,), s float; s = 1 unless ``scale``).
  """
  src, dst = _f64(src), _f64(dst)
  if src.shape != dst.shape or src.ndim != 2 or src.shape[1] != 3:
    raise ValueError(f"procrustes: expected two (V, 3) arrays, got {src.shape} and {dst.shape}")
  ms, md = src.mean(0), dst.mean(0)
  a, b = src - ms, dst - md
  u, sig, vt = np.linalg.svd(b.T @ a / len(src))
  d = np.ones(3)
  d[2] = np.sign(np.linalg.det(u) * np.linalg.det(vt)) or 1.0
  r = (u * d) @ vt
  s = float((sig * d).sum() / (a ** 2).sum(1).mean()) if scale else 1.0
  return r, md - s * r @ ms, s


def rigid_icp(src, dst, iters: int = 50, scale: bool = False, init: str = "centroid"):
  """Iterative closest point: the transform ``x -> s * R @ x + t`` that moves ``src`` (V, 3) onto ``dst`` (M, 3).

  Each iteration pairs every transformed src point with its nearest dst point (scipy cKDTree, built once) and
  re-solves ``procrustes`` from the original src; it stops when the pairing no longer changes.
  ``init="centroid"`` starts by matching centroids (as 2DASL's script does), ``"identity"`` from no motion.
  ``scale=False`` is rigid (PRNet/2DASL); True gives a similarity.

  Returns:
    (R (3, 3), t (3,), s float).
  """
  from scipy.spatial import cKDTree
  src, dst = _f64(src), _f64(dst)
  if src.ndim != 2 or src.shape[1] != 3 or dst.ndim != 2 or dst.shape[1] != 3:
    raise ValueError(f"rigid_icp: expected (V, 3) and (M, 3), got {src.shape} and {dst.shape}")
  if not (np.all(np.isfinite(src)) and np.all(np.isfinite(dst))):
    raise ValueError("rigid_icp: non-finite points")
  r, s = np.eye(3), 1.0
  if init == "centroid":
    t = dst.mean(0) - src.mean(0)
  elif init == "identity":
    t = np.zeros(3)
  else:
    raise ValueError(f"rigid_icp: init must be 'centroid' or 'identity', got {init!r}")
  tree = cKDTree(dst)
  prev = None
  for _ in range(iters):
    _, idx = tree.query(s * src @ r.T + t)
    if prev is not None and np.array_equal(idx, prev):
      break
    r, t, s = procrustes(src, dst[idx], scale)
    prev = idx
  return r, t, s


def outer_interocular(pts68) -> np.ndarray:
  """(..., 68, D) -> (...,) distance between the outer eye corners (iBUG 36 and 45); PRNet's 3D normaliser."""
  p = _f64(pts68)
  return np.linalg.norm(p[..., 36, :] - p[..., 45, :], axis=-1)


def reconstruction_nme(pred_vertices, gt_vertices, normaliser="bbox", iters: int = 50,
                       scale: bool = False):
  """3D face reconstruction NME in percent after ICP (2DASL Sec. 4.3 / PRNet Sec. 4.3).

  The GT cloud is rigidly ICP-aligned onto the prediction (equivalent to moving the prediction, the motion
  being an isometry); each GT point is paired with its nearest predicted point (2DASL's pairing direction) and
  the mean distance, in GT units, is divided by the normaliser.

  Args:
    pred_vertices: (V, 3) or (N, V, 3); gt_vertices: (M, 3) or (N, M, 3) (no correspondence needed).
    normaliser: ``"bbox"`` -> ``sqrt(w * h)`` of the GT (x, y) extent (2DASL's script); or a float / (N,)
      array, e.g. ``outer_interocular(gt_pts68)`` for PRNet's convention.
    iters: maximum ICP iterations; scale: allow a similarity (distances then measured in GT units).
  Returns:
    float for one pair, (N,) array for a batch; NaN when the prediction is not finite.
  """
  from scipy.spatial import cKDTree
  pred, gt = _f64(pred_vertices), _f64(gt_vertices)
  single = pred.ndim == 2
  if single:
    pred, gt = pred[None], gt[None]
  if pred.ndim != 3 or gt.ndim != 3 or pred.shape[0] != gt.shape[0] or pred.shape[2] != 3 or gt.shape[2] != 3:
    raise ValueError(f"reconstruction_nme: expected (N, V, 3) and (N, M, 3), got {pred.shape} and {gt.shape}")
  if isinstance(normaliser, str):
    if normaliser != "bbox":
      raise ValueError(f"reconstruction_nme: normaliser must be 'bbox' or numbers, got {normaliser!r}")
    norm = box_size(gt)
  else:
    norm = np.broadcast_to(_f64(normaliser), (gt.shape[0],))
  out = np.full(gt.shape[0], np.nan)
  for i in range(gt.shape[0]):
    if not np.all(np.isfinite(pred[i])):
      continue
    r, t, s = rigid_icp(gt[i], pred[i], iters=iters, scale=scale)
    d, _ = cKDTree(pred[i]).query(s * gt[i] @ r.T + t)
    out[i] = 100.0 * d.mean() / s / norm[i]
  return float(out[0]) if single else out


# ---------------------------------------------------------------------------------------------- CED


def ced(errors, max_error: float = 10.0, n: int = 1001) -> tuple[np.ndarray, np.ndarray]:
  """Cumulative error distribution: (thresholds (n,) = linspace(0, max_error), fraction of images with
  error <= threshold (n,)). Non-finite errors (failures) stay in the denominator and are never below."""
  e = _f64(errors).reshape(-1)
  if e.size == 0:
    raise ValueError("ced: no errors")
  thr = np.linspace(0.0, float(max_error), int(n))
  s = np.sort(np.where(np.isfinite(e), e, np.inf))
  return thr, np.searchsorted(s, thr, side="right") / e.size


def ced_auc(errors, max_error: float = 10.0, n: int = 1001) -> float:
  """Area under the CED on [0, max_error], divided by max_error (in [0, 1])."""
  thr, frac = ced(errors, max_error, n)
  return float(np.trapezoid(frac, thr) / max_error)
