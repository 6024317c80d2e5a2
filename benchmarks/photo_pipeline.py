"""Per-face cost of the photo front end on this CPU: face detectors and the 68-point landmark source, as
``predict`` runs them (``jface.inference``; nothing patched).

Times, over N photos (default: the first 40 ``aflw2000_3d_dev`` 450x450 originals, one face each), with
``time.perf_counter`` after one warm-up call each:
* BlazeFace short / full range (``jface.inference.blazeface``): one photo per call, and all N in one batched call;
* OpenCV's Haar cascades (frontal + profile on the image and its mirror), the always-present fallback;
* the face mesh + 468 -> 68 map (``jface.inference.mesh68.MeshLandmarks``) on each detected face, one face per
  call (what ``predict`` does per photo) and with ``--refine 1``;
* the whole front end ``FaceFinder.find`` (detect -> 68 points -> crop box -> 120x120 crop and map points).
Last line: ``front end ms/face: <median of FaceFinder.find per photo>``.

  python benchmarks/photo_pipeline.py [--data_dir ../shared/data/aflw2000_3d_dev] [--n 40]

Needs the optional install (``pip install -e '.[photos]'``, ``python -m jface.inference.tflite fetch``,
``python -m jface.inference.mesh68 fit --data ../shared/data/aflw2000_3d_train``).
"""
from __future__ import annotations

import argparse
import os
import sys
import time

from jface import runtime

runtime.setup()

import numpy as np  # noqa: E402

_SHARED = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "data")


def _times(fn, items, repeat=1):
  fn(items[0])  # warm-up
  out = []
  for _ in range(repeat):
    for it in items:
      t0 = time.perf_counter()
      fn(it)
      out.append(1000 * (time.perf_counter() - t0))
  return np.asarray(out)


def _row(name, ms, per=1):
  ms = np.asarray(ms) / per
  print(f"{name:<44} median {np.median(ms):7.2f} ms   mean {ms.mean():7.2f}   p90 {np.percentile(ms, 90):7.2f}")


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--data_dir", default=os.path.join(_SHARED, "aflw2000_3d_dev"))
  ap.add_argument("--n", type=int, default=40)
  ap.add_argument("--model_dir", default=None)
  args = ap.parse_args(argv)
  from jface.core.face_model import MissingAssetError
  from jface.data import common
  from jface.inference import detect, mesh68
  from jface.inference.faces import FaceFinder
  try:
    meta = common.load_meta(os.path.join(args.data_dir, "meta.npz"))
  except Exception as e:  # noqa: BLE001
    print(f"error: needs an AFLW2000-3D split with AFLW2000/*.jpg ({' '.join(str(e).split())[:200]})", file=sys.stderr)
    return 2
  names = [str(n) for n in meta["names"][:args.n]]
  images = [common.read_image(os.path.join(args.data_dir, "AFLW2000", n)) for n in names]
  print(f"{len(images)} photos {images[0].shape[1]}x{images[0].shape[0]} from {args.data_dir}; load "
        f"{os.getloadavg()[0]:.2f}; {os.cpu_count()} CPUs")
  try:
    short = detect.make_detector("blazeface", model_dir=args.model_dir)
    full = detect.make_detector("blazeface_full", model_dir=args.model_dir)
    marks = mesh68.MeshLandmarks(args.model_dir)
    marks_refine = mesh68.MeshLandmarks(args.model_dir, refine=1)
  except (MissingAssetError, detect.NoDetectorError) as e:
    print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
    return 2
  _row("BlazeFace short, 1 photo per call", _times(short, images, 3))
  t0 = time.perf_counter()
  short.detect_batch(images)
  _row(f"BlazeFace short, {len(images)} photos per call", [1000 * (time.perf_counter() - t0)], len(images))
  _row("BlazeFace full range, 1 photo per call", _times(full, images, 3))
  if detect.haar_cascade_dir():
    _row("Haar cascades (frontal + 2 x profile)", _times(detect.make_detector("haar"), images))
  faces = [(im, short(im)[:1]) for im in images]
  faces = [(im, f) for im, f in faces if f]
  _row("face mesh + 468->68 map, 1 face per call", _times(lambda x: marks(*x), faces, 3))
  _row("  the same with one refinement pass", _times(lambda x: marks_refine(*x), faces, 3))
  finder = FaceFinder(use_flm=True, detector=short, landmarks=marks)
  t = _times(finder.find, images, 3)
  _row("FaceFinder.find: detect + 68 points + crop", t)
  print(f"front end ms/face: {np.median(t):.2f}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
