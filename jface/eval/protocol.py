"""The one evaluation protocol: a method's ``FaceOutput`` on an ``EvalData`` set -> per-image errors and their
|yaw|-bin summaries. Used by the training loop's dev evaluation (``jface.eval.evaluator``) and ``evaluate.py``.

What is scored is whatever the output provides:

* 68 landmarks (always): AFLW2000-3D 2D and 3D NME in the original image (``metrics.aflw2000_nme``), AFLW 21-point
  NME, or synthetic 2D/3D NME in the crop;
* dense vertices in the topology of the face model (``FaceOutput.topology == face.name``) with dense ground truth
  (synthetic params, or AFLW2000-3D ``.mat`` fits with a BFM that has dense bases): dense 2D/3D NME and ICP
  reconstruction NME in the original image.

Per-image errors are percent, NaN for failures (unreadable image, missing or non-finite prediction), which are
counted and excluded from the means.
"""
from __future__ import annotations

import os
from typing import Callable, Optional, Sequence

import jax.numpy as jnp
import numpy as np

from jface.core import crop, geometry
from jface.core.face_model import CROP_SIZE, N_LANDMARKS, N_PARAMS
from jface.data import common, mat_layout
from jface.data.common import BadExample
from jface.data.wild import aflw21_to_ibug68
from jface.eval import metrics
from jface.eval.data import EvalData, EvalError, Progress
from jface.methods.base import FaceOutput
from jface.methods.run import predict_arrays

LANDMARK_INPUTS = ("auto", "detector", "mean", "gt")
SUMMARY_KEYS = ("bins", "mean_of_bins", "overall", "n", "n_failed", "counts", "failed", "labels", "n_unbinned",
                "std_of_bins")


# ---------------------------------------------------------------------------------------- model inputs

def mean_face_landmarks(face) -> np.ndarray:
  """(68, 2) crop landmarks of zero whitened params (the model's mean face in its mean pose)."""
  return np.asarray(geometry.landmarks2d(face, jnp.zeros((N_PARAMS,), jnp.float32)), np.float64)


def landmark_input(data: EvalData, mode: str, face) -> tuple[np.ndarray, np.ndarray, str]:
  """2D landmarks fed to a model with a landmark input (2DASL's FLM): -> (pts (N, 68, 2) crop coords, mask (N, 68),
  description).

  ``auto`` = ``detector`` (meta ``fan_pts68_crop``, the 2DASL test protocol) when the data have them, else ``gt``
  for synthetic faces (their exact landmarks, as the labels the model trained with) and ``mean`` otherwise.
  """
  n = len(data)
  if mode == "auto":
    mode = "detector" if data.detector is not None else "gt" if data.dataset == "synthetic" else "mean"
  if mode == "detector":
    if data.detector is None:
      raise EvalError("--flm detector needs meta.npz 'fan_pts68_crop' (detector landmarks on the crops)")
    pts = data.detector
    return pts, np.all(np.isfinite(pts), -1), "meta fan_pts68_crop (FAN detections)"
  if mode == "mean":
    pts = np.broadcast_to(mean_face_landmarks(face), (n, N_LANDMARKS, 2))
    return pts, np.ones((n, N_LANDMARKS), bool), "the 68 landmarks of the mean face (no detector)"
  if mode == "gt":
    if data.dataset == "synthetic":
      pts = data.gt[..., :2]
    elif data.dataset == "aflw2000_3d":
      pts = crop.image_to_crop(np.swapaxes(data.gt, 1, 2)[..., :2], data.roi_box)
    else:
      pm = [aflw21_to_ibug68(g) for g in data.gt]
      img = np.stack([p for p, _ in pm]).astype(np.float64)
      return (crop.image_to_crop(img, data.roi_box), np.stack([m for _, m in pm]),
              "the ground-truth points (oracle input)")
    return pts, np.all(np.isfinite(pts), -1), "the ground-truth landmarks (oracle input)"
  raise EvalError(f"--flm must be one of {', '.join(LANDMARK_INPUTS)}, got {mode!r}")


