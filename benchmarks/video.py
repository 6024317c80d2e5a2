"""Video ``predict`` speed on this machine: frames/s with tracking (the detector every ``--redetect`` frames, the
previous landmarks placing the crop in between) and with the detector on every frame (``--no_tracking``), through
``jface.inference.video.process`` as the CLI runs it (decode -> faces -> landmarks.csv + overlay.mp4; nothing
patched).

  python benchmarks/video.py --checkpoint WORKDIR [--video FILE] [--seconds 10] [--redetect 30]

Without ``--video`` a clip is synthesised (``--seconds`` at ``--fps``, 480x360, mp4v): a slow pan and zoom over a
photo (``--photo``; default the first near-frontal ``../shared/data/aflw2000_3d_dev`` original when present, else a
synthetic face on a grey background). Each mode first runs on the clip's first 3 frames (compilation, model
loading), then on the whole clip. Last line: ``video fps: tracking <x>, detection every frame <y>``.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

from jface import runtime

runtime.setup()

import numpy as np  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def default_photo():
  """The first near-frontal (|yaw| < 30 deg, meta.npz) aflw2000_3d_dev original, else its first, else None."""
  d = os.path.join(ROOT, "..", "shared", "data", "aflw2000_3d_dev")
  names = sorted(n for n in os.listdir(os.path.join(d, "AFLW2000")) if n.endswith(".jpg")) \
      if os.path.isdir(os.path.join(d, "AFLW2000")) else []
  if os.path.isfile(os.path.join(d, "meta.npz")):
    meta = np.load(os.path.join(d, "meta.npz"))
    yaw = dict(zip(meta["names"].tolist(), meta["yaw"].tolist()))
    names = [n for n in names if abs(yaw.get(n, 90)) < 30] or names
  return os.path.join(d, "AFLW2000", names[0]) if names else None


def photo_or_synthetic(path):
  """(RGB image, description)."""
  from jface.data import common
  if path:
    return common.read_image(path), path
  from jface.data.synthetic_faces import SyntheticFaces
  img = np.full((360, 360, 3), 128, np.uint8)
  img[120:240, 120:240] = SyntheticFaces(1, seed=5)[0]["image"]
  return img, "synthetic face 0 on grey (no photo)"


def synthesise(photo: np.ndarray, path: str, n: int, fps: float, size=(480, 360)) -> str:
  """``n`` frames panning (+-12% of the width) and zooming (1 -> 1.35 -> 1) over ``photo`` -> ``path`` (mp4v)."""
  import cv2
  h, w = photo.shape[:2]
  out = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"mp4v"), fps, size)
  bgr = np.ascontiguousarray(photo[..., ::-1])
  for i in range(n):
    t = i / max(n - 1, 1)
    zoom = 1 + 0.35 * np.sin(np.pi * t)
    cx, cy = w / 2 + 0.12 * w * np.sin(2 * np.pi * t), h / 2
    win_w = w / zoom
    k = size[0] / win_w
    m = np.float32([[k, 0, size[0] / 2 - k * cx], [0, k, size[1] / 2 - k * cy]])
    out.write(cv2.warpAffine(bgr, m, size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE))
  out.release()
  return path


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--checkpoint", required=True, help="a train.py workdir")
  ap.add_argument("--video", default=None, help="a video file (default: a synthesised clip)")
  ap.add_argument("--photo", default=None, help="photo to pan over (default: first aflw2000_3d_dev original)")
  ap.add_argument("--seconds", type=float, default=10.0)
  ap.add_argument("--fps", type=float, default=30.0)
  ap.add_argument("--redetect", type=int, default=30)
  ap.add_argument("--detector", default="auto")
  ap.add_argument("--landmarker", default="auto")
  ap.add_argument("--no_overlay", action="store_true", help="time without writing overlay.mp4")
  ap.add_argument("--out", default=None, help="keep the outputs here (default: a temporary folder)")
  args = ap.parse_args(argv)
  import cv2
  import jax
  from jface.inference import video
  from jface.inference.predictor import Predictor
  out = args.out or tempfile.mkdtemp(prefix="jface-video-bench-")
  os.makedirs(out, exist_ok=True)
  if args.video:
    clip, what = args.video, args.video
  else:
    photo, src = photo_or_synthetic(args.photo or default_photo())
    clip = synthesise(photo, os.path.join(out, "clip.mp4"), int(round(args.seconds * args.fps)), args.fps)
    what = f"{args.seconds:g} s synthesised pan/zoom over {src}"
  cap = cv2.VideoCapture(clip)
  warm = os.path.join(out, "warmup.mp4")
  wr = cv2.VideoWriter(warm, cv2.VideoWriter_fourcc(*"mp4v"), cap.get(cv2.CAP_PROP_FPS) or 30,
                       (int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))))
  for _ in range(3):
    ok, f = cap.read()
    if ok:
      wr.write(f)
  wr.release()
  cap.release()
  pred = Predictor(args.checkpoint, detector=args.detector, landmarks=args.landmarker, dense=False)
  print(f"{what}; {pred.method.name} {pred.config.get('variant', '')} on {jax.devices()[0]}; landmarks "
        f"{pred.finder.source()[0]}; load {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f}; {os.cpu_count()} CPUs")
  quiet = lambda *a, **k: None  # noqa: E731
  fps = {}
  for name, rule in (("tracking", video.TrackRule(redetect=args.redetect)),
                     ("detection every frame", video.TrackRule(tracking=False))):
    video.process(pred, video.FrameReader(warm), os.path.join(out, "warm"), rule, overlay=not args.no_overlay,
                  log=quiet)
    t0 = time.perf_counter()
    doc = video.process(pred, video.FrameReader(clip), os.path.join(out, name.split()[0]), rule,
                        overlay=not args.no_overlay, log=quiet)
    fps[name] = doc["frames"] / (time.perf_counter() - t0)
    print(f"{name}: {doc['frames']} frames ({doc['frames_with_faces']} with a face) in {doc['seconds']:.1f} s = "
          f"{fps[name]:.1f} fps; {doc['detect_frames']} detected, {doc['track_frames']} tracked, "
          f"{doc['lost_tracks']} lost {doc['lost_reasons'] or ''}")
  print(f"load {os.getloadavg()[0]:.2f}; outputs in {out}")
  print(f"video fps: tracking {fps['tracking']:.1f}, detection every frame {fps['detection every frame']:.1f}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
