"""PGN's modules, initial state, the 3DMM from the network's outputs, and its per-device train step (3 stages).

The paper's training (Sec. 4, "Training Details"), ``config.stage``:

1. **Encoder + PGN** on a 3D-labelled batch (``train_3d``; L1 on x, y, z of the 68 landmarks) and, when
   ``config.data.train_2d`` is set, a 2D-only batch (``train_2d``; L1 on x, y of the visible points): Ll against
   the labels, in map units (``landmark_targets``). The heads are frozen.
2. **Identity / expression heads** on single images (``train_3d``'s images; its labels are not read), encoder
   and PGN frozen (eval-mode batch norm): Eq. 8 ``Ll = |T X - X_UV|`` with X the 68 model-space landmarks of the
   predicted shape and T its closed-form pose (Eq. 4, ``pose.solve_affine``) onto the frozen PGN's X_UV, plus
   ``lambda_r`` Lr (Eq. 12).
3. **Multi-frame** (``train_mf``: G groups of K = ``config.group_size`` frames of one person, consecutive in the
   batch): the identity head reads the features fused over each group; Ll + Lr as in stage 2, plus the
   self-consistency terms of ``config.mf_losses`` for every frame j and its source s = the next frame of its
   group (``multi_frame_terms``): texture swap (Eq. 5-6), the rendered image I_s->j, Lp (census, Eq. 9, or
   "lp-": plain L1), Lf (Eq. 10, pyramidal Lucas-Kanade flow instead of the paper's network) and Ls (Eq. 11,
   cosine of the frozen encoder's pooled features). Eq. 7 with the ``config.lambdas`` weights.

Only the stage's parts get updates (``optax.multi_transform``); frozen parts also get ``stop_gradient``, so their
weight gradients are never computed. Every device runs the step on its slice; gradients, metrics and (stage 1)
batch-norm statistics are averaged over 'data' (``jface.train.parallel``).

From the network to a 3DMM (``face_params``): X_UV (map units) -> crop coordinates (``prnet.targets``) -> camera
frame (y up); X = ``geometry.landmarks_model_space`` of the whitened identity / expression; ``T = [fR | t]``
solved in closed form; ``compose_params(T, a_shp, a_exp)`` whitened = the 62 params of the 3DDFA convention, so
``geometry``'s landmarks, dense vertices and pose all apply. z comes back up to an offset, as PRNet's.
"""
from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from jface.core import geometry
from jface.core import uv as uv_lib
from jface.core.face_model import N_EXP, N_PARAMS, N_SHP, FaceModel
from jface.methods.base import Batch, TrainState
from jface.methods.pgn import flow, losses, photometric, pose, render
from jface.methods.pgn.model import PGNNet
from jface.methods.prnet import targets
from jface.methods.prnet.step import Modules, image_size  # the same static parts (net, tx, UV layout) and input side
from jface.methods.prnet.uv_layout import Layout, layout as get_layout
from jface.models.init import glorot_variables
from jface.train import optim, parallel

STAGES = (1, 2, 3)
MF_TERMS = ("lp", "lp-", "lf", "ls")  # multi-frame terms: census photometric, plain L1 photometric, flow, semantic
Z_MARGIN = 0.05  # of S: the deepest landmark's target z (keeps the sigmoid off its flat end)
TRAINED = {1: ("encoder", "decoder", "lm_fc1", "lm_fc2"), 2: ("id_head", "exp_head"), 3: ("id_head", "exp_head")}


def mf_terms(config) -> tuple[str, ...]:
  """The multi-frame terms of ``config.mf_losses`` ("lp,lf,ls", "none", ...)."""
  spec = str(config.get("mf_losses", "lp,lf,ls")).strip()
  terms = () if spec in ("", "none") else tuple(t.strip() for t in spec.split(","))
  bad = [t for t in terms if t not in MF_TERMS]
  if bad or ("lp" in terms and "lp-" in terms):
    raise ValueError(f"config.mf_losses {spec!r}: use 'none' or a comma list of {', '.join(MF_TERMS)} "
                     "(lp and lp- exclude each other)")
  return terms


