"""The masked autoencoder (numpyvit.mae, docs/math.md section 14): each new piece's backward against
central differences in float64 (relative error per tensor printed), the textbook's whole MAE step
likewise, the fast MAE pinned to the textbook (loss and every gradient, float64 and float32), the
draw of the kept patches, the encoder's weights loading into a ViT, and pretraining that learns."""
import signal

import numpy as np
import pytest

import numpyvit
from numpyvit import reference as ref
from numpyvit.backend import to_numpy
from numpyvit.layers.masking import MaskFill, TokenRows, random_keep
from numpyvit.layers.base import Parameter
from numpyvit.losses import MaskedMSELoss
from numpyvit.io import load_arrays
from numpyvit.engine.mae_steps import ShardedSteps
from numpyvit.mae import MaskedAutoencoder, encoder_weights
from numpyvit.optim import AdamW
from numpyvit.train import TrainConfig
from numpyvit.train.pretrain import pretrain
from finite_differences import central_differences
from test_demos import demo, synthetic  # noqa: F401  (a fixture)
from test_train import tiny_dataset
from test_tuning import full_shared_memory  # noqa: F401  (a fixture)

SMALL = dict(img_size=(8, 12), patch_size=4, in_chans=2, num_classes=5, embed_dim=16, depth=2, num_heads=2,
             mlp_ratio=2.0)
DECODER = dict(decoder_dim=8, decoder_depth=1, decoder_heads=2, decoder_mlp_ratio=2.0)
PIN_RTOL = {"float64": 1e-12, "float32": 2e-5}                      # as tests/test_reference.py's pins


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def relative_error(analytic, numeric):
    return float(np.linalg.norm(analytic - numeric) / max(np.linalg.norm(analytic), np.linalg.norm(numeric), 1e-300))


def check_pair(name, forward, backward, inputs, checked, rng, tol=1e-8):
    """forward(*inputs) -> (out, cache); backward(dout, cache) -> gradients of inputs ``checked``
    (indices); each against central differences of <dout, out>, its relative error printed."""
    out, cache = forward(*inputs)
    dout = rng.standard_normal(np.shape(out))
    grads = backward(dout, cache)
    grads = grads if isinstance(grads, tuple) else (grads,)
    for index, grad in zip(checked, grads):
        numeric = central_differences(lambda: float(np.sum(forward(*inputs)[0] * dout)), inputs[index])
        error = relative_error(grad, numeric)
        print(f"{name}: d input {index} {np.shape(grad)} relative error {error:.1e}")
        assert error < tol, (name, index, error)


def test_random_keep(rng):
    rows, hidden = random_keep(rng, 3, 16, 0.75)
    assert rows.shape == (3, 5) and hidden.shape == (3, 16)
    assert (rows[:, 0] == 0).all() and (np.diff(rows, axis=1) > 0).all()          # [CLS] first, sorted, distinct
    for b in range(3):                                                # kept and hidden: complements
        kept = np.zeros(16)
        kept[rows[b, 1:] - 1] = 1
        np.testing.assert_array_equal(kept, 1 - hidden[b])
    many = np.concatenate([random_keep(rng, 1, 16, 0.75)[0][0, 1:] for _ in range(2000)])
    counts = np.bincount(many - 1, minlength=16)                      # every patch as likely (4/16 each time)
    assert abs(counts / 2000 - 0.25).max() < 0.04
    with pytest.raises(ValueError, match=r"mask_ratio must be in \[0, 1\)"):
        random_keep(rng, 1, 16, 1.0)


def test_the_new_pieces_of_the_textbook(rng):
    z = rng.standard_normal((2, 5, 3))
    rows, hidden = random_keep(rng, 2, 4, 0.5)
    check_pair("gather_rows", lambda z_: ref.gather_rows_forward(z_, rows), ref.gather_rows_backward, [z], [0], rng)
    y, token = rng.standard_normal((2, 3, 4)), rng.standard_normal((1, 1, 4))
    check_pair("fill_hidden", lambda y_, m_: ref.fill_hidden_forward(y_, m_, rows, 5), ref.fill_hidden_backward,
               [y, token], [0, 1], rng)
    pred, target = rng.standard_normal((2, 4, 6)), rng.standard_normal((2, 4, 6))
    check_pair("masked_mse", lambda p_: ref.masked_mse_forward(p_, target, hidden), ref.masked_mse_backward,
               [pred], [0], rng)


