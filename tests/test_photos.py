"""Photos and image folders: the evaluation transform, folder datasets (generated images, trained
end to end), RGB batches, saliency maps, frozen parameters, and the classify / finetune /
visualize demos with pretrained weights. (Agreement with timm's own transform:
tests/test_timm_parity.py.)"""
import json

import numpy as np
import pytest
from PIL import Image

import numpyvit
from numpyvit import data, viz
from numpyvit.data.images import eval_transform, imagenet_classes, resize_and_crop
from numpyvit.weights import save_weights
from test_demos import demo

COLOURS = {"red": (200, 30, 30), "green": (30, 180, 40), "blue": (40, 60, 210)}


def photo(path, colour, size=(48, 36), seed=0):
    """A noisy photo of one colour with a lighter square, as a PNG or JPG."""
    rng = np.random.default_rng(seed)
    pixels = np.clip(np.array(colour) + rng.normal(0, 25, (size[1], size[0], 3)), 0, 255)
    pixels[5:15, 5:15] += 40
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(path)
    return path


@pytest.fixture
def folder(tmp_path):
    """photos/<colour>/<n>.png|jpg: 12 images of each of three colours."""
    root = tmp_path / "photos"
    for name, colour in COLOURS.items():
        (root / name).mkdir(parents=True)
        for i in range(12):
            photo(root / name / f"{i}.{'png' if i % 2 else 'jpg'}", colour, seed=i)
    (root / "red" / "notes.txt").write_text("not an image")          # ignored
    return root


