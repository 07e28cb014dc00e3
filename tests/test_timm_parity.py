"""numpyvit against timm itself, on identical weights (runs where torch, timm and safetensors are
installed, e.g. a separate virtualenv: `pip install torch==2.14.1 torchvision==0.29.1 timm safetensors`;
skipped elsewhere; they are never numpyvit's dependencies).

Randomly initialized timm models are saved with timm's own Hugging Face writer (model.safetensors
and config.json) and loaded by numpyvit: the same logits (float64 <= 1e-10, float32 <= 1e-5) and,
for a random upstream gradient, the same input gradient (float64 <= 1e-8). Also: numpyvit's
files load in timm, JAX .npz files load the same in both, position embeddings resample as
timm's resample_abs_pos_embed, and a photo is prepared as timm's evaluation transform does."""
import numpy as np
import pytest

import numpyvit
from conftest import oracle
from numpyvit.data.images import eval_transform
from numpyvit.weights import read_safetensors, resample_pos_embed, save_weights, to_jax

pytestmark = pytest.mark.oracle
torch = oracle("torch")
timm = oracle("timm")
oracle("safetensors")

ODD = dict(img_size=(48, 80), patch_size=16, embed_dim=96, depth=3, num_heads=3, mlp_ratio=3.0, num_classes=7)
MODELS = [("vit_tiny_patch16_224", {}), ("vit_base_patch16_224", {}), ("odd", ODD)]


def timm_model(name, kwargs, dtype):
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224" if name == "odd" else name, pretrained=False, **kwargs)
    for p in model.parameters():                                     # away from the init's special values
        p.data += 0.02 * torch.randn_like(p)
    return model.to(getattr(torch, dtype)).eval()


def numpyvit_from_timm_files(model, name, tmp_path, dtype):
    from timm.models import save_for_hf

    save_for_hf(model, tmp_path, safe_serialization=True)            # model.safetensors + config.json
    overrides = ODD if name == "odd" else {}                          # the odd one: a preset with its sizes
    return numpyvit.create_model("vit_tiny_patch16_224" if name == "odd" else name,
                                 weights=tmp_path / "model.safetensors", dtype=dtype, **overrides)


@pytest.mark.parametrize("dtype, tol", [("float64", 1e-10), ("float32", 1e-5)])
@pytest.mark.parametrize("name, kwargs", MODELS, ids=[m[0] for m in MODELS])
def test_timm_weights_give_the_same_logits_and_input_gradient(tmp_path, name, kwargs, dtype, tol):
    theirs = timm_model(name, kwargs, dtype)
    ours = numpyvit_from_timm_files(theirs, name, tmp_path, dtype).eval()
    C, (H, W) = ours.patch_embed.in_chans, ours.patch_embed.img_size
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, C, H, W)).astype(dtype)
    tx = torch.from_numpy(x).requires_grad_(True)
    their_logits = theirs(tx)
    our_logits = ours(x)
    rel = np.linalg.norm(our_logits - their_logits.detach().numpy()) / np.linalg.norm(our_logits)
    assert rel <= tol, f"logits differ by {rel:.2e}"
    if dtype == "float64":
        g = rng.standard_normal(our_logits.shape)
        their_logits.backward(torch.from_numpy(g))
        dx = ours.backward(g)
        rel = np.linalg.norm(dx - tx.grad.numpy()) / np.linalg.norm(dx)
        assert rel <= 1e-8, f"input gradients differ by {rel:.2e}"
    assert ours.pretrained_cfg["mean"] == [0.5, 0.5, 0.5] and ours.pretrained_cfg["crop_pct"] == 0.9   # config.json


def test_numpyvit_weights_load_in_timm(tmp_path):
    ours = numpyvit.create_model("vit_tiny_patch16_224", depth=3, seed=4)
    save_weights(ours, tmp_path / "model.safetensors")
    theirs = timm.create_model("vit_tiny_patch16_224", pretrained=True, depth=3,
                               pretrained_cfg_overlay=dict(file=str(tmp_path / "model.safetensors"))).eval()
    x = np.random.default_rng(1).standard_normal((2, 3, 224, 224)).astype(np.float32)
    with ours.inference(), torch.no_grad():
        mine, timms = ours(x), theirs(torch.from_numpy(x)).numpy()
    assert np.linalg.norm(mine - timms) / np.linalg.norm(mine) <= 1e-5


