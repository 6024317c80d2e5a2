"""jface: JAX/Flax 3D face reconstruction and dense face alignment (2DASL, PRNet, PGN)."""
__version__ = "0.1.0"
