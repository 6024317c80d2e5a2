"""2DASL's networks, initial state and its pure per-device train step.

One step (paper Sec. 3, Eq. 1), on a 3D-labelled batch J (images + GT params) and a 2D-only batch I (images +
2D landmarks X2d):

1. regressor forward on [J; I] (one pass, so batch norm sees both): predictions a_J, a_I = R([img, FLM(X2d)]);
2. L3d = weighted coefficient loss (a_J, a*) (stage 1) or the vertex distance cost (stage 2);
3. ``use_cyc``: Y2d = H(a_I); backward pass a'_I = R([img_I, FLM(Y2d)]); L2d-con(X2d, Y2d), L3d-con(X3d, X^3d),
   Lcyc = L2d-con(X2d, X^2d) (the FLM of Y2d is a rasterisation: no gradient flows through it);
4. ``use_sc``: Lsc (regressor side) = -log D([z_I, a_I]) with the critic held fixed;
5. the regressor takes one optimizer step on L = L3d + l1 L2d-con + l2 L3d-con + l3 Lcyc + l4 Lsc;
6. encoder + critic take one Adam step on the critic loss with real = (z_J, a*), fake = (z_I, sg(a_I)).

With ``config.fit_start`` every regressor output above is a correction added to the 3DMM fit of the points its
landmark map is drawn from (the backward pass: of all 68 projected points Y2d); ``fit_start.landmark_fit``, no
gradient through the fit.

Every device runs this on its slice (``jface.train.parallel``); losses and gradients are ``pmean``-ed over 'data'
and batch norm uses global batch statistics, so N devices compute the same step as one device on the global
batch. The critic pair and its optimizer state live in ``TrainState.extra`` (``{"adv_params", "adv_opt_state"}``).
"""
from __future__ import annotations

import functools
from typing import Any, Callable

import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import optax

from jface import models
from jface.core import geometry
from jface.core.face_model import CROP_SIZE, FaceModel, N_PARAMS
from jface.methods.base import Batch, TrainState
from jface.methods.twodasl import losses
from jface.methods.twodasl.critic import Critic, Encoder
from jface.methods.twodasl import fit_start as fit
from jface.methods.twodasl.flm import landmark_map, network_input
from jface.train import optim, parallel


@flax.struct.dataclass
class Modules:
  """The static parts of a 2DASL run (closed over by the jitted step)."""
  regressor: Any = flax.struct.field(pytree_node=False)
  encoder: Any = flax.struct.field(pytree_node=False)
  critic: Any = flax.struct.field(pytree_node=False)
  tx: Any = flax.struct.field(pytree_node=False)
  adv_tx: Any = flax.struct.field(pytree_node=False)


def in_channels(config) -> int:
  return 4 if config.use_flm else 3


def build(config: ml_collections.ConfigDict, bn_axis_name: str | None = parallel.AXIS) -> Modules:
  regressor = models.build_regressor(config.model, in_channels=in_channels(config), dtype=jnp.dtype(config.dtype),
                                     bn_axis_name=bn_axis_name, **dict(config.get("model_kwargs", {})))
  return Modules(regressor=regressor, encoder=Encoder(**dict(config.get("encoder_kwargs", {}))),
                 critic=Critic(**dict(config.get("critic_kwargs", {}))), tx=optim.make_optimizer(config),
                 adv_tx=optax.adam(config.critic_learning_rate))


def _unmapped(module):
  """The module with batch-norm statistics taken per call (for init and eval, outside any mapped axis)."""
  return module.clone(bn_axis_name=None) if hasattr(module, "bn_axis_name") else module


def init_state(config: ml_collections.ConfigDict, mods: Modules) -> TrainState:
  """Initial state on the host (unreplicated). Deterministic in ``config.seed``."""
  k_reg, k_enc, k_cri = jax.random.split(jax.random.PRNGKey(config.seed), 3)
  size = config.get("image_size", CROP_SIZE)  # crop side the networks are built for
  x = jnp.zeros((2, size, size, in_channels(config)), jnp.float32)
  variables = jax.jit(functools.partial(_unmapped(mods.regressor).init, train=False))(k_reg, x)
  params, batch_stats = variables["params"], variables.get("batch_stats", {})
  if fit.options(config)[0]:
    params = fit.zero_head(params)  # the first prediction is the landmark fit itself
  extra = {}
  if config.use_sc:
    enc = mods.encoder.init(k_enc, x[..., :3])["params"]
    z = mods.encoder.apply({"params": enc}, x[..., :3])
    cri = mods.critic.init(k_cri, z, jnp.zeros((2, N_PARAMS)))["params"]
    adv_params = {"encoder": enc, "critic": cri}
    extra = {"adv_params": adv_params, "adv_opt_state": mods.adv_tx.init(adv_params)}
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, batch_stats=batch_stats,
                    opt_state=mods.tx.init(params), extra=extra)