def test_patch_targets_are_each_patch_normalized(rng):
    x = rng.standard_normal((2, 2, 8, 12)) * 3 + 1
    plain, normalized = ref.patch_targets(x, (4, 4), False), ref.patch_targets(x, (4, 4), True)
    np.testing.assert_array_equal(plain, ref.patchify(x, (4, 4)))
    np.testing.assert_allclose(normalized.mean(axis=-1), 0, atol=1e-12)
    np.testing.assert_allclose(normalized.var(axis=-1, ddof=1), 1, rtol=1e-5)   # 1e-6 in the denominator


def mae_params(mae, rng):
    """The MAE's parameters moved off their init (float64 copies)."""
    params = {name: np.array(to_numpy(value), dtype=np.float64) for name, value in mae.state_dict().items()}
    for name in params:
        params[name] += 0.3 * rng.standard_normal(params[name].shape)
    mae.load_state_dict(params)
    return params


def decoder_config(mae):
    c = mae.config
    return dict(embed_dim=c["decoder_dim"], depth=c["decoder_depth"], num_heads=c["decoder_heads"],
                act=mae.encoder.config["act"])


def test_the_textbook_mae_step_against_central_differences(rng):
    mae = MaskedAutoencoder(numpyvit.VisionTransformer(**SMALL, dtype="float64"), **DECODER)
    params = mae_params(mae, rng)
    x = rng.standard_normal((2, 2, 8, 12))
    rows, hidden = random_keep(rng, 2, 6, 0.5)
    loss, _, caches = ref.mae_forward(params, x, mae.encoder.config, decoder_config(mae), rows, hidden)
    grads = ref.mae_backward(1.0, caches)
    assert set(grads) == set(params)
    worst = 0.0
    for name, value in params.items():
        sample = rng.choice(value.size, min(value.size, 12), replace=False)
        numeric = central_differences(
            lambda: ref.mae_forward(params, x, mae.encoder.config, decoder_config(mae), rows, hidden)[0],
            value, 1e-5, sample)
        error = relative_error(grads[name].reshape(-1)[sample], numeric)
        print(f"mae {name} {value.shape}: relative error {error:.1e} ({len(sample)} elements)")
        worst = max(worst, error)
    assert worst < 1e-7


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("norm_pix_loss", [True, False])
def test_the_fast_mae_is_the_textbook(rng, dtype, norm_pix_loss):
    mae = MaskedAutoencoder(numpyvit.VisionTransformer(**SMALL, dtype=dtype), norm_pix_loss=norm_pix_loss, **DECODER)
    mae_params(mae, rng)
    params = {k: np.asarray(to_numpy(v), dtype=np.float64) for k, v in mae.state_dict().items()}   # as stored
    x = rng.standard_normal((3, 2, 8, 12))
    rows, hidden = random_keep(rng, 3, 6, 0.5)
    loss = float(mae(x.astype(dtype), rows, hidden))
    mae.zero_grad()
    mae.backward()
    fast = {name: to_numpy(p.grad) for name, p in mae.named_parameters()}
    expected, _, caches = ref.mae_forward(params, x.astype(dtype).astype(np.float64), mae.encoder.config,
                                          decoder_config(mae), rows, hidden, normalize=norm_pix_loss)
    textbook = ref.mae_backward(1.0, caches)
    tol = PIN_RTOL[dtype]
    assert loss == pytest.approx(expected, rel=tol)
    assert set(fast) == set(textbook)
    for name, grad in textbook.items():
        error = np.abs(fast[name] - grad).max() / max(np.abs(grad).max(), 1e-300)
        assert error < tol, (name, error)


def test_the_fast_layers_against_central_differences(rng):
    rows, hidden = random_keep(rng, 2, 4, 0.5)
    report = numpyvit.gradcheck(TokenRows(), rng.standard_normal((2, 5, 3)), rows)
    print(report)
    assert report.passed
    fill = MaskFill(Parameter(rng.standard_normal((1, 1, 4))))
    report = numpyvit.gradcheck(fill, rng.standard_normal((2, 3, 4)), rows, 5)
    print(report)
    assert report.passed and [t.name for t in report.tensors] == ["input", "mask_token"]
    report = numpyvit.gradcheck(MaskedMSELoss(), rng.standard_normal((2, 4, 6)), rng.standard_normal((2, 4, 6)),
                                hidden)
    print(report)
    assert report.passed


