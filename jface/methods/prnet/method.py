"""PRNet as a ``jface.methods.Method``: config checks, the data stream, the predict function, the record.

Predict (``make_predict_fn``): the network's position map, read at

* the 68 keypoint pixels (``Layout.kpt_px``, bilinear) -> landmarks (B, 68, 3) in crop coordinates;
* every vertex's UV pixel (``Layout.vertex_px``; vertices the map does not hold, e.g. the back of the synthetic
  head, are read at the clamped border: meaningless) -> with ``dense``, vertices (B, N, 3) in the face model's
  topology (``FaceOutput.topology``), so the shared evaluator's dense metrics apply;
* pose: a similarity (Umeyama) fit of the model's mean-face keypoints to the predicted landmarks (camera frame,
  y up) -> (yaw, pitch, roll) degrees by ``geometry.matrix_to_angles`` (3DDFA's ``matrix2angle``, 2DASL's);

no 3DMM params (``params=None``). z comes back up to an offset (``targets`` module docstring).
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import ml_collections

from jface.core import geometry
from jface.core import uv as uv_lib
from jface.core.face_model import FaceModel, N_PARAMS
from jface.methods.base import FaceOutput, Method, Stream, TrainState
from jface.methods.prnet import losses, step, targets
from jface.models.resfcn import DOWNSAMPLE

FIELDS = ("image", "params")


def check_config(config: ml_collections.ConfigDict) -> None:
  if not config.data.train_3d:
    raise ValueError("config.data.train_3d is empty: name the 3D-labelled training data (see configs/prnet.py)")
  if not config.bfm_dir:
    raise ValueError("config.bfm_dir is empty: a 3DDFA-format folder with BFM_UV.mat, or 'synthetic'")
  size = step.image_size(config)
  if size < DOWNSAMPLE or size % DOWNSAMPLE:
    raise ValueError(f"config.image_size must be a positive multiple of {DOWNSAMPLE} (ResFCN), got {size}")
  if config.get("loss", "distance") not in losses.KINDS:
    raise ValueError(f"config.loss must be one of {', '.join(losses.KINDS)}, got {config.loss!r}")
  check_uv_assets(config, "PRNet's targets")


def check_uv_assets(config, who: str) -> None:
  """A BFM config (not "synthetic") names the dense bases and PRNet's uv-data (the UV layout's keypoints and
  weights); ``ValueError`` (one line, starting with ``who``'s need) otherwise. Shared by PRNet and PGN."""
  if config.bfm_dir == "synthetic":
    return
  if not config.get("dense_bases_dir"):
    raise ValueError(f"config.dense_bases_dir is empty: {who} need the BFM's dense bases "
                     "(w_shp_sim.npy / w_exp_sim.npy; python -m jface.core.dense_bases fetch)")
  if not config.get("prnet_uv_dir"):
    raise ValueError("config.prnet_uv_dir is empty: PRNet's uv-data folder (uv_kpt_ind.txt, the weight masks)")


def streams(config) -> tuple[Stream, ...]:
  """One 3D-labelled stream (PRNet trains on 300W-LP's fits alone)."""
  return (Stream("train_3d", config.batch_size, 1, FIELDS),)


def input_fields(config) -> tuple[str, ...]:
  return ()  # RGB only


def similarity_rotation(src: jax.Array, dst: jax.Array) -> jax.Array:
  """Rotation R (..., 3, 3) of the least-squares similarity ``dst ~ s R src + t`` (Umeyama 1991, no reflection).

  Args: src (K, 3) or (..., K, 3) model points; dst (..., K, 3) the same points observed.
  """
  src_c = src - jnp.mean(src, axis=-2, keepdims=True)
  dst_c = dst - jnp.mean(dst, axis=-2, keepdims=True)
  cov = jnp.einsum("...ki,...kj->...ij", dst_c, jnp.broadcast_to(src_c, dst_c.shape))
  u, _, vt = jnp.linalg.svd(cov)
  d = jnp.sign(jnp.linalg.det(u) * jnp.linalg.det(vt))
  u = u.at[..., :, 2].multiply(d[..., None])
  return u @ vt


def pose_from_landmarks(face: FaceModel, landmarks: jax.Array) -> jax.Array:
  """(..., 68, 3) crop landmarks -> (..., 3) (yaw, pitch, roll) degrees: the rotation of the similarity fit of
  the mean face's keypoints (model space, whitened params 0) to them in the camera frame (``y -> crop + 1 - y``)."""
  mean = geometry.landmarks_model_space(face, jnp.zeros((N_PARAMS,), jnp.float32))
  cam = jnp.concatenate([landmarks[..., :1], face.crop_size + 1 - landmarks[..., 1:2], landmarks[..., 2:]], -1)
  return geometry.matrix_to_angles(similarity_rotation(mean, cam))


def outputs_from_maps(maps: jax.Array, face: FaceModel, layout, dense: bool) -> FaceOutput:
  """(B, S, S, 3) position maps (map units) -> ``FaceOutput`` (landmarks, pose, and with ``dense`` vertices)."""
  size = layout.size
  lm = targets.map_to_crop(uv_lib.sample_map(maps, jnp.asarray(layout.kpt_px)), size, face.crop_size)
  vertices = None
  if dense:
    vertices = targets.map_to_crop(uv_lib.sample_map(maps, jnp.asarray(layout.vertex_px)), size, face.crop_size)
  return FaceOutput(landmarks=lm, vertices=vertices, params=None, pose=pose_from_landmarks(face, lm),
                    topology=face.name if dense else None)


def make_predict_fn(config, mods: step.Modules, dense: bool = False) -> Callable:
  """``predict(state, face, batch) -> FaceOutput`` (jitted, eval-mode BN, no mesh); see the module docstring."""
  net = mods.net.clone(bn_axis_name=None)
  size, lay = step.image_size(config), mods.layout

  @jax.jit
  def predict(state: TrainState, face: FaceModel, batch) -> FaceOutput:
    maps = step.apply_net(net, {"params": state.params, "batch_stats": state.batch_stats},
                          targets.network_input(batch["image"], size), face, lay, train=False)
    return outputs_from_maps(maps, face, lay, dense)
  return predict


def describe(config) -> str:
  kw = dict(config.get("model_kwargs", {}))
  return (f"resfcn width_mult={kw.get('width_mult', 1.0)} head={config.get('head', 'sigmoid')} "
          f"input={step.image_size(config)} "
          f"loss={config.get('loss', 'distance')} face={config.bfm_dir}")


METHOD = Method(name="prnet", check_config=check_config, build=step.build, init_state=step.init_state,
                make_train_step=step.make_train_step, make_predict_fn=make_predict_fn, streams=streams,
                input_fields=input_fields, describe=describe)
