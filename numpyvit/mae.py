"""A masked autoencoder (MAE; He et al. 2021, "Masked Autoencoders Are Scalable Vision Learners"):
a ViT learns from images without labels by reconstructing the patches it was not shown.

    encoder = numpyvit.create_model("mnist_tiny")                    # any ViT with global_pool="token"
    mae = MaskedAutoencoder(encoder, decoder_dim=64, decoder_depth=2, decoder_heads=4)
    rows, hidden = random_keep(rng, B, N, mae.mask_ratio)            # numpyvit.layers.masking
    loss = mae(x, rows, hidden);  mae.backward();  optimizer.step()  # AdamW(mae.parameters())
    encoder                                                          # now pretrained: fine-tune it

One step (docs/math.md, section 14; the textbook is reference.mae_forward / mae_backward, and
tests/test_mae.py pins this to it):
    z = [cls; patch_embed(x)] + E_pos           the classifier's tokens (B, T, D), T = 1 + N
    z = z[rows]                                 each image keeps [CLS] and K = N (1 - mask_ratio) patches
    z = norm(blocks(z))                         the encoder on the kept tokens only (B, 1 + K, D)
    full = fill(decoder_embed(z), rows) + E_dec every token again (B, T, E): kept ones from the
                                                encoder, the rest the learned mask token; fixed
                                                sine-cosine positions (MAE's decoder has them too)
    pred = decoder_pred(decoder_norm(decoder_blocks(full))[:, 1:])     (B, N, C Ph Pw) pixels
    loss = MSE(pred, target) over the hidden patches only; target: each patch's pixels, normalized
           per patch with norm_pix_loss (the paper's better choice)
The encoder's parameters keep timm's names and the decoder's take MAE's (decoder_embed, mask_token,
decoder_blocks.i, decoder_norm, decoder_pred), so ``encoder.state_dict()`` is a ViT's, and a
checkpoint's ``model.*`` arrays minus the decoder's load as ViT weights (numpyvit.weights).
"""
import numpy as np

from . import reference
from .errors import ConfigError
from .layers import Block, LayerNorm, Linear
from .layers.base import Module, new_parameter, trunc_normal
from .layers.masking import MaskFill, TokenRows
from .layers.tokens import sincos_table_2d
from .losses import MaskedMSELoss

DECODER_PREFIXES = ("decoder_", "mask_token")     # what a ViT that loads MAE weights leaves out