def test_the_encoder_is_a_vit(rng):
    """The MAE's weights less the decoder's are a ViT's: they load into the classifier (a new head)."""
    mae = MaskedAutoencoder(numpyvit.VisionTransformer(**SMALL), **DECODER)
    names = set(mae.state_dict())
    assert "mask_token" in names and "decoder_blocks.0.attn.qkv.weight" in names and "head.weight" not in names
    encoder = encoder_weights(mae.state_dict())
    vit = numpyvit.VisionTransformer(**SMALL, seed=3)
    vit.load_state_dict({**encoder, "head.weight": vit.head.weight.data, "head.bias": vit.head.bias.data})
    np.testing.assert_array_equal(vit.blocks[1].mlp.fc2.weight.data, mae.encoder.blocks[1].mlp.fc2.weight.data)
    with pytest.raises(numpyvit.errors.ConfigError, match="global_pool='token'"):
        MaskedAutoencoder(numpyvit.VisionTransformer(**SMALL, global_pool="avg"), **DECODER)


def test_pretraining_learns(rng):
    """Stripes of one of four phases per image, so every patch of an image is alike: a hidden patch
    can be read off the visible ones. Without them the best guess is the mean image, 0, with loss
    E[x^2] = 0.5 (the untrained model's too); after 200 AdamW steps the MAE is 5 times better
    (a fixed batch and mask measure it)."""
    mae = MaskedAutoencoder(numpyvit.VisionTransformer(**SMALL), norm_pix_loss=False, **DECODER)
    optimizer = AdamW(mae.parameters(), lr=3e-3, weight_decay=0.0)
    phase = rng.integers(0, 4, size=(64, 1, 1, 1))
    x = np.sin(np.arange(12)[None, None, None, :] * np.pi / 2 + phase * np.pi / 2) * np.ones((64, 2, 8, 12))
    x = x.astype(np.float32)
    fixed_rows, fixed_hidden = random_keep(np.random.default_rng(9), 64, 6, 0.5)
    with mae.inference():
        before = float(mae(x, fixed_rows, fixed_hidden))
    for step in range(200):
        rows, hidden = random_keep(np.random.default_rng([1, step]), 64, 6, 0.5)
        mae(x, rows, hidden)
        optimizer.zero_grad()
        mae.backward()
        optimizer.step()
    with mae.inference():
        after = float(mae(x, fixed_rows, fixed_hidden))
    assert after < 0.2 * before, (before, after)


# ----- pretraining: the loop, its resume, the demos ----------------------------------------------
def tiny_mae(seed=0):
    encoder = numpyvit.create_model("mnist_tiny", embed_dim=16, depth=2, num_heads=2, seed=seed)
    return MaskedAutoencoder(encoder, decoder_dim=8, decoder_depth=1, decoder_heads=2, seed=seed)


@pytest.mark.parametrize("kind", ["processes", "threads"])
def test_sharded_steps_are_the_whole_batch_s(rng, kind):
    """Two shards (the model and a worker process, or two threads) give the loss and the gradients
    of one pass over the batch, also at a second step, after the optimizer changed the weights."""
    if kind == "processes" and not numpyvit.engine.workers.SUPPORTED:
        pytest.skip("worker processes need a POSIX system")
    x = rng.standard_normal((2, 7, 1, 28, 28))
    masks = [random_keep(rng, 7, 16, 0.75) for _ in range(2)]
    results = []
    for count in (1, 2):
        mae = MaskedAutoencoder(numpyvit.create_model("mnist_tiny", embed_dim=16, depth=2, num_heads=2,
                                                      dtype="float64"), decoder_dim=8, decoder_depth=1, decoder_heads=2)
        optimizer, steps, losses = AdamW(mae.parameters(), lr=1e-2), ShardedSteps(mae, count), []
        with numpyvit.engine.tuning.forced(kind):
            assert steps.kind(7) == (kind if count == 2 else "one")
            for images, (rows, hidden) in zip(x, masks):
                optimizer.zero_grad()
                losses.append(steps.step(images, rows, hidden))
                optimizer.step()
        steps.close()
        results.append((losses, {name: p.grad.copy() for name, p in mae.named_parameters()}))
    (one, grads1), (two, grads2) = results
    assert two == pytest.approx(one, rel=1e-12) and one[1] != one[0]
    for name in grads1:
        np.testing.assert_allclose(grads2[name], grads1[name], rtol=1e-10, atol=1e-14 * np.abs(grads1[name]).max())


