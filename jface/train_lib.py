"""2DASL training: state, the pure data-parallel ``train_step``, evaluation and ``train_and_evaluate``.

One step (paper Sec. 3, Eq. 1), on a 3D-labelled batch J (images + GT params) and a 2D-only batch I (images +
2D landmarks X2d):

1. regressor forward on [J; I] (one pass, so batch norm sees both): predictions a_J, a_I = R([img, FLM(X2d)]);
2. L3d = weighted coefficient loss (a_J, a*) (stage 1) or the vertex distance cost (stage 2);
3. ``use_cyc``: Y2d = H(a_I); backward pass a'_I = R([img_I, FLM(Y2d)]); L2d-con(X2d, Y2d), L3d-con(X3d, X^3d),
   Lcyc = L2d-con(X2d, X^2d) (the FLM of Y2d is a rasterisation: no gradient flows through it);
4. ``use_sc``: Lsc (regressor side) = -log D([z_I, a_I]) with the critic held fixed;
5. the regressor takes one optimizer step on L = L3d + l1 L2d-con + l2 L3d-con + l3 Lcyc + l4 Lsc;
6. encoder + critic take one Adam step on the critic loss with real = (z_J, a*), fake = (z_I, sg(a_I)).

Every device runs this on its slice (``jface.parallel``); losses and gradients are ``pmean``-ed over 'data' and
batch norm uses global batch statistics, so N devices compute the same step as one device on the global batch.
"""
from __future__ import annotations

import functools
import json
import os
import time
from typing import Any, Callable, Mapping

import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from jface import bfm as bfm_lib
from jface import geometry, losses, models, parallel

Batch = Mapping[str, jax.Array]


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any  # regressor params
  batch_stats: Any
  opt_state: Any
  adv_params: Any  # {"encoder": ..., "critic": ...} or {} when the self-critic is off
  adv_opt_state: Any


@flax.struct.dataclass
class Modules:
  """The static parts of a run (closed over by the jitted step)."""
  regressor: Any = flax.struct.field(pytree_node=False)
  encoder: Any = flax.struct.field(pytree_node=False)
  critic: Any = flax.struct.field(pytree_node=False)
  tx: Any = flax.struct.field(pytree_node=False)
  adv_tx: Any = flax.struct.field(pytree_node=False)


# ------------------------------------------------------------------------------------- construction

def make_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
  o = config.optimizer
  schedule = optax.exponential_decay(o.learning_rate, transition_steps=o.decay_steps, decay_rate=o.decay_rate)
  if o.name == "sgd":
    tx = optax.sgd(schedule, momentum=o.momentum or None, nesterov=o.nesterov)
  elif o.name == "adam":
    tx = optax.adam(schedule)
  else:
    raise ValueError(f"unknown optimizer.name {o.name!r}; choose sgd or adam")
  chain = []
  if o.grad_clip:
    chain.append(optax.clip_by_global_norm(o.grad_clip))
  if o.weight_decay:
    chain.append(optax.add_decayed_weights(o.weight_decay))
  return optax.chain(*chain, tx)


def make_modules(config: ml_collections.ConfigDict, bn_axis_name: str | None = parallel.AXIS) -> Modules:
  dtype = jnp.dtype(config.dtype)
  regressor = models.build_regressor(config.model, in_channels=4 if config.use_flm else 3, dtype=dtype,
                                     bn_axis_name=bn_axis_name, **dict(config.get("model_kwargs", {})))
  return Modules(regressor=regressor, encoder=models.Encoder(**dict(config.get("encoder_kwargs", {}))),
                 critic=models.Critic(**dict(config.get("critic_kwargs", {}))), tx=make_optimizer(config),
                 adv_tx=optax.adam(config.critic_learning_rate))


def init_state(config: ml_collections.ConfigDict, mods: Modules, image_size: int = 120) -> TrainState:
  """Initial state on the host (unreplicated). Deterministic in ``config.seed``."""
  k_reg, k_enc, k_cri = jax.random.split(jax.random.PRNGKey(config.seed), 3)
  c = 4 if config.use_flm else 3
  x = jnp.zeros((2, image_size, image_size, c), jnp.float32)
  # Initialise outside any mapped axis: a BN axis name must not be bound here.
  reg_init = mods.regressor.clone(bn_axis_name=None) if hasattr(mods.regressor, "bn_axis_name") else mods.regressor
  variables = jax.jit(functools.partial(reg_init.init, train=False))(k_reg, x)
  params, batch_stats = variables["params"], variables.get("batch_stats", {})
  adv_params, adv_opt_state = {}, {}
  if config.use_sc:
    enc = mods.encoder.init(k_enc, x[..., :3])["params"]
    z = mods.encoder.apply({"params": enc}, x[..., :3])
    cri = mods.critic.init(k_cri, z, jnp.zeros((2, 62)))["params"]
    adv_params = {"encoder": enc, "critic": cri}
    adv_opt_state = mods.adv_tx.init(adv_params)
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, batch_stats=batch_stats,
                    opt_state=mods.tx.init(params), adv_params=adv_params, adv_opt_state=adv_opt_state)


