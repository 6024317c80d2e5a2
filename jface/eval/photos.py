r"""The whole pipeline on AFLW2000-3D's original photos: detect -> 68 points -> crop -> predict, as a user runs it.

::

  python evaluate.py photos --data_dir ../shared/data/aflw2000_3d_dev --checkpoint WORKDIR --out OUT

Each 450x450 photo (``AFLW2000/imageNNNNN.jpg`` and ``meta.npz``) goes through ``jface.inference.Predictor``
with no given landmarks. The face evaluated is the detected one whose box contains the labels' centre and overlaps
their box most (``match_faces``; no such box: the photo counts as missed). Errors are the protocol's
(``jface.eval.metrics.nme_2d`` / ``nme_3d``, z aligned at the minimum, against ``pts68`` in the original image,
|yaw| bins, the 1998 subset); a missed face is a failure (NaN, excluded from the means, counted). Also
reported: the landmark source's own 68 points (the map the model read) and which map each face got. Compare
with the crop protocol of the same checkpoint (``evaluate.py --checkpoint``: benchmark crops and FAN landmark maps).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Optional, Sequence

import numpy as np

from jface.eval import metrics


def landmark_box(pts: np.ndarray) -> np.ndarray:
  """(..., K, 2) -> (..., 4) (x0, y0, x1, y1) box of the finite points."""
  p = np.asarray(pts, np.float64)[..., :2]
  return np.concatenate([np.nanmin(p, -2), np.nanmax(p, -2)], -1)


def match_faces(faces: Sequence, gt: np.ndarray) -> Optional[int]:
  """Index of the face (``FaceResult``) the detector found for the labelled face ``gt`` (68, 2): among the faces
  whose detector box (else landmarks' box) contains the labels' centre, the one whose box overlaps the labels' box
  most; None when no box contains the centre (a missed face). The prediction is judged whatever it is."""
  from jface.inference.detect import iou
  if not faces:
    return None
  boxes = np.stack([np.asarray(f.box, np.float64) if f.box is not None else landmark_box(f.landmarks)
                    for f in faces])
  c = np.asarray(gt, np.float64)[:, :2].mean(0)
  inside = (boxes[:, 0] < c[0]) & (c[0] < boxes[:, 2]) & (boxes[:, 1] < c[1]) & (c[1] < boxes[:, 3])
  if not inside.any():
    return None
  o = np.where(inside, iou(boxes, landmark_box(gt)[None])[:, 0], -1.0)
  return int(np.argmax(o))


def run(predictor, data_dir: str, subset: str = "1998", limit: int = 0, group: int = 16, holdout: int = 0,
        log=print) -> dict:
  """The pipeline over a split's photos -> dict of per-image arrays (names, yaw, found, nme2d, nme3d,
  nme2d_source, flm, landmarks_from, seconds) and ``summary`` (see ``summarise``)."""
  from jface.data import common
  meta = common.load_meta(os.path.join(data_dir, "meta.npz"))
  names = np.array([str(n) for n in meta["names"]])
  keep = metrics.subset_mask(names, subset)
  if holdout:  # the images a run with data.holdout=K held out of this (train) split: settings chosen without dev
    from jface.training import holdout_indices
    held = np.zeros(len(names), bool)
    held[holdout_indices(len(names), holdout)[1]] = True
    keep &= held
  if limit:
    keep &= np.cumsum(keep) <= limit
  idx = np.nonzero(keep)[0]
  gt = np.swapaxes(np.asarray(meta["pts68"], np.float64), 1, 2)[idx]  # (N, 68, 3)
  n = len(idx)
  pred = np.full((n, 68, 3), np.nan)  # image points; z NaN for a method without depth
  src = np.full((n, 68, 2), np.nan)
  found = np.zeros(n, bool)
  flm = np.array([""] * n, dtype=object)
  lm_from = np.array([""] * n, dtype=object)
  t0 = time.time()
  for g in range(0, n, group):
    rows = list(range(g, min(n, g + group)))
    images = [common.read_image(os.path.join(data_dir, "AFLW2000", names[idx[r]])) for r in rows]
    results = predictor.predict_images(images)
    for r, faces in zip(rows, results):
      k = match_faces(faces, gt[r, :, :2])
      if k is None:
        continue
      f = faces[k]
      found[r] = True
      flm[r], lm_from[r] = f.flm, f.landmarks_from
      if f.source_landmarks is not None:
        src[r] = f.source_landmarks
      pred[r, :, :2] = f.landmarks[:, :2]
      if f.landmarks_3d is not None:
        pred[r, :, 2] = f.landmarks_3d[:, 2]
    log(f"  {min(n, g + group)}/{n} photos, {int(found.sum())} faces matched, {time.time() - t0:.0f} s")
  e2 = metrics.nme_2d(pred[..., :2], gt[..., :2])
  out = dict(names=names[idx], yaw=np.asarray(meta["yaw"], np.float64)[idx], found=found, nme2d=e2,
             nme3d=metrics.nme_3d(pred, gt),
             nme2d_source=metrics.nme_2d(src, gt[..., :2]), flm=flm, landmarks_from=lm_from,
             seconds=time.time() - t0, pred=pred)
  out["summary"] = summarise(out)
  return out


def summarise(r: dict) -> dict:
  """Detection rate (overall and per |yaw| bin), the pipeline's 2D NME and the landmark source's, per bin."""
  yaw = np.abs(r["yaw"])
  edges = (0, 30, 60, 90)
  rate = []
  for i in range(3):
    sel = (yaw >= edges[i]) if i == 0 else (yaw > edges[i])
    if i < 2:
      sel &= yaw <= edges[i + 1]
    rate.append(float(r["found"][sel].mean()) if sel.any() else float("nan"))
  kinds = {}
  for f in r["flm"][r["found"]]:
    kinds[str(f)] = kinds.get(str(f), 0) + 1
  return dict(n=int(len(yaw)), found=int(r["found"].sum()), found_rate=float(r["found"].mean()),
              found_rate_bins=rate, flm_kinds=kinds,
              nme2d=metrics.yaw_bin_summary(r["nme2d"], r["yaw"]),
              nme3d=metrics.yaw_bin_summary(r["nme3d"], r["yaw"]),
              nme2d_source=metrics.yaw_bin_summary(r["nme2d_source"], r["yaw"]),
              seconds=round(float(r["seconds"]), 1))


def format_summary(s: dict) -> str:
  f = lambda b: " / ".join(f"{x:.3f}" for x in b)  # noqa: E731
  lines = [f"faces found: {s['found']}/{s['n']} ({100 * s['found_rate']:.1f} %), per |yaw| bin "
           + " / ".join(f"{100 * x:.0f} %" for x in s["found_rate_bins"]),
           "landmark maps: " + ", ".join(f"{k} {v}" for k, v in sorted(s["flm_kinds"].items())),
           f"pipeline 2D NME (68 pts): bins {f(s['nme2d']['bins'])}, mean of bins {s['nme2d']['mean_of_bins']:.3f}",
           f"pipeline 3D NME (68 pts): bins {f(s['nme3d']['bins'])}, mean of bins {s['nme3d']['mean_of_bins']:.3f}",
           f"landmark source alone:    bins {f(s['nme2d_source']['bins'])}, "
           f"mean of bins {s['nme2d_source']['mean_of_bins']:.3f} (n={s['nme2d_source']['n']})",
           f"{s['seconds']:.0f} s for {s['n']} photos"]
  return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
  ap = argparse.ArgumentParser(prog="python evaluate.py photos", description=__doc__.split("\n")[0])
  ap.add_argument("--data_dir", required=True, help="AFLW2000-3D split with AFLW2000/*.jpg and meta.npz")
  ap.add_argument("--checkpoint", required=True, help="a train.py workdir")
  ap.add_argument("--out", required=True, help="output folder (results.json, per_image.csv)")
  ap.add_argument("--which", default="latest", choices=("latest", "best"))
  ap.add_argument("--detector", default="auto")
  ap.add_argument("--landmarker", default="auto")
  ap.add_argument("--flm", default="auto")
  ap.add_argument("--iterations", type=int, default=0)
  ap.add_argument("--mesh_min_score", type=float, default=None, help="default: jface.inference.faces.MESH_MIN_SCORE")
  ap.add_argument("--no_mesh_retry", action="store_true", help="no second try of failed face meshes")
  ap.add_argument("--model_dir", default=None)
  ap.add_argument("--subset", default="1998", choices=("1998", "2000"))
  ap.add_argument("--limit", type=int, default=0, help="first N photos only (0 = all)")
  ap.add_argument("--holdout", type=int, default=0,
                  help="only the K images that training's --config.data.holdout=K held out of this split")
  args = ap.parse_args(argv)
  from jface.core.face_model import MissingAssetError
  from jface.inference import detect
  from jface.inference.predictor import Predictor
  from jface.train import checkpoint
  meta = os.path.join(args.data_dir, "meta.npz")
  if not os.path.isfile(meta) or not os.path.isdir(os.path.join(args.data_dir, "AFLW2000")):
    print(f"error: {args.data_dir} needs AFLW2000/*.jpg and meta.npz (../shared/data/aflw2000_3d_dev)",
          file=sys.stderr)
    return 2
  try:
    pred = Predictor(args.checkpoint, which=args.which, flm=args.flm, iterations=args.iterations,
                     detector=args.detector, landmarks=args.landmarker, dense=False,
                     mesh_min_score=args.mesh_min_score, mesh_retry=not args.no_mesh_retry,
                     model_dir=args.model_dir)
    source = pred.finder.source()[0]
    pred.finder.get_detector()
  except (checkpoint.CheckpointError, MissingAssetError, detect.NoDetectorError, ValueError) as e:
    print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
    return 2
  print(f"detector {args.detector}, landmark source {source}, flm {args.flm}")
  r = run(pred, args.data_dir, args.subset, args.limit, holdout=args.holdout)
  s = r["summary"]
  s.update(checkpoint=os.path.abspath(args.checkpoint), data_dir=os.path.abspath(args.data_dir),
           detector=args.detector, landmark_source=source, flm=args.flm, argv=list(argv or sys.argv[1:]))
  os.makedirs(args.out, exist_ok=True)
  with open(os.path.join(args.out, "results.json"), "w") as f:
    json.dump(s, f, indent=1, default=float)
  with open(os.path.join(args.out, "per_image.csv"), "w") as f:
    f.write("name,yaw,found,nme2d,nme3d,nme2d_source,flm,landmarks_from\n")
    for i in range(len(r["names"])):
      f.write(f"{r['names'][i]},{r['yaw'][i]:.2f},{int(r['found'][i])},{r['nme2d'][i]:.4f},{r['nme3d'][i]:.4f},"
              f"{r['nme2d_source'][i]:.4f},{r['flm'][i]},{r['landmarks_from'][i]}\n")
  print(format_summary(s))
  return 0

