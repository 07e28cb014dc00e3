"""The textbook: a whole ViT training step in plain NumPy, to read top to bottom.

This file is the Vision Transformer of "An Image is Worth 16x16 Words" written as plainly as
NumPy allows, one function pair per layer in the CS231n form:

    out, cache = layer_forward(x, weights...)        # remember what the backward needs
    dx, dweights... = layer_backward(dout, cache)    # the chain rule, one step per line

Every backward takes the gradient of its output and its forward's cache, and each of its lines
says which forward line it undoes ("forward: y = ..., so ..."). The derivations, with shapes,
are in docs/math.md, whose notation table this file follows; docs/tour.ipynb runs every pair on
tiny inputs with a gradient check, and demos/explore.py draws one real step of them, op by op, in
a browser page. The fast layers in numpyvit.layers compute exactly this (the
tests pin them to these functions to 1e-12 in float64), with speed tricks this file leaves out:
no threads, no preallocated output buffers, no merging of LayerNorm into the next product, no
[CLS]-only last block, softmax always with its row max, GELU through erf in float64.

The whole model (inference mode: no dropout, no stochastic depth; their pairs are below):

    logits, cache = vit_forward(params, x, config)   # params: {timm name: array}, x (B, C, H, W)
    grads = vit_backward(dlogits, cache)             # {timm name: gradient}, the same keys
    grads, dx = vit_backward(dlogits, cache, input_grad=True)   # and the images' gradient

``params`` is ``model.state_dict()`` and ``config`` is ``model.config`` of a
numpyvit.VisionTransformer. Works on NumPy and CuPy arrays alike.

Shapes (docs/math.md's notation): B batch, C channels, (H, W) image, (Ph, Pw) patch, (Gh, Gw)
grid of patches, N = Gh Gw patches, T = N + 1 tokens, D width, num_heads heads, Dh = D / num_heads
head width, F MLP width, K classes, M rows of a Linear's input.
"""
import math

import numpy as np

from .backend import array_module
from .layers.masking import random_keep  # noqa: F401 -- MAE's draw of the kept patches, below
from .layers.patch_embed import to_pair
from .layers.tokens import sincos_table_2d
from .special import erf


# ----- Linear: y = x W^T + b ---------------------------------------------------------------------
def linear_forward(x, W, b):
    """x (..., in), W (out, in) as in PyTorch, b (out,) or None -> y (..., out)."""
    y = x @ W.T
    if b is not None:
        y = y + b
    return y, (x, W, b is not None)


def linear_backward(dy, cache):
    """dy (..., out) -> dx (..., in), dW (out, in), db (out,) or None."""
    x, W, has_bias = cache
    # forward: y = x W^T, so dx = dy W
    dx = dy @ W
    # (M, in): every row is one sample
    x2 = x.reshape(-1, x.shape[-1])
    dy2 = dy.reshape(-1, dy.shape[-1])                               # (M, out), the same rows
    # y_j = W x_j for each row j: sum dy_j x_j^T
    dW = dy2.T @ x2
    # forward: b was added to every row
    db = dy2.sum(axis=0) if has_bias else None
    return dx, dW, db