def read_crops(data: EvalData, size: int = CROP_SIZE) -> tuple[np.ndarray, np.ndarray]:
  """(N, S, S, 3) uint8 crops (zeros where unreadable) and problems (N,) str ('' = read)."""
  problems = data.problems.copy()
  images = np.zeros((len(data), size, size, 3), np.uint8)
  for i in range(len(data)):
    if problems[i]:
      continue
    try:
      images[i] = data.crop(i, size)
    except (BadExample, ValueError) as e:
      problems[i] = f"unreadable input: {e}"
  return images, problems


def model_inputs(data: EvalData, input_fields: Sequence[str], landmarks: str, face, images: np.ndarray,
                 log=print) -> dict:
  """The predict inputs of ``data``: ``image`` (N, S, S, 3) uint8 plus, when ``input_fields``
  (``Method.input_fields(config)``) ask for them, ``flm_landmarks`` / ``landmarks_mask`` from ``landmark_input``."""
  inputs = {"image": images}
  if "flm_landmarks" in input_fields:
    pts, mask, what = landmark_input(data, landmarks, face)
    log(f"landmark-map input: {what}")
    inputs["flm_landmarks"] = np.nan_to_num(np.asarray(pts, np.float32))
    inputs["landmarks_mask"] = np.asarray(mask, bool)
  return inputs


def predict_inputs(predict: Callable, state, face, inputs: dict, problems: np.ndarray,
                   batch_size: int = 32) -> FaceOutput:
  """``predict`` over ``model_inputs`` (the one batched loop, ``methods.run.predict_arrays``) -> FaceOutput of
  (N, ...) numpy arrays, NaN rows where ``problems`` (N,) is set (unreadable images)."""
  bar = Progress(len(problems), "predicting")
  out = predict_arrays(predict, state, face, inputs, batch_size, progress=bar.update)
  bar.close()
  return nan_rows(out, problems != "")


def predict_dataset(predict: Callable, state, face, data: EvalData, input_fields: Sequence[str],
                    landmarks: str = "auto", batch_size: int = 32, log=print) -> tuple[FaceOutput, np.ndarray]:
  """Reads ``data``'s crops and runs a method's ``predict(state, face, batch)`` over them.

  -> (FaceOutput of (N, ...) numpy arrays, NaN rows where the image was unreadable; problems (N,) str).
  """
  images, problems = read_crops(data)
  inputs = model_inputs(data, input_fields, landmarks, face, images, log)
  return predict_inputs(predict, state, face, inputs, problems, batch_size), problems


def nan_rows(out: FaceOutput, rows: np.ndarray) -> FaceOutput:
  """``out`` with the float arrays' ``rows`` set to NaN (failed inputs)."""
  def nan(a):
    a = np.array(a, np.float64 if a.dtype == np.float64 else np.float32)
    a[rows] = np.nan
    return a
  return FaceOutput(landmarks=nan(out.landmarks), vertices=None if out.vertices is None else nan(out.vertices),
                    params=None if out.params is None else nan(out.params),
                    pose=None if out.pose is None else nan(out.pose), topology=out.topology)


def landmarks_from_params(face, pw: np.ndarray) -> np.ndarray:
  """(N, 62) whitened -> (N, 68, 3) crop landmarks (NaN rows stay NaN)."""
  return np.asarray(geometry.landmarks3d(face, jnp.asarray(pw, jnp.float32)), np.float64)


def vertices_from_params(face, pw: np.ndarray, chunk: int = 8) -> np.ndarray:
  """(N, 62) whitened -> (N, V, 3) float32 dense vertices in crop pixels (needs dense bases)."""
  parts = [np.asarray(geometry.dense_vertices(face, jnp.asarray(pw[s:s + chunk], jnp.float32)))
           for s in range(0, len(pw), chunk)]
  return np.concatenate(parts) if parts else np.zeros((0, face.n_vertices, 3), np.float32)


# ------------------------------------------------------------------------------------------ ground truth

