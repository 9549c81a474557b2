"""fuse: find Fourier attention in a plainly exported ONNX graph and replace each by one portable node.

A general-purpose exporter writes FourierFormer attention as dozens of elementwise ops on a [.., Nq, Nk, .., D]
tensor. This pass recognises it *semantically*, starting from every pairwise difference ``Unsqueeze(a) -
Unsqueeze(b)`` (the candidates), and proves, walking back from the contraction with v, that the subgraph computes

    x_ijd = R * (q_id - k_jd);  w_ij = prod_d sinc(x_ijd) ** power  [masked causally];
    out_i = sum_j w_ij v_j / (sum_j w_ij + eps)

in any layout. Forms understood (each as ``torch.onnx.export`` writes it, dynamo or TorchScript):

* sinc as ``where(x == 0, 1, sin(x) / x)`` (with or without a "safe" denominator), ``torch.sinc(x / pi)``, or
  ``where(|x| < tiny, 1, sin(x) / x)`` with tiny <= :data:`TINY_LIMIT`;
* the product over d as ``ReduceProd`` or ``exp(sum(log|.|))``, optionally times ``prod(sign(.))``;
* the power as ``Pow`` by a constant or repeated ``Mul`` (before or after the product), even in total;
* R as a constant (initializer, Constant) or a run-time scalar (graph input), times any constants;
* an optional mask ``where(hidden, 0, w)``, ``where(shown, w, 0)`` or ``w * shown`` that is exactly the causal
  one: a constant, or computed from the shapes (``triu`` of ones, or a comparison of ``arange`` indices);
* normalisation by ``ReduceSum`` over the key axis plus a constant eps, before the contraction (official code) or
  after it (our eager reference); the contraction as ``MatMul`` or ``Einsum``, with any ``Transpose`` between.

The axes (batch, head, query, key, dim) come from the broadcast and the reductions; q, k, v and the output are
re-laid out with ``Transpose`` nodes where the pattern's layout differs from the op's [B, H, N, D]. Anything not
proven equivalent is left alone and reported with the reason (:class:`FuseReport`, for an ``--explain`` listing).

The input graph is first cleaned up (:func:`~export.passes.cleanup.cleanup`: constants folded, so that masks and
scalars are constants) and its shapes inferred.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from export.passes.cleanup import cleanup
from fourierformer import opspec

log = logging.getLogger(__name__)

SEARCH_DEPTH = 64
"""How many ops forward from a difference the search for the contraction with v goes."""
TINY_LIMIT = 1e-3
"""Largest threshold accepted in ``where(|x| < tiny, 1, sin(x)/x)``: there sinc(x) = 1 - x**2/6 + ... differs
from 1 by at most tiny**2/6 = 1.7e-7, below float32's resolution of 1."""
RTOL = 1e-5
"""Relative tolerance when comparing constant scale factors (pi * (x / pi) is not exactly x in float32)."""
ELEMENTWISE = frozenset({"Abs", "Add", "Div", "Equal", "Exp", "Greater", "GreaterOrEqual", "Less", "LessOrEqual",
                         "Log", "Mul", "Neg", "Not", "Pow", "Sign", "Sin", "Where"})
"""Ops of the recognised forms through which axis labels pass unchanged (with broadcasting)."""
UNIT = "1"
"""The label of an axis of size one (kept by a reduction or inserted by Unsqueeze)."""
VALUE = "v"
"""The label of v's last axis (its head size)."""


class _Miss(Exception):
    """The candidate is not provably Fourier attention; the message says why."""


@dataclass(frozen=True)
class Candidate:
    """One pairwise difference found in the graph and what became of it."""

    anchor: str
    """The difference's Sub node."""
    matched: tuple[str, ...]
    """What was recognised, in the order found."""
    reason: str | None = None
    """Why the candidate was left alone; None when it was fused."""
    node: str | None = None
    """The FourierAttention node that replaced it."""
    attributes: dict[str, float | int | str] = field(default_factory=dict)
    """power, eps, causal and where R comes from (fused candidates)."""

    @property
    def fused(self) -> bool:
        return self.reason is None


@dataclass(frozen=True)
class FuseReport:
    """What :func:`fuse_with_report` found: every candidate, fused or not, and why."""

    candidates: tuple[Candidate, ...]

    @property
    def fused(self) -> int:
        """How many attention layers were fused."""
        return sum(c.fused for c in self.candidates)

    def lines(self) -> list[str]:
        """A human-readable listing: one line per candidate, then what matched (``--explain``)."""
        lines = [f"fused {self.fused} of {len(self.candidates)} candidate attention subgraph(s)"]
        for c in self.candidates:
            verdict = (f"fused into {c.node}: " + ", ".join(f"{k}={v}" for k, v in c.attributes.items())
                       if c.fused else f"not fused: {c.reason}")
            lines.append(f"- difference {c.anchor}: {verdict}")
            lines += [f"    matched {step}" for step in c.matched]
        return lines


@dataclass(frozen=True)
class _Scaled:
    """x = const * r * (a - b): a pairwise difference times a constant and at most one run-time scalar r."""

    sub: gs.Node
    const: float
    r: gs.Tensor | None

    def same_up_to_constant(self, other: _Scaled) -> bool:
        return self.sub is other.sub and self.r is other.r and self.const != 0 and other.const != 0

    def equals(self, other: _Scaled) -> bool:
        return self.same_up_to_constant(other) and math.isclose(self.const, other.const, rel_tol=RTOL)


@dataclass(frozen=True)
class _Normalised:
    """The end of the pattern: its output, the unnormalised weights w, the ReduceSum giving sum_j w, and eps."""

    out: gs.Tensor
    w: gs.Tensor
    reduce_sum: gs.Node
    eps: float


