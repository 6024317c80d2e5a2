"""2DASL as a ``jface.methods.Method``: config checks, data streams, the predict function, the record."""
from __future__ import annotations

from typing import Callable

import jax
import ml_collections

from jface.core import geometry
from jface.core.face_model import FaceModel
from jface.methods.base import FaceOutput, Method, Stream, TrainState
from jface.methods.twodasl import step
from jface.methods.twodasl import fit_start as fit
from jface.methods.twodasl.flm import network_input

FIELDS = ("image", "params", "landmarks", "flm_landmarks", "landmarks_mask")


def uses_2d(config) -> bool:
  return bool(config.use_cyc or config.use_sc)


def check_config(config: ml_collections.ConfigDict) -> None:
  if uses_2d(config) and not config.data.train_2d:
    raise ValueError("config.data.train_2d is empty but the variant uses the 2D-only stream (cyc/sc)")
  if not config.data.train_3d:
    raise ValueError("config.data.train_3d is empty: name the 3D-labelled training data (see configs/2dasl.py)")
  if not config.bfm_dir:
    raise ValueError("config.bfm_dir is empty: a 3DDFA-format folder (train.configs) or 'synthetic'")
  if fit.options(config)[0] and not config.use_flm:
    raise ValueError("config.fit_start needs the landmark-map input (use_flm): the fit is made to its points")
  if config.stage not in (1, 2):
    raise ValueError(f"config.stage must be 1 or 2, got {config.stage}")


def streams(config) -> tuple[Stream, ...]:
  """The 3D-labelled stream, plus the 2D-only one when cyc or sc is on."""
  out = [Stream("train_3d", config.batch_size, 1, FIELDS)]
  if uses_2d(config):
    out.append(Stream("train_2d", config.batch_size_2d, 2, FIELDS))
  return tuple(out)


def input_fields(config) -> tuple[str, ...]:
  """Predict inputs beyond ``image``: the landmark-map points when the model has the FLM channel."""
  return ("flm_landmarks", "landmarks_mask") if config.use_flm else ()


def make_predict_fn(config, mods: step.Modules, dense: bool = False) -> Callable:
  """``predict(state, face, batch) -> FaceOutput`` (jitted, eval-mode BN, no mesh): the regressor's whitened
  params, their 68 landmarks (B, 68, 3) in crop pixels, the pose and, with ``dense``, the dense vertices (needs a
  face model with dense bases)."""
  reg = step._unmapped(mods.regressor)
  use_flm = bool(config.use_flm)
  fit_start, jaw_weight = fit.options(config)

  @jax.jit
  def predict(state: TrainState, face: FaceModel, batch) -> FaceOutput:
    pw = reg.apply({"params": state.params, "batch_stats": state.batch_stats}, network_input(batch, use_flm),
                   train=False)
    if fit_start:
      pw = pw + fit.landmark_fit(face, batch["flm_landmarks"], batch["landmarks_mask"], jaw_weight)
    vertices = geometry.dense_vertices(face, pw) if dense else None
    return FaceOutput(landmarks=geometry.landmarks3d(face, pw), vertices=vertices, params=pw,
                      pose=geometry.pose_angles(face, pw), topology=face.name if dense else None)
  return predict


def describe(config) -> str:
  start = " fit_start" if fit.options(config)[0] else ""
  return f"variant={config.variant} model={config.model} stage={config.stage}{start}"


METHOD = Method(name="2dasl", check_config=check_config, build=step.build, init_state=step.init_state,
                make_train_step=step.make_train_step, make_predict_fn=make_predict_fn, streams=streams,
                input_fields=input_fields, describe=describe)
