"""Central differences of a scalar loss, the numeric side of the tests' gradient checks on plain
functions (numpyvit.gradcheck checks Modules)."""
import numpy as np


def central_differences(loss, x, h=1e-6, indices=None):
    """(L(x + h e_i) - L(x - h e_i)) / (2h) for each flat index i of ``x`` (all by default), where
    ``loss()`` reads x, which is changed in place and put back; a float64 array of x's shape, or
    of len(indices)."""
    flat = x.reshape(-1)                                             # a view: x is contiguous
    chosen = range(flat.size) if indices is None else indices
    values = []
    for i in chosen:
        old = float(flat[i])
        flat[i] = old + h
        up = loss()
        flat[i] = old - h
        down = loss()
        flat[i] = old
        values.append((up - down) / (2 * h))
    values = np.array(values, dtype=np.float64)
    return values.reshape(x.shape) if indices is None else values
