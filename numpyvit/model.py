"""The Vision Transformer (Dosovitskiy et al. 2021, "An Image is Worth 16x16 Words").
Implements numpyvit.reference.vit_forward / vit_backward (Block: block_forward / block_backward;
docs/math.md, sections 8 and 12).

Wiring only: every piece of math lives in ``numpyvit.layers``.
Shapes: B batch, C channels, (H, W) image, N patches, T = 1 + N tokens, D width, K classes.

    x (B, C, H, W)
    -> PatchEmbed                      (B, N, D)       [x_p^1 E + b_E; ...; x_p^N E + b_E]   (eq. 1,
                                                       with the bias b_E of timm's patch conv)
    -> ClassToken                      (B, T, D)       prepend x_class
    -> position embedding, dropout     (B, T, D)       z_0 = [x_class; ...] + E_pos          (eq. 1)
    -> L x Block                       (B, T, D)       eqs. 2-3, pre-norm residual blocks
    -> LayerNorm, pool                 (B, D)          y = LN(z_L^0), the [CLS] row           (eq. 4)
    -> head                            (B, K)          logits = y W_head^T + b_head
With global_pool='avg' there is no final LayerNorm before pooling: y = fc_norm(mean of the N
patch tokens of z_L), then the same head (timm's layout).

backward runs the same stages in reverse, each returning the gradient of its input. How the
stages run on the machine (shards on threads or processes, split products) is the runner's
business (``model.runner``: numpyvit.execution, numpyvit.engine), not the model's.
"""
import numpy as np

from .backend import array_module, backend_name, get_xp, tune_allocator
from .errors import ConfigError, InputError
from .execution import runner_for
from .memory import check_fits
from .layers import (Block, ClassToken, Dropout, GlobalPool, LayerNorm, LearnedPositionEmbedding,
                     LearnedPositionEmbedding2D, Linear, Module, PatchEmbed, SinCosPositionEmbedding2D)
from .layers.base import initialization, new_parameter, trunc_normal

POS_EMBED_KINDS = ("learned", "learned_2d", "sincos")


def check_settings(config):
    """ConfigError for a VisionTransformer setting of the wrong kind or out of range (the layers
    check what depends on several settings, e.g. embed_dim divisible by num_heads)."""
    def number(value):
        return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool) \
            and np.isfinite(value)

    if config["pos_embed"] not in POS_EMBED_KINDS:
        raise ConfigError(f"pos_embed must be one of {', '.join(POS_EMBED_KINDS)}, got {config['pos_embed']!r}")
    for name in ("in_chans", "num_classes", "embed_dim", "depth", "num_heads"):
        value = config[name]
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
            raise ConfigError(f"{name} must be a positive integer, got {value!r}")
    if not number(config["mlp_ratio"]) or config["mlp_ratio"] <= 0:
        raise ConfigError(f"mlp_ratio must be a positive number, got {config['mlp_ratio']!r}")
    for name in ("drop_rate", "attn_drop_rate", "drop_path_rate"):
        if not number(config[name]) or not 0 <= config[name] < 1:
            raise ConfigError(f"{name} must be a number in [0, 1), got {config[name]!r}")
    if not isinstance(config["qkv_bias"], (bool, np.bool_)):
        raise ConfigError(f"qkv_bias must be True or False, got {config['qkv_bias']!r}")
    if not isinstance(config["seed"], (int, np.integer)) or isinstance(config["seed"], bool) or config["seed"] < 0:
        raise ConfigError(f"seed must be a non-negative integer, got {config['seed']!r}")


