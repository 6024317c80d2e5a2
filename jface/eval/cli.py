"""The ``evaluate.py`` command: AFLW2000-3D (68 points), AFLW (21 points), synthetic.

Usage (``python evaluate.py --help`` for every flag)::

  python evaluate.py --dataset aflw2000_3d --data_dir DIR [--subset 1998|2000] [--gt original|reannotated]
                     (--predictions FILE | --checkpoint WORKDIR | --labels) --out OUTDIR
  python evaluate.py --dataset aflw --data_dir ../shared/data/aflw_wild --predictions FILE.npz --out OUTDIR
  python evaluate.py --dataset synthetic [--num 200 --seed 12345] (--predictions FILE | --checkpoint WD) --out O

Data (``--data_dir``):

* ``aflw2000_3d``, crop layout (preferred when ``DIR/meta.npz`` exists; ``--layout`` forces one): ``DIR/crops/``
  + ``meta.npz`` (``names``, ``yaw``, ``roi_box``, ``pts68``, optional ``pts68_reannotated`` / ``fan_pts68_crop``).
  Original layout: ``DIR/AFLW2000/*.jpg|.mat`` (or ``DIR/*.jpg|.mat``): GT = ``pt3d_68``, roi box = 3DDFA's box
  from those landmarks clipped to the image (``jface.data.common.roi_box_from_landmarks``; equals the benchmark
  boxes), yaw = ``Pose_Para[1]`` in degrees, unwrapped like the benchmark's (= the meta's); image order = sorted
  file names. ``--gt reannotated`` needs the meta.
  ``--subset 1998`` (default) drops image02139 / image03862 as the 2DASL/3DDFA benchmark.
* ``aflw``: ``DIR/crops/`` + ``meta.npz`` with ``names``, ``roi_box``, ``yaw``, ``pts21`` (``aflw_wild``).
* ``synthetic``: ``jface.data.synthetic_faces.SyntheticFaces(--num, --seed)`` (no data dir); GT = the sampled params'
  landmarks in the 120 px crop (roi box = the crop), binned by their yaw.

Predictions: ``--predictions FILE``: ``.npy`` (N, 62) whitened params (or (N, 68, 2|3) crop landmarks) in the
image order above (meta ``names``; synthetic: index order), or ``.npz`` with ``names`` plus ``params`` (N, 62) or
``landmarks`` (N, 68, 2|3) in 120 x 120 crop pixels (the convention of ``jface.core.geometry.landmarks2d``; params
win when both are present). Params need the 3DMM (``--bfm_dir``, default ``../shared/data/3dmm`` next to the
repo when it exists).
``--labels`` evaluates the dataset's own 3DMM labels as if predicted: for AFLW2000-3D, the ``.mat`` fits converted
to the 62 params exactly as the training readers convert them (40/10 components), which is the floor that
training on those labels can reach; for synthetic faces, the sampled params (a check of the pipeline).
``--checkpoint WORKDIR`` runs a ``train.py`` workdir's regressor (``jface.train.loop.load_checkpoint``) on the
crops; its face model is ``config.bfm_dir`` unless ``--bfm_dir`` is given. Models with a landmark-map input
(``config.use_flm``) get it from ``--flm``: ``auto`` = the meta's ``fan_pts68_crop`` (FAN detections, the 2DASL
test protocol) when present, else ``mean`` = the 68 landmarks of the mean face (zero whitened params) -- a weak
stand-in for a detector; ``gt`` = the ground-truth landmarks (an oracle input; what ``train_lib``'s synthetic dev
evaluation feeds).

Failures: a missing/corrupt image or ``.mat``, a prediction missing from an ``.npz`` or with a non-finite value
is a counted failure (NaN per-image error, excluded from the means, listed in the table and results.json); bad
files/flags are one ``error:`` line. ``main`` returns 0 when at least one image was evaluated, 1 when none could
be, 2 on an input error.

Outputs in ``--out``: ``results.json`` (percent; ``nme_2d_68`` / ``nme_3d_68`` or ``nme_2d_21`` = dict(bins,
mean_of_bins, overall, n, n_failed, counts, labels); ``nme_dense_2d`` / ``nme_dense_3d`` / ``nme_icp`` when
computed; subset, gt, n_failed, failures (by reason), failed_images, skipped (what and why), command),
``per_image.csv`` (name, yaw, nme_2d, nme_3d, status), ``ced.png`` (``metrics.plot_ced``) and
``best_worst.png`` (best and worst images: prediction green, ground truth red).

Dense / ICP reconstruction NME (``metrics.nme_dense`` 2D and 3D normalised by the GT vertices' box,
``metrics.reconstruction_nme`` on every ``--icp_stride``-th vertex) need predicted params, a face model with
dense bases and dense ground truth: the synthetic set (its GT params) or, with the BFM, AFLW2000-3D ``.mat`` fits
(truncated to the model's 40/10 components, so an approximation of the full-BFM GT). Otherwise one line says why
they were skipped.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from typing import Optional, Sequence

import numpy as np

from jface.core.face_model import MissingAssetError
from jface.data.common import BadExample
from jface.eval import metrics, protocol, report
from jface.eval.data import (DATASETS, DEFAULT_BFM_DIR, EvalError, _need_dir, load_aflw, load_aflw2000, load_face,
                             load_synthetic)
from jface.eval.predictions import read_predictions
from jface.methods.base import FaceOutput
from jface.methods.workdir import load_checkpoint


def build_parser() -> argparse.ArgumentParser:
  ap = argparse.ArgumentParser(
      prog="evaluate.py", description="Evaluate 3DMM-parameter or landmark predictions (or a train.py checkpoint) "
      "on AFLW2000-3D (68 points, per |yaw| bin), AFLW (21 points) or synthetic faces.",
      epilog="Docs: jface/eval/cli.py. Outputs in --out: results.json, per_image.csv, ced.png, best_worst.png.")
  ap.add_argument("--dataset", choices=DATASETS, default="aflw2000_3d")
  ap.add_argument("--data_dir", help="aflw2000_3d: crop layout (crops/ + meta.npz) or original layout "
                  "(AFLW2000/*.jpg|.mat); aflw: aflw_wild-style folder (crops/ + meta.npz with pts21)")
  ap.add_argument("--layout", choices=("auto", "crops", "original"), default="auto",
                  help="aflw2000_3d layout; auto = meta.npz when present")
  ap.add_argument("--subset", choices=("1998", "2000"), default="1998",
                  help="AFLW2000-3D images: 1998 drops image02139/image03862 (2DASL/3DDFA benchmark)")
  ap.add_argument("--gt", choices=("original", "reannotated"), default="original",
                  help="AFLW2000-3D ground truth: pts68 (original) or pts68_reannotated (2D) of the meta")
  src = ap.add_mutually_exclusive_group(required=True)
  src.add_argument("--predictions", help=".npy (N, 62) whitened params in the dataset's image order, or .npz "
                   "with names + params (N, 62) or landmarks (N, 68, 2) in 120x120 crop pixels")
  src.add_argument("--checkpoint", help="a train.py workdir (config.json + checkpoints/)")
  src.add_argument("--labels", action="store_true", help="evaluate the dataset's own 3DMM labels as predictions: "
                   "aflw2000_3d: the .mat fits converted to the 62 params (what training sees; the label floor); "
                   "synthetic: the sampled params")
  ap.add_argument("--which", choices=("latest", "best"), default="latest", help="checkpoint to load")
  ap.add_argument("--out", required=True, help="output folder")
  ap.add_argument("--bfm_dir", default=None, help="3DDFA-format 3DMM folder (default: the checkpoint's "
                  f"config.bfm_dir, else {DEFAULT_BFM_DIR} when it exists)")
  ap.add_argument("--dense_bases_dir", default=None, help="folder with w_shp_sim.npy / w_exp_sim.npy (enables "
                  "dense / ICP NME with the real BFM)")
  ap.add_argument("--flm", choices=("auto", "detector", "mean", "gt"), default="auto",
                  help="landmark-map input of checkpoints with use_flm: auto = meta fan_pts68_crop when present, "
                  "else the mean face's landmarks; gt = ground truth (oracle)")
  ap.add_argument("--num", type=int, default=200, help="synthetic: number of faces")
  ap.add_argument("--seed", type=int, default=12345, help="synthetic: seed")
  ap.add_argument("--limit", type=int, default=0, help="evaluate only the first N images (0 = all)")
  ap.add_argument("--batch_size", type=int, default=32, help="checkpoint inference batch")
  ap.add_argument("--grid", type=int, default=8, help="images per row of best_worst.png")
  ap.add_argument("--tile", type=int, default=128, help="tile side (px) of best_worst.png")
  ap.add_argument("--icp_stride", type=int, default=0, help="ICP on every k-th vertex (0 = auto: 50 for the "
                  "53k-vertex BFM as 2DASL's script, else 1)")
  ap.add_argument("--no_dense", action="store_true", help="skip dense / ICP NME")
  return ap


def main(argv: Optional[Sequence[str]] = None, log=print) -> int:
  """The CLI. Returns the exit code (0 evaluated, 1 nothing could be evaluated, 2 input error: one ``error:`` line
  on stderr; set ``JFACE_DEBUG=1`` for the traceback). ``log`` receives the report lines (default ``print``)."""
  argv = list(sys.argv[1:] if argv is None else argv)
  args = build_parser().parse_args(argv)
  try:
    return run(args, argv, log)
  except (EvalError, MissingAssetError, BadExample, FileNotFoundError, ValueError) as e:
    if os.environ.get("JFACE_DEBUG"):
      raise
    msg = " ".join(str(e).split())
    print(f"error: {msg}", file=sys.stderr)
    return 2


def _source(args) -> str:
  if args.predictions:
    return "predictions " + args.predictions
  return "checkpoint " + args.checkpoint if args.checkpoint else "the dataset's own 3DMM labels"


def _default_bfm_dir() -> Optional[str]:
  return DEFAULT_BFM_DIR if os.path.isdir(DEFAULT_BFM_DIR) else None


def run(args: argparse.Namespace, argv: Sequence[str], log=print) -> int:
  """Evaluates per the parsed ``args`` (see ``build_parser``); writes ``args.out``. Returns the exit code."""
  # ---- face model / checkpoint
  config = method = state = face = None
  face_spec = args.bfm_dir
  if args.checkpoint:
    if not os.path.isdir(args.checkpoint):
      raise MissingAssetError(f"missing checkpoint workdir {args.checkpoint}")
    config, method, state = load_checkpoint(args.checkpoint, args.which)
    face_spec = args.bfm_dir or config.bfm_dir
    log(f"checkpoint {args.checkpoint} ({method.name}, {args.which}, step {int(state.step)}, model {config.model})")
  if args.dataset == "synthetic":
    if face_spec not in (None, "", "synthetic"):
      if args.checkpoint and not args.bfm_dir:
        raise EvalError(f"--dataset synthetic needs a checkpoint trained with the synthetic face model "
                        f"(its config.bfm_dir is {face_spec!r})")
      log(f"note: --dataset synthetic uses the embedded synthetic face model (ignoring --bfm_dir {face_spec})")
    face_spec = "synthetic"
  face_loader = lambda: load_face(face_spec or _default_bfm_dir(), args.dense_bases_dir)  # noqa: E731

  # ---- ground truth
  if args.dataset == "synthetic":
    face = face_loader()
    data = load_synthetic(args.num, args.seed, face)
  elif args.dataset == "aflw2000_3d":
    data = load_aflw2000(_need_dir(args.data_dir, args.dataset), args.gt, args.layout)
  else:
    data = load_aflw(_need_dir(args.data_dir, args.dataset))

  # ---- predictions aligned with all the dataset's images, then subset / limit
  preds = None
  if args.predictions:
    preds = read_predictions(args.predictions, list(data.names), data.order)
  keep = np.ones(len(data), bool)
  if args.dataset == "aflw2000_3d":
    keep &= metrics.subset_mask(data.names, args.subset)
  keep = np.nonzero(keep)[0]
  if args.limit > 0:
    keep = keep[:args.limit]
  data = data.take(keep)
  status = data.problems.copy()
  n = len(data)
  if n == 0:
    raise EvalError("no images to evaluate")
  want_dense = not args.no_dense and args.dataset != "aflw"

  gt_params = None
  if preds is not None:
    missing = preds.missing[keep]
    for i in np.nonzero(missing & (status == ""))[0]:
      status[i] = "missing prediction"
    if missing.any():
      log(f"note: {int(missing.sum())} of {n} images have no prediction in {args.predictions}: counted as "
          f"failures (e.g. {', '.join(data.names[missing][:3])})")
    if preds.params is not None:
      face = face or face_loader()
      out = _from_params(face, preds.params[keep], want_dense)
    else:
      out = FaceOutput(landmarks=np.asarray(preds.landmarks[keep], np.float64))
  elif args.labels:
    face = face or face_loader()
    pw, why = protocol.label_params(data, face)
    if pw is None:
      raise EvalError(f"--labels: {why}")
    for i in np.nonzero(~np.all(np.isfinite(pw), -1) & (status == ""))[0]:
      status[i] = "unreadable label (.mat)"
    out, gt_params = _from_params(face, pw, want_dense), pw
  else:
    face = face or face_loader()
    dense = want_dense and face.has_dense_bases
    predict = method.make_predict_fn(config, method.build(config, bn_axis_name=None), dense=dense)
    out, status = protocol.predict_dataset(predict, state, face, data, method.input_fields(config), args.flm,
                                           args.batch_size, log=log)

  # ---- the protocol
  res = protocol.score(data, out, face, status, dense=want_dense, icp_stride=args.icp_stride,
                       gt_params=gt_params)
  status, errors, summaries, skipped, npts = res["status"], res["errors"], res["summaries"], res["skipped"], \
      res["npts"]
  key2, key3 = f"nme_2d_{npts}", f"nme_3d_{npts}"
  e2, e3 = errors[key2], errors.get(key3)
  s2 = summaries[key2]
  results = {"dataset": args.dataset, "data_dir": args.data_dir, "layout": data.layout,
             "subset": args.subset if args.dataset == "aflw2000_3d" else None,
             "gt": data.gt_kind, "predictions": args.predictions, "checkpoint": args.checkpoint,
             "method": method.name if method else None, "labels": bool(args.labels), "n_images": n,
             key2: s2, key3: summaries.get(key3)}
  rows = [(f"NME 2D {npts}", s2)]
  if key3 in summaries:
    rows.append((f"NME 3D {npts}", summaries[key3]))
  for k, lab in (("dense_2d", "dense 2D"), ("dense_3d", "dense 3D"), ("icp", "ICP 3D recon")):
    if f"nme_{k}" in summaries:
      results[f"nme_{k}"] = summaries[f"nme_{k}"]
      rows.append((f"NME {lab}", summaries[f"nme_{k}"]))
  if "nme_dense_2d" in summaries and args.dataset == "aflw2000_3d":
    results["dense_note"] = "dense GT = the .mat fits truncated to the model's 40/10 components"

  # ---- failures
  reasons = {}
  for st in status:
    if st:
      key = st.split(":")[0]
      reasons[key] = reasons.get(key, 0) + 1
  results.update(n_failed=int(s2["n_failed"]), failures=reasons,
                 failed_images={str(nm): str(st) for nm, st in zip(data.names, status) if st},
                 skipped=skipped, command="python evaluate.py " + shlex.join(list(argv)))

  # ---- report
  if args.dataset == "aflw2000_3d":
    title = (f"AFLW2000-3D ({args.subset} subset, {data.gt_kind} GT, {data.layout} layout): {n} images, "
             f"{_source(args)}")
  elif args.dataset == "aflw":
    title = f"AFLW 21 points: {n} images"
  else:
    title = f"synthetic faces (num {args.num}, seed {args.seed}): {n} images"
  log(report.format_table(title, rows))
  for k, why in skipped.items():
    log(f"{k.replace('_', ' ')} skipped: {why}")
  if reasons:
    log(f"failures: {sum(reasons.values())} ({', '.join(f'{v} {k}' for k, v in reasons.items())}); e.g. "
        + "; ".join(f"{nm}: {st}" for nm, st in list(results["failed_images"].items())[:3]))

  # ---- files
  os.makedirs(args.out, exist_ok=True)
  with open(os.path.join(args.out, "results.json"), "w") as f:
    json.dump(report.nan_to_none(results), f, indent=2)
  report.write_csv(os.path.join(args.out, "per_image.csv"), data.names, data.yaw, e2, e3, status)
  if s2["n"] == 0:
    log(f"error: nothing could be evaluated ({n} images, all failed); wrote {args.out}/results.json")
    return 1
  curves = {f"2D {npts} pts": e2}
  if e3 is not None:
    curves[f"3D {npts} pts"] = e3
  report.plot_ced(curves, os.path.join(args.out, "ced.png"), title=title.split(":")[0])
  lm = np.where((status != "")[:, None, None], np.nan, np.asarray(out.landmarks, np.float64))
  grid = report.best_worst_grid(data, lm, e2, args.grid, args.tile)
  if grid is not None:
    report.write_png(os.path.join(args.out, "best_worst.png"), grid)
  log(f"wrote {args.out}/results.json, per_image.csv, ced.png, best_worst.png")
  return 0


def _from_params(face, pw: np.ndarray, dense: bool) -> FaceOutput:
  """A FaceOutput of (N, 62) whitened params (NaN rows = failures): their landmarks, and their dense vertices
  when ``dense`` and the face model has dense bases."""
  vertices = None
  if dense and face.has_dense_bases:
    vertices = protocol.vertices_from_params(face, np.nan_to_num(pw))  # (N, V, 3) float32
    vertices[~np.all(np.isfinite(pw), -1)] = np.nan
  return FaceOutput(landmarks=protocol.landmarks_from_params(face, pw), vertices=vertices, params=pw,
                    topology=face.name if vertices is not None else None)
