"""Starting 2DASL's regressor from the 3DMM fit of its input landmarks (issue 14; not in the paper).

With ``config.fit_start`` the regressor predicts a *correction*: ``a = fit(X_flm) + R([img, FLM(X_flm)])``, where
``fit`` is the non-learned LM fit of ``jface.core.fitting`` to the same 68 points that draw the landmark map (a
detector's points at test time, so the jaw line gets the weight ``jaw_weight``). The fit is a constant of the step
(no gradient flows through it) and the regressor's head starts at zero, so an untrained model already predicts the
fit (AFLW2000-3D dev 3.70 NME from the FAN points; docs/RESULTS.md) and training learns what the landmarks miss:
depth, shape, the detector's errors.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from jface.core import fitting
from jface.core.face_model import FaceModel

JAW_WEIGHT = 0.03  # the jaw line's weight for a detector's points (chosen on the train split, benchmarks/fit_dev.py)


def options(config) -> tuple[bool, float]:
  """``(config.fit_start, config.fit_jaw_weight)``, with the defaults for configs saved before the option."""
  return bool(config.get("fit_start", False)), float(config.get("fit_jaw_weight", JAW_WEIGHT))


def landmark_fit(face: FaceModel, pts: jax.Array, mask: jax.Array, jaw_weight: float) -> jax.Array:
  """Whitened 3DMM params (B, 62) fitted to the landmark-map points; no gradient.

  Args:
    face: the face model (its 68-landmark rows and whitening).
    pts: (B, 68, 2) crop pixels (1-based, ``jface.core.geometry`` conventions); non-finite = missing.
    mask: (B, 68) bool/0-1, False = not drawn in the map (and not fitted).
    jaw_weight: weight of the 17 jaw-line points (``fitting.contour_weights``).
  Returns:
    (B, 62) float32; samples with fewer than ``fitting.MIN_VISIBLE`` usable points get 0 (the mean face), the
    same start as a model without the fit.
  """
  pw = fitting.fit_landmarks(face, pts, jnp.asarray(mask, bool), weights=fitting.contour_weights(jaw_weight))
  pw = jnp.where(jnp.all(jnp.isfinite(pw), axis=-1, keepdims=True), pw, 0.0)
  return jax.lax.stop_gradient(pw)


def zero_head(params: dict) -> dict:
  """``params`` with the regressor's final layer (``head``, ``jface.models.layers.head``) set to zero, so the
  model's first prediction is exactly its start."""
  if "head" not in params:
    raise ValueError("fit_start needs a regressor whose last layer is named 'head' (jface.models.layers.head)")
  return {**params, "head": jax.tree_util.tree_map(jnp.zeros_like, params["head"])}
