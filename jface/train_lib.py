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