class VisionTransformer(Module):
    """A ViT with timm's parameter names and shapes.

    Keyword arguments (the ViT paper's table, and timm's names):
      img_size, patch_size   int or (height, width); the image must divide into patches
      in_chans, num_classes  input channels, output classes
      embed_dim, depth, num_heads, mlp_ratio   D, L, heads, MLP width / D
      qkv_bias               bias in the fused qkv projection
      drop_rate, attn_drop_rate, drop_path_rate   dropout, attention dropout, stochastic depth
                             (the drop-path rate grows linearly from 0 to this over the blocks)
      pos_embed              'learned' (1-D, default), 'learned_2d' (row + column), 'sincos'
      global_pool            'token' ([CLS]) or 'avg' (mean of patch tokens, then ``fc_norm``)
      act                    'gelu' (exact, default), 'gelu_tanh', 'relu'
      dtype                  'float32' (training) or 'float64' (gradient checks)
      backend                'numpy' or 'cupy' (default: $NUMPYVIT_BACKEND, else numpy)
      seed                   seeds the weight init (the same on every backend) and the dropout masks
      init                   False: leave the weights uninitialized (no random draws; for weights
                             loaded right after, e.g. numpyvit.weights); not part of ``config``
    """

    _per_model = ("_runner",)            # not copied into shard replicas (numpyvit.engine.shards.replicate)
    _runner = None

    def __init__(self, *, img_size=224, patch_size=16, in_chans=3, num_classes=1000, embed_dim=768,
                 depth=12, num_heads=12, mlp_ratio=4.0, qkv_bias=True, drop_rate=0.0,
                 attn_drop_rate=0.0, drop_path_rate=0.0, pos_embed="learned", global_pool="token",
                 act="gelu", dtype="float32", backend=None, seed=0, init=True):
        try:
            known_dtype = np.dtype(dtype) in (np.float32, np.float64)
        except TypeError:
            known_dtype = False
        if not known_dtype:
            raise ConfigError(f"dtype must be float32 or float64, got {dtype!r}")
        self.config = dict(
            img_size=img_size, patch_size=patch_size, in_chans=in_chans, num_classes=num_classes,
            embed_dim=embed_dim, depth=depth, num_heads=num_heads, mlp_ratio=mlp_ratio,
            qkv_bias=qkv_bias, drop_rate=drop_rate, attn_drop_rate=attn_drop_rate,
            drop_path_rate=drop_path_rate, pos_embed=pos_embed, global_pool=global_pool, act=act,
            dtype=np.dtype(dtype).name, backend=backend_name(backend), seed=seed)
        check_settings(self.config)
        check_fits(self.config)                                     # before a byte is allocated
        try:
            self._build(init)
        except InputError:                                           # already says what was wrong
            raise
        except (ValueError, TypeError) as err:                      # a layer refused a setting
            raise ConfigError(str(err)) from None
        self.seed(seed)

    def _build(self, init):
        """Make the layers of ``self.config`` (see the class docstring)."""
        c = self.config
        img_size, patch_size, in_chans, num_classes, depth = (c["img_size"], c["patch_size"], c["in_chans"],
                                                              c["num_classes"], c["depth"])
        embed_dim, num_heads, mlp_ratio, qkv_bias, act = (c["embed_dim"], c["num_heads"], c["mlp_ratio"],
                                                          c["qkv_bias"], c["act"])
        drop_rate, attn_drop_rate, drop_path_rate = c["drop_rate"], c["attn_drop_rate"], c["drop_path_rate"]
        pos_embed, global_pool, seed = c["pos_embed"], c["global_pool"], c["seed"]
        self.xp = xp = get_xp(c["backend"])
        if xp is np:
            tune_allocator()
        self.dtype = dtype = np.dtype(c["dtype"])
        self.num_classes, self.embed_dim, self.global_pool = num_classes, embed_dim, global_pool
        with initialization(init):                                   # False: no random draws
            rng = np.random.default_rng(seed)
            layer_kw = dict(xp=xp, dtype=dtype)
            D = embed_dim

            self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, D, rng=rng, **layer_kw)
            grid, T = self.patch_embed.grid_size, 1 + self.patch_embed.num_patches
            self.cls_token = new_parameter(rng.normal(0, 1e-6, (1, 1, D)), xp, dtype, weight_decay=False)
            if pos_embed == "learned":
                self.pos_embed = new_parameter(trunc_normal(rng, (1, T, D), 0.02, dtype), xp, dtype, False)
                self.pos = LearnedPositionEmbedding(self.pos_embed)
            elif pos_embed == "learned_2d":
                self.pos_embed_row = new_parameter(trunc_normal(rng, (1, grid[0], D), 0.02, dtype), xp, dtype, False)
                self.pos_embed_col = new_parameter(trunc_normal(rng, (1, grid[1], D), 0.02, dtype), xp, dtype, False)
                self.pos = LearnedPositionEmbedding2D(self.pos_embed_row, self.pos_embed_col)
            else:
                self.pos = SinCosPositionEmbedding2D(grid, D, **layer_kw)
            self.cls = ClassToken(self.cls_token)
            self.pos_drop = Dropout(drop_rate, xp=xp)
            rates = np.linspace(0.0, drop_path_rate, depth)
            self.blocks = [Block(D, num_heads, mlp_ratio, qkv_bias, drop_rate, attn_drop_rate, float(r), act,
                                 rng=rng, **layer_kw) for r in rates]
            use_fc_norm = global_pool == "avg"                           # timm: norm -> pool -> fc_norm
            self.norm = None if use_fc_norm else LayerNorm(D, **layer_kw)
            self.pool = GlobalPool(global_pool)
            self.fc_norm = LayerNorm(D, **layer_kw) if use_fc_norm else None
            self.head_drop = Dropout(drop_rate, xp=xp)
            self.head = Linear(D, num_classes, rng=rng, **layer_kw)

    @property
    def stages(self):
        """The layers in forward order (``norm``/``fc_norm`` are absent in one pool kind each)."""
        stages = [self.patch_embed, self.cls, self.pos, self.pos_drop, *self.blocks,
                  self.norm, self.pool, self.fc_norm, self.head_drop, self.head]
        return [stage for stage in stages if stage is not None]

    # ----- forward / backward -----------------------------------------------------------------
    def forward(self, x):
        """Logits (B, num_classes) for images x (B, C, H, W)."""
        x = self._check_images(x)
        logits, how = self.runner.forward(x)
        self._save_for_backward(logits.shape, how)
        return logits

    def backward(self, dlogits):
        """Gradient of the images (B, C, H, W); fills every parameter's ``grad``."""
        shape, how = self._saved()
        dlogits = self._to_device(dlogits, "dlogits")
        if tuple(dlogits.shape) != tuple(shape):
            raise ValueError(f"dlogits must have the logits' shape {tuple(shape)}, got {tuple(dlogits.shape)}")
        return self.runner.backward(dlogits.astype(self.dtype, copy=False), how)

    @property
    def runner(self):
        """What runs the stages on this machine (numpyvit.execution; numpyvit.engine for NumPy)."""
        if self._runner is None:
            self._runner = runner_for(self)
        return self._runner

    def forward_stages(self, x):
        """The layers' forward on images already checked (one shard's work).

        With global_pool='token' the head reads only the [CLS] token, so the last block computes
        its output for that token alone (``Block.forward(x, first_tokens=1)``): its keys and values
        still come from every token, but its query, attention weights, projection, residual and
        MLP have 1 row instead of T. The logits and every gradient are those of the full
        computation; it saves about 3/4 of one block's work. Recording attention maps turns it off.
        """
        last = self.blocks[-1] if self._cls_only_last_block() else None
        for stage in self.stages:
            x = stage(x, first_tokens=1) if stage is last else stage(x)
        return x

    def _cls_only_last_block(self):
        return self.global_pool == "token" and not self.blocks[-1].attn.record

    def backward_stages(self, dy):
        for stage in reversed(self.stages):
            dy = stage.backward(dy)
        return dy

    def _to_device(self, x, what):
        if not hasattr(x, "shape") or not hasattr(x, "dtype"):
            raise TypeError(f"{what} must be a NumPy or CuPy array, got {type(x).__name__}; "
                            "wrap it with numpy.asarray(...)")
        if array_module(x) is not self.xp:
            if self.xp is np:
                raise TypeError(f"{what} is a CuPy (GPU) array but the model lives on the NumPy backend: "
                                "pass numpyvit.backend.to_numpy(x), or build the model with backend='cupy'")
            x = self.xp.asarray(x)                                   # host -> device, at the boundary
        return x

    def _check_images(self, x):
        x = self._to_device(x, "images")
        C, (H, W) = self.patch_embed.in_chans, self.patch_embed.img_size
        expected = f"(B, {C}, {H}, {W})"
        if x.ndim != 4:
            hint = " (add the channel axis: x[:, None])" if x.ndim == 3 and C == 1 else ""
            raise ValueError(f"images must have shape {expected}, got {tuple(x.shape)}{hint}")
        if x.shape[1] != C:
            raise ValueError(f"images must have {C} channel(s), shape {expected}; got {x.shape[1]} "
                             f"channels in shape {tuple(x.shape)} (build the model with in_chans={x.shape[1]} "
                             "or convert the images)")
        if tuple(x.shape[2:]) != (H, W):
            raise ValueError(f"images must be {H}x{W} for this model, got {x.shape[2]}x{x.shape[3]}: resize "
                             f"them, or build the model with img_size=({x.shape[2]}, {x.shape[3]}) "
                             f"(both sides divisible by the patch size {self.patch_embed.patch_size})")
        if not np.issubdtype(x.dtype, np.floating):
            raise TypeError(f"images must be floating point, got {x.dtype}: convert them, e.g. "
                            "x.astype(numpy.float32) / 255, then normalize")
        if x.shape[0] == 0:
            raise ValueError(f"the batch holds no images (shape {tuple(x.shape)}): pass at least one")
        return x.astype(self.dtype, copy=False)

    # ----- looking inside --------------------------------------------------------------------------
    def attention_maps(self, x):
        """The attention probabilities of every block for images x, computed in eval mode:
        a list of ``depth`` arrays (B, heads, T, T), token 0 being [CLS]."""
        attentions = [block.attn for block in self.blocks]
        with self.inference():
            try:
                for attn in attentions:
                    attn.record = True
                self.forward(x)
                return [attn.recorded for attn in attentions]
            finally:
                for attn in attentions:
                    attn.record, attn.recorded = False, None

    def patch_position_embeddings(self):
        """The position embedding of each patch (N, D), row-major over the patch grid."""
        return self.pos.table()[0, 1:]

