"""Image folders as datasets: one subfolder per class, the layout photos usually come in.

    photos/                            or     photos/
        cat/  a.jpg  b.png ...                    train/  cat/ ...  dog/ ...
        dog/  ...                                 val/    cat/ ...  dog/ ...

``load_image_folder(root, img_size)`` decodes every image with Pillow (RGB, or grayscale for
``channels=1``), brings it to img_size with the evaluation transform's resize and center crop
(numpyvit.data.images), and keeps the images as uint8 (N, C, H, W) in memory. Without train/ and
val/ subfolders a seeded ``test_fraction`` of each class is held out for testing. The classes are
the subfolder names in sorted order. ``mean`` and ``std`` default to the training pixels' own, per
channel; fine-tuning pretrained weights passes the weights' (``model.pretrained_cfg``).

``resize_dataset(ds, img_size, channels)`` brings a dataset of another size (e.g. MNIST's 28 x 28
grayscale) to what a model takes: bicubic resize, and gray repeated into R, G, B.
"""
from pathlib import Path

import numpy as np

from ..errors import MissingInputError
from .datasets import Dataset
from .images import IMAGE_SUFFIXES, ImageError, channels_first, load_image, resize_and_crop


def load_image_folder(root, img_size, channels=3, mean=None, std=None, test_fraction=0.2, crop_pct=0.9, seed=0):
    """A Dataset named ``folder:<root>`` from a folder of class subfolders (see above)."""
    root = Path(root)
    if not root.is_dir():
        raise MissingInputError(f"no image folder at {root}")
    splits = [root / "train", root / "val"] if (root / "train").is_dir() and (root / "val").is_dir() else [root]
    classes = sorted(p.name for p in splits[0].iterdir() if p.is_dir() or p.is_symlink())
    if len(classes) < 2:
        raise ImageError(f"{splits[0]} needs one subfolder per class (at least two), found {classes or 'none'}")
    if len(splits) == 2:
        unknown = sorted({p.name for p in splits[1].iterdir() if p.is_dir() or p.is_symlink()} - set(classes))
        if unknown:
            raise ImageError(f"{splits[1]} has class folders that {splits[0]} lacks: {', '.join(unknown)}; the model "
                             "could never predict them (add their training images, or remove them from val/)")
    files = [_files_by_class(split, classes) for split in splits]
    if len(splits) == 1:                                             # hold out a fraction of each class
        rng = np.random.default_rng(seed)
        train, test = [], []
        for path, label in files[0]:
            (test if rng.random() < test_fraction else train).append((path, label))
        files = [train, test]
    if not files[0] or not files[1]:
        raise ImageError(f"{root}: {len(files[0])} training and {len(files[1])} test images; both need some "
                         "(add images, or lower test_fraction)")
    size = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
    (train_x, train_y), (test_x, test_y) = (_decode(split, size, channels, crop_pct) for split in files)
    if mean is None or std is None:
        pixels = train_x.transpose(1, 0, 2, 3).reshape(channels, -1) / 255.0           # (C, N*H*W)
        mean, std = tuple(pixels.mean(axis=1).tolist()), tuple(np.maximum(pixels.std(axis=1), 1e-3).tolist())
    return Dataset(f"folder:{root}", train_x, train_y, test_x, test_y, tuple(classes), mean, std)


def _files_by_class(split, classes):
    """[(image path, label)] of every class subfolder; ImageError for a class without images (an
    empty folder, one of other files, a link that leads nowhere or in a loop)."""
    found = []
    for label, name in enumerate(classes):
        folder = split / name
        try:
            images = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        except OSError as err:                                       # missing, a loop, unreadable
            raise ImageError(f"class folder {folder} cannot be listed ({err.strerror or err}); every class "
                             f"folder of {split} must be a readable folder of images") from None
        if not images:
            raise ImageError(f"class folder {folder} holds no images ({', '.join(IMAGE_SUFFIXES)}): add some, or "
                             "remove the folder")
        found += [(p, label) for p in images]
    return found


def _decode(files, size, channels, crop_pct):
    """(uint8 (N, C, H, W), int64 (N,)) of the files, resized and center-cropped to size."""
    images = np.empty((len(files), channels, *size), np.uint8)
    for i, (path, _) in enumerate(files):
        images[i] = channels_first(resize_and_crop(load_image(path, channels), size, crop_pct, path))
    return images, np.array([label for _, label in files], np.int64)


def resize_dataset(ds, img_size, channels):
    """``ds`` with images of img_size (int or (H, W)) and ``channels`` (gray repeated for RGB)."""
    from PIL import Image

    size = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)

    def convert(images):
        images = images[:, None] if images.ndim == 3 else images                       # (N, C, H, W)
        if tuple(images.shape[2:]) != size:
            images = np.stack([np.stack([np.asarray(Image.fromarray(channel).resize(size[::-1], Image.BICUBIC))
                                         for channel in image]) for image in images])
        if images.shape[1] != channels:
            if images.shape[1] != 1:
                raise ImageError(f"{ds.name} has {images.shape[1]} channels; the model takes {channels}")
            images = np.repeat(images, channels, axis=1)
        return images

    mean, std = ((v,) * channels if np.ndim(v) == 0 and channels > 1 else v for v in (ds.mean, ds.std))
    return Dataset(ds.name, convert(ds.train_images), ds.train_labels, convert(ds.test_images), ds.test_labels,
                   ds.classes, mean, std)
