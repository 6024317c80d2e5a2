"""Throughput of the training input pipeline: decode JPEG crop -> augment -> FLM input -> batch, on threads.

  python benchmarks/input_pipeline.py [--data_dir ../shared/data/aflw2000_3d_train] [--seconds 20]

With ``--data_dir`` (the aflw2000_3d_train layout: ``crops/*.jpg`` + ``meta.npz`` (+ ``AFLW2000/*.mat``)) the
examples come from ``jface.data.crops_layout`` (crop decode + .mat labels), or this file's ``CropsFolder``;
otherwise a synthetic source decodes in-memory JPEG crops (same decode cost, no disk). Prints a per-stage cost
(one thread), then the images/s of ``Loader.iter_from`` (augmentation + FLM + batching, ``--threads`` threads)
beside the train step's demand. Last line: ``pipeline images/s: <number>``.
"""
from __future__ import annotations

import argparse
import os
import time
import types

import cv2
import numpy as np

from jface.data import augment as aug
from jface.data import pipeline as pl

DEMAND = "demand (ResNet-50, CPU): ~10 img/s"
DEMAND_NOTE = ("2DASL ResNet-50 4-ch train step, batch 32, on this 2-core CPU (/work/shared/README.md: 6.4-13.6 "
               "img/s depending on framework/flags); smaller backbones are faster, and the train step shares the "
               "same cores with the pipeline")


def _decode(data: bytes, name: str) -> np.ndarray:
  try:
    from jface.data.common import decode_image
    return decode_image(data, name)
  except ImportError:
    return cv2.cvtColor(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


class CropsFolder:
  """Minimal reader of the aflw2000_3d_train layout: crop JPEG (read + decoded per access), FAN landmarks as
  ``landmarks``, the released 2DASL params as ``params``."""

  def __init__(self, folder: str):
    meta = np.load(os.path.join(folder, "meta.npz"))
    self.folder, self.names = folder, [str(n) for n in meta["names"]]
    self.roi, self.yaw = meta["roi_box"], meta["yaw"]
    self.lmk, self.params = meta["fan_pts68_crop"], meta["released_2dasl_params"]

  def __len__(self):
    return len(self.names)

  def __getitem__(self, i):
    path = os.path.join(self.folder, "crops", os.path.splitext(self.names[i])[0] + ".jpg")
    with open(path, "rb") as f:
      image = _decode(f.read(), path)
    return dict(image=image, params=self.params[i], has_params=True, landmarks=self.lmk[i],
                landmarks_mask=np.ones(68, bool), roi_box=self.roi[i], yaw=self.yaw[i], source="aflw2000_3d_train",
                name=self.names[i])


class JpegSource:
  """``n`` synthetic 120x120 crops held as JPEG bytes (quality 95, smooth content + noise, ~6-10 kB each)."""

  def __init__(self, n: int = 256, seed: int = 0):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:120, 0:120] / 120.0
    self.jpegs, self.lmk, self.params = [], [], (rng.normal(size=(n, 62)) * 0.5).astype(np.float32)
    for _ in range(n):
      base = np.stack([np.sin(xx * rng.uniform(2, 9) + rng.uniform(0, 6)) * np.cos(yy * rng.uniform(2, 9))
                       for _ in range(3)], -1)
      img = np.clip(127 + 80 * base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
      ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 95])
      assert ok
      self.jpegs.append(buf.tobytes())
      self.lmk.append(rng.uniform(20, 100, size=(68, 2)).astype(np.float32))

  def __len__(self):
    return len(self.jpegs)

  def __getitem__(self, i):
    return dict(image=_decode(self.jpegs[i], f"synthetic{i}"), params=self.params[i], has_params=True,
                landmarks=self.lmk[i], landmarks_mask=np.ones(68, bool), roi_box=np.array([0, 0, 120, 120], np.float32),
                yaw=np.float32(0), source="jpeg_synthetic", name=f"synthetic{i}")


def _model(bfm_dir: str):
  """The BFM (68-point rows only) if present, else a stand-in with what augmentation uses (mean/std/crop)."""
  if bfm_dir and os.path.isdir(bfm_dir):
    from jface.core import bfm
    return bfm.load_3ddfa(bfm_dir, dense=False)
  return types.SimpleNamespace(param_mean=np.zeros(62, np.float32), param_std=np.ones(62, np.float32),
                               crop_size=120)


def _source(data_dir: str, model):
  """The project's reader (jface.data.crops_layout, params from the .mat files) when present, else CropsFolder."""
  if not data_dir:
    return JpegSource()
  try:
    from jface.data.crops_layout import CropsLayoutSource
  except ImportError:
    return CropsFolder(data_dir)
  if not isinstance(model, types.SimpleNamespace):
    src = CropsLayoutSource(data_dir, model=model)
    try:
      src[0]
      return src
    except Exception as e:  # noqa: BLE001 -- a reader under construction: measure without the .mat labels
      print(f"note: CropsLayoutSource with params failed ({type(e).__name__}: {e}); reading crops without params")
  return CropsLayoutSource(data_dir, model=None)


def _per_stage(source, model, cfg, n=200):
  rng = np.random.default_rng(0)
  t0 = time.perf_counter()
  exs = [source[i % len(source)] for i in range(n)]
  t1 = time.perf_counter()
  exs = [aug.augment(e, rng, model, cfg) for e in exs]
  t2 = time.perf_counter()
  ms = lambda a, b: 1e3 * (b - a) / n  # noqa: E731
  print(f"per example, 1 thread: read+decode {ms(t0, t1):.3f} ms, augment {ms(t1, t2):.3f} ms")


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--data_dir", default="", help="aflw2000_3d_train layout folder (crops/ + meta.npz)")
  ap.add_argument("--bfm_dir", default=os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "3dmm"))
  ap.add_argument("--seconds", type=float, default=20.0)
  ap.add_argument("--batch_size", type=int, default=32)
  ap.add_argument("--threads", type=int, default=2)
  ap.add_argument("--prefetch", type=int, default=2)
  ap.add_argument("--no_augment", action="store_true")
  args = ap.parse_args(argv)

  model = _model(args.bfm_dir)
  source = _source(args.data_dir, model)
  cfg = aug.AugmentConfig(enabled=not args.no_augment)
  print(f"source: {type(source).__name__} ({len(source)} examples), batch {args.batch_size}, threads "
        f"{args.threads}, prefetch {args.prefetch}, augment {cfg.enabled}, cv2 threads {cv2.getNumThreads()}, "
        f"cpus {os.cpu_count()}")
  _per_stage(source, model, cfg)

  loader = pl.Loader(source, args.batch_size, seed=0, model=model, augment_cfg=cfg, num_threads=args.threads,
                     prefetch=args.prefetch, landmark_noise_px=1.0, drop_remainder=True)
  it = loader.iter_from(0)
  for _ in range(2):  # warm-up: threads started, first batches ready
    next(it)
  n, t0 = 0, time.perf_counter()
  while time.perf_counter() - t0 < args.seconds:
    b = next(it)
    n += len(b["image"])
  dt = time.perf_counter() - t0
  it.close()
  rate = n / dt
  print(f"{n} images in {dt:.1f} s; loader stats {loader.stats}")
  print(f"{DEMAND}  ({DEMAND_NOTE})")
  print(f"pipeline images/s: {rate:.1f}")


if __name__ == "__main__":
  main()
