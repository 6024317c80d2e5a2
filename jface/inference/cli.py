r"""The ``predict`` command: images -> faces -> landmarks, head pose and coloured dense meshes, with any trained
method's workdir (``python predict.py ...`` or ``python -m jface.predict ...``; both call ``main``)::

  python -m jface.predict IMAGE_OR_FOLDER --checkpoint WORKDIR --out OUTDIR [--landmarks FILE]
      [--detector auto|blazeface|blazeface_full|haar|dlib|full] [--landmarker auto|mesh|dlib|none]
      [--flm auto|given|source|iterate] [--iterations N] [--bfm_dir DIR] [--no_mesh]

Faces come from ``--landmarks FILE`` (the ``jface.data.wild.read_landmarks_file`` format, original-image pixels,
names relative to the input folder) or a face detector (``jface.inference.detect``) followed by a 68-point
landmark source (``--landmarker``; default: MediaPipe's face mesh + the fitted 468 -> 68 map when installed);
see ``jface.inference.faces`` (crops, landmark map) and ``jface.inference.predictor`` (the method's predictions).
Faces whose landmark map had to be the mean face are counted in the summary and warned about.
Videos (a file with a ``jface.inference.video.VIDEO_EXTS`` extension, or a folder of frames with ``--video``; flags
``--redetect N``, ``--no_tracking``, ``--fps``, ``--video_mesh``) go to ``jface.inference.video`` (tracking,
``landmarks.csv``, ``overlay.mp4``, ``video.json``); a folder without ``--video`` is a folder of photos.

Files: ``OUTDIR/<image>_face<k>.obj`` and ``.ply`` (``jface.inference.outputs.save_meshes``),
``OUTDIR/<image>_overlay.jpg`` (shaded mesh + landmarks), ``OUTDIR/<image>.glb`` (all its faces' meshes textured
with the photo, ``jface.inference.glb``) and ``OUTDIR/<image>.html`` (a self-contained, offline 3D viewer beside the
overlay, ``jface.inference.viewer``; ``--no_viewer`` skips both), ``OUTDIR/results.json`` (per image: status, size,
faces with ``jface.inference.outputs.face_json``, ``viewer`` {glb, html}; a summary). Images are read and
predicted ``--group`` at a time.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import List, Optional, Sequence

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def list_inputs(path: str) -> tuple[str, List[str]]:
  """-> (root folder, image paths relative to it). A file gives its folder and its name."""
  if os.path.isdir(path):
    from jface.data.wild import list_images
    return path, list_images(path, IMAGE_EXTS)
  if os.path.isfile(path):
    return os.path.dirname(os.path.abspath(path)), [os.path.basename(path)]
  raise FileNotFoundError(f"no such image or folder: {path}")


def _stem(rel: str) -> str:
  return os.path.splitext(rel)[0].replace(os.sep, "__").replace("/", "__")


def _no_detector(image):
  raise ValueError("no landmarks given and no face detector installed")


def build_parser() -> argparse.ArgumentParser:
  from jface.inference.detect import DETECTORS
  from jface.inference.faces import FLM_MODES, LANDMARK_SOURCES
  from jface.inference.predictor import DEFAULT_ITERATIONS
  ap = argparse.ArgumentParser(prog="python -m jface.predict",
                               description="3D face reconstruction of images with a trained jface checkpoint.")
  ap.add_argument("input", help="an image or a folder of images (searched recursively), or a video file "
                              "(.mp4 .avi .mov .mkv .webm ...; a folder of frames with --video)")
  ap.add_argument("--checkpoint", required=True, help="train.py workdir")
  ap.add_argument("--out", required=True, help="output folder")
  ap.add_argument("--landmarks", default=None,
                  help="68-point landmarks file (CSV/.npz of jface.data.wild.read_landmarks_file; names relative to "
                       "the input folder): these images use the given faces instead of detection")
  ap.add_argument("--flm", default="auto", choices=FLM_MODES,
                  help="landmark map for models with a landmark-map input: given = the --landmarks points; source = "
                       "the --landmarker's points; iterate = the mean face, then redrawn from the model's own "
                       "prediction --iterations times; auto = given, else source, else iterate")
  ap.add_argument("--landmarker", default="auto", choices=LANDMARK_SOURCES,
                  help="68 points of detected faces (they place the crop and draw the landmark map): mesh = "
                       "MediaPipe's face mesh + the 468->68 map (pip install -e '.[photos]', python -m "
                       "jface.inference.tflite fetch, python -m jface.inference.mesh68 fit); dlib = dlib's "
                       "predictor; auto = mesh, else dlib, else none (crop from the detector box)")
  ap.add_argument("--model_dir", default=None, help="folder of MediaPipe's .tflite files (default: "
                                                     "$JFACE_MODELS, ~/.cache/jface/mediapipe)")
  ap.add_argument("--mesh_map", default=None, help="the 468->68 map .npz (default: next to the .tflite files)")
  ap.add_argument("--iterations", type=int, default=DEFAULT_ITERATIONS, help="FLM redraws in iterate mode")
  ap.add_argument("--bfm_dir", default=None, help="face model (default: the checkpoint's config.bfm_dir)")
  ap.add_argument("--dense_bases_dir", default=None, help="folder with w_shp_sim.npy / w_exp_sim.npy")
  ap.add_argument("--which", default="latest", choices=("latest", "best"))
  ap.add_argument("--detector", default="auto", choices=DETECTORS,
                  help="auto = blazeface when installed (pip install -e '.[photos]', python -m "
                       "jface.inference.tflite fetch), else OpenCV's Haar cascades")
  ap.add_argument("--min_face_size", type=int, default=20, help="px, smaller detector box side")
  ap.add_argument("--max_faces", type=int, default=0, help="largest faces kept per image (0 = all)")
  ap.add_argument("--max_batch", type=int, default=32, help="faces per forward pass")
  ap.add_argument("--group", type=int, default=256,
                  help="images read and predicted together (all their faces share the batched passes)")
  ap.add_argument("--dlib_predictor", default=None, help="dlib shape_predictor_68_face_landmarks.dat")
  ap.add_argument("--no_mesh", action="store_true", help="no .obj/.ply (landmarks, pose, overlays only)")
  ap.add_argument("--no_overlay", action="store_true")
  ap.add_argument("--no_viewer", action="store_true", help="no <image>.glb / <image>.html 3D viewer")
  ap.add_argument("--ascii_ply", action="store_true")
  vid = ap.add_argument_group("video (jface.inference.video: landmarks.csv, overlay.mp4, video.json)")
  vid.add_argument("--video", action="store_true", help="the input (a folder of frames, or a file) is a video")
  vid.add_argument("--redetect", type=int, default=30,
                   help="run the detector every N frames (0 = only when a track is lost); in between, each face's "
                        "previous landmarks place its crop")
  vid.add_argument("--no_tracking", action="store_true", help="run the detector on every frame")
  vid.add_argument("--fps", type=float, default=None, help="frame rate of a frame folder (default 30), or to "
                                                           "override a video file's")
  vid.add_argument("--video_mesh", action="store_true", help="also draw the shaded dense mesh in overlay.mp4")
  return ap


def main(argv: Optional[Sequence[str]] = None) -> int:
  """CLI entry point; returns the exit status: 0 = done (bad images are reported and skipped), 1 = no image could
  be processed, 2 = unusable arguments (missing checkpoint, face model, input, landmarks file, detector)."""
  args = build_parser().parse_args(argv)
  from jface.core.face_model import MissingAssetError
  from jface.data import common
  from jface.data.wild import read_landmarks_file
  from jface.inference import detect, outputs
  from jface.inference.predictor import Predictor
  from jface.train import checkpoint

  def fail(msg) -> int:
    print(f"error: {' '.join(str(msg).split())}", file=sys.stderr)
    return 2

  if args.group < 1:
    return fail(f"--group must be >= 1, got {args.group}")
  from jface.inference import video
  if video.is_video_input(args.input, args.video):
    return video.run_cli(args)
  try:
    root, rels = list_inputs(args.input)
  except FileNotFoundError as e:
    return fail(e)
  if not rels:
    return fail(f"no images ({', '.join(IMAGE_EXTS)}) under {args.input}")
  given = {}
  if args.landmarks:
    try:
      names, pts = read_landmarks_file(args.landmarks)
    except (OSError, ValueError) as e:
      return fail(e)
    given = {os.path.normpath(n): p for n, p in zip(names, pts)}
    unused = len(set(given) - {os.path.normpath(r) for r in rels})
    if unused:
      print(f"warning: {unused} rows of {args.landmarks} name no image under {args.input}", file=sys.stderr)
  try:  # fail early (before the detector and the model) on a folder that is no workdir
    checkpoint.read_config(args.checkpoint)
  except checkpoint.CheckpointError as e:
    return fail(e)
  detector = args.detector
  if any(os.path.normpath(r) not in given for r in rels):
    try:  # fail early, once, when some image needs a detector and none is installed
      detector = detect.make_detector(args.detector, args.min_face_size, args.model_dir)
    except detect.NoDetectorError as e:
      if not given:
        return fail(e)
      print(f"warning: {' '.join(str(e).split())}; images without landmarks are skipped", file=sys.stderr)
      detector = _no_detector
  try:
    pred = Predictor(args.checkpoint, args.bfm_dir, which=args.which, flm=args.flm, iterations=args.iterations,
                     detector=detector, landmarks=args.landmarker, model_dir=args.model_dir,
                     mesh_map=args.mesh_map, dense=not (args.no_mesh and args.no_overlay and args.no_viewer),
                     dense_bases_dir=args.dense_bases_dir, max_batch=args.max_batch,
                     min_face_size=args.min_face_size, max_faces=args.max_faces,
                     dlib_predictor=args.dlib_predictor)
  except (checkpoint.CheckpointError, MissingAssetError, ValueError) as e:
    return fail(e)
  source = "none"
  if any(os.path.normpath(r) not in given for r in rels):
    try:
      source = pred.finder.source()[0]
    except (MissingAssetError, detect.NoDetectorError) as e:
      return fail(e)
    det_name = getattr(detector, "kind", type(detector).__name__)
    print(f"detector: {det_name}; 68-point landmarks: {source}" +
          (" (crop boxes from the detector box)" if source == "none" else ""))
    if pred.use_flm and source == "none" and args.flm in ("auto", "source"):
      print("warning: this model reads a 68-point landmark map and no landmark source is installed: detected "
            "faces get the MEAN FACE's map and their predictions follow it (large errors); install one "
            "(--landmarker) or pass --landmarks FILE", file=sys.stderr)
  os.makedirs(args.out, exist_ok=True)

  t0 = time.time()
  records: List[dict] = []
  tri = pred.triangles
  n_faces = n_mean_map = 0
  for g in range(0, len(rels), args.group):
    images, lms, recs = [], [], []
    for rel in rels[g:g + args.group]:
      rec = {"image": rel, "status": "ok", "faces": []}
      records.append(rec)
      try:
        img = common.read_image(os.path.join(root, rel))
      except ValueError as e:
        rec.update(status="error", error=" ".join(str(e).split()))
        print(f"skipping {rel}: {rec['error']}", file=sys.stderr)
        continue
      rec["size"] = [int(img.shape[1]), int(img.shape[0])]
      images.append(img)
      lms.append(given.get(os.path.normpath(rel)))
      recs.append(rec)
    errors: List[Optional[str]] = []
    results = pred.predict_images(images, lms, errors=errors)
    for img, faces, err, rec in zip(images, results, errors, recs):
      if err is not None:
        rec.update(status="error", error=err)
        print(f"skipping {rec['image']}: {err}", file=sys.stderr)
        continue
      if not faces:
        rec["status"] = "no_face"
        print(f"{rec['image']}: no face found", file=sys.stderr)
        continue
      stem = os.path.join(args.out, _stem(rec["image"]))
      for k, f in enumerate(faces):
        meshes = None
        if not args.no_mesh and f.vertices is not None and tri is not None:
          meshes = outputs.save_meshes(f"{stem}_face{k}", img, f.vertices, tri, dense_shape=f.dense_shape,
                                       binary_ply=not args.ascii_ply)
          meshes = {key: os.path.relpath(p, args.out) for key, p in meshes.items()}
        rec["faces"].append(outputs.face_json(f, meshes))
      n_faces += len(faces)
      n_mean_map += sum(f.flm.startswith("iterate") for f in faces)
      drawn = None
      if not args.no_overlay:
        import cv2
        path = f"{stem}_overlay.jpg"
        drawn = outputs.overlay(img, faces, tri)
        cv2.imwrite(path, drawn[..., ::-1])
        rec["overlay"] = os.path.relpath(path, args.out)
      dense = [f for f in faces if f.vertices is not None]
      if not args.no_viewer and dense and tri is not None:
        from jface.inference import viewer
        files = viewer.save_viewer(stem, img, [f.vertices for f in dense], tri,
                                   picture=outputs.overlay(img, faces, tri) if drawn is None else drawn,
                                   title=rec["image"], note=viewer.dense_note(f.dense_shape for f in dense))
        rec["viewer"] = {key: os.path.relpath(p, args.out) for key, p in files.items()}
  n_bad = sum(r["status"] == "error" for r in records)
  n_none = sum(r["status"] == "no_face" for r in records)
  summary = {"images": len(records), "faces": n_faces, "mean_face_map": n_mean_map, "errors": n_bad,
             "no_face": n_none, "seconds": round(time.time() - t0, 2)}
  doc = {"checkpoint": os.path.abspath(args.checkpoint), "face_model": pred.model.name,
         "use_flm": pred.use_flm, "flm_mode": args.flm, "iterations": args.iterations,
         "landmark_source": source,
         "dense_shape": pred.dense_shape if not args.no_mesh else "none",
         "dense_shape_note": ("posed mean shape only: identity and expression not applied (no dense bases)"
                              if pred.dense_shape == "mean" else ""),
         "coordinates": "image pixels, 1-based pixel centres, y down; meshes: (x, H + 1 - y, z)",
         "summary": summary, "images": records}
  with open(os.path.join(args.out, "results.json"), "w") as f:
    json.dump(doc, f, indent=1)
  print(f"{summary['images']} images, {n_faces} faces, {n_bad} unreadable/bad, {n_none} without a face "
        f"-> {os.path.join(args.out, 'results.json')}")
  if n_mean_map:
    print(f"warning: {n_mean_map} of {n_faces} faces had no 68 points (no landmark source, or it failed on them) and "
          "used the mean face's landmark map: their results.json entries say flm 'iterate:N'", file=sys.stderr)
  return 0 if len(records) > n_bad else 1


if __name__ == "__main__":
  sys.exit(main())
