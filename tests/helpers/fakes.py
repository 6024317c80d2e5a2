"""Tiny random stand-ins used by several tests (no data, no synthetic renderer)."""
from __future__ import annotations

import json
import os

import jax.numpy as jnp
import numpy as np

from jface import configs, methods
from jface.train import checkpoint
from jface.core.face_model import FaceModel
from jface.core import geometry

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def load_config(arg=None):
  return configs.load("2dasl" + (f":{arg}" if arg else ""))


def random_face_model(seed: int = 0, n_dense: int = 0) -> FaceModel:
  """A BFM-shaped 68-landmark model with BFM-like magnitudes (the mean face fills a 120 px crop); with
  ``n_dense`` > 0 also a small random dense part whose first 68 vertices are the keypoints."""
  rng = np.random.default_rng(seed)
  pts = rng.normal(size=(68, 3)) * [6e4, 7e4, 3e4]
  mean = np.array([4e-4, 0, 0, 60, 0, 4e-4, 0, 60, 0, 0, 4e-4, -75] + [0] * 50, np.float32)
  std = np.array([2e-4, 3e-4, 3e-4, 10, 2.5e-4, 2e-4, 2e-4, 10, 3.6e-4, 1e-4, 1.5e-4, 18]
                 + [3e5 * 0.95 ** i for i in range(40)] + [1.5 * 0.9 ** i for i in range(10)], np.float32)
  f = lambda a: jnp.asarray(a, jnp.float32)
  kw = {}
  if n_dense:
    kw = dict(u_dense=f(rng.normal(size=3 * n_dense) * 6e4), w_shp_dense=f(rng.normal(size=(3 * n_dense, 40)) * 0.02),
              w_exp_dense=f(rng.normal(size=(3 * n_dense, 10)) * 500), tex=f(np.full((n_dense, 3), 0.5)),
              keypoints=jnp.arange(68, dtype=jnp.int32))
  return FaceModel(u_base=f(pts.reshape(-1)), w_shp_base=f(rng.normal(size=(204, 40)) * 0.02),
                           w_exp_base=f(rng.normal(size=(204, 10)) * 500), param_mean=f(mean),
                           param_std=f(std), name="random", **kw).check()


def fake_batch(n: int, seed: int, with_params: bool, size: int = 32, face=None) -> dict:
  """A batch dict as the pipeline yields it (numpy), with landmarks consistent with the params."""
  rng = np.random.default_rng(seed)
  face = face or random_face_model()
  pw = (rng.normal(size=(n, 62)) * 0.3).astype(np.float32)
  lm = np.asarray(geometry.landmarks2d(face, jnp.asarray(pw))) * size / 120
  mask = rng.uniform(size=(n, 68)) > 0.1
  return {"image": rng.integers(0, 256, size=(n, size, size, 3), dtype=np.uint8),
          "params": pw if with_params else np.zeros_like(pw), "has_params": np.full((n,), with_params),
          "landmarks": lm.astype(np.float32), "flm_landmarks": lm.astype(np.float32), "landmarks_mask": mask,
          "name": np.array([f"x{i}" for i in range(n)])}


def fake_config(variant="default", **overrides):
  c = load_config(variant)
  c.model = "tiny_cnn"
  c.image_size = 32  # fake_batch crops
  c.optimizer.name = "sgd"
  c.optimizer.learning_rate = 1e-2
  c.model_kwargs = {"channels": (8, 16)}
  c.encoder_kwargs = {"channels": (8, 8, 8, 8, 8)}
  # dropout masks are drawn per device, so only dropout-free critics give bit-comparable N-device steps
  c.critic_kwargs = {"dropout_rate": 0.0}
  for k, v in overrides.items():
    c[k] = v
  return c


def initial_state(config):
  m = methods.get(config.method)
  return m.init_state(config, m.build(config, bn_axis_name=None))


def write_workdir(wd, config, tree, step: int, method_key: bool = True):
  """A workdir as ``jface.training`` writes it: config.json + checkpoints/<step> (orbax StandardSave of
  ``tree``). ``method_key=False``: a config.json written before the method registry (no "method")."""
  os.makedirs(wd, exist_ok=True)
  cfg = json.loads(config.to_json())
  if not method_key:
    cfg.pop("method")
  with open(os.path.join(wd, "config.json"), "w") as f:
    json.dump(cfg, f, indent=2)
  latest, best = checkpoint.managers(str(wd), 1)
  latest.save(step, args=checkpoint.save_args(tree))
  latest.wait_until_finished()
  latest.close()
  best.close()
  return wd


def tiny_2dasl_config(use_flm: bool = True):
  """configs/2dasl.py:smoke with a tiny CNN (channels 8, 16), L3d only: the model of the inference tests."""
  c = load_config("smoke")
  c.use_flm, c.use_cyc, c.use_sc = use_flm, False, False
  c.model, c.model_kwargs = "tiny_cnn", {"channels": (8, 16)}
  c.encoder_kwargs = {"channels": (8, 8, 8, 8, 8)}
  return c


def tiny_2dasl_workdir(wd, use_flm: bool = True, step: int = 0) -> str:
  """A ``tiny_2dasl_config`` workdir at its initial state (near-mean-face predictions)."""
  c = tiny_2dasl_config(use_flm)
  return str(write_workdir(wd, c, initial_state(c), step))
