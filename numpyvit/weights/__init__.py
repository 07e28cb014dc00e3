"""Published ViT weights in NumPy: timm's safetensors files, the original JAX .npz checkpoints,
position-embedding resampling, and ``create_model(name, weights=FILE)`` (numpyvit.presets).

Files: ``safetensors.py`` (the format, read memory-mapped and written), ``jax_npz.py`` (the
original layout <-> timm's names), ``resample.py`` (position embeddings for another image size),
``pretrained.py`` (building a model from a file; ``save_weights``)."""
from .errors import WeightsError
from .jax_npz import JaxCheckpointError, from_jax, read_jax_npz, to_jax
from .pretrained import read_weights, save_weights
from .resample import resample_pos_embed
from .safetensors import SafetensorsError, read_safetensors, write_safetensors

__all__ = ["JaxCheckpointError", "SafetensorsError", "WeightsError", "from_jax", "read_jax_npz", "read_safetensors",
           "read_weights", "resample_pos_embed", "save_weights", "to_jax", "write_safetensors"]