# ----------------------------------------------------------------------------------------- the step

def _inputs(batch: Batch, use_flm: bool) -> jax.Array:
  """(B, S, S, 4|3) f32 network input: normalised RGB (+ the FLM of ``flm_landmarks``)."""
  img = (batch["image"].astype(jnp.float32) - 127.5) / 128.0
  if not use_flm:
    return img
  flm = geometry.landmark_map(batch["flm_landmarks"], img.shape[1], batch["landmarks_mask"])
  return jnp.concatenate([img, flm[..., None]], axis=-1)


def make_train_step(config: ml_collections.ConfigDict, mods: Modules) -> Callable:
  """Returns the per-device ``train_step(state, face, batch3d, batch2d) -> (state, metrics)``.

  Pure; to be run under ``jax.shard_map`` over the ``'data'`` axis (``parallel.data_parallel``). ``face`` is
  the FaceModel. Batches are dicts with ``image`` (B, S, S, 3) uint8, ``params`` (B, 62), ``landmarks`` and
  ``flm_landmarks`` (B, 68, 2), ``landmarks_mask`` (B, 68). ``batch2d`` is ignored unless cyc or sc is on.
  """
  use_flm, use_cyc, use_sc, stage = config.use_flm, config.use_cyc, config.use_sc, config.stage
  lambdas = dict(config.lambdas)
  uses_2d = use_cyc or use_sc
  reg, enc, cri = mods.regressor, mods.encoder, mods.critic

  def train_step(state: TrainState, face: bfm_lib.FaceModel, batch3d: Batch, batch2d: Batch):
    rng = jax.random.fold_in(jax.random.fold_in(jax.random.PRNGKey(config.seed), state.step),
                             jax.lax.axis_index(parallel.AXIS))
    x3 = _inputs(batch3d, use_flm)
    x2 = _inputs(batch2d, use_flm) if uses_2d else None
    n3 = x3.shape[0]

    def loss_fn(params):
      x = jnp.concatenate([x3, x2]) if uses_2d else x3
      out, new_vars = reg.apply({"params": params, "batch_stats": state.batch_stats}, x, train=True,
                                mutable=["batch_stats"])
      a3, a2 = out[:n3], out[n3:]
      terms = {}
      if stage == 1:
        terms["l3d"] = losses.weighted_coefficient_loss(face, a3, batch3d["params"])
      else:
        terms["vdc"] = losses.vertex_distance_loss(face, a3, batch3d["params"])
      if use_cyc:
        y2d = jax.lax.stop_gradient(geometry.landmarks2d(face, a2))
        flm_back = geometry.landmark_map(y2d, x2.shape[1])
        xb = jnp.concatenate([x2[..., :3], flm_back[..., None]], axis=-1) if use_flm else x2
        a2_back, _ = reg.apply({"params": params, "batch_stats": state.batch_stats}, xb, train=True,
                               mutable=["batch_stats"])
        terms.update(losses.cycle_losses(face, a2, a2_back, batch2d["landmarks"], batch2d["landmarks_mask"]))
      if use_sc:
        z2 = enc.apply({"params": state.adv_params["encoder"]}, x2[..., :3])
        fake = cri.apply({"params": state.adv_params["critic"]}, z2, a2, train=True,
                         rngs={"dropout": jax.random.fold_in(rng, 1)})
        terms["sc"] = losses.adversarial_loss(fake)
      total = losses.combine(terms, lambdas)
      return total, (terms, new_vars["batch_stats"], a2)

    (total, (terms, batch_stats, a2)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    grads = parallel.pmean(grads)
    updates, opt_state = mods.tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = dict(terms, loss=total)

    adv_params, adv_opt_state = state.adv_params, state.adv_opt_state
    if use_sc:
      a2 = jax.lax.stop_gradient(a2)

      def critic_fn(ap):
        z = enc.apply({"params": ap["encoder"]}, jnp.concatenate([x3, x2])[..., :3])
        k1, k2 = jax.random.split(jax.random.fold_in(rng, 2))
        real = cri.apply({"params": ap["critic"]}, z[:n3], batch3d["params"], train=True, rngs={"dropout": k1})
        fake = cri.apply({"params": ap["critic"]}, z[n3:], a2, train=True, rngs={"dropout": k2})
        return losses.critic_loss(real, fake)

      c_loss, c_grads = jax.value_and_grad(critic_fn)(state.adv_params)
      c_grads = parallel.pmean(c_grads)
      c_updates, adv_opt_state = mods.adv_tx.update(c_grads, state.adv_opt_state, state.adv_params)
      adv_params = optax.apply_updates(state.adv_params, c_updates)
      metrics["critic"] = c_loss

    metrics = parallel.pmean(metrics)
    new_state = state.replace(step=state.step + 1, params=params, batch_stats=batch_stats, opt_state=opt_state,
                              adv_params=adv_params, adv_opt_state=adv_opt_state)
    return new_state, metrics

  return train_step


def make_predict_fn(mods: Modules, use_flm: bool) -> Callable:
  """``predict(params, batch_stats, batch) -> (B, 62)`` whitened params, eval-mode BN (jitted, no mesh)."""
  reg = mods.regressor.clone(bn_axis_name=None) if hasattr(mods.regressor, "bn_axis_name") else mods.regressor

  @jax.jit
  def predict(params, batch_stats, batch):
    return reg.apply({"params": params, "batch_stats": batch_stats}, _inputs(batch, use_flm), train=False)
  return predict


# ------------------------------------------------------------------------------------------ evaluation

def predict_source(predict: Callable, state: TrainState, source, batch_size: int = 64) -> tuple[np.ndarray, dict]:
  """Runs the regressor over a whole source in order. -> (pw (N, 62), collated batch of all examples)."""
  from datasets.pipeline import Loader
  loader = Loader(source, batch_size=min(batch_size, len(source)), seed=0, shuffle=False, drop_remainder=False,
                  num_threads=2)
  params, batch_stats = jax.device_get((state.params, state.batch_stats))
  preds, parts = [], []
  for batch in loader.iter_from(0, num_steps=loader.steps_per_epoch):
    feed = {k: batch[k] for k in ("image", "landmarks_mask")}
    feed["flm_landmarks"] = batch.get("flm_landmarks", batch["landmarks"])
    preds.append(np.asarray(predict(params, batch_stats, feed)))
    parts.append(batch)
  all_batches = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
  return np.concatenate(preds), all_batches


def evaluate_predictions(face: bfm_lib.FaceModel, pw: np.ndarray, batch: dict) -> dict:
  """68-point NME (percent) per |yaw| bin of predictions on a dev source.

  AFLW2000-3D crops (examples carry ``gt_pts68``): the benchmark protocol in the original image (1998 subset).
  Otherwise (synthetic): NME against the landmarks of the ground-truth params in crop pixels,
  normalised by sqrt(w h) of the GT box, binned by the GT yaw.
  """
  from jface import metrics
  pred = np.asarray(geometry.landmarks3d(face, jnp.asarray(pw)))
  if "gt_pts68" in batch:
    res = metrics.aflw2000_nme(pred, batch["roi_box"], batch["gt_pts68"], batch["yaw"], batch["name"],
                               subset="1998")
    summary, errors = res["summary2d"], res["nme2d"]
  else:
    gt = np.asarray(geometry.landmarks2d(face, jnp.asarray(batch["params"])))
    errors = metrics.nme_2d(pred[..., :2], gt)
    summary = metrics.yaw_bin_summary(errors, batch["yaw"])
  out = {"bins": [float(b) for b in summary["bins"]], "mean_of_bins": float(summary["mean_of_bins"]),
         "overall": float(summary["overall"]), "n": int(summary["n"]), "n_failed": int(summary["n_failed"])}
  return {"nme_2d_68": out, "errors": np.asarray(errors)}


# ------------------------------------------------------------------------------------- checkpointing

def _managers(workdir: str, config):
  import orbax.checkpoint as ocp
  latest = ocp.CheckpointManager(
      os.path.abspath(os.path.join(workdir, "checkpoints")),
      options=ocp.CheckpointManagerOptions(max_to_keep=config.keep_checkpoints, create=True,
                                           enable_async_checkpointing=True))
  best = ocp.CheckpointManager(
      os.path.abspath(os.path.join(workdir, "best")),
      options=ocp.CheckpointManagerOptions(max_to_keep=1, best_fn=lambda m: m["dev_nme"], best_mode="min",
                                           create=True, enable_async_checkpointing=False))
  return latest, best


def restore_state(manager, template: TrainState, step: int | None = None) -> TrainState:
  """Restores ``step`` (default: latest) into host arrays shaped like ``template``."""
  import orbax.checkpoint as ocp
  step = manager.latest_step() if step is None else step
  abstract = jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(np.shape(x), np.asarray(x).dtype), template)
  return manager.restore(step, args=ocp.args.StandardRestore(abstract))


