"""PRNet (Feng et al. 2018, "Joint 3D Face Reconstruction and Dense Alignment with Position Map Regression
Network") as a jface method (``config.method = "prnet"``, ``configs/prnet.py``): ``method`` (the ``Method``
record, predict), ``step`` (network, train step), ``targets`` (position maps in the step), ``losses`` (Eq. 1),
``uv_layout`` (UV layouts, keypoints and weights per face model) and ``posmap`` (face3d's numpy recipe for
ground-truth maps of original images, the reference the in-step targets are tested against)."""
