"""Closed-form update rules as JSON expression trees: validated, evaluated with torch, never ``eval``ed.

A rule is a tree of plain JSON values, as stored in a symbolic optimizer's ``config.json``::

    {"input": "m_tilde"}                               a named input (see ``learned_optim.optimizers.symbolic``)
    {"const": 0.0248}                                  a numeric constant (learnable when meta-tuning)
    {"op": "tanh", "args": [<tree>]}                   an operator from ``OPERATORS`` applied to sub-trees
    {"op": "powi", "args": [<tree>], "exponent": 3}    an integer power (the exponent is structure, not learned)

Loading a rule checks every node against the whitelist (operator names, arities, input names,
finite constants, depth and size limits) and builds nothing but calls to fixed torch functions:
no ``eval``, no ``sympify`` on text, no pickle. Constants are numbered in depth-first order; the
evaluator reads them from a tensor, so meta-training can differentiate through them.
"""

from __future__ import annotations

import math
import operator as python_operator
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from learned_optim.nets.coordinatewise import tanh

MAX_NODES = 256
MAX_DEPTH = 32
MAX_EXPONENT = 8


@dataclass(frozen=True)
class Operator:
    """A whitelisted operator: its arity, its torch implementation and how to print it."""

    arity: int
    torch_fn: Callable[..., Tensor]
    infix: str  # format string over the printed arguments


# 1/(2k+1)!: the odd Taylor series of sinh to x¹⁷ (error < 1e-17 relative for |x| < 1).
_SINH_TAYLOR = tuple(1.0 / math.factorial(2 * k + 1) for k in range(9))


def _sinh(x: Tensor) -> Tensor:
    """sinh(x): its Taylor series for |x| < 1, else sign(x) (e − 1/e) / 2 with e = exp(|x|).

    torch.sinh has no vectorised CPU kernel (4-5× slower than tanh, under torch.compile too), and
    (expm1(x) − expm1(−x)) / 2 pays for two expm1 calls: this costs one exp and a few multiply-adds
    (half the time, fused). Both branches are within 1 ulp (float32 and float64); the series
    removes the cancellation of e − 1/e near 0; e ≥ 1, so 1/e never overflows and the gradient is
    cosh(x) everywhere. In float32 it overflows to ±inf for |x| > 88.7 instead of 89.4.
    """
    small = x.clamp(-1.0, 1.0)  # the series' branch stays finite where it is not selected
    square = small * small
    series = _SINH_TAYLOR[-1]
    for coefficient in reversed(_SINH_TAYLOR[:-1]):
        series = series * square + coefficient
    magnitude = x.abs()
    e = torch.exp(magnitude)
    return torch.where(magnitude < 1.0, small * series, x.sign() * (e - 1.0 / e) * 0.5)


def integer_power(x: Tensor | float, exponent: int) -> Tensor | float:
    """x ** exponent by repeated squaring (x⁸ = three multiplications).

    Under torch.compile a tensor ``pow`` with an integer exponent becomes a scalar ``std::pow`` call
    per element on the CPU (about 3× the step time of a whole distilled rule); multiplications
    vectorise. Same value up to rounding (a few ulp for the largest exponents).
    """
    result, base, remaining = None, x, abs(exponent)
    while remaining:
        if remaining & 1:
            result = base if result is None else result * base
        remaining >>= 1
        if remaining:
            base = base * base
    return result if exponent > 0 else 1.0 / result


OPERATORS: dict[str, Operator] = {
    # Binary operators through Python's, so a constant may be a float or a tensor on either side.
    "add": Operator(2, python_operator.add, "({0} + {1})"),
    "sub": Operator(2, python_operator.sub, "({0} - {1})"),
    "mul": Operator(2, python_operator.mul, "({0} * {1})"),
    "div": Operator(2, python_operator.truediv, "({0} / {1})"),
    "neg": Operator(1, torch.neg, "(-{0})"),
    "abs": Operator(1, torch.abs, "abs({0})"),
    "sign": Operator(1, torch.sign, "sign({0})"),
    "square": Operator(1, torch.square, "({0})^2"),
    "sqrt": Operator(1, torch.sqrt, "sqrt({0})"),
    "exp": Operator(1, torch.exp, "exp({0})"),
    "log": Operator(1, torch.log, "log({0})"),
    # On the CPU as 2σ(2x) − 1 (the LSTM's helper): ~20% off a fused distilled rule's step at 10M;
    # within 2e-7 of tanh in float32 (absolute), 3e-16 in float64.
    "tanh": Operator(1, tanh, "tanh({0})"),
    "sinh": Operator(1, _sinh, "sinh({0})"),
    "cosh": Operator(1, torch.cosh, "cosh({0})"),
    "sin": Operator(1, torch.sin, "sin({0})"),
    "cos": Operator(1, torch.cos, "cos({0})"),
    "atan": Operator(1, torch.atan, "atan({0})"),
    "powi": Operator(1, integer_power, "({0})^{exponent}"),  # called with the node's exponent
}


class RuleError(ValueError):
    """A rule tree is malformed or uses something outside the whitelist."""


