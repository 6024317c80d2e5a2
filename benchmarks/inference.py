"""Inference speed of a method's model on this machine: batch-1 latency and batched images/s of its predict
function, as ``predict`` and ``evaluate.py`` run it (``method.make_predict_fn`` through
``jface.methods.run.predict_arrays``; nothing patched).

  python benchmarks/inference.py --config 2dasl:cpu_photo          # initial weights (speed does not depend on them)
  python benchmarks/inference.py --checkpoint WORKDIR              # a trained workdir

Inputs are random 120x120 crops (and landmark maps for a landmark-map model). Reported: compile time, batch-1
latency (median / p90 over ``--reps`` calls, after warm-up), images/s at ``--batch`` (median of 5 calls), both
without dense vertices (landmarks + pose, what the benchmark protocol needs) and, where the face model allows it,
with dense vertices. Last line: ``inference ms/face: <batch-1 median, landmarks + pose>``.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

from jface import runtime

runtime.setup()

import numpy as np  # noqa: E402


def _time_calls(fn, reps):
  out = []
  for _ in range(reps):
    t0 = time.perf_counter()
    fn()
    out.append(1000 * (time.perf_counter() - t0))
  return np.asarray(out)


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  src = ap.add_mutually_exclusive_group(required=True)
  src.add_argument("--config", help="jface.configs name, e.g. 2dasl:cpu_photo (initial weights)")
  src.add_argument("--checkpoint", help="a train.py workdir")
  ap.add_argument("--batch", type=int, default=32)
  ap.add_argument("--reps", type=int, default=50)
  ap.add_argument("--bfm_dir", default=None, help="face model (default: the config's)")
  ap.add_argument("--dense_bases_dir", default=None, help="w_shp_sim.npy / w_exp_sim.npy folder (also time the "
                                                          "dense vertices)")
  args = ap.parse_args(argv)
  import jax
  from jface import configs, methods
  from jface.core.face_model import MissingAssetError
  from jface.core.load import load_model
  from jface.methods import run, workdir
  try:
    if args.checkpoint:
      config, method, state = workdir.load_checkpoint(args.checkpoint, "latest")
    else:
      config = configs.load(args.config)
      method = methods.of_config(config)
      state = method.init_state(config, method.build(config, bn_axis_name=None))
    face = load_model(args.bfm_dir or config.bfm_dir,
                      dense_bases_dir=args.dense_bases_dir or config.get("dense_bases_dir") or None)
  except (MissingAssetError, ValueError, OSError) as e:
    print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
    return 2
  mods = method.build(config, bn_axis_name=None)
  state, face = jax.device_put(state), jax.device_put(face)
  fields = tuple(method.input_fields(config))
  rng = np.random.default_rng(0)
  size = face.crop_size

  def inputs(n):
    d = {"image": rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)}
    if "flm_landmarks" in fields:
      d["flm_landmarks"] = rng.uniform(20, 100, (n, 68, 2)).astype(np.float32)
    if "landmarks_mask" in fields:
      d["landmarks_mask"] = np.ones((n, 68), bool)
    return d

  print(f"{method.name} {config.get('variant', '')} model {config.get('model', '')} on {jax.devices()[0]}; "
        f"load {os.getloadavg()[0]:.2f}; {os.cpu_count()} CPUs; jax {jax.__version__}")
  variants = [("landmarks + pose", False)]
  if face.has_dense_bases:
    variants.append(("with dense vertices", True))
  first = None
  for label, dense in variants:
    predict = method.make_predict_fn(config, mods, dense=dense)
    one, many = inputs(1), inputs(args.batch)
    t0 = time.perf_counter()
    run.predict_arrays(predict, state, face, one, 1)
    run.predict_arrays(predict, state, face, many, args.batch)
    compile_s = time.perf_counter() - t0
    lat = _time_calls(lambda: run.predict_arrays(predict, state, face, one, 1), args.reps)
    thr = _time_calls(lambda: run.predict_arrays(predict, state, face, many, args.batch), 5)
    print(f"{label:<20} compile {compile_s:5.1f} s | batch 1: median {np.median(lat):7.2f} ms, p90 "
          f"{np.percentile(lat, 90):7.2f} | batch {args.batch}: {1000 * args.batch / np.median(thr):7.1f} img/s "
          f"({np.median(thr) / args.batch:.2f} ms/img)")
    if first is None:
      first = float(np.median(lat))
  print(f"inference ms/face: {first:.2f}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