# ----- Patch embedding: cut into patches, then one Linear ----------------------------------------
def patchify(x, patch_size):
    """x (B, C, H, W) -> (B, N, C*Ph*Pw): the patches in row-major grid order, each flattened
    as (C, Ph, Pw)."""
    B, C, H, W = x.shape
    Ph, Pw = patch_size
    # (B, C, Gh, Ph, Gw, Pw): rows, columns split
    x = x.reshape(B, C, H // Ph, Ph, W // Pw, Pw)
    # (B, Gh, Gw, C, Ph, Pw): patch index first
    x = x.transpose(0, 2, 4, 1, 3, 5)
    return x.reshape(B, (H // Ph) * (W // Pw), C * Ph * Pw)


def unpatchify(patches, image_shape, patch_size):
    """The inverse of patchify: patches (B, N, C*Ph*Pw) -> (B, C, H, W)."""
    B, C, H, W = image_shape
    Ph, Pw = patch_size
    x = patches.reshape(B, H // Ph, W // Pw, C, Ph, Pw)              # (B, Gh, Gw, C, Ph, Pw)
    # (B, C, Gh, Ph, Gw, Pw): patchify's undone
    x = x.transpose(0, 3, 1, 4, 2, 5)
    return x.reshape(B, C, H, W)


def patch_embed_forward(x, W, b):
    """x (B, C, H, W), W (D, C, Ph, Pw) (a convolution's kernel), b (D,) -> (B, N, D). A
    convolution with kernel = stride = patch is this Linear on the patches: they do not overlap."""
    patch_size = W.shape[2:]
    y, linear_cache = linear_forward(patchify(x, patch_size), W.reshape(W.shape[0], -1), b)
    return y, (x.shape, W.shape, linear_cache)


def patch_embed_backward(dy, cache):
    """dy (B, N, D) -> dx (B, C, H, W), dW (D, C, Ph, Pw), db (D,)."""
    image_shape, W_shape, linear_cache = cache
    dpatches, dW, db = linear_backward(dy, linear_cache)             # forward: y = patches W^T + b
    # forward: patchify moved each pixel once
    dx = unpatchify(dpatches, image_shape, W_shape[2:])
    # forward: W was the kernel reshaped
    return dx, dW.reshape(W_shape), db


# ----- [CLS] token and position embeddings -------------------------------------------------------
def tokens_forward(patches, cls_token, pos_table):
    """patches (B, N, D), cls_token (1, 1, D), pos_table (1, T, D)
    -> z0 (B, T, D) = [cls; patches] + E."""
    xp = array_module(patches)
    B = patches.shape[0]
    cls = xp.broadcast_to(cls_token, (B, 1, cls_token.shape[-1]))   # (B, 1, D): one copy per image
    return xp.concatenate([cls, patches], axis=1) + pos_table, None


def tokens_backward(dz0, cache):
    """dz0 (B, T, D) -> dpatches (B, N, D), dcls_token (1, 1, D), dpos_table (1, T, D)."""
    # forward: E was added to every image
    dpos_table = dz0.sum(axis=0, keepdims=True)
    # forward: cls was copied to every image
    dcls = dz0[:, :1].sum(axis=0, keepdims=True)
    # forward: patches copied in place
    return dz0[:, 1:], dcls, dpos_table


def position_table_forward(params, config, grid):
    """E (1, T, D) for config['pos_embed'] on a grid (Gh, Gw): 'learned' (one vector per token),
    'learned_2d' (row[i] + col[j] for the patch at (i, j), zero for [CLS]) or 'sincos' (fixed)."""
    kind = config["pos_embed"]
    cache = (kind, grid)
    if kind == "learned":
        return params["pos_embed"], cache
    if kind == "learned_2d":
        row, col = params["pos_embed_row"][0], params["pos_embed_col"][0]    # (Gh, D), (Gw, D)
        xp = array_module(row)
        grid_table = (row[:, None, :] + col[None, :, :]).reshape(-1, row.shape[-1])   # (N, D)
        return xp.concatenate([xp.zeros_like(row[:1]), grid_table])[None], cache
    xp = array_module(params["cls_token"])
    table = xp.asarray(sincos_table_2d(grid, config["embed_dim"]), dtype=params["cls_token"].dtype)
    return table, cache


def position_table_backward(dtable, cache):
    """dtable (1, T, D) -> {name: gradient} of the parameters E was made from."""
    kind, grid = cache
    if kind == "learned":
        # forward: E was the parameter itself
        return {"pos_embed": dtable}
    if kind == "learned_2d":
        # (Gh, Gw, D); [CLS]'s zero has none
        dgrid = dtable[0, 1:].reshape(grid[0], grid[1], -1)
        # forward: row[i] is in every column j
        return {"pos_embed_row": dgrid.sum(axis=1)[None],
                # forward: col[j] is in every row i
                "pos_embed_col": dgrid.sum(axis=0)[None]}
    # forward: a fixed table learns nothing
    return {}


# ----- LayerNorm over the last axis --------------------------------------------------------------
def layernorm_forward(x, gamma, beta, eps=1e-6):
    """x (..., D), gamma and beta (D,) -> (..., D): each row normalized to mean 0, variance 1,
    then scaled and shifted."""
    mean = x.mean(axis=-1, keepdims=True)                            # (..., 1)
    var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)             # (..., 1)
    rstd = 1 / (var + eps) ** 0.5                                    # rho in docs/math.md
    xhat = (x - mean) * rstd                                         # (..., D)
    return xhat * gamma + beta, (xhat, rstd, gamma)


def layernorm_backward(dy, cache):
    """dy (..., D) -> dx (..., D), dgamma (D,), dbeta (D,)."""
    xhat, rstd, gamma = cache
    D = xhat.shape[-1]                                               # the row width
    # forward: y = xhat gamma + beta, every row
    dgamma = (dy * xhat).reshape(-1, D).sum(axis=0)
    # forward: beta was added to every row
    dbeta = dy.reshape(-1, D).sum(axis=0)
    # forward: y = xhat gamma, elementwise
    dxhat = dy * gamma
    # forward: xhat = (x - mean) rstd, and mean and rstd depend on the whole row: three terms
    dx = rstd * (dxhat                                               # through x itself
                 - dxhat.mean(axis=-1, keepdims=True)                # through the mean
                 - xhat * (dxhat * xhat).mean(axis=-1, keepdims=True))   # through rstd
    return dx, dgamma, dbeta


# ----- Softmax over the last axis ----------------------------------------------------------------
def softmax_forward(s):
    """s (..., n) -> p (..., n), each row summing to 1; subtracting the row max changes nothing
    but keeps exp finite."""
    e = array_module(s).exp(s - s.max(axis=-1, keepdims=True))
    p = e / e.sum(axis=-1, keepdims=True)
    return p, p


def softmax_backward(dp, cache):
    """dp (..., n) -> ds (..., n) = p (dp - <dp, p>), the Jacobian diag(p) - p p^T applied."""
    p = cache
    # forward: p_j = e^s_j / sum_k e^s_k
    row_sum = (dp * p).sum(axis=-1, keepdims=True)
    # ds_k = sum_j dp_j p_j (delta_jk - p_k)
    return p * (dp - row_sum)


# ----- Multi-head self-attention -----------------------------------------------------------------
def split_heads(qkv, num_heads):
    """qkv (B, T, 3D), the fused Linear's output -> q, k, v, each (B, num_heads, T, Dh)."""
    B, T, three_D = qkv.shape
    Dh = three_D // (3 * num_heads)
    # split the columns: which, head, channel
    qkv = qkv.reshape(B, T, 3, num_heads, Dh)
    # (3, B, num_heads, T, Dh): one matrix a head
    qkv = qkv.transpose(2, 0, 3, 1, 4)
    return qkv[0], qkv[1], qkv[2]


def merge_heads(o):
    """o (B, num_heads, T, Dh) -> (B, T, D): the heads side by side, head 1's Dh columns first."""
    B, num_heads, T, Dh = o.shape
    return o.transpose(0, 2, 1, 3).reshape(B, T, num_heads * Dh)


def scores_forward(q, k):
    """q, k (B, num_heads, T, Dh) -> s (B, num_heads, T, T) = q k^T / sqrt(Dh): how well each
    query matches each key."""
    Dh = q.shape[-1]
    return q @ k.swapaxes(-1, -2) / math.sqrt(Dh), (q, k)


def scores_backward(ds, cache):
    """ds (B, num_heads, T, T) -> dq, dk (B, num_heads, T, Dh)."""
    q, k = cache
    Dh = q.shape[-1]
    # forward: s = q k^T / sqrt(Dh)
    dq = ds @ k / math.sqrt(Dh)
    dk = ds.swapaxes(-1, -2) @ q / math.sqrt(Dh)                     # ... and the same for k
    return dq, dk


def weighted_values_forward(p, v):
    """p (B, num_heads, T, T), v (B, num_heads, T, Dh) -> o = p v (B, num_heads, T, Dh): each
    token's output is the average of the values, weighted by its row of p."""
    return p @ v, (p, v)


def weighted_values_backward(do, cache):
    """do (B, num_heads, T, Dh) -> dp (B, num_heads, T, T), dv (B, num_heads, T, Dh)."""
    p, v = cache
    # forward: o = p v, so dp = do v^T
    dp = do @ v.swapaxes(-1, -2)
    dv = p.swapaxes(-1, -2) @ do                                     # ... and dv = p^T do
    return dp, dv


def attention_forward(x, W_qkv, b_qkv, W_proj, b_proj, num_heads):
    """x (B, T, D), W_qkv (3D, D), b_qkv (3D,) or None, W_proj (D, D), b_proj (D,) -> y (B, T, D):
    every token attends to every token, in num_heads heads of width Dh = D / num_heads."""
    # (B, T, 3D): [q | k | v], heads inside each
    qkv, qkv_cache = linear_forward(x, W_qkv, b_qkv)
    q, k, v = split_heads(qkv, num_heads)                            # (B, num_heads, T, Dh) each
    s, scores_cache = scores_forward(q, k)                           # (B, num_heads, T, T)
    p, softmax_cache = softmax_forward(s)                            # each row sums to 1
    o, values_cache = weighted_values_forward(p, v)                  # (B, num_heads, T, Dh)
    y, proj_cache = linear_forward(merge_heads(o), W_proj, b_proj)
    return y, (qkv_cache, scores_cache, softmax_cache, values_cache, proj_cache)


def attention_backward(dy, cache):
    """dy (B, T, D) -> dx (B, T, D), dW_qkv (3D, D), db_qkv (3D,) or None, dW_proj (D, D),
    db_proj (D,)."""
    qkv_cache, scores_cache, softmax_cache, values_cache, proj_cache = cache
    B, num_heads, T, Dh = values_cache[1].shape                     # v's shape
    xp = array_module(dy)
    # forward: y = heads W_proj^T + b_proj
    dheads, dW_proj, db_proj = linear_backward(dy, proj_cache)
    # forward: heads was o side by side (merge_heads), so split them: (B, num_heads, T, Dh)
    do = dheads.reshape(B, T, num_heads, Dh).transpose(0, 2, 1, 3)
    # forward: o = p v
    dp, dv = weighted_values_backward(do, values_cache)
    # forward: p = softmax(s), row by row
    ds = softmax_backward(dp, softmax_cache)
    # forward: s = q k^T / sqrt(Dh)
    dq, dk = scores_backward(ds, scores_cache)
    # forward: split_heads undone, [dq | dk | dv] back in the fused columns: (B, T, 3D)
    dqkv = xp.concatenate([merge_heads(dq), merge_heads(dk), merge_heads(dv)], axis=-1)
    # forward: qkv = x W_qkv^T + b_qkv
    dx, dW_qkv, db_qkv = linear_backward(dqkv, qkv_cache)
    return dx, dW_qkv, db_qkv, dW_proj, db_proj


# ----- Activations and the MLP -------------------------------------------------------------------
def activation_forward(x, kind):
    """x (...) -> f(x) (...): 'gelu' x Phi(x) with the exact normal CDF; 'gelu_tanh' its tanh
    approximation; 'relu'."""
    xp = array_module(x)
    if kind == "relu":
        return xp.maximum(x, 0), (x, kind)
    if kind == "gelu_tanh":
        psi = xp.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3))
        return x * (1 + psi) / 2, (x, kind)
    Phi = (1 + erf(x.astype(np.float64) / math.sqrt(2))) / 2        # erf in float64 for any input
    return (x * Phi).astype(x.dtype), (x, kind)


def activation_backward(dy, cache):
    """dy (...) -> dx = dy * f'(x) (...)."""
    x, kind = cache
    xp = array_module(x)
    if kind == "relu":
        return dy * (x > 0)                                          # forward: y = max(x, 0)
    if kind == "gelu_tanh":
        # forward: w = c (x + 0.044715 x^3)
        c = math.sqrt(2 / math.pi)
        # forward: y = x (1 + psi) / 2, psi = tanh(w)
        psi = xp.tanh(c * (x + 0.044715 * x**3))
        # product and chain rule
        slope = (1 + psi) / 2 + x * (1 - psi**2) / 2 * c * (1 + 3 * 0.044715 * x**2)
        return dy * slope                                            # elementwise: dx = dy f'(x)
    x64 = x.astype(np.float64)                                       # erf in float64, as forward
    Phi = (1 + erf(x64 / math.sqrt(2))) / 2                          # forward: y = x Phi(x)
    # Phi' is the normal density phi
    phi = xp.exp(-x64**2 / 2) / math.sqrt(2 * math.pi)
    # the product rule: Phi + x phi
    return (dy * (Phi + x64 * phi)).astype(dy.dtype)


def mlp_forward(x, W1, b1, W2, b2, act):
    """x (B, T, D), W1 (F, D), b1 (F,), W2 (D, F), b2 (D,) -> fc2(act(fc1(x))) (B, T, D)."""
    hidden, fc1_cache = linear_forward(x, W1, b1)                    # (B, T, F)
    activated, act_cache = activation_forward(hidden, act)           # (B, T, F)
    y, fc2_cache = linear_forward(activated, W2, b2)                 # (B, T, D)
    return y, (fc1_cache, act_cache, fc2_cache)


def mlp_backward(dy, cache):
    """dy (B, T, D) -> dx (B, T, D), dW1 (F, D), db1 (F,), dW2 (D, F), db2 (D,)."""
    fc1_cache, act_cache, fc2_cache = cache
    # forward: y = activated W2^T + b2
    dactivated, dW2, db2 = linear_backward(dy, fc2_cache)
    # forward: activated = act(hidden)
    dhidden = activation_backward(dactivated, act_cache)
    # forward: hidden = x W1^T + b1
    dx, dW1, db1 = linear_backward(dhidden, fc1_cache)
    return dx, dW1, db1, dW2, db2


# ----- Dropout and stochastic depth (training only) ----------------------------------------------
def dropout_forward(x, keep, rate):
    """x (...), keep (...) a 0/1 mask drawn with P(1) = 1 - rate -> x keep / (1 - rate) (...)."""
    scale = keep / (1 - rate)
    return x * scale, scale


def dropout_backward(dy, cache):
    """dy (...) -> dx (...)."""
    scale = cache
    # forward: y = x keep / (1 - rate)
    return dy * scale


def drop_path_forward(x, keep, rate):
    """x (B, ...), keep (B,) one 0/1 value an image -> x keep_b / (1 - rate): a residual branch
    dropped for whole images (stochastic depth)."""
    # (B, 1, ..., 1): broadcast over the image
    keep = keep.reshape((-1,) + (1,) * (x.ndim - 1))
    return dropout_forward(x, keep, rate)


def drop_path_backward(dy, cache):
    """dy (B, ...) -> dx (B, ...)."""
    # forward: the same scaled mask, per image
    return dropout_backward(dy, cache)


# ----- The pre-norm transformer block ------------------------------------------------------------
def block_forward(x, params, prefix, config):
    """x (B, T, D) -> x + Attn(LN1(x)), then + MLP(LN2(.)) (the paper's eqs. 2-3), (B, T, D);
    params {name: array}, this block's named ``prefix`` + timm's names."""
    def w(name):
        return params.get(prefix + name)                             # None for an absent bias

    normed1, ln1 = layernorm_forward(x, w("norm1.weight"), w("norm1.bias"))
    attended, attn = attention_forward(normed1, w("attn.qkv.weight"), w("attn.qkv.bias"),
                                       w("attn.proj.weight"), w("attn.proj.bias"),
                                       config["num_heads"])
    x1 = x + attended
    normed2, ln2 = layernorm_forward(x1, w("norm2.weight"), w("norm2.bias"))
    mixed, mlp = mlp_forward(normed2, w("mlp.fc1.weight"), w("mlp.fc1.bias"), w("mlp.fc2.weight"),
                             w("mlp.fc2.bias"), config["act"])
    return x1 + mixed, (ln1, attn, ln2, mlp, prefix)


def block_backward(dx2, cache):
    """dx2 (B, T, D) -> dx (B, T, D) and {name: gradient} of the block's parameters."""
    ln1, attn, ln2, mlp, prefix = cache
    grads = {}
    # forward: x2 = x1 + MLP(normed2)
    dnormed2, *mlp_grads = mlp_backward(dx2, mlp)
    # the MLP's weight gradients, under their names
    grads.update(zip(("mlp.fc1.weight", "mlp.fc1.bias", "mlp.fc2.weight", "mlp.fc2.bias"),
                     mlp_grads))
    # normed2 = LN2(x1)
    dx1, grads["norm2.weight"], grads["norm2.bias"] = layernorm_backward(dnormed2, ln2)
    # forward: x1 also went straight to x2
    dx1 = dx1 + dx2
    # forward: x1 = x + Attn(normed1)
    dnormed1, *attn_grads = attention_backward(dx1, attn)
    # the attention's weight gradients, under their names
    grads.update(zip(("attn.qkv.weight", "attn.qkv.bias", "attn.proj.weight", "attn.proj.bias"),
                     attn_grads))
    # normed1 = LN1(x)
    dx, grads["norm1.weight"], grads["norm1.bias"] = layernorm_backward(dnormed1, ln1)
    # forward: x also went straight to x1
    dx = dx + dx1
    return dx, {prefix + name: g for name, g in grads.items() if g is not None}   # timm's names


# ----- Pooling, the loss -------------------------------------------------------------------------
def pool_forward(z, kind):
    """z (B, T, D) -> (B, D): the [CLS] token ('token') or the mean of the patch tokens ('avg')."""
    return (z[:, 0] if kind == "token" else z[:, 1:].mean(axis=1)), (z.shape, kind)


def pool_backward(dy, cache):
    """dy (B, D) -> dz (B, T, D)."""
    shape, kind = cache
    # tokens not pooled get no gradient
    dz = array_module(dy).zeros(shape, dtype=dy.dtype)
    if kind == "token":
        dz[:, 0] = dy                                                # forward: y = z[:, 0]
    else:
        # forward: y = the mean of the N patch tokens
        dz[:, 1:] = dy[:, None, :] / (shape[1] - 1)
    return dz


def cross_entropy_forward(logits, labels, label_smoothing=0.0):
    """logits (B, K), labels (B,) -> the mean over the batch of -sum_k target_k log p_k, with
    p = softmax(logits) and target the smoothed one-hot, (1 - label_smoothing) onehot(labels)
    + label_smoothing / K."""
    xp = array_module(logits)
    B, K = logits.shape
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_p = shifted - xp.log(xp.exp(shifted).sum(axis=1, keepdims=True))   # (B, K)
    target = xp.full((B, K), label_smoothing / K, dtype=logits.dtype)
    target[xp.arange(B), labels] += 1 - label_smoothing
    return -(target * log_p).sum() / B, (xp.exp(log_p), target)


def cross_entropy_backward(dloss, cache):
    """dloss (a scalar, 1 where backpropagation starts) -> dlogits (B, K)."""
    p, target = cache
    # forward: loss = -mean_b sum_k target log p
    return dloss * (p - target) / p.shape[0]


def patch_grid(config):
    """((Ph, Pw), (Gh, Gw)) of a ``model.config``: the patch size and the grid of patches."""
    patch_size = to_pair(config["patch_size"], "patch_size")
    image = to_pair(config["img_size"], "img_size")
    return patch_size, (image[0] // patch_size[0], image[1] // patch_size[1])


# ----- The whole model ---------------------------------------------------------------------------
def vit_forward(params, x, config):
    """x (B, C, H, W) -> logits (B, K); params {timm name: array}, config ``model.config``."""
    _, grid = patch_grid(config)                                     # (Gh, Gw)
    patches, embed = patch_embed_forward(x, params["patch_embed.proj.weight"],
                                         params["patch_embed.proj.bias"])
    table, table_cache = position_table_forward(params, config, grid)
    z, _ = tokens_forward(patches, params["cls_token"], table)       # eq. 1: z0 (B, T, D)
    blocks = []
    for i in range(config["depth"]):                                 # eqs. 2-3
        z, block = block_forward(z, params, f"blocks.{i}.", config)
        blocks.append(block)
    norm = "norm" if config["global_pool"] == "token" else "fc_norm"
    # eq. 4: LN of every token (its [CLS] row used)
    if norm == "norm":
        z, norm_cache = layernorm_forward(z, params["norm.weight"], params["norm.bias"])
    pooled, pool = pool_forward(z, config["global_pool"])            # (B, D)
    if norm == "fc_norm":                                            # timm's 'avg': LN of the mean
        pooled, norm_cache = layernorm_forward(pooled, params["fc_norm.weight"],
                                               params["fc_norm.bias"])
    logits, head = linear_forward(pooled, params["head.weight"], params["head.bias"])
    return logits, (table_cache, embed, blocks, norm, norm_cache, pool, head)


def vit_backward(dlogits, cache, input_grad=False):
    """dlogits (B, K) -> {timm name: gradient} of every parameter (and dx (B, C, H, W) with
    ``input_grad``)."""
    table_cache, embed, blocks, norm, norm_cache, pool, head = cache
    grads = {}
    # forward: logits = pooled W_head^T + b_head
    dpooled, grads["head.weight"], grads["head.bias"] = linear_backward(dlogits, head)
    if norm == "fc_norm":
        dpooled, dgamma, dbeta = layernorm_backward(dpooled, norm_cache)   # forward: LN_fc(mean)
        grads["fc_norm.weight"], grads["fc_norm.bias"] = dgamma, dbeta     # ... its gamma, beta
    # forward: pooled = a row or a mean of z
    dz = pool_backward(dpooled, pool)
    if norm == "norm":
        dz, dgamma, dbeta = layernorm_backward(dz, norm_cache)       # forward: z = LN(z_L)
        grads["norm.weight"], grads["norm.bias"] = dgamma, dbeta     # ... its gamma, beta
    for block in reversed(blocks):
        dz, block_grads = block_backward(dz, block)                  # forward: z_i = block_i(z)
        grads.update(block_grads)                                    # ... and its weights
    # forward: z0 = [cls; patches] + E
    dpatches, grads["cls_token"], dtable = tokens_backward(dz, None)
    # forward: E made from its parameters
    grads.update(position_table_backward(dtable, table_cache))
    dx, dW, db = patch_embed_backward(dpatches, embed)               # forward: patches = embed(x)
    grads["patch_embed.proj.weight"], grads["patch_embed.proj.bias"] = dW, db   # timm's names
    return (grads, dx) if input_grad else grads


# ----- Masked autoencoder (MAE): pretraining without labels --------------------------------------
# Each image keeps a random quarter of its patches: rows, hidden = random_keep(rng, B, N, 0.75)
# (numpyvit/layers/masking.py: a draw, not a layer). The encoder sees the kept tokens only; the
# decoder sees every position, the hidden ones as a learned mask token, and predicts their pixels.
def gather_rows_forward(z, rows):
    """z (B, T, D), rows (B, R) int -> (B, R, D): each image's tokens at its rows."""
    xp = array_module(z)
    rows = xp.asarray(rows)
    return xp.take_along_axis(z, rows[:, :, None], axis=1), (z.shape, rows)


def gather_rows_backward(dy, cache):
    """dy (B, R, D) -> dz (B, T, D)."""
    shape, rows = cache
    xp = array_module(dy)
    # tokens not taken get no gradient
    dz = xp.zeros(shape, dtype=dy.dtype)
    # forward: y[b, r] = z[b, rows[b, r]], each row taken once
    xp.put_along_axis(dz, rows[:, :, None], dy, axis=1)
    return dz


def fill_hidden_forward(y, mask_token, rows, T):
    """y (B, R, E) the encoded tokens at ``rows``, mask_token (1, 1, E) -> (B, T, E): every
    token row holds the mask token, except ``rows``, which hold y."""
    xp = array_module(y)
    B, _, E = y.shape
    rows = xp.asarray(rows)
    # (B, T, E): the same mask token everywhere ...
    full = xp.broadcast_to(mask_token, (B, T, E)).copy()
    # ... then the visible tokens in their places
    xp.put_along_axis(full, rows[:, :, None], y, axis=1)
    return full, rows


def fill_hidden_backward(dfull, cache):
    """dfull (B, T, E) -> dy (B, R, E), dmask_token (1, 1, E)."""
    rows = cache
    xp = array_module(dfull)
    # forward: full[b, rows[b, r]] = y[b, r]
    dy = xp.take_along_axis(dfull, rows[:, :, None], axis=1)
    # forward: the mask token was copied to every other row of every image
    dhidden = dfull.copy()
    # (a copy: the rows the visible tokens overwrote)
    xp.put_along_axis(dhidden, rows[:, :, None], 0.0, axis=1)
    return dy, dhidden.sum(axis=(0, 1), keepdims=True)


def patch_targets(x, patch_size, normalize):
    """x (B, C, H, W) -> the pixels to predict, (B, N, C*Ph*Pw): the patches, each normalized to
    mean 0 and variance 1 over its own pixels with ``normalize`` (MAE's norm_pix_loss; the
    variance unbiased, as torch.var, plus 1e-6). A constant of the step: no gradient."""
    t = patchify(x, patch_size)
    if not normalize:
        return t
    mean = t.mean(axis=-1, keepdims=True)
    var = t.var(axis=-1, keepdims=True, ddof=1)
    return (t - mean) / (var + 1e-6) ** 0.5


def masked_mse_forward(pred, target, hidden):
    """pred, target (B, N, P), hidden (B, N) 0/1 -> the mean squared error per pixel of the hidden
    patches: sum_bi hidden_bi mean_p (pred - target)^2 / sum_bi hidden_bi."""
    err = pred - target
    per_patch = (err ** 2).mean(axis=-1)                             # (B, N)
    return (per_patch * hidden).sum() / hidden.sum(), (err, hidden)


def masked_mse_backward(dloss, cache):
    """dloss (a scalar) -> dpred (B, N, P)."""
    err, hidden = cache
    # forward: the mean over P pixels of err^2, summed over hidden patches, over their count
    return dloss * 2 * err * hidden[:, :, None] / (err.shape[-1] * hidden.sum())


def mae_forward(params, x, config, decoder, rows, hidden, normalize=True):
    """x (B, C, H, W) -> the loss on the hidden patches. params: the encoder's (a ViT's timm
    names) and the decoder's (MAE's names: decoder_embed, mask_token, decoder_blocks.i,
    decoder_norm, decoder_pred); config: the encoder ViT's ``model.config``; decoder: its
    embed_dim, depth, num_heads, act; rows, hidden: random_keep's."""
    patch_size, grid = patch_grid(config)                            # (Ph, Pw), (Gh, Gw)
    # the encoder: the classifier's tokens (eq. 1), then only the kept rows
    patches, embed = patch_embed_forward(x, params["patch_embed.proj.weight"],
                                         params["patch_embed.proj.bias"])
    table, table_cache = position_table_forward(params, config, grid)
    z, _ = tokens_forward(patches, params["cls_token"], table)       # (B, T, D)
    z, gather = gather_rows_forward(z, rows)                         # (B, 1 + K, D)
    blocks = []
    for i in range(config["depth"]):
        z, block = block_forward(z, params, f"blocks.{i}.", config)
        blocks.append(block)
    z, norm = layernorm_forward(z, params["norm.weight"], params["norm.bias"])
    # the decoder: narrower, every row again, the hidden ones a mask token
    y, decoder_embed = linear_forward(z, params["decoder_embed.weight"], params["decoder_embed.bias"])
    xp = array_module(x)
    full, fill = fill_hidden_forward(y, params["mask_token"], rows, table.shape[1])   # (B, T, E)
    # fixed sine-cosine positions, as MAE's decoder
    full = full + xp.asarray(sincos_table_2d(grid, decoder["embed_dim"]), dtype=full.dtype)
    decoder_blocks = []
    for i in range(decoder["depth"]):
        full, block = block_forward(full, params, f"decoder_blocks.{i}.", decoder)
        decoder_blocks.append(block)
    full, decoder_norm = layernorm_forward(full, params["decoder_norm.weight"], params["decoder_norm.bias"])
    # (B, N, C*Ph*Pw): each patch's pixels, [CLS]'s row left out
    pred, predict = linear_forward(full[:, 1:], params["decoder_pred.weight"], params["decoder_pred.bias"])
    loss, mse = masked_mse_forward(pred, patch_targets(x, patch_size, normalize), xp.asarray(hidden))
    caches = (table_cache, embed, gather, blocks, norm, decoder_embed, fill, decoder_blocks, decoder_norm,
              predict, mse)
    return loss, pred, caches


def mae_backward(dloss, caches):
    """dloss (a scalar, 1) -> {name: gradient} of the encoder's and the decoder's parameters."""
    (table_cache, embed, gather, blocks, norm, decoder_embed, fill, decoder_blocks, decoder_norm,
     predict, mse) = caches
    grads = {}
    dpred = masked_mse_backward(dloss, mse)                          # forward: loss = MSE(hidden)
    # forward: pred = full[:, 1:] W^T + b
    dfull_rows, grads["decoder_pred.weight"], grads["decoder_pred.bias"] = linear_backward(dpred, predict)
    xp = array_module(dpred)
    # forward: the [CLS] row was left out
    dfull = xp.concatenate([xp.zeros_like(dfull_rows[:, :1]), dfull_rows], axis=1)
    dfull, grads["decoder_norm.weight"], grads["decoder_norm.bias"] = layernorm_backward(dfull, decoder_norm)
    for block in reversed(decoder_blocks):
        dfull, block_grads = block_backward(dfull, block)
        grads.update(block_grads)
    # the position table was fixed: dfull passes through it unchanged
    dy, grads["mask_token"] = fill_hidden_backward(dfull, fill)      # forward: the mask token filled in
    dz, grads["decoder_embed.weight"], grads["decoder_embed.bias"] = linear_backward(dy, decoder_embed)
    dz, grads["norm.weight"], grads["norm.bias"] = layernorm_backward(dz, norm)
    for block in reversed(blocks):
        dz, block_grads = block_backward(dz, block)
        grads.update(block_grads)
    dz = gather_rows_backward(dz, gather)                            # forward: the kept rows taken
    # as vit_backward from here: the tokens, the positions, the patch embedding
    dpatches, grads["cls_token"], dtable = tokens_backward(dz, None)
    grads.update(position_table_backward(dtable, table_cache))
    _, grads["patch_embed.proj.weight"], grads["patch_embed.proj.bias"] = patch_embed_backward(dpatches, embed)
    return grads


# ----- One AdamW step ----------------------------------------------------------------------------
NO_DECAY = ("cls_token", "pos_embed", "pos_embed_row", "pos_embed_col")


def decays(name, value):
    """Weight decay for matrices and kernels only: not biases, norms, the [CLS] token or
    the position embeddings."""
    return value.ndim >= 2 and name not in NO_DECAY


def adamw_step(params, grads, state, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01,
               decayed=decays):
    """One step of PyTorch's AdamW. It writes into the arrays of ``params`` ({name: array}), in
    place, and into ``state`` (starts as {}; keeps the step t and the moments m and u per name).
    If ``params`` is ``model.state_dict()``, those arrays are the model's own weights: the model
    is updated. Pass copies (``{k: v.copy() ...}``) to leave it alone. ``grads`` {name: gradient};
    ``decayed(name, value)`` says which parameters are decayed (docs/math.md, section 11)."""
    b1, b2 = betas
    t = state["t"] = state.get("t", 0) + 1
    for name, p in params.items():
        g = grads[name]
        m = state.setdefault("m", {}).setdefault(name, 0 * p)
        u = state.setdefault("u", {}).setdefault(name, 0 * p)
        if decayed(name, p):
            p *= 1 - lr * weight_decay                               # decoupled weight decay
        m[...] = b1 * m + (1 - b1) * g                               # running mean of g
        u[...] = b2 * u + (1 - b2) * g * g                           # running mean of g^2
        p -= lr / (1 - b1**t) * m / ((u / (1 - b2**t)) ** 0.5 + eps)   # both bias-corrected
