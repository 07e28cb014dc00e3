"""The error function erf(x), which NumPy lacks, for the exact GELU  y = x/2 * (1 + erf(x/sqrt(2))).

erf(x) = 2/sqrt(pi) * integral_0^x exp(-s^2) ds is odd, with erf'(x) = 2/sqrt(pi) * exp(-x^2).
Each dtype has its own method, built from NumPy ufuncs only:

float64, for gradient checks: abs error <= 2.3e-16 vs math.erf (dense grid), relative <= 3e-16
for |x| < 1.
    |x| < 1:   erf(x) = x * S(x^2)                                   S of degree 11
    |x| >= 1:  erf(x) = sign(x) * (1 - exp(-x^2) * G(u))            G of degree 14
               with u = (|x| - 3) / (|x| + 3)
    G fits the smooth erfcx(x) = exp(x^2) * erfc(x) on 1 <= x <= 6; |x| is clipped to 6, where erf
    already rounds to +-1. The pieces meet within 1 ulp, so central differences of erf agree with
    erf' down to float64 rounding noise. Cost: about 12-18x np.exp (it is meant for checks).
float32, for training: abs error <= 1.6e-7 (checked for every float32 in [1/8, 5]; under 3 ulp
near 1), relative <= 3.1e-7 for |x| < 1.
    erf(x) = tanh(x * P(x^2)), x clipped to [-4.5, 4.5]              P of degree 6
    tanh saturates like erf, so P only has to fit the gentle atanh(erf(x))/x. The cost is a clip,
    14 multiply/add passes (in place where possible) and one vectorized tanh: about 3.6x np.exp on
    1.6M elements; working through rows in cache-sized chunks measured no faster, so it does not.
    The same form would need degree > 26 in float64, hence two methods.

Coefficients (monomial basis, lowest degree first) come from a one-off script. It computes
erf(x)/x, erfcx(x) and atanh(erf(x)) to 80 digits with Python's `decimal`, from the Maclaurin
series erf(x) = 2/sqrt(pi) * sum_n (-1)^n x^(2n+1) / (n! (2n+1)). S and G are least-squares fits
(`numpy.polynomial.chebyshev.chebvander` + `numpy.linalg.lstsq`) at 400 Chebyshev points of their
interval, converted by `Chebyshev.convert(kind=Polynomial)`, then corrected by fits of their
80-digit residual, which removes float64 rounding from the fit. P is a weighted minimax fit
(Lawson's reweighting of `lstsq`) at 6000 points evenly spaced in x^2, weight x * (1 - erf(x)^2),
the sensitivity of erf to P; P(0) is pinned to float32(2/sqrt(pi)) and the other coefficients are
rounded to float32 one at a time, highest first, refitting the rest after each.
"""
import numpy as np

from .backend import array_module

# erf(x)/x for x^2 in [0, 1]
_S = (1.1283791670955126, -0.37612638903183543, 0.1128379167094513, -0.026866170643256995,
      0.0052239776072699456, -0.00085483259825432252, 0.00012055295112667001,
      -1.4924740785377576e-05, 1.6447471190594618e-06, -1.6208829856810202e-07,
      1.3721520406351094e-08, -7.7985438505499473e-10)
# erfcx(x) = exp(x^2) erfc(x) for x in [1, 6], in u = (x - 3) / (x + 3), u in [-1/2, 1/3]
_G = (0.17900115118138996, -0.32623356004303722, 0.24560380171233473, -0.15011593650077751,
      0.071665837197489812, -0.024392499319030092, 0.0042691363562680548,
      0.00070774647036939424, -0.00059706248107185193, 4.5254293088831753e-05,
      6.4062589612585709e-05, -1.2845474655618961e-05, -8.0083486221966968e-06,
      2.0133850900902886e-06, 1.2715037251638398e-06)
# atanh(erf(x))/x for x^2 in [0, 16], as float32 values. erf(4) rounds to 1 in float32; at the clip,
# 4.5 * P(4.5^2) = 15.2 lies past 10, from where NumPy's float32 tanh returns exactly 1.
P32 = (1.12837923, 0.102768406, -0.000189562896, -0.00062198285, 8.84876208e-05,
        -5.80640972e-06, 1.49575087e-07)


def erf(x, out=None):
    """erf(x) elementwise, in x's dtype (float32 or float64).

    x: a NumPy array, or a CuPy array (computed by ``cupyx.scipy.special.erf``).
    out: optional array of x's shape and dtype to write into; it may be x itself.
    Returns ``out`` (a new array when none is given). Raises TypeError for other dtypes and
    ValueError for an ``out`` of another shape or dtype.
    """
    if array_module(x) is not np:
        from cupyx.scipy.special import erf as cupy_erf

        return cupy_erf(x, out=out)
    x = np.asarray(x)
    if x.dtype not in (np.float32, np.float64):
        raise TypeError(f"erf supports float32 and float64 arrays, got {x.dtype}")
    if out is None:
        out = np.empty_like(x)
    elif out.shape != x.shape or out.dtype != x.dtype:
        raise ValueError(
            f"erf: out has shape {out.shape} and dtype {out.dtype}, "
            f"expected shape {x.shape} and dtype {x.dtype}"
        )
    if x.dtype == np.float32:
        return _erf_float32(x, out)
    return _erf_float64(x, out)


def _erf_float32(x, out):
    xc = np.clip(x, -4.5, 4.5)  # x is read once, here, so out may be x
    t = xc * xc
    horner(t, P32, out)
    out *= xc
    return np.tanh(out, out=out)


def _erf_float64(x, out):
    small = np.abs(x) < 1.0
    near = np.flatnonzero(small)  # flat indices: take/put with them is several times faster
    far = np.flatnonzero(~small)  # than boolean-mask indexing on mixed data; far has +-inf, nan
    xn, xf = np.take(x, near), np.take(x, far)  # copies, so out may overlap x
    af = np.minimum(np.abs(xf), 6.0)  # keeps nan
    erfc = np.exp(-af * af) * horner((af - 3.0) / (af + 3.0), _G)
    np.put(out, near, xn * horner(xn * xn, _S))
    np.put(out, far, np.copysign(1.0 - erfc, xf))
    return out


def horner(t, coeffs, out=None):
    """coeffs[0] + coeffs[1] t + ... + coeffs[-1] t^n by Horner's rule, into out (or a new
    array)."""
    out = np.multiply(t, coeffs[-1], out=out)
    for c in coeffs[-2:0:-1]:
        out += c
        out *= t
    out += coeffs[0]
    return out