@dataclass(frozen=True)
class Rule:
    """A validated expression tree; ``constants`` are its numbers in depth-first order."""

    tree: Mapping[str, Any]
    inputs: tuple[str, ...]
    constants: tuple[float, ...]

    @classmethod
    def from_json(cls, tree: Any, allowed_inputs: Iterable[str] | None = None, source: str = "rule") -> Rule:
        """Validate ``tree`` (plain JSON values); ``allowed_inputs`` restricts the input names."""
        allowed = None if allowed_inputs is None else set(allowed_inputs)
        inputs: list[str] = []
        constants: list[float] = []
        count = 0

        def visit(node: Any, depth: int, path: str) -> None:
            nonlocal count
            count += 1
            if count > MAX_NODES:
                raise RuleError(f"{source}: more than {MAX_NODES} nodes")
            if depth > MAX_DEPTH:
                raise RuleError(f"{source}: deeper than {MAX_DEPTH} at {path}")
            if not isinstance(node, Mapping):
                raise RuleError(f"{source}: node at {path} must be an object, got {type(node).__name__}")
            keys = set(node)
            if keys == {"input"}:
                name = node["input"]
                if not isinstance(name, str) or (allowed is not None and name not in allowed):
                    raise RuleError(f"{source}: unknown input {name!r} at {path}; known: {sorted(allowed or [])}")
                if name not in inputs:
                    inputs.append(name)
            elif keys == {"const"}:
                value = node["const"]
                if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                    raise RuleError(f"{source}: constant at {path} must be a finite number, got {value!r}")
                constants.append(float(value))
            elif "op" in keys:
                op = node["op"]
                operator = OPERATORS.get(op) if isinstance(op, str) else None
                if operator is None:
                    raise RuleError(f"{source}: unknown operator {op!r} at {path}; known: {sorted(OPERATORS)}")
                expected_keys = {"op", "args", "exponent"} if op == "powi" else {"op", "args"}
                if keys != expected_keys:
                    raise RuleError(f"{source}: {op} node at {path} must have keys {sorted(expected_keys)}")
                if op == "powi":
                    exponent = node["exponent"]
                    if (
                        isinstance(exponent, bool)
                        or not isinstance(exponent, int)
                        or not 0 < abs(exponent) <= MAX_EXPONENT
                    ):
                        raise RuleError(
                            f"{source}: powi exponent at {path} must be a nonzero int up to ±{MAX_EXPONENT}"
                        )
                args = node["args"]
                if not isinstance(args, list) or len(args) != operator.arity:
                    raise RuleError(f"{source}: {op} at {path} takes {operator.arity} argument(s)")
                for index, arg in enumerate(args):
                    visit(arg, depth + 1, f"{path}.{op}[{index}]")
            else:
                raise RuleError(f"{source}: node at {path} has keys {sorted(keys)}; expected input, const or op")

        visit(tree, 0, "root")
        return cls(tree, tuple(inputs), tuple(constants))

    def evaluate(self, inputs: Mapping[str, Tensor], constants: Tensor | None = None) -> Tensor:
        """The rule's value; ``constants`` (a 1-D tensor) replaces the tree's numbers when given.

        Pure tensor code: works under autograd, ``vmap`` and ``torch.compile``.
        """
        counter = iter(range(len(self.constants)))

        def value(node: Mapping[str, Any]) -> Tensor | float:
            if "input" in node:
                return inputs[node["input"]]
            if "const" in node:
                index = next(counter)
                return node["const"] if constants is None else constants[index]
            args = [value(arg) for arg in node["args"]]
            if node["op"] == "powi":
                return OPERATORS["powi"].torch_fn(args[0], node["exponent"])
            if len(args) == 1 and not isinstance(args[0], Tensor):
                args = [torch.tensor(args[0], dtype=torch.float64)]  # a constant sub-tree
            return OPERATORS[node["op"]].torch_fn(*args)

        result = value(self.tree)
        return result if isinstance(result, Tensor) else torch.tensor(result)

    def with_constants(self, constants: Iterable[float]) -> Rule:
        """The same tree with new constants (e.g. after meta-tuning), in depth-first order."""
        values = iter([float(c) for c in constants])

        def rebuild(node: Mapping[str, Any]) -> dict[str, Any]:
            if "const" in node:
                return {"const": next(values)}
            if "input" in node:
                return dict(node)
            return {**node, "args": [rebuild(arg) for arg in node["args"]]}

        tree = rebuild(self.tree)
        if next(values, None) is not None:
            raise RuleError(f"too many constants for a rule with {len(self.constants)}")
        return Rule.from_json(tree)

    def size(self) -> int:
        """Number of nodes: the complexity of the rule."""

        def count(node: Mapping[str, Any]) -> int:
            return 1 + sum(count(arg) for arg in node.get("args", ()))

        return count(self.tree)

    def infix(self, digits: int = 4) -> str:
        """Human-readable formula with constants rounded to ``digits`` significant digits."""

        def show(node: Mapping[str, Any]) -> str:
            if "input" in node:
                return node["input"]
            if "const" in node:
                return f"{node['const']:.{digits}g}"
            args = [show(arg) for arg in node["args"]]
            return OPERATORS[node["op"]].infix.format(*args, exponent=node.get("exponent"))

        return show(self.tree)

    def __str__(self) -> str:
        return self.infix()


def const(value: float) -> dict[str, Any]:
    """Tree node of a constant."""
    return {"const": float(value)}


def var(name: str) -> dict[str, Any]:
    """Tree node of a named input."""
    return {"input": name}


def op(name: str, *args: Mapping[str, Any], exponent: int | None = None) -> dict[str, Any]:
    """Tree node applying operator ``name``."""
    node: dict[str, Any] = {"op": name, "args": list(args)}
    if exponent is not None:
        node["exponent"] = exponent
    return node
