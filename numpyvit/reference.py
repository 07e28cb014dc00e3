"""The textbook: a whole ViT training step in plain NumPy, to read top to bottom.

This file is the Vision Transformer of "An Image is Worth 16x16 Words" written as plainly as
NumPy allows, one function pair per layer in the CS231n form:

    out, cache = layer_forward(x, weights...)        # remember what the backward needs
    dx, dweights... = layer_backward(dout, cache)    # the chain rule, one step per line

Each line of a backward says which forward line it undoes ("in the forward y = ..., so ...").
The derivations, with shapes, are in docs/math.md; docs/tour.ipynb runs every pair on tiny
inputs with a gradient check. The fast layers in numpyvit.layers compute exactly this (the tests
pin them to these functions to 1e-12 in float64), with speed tricks that this file leaves out:
no threads, no preallocated output buffers, no merging of LayerNorm into the next product, no
[CLS]-only last block, softmax always with its row max, GELU through erf in float64.

The whole model (inference mode: no dropout, no stochastic depth):

    logits, cache = vit_forward(params, x, config)   # params: {timm name: array}, x (B, C, H, W)
    grads = vit_backward(dlogits, cache)             # {timm name: gradient}, the same keys
    grads, dx = vit_backward(dlogits, cache, input_grad=True)   # and the images' gradient

``params`` is ``model.state_dict()`` and ``config`` is ``model.config`` of a
numpyvit.VisionTransformer. Works on NumPy and CuPy arrays alike.

Shapes: B batch, C channels, (H, W) image, (Ph, Pw) patch, N patches, T = 1 + N tokens,
D width, Hd heads, d = D / Hd head width, F MLP width, K classes.
"""
import math

import numpy as np

from .backend import array_module
from .layers.patch_embed import to_pair
from .layers.tokens import sincos_table_2d
from .special import erf


# ----- Linear: y = x W^T + b ----------------------------------------------------------------------
def linear_forward(x, W, b):
    """x (..., in), W (out, in) as in PyTorch, b (out,) or None -> y (..., out)."""
    y = x @ W.T
    if b is not None:
        y = y + b
    return y, (x, W, b is not None)


def linear_backward(dy, cache):
    """-> dx (..., in), dW (out, in), db (out,) or None."""
    x, W, has_bias = cache
    dx = dy @ W                                                      # y = x W^T, so dx = dy W
    x2, dy2 = x.reshape(-1, x.shape[-1]), dy.reshape(-1, dy.shape[-1])   # every row is one sample of the product
    dW = dy2.T @ x2                                                  # each row adds dy_row^T x_row to dW
    db = dy2.sum(axis=0) if has_bias else None                       # b was added to every row
    return dx, dW, db


