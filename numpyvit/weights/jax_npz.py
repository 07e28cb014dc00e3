"""The original ViT checkpoints (Google's JAX ``.npz`` files, e.g. ViT-B_16.npz and the augreg
files) in timm's names and layouts, and back.

Shapes: P patch, C channels, D width, H heads, d = D / H head width, F MLP width, K classes,
T tokens. The JAX model keeps its kernels as (inputs, outputs) and splits attention by head;
timm (and numpyvit) keep Linear weights as (outputs, inputs) and one fused qkv projection:

    embedding/kernel (P, P, C, D)              -> patch_embed.proj.weight (D, C, P, P)
    embedding/bias, cls, Transformer/posembed_input/pos_embedding
                                               -> patch_embed.proj.bias, cls_token, pos_embed
    Transformer/encoderblock_{i}/ ...          -> blocks.{i}. ...
        LayerNorm_0/{scale, bias}              -> norm1.{weight, bias}
        MultiHeadDotProductAttention_1/{query, key, value}/kernel (D, H, d)
                                               -> attn.qkv.weight (3D, D): rows q, then k, then v
        .../{query, key, value}/bias (H, d)    -> attn.qkv.bias (3D,)
        MultiHeadDotProductAttention_1/out/kernel (H, d, D), out/bias
                                               -> attn.proj.weight (D, D), attn.proj.bias
        LayerNorm_2/{scale, bias}              -> norm2.{weight, bias}
        MlpBlock_3/Dense_0/kernel (D, F), Dense_1/kernel (F, D) and biases
                                               -> mlp.fc1.weight (F, D), mlp.fc2.weight (D, F), biases
    Transformer/encoder_norm/{scale, bias}     -> norm.{weight, bias}
    head/kernel (D, K), head/bias              -> head.weight (K, D), head.bias
    pre_logits/...                             ignored (the optional representation layer)

Names may carry a prefix (e.g. ``opt/target/`` in the training checkpoints); it is found and
removed. Every tensor's shape is checked against the table above before its data is read (D from
the patch kernel, H and d from the first query kernel, F from the first MLP kernel), so a kernel
stored in another layout is an error, not wrong weights; only the members the model needs are
read (numpyvit.io.read_npz: never unpickled, sizes checked before anything is decompressed).
"""
from pathlib import Path

import numpy as np

from ..io import read_npz
from .errors import WeightsError

BLOCK = "Transformer/encoderblock_{}/"
ATTN = "MultiHeadDotProductAttention_1/"
ROOTS = ("embedding/kernel",)          # a name every ViT checkpoint has, to find the prefix by


class JaxCheckpointError(WeightsError):
    """An .npz file is not a readable JAX ViT checkpoint; the message names file and tensor."""


def read_jax_npz(path):
    """{timm name: array} of an original ViT .npz checkpoint."""
    path = Path(path)

    def needed(headers):                                             # shapes checked before any data
        shapes = {name: shape for name, (shape, _) in headers.items()}
        prefix = _prefix(shapes, path)
        check_shapes(_strip_prefix(shapes, prefix), path)
        return [name for name in shapes if name.startswith(prefix) and not name[len(prefix):].startswith("pre_logits/")]

    return from_jax(read_npz(path, check=needed, error=JaxCheckpointError), source=str(path))


def _prefix(arrays, source):
    prefixes = {name[:-len(root)] for name in arrays for root in ROOTS if name.endswith(root)}
    if len(prefixes) != 1:
        raise JaxCheckpointError(f"{source}: not a JAX ViT checkpoint (no single 'embedding/kernel' entry; "
                                 f"names start {sorted(arrays)[:4]})")
    return prefixes.pop()


def _strip_prefix(arrays, prefix):
    return {name[len(prefix):]: value for name, value in arrays.items() if name.startswith(prefix)}


