r"""How fast does a regressor learn on the embedded synthetic faces? (Chooses the ``:smoke`` model.)

Renders a fixed synthetic train set (1024 faces, seed 0) and dev set (64 faces, seed 12345) once into a cache
file, then trains with the 2DASL method's real train step on in-memory batches (no augmentation, no input pipeline)
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

from jface.data.pipeline import collate  # noqa: E402
from jface.data.synthetic_faces import SyntheticFaces  # noqa: E402
from jface import configs, methods  # noqa: E402
from jface.core.load import load_model  # noqa: E402
from jface.eval import protocol  # noqa: E402
from jface.eval.evaluator import DevEvaluator  # noqa: E402
from jface.methods.base import FaceOutput  # noqa: E402
from jface.train import parallel  # noqa: E402

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
  face = load_model("synthetic")
  c = configs.load(f"2dasl:{args.variant}")
  c.bfm_dir, c.model, c.model_kwargs = "synthetic", args.model, json.loads(args.model_kwargs)
  c.optimizer.name, c.optimizer.learning_rate, c.optimizer.decay_steps = "adam", args.lr, 10 ** 9
  c.encoder_kwargs = {"channels": (8, 16, 32, 32, 64, 64)}
  method = methods.of_config(c)
  mods = method.build(c)
  mesh = parallel.make_mesh(1)
  state = parallel.replicate(method.init_state(c, mods), mesh)
  step = parallel.data_parallel(method.make_train_step(c, mods), mesh, 2, 1)
  face_r = parallel.replicate(face, mesh)
  dev = DevEvaluator(method, c, face, "synthetic:64:12345")  # the same 64 faces as the cache's dev set
  zero = np.zeros((len(dev), 62), np.float32)
  mean_face = protocol.score(dev.data, FaceOutput(landmarks=protocol.landmarks_from_params(face, zero)), face,
                             dev.problems, dense=False)["summaries"]["nme_2d_68"]["mean_of_bins"]
  print(f"mean face (all-zero params): dev NME {mean_face:.3f}")
  rng = np.random.default_rng(0)
  n = len(tr["image"])
  t0 = time.time()
  nme = float("nan")
  for s in range(args.steps):
    b3 = {k: tr[k][rng.choice(n, args.batch, replace=False)] for k in FIELDS}
    b2 = {k: tr[k][rng.choice(n, args.batch, replace=False)] for k in FIELDS}
    batches = {"train_3d": parallel.shard_batch(b3, mesh), "train_2d": parallel.shard_batch(b2, mesh)}
    state, m = step(state, face_r, {k.name: batches[k.name] for k in method.streams(c)})
    if (s + 1) % 100 == 0 or s + 1 == args.steps:
      nme = dev(jax.device_get(state))["nme_2d_68"]["mean_of_bins"]
      losses = " ".join(f"{k} {float(v):.3f}" for k, v in m.items())
      print(f"step {s + 1}: {losses} | dev NME {nme:.3f} | {time.time() - t0:.0f} s", flush=True)
  print(f"dev NME after {args.steps} steps: {nme:.3f}")


if __name__ == "__main__":
  main()