# ----- Patch embedding: cut into patches, then one Linear ---------------------------------------------
def patchify(x, patch_size):
    """(B, C, H, W) -> (B, N, C*Ph*Pw): the patches in row-major grid order, each flattened as (C, Ph, Pw)."""
    B, C, H, W = x.shape
    Ph, Pw = patch_size
    x = x.reshape(B, C, H // Ph, Ph, W // Pw, Pw)                   # (B, C, Gh, Ph, Gw, Pw)
    return x.transpose(0, 2, 4, 1, 3, 5).reshape(B, (H // Ph) * (W // Pw), C * Ph * Pw)


def unpatchify(patches, image_shape, patch_size):
    """The inverse of patchify: (B, N, C*Ph*Pw) -> (B, C, H, W)."""
    B, C, H, W = image_shape
    Ph, Pw = patch_size
    x = patches.reshape(B, H // Ph, W // Pw, C, Ph, Pw)              # (B, Gh, Gw, C, Ph, Pw)
    return x.transpose(0, 3, 1, 4, 2, 5).reshape(B, C, H, W)


def patch_embed_forward(x, W, b):
    """x (B, C, H, W), W (D, C, Ph, Pw) (a convolution's kernel), b (D,) -> (B, N, D).
    A convolution with kernel = stride = patch is this Linear on the patches: they do not overlap."""
    patch_size = W.shape[2:]
    y, linear_cache = linear_forward(patchify(x, patch_size), W.reshape(W.shape[0], -1), b)
    return y, (x.shape, W.shape, linear_cache)


def patch_embed_backward(dy, cache):
    """-> dx (B, C, H, W), dW (D, C, Ph, Pw), db (D,)."""
    image_shape, W_shape, linear_cache = cache
    dpatches, dW, db = linear_backward(dy, linear_cache)             # y = patches W^T + b
    dx = unpatchify(dpatches, image_shape, W_shape[2:])              # each pixel sits in exactly one patch
    return dx, dW.reshape(W_shape), db


# ----- [CLS] token and position embeddings --------------------------------------------------------
def tokens_forward(patches, cls_token, pos_table):
    """patches (B, N, D), cls_token (1, 1, D), pos_table (1, T, D) -> z0 (B, T, D) = [cls; patches] + E."""
    xp = array_module(patches)
    B = patches.shape[0]
    cls = xp.broadcast_to(cls_token, (B, 1, cls_token.shape[-1]))
    return xp.concatenate([cls, patches], axis=1) + pos_table, None


def tokens_backward(dz0, cache):
    """-> dpatches (B, N, D), dcls_token (1, 1, D), dpos_table (1, T, D)."""
    dpos_table = dz0.sum(axis=0, keepdims=True)                      # E was added to every image
    dcls = dz0[:, :1].sum(axis=0, keepdims=True)                     # cls was copied to every image
    return dz0[:, 1:], dcls, dpos_table                              # the patches were copied in place


def position_table(params, config, grid):
    """E (1, T, D) for config['pos_embed']: 'learned' (one vector per token), 'learned_2d'
    (row[r] + col[c] for the patch at (r, c), zero for [CLS]) or 'sincos' (fixed)."""
    kind = config["pos_embed"]
    if kind == "learned":
        return params["pos_embed"]
    if kind == "learned_2d":
        row, col = params["pos_embed_row"][0], params["pos_embed_col"][0]    # (Gh, D), (Gw, D)
        xp = array_module(row)
        grid_table = (row[:, None, :] + col[None, :, :]).reshape(-1, row.shape[-1])   # (N, D)
        return xp.concatenate([xp.zeros_like(row[:1]), grid_table])[None]
    xp = array_module(params["cls_token"])
    return xp.asarray(sincos_table_2d(grid, config["embed_dim"]), dtype=params["cls_token"].dtype)


def position_table_backward(dtable, config, grid):
    """{name: gradient} of the parameters E was made from."""
    kind = config["pos_embed"]
    if kind == "learned":
        return {"pos_embed": dtable}
    if kind == "learned_2d":
        dgrid = dtable[0, 1:].reshape(grid[0], grid[1], -1)          # E[(r, c)] = row[r] + col[c]
        return {"pos_embed_row": dgrid.sum(axis=1)[None],            # row[r] is in every column c
                "pos_embed_col": dgrid.sum(axis=0)[None]}            # col[c] is in every row r
    return {}                                                        # a fixed table learns nothing


# ----- LayerNorm over the last axis -----------------------------------------------------------------
def layernorm_forward(x, g, beta, eps=1e-6):
    """x (..., D), g and beta (D,): each row normalized to mean 0, variance 1, then scaled and shifted."""
    mu = x.mean(axis=-1, keepdims=True)                              # (..., 1)
    var = ((x - mu) ** 2).mean(axis=-1, keepdims=True)               # (..., 1)
    rstd = 1 / (var + eps) ** 0.5
    xhat = (x - mu) * rstd                                           # (..., D)
    return xhat * g + beta, (xhat, rstd, g)


def layernorm_backward(dy, cache):
    """-> dx (..., D), dg (D,), dbeta (D,)."""
    xhat, rstd, g = cache
    D = xhat.shape[-1]
    dg = (dy * xhat).reshape(-1, D).sum(axis=0)                      # y = xhat g + beta, summed over all rows
    dbeta = dy.reshape(-1, D).sum(axis=0)
    dxhat = dy * g
    # xhat = (x - mu) rstd, where mu and rstd depend on the whole row: three terms
    dx = rstd * (dxhat                                               # through x itself
                 - dxhat.mean(axis=-1, keepdims=True)                # through mu
                 - xhat * (dxhat * xhat).mean(axis=-1, keepdims=True))   # through rstd
    return dx, dg, dbeta


# ----- Multi-head self-attention ---------------------------------------------------------------------
def softmax(s):
    """Softmax over the last axis; subtracting the row max changes nothing but keeps exp finite."""
    e = array_module(s).exp(s - s.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def attention_forward(x, W_qkv, b_qkv, W_proj, b_proj, num_heads):
    """x (B, T, D) -> y (B, T, D): every token attends to every token, in num_heads heads."""
    B, T, D = x.shape
    d = D // num_heads
    qkv, qkv_cache = linear_forward(x, W_qkv, b_qkv)                 # (B, T, 3D)
    qkv = qkv.reshape(B, T, 3, num_heads, d).transpose(2, 0, 3, 1, 4)   # (3, B, Hd, T, d)
    q, k, v = qkv[0], qkv[1], qkv[2]
    s = q @ k.swapaxes(-1, -2) / math.sqrt(d)                        # (B, Hd, T, T) scores
    p = softmax(s)                                                   # each row sums to 1
    o = p @ v                                                        # (B, Hd, T, d) weighted values
    heads = o.transpose(0, 2, 1, 3).reshape(B, T, D)                 # heads side by side
    y, proj_cache = linear_forward(heads, W_proj, b_proj)
    return y, (qkv_cache, proj_cache, q, k, v, p)


def attention_backward(dy, cache):
    """-> dx (B, T, D), dW_qkv, db_qkv, dW_proj, db_proj."""
    qkv_cache, proj_cache, q, k, v, p = cache
    B, num_heads, T, d = q.shape
    xp = array_module(dy)
    dheads, dW_proj, db_proj = linear_backward(dy, proj_cache)       # y = heads W_proj^T + b_proj
    do = dheads.reshape(B, T, num_heads, d).transpose(0, 2, 1, 3)    # heads was o side by side
    dp = do @ v.swapaxes(-1, -2)                                     # o = p v, so dp = do v^T
    dv = p.swapaxes(-1, -2) @ do                                     # and dv = p^T do
    ds = p * (dp - (dp * p).sum(axis=-1, keepdims=True))             # p = softmax(s): its Jacobian
    dq = ds @ k / math.sqrt(d)                                       # s = q k^T / sqrt(d)
    dk = ds.swapaxes(-1, -2) @ q / math.sqrt(d)
    dqkv = xp.stack([dq, dk, dv]).transpose(1, 3, 0, 2, 4).reshape(B, T, 3 * num_heads * d)   # undo the split
    dx, dW_qkv, db_qkv = linear_backward(dqkv, qkv_cache)            # qkv = x W_qkv^T + b_qkv
    return dx, dW_qkv, db_qkv, dW_proj, db_proj


# ----- Activations and the MLP ----------------------------------------------------------------------
def activation_forward(x, kind):
    """'gelu': x Phi(x) with the exact normal CDF; 'gelu_tanh': its tanh approximation; 'relu'."""
    xp = array_module(x)
    if kind == "relu":
        return xp.maximum(x, 0), (x, kind)
    if kind == "gelu_tanh":
        t = xp.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3))
        return x * (1 + t) / 2, (x, kind)
    Phi = (1 + erf(x.astype(np.float64) / math.sqrt(2))) / 2        # erf in float64 for any input
    return (x * Phi).astype(x.dtype), (x, kind)


def activation_backward(dy, cache):
    """-> dx = dy * f'(x)."""
    x, kind = cache
    xp = array_module(x)
    if kind == "relu":
        return dy * (x > 0)                                          # y = max(x, 0)
    if kind == "gelu_tanh":
        c = math.sqrt(2 / math.pi)
        t = xp.tanh(c * (x + 0.044715 * x**3))                       # y = x (1 + t) / 2, t = tanh(u)
        return dy * ((1 + t) / 2 + x * (1 - t**2) / 2 * c * (1 + 3 * 0.044715 * x**2))
    x64 = x.astype(np.float64)
    Phi = (1 + erf(x64 / math.sqrt(2))) / 2
    phi = xp.exp(-x64**2 / 2) / math.sqrt(2 * math.pi)               # Phi' is the normal density
    return (dy * (Phi + x64 * phi)).astype(dy.dtype)                 # y = x Phi(x): product rule


def mlp_forward(x, W1, b1, W2, b2, act):
    """x (B, T, D) -> fc2(act(fc1(x))) (B, T, D), hidden width F."""
    h, fc1_cache = linear_forward(x, W1, b1)                         # (B, T, F)
    a, act_cache = activation_forward(h, act)
    y, fc2_cache = linear_forward(a, W2, b2)
    return y, (fc1_cache, act_cache, fc2_cache)


def mlp_backward(dy, cache):
    """-> dx, dW1, db1, dW2, db2."""
    fc1_cache, act_cache, fc2_cache = cache
    da, dW2, db2 = linear_backward(dy, fc2_cache)                    # y = a W2^T + b2
    dh = activation_backward(da, act_cache)                          # a = act(h)
    dx, dW1, db1 = linear_backward(dh, fc1_cache)                    # h = x W1^T + b1
    return dx, dW1, db1, dW2, db2


# ----- The pre-norm transformer block ---------------------------------------------------------------
def block_forward(x, params, prefix, config):
    """x + Attn(LN1(x)), then + MLP(LN2(.)) (the paper's eqs. 2-3); params named ``prefix`` + timm's names."""
    def w(name):
        return params.get(prefix + name)                             # None for an absent bias

    a, ln1 = layernorm_forward(x, w("norm1.weight"), w("norm1.bias"))
    a, attn = attention_forward(a, w("attn.qkv.weight"), w("attn.qkv.bias"), w("attn.proj.weight"),
                                w("attn.proj.bias"), config["num_heads"])
    x = x + a
    m, ln2 = layernorm_forward(x, w("norm2.weight"), w("norm2.bias"))
    m, mlp = mlp_forward(m, w("mlp.fc1.weight"), w("mlp.fc1.bias"), w("mlp.fc2.weight"), w("mlp.fc2.bias"),
                         config["act"])
    return x + m, (ln1, attn, ln2, mlp, prefix)


def block_backward(dy, cache):
    """-> dx and {name: gradient} of the block's parameters."""
    ln1, attn, ln2, mlp, prefix = cache
    grads = {}
    dm, *mlp_grads = mlp_backward(dy, mlp)                           # y = x1 + MLP(LN2(x1)): the branch
    grads.update(zip(("mlp.fc1.weight", "mlp.fc1.bias", "mlp.fc2.weight", "mlp.fc2.bias"), mlp_grads))
    dx1, grads["norm2.weight"], grads["norm2.bias"] = layernorm_backward(dm, ln2)
    dx1 = dx1 + dy                                                   # ... plus the residual path
    da, *attn_grads = attention_backward(dx1, attn)                  # x1 = x + Attn(LN1(x)): the branch
    grads.update(zip(("attn.qkv.weight", "attn.qkv.bias", "attn.proj.weight", "attn.proj.bias"), attn_grads))
    dx, grads["norm1.weight"], grads["norm1.bias"] = layernorm_backward(da, ln1)
    dx = dx + dx1                                                    # ... plus the residual path
    return dx, {prefix + name: g for name, g in grads.items() if g is not None}


# ----- Pooling, the loss ----------------------------------------------------------------------------
def pool_forward(z, kind):
    """(B, T, D) -> (B, D): the [CLS] token ('token') or the mean of the patch tokens ('avg')."""
    return (z[:, 0] if kind == "token" else z[:, 1:].mean(axis=1)), (z.shape, kind)


def pool_backward(dy, cache):
    shape, kind = cache
    dz = array_module(dy).zeros(shape, dtype=dy.dtype)
    if kind == "token":
        dz[:, 0] = dy                                                # y = z[:, 0]
    else:
        dz[:, 1:] = dy[:, None, :] / (shape[1] - 1)                  # y = the mean of N tokens
    return dz


def cross_entropy_forward(logits, labels, label_smoothing=0.0):
    """Mean over the batch of -sum_k q_k log p_k, p = softmax(logits), q the smoothed one-hot target."""
    xp = array_module(logits)
    B, K = logits.shape
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_p = shifted - xp.log(xp.exp(shifted).sum(axis=1, keepdims=True))   # (B, K)
    q = xp.full((B, K), label_smoothing / K, dtype=logits.dtype)
    q[xp.arange(B), labels] += 1 - label_smoothing
    return -(q * log_p).sum() / B, (xp.exp(log_p), q)


def cross_entropy_backward(cache):
    """-> dlogits (B, K) = (p - q) / B, the gradient of the mean loss."""
    p, q = cache
    return (p - q) / p.shape[0]


# ----- The whole model ------------------------------------------------------------------------------
def vit_forward(params, x, config):
    """logits (B, K) for images x (B, C, H, W); params {timm name: array}, config ``model.config``."""
    patch_size = to_pair(config["patch_size"], "patch_size")
    image = to_pair(config["img_size"], "img_size")
    grid = (image[0] // patch_size[0], image[1] // patch_size[1])
    patches, embed = patch_embed_forward(x, params["patch_embed.proj.weight"], params["patch_embed.proj.bias"])
    z, _ = tokens_forward(patches, params["cls_token"], position_table(params, config, grid))   # eq. 1
    blocks = []
    for i in range(config["depth"]):                                 # eqs. 2-3
        z, block = block_forward(z, params, f"blocks.{i}.", config)
        blocks.append(block)
    norm = "norm" if config["global_pool"] == "token" else "fc_norm"
    if norm == "norm":                                               # eq. 4: LN of the [CLS] token
        z, norm_cache = layernorm_forward(z, params["norm.weight"], params["norm.bias"])
    y, pool = pool_forward(z, config["global_pool"])
    if norm == "fc_norm":                                            # timm's 'avg': LN of the mean
        y, norm_cache = layernorm_forward(y, params["fc_norm.weight"], params["fc_norm.bias"])
    logits, head = linear_forward(y, params["head.weight"], params["head.bias"])
    return logits, (config, grid, embed, blocks, norm, norm_cache, pool, head)


def vit_backward(dlogits, cache, input_grad=False):
    """{timm name: gradient} of every parameter (and the images' gradient with ``input_grad``)."""
    config, grid, embed, blocks, norm, norm_cache, pool, head = cache
    grads = {}
    dy, grads["head.weight"], grads["head.bias"] = linear_backward(dlogits, head)
    if norm == "fc_norm":
        dy, grads["fc_norm.weight"], grads["fc_norm.bias"] = layernorm_backward(dy, norm_cache)
    dz = pool_backward(dy, pool)
    if norm == "norm":
        dz, grads["norm.weight"], grads["norm.bias"] = layernorm_backward(dz, norm_cache)
    for block in reversed(blocks):
        dz, block_grads = block_backward(dz, block)
        grads.update(block_grads)
    dpatches, grads["cls_token"], dtable = tokens_backward(dz, None)
    grads.update(position_table_backward(dtable, config, grid))
    dx, grads["patch_embed.proj.weight"], grads["patch_embed.proj.bias"] = patch_embed_backward(dpatches, embed)
    return (grads, dx) if input_grad else grads


# ----- One AdamW step -------------------------------------------------------------------------------
NO_DECAY = ("cls_token", "pos_embed", "pos_embed_row", "pos_embed_col")


def decays(name, value):
    """Weight decay for matrices and kernels only: not biases, norms, the [CLS] token or positions."""
    return value.ndim >= 2 and name not in NO_DECAY


def adamw_step(params, grads, state, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01, decayed=decays):
    """Update params in place (PyTorch's AdamW). ``state`` starts as {} and keeps t, m and v;
    ``decayed(name, value)`` says which parameters are decayed."""
    b1, b2 = betas
    t = state["t"] = state.get("t", 0) + 1
    for name, p in params.items():
        g = grads[name]
        m = state.setdefault("m", {}).setdefault(name, 0 * p)
        v = state.setdefault("v", {}).setdefault(name, 0 * p)
        if decayed(name, p):
            p *= 1 - lr * weight_decay                               # decoupled weight decay
        m[...] = b1 * m + (1 - b1) * g                               # running mean of g
        v[...] = b2 * v + (1 - b2) * g * g                           # running mean of g^2
        p -= lr / (1 - b1**t) * m / ((v / (1 - b2**t)) ** 0.5 + eps)   # both bias-corrected