def check_shapes(shapes, source):
    """JaxCheckpointError naming every tensor whose shape is not the one the table above expects
    ({JAX name: shape}, prefix removed)."""
    def dims(name, ndim):
        shape = shapes.get(name)
        if shape is None or len(shape) != ndim:
            raise JaxCheckpointError(f"{source}: {name!r} must have {ndim} dimensions, got "
                                     f"{'none (missing)' if shape is None else tuple(shape)}")
        return tuple(shape)

    D = dims("embedding/kernel", 4)[3]
    T = dims("Transformer/posembed_input/pos_embedding", 3)[1]
    expected = {"embedding/bias": (D,), "cls": (1, 1, D), "Transformer/posembed_input/pos_embedding": (1, T, D),
                "Transformer/encoder_norm/scale": (D,), "Transformer/encoder_norm/bias": (D,)}
    if "head/kernel" in shapes:
        K = dims("head/kernel", 2)[1]
        expected.update({"head/kernel": (D, K), "head/bias": (K,)})
    i = 0
    while BLOCK.format(i) + "LayerNorm_0/scale" in shapes:
        block = BLOCK.format(i)
        width, H, d = dims(block + ATTN + "query/kernel", 3)
        F = dims(block + "MlpBlock_3/Dense_0/kernel", 2)[1]
        if width != D or H * d != D:
            raise JaxCheckpointError(f"{source}: {block + ATTN}query/kernel {(width, H, d)}, expected (D, H, d) "
                                     f"with D = {D} = H x d (the JAX layout: inputs, heads, head width)")
        expected.update({block + norm + part: (D,) for norm in ("LayerNorm_0/", "LayerNorm_2/")
                         for part in ("scale", "bias")})
        expected.update({f"{block}{ATTN}{qkv}/kernel": (D, H, d) for qkv in ("query", "key", "value")})
        expected.update({f"{block}{ATTN}{qkv}/bias": (H, d) for qkv in ("query", "key", "value")})
        expected.update({f"{block}{ATTN}out/kernel": (H, d, D), f"{block}{ATTN}out/bias": (D,),
                         f"{block}MlpBlock_3/Dense_0/kernel": (D, F), f"{block}MlpBlock_3/Dense_0/bias": (F,),
                         f"{block}MlpBlock_3/Dense_1/kernel": (F, D), f"{block}MlpBlock_3/Dense_1/bias": (D,)})
        i += 1
    missing = [name for name in expected if name not in shapes]
    if missing:
        raise JaxCheckpointError(f"{source}: missing tensor {', '.join(map(repr, missing[:6]))}")
    wrong = [f"{name} {tuple(shapes[name])}, expected {shape}" for name, shape in expected.items()
             if tuple(shapes[name]) != shape]
    if wrong:
        raise JaxCheckpointError(f"{source}: tensors not in the JAX ViT layout (D {D}): " + "; ".join(wrong[:6])
                                 + (f" (and {len(wrong) - 6} more)" if len(wrong) > 6 else ""))


