r"""68 iBUG points from MediaPipe's 468-point face mesh: a linear map fitted on AFLW2000-3D's train split.

Google publishes no 468 -> 68 table. ``Mesh68Map`` predicts each of the 68 points as a weighted sum of the 468
mesh points' (x, y) plus an offset, the same weights for x and y, in the frame of the mesh's face region
(``jface.inference.facemesh.Roi``: centred, axes along the eye line, unit = region side), so the map is
invariant to where the face is, its size and its roll::

  q_k = sum_j W[k, j] m_j + b_k        (m_j: mesh point j in the region frame; q_k, b_k: (x, y))

Fitting (``fit``; ridge, lambda chosen by 5-fold cross-validation on the same split) needs the train split's
original photos and their 68-point labels: detect (BlazeFace) -> mesh -> frame, then least squares against the
labels in the same frame. Faces whose mesh score is below ``min_score`` (failed meshes) are left out of the fit.
The dev split is never used::

  python -m jface.inference.mesh68 fit --data ../shared/data/aflw2000_3d_train   # writes default_path()

The file stores the weights, the chosen lambda, the cross-validated NME per lambda and where it came from.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from typing import List, Optional, Sequence

import numpy as np

from jface.core.face_model import MissingAssetError
from jface.inference import facemesh as fm

FILE = "mesh468_to_ibug68.npz"
LAMBDAS = (1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0)
FIT_HINT = "python -m jface.inference.mesh68 fit --data DIR/aflw2000_3d_train"


def default_path() -> str:
  """Where ``fit`` writes the map: ``$JFACE_MODELS`` if set, else ``jface.inference.tflite.default_dir()``."""
  from jface.inference.tflite import default_dir
  return os.path.join(os.environ.get("JFACE_MODELS") or default_dir(), FILE)


def find_map(path: Optional[str] = None, model_dir: Optional[str] = None) -> Optional[str]:
  """The map file: ``path`` if given, else the first ``FILE`` in the model folders
  (``jface.inference.tflite.search_dirs``), else None."""
  from jface.inference.tflite import search_dirs
  if path:
    return path
  for d in search_dirs(model_dir):
    if os.path.isfile(os.path.join(d, FILE)):
      return os.path.join(d, FILE)
  return None


def to_frame(points: np.ndarray, roi: fm.Roi) -> np.ndarray:
  """Image points (..., K, 2|3) -> region frame (..., K, 2): centred, unit = region side (x, y only)."""
  return fm.from_image(np.asarray(points, np.float64)[..., :2], roi, 1.0) - 0.5


def from_frame(q: np.ndarray, roi: fm.Roi) -> np.ndarray:
  """Inverse of ``to_frame``: (..., K, 2) region frame -> image points."""
  return fm.to_image(np.asarray(q, np.float64) + 0.5, roi, 1.0)


def _design(m: np.ndarray) -> np.ndarray:
  """(F, 468, 2) -> (2F, 470): x rows then y rows; the last two columns are the x / y offsets."""
  f = len(m)
  one, zero = np.ones((f, 1)), np.zeros((f, 1))
  return np.concatenate([np.concatenate([m[..., 0], one, zero], 1), np.concatenate([m[..., 1], zero, one], 1)], 0)


def solve(mesh: np.ndarray, target: np.ndarray, lam: float) -> np.ndarray:
  """Ridge solution (470, K) of ``target`` (F, K, 2) from ``mesh`` (F, 468, 2), both in the region frame;
  the offsets are not penalised."""
  a = _design(np.asarray(mesh, np.float64))
  b = np.concatenate([target[..., 0], target[..., 1]], 0)
  reg = lam * np.eye(a.shape[1])
  reg[-2:, -2:] = 0
  return np.linalg.solve(a.T @ a + reg, a.T @ b)


def predict_frame(w: np.ndarray, mesh: np.ndarray) -> np.ndarray:
  """(470, K) weights, (F, 468, 2) region-frame mesh -> (F, K, 2)."""
  f = len(mesh)
  y = _design(np.asarray(mesh, np.float64)) @ w
  return np.stack([y[:f], y[f:]], -1)


@dataclasses.dataclass
class Mesh68Map:
  """Fitted map: ``weights`` (470, 68) (468 mesh weights, then the x and y offsets), ``info`` (provenance)."""
  weights: np.ndarray
  info: dict

  def __call__(self, mesh: np.ndarray, roi: fm.Roi) -> np.ndarray:
    """468 image points (468, 2|3) of one face and its region -> (68, 2) image points."""
    q = predict_frame(self.weights, to_frame(mesh, roi)[None])[0]
    return from_frame(q, roi).astype(np.float32)

  def save(self, path: str) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp.npz"
    np.savez(tmp, weights=self.weights.astype(np.float64), info=json.dumps(self.info))
    os.replace(tmp, path)

  @classmethod
  def load(cls, path: Optional[str] = None, model_dir: Optional[str] = None) -> "Mesh68Map":
    path = find_map(path, model_dir) or default_path()
    if not os.path.isfile(path):
      raise MissingAssetError(f"missing {path}: the 468 -> 68 landmark map, from `{FIT_HINT}` (fits it on the "
                              "AFLW2000-3D train split in about a minute)")
    try:
      with np.load(path, allow_pickle=False) as z:
        w, info = np.asarray(z["weights"], np.float64), json.loads(str(z["info"]))
    except Exception as e:  # noqa: BLE001 -- numpy raises many types on corrupt files
      raise MissingAssetError(f"{path}: unreadable landmark map ({type(e).__name__}); refit it with "
                              f"`{FIT_HINT}`") from None
    if w.shape != (fm.NUM_POINTS + 2, 68):
      raise MissingAssetError(f"{path}: weights {w.shape}, expected ({fm.NUM_POINTS + 2}, 68); refit with "
                              f"`{FIT_HINT}`")
    return cls(w, info)


class MeshLandmarks:
  """68 points of detected faces: face mesh (``FaceMesh``) -> ``Mesh68Map``.

  ``__call__(image, faces: list[FaceBox with keypoints]) -> list of (pts (68, 2) image points, score)``; score is
  the mesh's face score in [0, 1] (below ``min_score`` the mesh failed; the caller decides what to do). A face
  whose mesh fails on the detection's region is retried on the regions of ``RETRY`` (upright, and/or 1.2x larger;
  the best-scoring mesh wins; docs/RESULTS.md, "Real photos", measures what it changes).
  """

  RETRY = ((True, 1.0), (True, 1.2), (False, 1.2))  # (upright, side factor)

  def __init__(self, model_dir: Optional[str] = None, map_path: Optional[str] = None, refine: int = 0,
               min_score: float = 0.5, retry: bool = True):
    self.mapping = Mesh68Map.load(map_path, model_dir)
    self.mesh = fm.FaceMesh(model_dir, refine=refine)
    self.min_score, self.retry = float(min_score), bool(retry)

  def meshes(self, image: np.ndarray, faces) -> List[fm.MeshResult]:
    rois = []
    for f in faces:
      if f.keypoints is None:  # a detector without eye keypoints: upright region
        b = np.asarray(f.box, np.float64)
        rois.append(fm.Roi(np.array([(b[0] + b[2]) / 2, (b[1] + b[3]) / 2]), 1.5 * max(b[2] - b[0], b[3] - b[1]),
                           0.0))
      else:
        rois.append(fm.roi_from_detection(f.box, f.keypoints))
    out = self.mesh(image, rois)
    bad = [k for k, m in enumerate(out) if m.score < self.min_score]
    if self.retry and bad:
      alt = [fm.Roi(rois[k].centre, rois[k].side * g, 0.0 if up else rois[k].angle) for k in bad
             for up, g in self.RETRY]
      again = self.mesh(image, alt)
      for j, k in enumerate(bad):
        best = max(again[j * len(self.RETRY):(j + 1) * len(self.RETRY)], key=lambda m: m.score)
        if best.score > out[k].score:
          out[k] = best
    return out

  def __call__(self, image: np.ndarray, faces) -> List[tuple]:
    return [(self.mapping(m.points, m.roi), m.score) for m in self.meshes(image, faces)]


# ------------------------------------------------------------------------------------------- fitting

def collect(data_dir: str, model_dir: Optional[str] = None, refine: int = 0, target: str = "gt", log=print) -> dict:
  """Runs BlazeFace + face mesh over an AFLW2000-3D split's original photos (``AFLW2000/*.jpg`` and
  ``meta.npz``) -> dict(names, yaw, gt (N, 68, 2) labels, mesh (N, 468, 2) region frame, target (N, 68, 2) region
  frame, score (N,), found (N,) bool, roi (N, 4) the mesh region: centre x, y, side, angle). The face used is the detected one that contains the labels' centre.
  ``target``: ``gt`` (the 68-point labels ``pts68``) or ``fan`` (the FAN detections on the benchmark crops,
  ``fan_pts68_crop``, in the image: the landmark maps 2DASL models are trained and tested with)."""
  from jface.data import common
  from jface.inference.blazeface import BlazeFaceDetector
  meta_path = os.path.join(data_dir, "meta.npz")
  if not os.path.isfile(meta_path):
    raise MissingAssetError(f"missing {meta_path}: an AFLW2000-3D split (../shared/data/aflw2000_3d_train)")
  meta = common.load_meta(meta_path)
  names = [str(n) for n in meta["names"]]
  gt = np.swapaxes(np.asarray(meta["pts68"], np.float64), 1, 2)[..., :2]
  if target == "fan":
    from jface.core import crop as crop_lib
    tgt = crop_lib.crop_to_image(np.asarray(meta["fan_pts68_crop"], np.float64),
                                 np.asarray(meta["roi_box"], np.float64), 120)
  elif target == "gt":
    tgt = gt
  else:
    raise ValueError(f"target must be 'gt' or 'fan', got {target!r}")
  det = BlazeFaceDetector("short", model_dir)
  mesh = fm.FaceMesh(model_dir, refine=refine)
  n = len(names)
  out = dict(names=np.array(names), yaw=np.asarray(meta["yaw"], np.float64), gt=gt,
             mesh=np.full((n, fm.NUM_POINTS, 2), np.nan), target=np.full((n, 68, 2), np.nan),
             score=np.zeros(n), found=np.zeros(n, bool), roi=np.full((n, 4), np.nan))
  t0 = time.time()
  for i, name in enumerate(names):
    try:
      img = common.read_image(os.path.join(data_dir, "AFLW2000", name))
    except ValueError as e:
      log(f"skipping {name}: {e}")
      continue
    c = gt[i].mean(0)
    faces = [f for f in det(img) if f.box[0] < c[0] < f.box[2] and f.box[1] < c[1] < f.box[3]]
    if not faces:
      continue
    m = mesh(img, [fm.roi_from_detection(faces[0].box, faces[0].keypoints)])[0]
    out["mesh"][i], out["target"][i] = to_frame(m.points, m.roi), to_frame(tgt[i], m.roi)
    out["score"][i], out["found"][i] = m.score, True
    out["roi"][i] = [m.roi.centre[0], m.roi.centre[1], m.roi.side, m.roi.angle]
    if (i + 1) % 200 == 0:
      log(f"  {i + 1}/{n} photos, {time.time() - t0:.0f} s")
  return out


def cross_validate(mesh: np.ndarray, target: np.ndarray, norm: np.ndarray, lambdas: Sequence[float] = LAMBDAS,
                   folds: int = 5, seed: int = 0) -> dict:
  """Mean point error / ``norm`` (F,) (in %, per face, averaged) of ``folds``-fold cross-validated maps, per
  lambda -> {lambda: cv error}."""
  idx = np.random.default_rng(seed).permutation(len(mesh))
  parts = np.array_split(idx, folds)
  res = {}
  for lam in lambdas:
    err = np.zeros(len(mesh))
    for p in parts:
      tr = np.setdiff1d(idx, p)
      q = predict_frame(solve(mesh[tr], target[tr], lam), mesh[p])
      err[p] = 100 * np.linalg.norm(q - target[p], axis=-1).mean(-1) / norm[p]
    res[float(lam)] = float(err.mean())
  return res


def fit(data: dict, min_score: float = 0.5, lambdas: Sequence[float] = LAMBDAS) -> Mesh68Map:
  """``collect``'s output -> the map (lambda by cross-validation; faces with mesh score >= ``min_score``)."""
  from jface.eval import metrics
  use = data["found"] & (data["score"] >= min_score)
  if use.sum() < 50:
    raise ValueError(f"only {int(use.sum())} usable faces to fit the 468 -> 68 map (need >= 50)")
  # normaliser in the frame: sqrt(w h) of the label box, as the NME protocol
  norm = metrics.box_size(data["target"][use])
  cv = cross_validate(data["mesh"][use], data["target"][use], norm, lambdas)
  lam = min(cv, key=cv.get)
  w = solve(data["mesh"][use], data["target"][use], lam)
  info = dict(target=data.get("target_kind", "gt"), lambda_=lam, cv_nme=cv, faces=int(use.sum()), found=int(data["found"].sum()), photos=len(data["found"]),
              min_score=min_score, fitted_on=os.path.abspath(str(data.get("data_dir", ""))),
              form="q_k = sum_j W[k, j] m_j + b_k, region frame (jface.inference.mesh68)")
  return Mesh68Map(w, info)


