"""What every method provides to the shared loop, evaluator and inference: the ``Method`` record and ``FaceOutput``.

A method is a small record of plain functions (``Method``); the training loop (``jface.train.loop``), the
evaluator (``jface.eval``) and inference (``jface.inference``) only ever call these. A method owns its networks,
its per-device train step (with any extra optimizer, e.g. 2DASL's critic, kept in ``TrainState.extra``) and its
predict function; the loop owns data streams, the mesh, checkpoints, writers, the NaN guard and evaluation.

Coordinates of ``FaceOutput``: crop pixels of the ``CROP_SIZE`` crop the network saw, 1-based pixel centres,
x right, y down; z in the same pixel units, larger = nearer the camera (``jface.core.geometry`` conventions).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, Optional, Sequence

import flax.struct
import jax

Batch = Mapping[str, jax.Array]


@flax.struct.dataclass
class FaceOutput:
  """A method's prediction for a batch of B crops.

  Attributes:
    landmarks: (B, 68, 3) float32 iBUG-68 points in crop pixels (always present).
    vertices: (B, N, 3) float32 dense vertices in crop pixels, or None.
    params: (B, 62) float32 whitened 3DMM parameters (3DDFA convention), or None.
    pose: (B, 3) float32 (yaw, pitch, roll) degrees, or None.
    topology: static name of the mesh the vertices index (``FaceModel.name``: "bfm" -- the 53,215-vertex BFM,
      triangles ``FaceModel.tri`` -- or "synthetic"), or None when there are no vertices.
  """
  landmarks: jax.Array
  vertices: Optional[jax.Array] = None
  params: Optional[jax.Array] = None
  pose: Optional[jax.Array] = None
  topology: Optional[str] = flax.struct.field(pytree_node=False, default=None)


@flax.struct.dataclass
class TrainState:
  """Everything a checkpoint holds. ``params`` / ``batch_stats`` / ``opt_state`` are the main network's;
  ``extra`` is the method's own slot (2DASL: the critic pair and its optimizer state; {} when unused)."""
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any
  extra: Any


@dataclasses.dataclass(frozen=True)
class Stream:
  """One training data stream: ``config.data.<name>`` spec, global batch size, loader seed offset and the
  example fields the step reads (the loop seeds the loader with ``seed * 1000 + seed_offset + process``)."""
  name: str
  batch_size: int
  seed_offset: int
  fields: Sequence[str]


@dataclasses.dataclass(frozen=True)
class Method:
  """The plain functions of one method (see the module docstring).

  Attributes:
    name: registry name, saved in the workdir as ``config.method``.
    check_config: ``(config) -> None``; raises ``ValueError`` with one line on a bad config.
    build: ``(config, bn_axis_name) -> modules``: the static networks and optimizers (closed over by the step).
    init_state: ``(config, modules) -> TrainState`` on the host, deterministic in ``config.seed``.
    make_train_step: ``(config, modules) -> step(state, face, batches) -> (state, metrics)``: pure, per device,
      run under ``jax.shard_map`` over ``'data'`` (it must ``pmean`` gradients and metrics); ``batches`` maps
      stream names to batches.
    make_predict_fn: ``(config, modules, dense) -> predict(state, face, batch) -> FaceOutput``, jitted, eval
      mode, no mesh; ``batch`` has ``image`` (B, S, S, 3) uint8 plus the ``input_fields`` of the config.
    streams: ``(config) -> tuple[Stream, ...]`` the training streams this config reads.
    input_fields: ``(config) -> tuple[str, ...]`` extra predict inputs beyond ``image``, e.g.
      ("flm_landmarks", "landmarks_mask") for a model with a landmark-map input; () for an RGB-only model.
    describe: ``(config) -> str`` one line for the training log.
    stages: None, or ``(config) -> [(name, config), ...]`` for a config that trains several stages in turn
      (``jface.training.train_stages``: one sub-workdir each, each initialised from the previous), or [] when
      the config trains one stage.
  """
  name: str
  check_config: Callable
  build: Callable
  init_state: Callable
  make_train_step: Callable
  make_predict_fn: Callable
  streams: Callable
  input_fields: Callable
  describe: Callable
  stages: Optional[Callable] = None
