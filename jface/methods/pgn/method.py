"""PGN as a ``jface.methods.Method``: config checks, the stages, the data streams, the predict function, the record.

Predict (``make_predict_fn``): the encoder's features -> the PGN's 68 landmarks X_UV and the heads' identity /
expression -> the closed-form pose (``step.face_params``) -> whitened 62 params, so

* landmarks (B, 68, 3): X_UV itself ("pgn", the paper's "Ours (PGN)" row) or the 3DMM's (``geometry.landmarks3d``
  of the params; "3dmm", the paper's "Ours (3DMM)" row): ``config.predict_landmarks``, "auto" = "pgn" after
  stage 1 (the heads are untrained then) and "3dmm" after stages 2-3 (what those stages change);
* vertices (``dense``): the 3DMM's dense vertices; params; pose (yaw, pitch, roll) from the params.
"""
from __future__ import annotations

from typing import Callable

import jax
import ml_collections

from jface.core import geometry
from jface.core.face_model import FaceModel
from jface.methods.base import FaceOutput, Method, Stream, TrainState
from jface.methods.pgn import step
from jface.methods.pgn.model import LANDMARK_HEADS, PGNNet
from jface.methods.prnet import targets
from jface.methods.prnet.method import check_uv_assets
from jface.models.resfcn import DOWNSAMPLE

FIELDS_3D = ("image", "params")
FIELDS_2D = ("image", "landmarks", "landmarks_mask")
PREDICT_LANDMARKS = ("auto", "pgn", "3dmm")


def check_config(config: ml_collections.ConfigDict) -> None:
  stage = int(config.get("stage", 0))
  if stage not in (0,) + step.STAGES:
    raise ValueError(f"config.stage must be 0 (all stages in turn) or one of 1, 2, 3, got {stage}")
  if not config.bfm_dir:
    raise ValueError("config.bfm_dir is empty: a 3DDFA-format folder with BFM_UV.mat, or 'synthetic'")
  size = step.image_size(config)
  if size < DOWNSAMPLE or size % DOWNSAMPLE:
    raise ValueError(f"config.image_size must be a positive multiple of {DOWNSAMPLE}, got {size}")
  if dict(config.get("model_kwargs", {})).get("landmark_head", "uv") not in LANDMARK_HEADS:
    raise ValueError(f"config.model_kwargs.landmark_head must be one of {', '.join(LANDMARK_HEADS)}")
  if config.get("predict_landmarks", "auto") not in PREDICT_LANDMARKS:
    raise ValueError(f"config.predict_landmarks must be one of {', '.join(PREDICT_LANDMARKS)}")
  step.mf_terms(config)
  if not config.data.train_3d:
    raise ValueError("config.data.train_3d is empty: name the 3D-labelled training data (see configs/pgn.py)")
  if stage in (0, 3):
    if not config.data.get("train_mf"):
      raise ValueError("config.data.train_mf is empty: stage 3 needs groups of frames of one person "
                       "(synthetic_groups:N:K, groups:K:crops:DIR or clips:DIR:K; see configs/pgn.py)")
    k = int(config.group_size)
    if k < 2 or config.stage3.batch_size % k:
      raise ValueError(f"stage 3 needs group_size >= 2 dividing stage3.batch_size, got {k} and "
                       f"{config.stage3.batch_size}")
  check_uv_assets(config, "PGN's meshes")


def stages(config) -> list:
  """``config.stage`` 0: the three stages in turn, each with its ``config.stage<N>`` fields (num_steps,
  batch_size, learning_rate); otherwise [] (the config trains its one stage)."""
  if int(config.get("stage", 0)) != 0:
    return []
  plan = []
  for s in step.STAGES:
    c = config.copy_and_resolve_references()
    over = config[f"stage{s}"]
    c.stage = s
    c.num_steps = int(over.num_steps)
    c.batch_size = int(over.batch_size)
    c.optimizer.learning_rate = float(over.learning_rate)
    plan.append((f"stage{s}", c))
  return plan


def streams(config) -> tuple[Stream, ...]:
  stage = int(config.stage)
  if stage == 1:
    out = [Stream("train_3d", config.batch_size, 1, FIELDS_3D)]
    if config.data.get("train_2d"):
      out.append(Stream("train_2d", config.get("batch_size_2d", config.batch_size), 2, FIELDS_2D))
    return tuple(out)
  if stage == 2:
    return (Stream("train_3d", config.batch_size, 1, ("image",)),)
  return (Stream("train_mf", config.batch_size, 3, ("image",)),)


def input_fields(config) -> tuple[str, ...]:
  return ()  # RGB only


def landmark_source(config) -> str:
  which = config.get("predict_landmarks", "auto")
  if which == "auto":
    return "pgn" if int(config.get("stage", 1)) == 1 else "3dmm"
  return which


def make_predict_fn(config, mods: step.Modules, dense: bool = False) -> Callable:
  """``predict(state, face, batch) -> FaceOutput`` (jitted, eval mode, no mesh); see the module docstring."""
  net = mods.net.clone(bn_axis_name=None)
  size, which = step.image_size(config), landmark_source(config)
  reg = float(config.get("pose_reg", 1e-4))

  @jax.jit
  def predict(state: TrainState, face: FaceModel, batch) -> FaceOutput:
    v = {"params": state.params, "batch_stats": state.batch_stats}
    feats = net.apply(v, targets.network_input(batch["image"], size), False, method=PGNNet.features)
    x_uv = net.apply(v, feats, size, False, method=PGNNet.landmarks)
    a_shp, a_exp = net.apply(v, feats, 1, method=PGNNet.coefficients)
    pw, _, _ = step.face_params(face, x_uv, a_shp, a_exp, size, reg)
    lm = targets.map_to_crop(x_uv, size, face.crop_size) if which == "pgn" else geometry.landmarks3d(face, pw)
    vertices = geometry.dense_vertices(face, pw) if dense else None
    return FaceOutput(landmarks=lm, vertices=vertices, params=pw, pose=geometry.pose_angles(face, pw),
                      topology=face.name if dense else None)
  return predict


def describe(config) -> str:
  kw = dict(config.get("model_kwargs", {}))
  s = int(config.stage)
  extra = f" group_size={config.group_size} mf_losses={config.mf_losses}" if s == 3 else ""
  return (f"pgn stage {s} width_mult={kw.get('width_mult', 1.0)} landmark_head={kw.get('landmark_head', 'uv')} "
          f"input={step.image_size(config)} face={config.bfm_dir}{extra}")


METHOD = Method(name="pgn", check_config=check_config, build=step.build, init_state=step.init_state,
                make_train_step=step.make_train_step, make_predict_fn=make_predict_fn, streams=streams,
                input_fields=input_fields, describe=describe, stages=stages)
