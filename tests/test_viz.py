"""numpyvit.viz: every quantity against a hand computation, every figure rendered, the demo end to end.

The quantities use small hand-made attention stacks whose answers are worked out in the
comments; the figures are drawn with Agg and read back; the demo runs on a tiny random model
saved to tmp_path with a synthetic dataset in place of MNIST (no files, no network).
"""
import json
import re
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest

import numpyvit
from numpyvit import data, viz
from numpyvit.io import save_model
from scripts import load_script

ROOT = Path(__file__).resolve().parents[1]
image_module = pytest.importorskip("matplotlib.image")


# ----- attention rollout ---------------------------------------------------------------------
def test_rollout_equals_hand_computation():
    # layer 1, two heads; their mean is [[.3, .35, .35], [.5, .5, 0], [.1, .15, .75]], so
    # A'_1 = 0.5 mean + 0.5 I = [[.65, .175, .175], [.25, .75, 0], [.05, .075, .875]]
    layer1 = np.array([[[.5, .5, 0], [0, 1, 0], [.2, .3, .5]],
                       [[.1, .2, .7], [1, 0, 0], [0, 0, 1]]])[None]          # (B=1, heads=2, 3, 3)
    # layer 2, both heads the cyclic shift: A'_2 = [[.5, .5, 0], [0, .5, .5], [.5, 0, .5]]
    shift = np.array([[0, 1, 0], [0, 0, 1], [1, 0, 0]], dtype=float)
    layer2 = np.stack([shift, shift])[None]
    # R = A'_2 A'_1: each row of R averages two rows of A'_1
    expected = np.array([[.45, .4625, .0875],
                         [.15, .4125, .4375],
                         [.35, .125, .525]])
    rollout = viz.attention_rollout([layer1, layer2])
    np.testing.assert_allclose(rollout[0], expected, atol=1e-12)
    np.testing.assert_allclose(viz.attention_rollout([layer1])[0],
                               [[.65, .175, .175], [.25, .75, 0], [.05, .075, .875]], atol=1e-12)


def test_rollout_renormalizes_rows_and_keeps_them_stochastic():
    A = np.full((1, 1, 2, 2), 2.0)                                        # rows sum to 4, not 1
    # 0.5 A + 0.5 I = [[1.5, 1], [1, 1.5]] -> rows / 2.5
    np.testing.assert_allclose(viz.attention_rollout([A])[0], [[.6, .4], [.4, .6]])
    rng = np.random.default_rng(0)
    stack = [rng.dirichlet(np.ones(5), size=(3, 2, 5)) for _ in range(4)]  # L=4 x (B=3, 2, 5, 5)
    np.testing.assert_allclose(viz.attention_rollout(stack).sum(axis=-1), 1.0)


def test_cls_attention_maps_take_the_cls_row_over_the_patch_grid():
    A = np.zeros((1, 1, 7, 7))
    A[0, 0, 0] = np.arange(7) / 21                                        # [CLS] row, keys 0..6
    np.testing.assert_allclose(viz.cls_attention_maps(A, (2, 3))[0, 0], [[1, 2, 3], [4, 5, 6]] / np.float64(21))
    with pytest.raises(ValueError, match="patch grid"):
        viz.cls_attention_maps(A, (2, 2))


def test_upsample_fills_each_patch_with_its_value():
    up = viz.upsample(np.array([[1, 2], [3, 4]]), (2, 3))
    assert up.shape == (4, 6)
    np.testing.assert_array_equal(up[:2, :3], 1)
    np.testing.assert_array_equal(up[2:, 3:], 4)


# ----- mean attention distance ----------------------------------------------------------------
GRID, PATCH = (2, 3), (4, 5)   # 6 patches of 4 rows x 5 columns of pixels: centres (4r + 2, 5c + 2.5)


def test_attention_distance_of_all_queries_on_one_patch():
    T = 7
    on_first = np.zeros((T, T))
    on_first[:, 0] = 0.5                                                  # half the mass on [CLS] ...
    on_first[:, 1] = 0.5                                                  # ... half on patch (0, 0)
    on_self = np.eye(T)
    A = np.stack([on_first, on_self])[None].repeat(2, axis=0)            # (B=2, heads=2, T, T)
    # [CLS] is dropped and the rows renormalized, so every query sits fully on patch (0, 0); the
    # distances from (0, 0) to the 6 patches are 0, 5, 10, 4, sqrt(4^2 + 5^2), sqrt(4^2 + 10^2)
    expected = (0 + 5 + 10 + 4 + np.sqrt(41) + np.sqrt(116)) / 6
    distances = viz.mean_attention_distance([A, A[:, ::-1]], GRID, PATCH)    # (L=2, heads=2)
    np.testing.assert_allclose(distances, [[expected, 0], [0, expected]], atol=1e-12)


