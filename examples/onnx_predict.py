r"""Run a jface ONNX export in onnxruntime on one face::

  python -m jface.export --checkpoint WORKDIR --out EXPORT --onnx      # writes EXPORT/predict.onnx, export.json
  python examples/onnx_predict.py EXPORT PHOTO.jpg                     # the largest face of a photo
  python examples/onnx_predict.py EXPORT CROP.jpg --crop               # an S x S crop cut by jface

The network only knows jface's crops (the 3DDFA-style box around the 68 landmarks, ``crop_size`` x
``crop_size``, ``jface.core.crop``): a photo goes through ``jface.inference.faces.FaceFinder`` (the detector and
68-point source of ``predict``, the same code as ``Predictor.find_faces``); ``--crop`` takes an image that is
already such a crop (``FaceCrop.crop``, or a file of a dataset's ``crops/`` folder). A plain resize of a face
box gives wrong answers. Models with a landmark-map input get the face's 68 source points, else, as
``Predictor``, an empty map (``export.json``'s ``empty_map``) or the mean face's (``mean_flm_landmarks``).

Only numpy and onnxruntime run the model; jface reads the image and finds the face. Prints the outputs in crop
pixels (1-based pixel centres, x right, y down) and, for a photo, the landmarks in photo pixels.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  ap.add_argument("export_dir", help="folder written by python -m jface.export --onnx")
  ap.add_argument("image", help="a photo, or with --crop a crop cut by jface")
  ap.add_argument("--crop", action="store_true", help="the image is already a jface crop")
  args = ap.parse_args(argv)
  import onnxruntime
  from jface.core import crop as crop_lib
  from jface.data import common

  meta = json.load(open(os.path.join(args.export_dir, "export.json")))
  if "onnx" not in meta["files"]:
    print(f"error: no predict.onnx in {args.export_dir} (python -m jface.export ... --onnx)", file=sys.stderr)
    return 2
  size = meta["crop_size"]
  names = [i["name"] for i in meta["inputs"]]
  image = common.read_image(args.image)  # RGB uint8
  roi, pts = None, None
  if args.crop:
    if image.shape[:2] != (size, size):
      print(f"error: --crop needs a {size} x {size} jface crop, got {image.shape[1]} x {image.shape[0]}",
            file=sys.stderr)
      return 2
    crop = image
  else:
    from jface.inference.faces import FaceFinder
    faces = FaceFinder(use_flm="flm_landmarks" in names, crop_size=size).find(image)
    if not faces:
      print(f"error: no face found in {args.image}", file=sys.stderr)
      return 1
    crop, roi, pts = faces[0].crop, faces[0].roi_box, faces[0].flm_pts
  feed = {"image": crop[None]}
  if "flm_landmarks" in names:  # no source points: an empty map or the mean face's, as Predictor
    if pts is None:
      pts = np.asarray(meta["mean_flm_landmarks"], np.float32) * (np.nan if meta.get("empty_map") else 1)
    pts = np.asarray(pts, np.float32)
    mask = np.all(np.isfinite(pts), -1)
    feed["flm_landmarks"] = np.where(mask[:, None], pts, 0)[None].astype(np.float32)
    feed["landmarks_mask"] = mask[None]
  opts = onnxruntime.SessionOptions()
  opts.log_severity_level = 3  # errors only
  sess = onnxruntime.InferenceSession(os.path.join(args.export_dir, meta["files"]["onnx"]), opts,
                                      providers=["CPUExecutionProvider"])
  out = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {k: feed[k] for k in names})))
  np.set_printoptions(precision=2, suppress=True)
  print(f"{meta['method']} ({meta['variant']}, step {meta['step']}): {', '.join(out)}")
  print("landmarks (crop px, first 5):\n", out["landmarks"][0, :5])
  if "pose" in out:
    print("pose (yaw, pitch, roll degrees):", out["pose"][0])
  if roi is not None:
    print("landmarks (photo px, first 5):\n", crop_lib.crop_to_image(out["landmarks"][0, :5, :2], roi, size))
  return 0


if __name__ == "__main__":
  sys.exit(main())
