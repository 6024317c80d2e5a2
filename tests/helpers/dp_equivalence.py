"""Run as a subprocess with 4 forced CPU devices: two data-parallel steps on 4 devices vs on 1 device.

``python dp_equivalence.py [VARIANT]``: a 2DASL variant of tests.helpers.fakes.fake_config (default "default"),
or ``prnet``: a tiny PRNet (width 1/8, 32 x 32) on 8 synthetic faces, or ``pgn``: a tiny PGN's stage-3 step on 4 groups
of 2 frames (each device holds whole groups; identity fusion stays within a group). Prints
``max_rel_diff <params> <batch_stats> <extra> <metrics>`` (per leaf, relative to the leaf's scale) and
``update_rel <params> <batch_stats>`` (norm of the difference over the norm of the 1-device update of the params;
over the norm of the statistics). Used by tests/test_train.py and test_prnet_method.py.

PRNet runs one step: its deep, narrow BN stack turns float32 rounding into large differences after a few SGD
steps even on one device (measured: reordering the batch on 1 device moves the params by 17 % of their 2-step
update, 0.03 % of a 1-step update), while per-device BN statistics move them by 2600 % after one step.
"""
import os
import sys

os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4"

import jax  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from jface import methods  # noqa: E402
from jface.train import parallel  # noqa: E402
from tests.helpers.fakes import fake_batch, fake_config, random_face_model  # noqa: E402


def prnet_setup():
  """A tiny PRNet config (the :smoke recipe at width 1/8, 32 x 32, SGD) and 8 synthetic faces with params."""
  from jface import configs
  from jface.core import synthetic
  from jface.data.synthetic_faces import SyntheticFaces
  c = configs.load("prnet:smoke")
  c.image_size = 32
  c.model_kwargs = {"width_mult": 0.125, "bn_momentum": 0.9}
  c.optimizer.name, c.optimizer.learning_rate = "sgd", 1e-2
  face = synthetic.face_model()
  src = SyntheticFaces(8, seed=0, model=face)
  exs = [src[i] for i in range(8)]
  b3 = {"image": np.stack([e["image"] for e in exs]), "params": np.stack([e["params"] for e in exs])}
  return c, face, b3, None


def pgn_setup():
  """A tiny PGN stage-3 config (the :smoke recipe at width 1/8, 32 x 32, SGD) and 4 synthetic identities x 2
  frames."""
  from jface import configs
  from jface.core import synthetic
  from jface.data import registry
  c = configs.load("pgn:smoke")
  c.stage, c.batch_size, c.image_size = 3, 8, 32
  c.model_kwargs = {"width_mult": 0.125, "bn_momentum": 0.9, "head_features": 16, "landmark_head": "fc"}
  c.optimizer.name, c.optimizer.learning_rate = "sgd", 1e-2
  face = synthetic.face_model()
  src = registry.build_source("synthetic_groups:4:2:3", face)
  return c, face, {"image": np.stack([src[i]["image"] for i in range(8)])}, None


def pgn_landmarks_at_mean_face(state, face, size):
  """An untrained PGN's landmarks are a point; this puts the FC branch's output near the mean face's landmarks
  (bias = logit of the targets) with a small random part, so the 3DMM, rendering and photometric terms are live."""
  import jax.numpy as jnp
  from jface.core import geometry
  from jface.methods.pgn import step
  t = step.landmark_targets(geometry.landmarks3d(face, jnp.zeros((62,), jnp.float32)), size, face.crop_size)
  q = jnp.clip(t.reshape(-1) / (1.1 * size), 0.02, 0.98)
  p = dict(state.params)
  fc2 = dict(p["lm_fc2"])
  fc2["bias"] = jnp.log(q / (1 - q))
  fc2["kernel"] = fc2["kernel"] * 0.05
  p["lm_fc2"] = fc2
  return state.replace(params=p)


def main():
  assert jax.device_count() == 4, jax.devices()
  variant = sys.argv[1] if len(sys.argv) > 1 else "default"
  if variant in ("prnet", "pgn"):
    config, face, b3, b2 = prnet_setup() if variant == "prnet" else pgn_setup()
  else:
    config, face, b3, b2 = (fake_config(variant=variant), random_face_model(),
                            fake_batch(8, seed=1, with_params=True), fake_batch(8, seed=2, with_params=False))
  results, start = [], None
  for n in (1, 4):
    mesh = parallel.make_mesh(n)
    method = methods.of_config(config)
    mods = method.build(config, bn_axis_name=parallel.AXIS)
    state = method.init_state(config, mods)
    if variant == "pgn":
      state = pgn_landmarks_at_mean_face(state, face, config.image_size)
    state = parallel.replicate(state, mesh)
    start = jax.device_get(state.params)
    step = parallel.data_parallel(method.make_train_step(config, mods), mesh, 2, 1, donate=False)
    for _ in range(1 if variant in ("prnet", "pgn") else 2):
      data = {"train_3d": b3, "train_2d": b2, "train_mf": b3}
      batches = {s.name: parallel.shard_batch(data[s.name], mesh) for s in method.streams(config)}
      state, metrics = step(state, parallel.replicate(face, mesh), batches)
    results.append(jax.device_get((state.params, state.batch_stats, state.extra, metrics)))
  diffs = []  # relative to each leaf's scale
  for a, b in zip(*results):
    la, lb = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
    diffs.append(max([float(np.max(np.abs(np.asarray(x) - np.asarray(y))) / (np.max(np.abs(np.asarray(x))) + 1e-6))
                      for x, y in zip(la, lb)] + [0.0]))
  print("metrics", {k: float(v) for k, v in results[1][3].items()})
  print("max_rel_diff", *diffs)
  flat = lambda t: np.concatenate([np.ravel(x) for x in jax.tree_util.tree_leaves(t)])  # noqa: E731
  (p1, s1), (p4, s4) = [(flat(r[0]), flat(r[1])) for r in results]
  print("update_rel", np.linalg.norm(p4 - p1) / np.linalg.norm(p1 - flat(start)),
        np.linalg.norm(s4 - s1) / max(np.linalg.norm(s1), 1e-12))


if __name__ == "__main__":
  main()