def test_attention_distance_of_uniform_attention_is_the_mean_patch_distance():
    A = np.full((1, 1, 7, 7), 1 / 7)
    d = viz.patch_distances(GRID, PATCH)
    assert d[0, 4] == pytest.approx(np.sqrt(41)) and np.allclose(d, d.T) and np.all(np.diag(d) == 0)
    np.testing.assert_allclose(viz.mean_attention_distance([A], GRID, PATCH), [[d.mean()]])


def test_attention_distance_refuses_a_mismatched_grid():
    with pytest.raises(ValueError, match="patch grid"):
        viz.mean_attention_distance([np.full((1, 1, 5, 5), 0.2)], GRID, PATCH)
    with pytest.raises(ValueError, match="one shape"):
        viz.mean_attention_distance([np.ones((1, 1, 7, 7)), np.ones((1, 2, 7, 7))], GRID, PATCH)


# ----- position similarity, filter PCA, confusion matrix --------------------------------------
def test_position_similarity():
    np.testing.assert_allclose(viz.position_similarity(np.tile([[1.0, -2.0, 3.0]], (5, 1))), np.ones((5, 5)))
    np.testing.assert_allclose(viz.position_similarity(np.eye(4) * 3), np.eye(4))
    sim = viz.position_similarity(np.random.default_rng(0).normal(size=(16, 8)))
    np.testing.assert_allclose(np.diag(sim), 1.0)
    np.testing.assert_allclose(sim, sim.T)
    assert sim.min() >= -1 and sim.max() <= 1
    with pytest.raises(ValueError, match="all zero"):
        viz.position_similarity(np.array([[1.0, 0.0], [0.0, 0.0]]))


def test_patch_filter_pca_components_and_variance():
    rng = np.random.default_rng(0)
    weight = rng.normal(size=(64, 1, 7, 7))
    components, ratio = viz.patch_filter_pca(weight, 10)
    flat = components.reshape(10, -1)
    assert components.shape == (10, 1, 7, 7)
    np.testing.assert_allclose(flat @ flat.T, np.eye(10), atol=1e-10)   # orthonormal
    assert np.all(np.diff(ratio) <= 0) and np.all(ratio >= 0) and ratio.sum() <= 1
    X = weight.reshape(64, -1) - weight.reshape(64, -1).mean(axis=0)
    eigenvalues = np.linalg.eigvalsh(X.T @ X)[::-1]                       # descending
    np.testing.assert_allclose(ratio, eigenvalues[:10] / eigenvalues.sum())
    assert viz.patch_filter_pca(weight, 49)[1].sum() == pytest.approx(1.0)


def test_patch_filter_pca_finds_a_planted_direction():
    rng = np.random.default_rng(1)
    direction = rng.normal(size=(3, 2, 2))
    direction /= np.linalg.norm(direction)
    weight = rng.normal(size=(40, 1, 1, 1)) * 10 * direction + 0.01 * rng.normal(size=(40, 3, 2, 2))
    (first, *_), ratio = viz.patch_filter_pca(weight, 3)
    sign = np.sign(direction.ravel()[np.abs(direction).argmax()])          # largest entry made positive
    np.testing.assert_allclose(first, sign * direction, atol=1e-3)
    assert ratio[0] > 0.99
    with pytest.raises(ValueError, match="k must be"):
        viz.patch_filter_pca(weight, 13)


def test_confusion_matrix():
    matrix = viz.confusion_matrix([0, 0, 1, 2, 2, 2], [0, 1, 1, 2, 0, 2], 3)
    np.testing.assert_array_equal(matrix, [[1, 1, 0], [0, 1, 0], [1, 0, 2]])
    with pytest.raises(ValueError, match="outside 0..2"):
        viz.confusion_matrix([0, 3], [0, 1], 3)