def make_train_step(config: ml_collections.ConfigDict, mods: Modules) -> Callable:
  """Returns the per-device ``train_step(state, face, batches) -> (state, metrics)``.

  Pure; to be run under ``jax.shard_map`` over the ``'data'`` axis (``parallel.data_parallel``). ``face`` is
  the FaceModel. ``batches["train_3d"]`` (and ``batches["train_2d"]`` when cyc or sc is on) are dicts with
  ``image`` (B, S, S, 3) uint8, ``params`` (B, 62), ``landmarks`` and ``flm_landmarks`` (B, 68, 2),
  ``landmarks_mask`` (B, 68).
  """
  use_flm, use_cyc, use_sc, stage = config.use_flm, config.use_cyc, config.use_sc, config.stage
  lambdas = dict(config.lambdas)
  l3d_weights = config.get("l3d_weights", "2d")  # configs written before the option: the paper's 2D form
  uses_2d = use_cyc or use_sc
  fit_start, jaw_weight = fit.options(config)
  reg, enc, cri = mods.regressor, mods.encoder, mods.critic

  def train_step(state: TrainState, face: FaceModel, batches: dict[str, Batch]):
    batch3d = batches["train_3d"]
    batch2d = batches["train_2d"] if uses_2d else None
    rng = jax.random.fold_in(jax.random.fold_in(jax.random.PRNGKey(config.seed), state.step),
                             jax.lax.axis_index(parallel.AXIS))
    x3 = network_input(batch3d, use_flm)
    x2 = network_input(batch2d, use_flm) if uses_2d else None
    n3 = x3.shape[0]
    if fit_start:  # what the regressor's outputs are added to
      starts = [fit.landmark_fit(face, b["flm_landmarks"], b["landmarks_mask"], jaw_weight)
                for b in ([batch3d, batch2d] if uses_2d else [batch3d])]

    def loss_fn(params):
      x = jnp.concatenate([x3, x2]) if uses_2d else x3
      out, new_vars = reg.apply({"params": params, "batch_stats": state.batch_stats}, x, train=True,
                                mutable=["batch_stats"])
      if fit_start:
        out = out + jnp.concatenate(starts)
      a3, a2 = out[:n3], out[n3:]
      terms = {}
      if stage == 1:
        terms["l3d"] = losses.weighted_coefficient_loss(face, a3, batch3d["params"], l3d_weights)
      else:
        terms["vdc"] = losses.vertex_distance_loss(face, a3, batch3d["params"])
      if use_cyc:
        y2d = jax.lax.stop_gradient(geometry.landmarks2d(face, a2))
        flm_back = landmark_map(y2d, x2.shape[1])
        xb = jnp.concatenate([x2[..., :3], flm_back[..., None]], axis=-1) if use_flm else x2
        a2_back, _ = reg.apply({"params": params, "batch_stats": state.batch_stats}, xb, train=True,
                               mutable=["batch_stats"])
        if fit_start:
          a2_back = a2_back + fit.landmark_fit(face, y2d, jnp.ones(y2d.shape[:2], bool), jaw_weight)
        terms.update(losses.cycle_losses(face, a2, a2_back, batch2d["landmarks"], batch2d["landmarks_mask"]))
      if use_sc:
        z2 = enc.apply({"params": state.extra["adv_params"]["encoder"]}, x2[..., :3])
        fake = cri.apply({"params": state.extra["adv_params"]["critic"]}, z2, a2, train=True,
                         rngs={"dropout": jax.random.fold_in(rng, 1)})
        terms["sc"] = losses.adversarial_loss(fake)
      total = losses.combine(terms, lambdas)
      return total, (terms, new_vars["batch_stats"], a2)

    (total, (terms, batch_stats, a2)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    grads = parallel.pmean(grads)
    updates, opt_state = mods.tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = dict(terms, loss=total)

    extra = state.extra
    if use_sc:
      a2 = jax.lax.stop_gradient(a2)
      adv_params = state.extra["adv_params"]

      def critic_fn(ap):
        z = enc.apply({"params": ap["encoder"]}, jnp.concatenate([x3, x2])[..., :3])
        k1, k2 = jax.random.split(jax.random.fold_in(rng, 2))
        real = cri.apply({"params": ap["critic"]}, z[:n3], batch3d["params"], train=True, rngs={"dropout": k1})
        fake = cri.apply({"params": ap["critic"]}, z[n3:], a2, train=True, rngs={"dropout": k2})
        return losses.critic_loss(real, fake)

      c_loss, c_grads = jax.value_and_grad(critic_fn)(adv_params)
      c_grads = parallel.pmean(c_grads)
      c_updates, adv_opt_state = mods.adv_tx.update(c_grads, state.extra["adv_opt_state"], adv_params)
      extra = {"adv_params": optax.apply_updates(adv_params, c_updates), "adv_opt_state": adv_opt_state}
      metrics["critic"] = c_loss

    metrics = parallel.pmean(metrics)
    new_state = state.replace(step=state.step + 1, params=params, batch_stats=batch_stats, opt_state=opt_state,
                              extra=extra)
    return new_state, metrics

  return train_step
