"""The explorer page (demos/explore.py): its numbers are the textbook's, each op's gradient check
passes, its formulas are docs/math.md's, it stays within its size budget, and it needs nothing
from outside the file. tests/test_explorer_browser.py opens it in a real browser."""
import base64
import json
import re
from pathlib import Path

import numpy as np
import pytest

import numpyvit
from numpyvit import reference
from numpyvit.viz import explorer_page
from numpyvit.viz.explorer_page import all_formulas, explorer_html
from numpyvit.viz.step_recording import record_step, watching
from scripts import load_script

ROOT = Path(__file__).resolve().parents[1]
DIGITS = [str(k) for k in range(10)]


def small_model(**overrides):
    """mnist_tiny-like, narrow, moved off its init (so no gradient is trivially 0)."""
    config = {**dict(embed_dim=24, depth=2, num_heads=3, mlp_ratio=2.0), **overrides}
    model = numpyvit.create_model("mnist_tiny", dtype="float64", **config)
    rng = np.random.default_rng(1)
    for _, param in model.named_parameters():
        param.data += 0.3 * rng.standard_normal(param.shape)
    return model


def page_data(html):
    """The JSON the page carries, with every tensor decoded to a NumPy array."""
    payload = re.search(r'<script id="explorer-data" type="application/json">(.*?)</script>', html, re.S).group(1)
    data = json.loads(payload.replace("<\\/", "</"))

    def decode(entry):
        if isinstance(entry, dict) and "data" in entry:
            values = np.frombuffer(base64.b64decode(entry["data"]), dtype="<f4")
            return values.reshape(entry["shape"])
        if isinstance(entry, dict):
            return {k: decode(v) for k, v in entry.items()}
        if isinstance(entry, list):
            return [decode(v) for v in entry]
        return entry
    return decode(data)


@pytest.fixture(scope="module")
def recorded():
    model = small_model()
    image = np.random.default_rng(2).standard_normal((1, 28, 28))
    step = record_step(model.state_dict(), model.config, image, 3, lr=1e-3, weight_decay=0.05,
                       label_smoothing=0.1, clip_norm=1.0)
    html, report = explorer_html(step, DIGITS)
    return model, image, step, page_data(html), html, report


def by_key(data, key):
    return next(op for op in data["ops"] if op["key"] == key)


def assert_close32(page_value, exact):
    """The page stores float32: equal to the float64 textbook within float32 rounding."""
    exact = np.asarray(exact, dtype=np.float64)
    assert page_value.shape == exact.shape
    np.testing.assert_allclose(page_value, exact, rtol=1e-6, atol=1e-7 * np.abs(exact).max())


def test_three_ops_match_vit_forward_and_backward(recorded):
    """The page's numbers for the image, block 0's attention and the head equal
    reference.vit_forward / vit_backward run on their own (no listening)."""
    model, image, _, data, _, _ = recorded
    params = {k: np.asarray(v, dtype=np.float64) for k, v in model.state_dict().items()}
    logits, cache = reference.vit_forward(params, image[None], model.config)
    loss, loss_cache = reference.cross_entropy_forward(logits, np.array([3]), 0.1)
    dlogits = reference.cross_entropy_backward(1.0, loss_cache)
    grads, dx = reference.vit_backward(dlogits, cache, input_grad=True)
    assert data["loss"] == pytest.approx(float(loss), rel=1e-12)

    head = by_key(data, "head")                                       # 1. the head: logits, dlogits, dW
    assert_close32(head["out"], logits[0])
    assert_close32(head["dout"], dlogits[0])
    assert_close32(next(p for p in head["params"] if p["name"] == "head.weight")["grad"], grads["head.weight"])

    softmax = by_key(data, "blocks.0.attn.softmax")                   # 2. block 0's attention P
    block0_attention = cache[2][0][1]                                 # vit_forward's cache: blocks[0] -> attn
    probabilities = block0_attention[2]                               # the softmax cache is P
    assert_close32(softmax["out"], probabilities[0])
    qkv = by_key(data, "blocks.0.attn.qkv")
    assert_close32(next(p for p in qkv["params"] if p["name"].endswith("qkv.weight"))["grad"],
                   grads["blocks.0.attn.qkv.weight"])

    picture = by_key(data, "image")                                   # 3. the image and its gradient
    assert_close32(picture["out"], image)
    assert_close32(picture["dout"], dx[0])
    patch = by_key(data, "patch_embed")
    assert_close32(next(p for p in patch["params"] if p["name"] == "patch_embed.proj.weight")["grad"],
                   grads["patch_embed.proj.weight"].reshape(grads["patch_embed.proj.weight"].shape[0], -1))


