"""The dense-mesh fallback for 3DMM-parameter methods when the face model has no dense bases: the POSED MEAN SHAPE.

3DDFA's public files ship the dense mean shape (``u_dense``) and triangles but not the dense shape/expression
bases, so a method's dense vertices (e.g. 2DASL's ``geometry.dense_vertices``) cannot be computed. For a method
whose ``FaceOutput`` carries 3DMM ``params``, inference then poses the dense MEAN shape with the predicted pose
(identity and expression are not applied; ``dense_shape = "mean"``, said in the files and JSON). Methods without
params get no mesh from such a face model.
"""
from __future__ import annotations

from typing import Callable

import jax

from jface.core import geometry
from jface.core.face_model import FaceModel


def dense_kind(model: FaceModel) -> str:
  """The dense mesh a 3DMM-parameter method gets with this face model: "full" (dense bases: the method's own
  dense vertices), "mean" (dense mean shape only: ``posed_mean_shape``) or "none" (no dense mesh)."""
  if model.has_dense_bases:
    return "full"
  return "mean" if model.u_dense is not None else "none"


def posed_mean_shape(model: FaceModel, pw: jax.Array) -> jax.Array:
  """Whitened params (..., 62) -> the dense mean shape ``u_dense`` under their pose, (..., N, 3) crop pixels."""
  return geometry.pose_points(geometry.dewhiten(model, pw), model.u_dense.reshape(-1, 3), model.crop_size)


def with_posed_mean_shape(predict: Callable) -> Callable:
  """A method's ``predict(state, face, batch) -> FaceOutput`` (run with ``dense=False``) -> the same, jitted, with
  ``vertices`` = ``posed_mean_shape`` of its params where it has params and no vertices of its own (the face
  model must have ``u_dense``)."""

  @jax.jit
  def predict_with_mean(state, face: FaceModel, batch):
    out = predict(state, face, batch)
    if out.vertices is not None or out.params is None or face.u_dense is None:
      return out
    return out.replace(vertices=posed_mean_shape(face, out.params), topology=face.name)
  return predict_with_mean