def test_resize_and_grayscale():
    image = np.arange(16, dtype=float).reshape(4, 4)
    np.testing.assert_allclose(viz.resize(image, (2, 2)), [[2.5, 4.5], [10.5, 12.5]])  # 2x2 block means
    np.testing.assert_allclose(viz.resize(np.full((5, 7), 0.3), (28, 28)), 0.3)
    rgb = np.zeros((2, 2, 3), dtype=np.uint8)
    rgb[0, 0] = 255
    np.testing.assert_allclose(viz.to_grayscale(rgb), [[1, 0], [0, 0]])


def test_predict_gives_probabilities_and_restores_the_mode():
    model = tiny_model()
    x = np.random.default_rng(0).normal(size=(5, 1, 28, 28)).astype(np.float32)
    probs = viz.predict(model, x, batch_size=2)
    assert model.training
    np.testing.assert_allclose(probs.sum(axis=1), 1.0)
    np.testing.assert_array_equal(probs.argmax(axis=1), model.eval()(x).argmax(axis=1))


def test_analysis_imports_without_matplotlib():
    code = "import sys, numpyvit.viz; assert 'matplotlib' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, env={"PYTHONPATH": str(ROOT)})


# ----- figures ----------------------------------------------------------------------------------
def assert_drawn(path):
    path = Path(path)
    assert path.is_file() and path.suffix == ".png"
    assert path.stat().st_size < 300_000, f"{path.name} is {path.stat().st_size} bytes"
    pixels = image_module.imread(path)
    assert np.ptp(pixels.reshape(-1, pixels.shape[-1]), axis=0).max() > 0, f"{path.name} is one colour"


def test_every_figure_renders(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (3, 28, 28)).astype(np.uint8)
    classes = tuple(str(d) for d in range(10))
    history = {"epochs": [dict(epoch=e, train_loss=1 / e, train_acc=1 - .3 / e, test_loss=1.2 / e,
                               test_acc=1 - .4 / e, lr=1e-3, time=e, images=100 * e) for e in (1, 2, 3)]}
    paths = [
        viz.plot_attention_heads(images[0], rng.dirichlet(np.ones(16), (2, 3)).reshape(2, 3, 4, 4),
                                 tmp_path / "heads.png"),
        viz.plot_attention_rollout(images, rng.dirichlet(np.ones(16), 3).reshape(3, 4, 4), tmp_path / "roll.png"),
        viz.plot_position_similarity(viz.position_similarity(rng.normal(size=(16, 8))), (4, 4), tmp_path / "pos.png"),
        viz.plot_patch_filters(*viz.patch_filter_pca(rng.normal(size=(16, 1, 7, 7)), 6), tmp_path / "pca.png"),
        viz.plot_patch_filters(*viz.patch_filter_pca(rng.normal(size=(16, 3, 4, 4)), 5), tmp_path / "pca3.png"),
        viz.plot_attention_distance(rng.uniform(0, 10, (4, 3)), tmp_path / "dist.png", uniform=9.0),
        viz.plot_training_curves(history, tmp_path / "curves.png"),
        viz.plot_time_to_accuracy({"mnist seed 0": history, "mnist seed 1": history, "fashion seed 0": history},
                                  tmp_path / "time.png"),
        viz.plot_confusion_matrix(rng.integers(0, 9, (10, 10)), classes, tmp_path / "sub" / "cm.png"),
        viz.plot_mistakes(images, [1, 2, 3], [4, 5, 6], classes, tmp_path / "wrong.png", confidence=[.9, .8, .7]),
        viz.plot_mistakes(images[:0], [], [], classes, tmp_path / "none_wrong.png"),
    ]
    for path in paths:
        assert_drawn(path)


def test_time_to_accuracy_needs_images_seen():
    old = {"epochs": [dict(epoch=1, test_acc=0.9, time=10.0)]}                # numpyvit < 0.5 wrote no "images"
    with pytest.raises(ValueError, match="'images'"):
        viz.plot_time_to_accuracy({"old": old}, "never.png")
    with pytest.raises(ValueError, match="no runs"):
        viz.plot_time_to_accuracy({}, "never.png")


