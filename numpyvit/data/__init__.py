"""Data: IDX files, MNIST / Fashion-MNIST, normalized mini-batches and augmentation.

    ds = load_dataset("mnist", data_dir="../shared/data")      # finds, verifies or downloads
    aug = RandomAffine(fill=(0 - ds.mean) / ds.std)             # background stays background
    for x, y in iterate_batches(ds.train_images, ds.train_labels, 128, shuffle=True,
                                rng=rng, augment=aug, mean=ds.mean, std=ds.std, xp=xp):
        ...                                                     # x (B, 1, 28, 28) float32, y (B,) int64
"""
from .augment import RandomAffine
from .datasets import Dataset, DatasetNotFoundError, load_dataset
from .idx import IDXError, read_idx, write_idx
from .loader import iterate_batches, normalize

__all__ = [
    "read_idx", "write_idx", "IDXError", "load_dataset", "Dataset", "DatasetNotFoundError",
    "normalize", "iterate_batches", "RandomAffine",
]
