"""PRNet's network, initial state and its pure per-device train step.

One step (paper Sec. 3.2-3.3) on a 3D-labelled batch (crops + whitened params):

1. input: the 120 x 120 crops resized to S x S (``config.image_size``), RGB / 255 (``targets.network_input``);
2. targets: the position maps of the params, built in the step (``targets.target_maps``: dense vertices, the
   layout's fixed rasterisation pattern);
3. ResFCN (``jface.models.resfcn``) forward in train mode, loss = Eq. 1 with the layout's 16:4:3:0 weights
   (``losses.position_map_loss``);
4. one optimizer step (``jface.train.optim``: the paper's Adam 1e-4 halved every 5 epochs in the default config).

Every device runs this on its slice (``jface.train.parallel``): gradients and metrics are ``pmean``-ed over
'data' and batch norm uses global batch statistics (``bn_axis_name``), as 2DASL's step. ``TrainState.extra`` is
unused ({}).
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import optax

from jface.core import uv as uv_lib
from jface.core.face_model import N_PARAMS, FaceModel
from jface.methods.base import Batch, TrainState
from jface.methods.prnet import losses, targets
from jface.methods.prnet.uv_layout import Layout, layout as get_layout
from jface.models.init import glorot_variables
from jface.models.resfcn import ResFCN, TemplateResFCN
from jface.train import optim, parallel

DEFAULT_IMAGE_SIZE = 256
HEADS = ("sigmoid", "template")  # the paper's sigmoid map; ours: affine template + residual (TemplateResFCN)


@dataclasses.dataclass(frozen=True)
class Modules:
  """The static parts of a PRNet run (closed over by the jitted step and predict)."""
  net: Any
  tx: Any
  layout: Layout


def image_size(config) -> int:
  return int(config.get("image_size", DEFAULT_IMAGE_SIZE))


def build(config: ml_collections.ConfigDict, bn_axis_name: str | None = parallel.AXIS) -> Modules:
  size = image_size(config)
  head = str(config.get("head", "sigmoid"))
  if head not in HEADS:
    raise ValueError(f"unknown PRNet head {head!r}; choose one of {', '.join(HEADS)}")
  cls = TemplateResFCN if head == "template" else ResFCN
  net = cls(bn_axis_name=bn_axis_name, dtype=jnp.dtype(config.get("dtype", "float32")),
            **dict(config.get("model_kwargs", {})))
  lay = get_layout(str(config.bfm_dir), size, str(config.get("prnet_uv_dir", "") or ""))
  return Modules(net=net, tx=optim.make_optimizer(config), layout=lay)


def template(face: FaceModel, lay: Layout) -> tuple[jax.Array, jax.Array]:
  """The mean face's position map (S, S, 3) (whitened params 0: the mean pose and shape, in map units) and its
  weighted mean over the face (3,): ``TemplateResFCN``'s template and center."""
  tmpl = targets.target_maps(face, jnp.zeros((1, N_PARAMS), jnp.float32), lay)[0]
  w = jnp.asarray(lay.weights > 0, jnp.float32)[..., None]
  return tmpl, jnp.sum(tmpl * w, axis=(0, 1)) / jnp.sum(w)


def apply_net(net, variables: dict, x: jax.Array, face: FaceModel, lay: Layout, train: bool, **kw):
  """The network's maps (B, S, S, 3) for images ``x``: ResFCN directly, ``TemplateResFCN`` with the face model's
  template (``template``). ``kw`` goes to ``net.apply`` (e.g. ``mutable``)."""
  if isinstance(net, TemplateResFCN):
    return net.apply(variables, x, *template(face, lay), train=train, **kw)
  return net.apply(variables, x, train=train, **kw)


def init_variables(net: ResFCN, size: int, seed: int) -> dict:
  """ResFCN's initial variables, drawn on the host with numpy (``jface.models.init.glorot_variables``: what
  ``net.init`` gives in distribution, without compiling the draws); the tree (names, shapes, dtypes) is
  ``net.init``'s own (``jax.eval_shape``). Deterministic in ``seed`` on every backend.
  """
  x = jax.ShapeDtypeStruct((2, size, size, 3), jnp.float32)
  extra = ()
  if isinstance(net, TemplateResFCN):  # its template and center; zero affine kernel, zero last BN scale
    extra = (jax.ShapeDtypeStruct((size, size, 3), jnp.float32), jax.ShapeDtypeStruct((3,), jnp.float32))
  shapes = jax.eval_shape(functools.partial(net.clone(bn_axis_name=None).init, train=False),
                          jax.random.PRNGKey(0), x, *extra)
  last_bn = f"bn{len(resfcn_decoder_layers())}"

  def zero(keys, name):  # TemplateResFCN: zero affine head and last decoder BN scale (the map starts at the template)
    return bool(extra) and ("affine" in keys or (name == "scale" and last_bn in keys and "decoder" in keys))
  return glorot_variables(shapes, seed, zero)


def resfcn_decoder_layers() -> list:
  from jface.models import resfcn
  return list(resfcn.DECODER) + [(3, 1)] * resfcn.NUM_OUT_LAYERS


def init_state(config: ml_collections.ConfigDict, mods: Modules) -> TrainState:
  """Initial state on the host (unreplicated), ``init_variables`` of ``config.seed``."""
  variables = init_variables(mods.net, image_size(config), int(config.seed))
  params = variables["params"]
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, batch_stats=variables.get("batch_stats", {}),
                    opt_state=mods.tx.init(params), extra={})


def keypoint_error(pred: jax.Array, target: jax.Array, lay: Layout, crop_size: int) -> jax.Array:
  """Mean 3D distance (crop pixels) between two maps at the 68 keypoint pixels (a training metric)."""
  kpt = jnp.asarray(lay.kpt_px)
  d = uv_lib.sample_map(pred, kpt) - uv_lib.sample_map(target, kpt)
  return jnp.mean(jnp.linalg.norm(d, axis=-1)) * crop_size / lay.size


def make_train_step(config: ml_collections.ConfigDict, mods: Modules) -> Callable:
  """Returns the per-device ``train_step(state, face, batches) -> (state, metrics)``.

  Pure; to be run under ``jax.shard_map`` over 'data' (``parallel.data_parallel``). ``face`` is the FaceModel
  (with dense bases); ``batches["train_3d"]`` has ``image`` (B, 120, 120, 3) uint8 and ``params`` (B, 62).
  Metrics: ``loss`` (Eq. 1, map pixels) and ``kpt_px`` (mean keypoint distance, crop pixels).
  """
  size, kind, lay, net = image_size(config), config.get("loss", "distance"), mods.layout, mods.net
  weights = jnp.asarray(lay.weights)

  def train_step(state: TrainState, face: FaceModel, batches: dict[str, Batch]):
    batch = batches["train_3d"]
    x = targets.network_input(batch["image"], size)
    target = targets.target_maps(face, batch["params"], lay)

    def loss_fn(params):
      pred, new_vars = apply_net(net, {"params": params, "batch_stats": state.batch_stats}, x, face, lay,
                                 train=True, mutable=["batch_stats"])
      return losses.position_map_loss(pred, target, weights, kind), (new_vars["batch_stats"], pred)

    (loss, (batch_stats, pred)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    grads = parallel.pmean(grads)
    updates, opt_state = mods.tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = parallel.pmean({"loss": loss, "kpt_px": keypoint_error(pred, target, lay, face.crop_size)})
    new_state = state.replace(step=state.step + 1, params=params, batch_stats=batch_stats, opt_state=opt_state)
    return new_state, metrics

  return train_step
