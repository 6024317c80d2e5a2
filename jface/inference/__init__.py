"""Inference: images -> faces -> a trained method's predictions -> files.

Modules:
  detect      face detectors (OpenCV Haar, dlib, the full image) and detector box -> crop box.
  faces       ``FaceFinder`` (given landmarks / detector -> crop boxes -> crops, landmark-map points),
              ``FaceCrop``, ``FaceResult``.
  predictor   ``Predictor``: a workdir's method (``config.method``) over the crops of images.
  mean_shape  the posed-mean-shape mesh of 3DMM-parameter methods when the face model has no dense bases.
  outputs     .obj / .ply meshes, overlays, results.json entries, from vertices + triangles and landmarks.
  cli         the ``predict`` command (``python predict.py`` / ``python -m jface.predict``).
"""
