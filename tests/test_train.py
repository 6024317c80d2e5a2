"""Training system: data-parallel equivalence, exact resume, NaN stop, config errors (tiny models, few steps)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import dataclasses

import jax
import numpy as np
import pytest

from jface import methods, training
from jface.methods.workdir import load_checkpoint
from jface.train import optim, parallel
from jface.core.face_model import MissingAssetError
from tests.helpers.fakes import ROOT, fake_batch, fake_config, load_config, random_face_model


def tiny_smoke(num_steps=4, **data):
  c = load_config("smoke")
  c.model = "tiny_cnn"
  c.model_kwargs = {"channels": (8, 16)}
  c.encoder_kwargs = {"channels": (8, 8, 8, 8, 8, 8)}
  c.critic_kwargs = {"dropout_rate": 0.0}
  c.data.train_3d, c.data.train_2d, c.data.dev = "synthetic:64:0", "synthetic2d:64:1", "synthetic:16:7"
  c.data.num_threads = 1
  c.batch_size = c.batch_size_2d = 4
  c.num_steps, c.log_every, c.checkpoint_every, c.eval_every = num_steps, 1, 1, num_steps
  c.tensorboard = False
  for k, v in data.items():
    c.data[k] = v
  return c


def test_four_devices_equal_one_device():
  """One step on 4 forced CPU devices == one step on 1 device on the same global batch (subprocess)."""
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", PYTHONPATH=ROOT)
  out = subprocess.run([sys.executable, os.path.join(ROOT, "tests", "helpers", "dp_equivalence.py")],
                       capture_output=True, text=True, env=env, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  line = [ln for ln in out.stdout.splitlines() if ln.startswith("max_rel_diff")][-1]
  params, batch_stats, adv, metrics = map(float, line.split()[1:])
  assert params < 1e-5 and batch_stats < 1e-5 and metrics < 1e-5, line
  assert adv < 5e-4, line  # Adam normalises tiny critic gradients, amplifying float noise


@pytest.mark.parametrize("variant", ["base", "cyc", "sc"])
def test_variants_step_and_losses(variant):
  """Each ablation computes exactly its paper terms and takes a finite step on 1 device."""
  config = fake_config(variant)
  mesh = parallel.make_mesh(1)
  method = methods.of_config(config)
  mods = method.build(config)
  state = parallel.replicate(method.init_state(config, mods), mesh)
  step = parallel.data_parallel(method.make_train_step(config, mods), mesh, 2, 1, donate=False)
  b3, b2 = fake_batch(4, 1, True), fake_batch(4, 2, False)
  streams = [s.name for s in method.streams(config)]
  assert streams == (["train_3d"] if variant == "base" else ["train_3d", "train_2d"])
  batches = {"train_3d": parallel.shard_batch(b3, mesh), "train_2d": parallel.shard_batch(b2, mesh)}
  new, metrics = step(state, parallel.replicate(random_face_model(), mesh), {k: batches[k] for k in streams})
  want = {"base": {"l3d", "loss"}, "cyc": {"l3d", "l2d_con", "l3d_con", "cyc", "loss"},
          "sc": {"l3d", "sc", "critic", "loss"}}[variant]
  assert set(metrics) == want
  assert all(np.isfinite(float(v)) for v in metrics.values())
  assert int(new.step) == 1
  moved = jax.tree_util.tree_map(lambda a, b: float(np.max(np.abs(np.asarray(a) - np.asarray(b)))),
                                 new.params, state.params)
  assert max(jax.tree_util.tree_leaves(moved)) > 0


def _final_params(workdir):
  config, method, state = load_checkpoint(str(workdir))
  assert config.method == method.name == "2dasl"
  return state


def test_resume_is_exact(tmp_path, monkeypatch):
  """Interrupted after step 2 then rerun == uninterrupted run (same data order, same parameters)."""
  full = tmp_path / "full"
  training.train_and_evaluate(tiny_smoke(4), str(full))

  real = parallel.data_parallel

  def crashing(*a, **k):
    f = real(*a, **k)
    calls = []

    def g(*args):
      if len(calls) == 2:
        raise KeyboardInterrupt("simulated kill")
      calls.append(1)
      return f(*args)
    return g

  part = tmp_path / "part"
  monkeypatch.setattr(parallel, "data_parallel", crashing)
  with pytest.raises(KeyboardInterrupt):
    training.train_and_evaluate(tiny_smoke(4), str(part))
  monkeypatch.setattr(parallel, "data_parallel", real)
  res = training.train_and_evaluate(tiny_smoke(4), str(part))
  a, b = _final_params(full), _final_params(part)
  assert int(a.step) == int(b.step) == 4
  for x, y in zip(jax.tree_util.tree_leaves((a.params, a.batch_stats, a.extra)),
                  jax.tree_util.tree_leaves((b.params, b.batch_stats, b.extra))):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-6, atol=1e-7)
  steps = [json.loads(ln)["step"] for ln in open(part / "metrics.jsonl") if '"train"' in ln]
  assert steps == [1, 2, 3, 4]  # the rerun started at 3
  assert res["step"] == 4 and set(res["nme_2d_68"]) >= {"bins", "mean_of_bins", "overall", "n"}
  assert json.load(open(part / "results.json"))["nme_2d_68"]["n"] == 16


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path, monkeypatch):
  real = methods.get("2dasl")

  def poisoned(config, mods):
    step = real.make_train_step(config, mods)

    def f(state, face, batches):
      new, m = step(state, face, batches)
      m = dict(m, loss=jax.numpy.where(new.step >= 3, np.nan, m["loss"]))
      return new, m
    return f

  monkeypatch.setattr(methods, "of_config", lambda config: dataclasses.replace(real, make_train_step=poisoned))
  c = tiny_smoke(6)
  c.checkpoint_every = 2
  with pytest.raises(training.NonFiniteLoss, match="non-finite loss at step 3.*step 2"):
    training.train_and_evaluate(c, str(tmp_path))
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["2"]


def test_config_errors():
  with pytest.raises(ValueError, match="unknown variant"):
    load_config("nope")
  c = tiny_smoke(2, train_3d="crops:/nonexistent/dir")
  with pytest.raises(MissingAssetError, match="/nonexistent/dir"):
    training.train_and_evaluate(c, "/tmp/unused-jface-workdir")
  c = tiny_smoke(2, train_2d="")
  with pytest.raises(ValueError, match="train_2d"):
    training.train_and_evaluate(c, "/tmp/unused-jface-workdir")


def test_train_py_reports_one_line(tmp_path):
  out = subprocess.run([sys.executable, os.path.join(ROOT, "train.py"), "--config", "configs/2dasl.py:smoke",
                        "--workdir", str(tmp_path), "--config.bfm_dir=/nonexistent/3dmm"],
                       capture_output=True, text=True, cwd=ROOT, timeout=300)
  assert out.returncode == 2
  err = [ln for ln in out.stderr.splitlines() if ln.strip()]
  assert len(err) == 1 and err[0].startswith("error: missing 3DMM folder /nonexistent/3dmm"), out.stderr


def test_holdout_split_is_a_fixed_partition():
  train, held = training.holdout_indices(50, 10)
  a, b = list(training.Subset(list(range(50)), train)), list(held)
  assert len(a) == 40 and len(b) == 10 and sorted(a + b) == list(range(50))
  np.testing.assert_array_equal(training.holdout_indices(50, 10)[1], held)
  with pytest.raises(ValueError, match="holdout"):
    training.holdout_indices(50, 50)


@pytest.mark.parametrize("variant,switches", [("cpu", (True, True, True)), ("cpu_base", (False, False, False)),
                                              ("cpu_cyc", (True, True, False)), ("cpu_sc", (False, False, True)),
                                              ("cpu_base_flm", (True, False, False))])
def test_cpu_configs_are_the_paper_ablations(variant, switches):
  c = load_config(variant)
  assert (c.use_flm, c.use_cyc, c.use_sc) == switches
  assert c.data.train_3d.startswith("crops:") and c.data.dev.endswith("aflw2000_3d_dev")
  lr = optim.schedule(c)  # decay_steps 0: the 10x decay spans num_steps, also after an override
  assert float(lr(c.num_steps)) == pytest.approx(c.optimizer.learning_rate * c.optimizer.decay_rate, rel=1e-5)
  c.num_steps = 10
  assert float(optim.schedule(c)(10)) == pytest.approx(c.optimizer.learning_rate * c.optimizer.decay_rate, rel=1e-5)
  c.optimizer.decay_steps = 20  # an explicit decay_steps leaves num_steps alone
  assert c.num_steps == 10 and float(optim.schedule(c)(20)) == pytest.approx(
      c.optimizer.learning_rate * c.optimizer.decay_rate, rel=1e-5)


def test_cpu_config_trains_on_shared_data(tmp_path, shared_data):
  """Two steps of ``:cpu`` (tiny widths) on the real train/wild data, evaluated on a 100-image hold-out of train
  (the dev split is not touched): the config's data specs, caching and the hold-out all work end to end."""
  c = load_config("cpu")
  c.model_kwargs = {"num_filters": 4, "coord_channels": True}
  c.encoder_kwargs = {"channels": (4, 4, 4, 4, 4, 4)}
  c.data.holdout, c.data.num_threads = 100, 1
  c.batch_size = c.batch_size_2d = 4
  c.num_steps, c.log_every, c.checkpoint_every, c.eval_every = 2, 1, 2, 2
  c.tensorboard = False
  for k in ("bfm_dir",):
    c[k] = c[k].replace("../shared/data", str(shared_data))
  for k in ("train_3d", "train_2d", "dev"):
    c.data[k] = c.data[k].replace("../shared/data", str(shared_data))
  res = training.train_and_evaluate(c, str(tmp_path))
  assert res["step"] == 2 and res["nme_2d_68"]["n"] == 100 and np.isfinite(res["nme_2d_68"]["mean_of_bins"])
  assert res["elapsed_s"] > 0
  # a rerun finds the run complete and keeps the accumulated wall-clock
  assert training.previous_elapsed(str(tmp_path)) > 0