def test_the_ops_run_in_forward_order_with_their_shapes(recorded):
    model, _, step, data, _, _ = recorded
    block = ["norm1", "attn.qkv", "attn.scores", "attn.softmax", "attn.weighted_values", "attn.proj", "residual1",
             "norm2", "mlp.fc1", "mlp.act", "mlp.fc2", "residual2"]
    expected = (["image", "patches", "patch_embed", "tokens"]
                + [f"blocks.{i}.{name}" for i in range(2) for name in block] + ["norm", "pool", "head", "loss"])
    assert [op["key"] for op in data["ops"]] == expected
    T, D, heads = 17, 24, 3
    assert by_key(data, "tokens")["out"].shape == (T, D)
    assert by_key(data, "blocks.1.attn.scores")["dout"].shape == (heads, T, T)
    assert by_key(data, "blocks.1.attn.weighted_values")["out"].shape == (heads, T, D // heads)
    assert by_key(data, "blocks.1.mlp.fc1")["out"].shape == (T, 2 * D)
    np.testing.assert_allclose(by_key(data, "blocks.0.attn.softmax")["out"].sum(axis=-1), 1, rtol=1e-6)
    # the residual's output is the next LayerNorm's input, and its gradient the attention's output's
    assert_close32(by_key(data, "blocks.0.residual1")["out"], step.ops[11].args[0][0])


def test_every_op_passes_its_gradient_check(recorded):
    _, _, step, data, _, _ = recorded
    checked = [op for op in data["ops"] if op["check"]]
    assert len(checked) == len(data["ops"]) - 1                       # all but the input image
    worst = max((c["error"], op["key"], c["tensor"]) for op in checked for c in op["check"])
    assert worst[0] < 1e-6, worst
    assert {c["tensor"] for c in by_key(data, "blocks.0.attn.scores")["check"]} == {"q", "k"}


def test_a_wrong_backward_fails_its_op_check(monkeypatch):
    """The check is real: a softmax backward without its row sum shows up on the page's softmax ops."""
    model = small_model(depth=1)
    monkeypatch.setattr(reference, "softmax_backward", lambda dp, p: p * dp)
    step = record_step(model.state_dict(), model.config, np.ones((1, 28, 28)), 1)
    errors = {op.key: max(op.gradient_check().values()) for op in step.ops if op.gradient_check()}
    assert errors["blocks.0.attn.softmax"] > 1e-2
    assert errors["blocks.0.attn.scores"] < 1e-6                     # the others still agree with themselves


@pytest.mark.parametrize("overrides", [dict(global_pool="avg", pos_embed="learned_2d", act="gelu_tanh"),
                                       dict(pos_embed="sincos", act="relu", qkv_bias=False)])
def test_other_architectures(overrides):
    model = small_model(**overrides)
    step = record_step(model.state_dict(), model.config, np.random.default_rng(0).standard_normal((1, 28, 28)), 5)
    data = page_data(explorer_html(step, DIGITS)[0])
    assert max(c["error"] for op in data["ops"] for c in op["check"]) < 1e-6
    keys = [op["key"] for op in data["ops"]]
    avg = overrides.get("global_pool") == "avg"
    assert keys[-4:] == (["pool", "fc_norm", "head", "loss"] if avg else ["norm", "pool", "head", "loss"])
    params = {p["name"] for op in data["ops"] for p in op.get("params", [])}
    assert ("blocks.0.attn.qkv.bias" in params) == overrides.get("qkv_bias", True)


def test_listening_leaves_the_reference_as_it_was():
    before = {name: getattr(reference, name) for name in dir(reference) if name.endswith(("_forward", "_backward"))}
    with pytest.raises(ZeroDivisionError):
        with watching():
            assert reference.linear_forward is not before["linear_forward"]
            1 / 0
    assert before == {name: getattr(reference, name) for name in before}


def test_every_formula_is_docs_math_md_s():
    """The page shows the book's formulas, not its own versions of them."""
    text = " ".join((ROOT / "docs" / "math.md").read_text(encoding="utf-8").split())
    missing = [tex for tex in all_formulas() if " ".join(tex.split()) not in text]
    assert not missing


def test_the_page_is_self_contained_and_within_budget(recorded):
    *_, html, report = recorded
    assert report["bytes"] == len(html.encode("utf-8")) <= explorer_page.BUDGET_BYTES
    assert not report["left_out"]
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", html)   # nothing fetched from a network
    assert "url(fonts/" not in html                                   # KaTeX's fonts inlined
    assert html.count("data:font/woff2;base64,") == len(list((explorer_page.KATEX / "fonts").glob("*.woff2")))
    assert not re.search(r"\{\{(TITLE|KATEX_CSS|STYLE|KATEX_JS|SCRIPT|DATA)\}\}", html)   # every part filled in


def test_a_big_model_is_detailed_in_part_and_says_so(monkeypatch):
    """Over the budget: the first and last block, DEFAULT_HEADS heads, cropped heatmaps, and the page
    says what it left out (a ViT-B's step is this, at BUDGET_BYTES)."""
    model = small_model(depth=4, num_heads=6, embed_dim=48)
    step = record_step(model.state_dict(), model.config, np.zeros((1, 28, 28)), 0)
    monkeypatch.setattr(explorer_page, "BUDGET_BYTES", 200_000)
    monkeypatch.setattr(explorer_page, "CROPPED_ELEMENTS", 200)
    html, report = explorer_html(step, DIGITS)
    data = page_data(html)
    assert report["blocks"] == [0, 3] and report["heads"] == [0, 1, 2]
    assert len(report["left_out"]) == 3 and data["left_out"] == report["left_out"]
    assert by_key(data, "blocks.1.mlp.fc1")["summary"]                # norms only
    raw = json.loads(re.search(r'type="application/json">(.*?)</script>', html, re.S).group(1).replace("<\\/", "</"))
    fc1_raw = next(op for op in raw["ops"] if op["key"] == "blocks.3.mlp.fc1")
    assert fc1_raw["out"]["shape"] == [17, 200 // 17] and fc1_raw["out"]["full_shape"] == [17, 96]
    assert "check" not in next(op for op in raw["ops"] if op["key"] == "blocks.1.mlp.fc1")       # not detailed
    assert next(op for op in step.ops if op.key == "blocks.1.mlp.fc1").check is None          # nor checked
    softmax_raw = next(op for op in raw["ops"] if op["key"] == "blocks.0.attn.softmax")
    assert softmax_raw["out"]["shape"] == [3, 800 // (3 * 17), 17]    # whole rows of the 3 heads
    assert softmax_raw["out"]["full_shape"] == [6, 17, 17]             # of all 6 heads, as its norm
    html, report = explorer_html(step, DIGITS, blocks=[2], heads=[5])  # asked for: kept
    assert report["blocks"] == [2] and report["heads"] == [5]
    with pytest.raises(ValueError, match="the model has 4 blocks"):
        explorer_html(step, DIGITS, blocks=[4])


def test_the_demo_writes_the_page(tmp_path, capsys):
    """demos/explore.py on a fresh model: one line saying where, how big, and the checks' worst."""
    demo = load_script("demos/explore.py")
    photo = tmp_path / "seven.png"
    from PIL import Image
    Image.fromarray((np.random.default_rng(0).random((28, 28)) * 255).astype(np.uint8)).save(photo)
    out = tmp_path / "page.html"
    assert demo.main(["--photo", str(photo), "--label", "7", "--out", str(out)]) == 0
    line = capsys.readouterr().out
    assert out.is_file() and str(out) in line and "largest gradient-check error" in line
    with pytest.raises(SystemExit):
        demo.parse_args(["--blocks", "0,x"])
    assert "not a list of whole numbers" in capsys.readouterr().err
    assert demo.main(["--photo", str(photo), "--label", "10", "--out", str(out)]) == 2
    assert "the model has 10 classes" in capsys.readouterr().err
