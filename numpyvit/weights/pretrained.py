"""A model from published weights: ``create_model(name, weights=FILE, num_classes=..., img_size=...)``.

    model = numpyvit.create_model("vit_base_patch16_224", weights="model.safetensors")
    model = numpyvit.create_model("vit_base_patch16_224", weights="ViT-B_16.npz", num_classes=100,
                                  img_size=384)      # a new head; position embeddings resampled

FILE is a safetensors file (timm's ``model.safetensors``, or one written by ``save_weights``), an
original JAX ``.npz`` (numpyvit.weights.jax_npz), or a numpyvit checkpoint (``.npz`` holding its
config, which then fills in what the preset leaves open and must agree with its architecture).
``name`` may be None: then the file's config, or the preset whose width, depth and patch size the
tensors have. Tensors are matched by timm's names, and as in timm:
- a head whose number of classes is not ``num_classes`` is left out, and the model gets a freshly
  initialized one (``num_classes`` defaults to the file's);
- position embeddings of another patch grid are resampled (numpyvit.weights.resample);
- patch-embedding kernels for one input channel instead of three are summed over R, G, B;
- anything else that does not fit is refused with an error naming the tensor.
The model is built without random initialization (``init=False``) and then filled, on its backend.

``model.pretrained_cfg`` holds how images must be prepared for these weights: mean, std, crop_pct
(from the file's metadata, a timm ``config.json`` beside it, or timm's ViT defaults) and class names.
"""
import json
import zipfile
from pathlib import Path

import numpy as np

from ..data.images import TIMM_VIT_PREPROCESSING, check_crop_pct, imagenet_classes
from ..data.loader import check_normalization
from ..errors import ConfigError, InputError
from ..files import read_regular_file
from ..io import CHECKPOINT_NAME, META_KEY, CheckpointError, load_arrays, prefixed
from ..layers import Linear
from ..mae import encoder_weights
from ..model import VisionTransformer
from ..presets import PRESETS, check_config, preset_config
from .errors import WeightsError
from .jax_npz import read_jax_npz
from .resample import resample_pos_embed
from .safetensors import read_safetensors, write_safetensors

ARCHITECTURE = ("patch_size", "embed_dim", "depth", "num_heads", "mlp_ratio")   # a preset and a file must agree


def read_weights(path):
    """({timm name: array}, info) of a weights file; info holds ``config`` (numpyvit's, if the file
    has one) and the preprocessing: mean, std, crop_pct, classes. A masked autoencoder's weights
    (numpyvit.mae, demos/pretrain.py) are its encoder's: the decoder is left out."""
    path = Path(path)
    if path.is_dir():                                                # a training run's folder
        path = path / CHECKPOINT_NAME
    if not path.is_file():
        raise WeightsError(f"no weights file at {path}")
    with open(path, "rb") as f:
        magic = f.read(4)
    info = dict(TIMM_VIT_PREPROCESSING, config=None, classes=None)
    if magic == b"PK\x03\x04":                                       # .npz: numpyvit's or JAX's
        if _npz_has(path, META_KEY):
            arrays, meta = load_arrays(path)
            state = prefixed(arrays, "model")
            data = meta.get("data", {})
            info.update(config=meta.get("config"), classes=data.get("classes"),
                        mean=data.get("mean", info["mean"]), std=data.get("std", info["std"]))
        else:
            state = read_jax_npz(path)
    else:
        state, metadata = read_safetensors(path)
        for key in ("mean", "std", "crop_pct", "classes", "config"):
            if key in metadata:
                try:
                    info[key] = json.loads(metadata[key])
                except (ValueError, RecursionError) as err:
                    raise WeightsError(f"{path}: metadata {key!r} is not valid JSON ({err})") from None
    info.update(_timm_config(path))
    return encoder_weights(state), check_info(info, path)        # a masked autoencoder's decoder left out


def check_info(info, source):
    """``info`` with its preprocessing checked: mean and std one or three finite numbers (std >= 1e-3),
    crop_pct in [0.25, 1], classes a list of strings, config a mapping; WeightsError otherwise."""
    try:
        check_normalization(info["mean"], info["std"], str(source))
        check_crop_pct(info["crop_pct"], str(source))
    except InputError as err:
        raise WeightsError(str(err)) from None
    classes = info["classes"]
    if classes is not None and not (isinstance(classes, list) and all(isinstance(c, str) for c in classes)):
        raise WeightsError(f"{source}: classes must be a list of class names (strings), got {str(classes)[:80]}")
    if info["config"] is not None and not isinstance(info["config"], dict):
        raise WeightsError(f"{source}: config must be a mapping of VisionTransformer settings, got "
                           f"{type(info['config']).__name__}")
    return info


def _npz_has(path, name):
    try:
        with zipfile.ZipFile(path) as archive:
            return name + ".npy" in archive.namelist()
    except zipfile.BadZipFile as err:
        raise CheckpointError(f"{path} is corrupt or truncated ({err})") from err


def _timm_config(path):
    """Preprocessing from a timm / Hugging Face ``config.json`` beside the weights, if any."""
    config = path.with_name("config.json")
    if not config.is_file():
        return {}
    try:
        pretrained = json.loads(read_regular_file(config, 16 * 2**20, "the weights' config.json")).get("pretrained_cfg", {})
    except (ValueError, AttributeError, UnicodeDecodeError, RecursionError):   # InputError is a ValueError
        return {}
    if not isinstance(pretrained, dict):
        return {}
    found = {key: pretrained[key] for key in ("mean", "std", "crop_pct") if key in pretrained}
    if "label_names" in pretrained:
        found["classes"] = pretrained["label_names"]
    return found