@dataclass(frozen=True)
class _Triangle:
    """A mask computed at run time that holds True where cols - rows <= offset: ``layout`` places the axes named
    'rows' and 'cols' among the weights' axes (UNIT elsewhere), ``size`` gives their lengths."""

    size: dict[str, int | str | None]
    offset: int
    layout: tuple[str, ...]

    def complement(self) -> _Triangle:
        """Where this one is False: cols - rows >= offset + 1, that is rows - cols <= -offset - 1."""
        swap = {"rows": "cols", "cols": "rows"}
        return _Triangle({swap[axis]: n for axis, n in self.size.items()}, -self.offset - 1,
                         tuple(swap.get(label, label) for label in self.layout))

    def unsqueezed(self, node: gs.Node) -> _Triangle:
        return _Triangle(self.size, self.offset, _unsqueezed(self.layout, node))


@dataclass(frozen=True)
class _Weights:
    """w = prod_d sinc(x_d) ** power, maybe masked: the reduction over d, its input, the mask and x."""

    prod: gs.Node
    factors: gs.Tensor
    power: int
    mask: np.ndarray | _Triangle | None
    """A constant mask (True where it hides a weight), a run-time triangle (True where it shows one), or None."""
    x: _Scaled


@dataclass(frozen=True)
class _Fusion:
    """A proven match: the op's inputs in the pattern's layout, the permutations to [B,H,N,D], the attributes."""

    q: gs.Tensor
    k: gs.Tensor
    v: gs.Tensor
    perms: tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]
    """Transpose perms taking q, k, v to [B, H, N, D]."""
    out: gs.Tensor
    out_perm: tuple[int, ...]
    """Transpose perm taking the op's [B, H, Nq, D] to the pattern's output layout."""
    scale: _Scaled
    attrs: dict[str, float | int]


def _producer(t: gs.Tensor) -> gs.Node | None:
    return t.inputs[0] if t.inputs else None


def _op(t: gs.Tensor, *ops: str) -> gs.Node | None:
    """The node producing ``t`` if its op is one of ``ops``."""
    node = _producer(t)
    return node if node is not None and node.op in ops else None


def _describe(t: gs.Tensor) -> str:
    """What computes ``t``, for a reason."""
    node = _producer(t)
    return f"{node.op} {node.name}" if node is not None else f"input {t.name}"


def _constant(t: gs.Tensor) -> np.ndarray | None:
    return np.asarray(t.values) if isinstance(t, gs.Constant) else None


def _shape_value(t: gs.Tensor) -> tuple[int | str | None, ...] | None:
    """The value of an integer tensor computed from shapes, flattened, symbolic dims as their names: integer
    constants, Shape (start, end), Gather, Concat, (Un)Squeeze, Cast, and the difference of two sizes."""
    values = _constant(t)
    if values is not None:
        return tuple(int(v) for v in values.reshape(-1)) if values.dtype.kind in "iu" else None
    node = _producer(t)
    if node is None:
        return None
    if node.op == "Shape" and node.inputs[0].shape is not None:
        return tuple(node.inputs[0].shape)[node.attrs.get("start", 0):node.attrs.get("end")]
    parts = [_shape_value(x) for x in node.inputs]
    if any(p is None for p in parts):
        return None
    if node.op in ("Squeeze", "Unsqueeze", "Cast") and len(parts[0]) == 1:
        return parts[0]
    if node.op == "Concat":
        return tuple(d for p in parts for d in p)
    if node.op == "Gather" and node.attrs.get("axis", 0) == 0 and all(isinstance(i, int) for i in parts[1]):
        return tuple(parts[0][i] for i in parts[1])
    if node.op == "Sub" and len(parts[0]) == len(parts[1]) == 1:
        a, b = parts[0][0], parts[1][0]
        return (a - b,) if isinstance(a, int) and isinstance(b, int) else (0,) if _same_dim(a, b) else None
    return None


def _filled(t: gs.Tensor) -> tuple[float, tuple[int | str | None, ...]] | None:
    """(value, shape) of a tensor holding one value throughout: a constant, or Expand of a one-element constant
    or ConstantOfShape to a shape computed from shapes."""
    values, node = _constant(t), _producer(t)
    if values is None and node is not None and node.op in ("Expand", "ConstantOfShape"):
        fill = node.attrs.get("value") if node.op == "ConstantOfShape" else node.inputs[0]
        values = np.zeros(1) if fill is None else _constant(fill)  # ConstantOfShape's default value is 0
        shape = _shape_value(node.inputs[-1])
        if values is None or values.size != 1 or shape is None or values.ndim > len(shape):
            return None
        return float(values.flat[0]), shape
    if values is None or values.size == 0 or not np.all(values == values.flat[0]):
        return None
    return float(values.flat[0]), tuple(values.shape)


def _uniform(t: gs.Tensor, like: gs.Tensor) -> float | None:
    """The value of ``t`` if it holds one value throughout (see :func:`_filled`) and broadcasts no larger than
    ``like``: it has one element, or exactly ``like``'s (static or symbolic) shape."""
    filled = _filled(t)
    if filled is None or like.shape is None:
        return None
    value, shape = filled
    if all(d == 1 for d in shape) and len(shape) <= len(like.shape):
        return value
    return value if None not in shape and shape == tuple(like.shape) else None


def _unsqueezed(labels: tuple[str, ...], node: gs.Node) -> tuple[str, ...]:
    """``labels`` after Unsqueeze ``node``: UNIT at each new axis."""
    out, axes = list(labels), _axes(node)
    for axis in sorted(a % (len(out) + len(axes)) for a in axes):
        out.insert(axis, UNIT)
    return tuple(out)


def _run_time_scalar(t: gs.Tensor, like: gs.Tensor) -> bool:
    """Whether ``t`` is a non-constant tensor statically known to hold one element, of no higher rank than ``like``."""
    return not isinstance(t, gs.Constant) and t.shape is not None and all(d == 1 for d in t.shape) \
        and like.shape is not None and len(t.shape) <= len(like.shape)


def _float32(value: float) -> float:
    """``value`` as the shortest decimal that rounds to the same float32 (1e-06, not 9.99999997e-07)."""
    return float(str(np.float32(value)))


def _axes(node: gs.Node) -> list[int]:
    """The constant axes of a reduction or Unsqueeze (attribute or second input)."""
    if "axes" in node.attrs:
        return list(node.attrs["axes"])
    axes = _constant(node.inputs[1]) if len(node.inputs) > 1 else None
    if axes is None:
        raise _Miss(f"{node.op} {node.name} has no constant axes")
    return [int(a) for a in axes.reshape(-1)]