def test_extra_3d_is_appended_without_the_holdouts_profiles(tmp_path, monkeypatch):
  """data.extra_3d: its examples follow train_3d's; with a hold-out, those made from a held-out image
  (meta.npz source_name) are dropped. Concat indexes across the parts."""
  from jface.data import registry

  class Named:
    def __init__(self, names):
      self.names = list(names)

    def __len__(self):
      return len(self.names)

    def __getitem__(self, i):
      return {"name": self.names[i], f"only_{self.tag}": i}

  class Fitted(Named):
    tag = "fitted"
    ok = np.arange(20) % 5 != 0  # 4 of 20 unlabelled: left out

  class Profiles(Named):
    tag = "profiles"

  Named.tag = "base"
  base = Named([f"img{i}.jpg" for i in range(10)])
  folder = tmp_path / "prof"
  folder.mkdir()
  origins = [f"img{i // 2}.jpg" for i in range(20)]  # two profiles per source image
  np.savez(folder / "meta.npz", names=np.array([f"p{i}" for i in range(20)]), source_name=np.array(origins))
  spec = f"crops:{folder}"
  assert registry.origin_names(spec) == origins and registry.origin_names("synthetic:4") is None
  monkeypatch.setattr(registry, "build_source", lambda s, face=None: Profiles([f"p{i}" for i in range(20)]))
  c = tiny_smoke(1)
  c.data.extra_3d, c.data.holdout = spec, 3
  train_idx, held = training.holdout_indices(10, 3)
  out = training.with_extra_3d(training.Subset(base, train_idx), c, None, train_idx)
  held_names = {base.names[i] for i in held}
  kept = [out[i]["name"] for i in range(7, len(out))]
  assert len(out) == 7 + 20 - 2 * 3
  assert [out[i]["name"] for i in range(7)] == [base.names[i] for i in train_idx]
  assert not {origins[int(k[1:])] for k in kept} & held_names
  assert set(out[0]) == {"name"}  # only the keys both sources have
  with pytest.raises(IndexError):
    out[len(out)]
  monkeypatch.setattr(registry, "build_source", lambda s, face=None: Fitted([f"w{i}" for i in range(20)]))
  c.data.extra_3d, c.data.holdout = "fitted:DIR", 0
  out = training.with_extra_3d(base, c, None, None)
  assert len(out) == 10 + 16 and "w5" not in [out[i]["name"] for i in range(10, 26)]
