"""Batch-1 latency of a workdir's exported predict function against ``Predictor.predict_crops`` on this CPU.

  python benchmarks/export_latency.py --checkpoint WORKDIR [--iters 50] [--dense] [--onnx_dir DIR]

Exports the workdir (``jface.export``, platforms cpu and cuda, with ONNX when the onnx extra is installed) to a
temporary folder, reloads ``predict.jax`` (``jface.export.load``) and times one random 120 x 120 crop (plus the
mean face's landmark map for a landmark-map model) per call: ``Predictor.predict_crops``, the reloaded jax
export, and ``predict.onnx`` in onnxruntime (CPU provider, ``--ort_threads``). ``--onnx_dir``: time the
``predict.onnx`` of an export folder written elsewhere instead. Reported per path: median / p90 ms over
``--iters`` calls after 3 warm-up calls (the first call's compile excluded), and the largest output difference
from ``predict_crops``.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

from jface import runtime

runtime.setup()

import numpy as np  # noqa: E402


def _time(fn, iters):
  for _ in range(3):
    fn()
  ms = []
  for _ in range(iters):
    t0 = time.perf_counter()
    fn()
    ms.append(1000 * (time.perf_counter() - t0))
  return np.median(ms), np.percentile(ms, 90)


def _diff(got: dict, want) -> float:
  return max(float(np.max(np.abs(got[k] - np.asarray(getattr(want, k))))) for k in got)


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--checkpoint", required=True, help="a train.py workdir")
  ap.add_argument("--iters", type=int, default=50)
  ap.add_argument("--which", default="latest", choices=("latest", "best"))
  ap.add_argument("--dense", action="store_true", help="with dense vertices")
  ap.add_argument("--onnx_dir", default=None, help="time this export folder's predict.onnx")
  ap.add_argument("--ort_threads", type=int, default=0, help="onnxruntime intra-op threads (0 = its default)")
  args = ap.parse_args(argv)
  from jface import export
  from jface.inference.predictor import Predictor
  from jface.train.checkpoint import CheckpointError
  try:
    pred = Predictor(args.checkpoint, which=args.which, detector="haar", landmarks="none")
  except (CheckpointError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  out = tempfile.mkdtemp(prefix="jface-export-")
  onnx_note = export.onnx_available()
  try:
    export.export_predictor(pred, out, dense=args.dense, onnx=onnx_note is None and not args.onnx_dir)
  except export.OnnxConversionError as e:
    onnx_note = str(e)
  run = export.load(out)
  crop = np.random.default_rng(0).integers(0, 256, (1, 120, 120, 3), dtype=np.uint8)
  feed = run.feed(crop)
  print(f"{run.meta['method']} ({run.meta['variant']}, step {run.meta['step']}), dense={args.dense}, "
        f"batch 1, {args.iters} calls; predict.jax {os.path.getsize(os.path.join(out, 'predict.jax')) / 1e6:.1f} MB")
  pc_args = feed if pred.use_flm else [crop]  # predict_crops(crops, flm_landmarks, mask)
  want = pred.predict_crops(*pc_args, dense=args.dense)
  rows = [("Predictor.predict_crops", lambda: pred.predict_crops(*pc_args, dense=args.dense), 0.0),
          ("jax export (jface.export.load)", lambda: run(*feed), _diff(run(*feed), want))]
  onnx_dir = args.onnx_dir or (out if "onnx" in run.meta["files"] else None)
  if onnx_dir:
    import onnxruntime
    meta = json.load(open(os.path.join(onnx_dir, "export.json")))
    opts = onnxruntime.SessionOptions()
    opts.log_severity_level = 3  # errors only
    opts.intra_op_num_threads = args.ort_threads
    sess = onnxruntime.InferenceSession(os.path.join(onnx_dir, "predict.onnx"), opts,
                                        providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    ort_feed = dict(zip([i["name"] for i in meta["inputs"]], feed))
    got = dict(zip(names, sess.run(None, ort_feed)))
    rows.append(("ONNX (onnxruntime)", lambda: sess.run(None, ort_feed), _diff(got, want)))
  else:
    print(f"ONNX: not timed ({onnx_note})")
  for name, fn, diff in rows:
    med, p90 = _time(fn, args.iters)
    print(f"  {name:32s} median {med:7.2f} ms  p90 {p90:7.2f} ms  max |diff| {diff:.2e}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
