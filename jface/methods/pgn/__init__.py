"""PGN (Liu et al. 2020): pose from predicted 3D landmarks in closed form, and multi-frame self-supervision."""
