"""Optional pseudo-labeller: 68-point landmarks for a folder of face images with dlib, written as the landmarks
CSV of ``jface.data.wild`` (readable by ``wild.FolderSource``).

Install: ``pip install '.[dlib]'`` (dlib-bin + face-recognition-models, which ships
``shape_predictor_68_face_landmarks.dat``). Never needed by the tests or the training job; dlib is imported lazily.

  python -m jface.data.pseudo_label IMAGE_DIR OUT.csv [--predictor PATH] [--upsample 1]

Resumable: images already in OUT.csv are skipped, rows are appended and flushed one by one, progress is logged.
Per image: dlib's frontal detector (largest face); when it finds none (frequent on tight 120 x 120 crops) the box
falls back to a centred square of 0.7 x the short side, shifted down by 0.05 x it (roughly where 3DDFA-style
crops put the dlib box); unreadable images get an all-empty row (no landmarks -> ``BadExample`` when read, and not
retried). dlib points are 0-based pixel coordinates; the CSV stores them 1-based (+1).
"""
from __future__ import annotations

import argparse
import logging
import os
import time
from typing import Optional

import numpy as np

from jface.data import common, wild

log = logging.getLogger(__name__)

DLIB_HINT = "pseudo-labelling needs dlib: pip install '.[dlib]' (packages dlib-bin and face-recognition-models)"


class MissingDlibError(ImportError):
  """dlib or its 68-point model is not installed; ``str(err)`` is one line with the install command."""


def load_dlib(predictor_path: Optional[str] = None):
  """-> (dlib module, detector, shape predictor). Raises ``MissingDlibError`` (one line) if unavailable."""
  try:
    import dlib  # noqa: PLC0415 -- optional dependency
  except ImportError:
    raise MissingDlibError(DLIB_HINT) from None
  if predictor_path is None:
    try:
      import face_recognition_models  # noqa: PLC0415
    except ImportError:
      raise MissingDlibError(DLIB_HINT + "; or pass --predictor shape_predictor_68_face_landmarks.dat") from None
    predictor_path = face_recognition_models.pose_predictor_model_location()
  if not os.path.exists(predictor_path):
    raise MissingDlibError(f"missing 68-point shape predictor {predictor_path}; {DLIB_HINT}")
  return dlib, dlib.get_frontal_face_detector(), dlib.shape_predictor(predictor_path)


def done_names(out_csv: str) -> set:
  """Names already labelled in ``out_csv`` (empty set when it does not exist)."""
  if not os.path.exists(out_csv) or os.path.getsize(out_csv) == 0:
    return set()
  return set(wild.read_landmarks_file(out_csv)[0])


def pending_images(image_dir: str, out_csv: str) -> list[str]:
  """Images under ``image_dir`` (relative paths, sorted) not yet in ``out_csv``."""
  done = done_names(out_csv)
  return [n for n in wild.list_images(image_dir) if n not in done]


def fallback_box(h: int, w: int) -> tuple[int, int, int, int]:
  """(left, top, right, bottom) 0-based: centred square of 0.7 x min(h, w), shifted down by 0.05 x min(h, w)."""
  s = min(h, w)
  side, cx, cy = 0.7 * s, w / 2, h / 2 + 0.05 * s
  return int(round(cx - side / 2)), int(round(cy - side / 2)), int(round(cx + side / 2)), int(round(cy + side / 2))


def label_image(img: np.ndarray, dlib, detector, predictor, upsample: int = 1) -> tuple[np.ndarray, bool]:
  """RGB (H, W, 3) uint8 -> (68, 2) float32 1-based image pixels, detected (False = fallback box used)."""
  dets = detector(img, upsample)
  if len(dets):
    d = max(dets, key=lambda r: r.width() * r.height())
    rect, found = dlib.rectangle(d.left(), d.top(), d.right(), d.bottom()), True
  else:
    rect, found = dlib.rectangle(*fallback_box(*img.shape[:2])), False
  shape = predictor(img, rect)
  pts = np.array([[shape.part(k).x, shape.part(k).y] for k in range(68)], np.float32) + 1.0
  return pts, found


def label_folder(image_dir: str, out_csv: str, predictor_path: Optional[str] = None, upsample: int = 1,
                 progress_every: int = 100) -> dict:
  """Labels every image of ``image_dir`` not yet in ``out_csv`` (appending). Returns counts
  ``{"done", "detected", "fallback", "unreadable", "skipped"}``."""
  dlib, detector, predictor = load_dlib(predictor_path)
  todo = pending_images(image_dir, out_csv)
  counts = {"done": 0, "detected": 0, "fallback": 0, "unreadable": 0,
            "skipped": len(wild.list_images(image_dir)) - len(todo)}
  log.info("pseudo-labelling %d images of %s (%d already in %s)", len(todo), image_dir, counts["skipped"], out_csv)
  t0 = time.time()
  for k, name in enumerate(todo):
    try:
      img = common.read_image(os.path.join(image_dir, name))
    except common.BadExample as e:
      log.warning("%s", e)
      pts = np.full((68, 2), np.nan, np.float32)
      counts["unreadable"] += 1
    else:
      pts, found = label_image(img, dlib, detector, predictor, upsample)
      counts["detected" if found else "fallback"] += 1
    wild.write_landmarks_csv(out_csv, [name], pts[None], append=True)
    counts["done"] += 1
    if progress_every and ((k + 1) % progress_every == 0 or k + 1 == len(todo)):
      rate = (k + 1) / max(time.time() - t0, 1e-9)
      log.info("%d/%d images (%.1f img/s, %d without detection)", k + 1, len(todo), rate, counts["fallback"])
  return counts


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  ap.add_argument("image_dir")
  ap.add_argument("out_csv")
  ap.add_argument("--predictor", default=None, help="shape_predictor_68_face_landmarks.dat (default: "
                  "face-recognition-models' copy)")
  ap.add_argument("--upsample", type=int, default=1, help="dlib detector upsampling (1 helps small faces)")
  ap.add_argument("--progress_every", type=int, default=100)
  args = ap.parse_args(argv)
  logging.basicConfig(level=logging.INFO, format="%(message)s")
  try:
    counts = label_folder(args.image_dir, args.out_csv, args.predictor, args.upsample, args.progress_every)
  except MissingDlibError as e:
    print(f"error: {e}")
    return 2
  print(counts)
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