def _positive_integer(value: float, what: str) -> int:
    if value != int(value) or value < 1:
        raise _Miss(f"{what} {value:g} is not a positive integer")
    return int(value)


def _same_dim(a: int | str | None, b: int | str | None) -> bool:
    return a is not None and a == b


def _with_shapes(graph: gs.Graph) -> gs.Graph:
    """A copy of ``graph`` with ONNX shape inference's shapes on every tensor it can reach."""
    return gs.import_onnx(onnx.shape_inference.infer_shapes(gs.export_onnx(graph), data_prop=True))


class _Matcher:
    """Proves that the subgraph around one pairwise difference is Fourier attention, recording what matched."""

    def __init__(self, sub: gs.Node):
        self.sub = sub
        self.matched: list[str] = []
        self.downstream = self._reachable(sub.outputs[0])
        self._labels: dict[str, tuple[str, ...]] = {}

    @staticmethod
    def _reachable(start: gs.Tensor) -> dict[str, gs.Tensor]:
        """Tensors computed from the values of ``start`` (not only its shape) within SEARCH_DEPTH ops, by name,
        nearest first."""
        seen, frontier = {start.name: start}, [start]
        for _ in range(SEARCH_DEPTH):
            frontier = [out for t in frontier for node in t.outputs if node.op != "Shape" for out in node.outputs
                        if out.name not in seen]
            seen.update((t.name, t) for t in frontier)
        return seen

    def _derived(self, t: gs.Tensor) -> bool:
        """Whether ``t`` is computed from the difference."""
        return t.name in self.downstream

    def _note(self, step: str) -> None:
        self.matched.append(step)

    # --- axis labels ---------------------------------------------------------------------------------------------

    def labels(self, t: gs.Tensor) -> tuple[str, ...]:
        """Axis labels of ``t``, a tensor computed from the difference: the difference's axes are 'a0'..'a4',
        UNIT marks a size-one axis; Transpose, Unsqueeze, reductions and broadcasting elementwise ops move them."""
        if t.name not in self._labels:
            self._labels[t.name] = self._compute_labels(t)
        return self._labels[t.name]

    def _compute_labels(self, t: gs.Tensor) -> tuple[str, ...]:
        node = _producer(t)
        if node is self.sub:
            if t.shape is None:
                raise _Miss(f"the rank of difference {self.sub.name} is unknown")
            return tuple(f"a{i}" for i in range(len(t.shape)))
        if node is None or not self._derived(t):
            raise _Miss(f"{t.name} is not computed from difference {self.sub.name}")
        if node.op == "Transpose":
            below = self.labels(node.inputs[0])
            return tuple(below[p] for p in node.attrs.get("perm", range(len(below))[::-1]))
        if node.op == "Unsqueeze":
            return _unsqueezed(self.labels(node.inputs[0]), node)
        if node.op in ("ReduceSum", "ReduceProd"):
            below = self.labels(node.inputs[0])
            axes, keep = {a % len(below) for a in _axes(node)}, node.attrs.get("keepdims", 1)
            return tuple(UNIT if i in axes else label for i, label in enumerate(below) if keep or i not in axes)
        if node.op in ELEMENTWISE:
            return self._broadcast(node)
        raise _Miss(f"{node.op} {node.name} between the difference and the output is not understood")

    def _broadcast(self, node: gs.Node) -> tuple[str, ...]:
        """Labels of an elementwise node's output: its difference-derived operands' labels, broadcast."""
        ranked = [self.labels(t) for t in node.inputs if self._derived(t)]
        rank = max(len(r) for r in ranked)
        if any(t.shape is None or len(t.shape) > rank for t in node.inputs if not self._derived(t)):
            raise _Miss(f"{node.op} {node.name} broadcasts the attention tensor to a higher rank")
        out = []
        for pos in range(-rank, 0):
            names = {r[pos] for r in ranked if len(r) >= -pos} - {UNIT}
            if len(names) > 1:
                raise _Miss(f"{node.op} {node.name} combines different axes {sorted(names)}")
            out.append(names.pop() if names else UNIT)
        return tuple(out)

    # --- scaled difference and sinc ------------------------------------------------------------------------------

    def scaled(self, t: gs.Tensor) -> _Scaled:
        """``t`` as const * r * (a - b), walking back through Mul by scalars, Div by constants and Neg."""
        node = _producer(t)
        if node is self.sub:
            return _Scaled(self.sub, 1.0, None)
        if node is not None and node.op == "Neg":
            inner = self.scaled(node.inputs[0])
            return _Scaled(inner.sub, -inner.const, inner.r)
        if node is None or node.op not in ("Mul", "Div"):
            raise _Miss(f"{t.name} is not a scalar multiple of difference {self.sub.name} (found {_describe(t)})")
        a, b = node.inputs
        if node.op == "Mul" and not self._derived(a):
            a, b = b, a
        if not self._derived(a) or self._derived(b):
            raise _Miss(f"{node.op} {node.name} is not the difference times a scalar")
        inner, value = self.scaled(a), _uniform(b, a)
        if value:
            return _Scaled(inner.sub, inner.const * value if node.op == "Mul" else inner.const / value, inner.r)
        if node.op == "Mul" and inner.r is None and _run_time_scalar(b, a):
            return _Scaled(inner.sub, inner.const, b)
        raise _Miss(f"{node.op} {node.name}: the difference is scaled by {b.name}, which is neither a constant "
                    "scalar nor one run-time scalar R (a per-dimension R is not the op)")

    def zero_test(self, cond: gs.Tensor) -> tuple[_Scaled, float, bool]:
        """A test ``u == 0`` or ``|u| < tiny`` (either operand order, maybe under Not): (u, tiny, negated)."""
        if (negation := _op(cond, "Not")) is not None:
            u, tiny, negated = self.zero_test(negation.inputs[0])
            return u, tiny, not negated
        node = _op(cond, "Equal", "Less", "LessOrEqual", "Greater", "GreaterOrEqual")
        if node is None:
            raise _Miss(f"sinc's condition {cond.name} is not a test x == 0 or |x| < tiny")
        (a, b), op = node.inputs, node.op
        if not self._derived(a):
            a, b, op = b, a, {"Greater": "Less", "GreaterOrEqual": "LessOrEqual"}.get(op, op)
        bound = _uniform(b, a)
        if op == "Equal" and bound == 0:
            return self.scaled(a), 0.0, False
        if op in ("Less", "LessOrEqual") and (absolute := _op(a, "Abs")) is not None and bound is not None:
            if not 0 < bound <= TINY_LIMIT:
                raise _Miss(f"sinc's threshold |x| < {bound:g} is not in (0, {TINY_LIMIT:g}]")
            return self.scaled(absolute.inputs[0]), bound, False
        raise _Miss(f"sinc's condition {node.op} {node.name} is not a test x == 0 or |x| < tiny")

    def _unsafe(self, t: gs.Tensor, test: tuple[_Scaled, float, bool]) -> gs.Tensor:
        """``t`` without a "safe" substitute ``where(test, c, x)``, c != 0, changing x only where sinc is 1."""
        node = _op(t, "Where")
        if node is None:
            return t
        cond, then, other = node.inputs
        u, tiny, negated = self.zero_test(cond)
        if negated:
            then, other = other, then
        if not (u.equals(test[0]) and tiny == test[1] and _uniform(then, other)):
            raise _Miss(f"{node.name} changes sinc's argument outside the points where sinc is set to 1")
        return other

    def sinc(self, t: gs.Tensor) -> _Scaled:
        """The argument x of ``t`` = sinc(x) (unnormalised; sinc(0) = 1), in any of the forms in the docstring."""
        node = _op(t, "Where")
        if node is None:
            raise _Miss(f"{t.name} is not a sinc: {_describe(t)}, not where(x == 0, 1, sin(x) / x)")
        cond, then, other = node.inputs
        test = self.zero_test(cond)
        if test[2]:
            then, other = other, then
        division = _op(other, "Div")
        sine = _op(division.inputs[0], "Sin") if division is not None else None
        if _uniform(then, other) != 1 or sine is None:
            raise _Miss(f"{node.name} is not where(x == 0, 1, sin(x) / x)")
        x = self.scaled(self._unsafe(sine.inputs[0], test))
        if not x.equals(self.scaled(self._unsafe(division.inputs[1], test))):
            raise _Miss(f"{division.name} is not sin(x) / x: numerator and denominator differ")
        u, tiny, _ = test
        if not u.same_up_to_constant(x):
            raise _Miss(f"{node.name}: sinc's test is on another tensor than its argument")
        ratio = abs(x.const / u.const)
        if tiny * ratio > TINY_LIMIT:
            raise _Miss(f"{node.name}: sinc is set to 1 for |x| < {tiny * ratio:g}, more than {TINY_LIMIT:g}")
        form = ("where(|x| < tiny, 1, sin(x) / x)" if tiny else "where(x == 0, 1, sin(x) / x)") \
            if math.isclose(ratio, 1, rel_tol=RTOL) else "torch.sinc(x / pi)"
        self._note(f"sinc as {form} ({node.name})")
        return x

    # --- power, product, mask ------------------------------------------------------------------------------------

    def monomial(self, t: gs.Tensor) -> tuple[gs.Tensor, int]:
        """``t`` as base ** n through Pow by a constant and Mul of equal bases; (t, 1) when neither."""
        node = _producer(t)
        if node is not None and node.op == "Pow" and self._derived(node.inputs[0]):
            exponent = _uniform(node.inputs[1], node.inputs[0])
            if exponent is None:
                raise _Miss(f"Pow {node.name}: the exponent {node.inputs[1].name} is not a constant")
            base, n = self.monomial(node.inputs[0])
            return base, n * _positive_integer(exponent, f"Pow {node.name}: exponent")
        if node is not None and node.op == "Mul":
            (a, na), (b, nb) = (self.monomial(x) for x in node.inputs)
            if a is b:
                return a, na + nb
        return t, 1

    def mask(self, t: gs.Tensor) -> tuple[gs.Tensor, np.ndarray | _Triangle] | None:
        """``t`` as where(hidden, 0, w), where(shown, w, 0) or w * shown with a constant or triangular mask:
        (w, the mask), else None."""
        node = _producer(t)
        if node is not None and node.op == "Where" and not self._derived(node.inputs[0]):
            cond, then, other = node.inputs
            hides = _uniform(then, other) == 0
            if not hides and _uniform(other, then) != 0:
                raise _Miss(f"{node.name}: a mask that does not set weights to 0")
            w = other if hides else then
            if (values := _constant(cond)) is not None:
                return w, values.astype(bool) if hides else ~values.astype(bool)
            triangle = self._triangle(cond)
            return w, triangle.complement() if hides else triangle
        if node is not None and node.op == "Mul":
            for w, m in (node.inputs, node.inputs[::-1]):
                values = _constant(m)
                if values is not None and values.size > 1 and np.isin(values, (0, 1)).all():
                    return w, values == 0
        return None

    def _triangle(self, cond: gs.Tensor) -> _Triangle:
        """A boolean mask computed at run time from shapes: Trilu(ones, k), or a comparison of arange(n) indices
        (maybe plus constants), under Not and Unsqueeze."""
        node = _producer(cond)
        if node is not None and node.op == "Cast" and node.attrs.get("to") == onnx.TensorProto.BOOL:
            return self._triangle(node.inputs[0])  # every form below is boolean or 0/1-valued
        if node is not None and node.op == "Unsqueeze":
            return self._triangle(node.inputs[0]).unsqueezed(node)
        if node is not None and node.op == "Not":
            return self._triangle(node.inputs[0]).complement()
        if node is not None and node.op == "Trilu":
            filled = _filled(node.inputs[0])
            k = _constant(node.inputs[1]) if len(node.inputs) > 1 else np.zeros(1, np.int64)
            if filled is not None and filled[0] == 1 and len(filled[1]) == 2 and k is not None:
                k = int(k.reshape(-1)[0])
                lower = _Triangle({"rows": filled[1][0], "cols": filled[1][1]}, k, ("rows", "cols"))
                return _Triangle(lower.size, k - 1, lower.layout).complement() if node.attrs.get("upper", 1) \
                    else lower
        if node is not None and node.op in ("LessOrEqual", "Less", "GreaterOrEqual", "Greater"):
            a, b = node.inputs if node.op.startswith("Less") else node.inputs[::-1]
            (cols, n_cols, c_a), (rows, n_rows, c_b) = self._index(a), self._index(b)
            rank = max(len(cols), len(rows))
            cols, rows = (UNIT,) * (rank - len(cols)) + cols, (UNIT,) * (rank - len(rows)) + rows
            if all(UNIT in pair for pair in zip(cols, rows)):  # a <= b + t: a - b <= t, with a the columns
                layout = tuple("cols" if c != UNIT else "rows" if r != UNIT else UNIT for c, r in zip(cols, rows))
                return _Triangle({"rows": n_rows, "cols": n_cols}, c_b - c_a - (not node.op.endswith("Equal")),
                                 layout)
        raise _Miss(f"{cond.name}: a mask that is neither a constant nor a triangle (Trilu of ones, or a "
                    "comparison of arange indices)")

    @staticmethod
    def _index(t: gs.Tensor) -> tuple[tuple[str, ...], int | str | None, int]:
        """``t`` = arange(n) (maybe Unsqueezed) + a constant (maybe Nk - Nq of equal sizes): (its layout with the
        index axis UNIT-free, n, the constant)."""
        node, unsqueezes = _producer(t), []
        if node is not None and node.op == "Add":
            for index, offset in (node.inputs, node.inputs[::-1]):
                value = _shape_value(offset)
                if value is not None and len(value) == 1 and isinstance(value[0], int):
                    layout, n, c = _Matcher._index(index)
                    return layout, n, c + value[0]
        while node is not None and node.op == "Unsqueeze":
            unsqueezes.append(node)
            node = _producer(node.inputs[0])
        limit = _shape_value(node.inputs[1]) if node is not None and node.op == "Range" else None
        start, delta = (_constant(node.inputs[i]) for i in (0, 2)) if limit is not None else (None, None)
        if limit is None or len(limit) != 1 or start is None or delta is None or start.flat[0] != 0 \
                or delta.flat[0] != 1:
            raise _Miss(f"{t.name} in the mask is not arange(n) plus a constant (an offset Nk - Nq of sizes not "
                        "known to be equal is not supported)")
        layout = ("index",)
        for unsqueeze in reversed(unsqueezes):
            layout = _unsqueezed(layout, unsqueeze)
        return layout, limit[0], 0

    def weights(self, w: gs.Tensor) -> _Weights:
        """``w`` = (prod_d sinc(x_d)) ** power with the power anywhere around the product, maybe masked."""
        power, mask = 1, None
        while True:
            if (found := self.mask(w)) is not None:
                if mask is not None:
                    raise _Miss(f"{w.name}: more than one mask")
                self._note(f"{'constant' if isinstance(found[1], np.ndarray) else 'triangular'} mask "
                           f"({_producer(w).name})")
                w, mask = found
                continue
            base, n = self.monomial(w)
            if n == 1:
                break
            power, w = power * n, base
        prod, factors = self.product(w)
        base, n = self.monomial(factors)
        x = self.sinc(base)
        if not opspec.POWER.is_valid(power * n):
            raise _Miss(f"power {power * n}: not an {opspec.POWER.valid_range}")
        self._note(f"power {power * n}")
        return _Weights(prod, factors, power * n, mask, x)

    def product(self, t: gs.Tensor) -> tuple[gs.Node, gs.Tensor]:
        """``t`` = prod_d s_d: (the reduction over d, s)."""
        node = _producer(t)
        if node is not None and node.op == "ReduceProd":
            self._note(f"product over d as ReduceProd ({node.name})")
            found = node, node.inputs[0]
        elif node is not None and node.op in ("Exp", "Mul"):
            found = self._log_product(node)
        else:
            raise _Miss(self._not_a_product(t))
        if found[0].attrs.get("keepdims", 1) or len(_axes(found[0])) != 1:
            raise _Miss(f"{found[0].op} {found[0].name} does not reduce exactly one axis without keeping it")
        return found

    def _log_product(self, node: gs.Node) -> tuple[gs.Node, gs.Tensor]:
        """exp(sum_d log|s_d|), optionally times prod_d sign(s_d): (the ReduceSum, s)."""
        sign = None
        if node.op == "Mul":
            signs = [_producer(x) for x in node.inputs if _op(x, "ReduceProd") and _op(_producer(x).inputs[0], "Sign")]
            exps = [_producer(x) for x in node.inputs if _op(x, "Exp")]
            if len(signs) != 1 or len(exps) != 1:
                raise _Miss(self._not_a_product(node.outputs[0]))
            sign, node = signs[0], exps[0]
        total = _op(node.inputs[0], "ReduceSum")
        log_node = _op(total.inputs[0], "Log") if total is not None else None
        absolute = _op(log_node.inputs[0], "Abs") if log_node is not None else None
        if absolute is None:
            raise _Miss(f"Exp {node.name} is not exp(sum(log|s|))")
        factors = absolute.inputs[0]
        if sign is not None and (_producer(sign.inputs[0]).inputs[0] is not factors or _axes(sign) != _axes(total)
                                 or sign.attrs.get("keepdims", 1) != total.attrs.get("keepdims", 1)):
            raise _Miss(f"{sign.name} is not the sign of the same product")
        self._note(f"product over d as exp(sum(log|s|)){' * prod(sign(s))' if sign else ''} ({total.name})")
        return total, factors

    def _not_a_product(self, t: gs.Tensor) -> str:
        """Why ``t`` is not a product over d, naming the usual near misses."""
        node = _producer(t)
        if node is not None and node.op == "Mul" and any(_uniform(x, y) is not None
                                                         for x, y in (node.inputs, node.inputs[::-1])):
            return f"{node.name}: the weights are scaled by a constant, which changes their balance against eps"
        if node is not None and node.op == "Where":
            return f"{node.name}: a mask that is not a constant (masks computed at run time are not supported)"
        return f"{t.name} is not a product over d (found {_describe(t)})"

    # --- contraction and normaliser ------------------------------------------------------------------------------

    def contraction(self) -> gs.Node:
        """The nearest MatMul or Einsum contracting a tensor computed from the difference with one that is not."""
        for t in self.downstream.values():
            for node in t.outputs:
                if node.op in ("MatMul", "Einsum") and len(node.inputs) == 2 and \
                        sum(self._derived(x) for x in node.inputs) == 1:
                    self._note(f"contraction with v as {node.op} ({node.name})")
                    return node
        raise _Miss("no MatMul or Einsum contracts the weights with a v")

    def contract_labels(self, node: gs.Node, weights: gs.Tensor) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """The labels of v and of the contraction's output (v's own axis labelled VALUE)."""
        w = self.labels(weights)
        if node.op == "MatMul":
            if len(w) != 4 or node.inputs[0] is not weights:
                raise _Miss(f"MatMul {node.name} is not weights[.., Nq, Nk] @ v[.., Nk, Dv] of rank 4")
            return (w[0], w[1], w[3], VALUE), (w[0], w[1], w[2], VALUE)
        equation = node.attrs["equation"]
        equation = (equation.decode() if isinstance(equation, bytes) else equation).replace(" ", "")
        operands, _, result = equation.partition("->")
        terms = operands.split(",")
        if "." in equation or not result or len(terms) != 2:
            raise _Miss(f"Einsum {node.name} '{equation}' is not an explicit two-operand contraction")
        w_term, v_term = terms if node.inputs[0] is weights else terms[::-1]
        if len(w_term) != len(w) or any(len(set(term)) != len(term) for term in (w_term, v_term, result)):
            raise _Miss(f"Einsum {node.name} '{equation}' repeats an index")
        by_letter = dict(zip(w_term, w))
        own = [c for c in v_term if c not in by_letter]
        if len(own) != 1 or set(result) - set(w_term + v_term):
            raise _Miss(f"Einsum {node.name} '{equation}' is not weights contracted with v over one index")
        by_letter[own[0]] = VALUE
        return tuple(by_letter[c] for c in v_term), tuple(by_letter[c] for c in result)

    def normaliser(self, den: gs.Tensor) -> tuple[gs.Node, float]:
        """``den`` = sum w + eps with eps a constant scalar (the sum maybe Unsqueezed): (the ReduceSum, eps)."""
        add = _op(den, "Add")
        if add is None:
            raise _Miss(f"the normaliser {den.name} is {_describe(den)}, not a sum + eps")
        total, eps_t = add.inputs if self._derived(add.inputs[0]) else add.inputs[::-1]
        eps = _uniform(eps_t, total)
        if eps is None or self._derived(eps_t):
            raise _Miss(f"Add {add.name}: eps {eps_t.name} is not a constant scalar")
        if not opspec.EPS.is_valid(eps):
            raise _Miss(f"Add {add.name}: eps {eps:g} is not {opspec.EPS.valid_range}")
        while (unsqueeze := _op(total, "Unsqueeze")) is not None:
            total = unsqueeze.inputs[0]
        reduce_sum = _op(total, "ReduceSum")
        if reduce_sum is None or len(_axes(reduce_sum)) != 1:
            raise _Miss(f"the normaliser is {_describe(total)} + eps, not a sum over the keys + eps")
        self._note(f"normaliser sum + {eps:g} ({reduce_sum.name}, {add.name})")
        return reduce_sum, eps

    def normalised(self, node: gs.Node, weights: gs.Tensor) -> _Normalised:
        """out = (w @ v) / (sum w + eps) after the contraction, or out = (w / (sum w + eps)) @ v before it."""
        transpose = _op(weights, "Transpose")
        source = transpose.inputs[0] if transpose is not None else weights
        result = node.outputs[0]
        after = [c for c in result.outputs if c.op == "Div" and c.inputs[0] is result and self._derived(c.inputs[1])]
        if after:
            reduce_sum, eps = self.normaliser(after[0].inputs[1])
            if reduce_sum.inputs[0] is not source and reduce_sum.inputs[0] is not weights:
                raise _Miss(f"the normaliser sums {reduce_sum.inputs[0].name}, not the contracted weights")
            self._check_division(after[0], reduce_sum, self.contract_labels(node, weights)[1])
            return _Normalised(after[0].outputs[0], source, reduce_sum, eps)
        division = _op(source, "Div")
        if division is None or not self._derived(division.inputs[1]):
            if _op(source, "Softmax") is not None:
                raise _Miss(f"{_describe(source)}: the weights are normalised by a softmax, not by sum + eps")
            raise _Miss(f"the contracted weights come from {_describe(source)}, not from a division by their "
                        "sum + eps")
        reduce_sum, eps = self.normaliser(division.inputs[1])
        if reduce_sum.inputs[0] is not division.inputs[0]:
            raise _Miss(f"the normaliser sums {reduce_sum.inputs[0].name}, not the weights it divides")
        self._check_division(division, reduce_sum, self.labels(division.inputs[0]))
        return _Normalised(result, division.inputs[0], reduce_sum, eps)

    def _check_division(self, division: gs.Node, reduce_sum: gs.Node, numerator: tuple[str, ...]) -> None:
        """The denominator holds one sum per (batch, head, query), aligned with the numerator's axes."""
        den, summed = self.labels(division.inputs[1]), self.key_axis(reduce_sum)
        if len(den) != len(numerator) or not all(d == n or (d == UNIT and n in (summed, VALUE))
                                                 for d, n in zip(den, numerator)):
            raise _Miss(f"Div {division.name}: the sums (axes {den}) do not line up with {numerator}")

    def key_axis(self, reduce_sum: gs.Node) -> str:
        """The label of the axis the normaliser sums over."""
        below = self.labels(reduce_sum.inputs[0])
        return below[_axes(reduce_sum)[0] % len(below)]

    # --- the whole match -----------------------------------------------------------------------------------------

    def match(self) -> _Fusion:
        """Prove the candidate is Fourier attention and say how to fuse it; _Miss otherwise."""
        if any(len(_axes(_producer(t))) != 1 for t in self.sub.inputs):
            raise _Miss("the difference is not between two tensors each broadcast along one axis")
        node = self.contraction()
        weights = next(t for t in node.inputs if self._derived(t))
        end = self.normalised(node, weights)
        found = self.weights(end.w)
        if found.x.sub is not self.sub:
            raise _Miss(f"sinc's argument is a difference other than {self.sub.name}")
        diff = self.labels(self.sub.outputs[0])
        if len(diff) != 5:
            raise _Miss(f"the difference has rank {len(diff)}, not 5 ([B, H, Nq, Nk, D] in some order)")
        d = self.labels(found.factors)[_axes(found.prod)[0] % len(diff)]
        j = self.key_axis(end.reduce_sum)
        broadcast = [diff[_axes(_producer(t))[0] % len(diff)] for t in self.sub.inputs]
        if j not in broadcast or d in broadcast:
            raise _Miss(f"the sum is over axis {j} and the product over {d}, but the difference broadcasts "
                        f"{broadcast}: these must be the key axis and the query axis")
        i = broadcast[1 - broadcast.index(j)]
        q, k = (_producer(t).inputs[0] for t in self.sub.inputs[::1 if broadcast[0] == j else -1])
        v = next(t for t in node.inputs if not self._derived(t))
        batch = tuple(label for label in diff if label not in (i, j, d))
        v_labels, out_labels = self.contract_labels(node, weights)
        if sorted(out_labels) != sorted((*batch, i, VALUE)) or sorted(v_labels) != sorted((*batch, j, VALUE)):
            raise _Miss(f"{node.op} {node.name} does not contract the key axis {j} of the weights with v")
        self._note(f"axes: query {i}, key {j}, dim {d}, batch {batch[0]} and {batch[1]}")
        causal = self._causal(end.w, found.mask, i, j)
        perms = (tuple(diff.index(label) - (diff.index(label) > diff.index(j)) for label in (*batch, i, d)),
                 tuple(diff.index(label) - (diff.index(label) > diff.index(i)) for label in (*batch, j, d)),
                 tuple(v_labels.index(label) for label in (*batch, j, VALUE)))
        self._check_shapes((q, k, v), perms)
        return _Fusion(q, k, v, perms, end.out, tuple((*batch, i, VALUE).index(label) for label in out_labels),
                       found.x, {"power": found.power, "eps": _float32(end.eps), "causal": causal})

    def _causal(self, w: gs.Tensor, mask: np.ndarray | _Triangle | None, i: str, j: str) -> int:
        """0 without a mask, 1 if ``mask`` on ``w`` is exactly the causal one: hides j > i + (Nk - Nq)."""
        if mask is None:
            return 0
        diff, labels = self.sub.outputs[0], self.labels(w)
        nq, nk = (diff.shape[self.labels(diff).index(axis)] for axis in (i, j))
        if isinstance(mask, _Triangle):
            return self._causal_triangle(mask, labels, i, j, (nq, nk))
        if not (isinstance(nq, int) and isinstance(nk, int)):
            raise _Miss("a constant mask on attention whose sizes are not static")
        if mask.ndim > len(labels):
            raise _Miss(f"the mask has rank {mask.ndim}, more than the weights' {len(labels)}")
        full = mask.reshape((1,) * (len(labels) - mask.ndim) + mask.shape)
        if any(size != 1 for label, size in zip(labels, full.shape) if label not in (i, j)):
            raise _Miss("the mask varies along an axis other than the query and key axes")
        matrix = full[tuple(slice(None) if label in (i, j) else 0 for label in labels)]
        matrix = matrix.T if labels.index(i) > labels.index(j) else matrix
        try:
            matrix = np.broadcast_to(matrix, (nq, nk))
        except ValueError as exc:
            raise _Miss(f"the mask {matrix.shape} does not fit the weights' Nq={nq}, Nk={nk}") from exc
        if not matrix.any():
            self._note("a mask that hides nothing")
            return 0
        if not np.array_equal(matrix, np.arange(nk)[None, :] > np.arange(nq)[:, None] + (nk - nq)):
            raise _Miss(f"the constant mask is not the causal mask j > i + (Nk - Nq) for Nq={nq}, Nk={nk}")
        self._note(f"causal mask (Nq={nq}, Nk={nk})")
        return 1

    def _causal_triangle(self, mask: _Triangle, labels: tuple[str, ...], i: str, j: str,
                         sizes: tuple[int | str | None, int | str | None]) -> int:
        """1 if the run-time mask shows exactly j - i <= Nk - Nq, over [Nq, Nk] on the query and key axes."""
        nq, nk = sizes
        offset = nk - nq if isinstance(nq, int) and isinstance(nk, int) else 0 if _same_dim(nq, nk) else None
        aligned = dict(zip(mask.layout[::-1], labels[::-1]))
        if len(mask.layout) > len(labels) or (aligned.get("rows"), aligned.get("cols")) != (i, j) \
                or mask.offset != offset:
            raise _Miss(f"the mask shown where {aligned.get('cols')} - {aligned.get('rows')} <= {mask.offset} is not "
                        f"the causal mask {j} - {i} <= Nk - Nq for Nq={nq}, Nk={nk}")
        if not (_same_dim(mask.size["rows"], nq) and _same_dim(mask.size["cols"], nk)):
            raise _Miss(f"the mask's size {mask.size} is not provably the weights' Nq={nq}, Nk={nk}")
        self._note(f"causal mask (Nq={nq}, Nk={nk})")
        return 1

    @staticmethod
    def _check_shapes(tensors: tuple[gs.Tensor, gs.Tensor, gs.Tensor], perms: tuple[tuple[int, ...], ...]) -> None:
        """q, k, v agree on B, H and D, and k, v on Nk, as the op requires (it does not broadcast)."""
        shapes = []
        for t, perm in zip(tensors, perms):
            if t.shape is None or len(t.shape) != 4:
                raise _Miss(f"{t.name} does not have a known rank of 4")
            shapes.append([t.shape[p] for p in perm])
        (qs, ks, vs), names = shapes, ("B", "H", "N", "D")
        for axis in (0, 1, 3):
            for other, name in ((ks, "k"), (vs, "v")):
                if not _same_dim(qs[axis], other[axis]):
                    raise _Miss(f"q and {name} do not provably agree on {names[axis]}: {qs} vs {other}")
        if not _same_dim(ks[2], vs[2]):
            raise _Miss(f"k and v do not provably agree on Nk: {ks} vs {vs}")