def create_pretrained(name, weights, **overrides):
    """See the module docstring; ``overrides`` are VisionTransformer keywords."""
    state, info = read_weights(weights)
    if info["config"] is not None:
        check_config(info["config"], f"{weights}: the file's config")
    check_config(overrides, "create_model")
    if name is None and info["config"] is None:
        name = guess_preset(state)
        if name is None:
            raise WeightsError(f"{weights} holds no model config and its sizes match no preset: name one, e.g. "
                               "create_model('vit_base_patch16_224', weights=...)")
    preset = preset_config(name) if name is not None else {}         # refuses an unknown name
    config = dict(preset, **(info["config"] or {}))
    conflicts = [f"{key} {preset[key]!r} (preset) vs {info['config'][key]!r} (file)"
                 for key in ARCHITECTURE if preset and info["config"] and key in info["config"]
                 and preset[key] != info["config"][key] and key not in overrides]
    if conflicts:
        raise WeightsError(f"{weights} holds another architecture than {name}: {'; '.join(conflicts)} "
                           "(leave the preset out to use the file's)")
    config.pop("backend", None)
    file_classes = state["head.weight"].shape[0] if "head.weight" in state else None
    if file_classes == 0:
        raise WeightsError(f"{weights}: head.weight has shape {tuple(state['head.weight'].shape)}, a classifier "
                           "for 0 classes (a damaged file)")
    config["num_classes"] = file_classes or config.get("num_classes", 1000)
    config.update(overrides)
    same_classes = config["num_classes"] == file_classes
    try:
        model = VisionTransformer(**config, init=False)
    except ConfigError as err:
        raise WeightsError(f"{weights}: {err}") from None
    state = _adapt(model, state, same_classes, weights)
    try:
        model.load_state_dict(state)
    except ValueError as err:
        raise WeightsError(f"{weights} does not fit {name or 'its model'} with {overrides or 'its settings'}: "
                           f"{err}") from err
    model.pretrained_cfg = dict(mean=info["mean"], std=info["std"], crop_pct=info["crop_pct"],
                                classes=info["classes"] if same_classes else None, file=str(weights))
    return model


def class_names(model):
    """The names of the model's outputs: its weights' class names, ImageNet's for 1,000 classes, or
    "class k"."""
    given = getattr(model, "pretrained_cfg", {}).get("classes")
    if given and len(given) == model.num_classes:
        return list(given)
    if model.num_classes == 1000:
        return imagenet_classes()
    return [f"class {k}" for k in range(model.num_classes)]


def new_head(model):
    """A freshly initialized classifier (trunc_normal(0.02) weights, zero bias) for ``model``'s
    classes, seeded by its seed; returns the Linear (host arrays)."""
    return Linear(model.embed_dim, model.num_classes, rng=np.random.default_rng([model.config["seed"], 7]),
                  dtype=model.dtype)


def guess_preset(state):
    """The preset whose width, depth and patch size the tensors have (the number of heads is not in
    the weights: the presets' is the ViT paper's), or None."""
    kernel = state.get("patch_embed.proj.weight")
    if kernel is None or kernel.ndim != 4:
        return None
    depth = len({name.split(".")[1] for name in state if name.startswith("blocks.")})
    for name, preset in PRESETS.items():
        if (preset["embed_dim"], preset["depth"], preset["patch_size"]) == (kernel.shape[0], depth, kernel.shape[2]):
            return name
    return None


def _adapt(model, state, keep_head, source):
    """The file's tensors made to fit ``model``: a new head, resampled position embeddings,
    patch kernels summed to one channel."""
    not_real = [f"{name} ({np.asarray(value).dtype})" for name, value in state.items()
                if np.asarray(value).dtype.kind not in "fiu"]
    if not_real:
        raise WeightsError(f"{source}: tensors must hold real numbers; {', '.join(not_real[:3])} do not "
                           "(converting them would drop a part silently)")
    try:
        state = {name: np.asarray(value, dtype=model.dtype) for name, value in state.items()}
    except (TypeError, ValueError) as err:
        raise WeightsError(f"{source}: a tensor cannot be read as {model.dtype} numbers ({err})") from None
    if not keep_head:                                                # a fresh head, as VisionTransformer makes it
        fresh = new_head(model)
        state["head.weight"], state["head.bias"] = (np.asarray(fresh.weight.data), np.asarray(fresh.bias.data))
    if "pos_embed" in state and hasattr(model, "pos_embed") and state["pos_embed"].shape != model.pos_embed.shape:
        state["pos_embed"] = resample_pos_embed(state["pos_embed"], model.patch_embed.grid_size)
    kernel = state.get("patch_embed.proj.weight")
    if kernel is not None and kernel.ndim == 4 and kernel.shape[1] == 3 and model.patch_embed.in_chans == 1:
        state["patch_embed.proj.weight"] = kernel.sum(axis=1, keepdims=True)     # timm's adapt_input_conv
    return state


def save_weights(model, path, **metadata):
    """Write a model's weights as a safetensors file with timm's names (``timm.create_model(...,
    pretrained=True, pretrained_cfg_overlay=dict(file=path))`` loads it), with numpyvit's config and
    any JSON-able ``metadata`` (e.g. mean, std, classes) in its header."""
    info = {key: json.dumps(value) for key, value in dict(metadata, config=model.config).items()}
    write_safetensors(path, model.state_dict(), dict(info, format="pt"))