def build(config: ml_collections.ConfigDict, bn_axis_name: str | None = parallel.AXIS) -> Modules:
  size = image_size(config)
  lay = get_layout(str(config.bfm_dir), size, str(config.get("prnet_uv_dir", "") or ""))
  kw = dict(config.get("model_kwargs", {}))
  net = PGNNet(kpt_px=tuple(map(tuple, np.asarray(lay.kpt_px).tolist())), n_shp=N_SHP, n_exp=N_EXP,
               bn_axis_name=bn_axis_name, dtype=jnp.dtype(config.get("dtype", "float32")), **kw)
  trained = TRAINED[max(int(config.get("stage", 1)), 1)]  # stage 0 (all in turn) builds as stage 1

  def label(params):  # a label per leaf: "train" under the stage's top-level modules, "freeze" elsewhere
    return {k: jax.tree_util.tree_map(lambda _, k=k: "train" if k in trained else "freeze", v)
            for k, v in params.items()}
  tx = optax.multi_transform({"train": optim.make_optimizer(config), "freeze": optax.set_to_zero()}, label)
  return Modules(net=net, tx=tx, layout=lay)


def init_variables(net: PGNNet, size: int, seed: int) -> dict:
  """PGNNet's initial variables drawn on the host (``jface.models.init.glorot_variables``); the heads' last
  dense layers start at zero (the mean face)."""
  x = jax.ShapeDtypeStruct((2, size, size, 3), jnp.float32)
  shapes = jax.eval_shape(functools.partial(net.clone(bn_axis_name=None).init, train=False),
                          jax.random.PRNGKey(0), x)
  last = "fc3"
  return glorot_variables(shapes, seed, lambda keys, name: last in keys and keys[-3] in ("id_head", "exp_head"))


def init_state(config: ml_collections.ConfigDict, mods: Modules) -> TrainState:
  variables = init_variables(mods.net, image_size(config), int(config.seed))
  params = variables["params"]
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, batch_stats=variables.get("batch_stats", {}),
                    opt_state=mods.tx.init(params), extra={})


# ----------------------------------------------------------------------------------- 3DMM from outputs

def landmark_targets(points: jax.Array, size: int, crop_size: int) -> jax.Array:
  """(..., 68, 2|3) crop coordinates -> map units of the S x S input; with z, shifted so that the deepest of the
  68 points sits at ``Z_MARGIN * S`` (the PGN map's z is relative, as PRNet's)."""
  k = size / crop_size
  xy = k * (points[..., :2] - 0.5) - 0.5
  if points.shape[-1] == 2:
    return xy
  z = k * points[..., 2:]
  return jnp.concatenate([xy, z - jnp.min(z, axis=-2, keepdims=True) + Z_MARGIN * size], axis=-1)


def face_params(face: FaceModel, x_uv: jax.Array, a_shp: jax.Array, a_exp: jax.Array, size: int,
                reg: float = 1e-4, weights: jax.Array | None = None) -> tuple[jax.Array, jax.Array, jax.Array]:
  """PGN's 3DMM (module docstring): X_UV (B, 68, 3) map units, whitened identity (B, 40) / expression (B, 10) ->
  (whitened params (B, 62), T X (B, 68, 3) and X_UV (B, 68, 3), both in the camera frame)."""
  y = pose.crop_to_camera(targets.map_to_crop(x_uv, size, face.crop_size), face.crop_size)
  n_pose = N_PARAMS - N_SHP - N_EXP
  pw_shape = jnp.concatenate([jnp.zeros(a_shp.shape[:-1] + (n_pose,), a_shp.dtype), a_shp, a_exp], axis=-1)
  x = geometry.landmarks_model_space(face, pw_shape)
  t = pose.solve_affine(x, y, weights, reg=reg)
  raw = geometry.dewhiten(face, pw_shape)
  _, _, s_raw, e_raw = geometry.parse_params(raw)
  pw = geometry.whiten(face, geometry.compose_params(t[..., :3], t[..., 3], s_raw, e_raw))
  return pw, pose.apply_affine(t, x), y


def prior(face: FaceModel, a_shp: jax.Array, a_exp: jax.Array) -> jax.Array:
  """Lr (Eq. 12) of whitened coefficients: raw alpha over the face model's parameter std."""
  std = face.param_std
  n_pose = N_PARAMS - N_SHP - N_EXP
  mean = face.param_mean
  s_raw = a_shp * std[n_pose:n_pose + N_SHP] + mean[n_pose:n_pose + N_SHP]
  e_raw = a_exp * std[n_pose + N_SHP:] + mean[n_pose + N_SHP:]
  return losses.coefficient_prior(s_raw, e_raw, std[n_pose:n_pose + N_SHP], std[n_pose + N_SHP:])