def _pairwise_differences(graph: gs.Graph) -> list[gs.Node]:
    """The candidates: Sub nodes whose operands are both Unsqueezed (a broadcast difference a_i - b_j)."""
    return [n for n in graph.nodes if n.op == "Sub" and all(_op(t, "Unsqueeze") for t in n.inputs)]


def _r_input(graph: gs.Graph, fusion: _Fusion, name: str) -> tuple[gs.Tensor, str]:
    """The op's R input (|const * r| as a scalar) and where it comes from."""
    scale, dtype = fusion.scale, fusion.q.dtype or np.float32
    if scale.r is None:
        return gs.Constant(f"{name}/R", np.array(abs(scale.const), dtype=dtype)), \
            f"constant {_float32(abs(scale.const)):g}"
    r = scale.r
    source = "graph input" if r in graph.inputs else "computed"
    if len(r.shape):
        r = _append(graph, "Reshape", name, [r, gs.Constant(f"{name}/scalar_shape", np.zeros(0, np.int64))], dtype)
    if not math.isclose(scale.const, 1, rel_tol=RTOL):
        r = _append(graph, "Mul", name, [r, gs.Constant(f"{name}/R_factor", np.array(scale.const, dtype))], dtype)
    return _append(graph, "Abs", name, [r], dtype), f"{source} {scale.r.name}" + (
        f" * {scale.const:g}" if not math.isclose(scale.const, 1, rel_tol=RTOL) else "")