def _gt_params_from_mats(data: EvalData, face) -> tuple[Optional[np.ndarray], str]:
  """Whitened GT params of AFLW2000-3D fits (40/10 truncated) in the data's crop boxes, or (None, reason)."""
  if face.name != "bfm":
    return None, f"the AFLW2000-3D .mat fits are BFM coefficients but the face model is {face.name!r}"
  if data.mat_dir is None:
    return None, f"no .mat fits next to the data (expected {os.path.join('DIR', 'AFLW2000')})"
  out = np.full((len(data), N_PARAMS), np.nan)
  for i, name in enumerate(data.names):
    stem = os.path.splitext(name)[0]
    try:
      mat = common.read_mat(os.path.join(data.mat_dir, stem + ".mat"))
      h = common.image_size(os.path.join(data.mat_dir, name))[0]
      out[i] = mat_layout.mat_to_params(mat, data.roi_box[i], h, face)
    except (BadExample, ValueError, KeyError):
      pass
  return out, ""


def label_params(data: EvalData, face) -> tuple[Optional[np.ndarray], str]:
  """(N, 62) whitened params of the dataset's own labels (NaN rows where a label is unreadable), or (None, reason).

  AFLW2000-3D: the ``.mat`` fits converted as the training readers do (``jface.data.mat_layout.mat_to_params``,
  40/10 components, in the data's crop boxes); synthetic: the sampled params. AFLW has no 3DMM labels. Used by
  ``--labels`` (as predictions) and as the dense ground truth.
  """
  if data.gt_params is not None:
    return np.asarray(data.gt_params, np.float64), ""
  if data.dataset != "aflw2000_3d":
    return None, f"the {data.dataset} data have no 3DMM labels"
  return _gt_params_from_mats(data, face)


# -------------------------------------------------------------------------------------------- errors

def landmark_errors(data: EvalData, pred_lm: np.ndarray) -> dict:
  """Per-image landmark errors (percent) of (N, 68, 2|3) crop predictions: dict(nme_2d (N,), nme_3d (N,) or
  None, npts)."""
  if data.dataset == "aflw2000_3d":
    res = metrics.aflw2000_nme(pred_lm, data.roi_box, data.gt, data.yaw, data.names, subset="2000")
    return dict(nme_2d=res["nme2d"], nme_3d=res.get("nme3d"), npts=68)
  if data.dataset == "aflw":
    res = metrics.aflw_nme(pred_lm, data.roi_box, data.gt, data.yaw)
    return dict(nme_2d=res["nme"], nme_3d=None, npts=21)
  e2 = metrics.nme_2d(pred_lm[..., :2], data.gt[..., :2])
  e3 = metrics.nme_3d(pred_lm, data.gt) if pred_lm.shape[-1] == 3 else None
  return dict(nme_2d=e2, nme_3d=e3, npts=68)


def dense_errors(pred_vertices: np.ndarray, gt_vertices: np.ndarray, roi_box: np.ndarray, icp_stride: int = 0,
                 crop_size: int = CROP_SIZE) -> dict:
  """Dense-vertex NME (2D, 3D; ``metrics.nme_dense``) and ICP reconstruction NME (``reconstruction_nme`` on every
  ``icp_stride``-th vertex; 0 = 50 for meshes > 20k vertices as 2DASL's script, else all) in the original image.

  Args: pred_vertices, gt_vertices (N, V, 3) crop pixels, same topology (NaN rows = failures); roi_box (N, 4).
  Returns dict of (N,) percent.
  """
  n, nv = pred_vertices.shape[:2]
  stride = icp_stride or (50 if nv > 20000 else 1)
  out = {k: np.full(n, np.nan) for k in ("dense_2d", "dense_3d", "icp")}
  ok = (np.all(np.isfinite(pred_vertices.reshape(n, -1)), -1) & np.all(np.isfinite(gt_vertices.reshape(n, -1)), -1)
        & np.all(np.isfinite(roi_box), -1))
  for i in np.nonzero(ok)[0]:
    vp = crop.crop_to_image(np.asarray(pred_vertices[i:i + 1], np.float32), roi_box[i:i + 1].astype(np.float32),
                            crop_size)
    vg = crop.crop_to_image(np.asarray(gt_vertices[i:i + 1], np.float32), roi_box[i:i + 1].astype(np.float32),
                            crop_size)
    out["dense_2d"][i] = metrics.nme_dense(vp, vg, dims=2)[0]
    out["dense_3d"][i] = metrics.nme_dense(vp, vg, dims=3)[0]
    out["icp"][i] = metrics.reconstruction_nme(vp[:, ::stride], vg[:, ::stride])[0]
  return out


