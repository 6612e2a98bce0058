"""Defences for probability outputs, row by row over a batch ``(n, classes)``.

Every function returns a new array and keeps each row's argmax (``np.argmax``: the first
largest entry), so an honest client's top-1 answer never changes. Rows are independent:
a batch whose rows have different argmaxes is handled exactly as the rows one at a time
(ART's ``ClassLabels`` sets ``labels[:, argmaxes] = 1``, marking every row's class in
every row of a mixed batch).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import numpy.typing as npt

Array = npt.NDArray[np.float64]
Mode = Literal["full", "round", "top_k", "labels", "reverse_sigmoid"]

_EPS = 1e-12
_TIE = 1e-12


def keep_argmax(out: Array, top: npt.NDArray[np.intp], unit: float) -> Array:
    """``out`` with each row's entry ``top`` raised just enough (by ``unit`` steps) to be
    the row's first largest again (``out`` itself when every row already is)."""
    if (out.argmax(axis=1) == top).all():
        return out
    rows = np.arange(out.shape[0])
    cols = np.arange(out.shape[1])[None, :]
    before = np.where(cols < top[:, None], out, -np.inf).max(axis=1, initial=-np.inf)
    after = np.where(cols > top[:, None], out, -np.inf).max(axis=1, initial=-np.inf)
    fixed = out.copy()
    fixed[rows, top] = np.maximum(out[rows, top], np.maximum(before + unit, after))
    return fixed


def round_rows(p: Array, decimals: int) -> Array:
    """Rounded to ``decimals``; a tie that rounding makes at the top is broken by one unit."""
    rounded = np.round(p, decimals)
    fixed = keep_argmax(rounded, np.argmax(p, axis=1), 10.0**-decimals)
    return fixed if fixed is rounded else np.round(fixed, decimals)  # back onto the grid


def top_k(p: Array, k: int) -> Array:
    """The ``k`` largest of each row (ties: first wins), the rest zero, renormalised."""
    if k >= p.shape[1]:
        whole: Array = p / p.sum(axis=1, keepdims=True)
        return whole
    order = np.argsort(-p, axis=1, kind="stable")[:, :k]
    out = np.zeros_like(p)
    np.put_along_axis(out, order, np.take_along_axis(p, order, axis=1), axis=1)
    kept: Array = out / out.sum(axis=1, keepdims=True)
    return kept


def labels(p: Array) -> Array:
    """One-hot of each row's own argmax."""
    out = np.zeros_like(p)
    out[np.arange(p.shape[0]), np.argmax(p, axis=1)] = 1.0
    return out


def reverse_sigmoid(p: Array, beta: float, gamma: float) -> Array:
    """Lee et al. 2019, "Defending against NN model stealing attacks using deceptive
    perturbations": ``y' = alpha * (y - beta * (s(gamma * s^-1(y)) - 1/2))`` with ``s`` the
    sigmoid and ``alpha`` normalising the row to sum 1.

    The perturbation is not monotone for every (beta, gamma) (with gamma = 1 it is
    ``(1 - beta) * y + beta/2``, which reverses the order for beta > 1), so the argmax is
    enforced: where it moved, the largest perturbed value is swapped into its place. Values
    the formula drives below zero are clipped to zero, and a row with nothing left becomes
    the one-hot of its argmax.
    """
    top = np.argmax(p, axis=1)
    y = np.clip(p, _EPS, 1.0 - _EPS)
    z = gamma * (np.log(y) - np.log1p(-y))
    squashed = 0.5 * (1.0 + np.tanh(0.5 * z))  # the sigmoid, without overflow
    out = np.clip(p - beta * (squashed - 0.5), 0.0, None)
    total = out.sum(axis=1, keepdims=True)
    empty = total[:, 0] <= 0.0
    if empty.any():
        out[empty] = labels(p[empty])
        total[empty] = 1.0
    out /= total
    moved = np.flatnonzero(np.argmax(out, axis=1) != top)
    if moved.size:
        now = np.argmax(out[moved], axis=1)
        was = top[moved]
        high, low = out[moved, now], out[moved, was]
        out[moved, was], out[moved, now] = high, low
        out = keep_argmax(out, top, _TIE)  # a tie left before ``top`` (equal values)
    return out


def protect(
    p: Array,
    mode: Mode,
    *,
    decimals: int = 8,
    k: int = 1,
    beta: float = 0.0,
    gamma: float = 1.0,
) -> Array:
    """One defence on a batch of probability rows (each with at least 2 classes, values in
    [0, 1], positive sum); rounding follows the modes whose values are not exact."""
    if mode == "full":
        return p.copy()
    if mode == "labels":
        return labels(p)
    if mode == "top_k":
        out = top_k(p, k)
    elif mode == "reverse_sigmoid":
        out = reverse_sigmoid(p, beta, gamma)
    else:
        out = p
    return round_rows(out, decimals)
