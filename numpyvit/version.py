"""numpyvit's version (the engine's measurements are cached per version)."""
__version__ = "0.9.0"
