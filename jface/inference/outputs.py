"""Inference output files, from image-space geometry only (vertices + triangles, landmarks, pose; never params).

* ``save_meshes``: ``<stem>.obj`` and ``<stem>.ply`` with per-vertex colours sampled bilinearly from the image at
  the projected vertices (occluded vertices get the colour of whatever is in front), in a right-handed y-up frame
  for mesh viewers: ``(x, H + 1 - y, z)`` of the image coordinates (pixels; z towards the viewer).
* ``overlay``: the image with each face's shaded mesh and 68 landmarks.
* ``face_json``: one face's entry of ``results.json`` (box, roi_box, landmarks, pose, params -- null for methods
  without 3DMM params --, flm, dense_shape, mesh paths).

Per image, ``jface.inference.viewer.save_viewer`` writes ``<stem>.glb`` (``jface.inference.glb``: all its faces, the
same frame, textured with the photo) and ``<stem>.html`` (an offline 3D viewer page embedding it).

Image coordinates are 1-based pixel centres, y down (``jface.inference.faces``).
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from jface.inference.faces import FaceResult


def mesh_colors(image: np.ndarray, vertices: np.ndarray) -> np.ndarray:
  """(N, 3) uint8 colours sampled bilinearly from ``image`` at the vertices' (x, y) image coordinates."""
  from jface.core import mesh_io
  return np.clip(np.rint(mesh_io.sample_colors(image, vertices[:, :2])), 0, 255).astype(np.uint8)


def viewer_frame(vertices: np.ndarray, image_height: int) -> np.ndarray:
  """Image coordinates (N, 3) (y down) -> a right-handed y-up frame for mesh viewers: (x, H + 1 - y, z)."""
  v = np.asarray(vertices, np.float64).copy()
  v[:, 1] = image_height + 1 - v[:, 1]
  return v


def outward_triangles(vertices: np.ndarray, tri: np.ndarray) -> np.ndarray:
  """``tri`` with its winding flipped if needed so that the area-weighted mean normal points to +z (the viewer)
  in ``vertices``' frame (right-handed)."""
  v, t = np.asarray(vertices, np.float64), np.asarray(tri)
  n = np.cross(v[t[:, 1]] - v[t[:, 0]], v[t[:, 2]] - v[t[:, 0]])
  return t[:, ::-1].copy() if n[:, 2].sum() < 0 else t


def save_meshes(stem: str, image: np.ndarray, vertices: np.ndarray, tri: np.ndarray, dense_shape: str = "full",
                binary_ply: bool = True) -> dict:
  """Writes ``stem.obj`` and ``stem.ply`` of ``vertices`` (N, 3) image coordinates and ``tri`` (T, 3) 0-based,
  vertex colours from ``image`` -> {"obj": path, "ply": path}. ``dense_shape`` ("full" | "mean") is noted in
  the files ("mean": the posed mean shape, ``jface.inference.mean_shape``)."""
  from jface.core import mesh_io
  v = viewer_frame(vertices, image.shape[0])
  t = outward_triangles(v, tri)
  col = mesh_colors(image, np.asarray(vertices))
  note = ["jface.predict mesh: image pixels, x right, y up (H + 1 - y_image), z towards the viewer"]
  if dense_shape == "mean":
    note.append("dense_shape=mean: POSED MEAN SHAPE ONLY - identity and expression are not applied (the face "
                "model has no dense bases); the 68 landmarks and pose are the full prediction")
  else:
    note.append(f"dense_shape={dense_shape}")
  mesh_io.write_obj(stem + ".obj", v, t, col, comments=note)
  mesh_io.write_ply(stem + ".ply", v, t, col, comments=note, binary=binary_ply)
  return {"obj": stem + ".obj", "ply": stem + ".ply"}


def overlay(image: np.ndarray, faces: Sequence[FaceResult], tri: Optional[np.ndarray]) -> np.ndarray:
  """The image with each face's shaded mesh (its ``vertices`` with ``tri``, when both exist) and its 68
  ``landmarks`` drawn."""
  from jface.core import render
  out = image
  radius = max(1.0, min(image.shape[:2]) / 250)
  for f in faces:
    if f.vertices is not None and tri is not None:
      out = render.draw_mesh_overlay(out, f.vertices, tri, alpha=0.5)
  for f in faces:
    out = render.draw_landmarks(out, f.landmarks, color=(40, 255, 40), radius=radius)
  return out


def _pose_json(pose) -> Optional[dict]:
  if pose is None:
    return None
  return {"yaw": round(float(pose[0]), 3), "pitch": round(float(pose[1]), 3), "roll": round(float(pose[2]), 3)}


def face_json(face: FaceResult, meshes: Optional[dict]) -> dict:
  """One face of ``results.json`` (coordinates rounded to 1e-3; ``pose`` / ``params`` null when absent)."""
  r = lambda a: None if a is None else np.round(np.asarray(a, np.float64), 3).tolist()  # noqa: E731
  return {
      "box": r(face.box),
      "roi_box": r(face.roi_box),
      "landmarks": r(face.landmarks),
      "pose": _pose_json(face.pose),
      "params": r(face.params),
      "flm": face.flm,
      "landmarks_from": face.landmarks_from,
      "source_score": None if face.source_score is None else round(float(face.source_score), 4),
      "dense_shape": face.dense_shape,
      "mesh": meshes,
  }
