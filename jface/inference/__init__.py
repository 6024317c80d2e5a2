"""Inference: images -> faces -> a trained method's predictions -> files.

Modules:
  detect      face detectors (BlazeFace, OpenCV Haar, dlib, the full image) and detector box -> crop box.
  blazeface   MediaPipe's BlazeFace detectors: SSD anchors, decoding, weighted NMS (run by LiteRT).
  facemesh    MediaPipe's 468-point face mesh on rotated face regions.
  mesh68      the 468 -> 68 iBUG map fitted on the train split (fit / landmarks commands), ``MeshLandmarks``.
  tflite      the optional .tflite files (where they are, ``fetch`` from the mediapipe wheel) and LiteRT.
  faces       ``FaceFinder`` (given landmarks / detector -> 68 points -> crop boxes -> crops, landmark-map points),
              ``FaceCrop``, ``FaceResult``.
  predictor   ``Predictor``: a workdir's method (``config.method``) over the crops of images.
  mean_shape  the posed-mean-shape mesh of 3DMM-parameter methods when the face model has no dense bases.
  outputs     .obj / .ply meshes, overlays, results.json entries, from vertices + triangles and landmarks.
  cli         the ``predict`` command (``python predict.py`` / ``python -m jface.predict``).
"""
