r"""How fast does a regressor learn on the embedded synthetic faces? (Chooses the ``:smoke`` model.)

Renders a fixed synthetic train set (1024 faces, seed 0) and dev set (64 faces, seed 12345) once into a cache
file, then trains with ``train_lib``'s real train step on in-memory batches (no augmentation, no input pipeline)
and prints the dev 68-point NME (percent, mean of |yaw| bins) every 100 steps next to the mean-face baseline.

  python benchmarks/synthetic_learning.py --model resnet18 --model_kwargs '{"num_filters": 16}' --steps 400
  python benchmarks/synthetic_learning.py --model tiny_cnn --variant base --steps 400

Last line: ``dev NME after <steps> steps: <number>``.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import jax  # noqa: E402
import numpy as np  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from datasets.pipeline import collate  # noqa: E402
from datasets.synthetic import SyntheticFaces  # noqa: E402
from jface import bfm, parallel, train_lib  # noqa: E402
from tests.helpers.fakes import load_config  # noqa: E402

FIELDS = ("image", "params", "landmarks", "flm_landmarks", "landmarks_mask")


def rendered(cache: str, n_train: int = 1024, n_dev: int = 64):
  if not os.path.exists(cache):
    print(f"rendering {n_train} + {n_dev} synthetic faces into {cache} ...", flush=True)
    tr, dv = SyntheticFaces(n_train, seed=0), SyntheticFaces(n_dev, seed=12345)
    a, b = collate([tr[i] for i in range(n_train)]), collate([dv[i] for i in range(n_dev)])
    np.savez(cache, **{"tr_" + k: v for k, v in a.items()}, **{"dv_" + k: v for k, v in b.items()})
  d = np.load(cache)
  tr = {k[3:]: d[k] for k in d.files if k.startswith("tr_")}
  dv = {k[3:]: d[k] for k in d.files if k.startswith("dv_")}
  tr["flm_landmarks"], dv["flm_landmarks"] = tr["landmarks"], dv["landmarks"]
  return tr, dv


def main():
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--model", default="resnet18")
  ap.add_argument("--model_kwargs", default='{"num_filters": 16}')
  ap.add_argument("--variant", default="base", help="configs/2dasl.py variant: base, cyc, sc, default")
  ap.add_argument("--lr", type=float, default=1e-3)
  ap.add_argument("--steps", type=int, default=400)
  ap.add_argument("--batch", type=int, default=16)
  ap.add_argument("--cache", default="/tmp/jface-synthetic-learning.npz")
  args = ap.parse_args()

  tr, dv = rendered(args.cache)
  face = bfm.load_model("synthetic")
  c = load_config(args.variant)
  c.bfm_dir, c.model, c.model_kwargs = "synthetic", args.model, json.loads(args.model_kwargs)
  c.optimizer.name, c.optimizer.learning_rate, c.optimizer.decay_steps = "adam", args.lr, 10 ** 9
  c.encoder_kwargs = {"channels": (8, 16, 32, 32, 64, 64)}
  mods = train_lib.make_modules(c)
  mesh = parallel.make_mesh(1)
  state = parallel.replicate(train_lib.init_state(c, mods), mesh)
  step = parallel.data_parallel(train_lib.make_train_step(c, mods), mesh, 2, 2)
  predict = train_lib.make_predict_fn(mods, c.use_flm)
  face_r = parallel.replicate(face, mesh)
  dev_feed = {k: dv[k] for k in ("image", "flm_landmarks", "landmarks_mask")}

  def dev_nme(pw):
    return train_lib.evaluate_predictions(face, pw, dv)["nme_2d_68"]["mean_of_bins"]

  print(f"mean face (all-zero params): dev NME {dev_nme(np.zeros((len(dv['image']), 62), np.float32)):.3f}")
  rng = np.random.default_rng(0)
  n = len(tr["image"])
  t0 = time.time()
  nme = float("nan")
  for s in range(args.steps):
    b3 = {k: tr[k][rng.choice(n, args.batch, replace=False)] for k in FIELDS}
    b2 = {k: tr[k][rng.choice(n, args.batch, replace=False)] for k in FIELDS}
    state, m = step(state, face_r, parallel.shard_batch(b3, mesh), parallel.shard_batch(b2, mesh))
    if (s + 1) % 100 == 0 or s + 1 == args.steps:
      pw = np.asarray(predict(*jax.device_get((state.params, state.batch_stats)), dev_feed))
      nme = dev_nme(pw)
      losses = " ".join(f"{k} {float(v):.3f}" for k, v in m.items())
      print(f"step {s + 1}: {losses} | dev NME {nme:.3f} | {time.time() - t0:.0f} s", flush=True)
  print(f"dev NME after {args.steps} steps: {nme:.3f}")


if __name__ == "__main__":
  main()