def from_jax(arrays, source="the checkpoint"):
    """{timm name: array} from {JAX name: array} (see the table above); shapes checked first."""
    jax = _strip_prefix(arrays, _prefix(arrays, source))
    check_shapes({name: np.shape(value) for name, value in jax.items()}, source)
    not_numbers = sorted(name for name, value in jax.items() if np.asarray(value).dtype.kind not in "fiu")
    if not_numbers:
        raise JaxCheckpointError(f"{source}: tensors that are not numbers: "
                                 + ", ".join(f"{n} ({np.asarray(jax[n]).dtype})" for n in not_numbers[:6]))
    used = set()

    def take(name):
        if name not in jax:
            raise JaxCheckpointError(f"{source}: missing tensor {name!r}")
        used.add(name)
        return np.asarray(jax[name])

    state = {
        "patch_embed.proj.weight": take("embedding/kernel").transpose(3, 2, 0, 1),   # (P,P,C,D) -> (D,C,P,P)
        "patch_embed.proj.bias": take("embedding/bias"),
        "cls_token": take("cls"),
        "pos_embed": take("Transformer/posembed_input/pos_embedding"),
        "norm.weight": take("Transformer/encoder_norm/scale"),
        "norm.bias": take("Transformer/encoder_norm/bias"),
    }
    if "head/kernel" in jax:
        state["head.weight"], state["head.bias"] = take("head/kernel").T, take("head/bias")
    depth = 0
    while BLOCK.format(depth) + "LayerNorm_0/scale" in jax:
        block, ours = BLOCK.format(depth), f"blocks.{depth}."
        D = jax[block + "LayerNorm_0/scale"].shape[0]
        for jax_norm, norm in (("LayerNorm_0", "norm1"), ("LayerNorm_2", "norm2")):
            state[ours + norm + ".weight"] = take(block + jax_norm + "/scale")
            state[ours + norm + ".bias"] = take(block + jax_norm + "/bias")
        qkv = [take(f"{block}{ATTN}{part}/kernel").reshape(D, -1).T for part in ("query", "key", "value")]
        state[ours + "attn.qkv.weight"] = np.concatenate(qkv)                         # (3D, D)
        state[ours + "attn.qkv.bias"] = np.concatenate(
            [take(f"{block}{ATTN}{part}/bias").reshape(-1) for part in ("query", "key", "value")])
        state[ours + "attn.proj.weight"] = take(f"{block}{ATTN}out/kernel").reshape(-1, D).T   # (H,d,D) -> (D,D)
        state[ours + "attn.proj.bias"] = take(f"{block}{ATTN}out/bias")
        for dense, fc in (("Dense_0", "fc1"), ("Dense_1", "fc2")):
            state[ours + f"mlp.{fc}.weight"] = take(f"{block}MlpBlock_3/{dense}/kernel").T
            state[ours + f"mlp.{fc}.bias"] = take(f"{block}MlpBlock_3/{dense}/bias")
        depth += 1
    unknown = sorted(name for name in set(jax) - used if not name.startswith("pre_logits/"))
    if unknown:
        raise JaxCheckpointError(f"{source}: tensors numpyvit's ViT does not have: {', '.join(unknown[:8])}"
                                 + (" ..." if len(unknown) > 8 else ""))
    return {name: np.ascontiguousarray(value) for name, value in state.items()}


def to_jax(state, num_heads):
    """{JAX name: array} from {timm name: array}: the inverse of ``from_jax`` (for writing a model
    in the original layout)."""
    D = state["cls_token"].shape[-1]
    d = D // num_heads
    jax = {
        "embedding/kernel": state["patch_embed.proj.weight"].transpose(2, 3, 1, 0),  # (D,C,P,P) -> (P,P,C,D)
        "embedding/bias": state["patch_embed.proj.bias"],
        "cls": state["cls_token"],
        "Transformer/posembed_input/pos_embedding": state["pos_embed"],
        "Transformer/encoder_norm/scale": state["norm.weight"],
        "Transformer/encoder_norm/bias": state["norm.bias"],
        "head/kernel": state["head.weight"].T,
        "head/bias": state["head.bias"],
    }
    i = 0
    while f"blocks.{i}.norm1.weight" in state:
        block, ours = BLOCK.format(i), f"blocks.{i}."
        for jax_norm, norm in (("LayerNorm_0", "norm1"), ("LayerNorm_2", "norm2")):
            jax[block + jax_norm + "/scale"], jax[block + jax_norm + "/bias"] = (state[ours + norm + ".weight"],
                                                                                state[ours + norm + ".bias"])
        weights = np.split(state[ours + "attn.qkv.weight"], 3)                        # 3 x (D, D)
        biases = np.split(state[ours + "attn.qkv.bias"], 3)
        for part, weight, bias in zip(("query", "key", "value"), weights, biases):
            jax[f"{block}{ATTN}{part}/kernel"] = weight.T.reshape(D, num_heads, d)
            jax[f"{block}{ATTN}{part}/bias"] = bias.reshape(num_heads, d)
        jax[f"{block}{ATTN}out/kernel"] = state[ours + "attn.proj.weight"].T.reshape(num_heads, d, D)
        jax[f"{block}{ATTN}out/bias"] = state[ours + "attn.proj.bias"]
        for dense, fc in (("Dense_0", "fc1"), ("Dense_1", "fc2")):
            jax[f"{block}MlpBlock_3/{dense}/kernel"] = state[ours + f"mlp.{fc}.weight"].T
            jax[f"{block}MlpBlock_3/{dense}/bias"] = state[ours + f"mlp.{fc}.bias"]
        i += 1
    return {name: np.ascontiguousarray(value) for name, value in jax.items()}