def _append(graph: gs.Graph, op: str, name: str, inputs: list[gs.Tensor], dtype, out: gs.Tensor | None = None,
            shape: list | None = None, **attrs) -> gs.Tensor:
    """Add node ``op`` named after the fused node; returns its output (``out`` or a new tensor of ``shape``)."""
    out = out or gs.Variable(f"{name}/{op}_{len(graph.nodes)}", dtype=dtype, shape=shape)
    graph.nodes.append(gs.Node(op, f"{name}/{op}_{len(graph.nodes)}", attrs, inputs, [out]))
    return out


def _rewrite(graph: gs.Graph, fusion: _Fusion, name: str) -> str:
    """Replace the matched subgraph by one FourierAttention node named ``name``; returns R's source."""
    dtype = fusion.q.dtype or np.float32
    inputs = [t if perm == tuple(range(4)) else _append(graph, "Transpose", name, [t], dtype, perm=list(perm),
                                                       shape=[t.shape[p] for p in perm])
              for t, perm in zip((fusion.q, fusion.k, fusion.v), fusion.perms)]
    r, source = _r_input(graph, fusion, name)
    out = fusion.out
    out.inputs.clear()
    identity = fusion.out_perm == tuple(range(4))
    result = out if identity else gs.Variable(f"{name}/out", dtype=out.dtype)
    graph.nodes.append(gs.Node(opspec.OP_TYPE, name, opspec.check_attributes(fusion.attrs, opspec.NODE_ATTRIBUTES),
                               [*inputs, r], [result], domain=opspec.DOMAIN))
    if not identity:
        _append(graph, "Transpose", name, [result], out.dtype, out=out, perm=list(fusion.out_perm))
    return source


