"""The one training loop: ``train_and_evaluate(config, workdir)`` for every method (``config.method``).

The loop owns what methods share: the face model, the data streams the method declares (``Method.streams``), the
``'data'`` mesh and the ``shard_map`` step (``jface.train.parallel``), orbax checkpoints (latest + best by dev
NME; exact resume with the same data order), metric writers, the NaN guard and the periodic dev evaluation
(``jface.eval.evaluator``, the same protocol as ``evaluate.py``). The method owns its networks, its per-device
step and its predict function (``jface.methods.base.Method``).
"""
from __future__ import annotations

import json
import os
import time

import jax
import ml_collections
import numpy as np

from jface import methods
from jface.core.load import load_model
from jface.data import augment, registry
from jface.data.pipeline import Loader
from jface.eval.evaluator import DevEvaluator
from jface.methods.workdir import load_checkpoint
from jface.train import checkpoint, optim, parallel
from jface.train.writers import MetricWriter


class NonFiniteLoss(RuntimeError):
  pass


def _dev_evaluator(config, method, face, train_3d_len: int):
  """(DevEvaluator or None, training indices of train_3d or None). ``data.holdout`` > 0 evaluates on a fixed
  random subset of train_3d instead of ``data.dev`` (model selection without touching the dev split)."""
  holdout = config.data.get("holdout", 0)
  if holdout:
    train_idx, held = holdout_indices(train_3d_len, holdout)
    spec, idx = config.data.train_3d, held
  elif config.data.dev:
    train_idx, spec, idx = None, config.data.dev, None
  else:
    return None, None
  if config.data.dev_size:
    idx = np.arange(config.data.dev_size) if idx is None else idx[:config.data.dev_size]
  ev = DevEvaluator(method, config, face, spec, indices=idx)
  return ev, train_idx


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains (resuming from ``workdir`` if it holds checkpoints) and evaluates on ``config.data.dev``.

  Returns the last evaluation (``{"nme_2d_68": {...}, "step": int, "elapsed_s": float}``); also written to
  ``workdir/results.json``. Raises ``NonFiniteLoss`` (after keeping the last good checkpoint) on NaN/Inf.
  """
  method = methods.of_config(config)
  method.check_config(config)
  plan = method.stages(config) if method.stages is not None else []
  if plan:
    return train_stages(plan, workdir, config.get("init_from", ""))
  t_start = time.time()
  elapsed_before = previous_elapsed(workdir)
  elapsed = lambda: round(elapsed_before + time.time() - t_start, 1)  # noqa: E731
  if config.distributed:
    jax.distributed.initialize()
  face = load_model(config.bfm_dir, dense_bases_dir=config.dense_bases_dir or None)
  streams = method.streams(config)
  sources = {s.name: registry.build_source(config.data[s.name], face) for s in streams}
  if config.data.get("flm_file") and "train_3d" in sources:
    from jface.data.flm_alt import WithAltLandmarks
    sources["train_3d"] = WithAltLandmarks(sources["train_3d"], config.data.flm_file)
  n_3d = len(sources["train_3d"]) if "train_3d" in sources else (
      len(registry.build_source(config.data.train_3d, face)) if config.data.get("holdout") else 0)
  dev, train_idx = _dev_evaluator(config, method, face, n_3d)  # the hold-out comes from train_3d, read or not
  if train_idx is not None and "train_3d" in sources:
    sources["train_3d"] = Subset(sources["train_3d"], train_idx)
  if config.data.get("extra_3d") and "train_3d" in sources:
    sources["train_3d"] = with_extra_3d(sources["train_3d"], config, face, train_idx)
  with_method = config.copy_and_resolve_references()
  if "method" not in with_method:
    with_method.method = method.name
  checkpoint.write_config(workdir, with_method)

  mesh = parallel.make_mesh(config.num_devices or None)
  nproc, pid = jax.process_count(), jax.process_index()
  aug = augment.AugmentConfig(enabled=bool(config.data.augment))
  loaders = {s.name: Loader(sources[s.name], s.batch_size // nproc, config.seed * 1000 + s.seed_offset + pid,
                            model=face, augment_cfg=aug, num_threads=config.data.num_threads,
                            landmark_noise_px=config.data.landmark_noise_px,
                            flm_alt_prob=float(config.data.get("flm_alt_prob", 0.0)),
                            flm_dropout=float(config.data.get("flm_dropout", 0.0)), name=s.name) for s in streams}

  mods = method.build(config, bn_axis_name=parallel.AXIS)
  state = method.init_state(config, mods)
  latest, best = checkpoint.managers(workdir, config.keep_checkpoints)
  writer = MetricWriter(workdir, config.num_steps, tensorboard=config.tensorboard)
  start = 0
  if latest.latest_step() is not None:
    state = checkpoint.restore(latest, state)
    start = int(state.step)
    writer.log(f"resuming from step {start} ({latest.directory})")
  elif config.init_from:
    _, _, init = load_checkpoint(config.init_from)
    state = state.replace(params=init.params, batch_stats=init.batch_stats)
    writer.log(f"initialised the network from {config.init_from} (step {int(init.step)})")
  if start >= config.num_steps:
    writer.log(f"{workdir} is already trained to step {start} (num_steps={config.num_steps}); nothing to do")
    writer.close()
    latest.close()
    best.close()
    path = os.path.join(workdir, "results.json")
    return json.load(open(path)) if os.path.exists(path) else {}
  state = parallel.replicate(state, mesh)
  face_r = parallel.replicate(face, mesh)
  step_fn = parallel.data_parallel(method.make_train_step(config, mods), mesh, n_replicated=2, n_sharded=1)
  lr = optim.schedule(config)
  images_per_step = sum(s.batch_size for s in streams)
  writer.log(f"jface {method.name}: {method.describe(config)} devices={mesh.devices.size} "
             f"steps {start}->{config.num_steps} workdir={workdir}")

  iters = {name: ld.iter_from(start, num_steps=config.num_steps - start) for name, ld in loaders.items()}
  result = {}
  try:
    for step in range(start, config.num_steps):
      batches = {s.name: parallel.shard_batch({k: b[k] for k in s.fields}, mesh)
                 for s in streams for b in (next(iters[s.name]),)}
      state, metrics = step_fn(state, face_r, batches)
      metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
      done = step + 1
      if not np.isfinite(metrics["loss"]):
        latest.wait_until_finished()
        raise NonFiniteLoss(f"non-finite loss at step {done} ({metrics}); stopped. The last good checkpoint "
                            f"(step {latest.latest_step()}) is kept in {latest.directory}")
      if done % config.log_every == 0 or done == config.num_steps:
        metrics["lr"] = float(lr(done))
        metrics["elapsed_s"] = elapsed()
        writer.write_scalars(done, metrics)
        writer.progress(done, metrics, images_per_step)
      if done % config.checkpoint_every == 0 or done == config.num_steps:
        latest.save(done, args=checkpoint.save_args(state))
      if dev is not None and (done % config.eval_every == 0 or done == config.num_steps):
        ev = dev(jax.device_get(state))
        key = ev["key"]
        nme, nme3 = ev[key], ev.get(key.replace("_2d_", "_3d_"))
        scalars = {"nme_mean_of_bins": nme["mean_of_bins"], "nme_overall": nme["overall"]}
        if nme3 is not None:
          scalars.update(nme3d_mean_of_bins=nme3["mean_of_bins"], nme3d_overall=nme3["overall"])
        writer.write_scalars(done, scalars, prefix="dev")
        writer.log(f"dev @ {done}: NME bins {' / '.join(f'{b:.3f}' for b in nme['bins'])}, "
                   f"mean of bins {nme['mean_of_bins']:.3f}, overall {nme['overall']:.3f} (n={nme['n']})"
                   + (f"; 3D NME mean of bins {nme3['mean_of_bins']:.3f}" if nme3 is not None else ""))
        best.save(done, args=checkpoint.save_args(state), metrics={"dev_nme": nme["mean_of_bins"]})
        result = {k: v for k, v in ev.items() if k.startswith("nme_")}
        result.update(step=done, elapsed_s=elapsed())
        with open(os.path.join(workdir, "results.json"), "w") as f:
          json.dump(result, f, indent=2)
  finally:
    for it in iters.values():
      it.close()
    latest.wait_until_finished()
    latest.close()
    best.close()
    writer.close()
    for name, ld in loaders.items():
      if ld.stats["bad"]:
        print(f"{name}: skipped {ld.stats['bad']} unreadable examples ({ld.stats['replaced']} draws replaced)")
  return result


def train_stages(plan, workdir: str, init_from: str = "") -> dict:
  """Trains the stages of ``plan`` (``[(name, config), ...]``, ``Method.stages``) in turn, each in
  ``workdir/<name>`` and initialised from the previous stage's workdir (the first from ``init_from``, if any);
  ``workdir/stages.json`` names the final stage, which ``evaluate.py``, ``predict`` and ``export`` load. Re-running
  resumes the unfinished stage; finished ones are skipped. Returns the final stage's evaluation (also written to
  ``workdir/results.json``)."""
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, checkpoint.STAGES_FILE), "w") as f:
    json.dump({"stages": [name for name, _ in plan], "final": plan[-1][0]}, f, indent=2)
  prev, result = init_from, {}
  for name, sub in plan:
    sub = sub.copy_and_resolve_references()
    sub.init_from = prev
    sub_dir = os.path.join(workdir, name)
    print(f"== {name} -> {sub_dir}" + (f" (initialised from {prev})" if prev else ""), flush=True)
    result = train_and_evaluate(sub, sub_dir)
    prev = sub_dir
  with open(os.path.join(workdir, "results.json"), "w") as f:
    json.dump(dict(result, stage=plan[-1][0]), f, indent=2)
  return result


def previous_elapsed(workdir: str) -> float:
  """Wall-clock seconds of earlier (interrupted) runs in ``workdir``: the last ``elapsed_s`` in metrics.jsonl."""
  path = os.path.join(workdir, "metrics.jsonl")
  last = 0.0
  if os.path.exists(path):
    with open(path) as f:
      for line in f:
        try:
          last = float(json.loads(line).get("elapsed_s", last))
        except (ValueError, AttributeError):
          continue  # a line cut short by a kill
  return last


def holdout_indices(n_total: int, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """(train, held_out) sorted indices: ``n`` of ``range(n_total)`` chosen by a fixed permutation (``seed``), and
  the rest."""
  if not 0 < n < n_total:
    raise ValueError(f"data.holdout must be in (0, {n_total}), got {n}")
  perm = np.random.default_rng(seed).permutation(n_total)
  return np.sort(perm[n:]), np.sort(perm[:n])


def with_extra_3d(train_3d, config, face, train_idx):
  """``train_3d`` followed by the examples of ``config.data.extra_3d`` (another 3D-labelled spec, e.g. the
  profiled crops of ``python -m jface.data.profiling`` or ``fitted:DIR[:MAX_RESIDUAL]`` pseudo-labels, whose
  unlabelled examples -- ``ok`` False -- are left out). With ``data.holdout``, extra examples made from a held-out
  image (a crops folder's ``meta.npz`` ``source_name`` equal to a held-out example's name) are dropped, so the
  hold-out stays unseen. Examples keep the keys both sources have. Logs the counts."""
  extra = registry.build_source(config.data.extra_3d, face)
  keep = np.arange(len(extra))
  if getattr(extra, "ok", None) is not None:
    keep = keep[np.asarray(extra.ok, bool)]
  unlabelled, held_out = len(extra) - len(keep), 0
  origins = registry.origin_names(config.data.extra_3d)
  if train_idx is not None and origins is not None:
    base = train_3d.source
    names = getattr(base, "names", None) or getattr(getattr(base, "source", None), "names", None)
    if names is None:
      raise ValueError(f"data.extra_3d with data.holdout needs example names from {config.data.train_3d}")
    _, held = holdout_indices(len(base), int(config.data.holdout))
    held_names = {str(names[i]) for i in held}
    kept = np.asarray([i for i in keep if str(origins[i]) not in held_names], int)
    held_out, keep = len(keep) - len(kept), kept
  print(f"train_3d: {len(train_3d)} examples + {len(keep)} of {config.data.extra_3d} ({unlabelled} without "
        f"labels and {held_out} made from held-out images left out)", flush=True)
  if not len(keep):
    raise ValueError(f"data.extra_3d={config.data.extra_3d} has no 3D-labelled example left")
  keys = set(train_3d[0]) & set(extra[int(keep[0])])
  return Concat([train_3d, Subset(extra, keep)], keys=keys)


class Concat:
  """Sources one after the other (random access over their total length); with ``keys``, examples keep only
  those keys (sources whose examples carry different extras can share a batch)."""

  def __init__(self, sources, keys=None):
    self.sources = list(sources)
    self.keys = None if keys is None else set(keys)
    self.offsets = np.cumsum([0] + [len(s) for s in self.sources])

  def __len__(self):
    return int(self.offsets[-1])

  def __getitem__(self, i):
    i = int(i)
    if not 0 <= i < len(self):
      raise IndexError(f"Concat index {i} out of range [0, {len(self)})")
    k = int(np.searchsorted(self.offsets, i, side="right")) - 1
    ex = self.sources[k][i - int(self.offsets[k])]
    return ex if self.keys is None else {key: v for key, v in ex.items() if key in self.keys}


class Subset:
  """``source`` restricted to ``indices``."""

  def __init__(self, source, indices):
    self.source, self.indices = source, [int(i) for i in indices]

  def __len__(self):
    return len(self.indices)

  def __getitem__(self, i):
    return self.source[self.indices[i]]