def test_a_jax_npz_loads_the_same_in_numpyvit_and_timm(tmp_path):
    from timm.models.vision_transformer import _load_weights

    source = numpyvit.create_model("vit_tiny_patch16_224", dtype="float64", depth=2, seed=5)
    np.savez(tmp_path / "ViT-Ti_16.npz", **to_jax({k: np.asarray(v) for k, v in source.state_dict().items()}, 3))
    ours = numpyvit.create_model("vit_tiny_patch16_224", weights=tmp_path / "ViT-Ti_16.npz", depth=2, dtype="float64")
    theirs = timm.create_model("vit_tiny_patch16_224", pretrained=False, depth=2).double().eval()
    _load_weights(theirs, str(tmp_path / "ViT-Ti_16.npz"))
    x = np.random.default_rng(2).standard_normal((2, 3, 224, 224))
    with ours.inference(), torch.no_grad():
        np.testing.assert_allclose(ours(x), theirs(torch.from_numpy(x)).numpy(), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("old, new", [((14, 14), (24, 24)), ((14, 14), (7, 7)), ((14, 14), (10, 21)),
                                      ((6, 9), (13, 4))])
def test_position_embeddings_resample_as_timm(old, new):
    from timm.layers import resample_abs_pos_embed

    table = np.random.default_rng(3).standard_normal((1, 1 + old[0] * old[1], 32)).astype(np.float32)
    theirs = resample_abs_pos_embed(torch.from_numpy(table), list(new), list(old), num_prefix_tokens=1).numpy()
    ours = resample_pos_embed(table, new, old)
    assert np.abs(ours - theirs).max() <= 1e-5


def test_bf16_and_f16_files_written_by_torch_read_the_same(tmp_path):
    from safetensors.torch import save_file

    w = torch.randn(5, 7)
    save_file({"bf": w.to(torch.bfloat16), "half": w.to(torch.float16)}, str(tmp_path / "low.safetensors"))
    tensors, _ = read_safetensors(tmp_path / "low.safetensors")
    np.testing.assert_array_equal(tensors["bf"], w.to(torch.bfloat16).float().numpy())
    np.testing.assert_array_equal(tensors["half"], w.to(torch.float16).float().numpy())


@pytest.mark.parametrize("img_size", [224, (160, 256)])
def test_a_photo_is_prepared_as_timm_prepares_it(img_size):
    import matplotlib.cbook
    from PIL import Image
    from timm.data import create_transform

    photo = matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)
    transform = create_transform(input_size=(3, *((img_size,) * 2 if isinstance(img_size, int) else img_size)),
                                 interpolation="bicubic", mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), crop_pct=0.9)
    theirs = transform(Image.open(photo).convert("RGB")).numpy()
    ours = eval_transform(photo, img_size, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), 0.9)
    assert ours.shape == theirs.shape and np.abs(ours - theirs).max() <= 1e-6


def test_timms_mae_weights_load_as_the_encoder(tmp_path):
    """timm's vit_base_patch16_224.mae (the MAE paper's released encoder: no head, the classes
    unknown) saved by timm loads into numpyvit with a fresh head; with that head set to the identity
    numpyvit's logits are timm's features."""
    torch.manual_seed(0)
    theirs = timm.create_model("vit_base_patch16_224.mae", pretrained=False)
    for p in theirs.parameters():
        p.data += 0.02 * torch.randn_like(p)
    theirs = theirs.double().eval()
    assert theirs.num_classes == 0 and "head.weight" not in theirs.state_dict()
    from timm.models import save_for_hf

    save_for_hf(theirs, tmp_path, safe_serialization=True)
    ours = numpyvit.create_model("vit_base_patch16_224", weights=tmp_path / "model.safetensors", dtype="float64",
                                 num_classes=768).eval()
    ours.head.weight.data[...] = np.eye(768)
    ours.head.bias.data[...] = 0
    x = np.random.default_rng(1).standard_normal((2, 3, 224, 224))
    features = theirs(torch.from_numpy(x)).detach().numpy()          # (2, 768): the [CLS] token after norm
    assert np.linalg.norm(ours(x) - features) / np.linalg.norm(features) <= 1e-10
