"""Data: IDX files, MNIST / Fashion-MNIST, image folders and photos, normalized mini-batches and
augmentation.

    ds = load_dataset("mnist", data_dir="data/")               # finds, verifies or downloads
    aug = RandomAffine(fill=(0 - ds.mean) / ds.std)             # background stays background
    aug = chain([aug, RandomErasing(p=0.5)])                    # then a rectangle of noise in half of them
    for x, y in iterate_batches(ds.train_images, ds.train_labels, 128, shuffle=True,
                                rng=rng, augment=aug, mean=ds.mean, std=ds.std, xp=xp):
        ...                                                     # x (B, 1, 28, 28) float32, y (B,) int64
    photos = load_image_folder("photos/", img_size=224)         # one subfolder per class, RGB
"""
from .augment import RandomAffine, RandomErasing, chain
from .datasets import Dataset, DatasetNotFoundError, load_dataset
from .folder import load_image_folder, resize_dataset
from .images import eval_transform, imagenet_classes, load_image, prepare_photos
from .idx import IDXError, read_idx, write_idx
from .loader import background, check_normalization, iterate_batches, normalize

__all__ = [
    "read_idx", "write_idx", "IDXError", "load_dataset", "Dataset", "DatasetNotFoundError",
    "normalize", "check_normalization", "background", "iterate_batches", "RandomAffine", "RandomErasing", "chain", "load_image_folder",
    "resize_dataset", "eval_transform",
    "imagenet_classes", "load_image", "prepare_photos",
]