def out_of_fold(data: dict, lam: float, min_score: float = 0.5, folds: int = 5, seed: int = 0) -> np.ndarray:
  """(N, 68, 2) image points of each usable face (found, mesh score >= ``min_score``) predicted by a map fitted
  WITHOUT it (``folds``-fold), NaN elsewhere: the landmarks a test-time source gives on the fitting split itself,
  without the in-sample fit's optimism (training landmark maps, ``jface.data.flm_alt``)."""
  use = np.nonzero(data["found"] & (data["score"] >= min_score))[0]
  out = np.full((len(data["found"]), 68, 2), np.nan)
  perm = np.random.default_rng(seed).permutation(use)
  for part in np.array_split(perm, folds):
    w = solve(data["mesh"][np.setdiff1d(use, part)], data["target"][np.setdiff1d(use, part)], lam)
    q = predict_frame(w, data["mesh"][part])
    for j, i in enumerate(part):
      r = data["roi"][i]
      out[i] = from_frame(q[j], fm.Roi(r[:2], float(r[2]), float(r[3])))
  return out


def main(argv: Optional[Sequence[str]] = None) -> int:
  ap = argparse.ArgumentParser(prog="python -m jface.inference.mesh68",
                               description="Fit the 468 -> 68 landmark map on AFLW2000-3D's train split.")
  sub = ap.add_subparsers(dest="cmd", required=True)
  f = sub.add_parser("fit")
  f.add_argument("--data", required=True, help="AFLW2000-3D train split (AFLW2000/ + meta.npz)")
  f.add_argument("--out", default=None, help=f"output .npz (default {default_path()})")
  f.add_argument("--model_dir", default=None, help="folder of the .tflite files")
  f.add_argument("--min_score", type=float, default=0.5, help="faces with a lower mesh score are not fitted")
  f.add_argument("--target", default="gt", choices=("gt", "fan"),
                 help="fit to the 68-point labels (gt) or to the FAN detections (fan_pts68_crop)")
  lm = sub.add_parser("landmarks", help="out-of-fold 68 points of a labelled split's photos (training landmark maps)")
  lm.add_argument("--data", required=True, help="AFLW2000-3D split (AFLW2000/ + meta.npz) the map is fitted on")
  lm.add_argument("--out", required=True, help="output .npz (names, pts68 image points, score)")
  lm.add_argument("--model_dir", default=None)
  lm.add_argument("--min_score", type=float, default=0.5)
  args = ap.parse_args(argv)
  if args.cmd == "landmarks":
    try:
      data = collect(args.data, args.model_dir)
      lam = fit(data, args.min_score).info["lambda_"]
    except (MissingAssetError, ValueError) as e:
      print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
      return 2
    pts = out_of_fold(data, lam, args.min_score)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    np.savez(args.out, names=data["names"], pts68=pts, score=data["score"], lambda_=lam)
    from jface.eval import metrics
    e = metrics.nme_2d(pts, data["gt"])
    s = metrics.yaw_bin_summary(e, data["yaw"])
    print(f"{int(np.isfinite(e).sum())}/{len(e)} photos with points; out-of-fold 2D NME vs labels: bins "
          + " / ".join(f"{b:.3f}" for b in s["bins"]) + f", mean of bins {s['mean_of_bins']:.3f} -> {args.out}")
    return 0
  if os.path.basename(os.path.normpath(args.data)).endswith("_dev"):
    print("error: the dev split is for evaluation only; fit on the train split", file=sys.stderr)
    return 2
  try:
    data = collect(args.data, args.model_dir, target=args.target)
    data["data_dir"], data["target_kind"] = args.data, args.target
    mapping = fit(data, args.min_score)
  except (MissingAssetError, ValueError) as e:
    print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
    return 2
  out = args.out or default_path()
  mapping.save(out)
  info = mapping.info
  print(f"{info['found']}/{info['photos']} faces found, {info['faces']} fitted (mesh score >= {args.min_score})")
  print("5-fold CV NME (%, mesh faces, region frame) per lambda: " +
        ", ".join(f"{k:g}: {v:.3f}" for k, v in info["cv_nme"].items()))
  print(f"lambda {info['lambda_']:g} -> {out}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