def test_read_image(tmp_path):
    canvas = np.ones((60, 40, 3))                                         # a dark bar on white, RGB
    canvas[10:50, 18:22] = 0.0
    image_module.imsave(tmp_path / "bar.png", canvas)
    image, inverted = viz.read_image(tmp_path / "bar.png", (28, 28))
    assert inverted and image.shape == (28, 28) and image.dtype == np.uint8
    assert image[14, 14] > 200 and image[0, 0] < 10                       # light bar on dark now
    (tmp_path / "notes.txt").write_text("not an image")
    with pytest.raises(ValueError, match="unsupported image type"):
        viz.read_image(tmp_path / "notes.txt", (28, 28))
    (tmp_path / "broken.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="could not be read"):
        viz.read_image(tmp_path / "broken.png", (28, 28))


# ----- the demo ------------------------------------------------------------------------------
def tiny_model():
    return numpyvit.VisionTransformer(img_size=28, patch_size=7, in_chans=1, num_classes=10, embed_dim=16,
                                      depth=2, num_heads=2, mlp_ratio=2.0)


def load_demo():
    return load_script("demos/visualize.py")


@pytest.fixture
def run(tmp_path, monkeypatch):
    """``path``: a run folder with a tiny random model's checkpoint and history, and a 40-image fake MNIST that
    ``data.load_dataset`` returns instead, recording the names it was asked for in ``asked``."""
    run = tmp_path / "run"
    save_model(tiny_model(), run / "checkpoint.npz", dataset="mnist")
    epochs = [dict(epoch=e, train_loss=2.0 / e, train_acc=.5, test_loss=2.1 / e, test_acc=.4, lr=1e-3, time=e)
              for e in (1, 2)]
    (run / "history.json").write_text(json.dumps({"config": {"dataset": "mnist", "train": {"seed": 0}}, "epochs": epochs}))
    rng = np.random.default_rng(0)
    images, labels = np.zeros((40, 28, 28), np.uint8), rng.integers(0, 10, 40).astype(np.uint8)
    for image, (top, left) in zip(images, rng.integers(2, 14, (40, 2))):
        image[top:top + 12, left:left + 4] = 255                          # one bright stroke each
    fake = data.Dataset("mnist", images, labels, images, labels, tuple(map(str, range(10))), 0.1307, 0.3081)
    asked = []
    monkeypatch.setattr(data, "load_dataset", lambda name, data_dir=None: asked.append(name) or fake)
    return types.SimpleNamespace(path=run, asked=asked)


def test_demo_end_to_end(run, capsys):
    visualize = load_demo()
    paths = visualize.draw(visualize.parse_args(["--checkpoint", str(run.path)]))
    names = {Path(p).name for p in paths}
    assert names == {"attention_heads_1.png", "attention_heads_2.png", "attention_heads_3.png",
                     "attention_heads_4.png", "attention_rollout.png", "saliency.png", "position_similarity.png",
                     "patch_filters_pca.png", "attention_distance.png", "training_curves.png",
                     "confusion_matrix.png", "mistakes.png"}
    for path in paths:
        assert Path(path).parent == run.path / "figures"
        assert_drawn(path)
    out = capsys.readouterr().out
    assert "test accuracy" in out and "on 40 mnist test images" in out and str(run.path / "figures") in out
    assert run.asked == ["mnist"]


def test_demo_with_image_files_npz_path_and_out(run, tmp_path, capsys):
    image_module.imsave(tmp_path / "digit.png", np.random.default_rng(1).random((50, 50)), cmap="gray")
    out = tmp_path / "elsewhere"
    visualize = load_demo()
    paths = visualize.draw(visualize.parse_args(["--checkpoint", str(run.path / "checkpoint.npz"), "--image",
                                                 str(tmp_path / "digit.png"), "--out", str(out), "--num-test", "10",
                                                 "--dataset", "fashion-mnist"]))
    assert {Path(p).name for p in paths} >= {"attention_heads_1.png", "attention_rollout.png"}
    assert "attention_heads_2.png" not in {Path(p).name for p in paths}
    assert all(Path(p).parent == out for p in paths)
    assert "on 10 mnist test images" in capsys.readouterr().out
    assert run.asked == ["fashion-mnist"]


def test_demo_refuses_a_bad_image(run, tmp_path, capsys):
    assert load_demo().main(["--checkpoint", str(run.path), "--image", str(tmp_path / "x.svg")]) == 2
    assert re.fullmatch(r"error: --image: .*x.svg: .*unsupported image type '.svg'.*\n", capsys.readouterr().err)
    assert load_demo().main(["--checkpoint", str(run.path), "--image", str(tmp_path / "missing.png")]) == 2
    assert "no image file" in capsys.readouterr().err