def summary(errors: np.ndarray, yaw: np.ndarray) -> dict:
  s = metrics.yaw_bin_summary(errors, yaw)
  return {k: s[k] for k in SUMMARY_KEYS}


def score(data: EvalData, out: FaceOutput, face, status: np.ndarray, dense: bool = True, icp_stride: int = 0,
          gt_params: Optional[np.ndarray] = None) -> dict:
  """Scores ``out`` (N rows, numpy) on ``data``; ``status`` (N,) str marks failed images ('' = ok).

  Returns dict(errors: {name: (N,)}, summaries: {name: summary}, npts, skipped: {what: why}, status (N,)).
  Names: ``nme_2d_<npts>``, ``nme_3d_<npts>`` (when 3D landmarks and 3D GT exist), and ``nme_dense_2d``,
  ``nme_dense_3d``, ``nme_icp`` when ``dense`` and dense vertices of the face model's topology and dense ground
  truth are available (``gt_params``: the dense GT params, default ``label_params``).
  """
  n = len(data)
  status = status.copy()
  lm = np.array(out.landmarks, np.float64)
  finite = np.all(np.isfinite(lm.reshape(n, -1)), -1)
  for i in np.nonzero(~finite & (status == ""))[0]:
    status[i] = "non-finite prediction"
  bad = status != ""
  lm[bad] = np.nan  # unreadable inputs fail even when a prediction exists
  err = landmark_errors(data, lm)
  npts = err["npts"]
  errors, skipped = {f"nme_2d_{npts}": err["nme_2d"]}, {}
  if err["nme_3d"] is not None:
    errors[f"nme_3d_{npts}"] = err["nme_3d"]
  else:
    skipped[f"nme_3d_{npts}"] = ("the AFLW 21-point GT is 2D" if data.dataset == "aflw" else
                                 "the re-annotated GT is 2D" if data.gt_kind == "reannotated" else
                                 "the predictions are 2D landmarks")
  why = _dense_unavailable(data, out, face) if dense else "--no_dense"
  if why is None:
    gt_pw, why = (gt_params, "") if gt_params is not None else label_params(data, face)
    if gt_pw is not None:
      d = {k: np.full(n, np.nan) for k in ("dense_2d", "dense_3d", "icp")}
      for start in range(0, n, 8):  # the ground-truth meshes chunk by chunk (53k vertices each with the BFM)
        rows = slice(start, min(start + 8, n))
        gt_v = vertices_from_params(face, np.nan_to_num(gt_pw[rows]))
        gt_v[~np.all(np.isfinite(gt_pw[rows]), -1)] = np.nan
        pred_v = np.where(bad[rows, None, None], np.nan, out.vertices[rows])
        for k, v in dense_errors(pred_v, gt_v, data.roi_box[rows], icp_stride, face.crop_size).items():
          d[k][rows] = v
      errors.update(nme_dense_2d=d["dense_2d"], nme_dense_3d=d["dense_3d"], nme_icp=d["icp"])
  if why:
    skipped["dense"] = why
  return dict(errors=errors, summaries={k: summary(e, data.yaw) for k, e in errors.items()}, npts=npts,
              skipped=skipped, status=status)


def _dense_unavailable(data: EvalData, out: FaceOutput, face) -> Optional[str]:
  """Why dense errors cannot be computed, or None."""
  if data.dataset == "aflw":
    return "AFLW has no 3D ground truth"
  if out.vertices is None:
    return "the predictions have no dense vertices"
  if out.topology != face.name:
    return f"the predicted vertices are in the {out.topology!r} topology, the ground truth in {face.name!r}"
  if not face.has_dense_bases:
    return (f"the face model ({face.name}) has no dense shape/expression bases (w_shp_sim.npy, w_exp_sim.npy; pass "
            f"--dense_bases_dir), so the ground-truth dense shapes cannot be built")
  return None
