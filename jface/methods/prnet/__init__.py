"""PRNet (Feng et al. 2018, "Joint 3D Face Reconstruction and Dense Alignment with Position Map Regression
Network"): this package will hold the PRNet method. So far: ground-truth UV position maps (``posmap``)."""