def _apply(graph: gs.Graph, matcher: _Matcher, outcome: _Fusion | _Miss, name: str) -> Candidate:
    """Fuse one matched candidate (or log why not) and say what became of it."""
    if isinstance(outcome, _Miss):
        log.info("not fused: difference %s: %s", matcher.sub.name, outcome)
        return Candidate(matcher.sub.name, tuple(matcher.matched), str(outcome))
    attrs = {**opspec.check_attributes(outcome.attrs, opspec.NODE_ATTRIBUTES), "R": _rewrite(graph, outcome, name)}
    log.debug("fused difference %s into %s: %s", matcher.sub.name, name, attrs)
    return Candidate(matcher.sub.name, tuple(matcher.matched), node=name, attributes=attrs)


def _outcome(matcher: _Matcher) -> _Fusion | _Miss:
    try:
        return matcher.match()
    except _Miss as miss:
        return miss


def fuse_with_report(graph: gs.Graph) -> tuple[gs.Graph, FuseReport]:
    """A copy of ``graph`` with every provable Fourier-attention subgraph replaced by one portable
    FourierAttention node, and the report of every candidate (fused, or left alone and why)."""
    graph = _with_shapes(cleanup(graph))
    matchers = [_Matcher(sub) for sub in _pairwise_differences(graph)]
    outcomes = [_outcome(m) for m in matchers]  # all matched before any rewrite
    report = FuseReport(tuple(_apply(graph, m, outcome, f"fused_fourier_attention_{index}")
                              for index, (m, outcome) in enumerate(zip(matchers, outcomes))))
    if report.fused:
        graph.import_domains = [d for d in graph.import_domains or [] if d.domain != opspec.DOMAIN]
        graph.import_domains.append(onnx.helper.make_opsetid(opspec.DOMAIN, opspec.VERSION))
    log.info("fuse: %d of %d candidate attention subgraph(s) fused", report.fused, len(report.candidates))
    return graph.cleanup().toposort(), report


def fuse(graph: gs.Graph) -> gs.Graph:
    """The graph pass: :func:`fuse_with_report` without the report (which it logs)."""
    return fuse_with_report(graph)[0]