def test_no_room_in_shared_memory_means_mae_shards_on_threads(rng, monkeypatch, full_shared_memory):
    """Where the worker processes' files cannot be made, the MAE's steps warn once and run on
    threads (the same loss as one shard), unless processes were forced: then the clear error."""
    files, x = full_shared_memory(), rng.standard_normal((4, 1, 28, 28))
    rows, hidden = random_keep(rng, 4, 16, 0.75)
    monkeypatch.setattr(numpyvit.engine.tuning, "_refused", dict(processes=None))
    expected = ShardedSteps(tiny_mae(), 1).step(x, rows, hidden)
    steps = ShardedSteps(tiny_mae(), 2)
    with pytest.warns(RuntimeWarning, match="goes on without worker processes"):
        assert steps.step(x, rows, hidden) == pytest.approx(expected, rel=1e-5)
    assert steps.kind(4) == "threads" and full_shared_memory() == files
    monkeypatch.setattr(numpyvit.engine.tuning, "_refused", dict(processes=None))
    monkeypatch.setenv("NUMPYVIT_PARALLEL", "processes")
    with pytest.raises(numpyvit.engine.workers.SharedMemoryError, match="NUMPYVIT_PARALLEL=threads"):
        ShardedSteps(tiny_mae(), 2).step(x, rows, hidden)


def test_pretraining_resumes_exactly(tmp_path, monkeypatch):
    """Ctrl-C in the middle of epoch 2, then a resume: the weights of an uninterrupted run."""
    config = TrainConfig(epochs=3, batch_size=16, log_every=2, eval_batch_size=16)     # 4 steps an epoch
    straight = tiny_mae()
    pretrain(straight, tiny_dataset(), config, tmp_path / "a", log=None, figure_every=1)
    step, calls = ShardedSteps.step, [0]

    def step_then_ctrl_c(self, *args):
        calls[0] += 1
        if calls[0] == 6:
            signal.raise_signal(signal.SIGINT)                       # handled by pretrain: a clean stop
        return step(self, *args)
    monkeypatch.setattr(ShardedSteps, "step", step_then_ctrl_c)
    with pytest.raises(numpyvit.train.TrainingInterrupted, match="epoch 2, step 2"):
        pretrain(tiny_mae(), tiny_dataset(), config, tmp_path / "b", log=None)
    monkeypatch.setattr(ShardedSteps, "step", step)
    resumed = tiny_mae(seed=5)                                       # other weights: the checkpoint's are loaded
    history = pretrain(resumed, tiny_dataset(), config, tmp_path / "b", resume=True, log=None)
    for name, value in straight.state_dict().items():
        np.testing.assert_array_equal(resumed.state_dict()[name], value, err_msg=name)
    assert [e["epoch"] for e in history["epochs"]] == [1, 2, 3]
    assert (tmp_path / "a" / "reconstructions.png").stat().st_size > 5000
    with pytest.raises(numpyvit.train.RunExistsError):
        pretrain(tiny_mae(), tiny_dataset(), config, tmp_path / "a", log=None)


def test_pretrain_then_finetune_demos(tmp_path, synthetic, capsys):
    """demos/pretrain.py writes an MAE; its encoder loads as weights (the decoder left out) and
    demos/finetune.py trains it on the labels."""
    out = tmp_path / "pretrain"
    argv = ["--data", "fashion-mnist", "--epochs", "2", "--batch-size", "16", "--embed-dim", "16", "--depth", "2",
            "--num-heads", "2", "--decoder-dim", "8", "--decoder-depth", "1", "--decoder-heads", "2",
            "--figure-every", "1", "--out", str(out)]
    assert demo("pretrain").main(argv) == 0
    said = capsys.readouterr().out
    assert "labels unused" in said and f"--weights {out}" in said and (out / "reconstructions.png").is_file()
    model = numpyvit.create_model(None, weights=out)
    mae_state = load_arrays(out)[0]
    np.testing.assert_array_equal(model.blocks[1].attn.qkv.weight.data, mae_state["model.blocks.1.attn.qkv.weight"])
    assert demo("finetune").main(["--weights", str(out), "--data", "fashion-mnist", "--epochs", "1", "--batch-size",
                                  "16", "--limit-train", "32", "--tta", "--out", str(tmp_path / "ft")]) == 0
    said = capsys.readouterr().out
    assert "32 training" in said and "with test-time augmentation" in said
    assert demo("pretrain").main(["--out", str(out), "--resume", "--epochs", "3"]) == 0    # one more epoch
    assert "after 3 epochs" in capsys.readouterr().out