def test_the_eval_transform_resizes_the_short_side_crops_the_center_and_normalizes(tmp_path):
    path = photo(tmp_path / "wide.png", (100, 150, 200), size=(300, 200))
    image = resize_and_crop(Image.open(path), 32, crop_pct=0.8)       # short side 200 -> 40, long 60
    assert image.size == (32, 32)
    x = eval_transform(path, 32, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), crop_pct=0.8)
    assert x.shape == (3, 32, 32) and x.dtype == np.float32
    np.testing.assert_allclose(x[:, 20, 20] * 0.25 + 0.5, np.array([100, 150, 200]) / 255, atol=0.25)
    gray = eval_transform(path, (16, 24), mean=0.5, std=0.5, channels=1)
    assert gray.shape == (1, 16, 24)
    with pytest.raises(ValueError, match="unsupported image type '.txt'"):
        eval_transform(tmp_path / "a.txt", 32, 0.5, 0.5)
    (tmp_path / "broken.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(ValueError, match="broken.jpg could not be read as an image"):
        eval_transform(tmp_path / "broken.jpg", 32, 0.5, 0.5)
    with pytest.raises(FileNotFoundError, match="no image file at"):
        eval_transform(tmp_path / "missing.png", 32, 0.5, 0.5)


@pytest.mark.parametrize("size, img_size, crop_pct", [((300, 200), 32, 0.8), ((40, 90), (24, 16), 0.9),
                                                      ((17, 17), 224, 0.875)])
def test_a_flat_colour_photo_becomes_exactly_its_normalized_colour(tmp_path, size, img_size, crop_pct):
    """Resizing and cropping keep a flat colour flat, so every pixel must be (c / 255 - mean) / std
    exactly (float32 rounding): a skipped or misplaced normalization cannot pass."""
    colour, mean, std = (51, 102, 204), (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    Image.fromarray(np.full((size[1], size[0], 3), colour, dtype=np.uint8)).save(tmp_path / "flat.png")
    x = eval_transform(tmp_path / "flat.png", img_size, mean, std, crop_pct)
    expected = (np.array(colour) / 255 - np.array(mean)) / np.array(std)
    np.testing.assert_allclose(x, np.broadcast_to(expected[:, None, None], x.shape), rtol=2e-7, atol=2e-7)


def test_the_crop_is_the_center_of_the_resized_photo(tmp_path):
    """A wide photo, black | white | black in thirds: the center crop is all white (a crop from the
    left or right edge would be black)."""
    pixels = np.zeros((100, 300, 3), dtype=np.uint8)
    pixels[:, 100:200] = 255
    Image.fromarray(pixels).save(tmp_path / "thirds.png")
    x = eval_transform(tmp_path / "thirds.png", 20, mean=0.0, std=1.0, crop_pct=1.0)   # 60 x 20, keep 20 x 20
    assert x[:, :, 2:-2].min() > 0.99 and x.mean() > 0.9


def test_imagenet_class_names_are_the_thousand_in_order():
    names = imagenet_classes()
    assert len(names) == 1000 and names[0].startswith("tench") and names[281].startswith("tabby")
    assert names[999].startswith("toilet tissue")


def test_rgb_batches_are_normalized_per_channel():
    images = np.random.default_rng(0).integers(0, 256, (4, 3, 8, 8), dtype=np.uint8)
    x = data.normalize(images, (0.1, 0.5, 0.9), (0.5, 0.25, 0.2))
    expected = (images / 255.0 - np.array([0.1, 0.5, 0.9])[:, None, None]) / np.array([0.5, 0.25, 0.2])[:, None, None]
    np.testing.assert_allclose(x, expected, rtol=1e-6, atol=1e-6)
    (batch, labels), = list(data.iterate_batches(images, np.arange(4), 4, shuffle=False, mean=(0.1, 0.5, 0.9),
                                                 std=(0.5, 0.25, 0.2)))
    np.testing.assert_array_equal(batch, x)


def test_an_image_folder_is_a_dataset_and_trains_end_to_end(folder, tmp_path):
    ds = data.load_image_folder(folder, img_size=16, test_fraction=0.25)
    assert ds.classes == ("blue", "green", "red") and ds.name == f"folder:{folder}"
    assert ds.train_images.shape[1:] == (3, 16, 16) and ds.train_images.dtype == np.uint8
    assert len(ds.train_labels) + len(ds.test_labels) == 36 and len(ds.test_labels) > 0
    assert len(ds.mean) == 3 and all(0 < s < 1 for s in ds.std)
    model = numpyvit.VisionTransformer(img_size=16, patch_size=4, in_chans=3, num_classes=3, embed_dim=16,
                                       depth=1, num_heads=2)
    config = numpyvit.train.TrainConfig(epochs=6, batch_size=8, lr=3e-3, warmup_epochs=0.5, hflip=True,
                                        max_rotate=0.0, eval_batch_size=16)
    history = numpyvit.train.fit(model, ds, config, tmp_path / "run", log=None)
    assert history["epochs"][-1]["test_acc"] >= 0.9                     # colours are easy
    split = tmp_path / "split"
    for part in ("train", "val"):
        for name in COLOURS:
            (split / part / name).mkdir(parents=True)
            photo(split / part / name / "0.png", COLOURS[name])
    ds = data.load_image_folder(split, img_size=8, channels=1, mean=0.5, std=0.5)
    assert ds.train_images.shape == (3, 1, 8, 8) and len(ds.test_labels) == 3 and ds.mean == 0.5
    with pytest.raises(ValueError, match="one subfolder per class"):
        data.load_image_folder(folder / "red", img_size=8)


def test_saliency_is_the_gradient_of_the_predicted_logit_and_leaves_no_trace(rng):
    model = numpyvit.VisionTransformer(img_size=8, patch_size=4, in_chans=3, num_classes=4, embed_dim=8, depth=1,
                                       num_heads=2, dtype="float64", drop_rate=0.2)
    x = rng.standard_normal((2, 3, 8, 8))
    maps, target = viz.saliency(model, x)
    with model.inference():
        base = model(x)
    assert np.array_equal(target, base.argmax(axis=1)) and maps.shape == (2, 8, 8)
    h, (b, c, i, j) = 1e-6, (1, 2, 3, 5)                              # one pixel, by central differences
    plus, minus = x.copy(), x.copy()
    plus[b, c, i, j] += h
    minus[b, c, i, j] -= h
    with model.inference():
        numeric = (model(plus)[b, target[b]] - model(minus)[b, target[b]]) / (2 * h)
    dx_max = maps[b, i, j]
    assert abs(numeric) <= dx_max + 1e-8                              # the map is the max over channels
    assert model.training and not model.has_cache()
    assert all(p.grad is None and p.requires_grad for p in model.parameters())


def test_frozen_parameters_get_no_gradient_and_are_not_optimized(rng):
    model = numpyvit.create_model("mnist_tiny", depth=1)
    for name, p in model.named_parameters():
        p.requires_grad = name.startswith("head.")
    optimizer = numpyvit.AdamW(model.parameters(), lr=1e-2)
    assert sum(p.data.size for g in optimizer.groups for p in g.params) == model.head.weight.data.size + 10
    before = {name: p.data.copy() for name, p in model.named_parameters()}
    loss = numpyvit.CrossEntropyLoss()
    loss(model(rng.standard_normal((4, 1, 28, 28)).astype(np.float32)), np.arange(4))
    model.backward(loss.backward())
    optimizer.step()
    for name, p in model.named_parameters():
        changed = not np.array_equal(p.data, before[name])
        assert changed == name.startswith("head."), name
        assert (p.grad is None) != p.requires_grad or name.startswith("head."), name
    with pytest.raises(ValueError, match="all frozen"):
        numpyvit.AdamW([p for p in model.parameters() if not p.requires_grad])


# ----- the demos with pretrained weights ---------------------------------------------------------------
@pytest.fixture
def weights(tmp_path):
    model = numpyvit.create_model("vit_tiny_patch16_224", depth=1, img_size=32, seed=2)
    save_weights(model, tmp_path / "model.safetensors", classes=["blue", "green", "red"] + [f"c{k}" for k in
                                                                                            range(997)])
    return tmp_path / "model.safetensors"


def test_a_preset_that_contradicts_the_file_is_refused(weights):
    with pytest.raises(numpyvit.weights.WeightsError, match=r"another architecture than vit_tiny_patch16_224: "
                                                            r"depth 12 \(preset\) vs 1 \(file\)"):
        numpyvit.create_model("vit_tiny_patch16_224", weights=weights)
    assert numpyvit.create_model("vit_tiny_patch16_224", weights=weights, depth=1).config["img_size"] == 32


def test_classify_prints_the_top_classes_with_their_names(weights, folder, capsys):
    files = [str(folder / "red" / "0.jpg"), str(folder / "red" / "notes.txt")]
    assert demo("classify").main(["--weights", str(weights), "--top", "3", *files]) == 2   # one file unreadable
    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert lines[0] == f"{files[0]}:" and len(lines) == 4 and all("%" in line for line in lines[1:])
    assert "unsupported image type '.txt'" in err


def test_finetune_a_folder_with_a_new_head_frozen_backbone_and_resume(weights, folder, tmp_path, capsys):
    finetune, out = demo("finetune"), tmp_path / "ft"
    args = ["--weights", str(weights), "--data", str(folder), "--epochs", "1",
            "--batch-size", "8", "--freeze-backbone", "--out", str(out)]
    assert finetune.main(args) == 0
    text = capsys.readouterr().out
    assert "3 classes; 579 of" in text                                 # the head alone: 3 x 192 + 3
    model = numpyvit.io.load_model(out)
    assert model.num_classes == 3 and model.config["img_size"] == 32
    assert finetune.main(["--out", str(out), "--resume", "--epochs", "2"]) == 0
    history = json.loads((out / "history.json").read_text())
    assert [r["epoch"] for r in history["epochs"]] == [1, 2]
    assert json.loads((out / "finetune.json").read_text())["freeze"] is True


def test_finetune_mnist_by_name_against_the_same_model_from_scratch(tmp_path, monkeypatch, capsys):
    from test_train import tiny_dataset

    monkeypatch.setattr(numpyvit.data, "load_dataset", lambda name, data_dir=None: tiny_dataset())
    source = numpyvit.create_model("mnist_tiny", depth=1, embed_dim=16, num_heads=2)
    numpyvit.io.save_model(source, tmp_path / "mnist" / "checkpoint.npz")
    for extra in ([], ["--from-scratch"]):
        assert demo("finetune").main(["--weights", str(tmp_path / "mnist"), "--data", "mnist", "--epochs", "1",
                                      "--batch-size", "16", "--out", str(tmp_path / f"ft{len(extra)}"), *extra]) == 0
    out = capsys.readouterr().out
    assert "from scratch" in out and f"from {tmp_path / 'mnist'}" in out


def test_visualize_draws_over_photos_with_pretrained_weights(weights, folder, tmp_path):
    visualize = demo("visualize")
    figures = visualize.draw(visualize.parse_args(["--weights", str(weights), "--image", str(folder / "blue" / "1.png"),
                                                   "--out", str(tmp_path / "figures")]))
    names = {f.name for f in figures}
    assert {"attention_rollout.png", "saliency.png", "attention_heads_1.png", "position_similarity.png"} <= names
    assert all(f.stat().st_size > 1000 for f in figures)