# ----------------------------------------------------------------------------------- multi-frame terms

def source_index(batch: int, group_size: int) -> np.ndarray:
  """(B,) the source frame of each frame: the next frame of its group (K = 2: the pair's other frame)."""
  b = np.arange(batch)
  return (b // group_size) * group_size + (b % group_size + 1) % group_size


def face_mask(lay: Layout) -> jax.Array:
  """(S, S) 1 on the face region of the layout's weight map (weight > 0)."""
  return jnp.asarray(np.asarray(lay.weights) > 0, jnp.float32)


def facing_sign(face: FaceModel, lay: Layout) -> jax.Array:
  """+1 or -1: the orientation of the layout's grid normals that faces the camera (from the frontal mean face)."""
  v = geometry.dense_vertices(face, jnp.zeros((N_PARAMS,), jnp.float32))
  mean_map = uv_lib.apply_uv_sampling(lay.sampling, v[None])
  nz = losses.grid_normals(mean_map)[0, ..., 2]
  return jnp.sign(jnp.sum(nz * face_mask(lay)))


def multi_frame_terms(face: FaceModel, images: jax.Array, pw: jax.Array, lay: Layout, group_size: int,
                      terms: tuple[str, ...], encode: Callable | None = None, feats: jax.Array | None = None,
                      flow_kw: dict | None = None) -> dict:
  """The self-consistency terms of Sec. 3.3-3.4 for a batch of G x K frames.

  Args:
    face: the face model (dense bases).
    images: (B, H, W, 3) float crops in [0, 255] (B = G x K, K consecutive frames per person).
    pw: (B, 62) whitened params of each frame (shared identity, own expression and pose).
    lay: the UV layout (the texels that carry the texture).
    group_size: K.
    terms: subset of ``MF_TERMS``.
    encode: images (B, H, W, 3) in [0, 255] -> pooled features (B, C) (for "ls").
    feats: (B, C) pooled features of ``images`` (for "ls").
  Returns {name: scalar} for the requested terms, plus "coverage" (the mean rendered face fraction).
  """
  b, h, w = images.shape[:3]
  src = source_index(b, group_size)
  pos = uv_lib.apply_uv_sampling(lay.sampling, geometry.dense_vertices(face, pw))  # (B, S, S, 3) crop coords
  fm = face_mask(lay)
  vis = jax.lax.stop_gradient(losses.facing_mask(losses.grid_normals(pos), facing_sign(face, lay))) * fm
  s2 = lay.size * lay.size
  xy = pos[..., :2].reshape(b, s2, 2)
  tex = render.sample_image(images, xy).reshape(b, lay.size, lay.size, 3)  # C_k
  m12 = losses.common_visibility(vis[src], vis)
  swapped = losses.swap_texture(tex[src], tex, m12).reshape(b, s2, 3)  # C_{s->j}
  rend, cov = render.splat(xy, swapped, vis.reshape(b, s2), h, w)
  fused = render.composite(rend, cov, images)  # I_{s->j}
  region = jnp.broadcast_to(losses.region_weights(jnp.asarray(lay.weights)).reshape(1, s2, 1), (b, s2, 1))
  w_img = render.splat(xy, region, vis.reshape(b, s2), h, w)[0][..., 0] * cov
  out = {"coverage": jnp.mean(cov)}
  if "lp" in terms:
    out["lp"] = photometric.census_loss(images, fused, cov, w_img)
  if "lp-" in terms:
    out["lp-"] = photometric.photometric_l1(images, fused, cov, w_img)
  if "lf" in terms:
    fl = flow.lucas_kanade(photometric.to_gray(images), photometric.to_gray(fused), **(flow_kw or {}))
    out["lf"] = flow.flow_loss(fl, w_img)
  if "ls" in terms:
    out["ls"] = losses.feature_consistency(feats, encode(fused))
  return out


# ----------------------------------------------------------------------------------- the step

def make_train_step(config: ml_collections.ConfigDict, mods: Modules) -> Callable:
  """Returns the per-device ``train_step(state, face, batches) -> (state, metrics)`` of ``config.stage``.

  Batches: stage 1 ``train_3d`` (``image``, ``params``) and optionally ``train_2d`` (``image``, ``landmarks``,
  ``landmarks_mask``); stage 2 ``train_3d`` (``image``); stage 3 ``train_mf`` (``image``, groups of K).
  Metrics: ``loss`` and its terms (``l3d``, ``l2d`` in map pixels; ``ll`` in crop pixels, ``lr``, ...).
  """
  stage, size, net, lay = int(config.get("stage", 1)), image_size(config), mods.net, mods.layout
  lam = dict(config.lambdas)
  uses_2d = bool(config.data.get("train_2d"))
  terms, k = mf_terms(config), int(config.get("group_size", 2))
  reg = float(config.get("pose_reg", 1e-4))
  trained = TRAINED[stage]

  def frozen(params):
    return {n: (p if n in trained else jax.lax.stop_gradient(p)) for n, p in params.items()}

  def stage1(state, face, batches):
    b3 = batches["train_3d"]
    x = targets.network_input(b3["image"], size)
    n3 = x.shape[0]
    if uses_2d:
      x = jnp.concatenate([x, targets.network_input(batches["train_2d"]["image"], size)])
    t3 = landmark_targets(geometry.landmarks3d(face, b3["params"]), size, face.crop_size)

    def loss_fn(params):
      def fwd(mdl, xx):
        return mdl.landmarks(mdl.features(xx, True), size, True)
      pred, new_vars = net.apply({"params": frozen(params), "batch_stats": state.batch_stats}, x, method=fwd,
                                 mutable=["batch_stats"])
      out = {"l3d": losses.landmark_loss(pred[:n3], t3, None, dims=3)}
      if uses_2d:
        b2 = batches["train_2d"]
        t2 = landmark_targets(b2["landmarks"], size, face.crop_size)
        out["l2d"] = losses.landmark_loss(pred[n3:, :, :2], t2, b2["landmarks_mask"], dims=2)
      total = out["l3d"] + lam.get("l2d", 1.0) * out.get("l2d", 0.0)
      return total, (out, new_vars["batch_stats"])
    return loss_fn

  def heads_loss(state, face, images, group_size):
    x = targets.network_input(images, size)
    variables = {"batch_stats": state.batch_stats}

    def loss_fn(params):
      p = frozen(params)
      v = dict(variables, params=p)
      feats = net.apply(v, x, False, method=PGNNet.features)
      x_uv = jax.lax.stop_gradient(net.apply(v, feats, size, False, method=PGNNet.landmarks))
      a_shp, a_exp = net.apply(v, feats, group_size, method=PGNNet.coefficients)
      pw, tx, y = face_params(face, x_uv, a_shp, a_exp, size, reg)
      out = {"ll": losses.landmark_loss(tx, y, None, dims=3), "lr": prior(face, a_shp, a_exp)}
      if stage == 3 and terms:
        pooled = jnp.mean(feats, axis=(1, 2))

        def encode(img):
          return jnp.mean(net.apply(v, targets.network_input(img, size), False, method=PGNNet.features),
                          axis=(1, 2))
        out.update(multi_frame_terms(face, jnp.asarray(images, jnp.float32), pw, lay, group_size, terms,
                                     encode=encode, feats=pooled, flow_kw=dict(config.get("flow", {}))))
      total = lam.get("ll", 1.0) * out["ll"] + lam.get("lr", 1.0) * out["lr"]
      for t in terms if stage == 3 else ():
        total = total + lam.get(t.replace("-", "_minus"), 1.0) * out[t]
      return total, (out, state.batch_stats)
    return loss_fn

  def train_step(state: TrainState, face: FaceModel, batches: dict[str, Batch]):
    if stage == 1:
      loss_fn = stage1(state, face, batches)
    elif stage == 2:
      loss_fn = heads_loss(state, face, batches["train_3d"]["image"], 1)
    else:
      loss_fn = heads_loss(state, face, batches["train_mf"]["image"], k)
    (total, (out, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    grads = parallel.pmean(grads)
    updates, opt_state = mods.tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = parallel.pmean(dict(out, loss=total))
    return state.replace(step=state.step + 1, params=params, batch_stats=batch_stats, opt_state=opt_state), metrics

  return train_step