class MaskedAutoencoder(Module):
    """A ViT ``encoder`` (a VisionTransformer, with global_pool='token') and a light decoder:
    decoder_depth blocks of width decoder_dim with decoder_heads heads; mask_ratio of the patches
    hidden; norm_pix_loss: predict each patch normalized by its own mean and variance."""

    def __init__(self, encoder, decoder_dim=128, decoder_depth=2, decoder_heads=4, decoder_mlp_ratio=4.0,
                 mask_ratio=0.75, norm_pix_loss=True, seed=0):
        if encoder.global_pool != "token":
            raise ConfigError("MAE pretrains a ViT with global_pool='token' (the encoder ends in its LayerNorm)")
        if decoder_dim % decoder_heads or decoder_dim % 4:
            raise ConfigError(f"decoder_dim {decoder_dim} must divide into decoder_heads {decoder_heads} and by 4 "
                              "(its sine-cosine positions)")
        if not 0.0 <= mask_ratio < 1.0:
            raise ConfigError(f"mask_ratio must be in [0, 1), got {mask_ratio}")
        self.encoder, self.xp, self.dtype = encoder, encoder.xp, encoder.dtype
        self.mask_ratio, self.norm_pix_loss = mask_ratio, norm_pix_loss
        self.config = dict(decoder_dim=decoder_dim, decoder_depth=decoder_depth, decoder_heads=decoder_heads,
                           decoder_mlp_ratio=decoder_mlp_ratio, mask_ratio=mask_ratio, norm_pix_loss=norm_pix_loss,
                           seed=seed)
        pe = encoder.patch_embed
        rng, kw = np.random.default_rng([seed, 7]), dict(xp=encoder.xp, dtype=encoder.dtype)
        self.rows = TokenRows()
        self.decoder_embed = Linear(encoder.embed_dim, decoder_dim, rng=rng, **kw)
        self.mask_token = new_parameter(trunc_normal(rng, (1, 1, decoder_dim), 0.02), encoder.xp, encoder.dtype,
                                        weight_decay=False)
        self.fill = MaskFill(self.mask_token)
        self.decoder_pos = encoder.xp.asarray(sincos_table_2d(pe.grid_size, decoder_dim), dtype=encoder.dtype)
        self.decoder_blocks = [Block(decoder_dim, decoder_heads, decoder_mlp_ratio, act=encoder.config["act"], rng=rng,
                                     **kw) for _ in range(decoder_depth)]
        self.decoder_norm = LayerNorm(decoder_dim, **kw)
        self.decoder_pred = Linear(decoder_dim, pe.in_chans * pe.patch_size[0] * pe.patch_size[1], rng=rng, **kw)
        self.criterion = MaskedMSELoss()

    def _named_parameters(self, prefix):
        """The encoder's under timm's names (its classifier head left out: not pretrained), then the
        decoder's."""
        for name, param in self.encoder._named_parameters(prefix):
            if not name.startswith(prefix + "head."):
                yield name, param
        for name, param in super()._named_parameters(prefix):
            if not name.startswith(prefix + "encoder."):
                yield name, param

    def predict(self, x, rows):
        """Images x (B, C, H, W) and the kept ``rows`` (B, 1 + K) -> the predicted pixels of every
        patch (B, N, C Ph Pw) (in the target's units: normalized per patch with norm_pix_loss)."""
        enc = self.encoder
        z = enc.pos_drop(enc.pos(enc.cls(enc.patch_embed(x))))      # (B, T, D), as the classifier's
        z = self.rows(z, rows)                                       # (B, 1 + K, D)
        for block in enc.blocks:
            z = block(z)
        full = self.fill(self.decoder_embed(enc.norm(z)), rows, self.decoder_pos.shape[1])   # (B, T, E)
        full += self.decoder_pos                                     # fixed: the gradient passes unchanged
        for block in self.decoder_blocks:
            full = block(full)
        return self.decoder_pred(self.decoder_norm(full)[:, 1:])    # [CLS]'s row is not a patch

    def forward(self, x, rows, hidden):
        """The loss (a 0-d array) of images x (B, C, H, W), keeping ``rows`` and hiding ``hidden``
        (numpyvit.layers.masking.random_keep)."""
        x = self.encoder._check_images(x)
        target = reference.patch_targets(x, self.encoder.patch_embed.patch_size, self.norm_pix_loss)
        return self.criterion(self.predict(x, rows), target, hidden)

    def backward(self, dloss=1.0):
        """Fills every parameter's ``grad`` (encoder and decoder) from the loss."""
        enc, xp = self.encoder, self.xp
        drows = self.decoder_pred.backward(self.criterion.backward(dloss))     # (B, N, E)
        dfull = xp.zeros((drows.shape[0], 1 + drows.shape[1], drows.shape[2]), dtype=drows.dtype)
        dfull[:, 1:] = drows                                         # [CLS]'s row: no prediction, no gradient
        dfull = self.decoder_norm.backward(dfull)
        for block in reversed(self.decoder_blocks):
            dfull = block.backward(dfull)
        dz = enc.norm.backward(self.decoder_embed.backward(self.fill.backward(dfull)))
        for block in reversed(enc.blocks):
            dz = block.backward(dz)
        dz = enc.cls.backward(enc.pos.backward(enc.pos_drop.backward(self.rows.backward(dz))))
        enc.patch_embed.backward(dz)


def encoder_weights(state):
    """A MAE's {name: array} -> the encoder's alone, a ViT's (the decoder dropped)."""
    return {name: value for name, value in state.items() if not name.startswith(DECODER_PREFIXES)}
