"""The gradient checker itself: it must catch a wrong backward, report one line per tensor,
and refuse to run in float32 (where finite differences are too noisy to mean anything).
"""
import numpy as np
import pytest

from numpyvit import gradcheck
from numpyvit.layers import Dropout, Linear


class LinearWithWrongBackward(Linear):
    """A Linear whose backward has two classic mistakes: a scaled input gradient and a
    transposed weight gradient (dW = x^T dy reshaped, instead of dy^T x)."""

    def backward(self, dy):
        x2, _, _ = self._saved()
        dy2 = dy.reshape(-1, self.out_features)
        self.weight.accumulate((x2.T @ dy2).reshape(self.weight.shape))
        self.bias.accumulate(dy2.sum(axis=0))
        return 1.01 * (dy2 @ self._matrix()).reshape(*dy.shape[:-1], self.in_features)


def test_a_correct_layer_passes(xp, rng):
    layer = Linear(4, 4, xp=xp, dtype=np.float64, rng=rng)
    report = gradcheck(layer, xp.asarray(rng.standard_normal((2, 3, 4))))
    assert report.passed, str(report)
    assert report.max_error < 1e-8


def test_a_wrong_backward_fails_on_exactly_the_wrong_tensors(xp, rng):
    layer = LinearWithWrongBackward(4, 4, xp=xp, dtype=np.float64, rng=rng)
    report = gradcheck(layer, xp.asarray(rng.standard_normal((2, 3, 4))))
    assert not report.passed
    verdicts = {t.name: t.rel_error <= report.tol for t in report.tensors}
    assert verdicts == {"input": False, "weight": False, "bias": True}, str(report)
    assert str(report).splitlines()[-1].startswith("FAIL")


def test_report_has_one_line_per_tensor():
    layer = LinearWithWrongBackward(4, 3, dtype=np.float64)
    report = gradcheck(layer, np.random.default_rng(0).standard_normal((2, 4)))
    lines = str(report).splitlines()
    header, rows, summary = lines[0], lines[1:-1], lines[-1]
    assert "rel. error" in header
    assert len(rows) == len(report.tensors) == 3
    for row, tensor in zip(rows, report.tensors):
        assert row.split()[0] == tensor.name
        assert f"{tensor.rel_error:.2e}" in row
        assert row.endswith("ok") or row.endswith("FAIL")
    assert [row.split()[0] for row in rows if row.endswith("FAIL")] == ["input", "weight"]
    assert summary.startswith("FAIL: max relative error") and "tolerance 1e-06" in summary


def test_refuses_float32():
    with pytest.raises(TypeError, match="gradcheck needs float64 \\(input is float32\\)"):
        gradcheck(Linear(4, 3, dtype=np.float64), np.zeros((2, 4), np.float32))
    with pytest.raises(TypeError, match="gradcheck needs float64 \\(weight is float32\\)"):
        gradcheck(Linear(4, 3, dtype=np.float32), np.zeros((2, 4)))


def test_refuses_an_unknown_stencil_order():
    with pytest.raises(ValueError, match=r"order must be one of \[2, 4\], got 3"):
        gradcheck(Linear(4, 3, dtype=np.float64), np.zeros((2, 4)), order=3)


def test_second_order_stencil_also_passes(rng):
    report = gradcheck(Linear(4, 3, dtype=np.float64, rng=rng), rng.standard_normal((2, 4)), order=2)
    assert report.passed, str(report)


def test_max_elements_checks_a_subset(rng):
    report = gradcheck(Linear(6, 5, dtype=np.float64, rng=rng), rng.standard_normal((4, 6)), max_elements=7)
    assert {t.name: t.checked for t in report.tensors} == {"input": 7, "weight": 7, "bias": 5}
    assert report.passed, str(report)


def test_random_layers_are_reseeded_so_dropout_checks_pass(rng):
    layer = Dropout(0.5)
    report = gradcheck(layer, rng.standard_normal((3, 4)))
    assert report.passed, str(report)
    assert not layer.has_cache()


@pytest.mark.parametrize("kwargs, message", [
    (dict(eps=float("nan")), "eps must be a finite number above 0, got nan"),
    (dict(eps=0.0), "eps must be a finite number above 0, got 0.0"),
    (dict(tol=-1e-6), "tol must be a finite number above 0"),
    (dict(tol=float("inf")), "tol must be a finite number above 0, got inf"),
    (dict(max_elements=0), "max_elements must be a whole number >= 1 or None"),
    (dict(order=3), r"order must be one of \[2, 4\]"),
])
def test_bad_settings_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        gradcheck(Linear(3, 2, dtype=np.float64), np.zeros((2, 3)), **kwargs)


def test_checking_nothing_is_refused_not_passed():
    with pytest.raises(ValueError, match="nothing to check: Dropout has no parameters and check_input=False"):
        gradcheck(Dropout(0.5), np.zeros((2, 3)), check_input=False)
