"""Optimizers from a config: the learning-rate schedule and the optax chain every method's main network uses."""
from __future__ import annotations

import ml_collections
import optax


def schedule(config: ml_collections.ConfigDict) -> optax.Schedule:
  """``lr * decay_rate ** (step / decay_steps)`` (``config.optimizer``), continuous exponential decay, or with
  ``optimizer.staircase`` (default False) ``lr * decay_rate ** floor(step / decay_steps)`` (e.g. PRNet's "halved
  every 5 epochs"); ``decay_steps`` 0 means ``config.num_steps`` (the decay spans the run, whatever ``num_steps``
  is)."""
  o = config.optimizer
  return optax.exponential_decay(o.learning_rate, transition_steps=o.decay_steps or config.num_steps,
                                 decay_rate=o.decay_rate, staircase=bool(o.get("staircase", False)))


def make_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
  """``config.optimizer``: ``name`` sgd (``momentum``, ``nesterov``) or adam, on ``schedule(config)``, after
  optional global-norm clipping (``grad_clip``) and decoupled weight decay (``weight_decay``)."""
  o = config.optimizer
  lr = schedule(config)
  if o.name == "sgd":
    tx = optax.sgd(lr, momentum=o.momentum or None, nesterov=o.nesterov)
  elif o.name == "adam":
    tx = optax.adam(lr)
  else:
    raise ValueError(f"unknown optimizer.name {o.name!r}; choose sgd or adam")
  chain = []
  if o.grad_clip:
    chain.append(optax.clip_by_global_norm(o.grad_clip))
  if o.weight_decay:
    chain.append(optax.add_decayed_weights(o.weight_decay))
  return optax.chain(*chain, tx)