def load_checkpoint(workdir: str, which: str = "latest"):
  """-> (config, TrainState on host) from a workdir written by ``train_and_evaluate``."""
  import orbax.checkpoint as ocp
  with open(os.path.join(workdir, "config.json")) as f:
    config = ml_collections.ConfigDict(json.load(f))
  sub = "best" if which == "best" else "checkpoints"
  path = os.path.abspath(os.path.join(workdir, sub))
  if not os.path.isdir(path):
    raise FileNotFoundError(f"no checkpoints in {path}")
  manager = ocp.CheckpointManager(path, options=ocp.CheckpointManagerOptions(read_only=True))
  if manager.latest_step() is None:
    raise FileNotFoundError(f"no checkpoints in {path}")
  mods = make_modules(config, bn_axis_name=None)
  return config, restore_state(manager, init_state(config, mods))


# ---------------------------------------------------------------------------------------- the loop

class NonFiniteLoss(RuntimeError):
  pass


def _check_config(config) -> None:
  if config.use_sc or config.use_cyc:
    if not config.data.train_2d:
      raise ValueError("config.data.train_2d is empty but the variant uses the 2D-only stream (cyc/sc)")
  if not config.data.train_3d:
    raise ValueError("config.data.train_3d is empty: name the 3D-labelled training data (see configs/2dasl.py)")
  if not config.bfm_dir:
    raise ValueError("config.bfm_dir is empty: a 3DDFA-format folder (train.configs) or 'synthetic'")
  if config.stage not in (1, 2):
    raise ValueError(f"config.stage must be 1 or 2, got {config.stage}")


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains (resuming from ``workdir`` if it holds checkpoints) and evaluates on ``config.data.dev``.

  Returns the last evaluation (``{"nme_2d_68": {...}, "step": int}``); also written to
  ``workdir/results.json``. Raises ``NonFiniteLoss`` (after keeping the last good checkpoint) on NaN/Inf.
  """
  from datasets import augment, registry
  from datasets.pipeline import Loader
  from jface.writers import MetricWriter

  _check_config(config)
  t_start = time.time()
  elapsed_before = previous_elapsed(workdir)
  elapsed = lambda: round(elapsed_before + time.time() - t_start, 1)
  if config.distributed:
    jax.distributed.initialize()
  face = bfm_lib.load_model(config.bfm_dir, dense_bases_dir=config.dense_bases_dir or None)
  uses_2d = config.use_cyc or config.use_sc
  src3d = registry.build_source(config.data.train_3d, face)
  src2d = registry.build_source(config.data.train_2d, face) if uses_2d else None
  dev = registry.build_source(config.data.dev, face) if config.data.dev else None
  if config.data.get("holdout", 0):
    # Model selection without touching the dev split: a fixed random subset of train_3d replaces it.
    src3d, dev = holdout_split(src3d, config.data.holdout)
  if dev is not None and config.data.dev_size:
    dev = _Indices(dev, range(min(config.data.dev_size, len(dev))))
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, "config.json"), "w") as f:
    f.write(config.to_json(indent=2))

  mesh = parallel.make_mesh(config.num_devices or None)
  nproc = jax.process_count()
  aug = augment.AugmentConfig(enabled=bool(config.data.augment))
  mk = lambda src, bs, seed, name: Loader(src, bs // nproc, seed, model=face, augment_cfg=aug,
                                          num_threads=config.data.num_threads,
                                          landmark_noise_px=config.data.landmark_noise_px, name=name)
  loader3d = mk(src3d, config.batch_size, config.seed * 1000 + 1 + jax.process_index(), "train_3d")
  loader2d = mk(src2d, config.batch_size_2d, config.seed * 1000 + 2 + jax.process_index(), "train_2d") \
      if uses_2d else None

  mods = make_modules(config)
  state = init_state(config, mods)
  latest, best = _managers(workdir, config)
  writer = MetricWriter(workdir, config.num_steps, tensorboard=config.tensorboard)
  start = 0
  if latest.latest_step() is not None:
    state = restore_state(latest, state)
    start = int(state.step)
    writer.log(f"resuming from step {start} ({latest.directory})")
  elif config.init_from:
    _, init = load_checkpoint(config.init_from)
    state = state.replace(params=init.params, batch_stats=init.batch_stats)
    writer.log(f"initialised the regressor from {config.init_from} (step {int(init.step)})")
  if start >= config.num_steps:
    writer.log(f"{workdir} is already trained to step {start} (num_steps={config.num_steps}); nothing to do")
    writer.close()
    latest.close()
    best.close()
    path = os.path.join(workdir, "results.json")
    return json.load(open(path)) if os.path.exists(path) else {}
  state = parallel.replicate(state, mesh)
  face_r = parallel.replicate(face, mesh)
  step_fn = parallel.data_parallel(make_train_step(config, mods), mesh, n_replicated=2, n_sharded=2)
  predict = make_predict_fn(mods, config.use_flm)
  images_per_step = config.batch_size + (config.batch_size_2d if uses_2d else 0)
  writer.log(f"jface 2DASL: variant={config.variant} model={config.model} stage={config.stage} "
             f"devices={mesh.devices.size} steps {start}->{config.num_steps} workdir={workdir}")

  it3 = loader3d.iter_from(start, num_steps=config.num_steps - start)
  it2 = loader2d.iter_from(start, num_steps=config.num_steps - start) if uses_2d else None
  result = {}
  fields = ("image", "params", "landmarks", "flm_landmarks", "landmarks_mask")
  try:
    for step in range(start, config.num_steps):
      b3 = next(it3)
      b2 = next(it2) if uses_2d else b3
      b3 = parallel.shard_batch({k: b3[k] for k in fields}, mesh)
      b2 = parallel.shard_batch({k: b2[k] for k in fields}, mesh) if uses_2d else b3
      state, metrics = step_fn(state, face_r, b3, b2)
      metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
      done = step + 1
      if not np.isfinite(metrics["loss"]):
        latest.wait_until_finished()
        raise NonFiniteLoss(f"non-finite loss at step {done} ({metrics}); stopped. The last good checkpoint "
                            f"(step {latest.latest_step()}) is kept in {latest.directory}")
      if done % config.log_every == 0 or done == config.num_steps:
        metrics["lr"] = _lr(config, done)
        metrics["elapsed_s"] = elapsed()
        writer.write_scalars(done, metrics)
        writer.progress(done, metrics, images_per_step)
      if done % config.checkpoint_every == 0 or done == config.num_steps:
        latest.save(done, args=_save_args(state))
      if dev is not None and (done % config.eval_every == 0 or done == config.num_steps):
        pw, batch = predict_source(predict, state, dev)
        ev = evaluate_predictions(face, pw, batch)
        nme = ev["nme_2d_68"]
        writer.write_scalars(done, {"nme_mean_of_bins": nme["mean_of_bins"], "nme_overall": nme["overall"]},
                             prefix="dev")
        writer.log(f"dev @ {done}: NME bins {' / '.join(f'{b:.3f}' for b in nme['bins'])}, "
                   f"mean of bins {nme['mean_of_bins']:.3f}, overall {nme['overall']:.3f} (n={nme['n']})")
        best.save(done, args=_save_args(state), metrics={"dev_nme": nme["mean_of_bins"]})
        result = {"nme_2d_68": nme, "step": done, "elapsed_s": elapsed()}
        with open(os.path.join(workdir, "results.json"), "w") as f:
          json.dump(result, f, indent=2)
  finally:
    for it in (it3, it2):
      if it is not None:
        it.close()
    latest.wait_until_finished()
    latest.close()
    best.close()
    writer.close()
    for name, ld in (("train_3d", loader3d), ("train_2d", loader2d)):
      if ld is not None and ld.stats["bad"]:
        print(f"{name}: skipped {ld.stats['bad']} unreadable examples ({ld.stats['replaced']} draws replaced)")
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


def _save_args(state):
  import orbax.checkpoint as ocp
  return ocp.args.StandardSave(state)


def _lr(config, step: int) -> float:
  o = config.optimizer
  return float(o.learning_rate * o.decay_rate ** (step / o.decay_steps))


def holdout_split(source, n: int, seed: int = 0):
  """(train, held_out): ``n`` examples of ``source`` chosen by a fixed permutation (``seed``) and the rest."""
  if not 0 < n < len(source):
    raise ValueError(f"data.holdout must be in (0, {len(source)}), got {n}")
  perm = np.random.default_rng(seed).permutation(len(source))
  return _Indices(source, np.sort(perm[n:])), _Indices(source, np.sort(perm[:n]))


class _Indices:
  """``source`` restricted to ``indices``."""

  def __init__(self, source, indices):
    self.source, self.indices = source, [int(i) for i in indices]

  def __len__(self):
    return len(self.indices)

  def __getitem__(self, i):
    return self.source[self.indices[i]]
