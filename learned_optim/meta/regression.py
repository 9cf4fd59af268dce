"""Symbolic-regression backends behind one small interface; Operon (``pyoperon``) is the default.

A backend fits ``y ≈ R(X)`` and returns its Pareto front (complexity against error) as JSON
expression trees (``learned_optim.expression``), so nothing downstream depends on the engine and
no formula ever travels as text. PySR would need a Julia download, so it is not offered offline.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from learned_optim.expression import OPERATORS, const, op, var

# No division by default: a quotient can be 0/0 where a gradient is exactly zero (dead ReLUs).
DEFAULT_OPERATORS = ("add", "sub", "mul", "square", "tanh", "sinh", "abs")


@dataclass(frozen=True)
class SearchSettings:
    """What a backend may use and how long it may search."""

    operators: tuple[str, ...] = DEFAULT_OPERATORS
    max_length: int = 25
    population_size: int = 1000
    generations: int = 1000
    time_limit: int = 120  # seconds
    threads: int = 1
    seed: int = 0


class RegressionBackend(Protocol):
    """Fits a Pareto front of formulas over the named columns of ``features``."""

    name: str

    def fit(
        self, features: np.ndarray, target: np.ndarray, names: list[str], settings: SearchSettings
    ) -> list[dict[str, Any]]: ...


class OperonBackend:
    """Operon (Burlacu et al. 2020), through ``pyoperon``'s scikit-learn estimator."""

    name = "operon"

    def fit(
        self, features: np.ndarray, target: np.ndarray, names: list[str], settings: SearchSettings
    ) -> list[dict[str, Any]]:
        try:
            from pyoperon.sklearn import SymbolicRegressor
        except ImportError as error:  # pragma: no cover - depends on the environment
            raise ImportError("symbolic regression needs pyoperon: pip install 'learned_optim[distill]'") from error
        unknown = sorted(set(settings.operators) - _OPERON_OPERATORS)
        if unknown:
            raise ValueError(
                f"the operon backend cannot use operators {unknown}; it offers {sorted(_OPERON_OPERATORS)}"
            )
        symbols = ",".join(["constant", "variable", *settings.operators])
        regressor = SymbolicRegressor(
            allowed_symbols=symbols,
            objectives=["r2", "length"],  # NSGA-II over (fit, size) gives the whole Pareto front
            max_length=settings.max_length,
            population_size=settings.population_size,
            generations=settings.generations,
            max_time=settings.time_limit,
            n_threads=settings.threads,
            random_state=settings.seed,
        )
        regressor.fit(np.ascontiguousarray(features, dtype=np.float64), np.asarray(target, dtype=np.float64))
        # Operon names columns X1, X2, ...; map its variable hashes back to our input names.
        column_of = {hash_: int(label[1:]) - 1 for hash_, label in regressor.variables_.items()}
        variable_names = {hash_: names[index] for hash_, index in column_of.items()}
        return [operon_tree_to_json(entry["tree"], variable_names) for entry in regressor.pareto_front_]


# Our operators that Operon offers under the same name (its allowed_symbols, and its node types lower-cased).
_OPERON_OPERATORS = frozenset(
    {"add", "sub", "mul", "div", "square", "tanh", "sinh", "cosh", "exp", "abs", "sin", "cos", "atan"}
)


def operon_tree_to_json(tree: Any, variable_names: dict[int, str]) -> dict[str, Any]:
    """Convert an Operon tree (postfix nodes) into our JSON tree.

    In Operon's postfix layout a node's first child sits just before it and each further child
    before the previous child's subtree (``Length`` = the subtree's size without the node).
    Variables carry a weight: Operon's ``w·x`` becomes ``mul(const(w), x)``.
    """
    nodes = tree.Nodes

    def convert(index: int) -> dict[str, Any]:
        node = nodes[index]
        kind = node.Type.name
        if kind == "Constant":
            return const(node.Value)
        if kind == "Variable":
            return op("mul", const(node.Value), var(variable_names[node.HashValue]))
        children = []
        child = index - 1
        for _ in range(node.Arity):
            children.append(convert(child))
            child -= nodes[child].Length + 1
        name = kind.lower()  # Operon's node types carry our operators' names: Add, Square, Tanh, ...
        if name in ("add", "sub", "mul", "div"):  # n-ary in Operon: fold left
            if len(children) == 1:  # Operon's unary sub/div: negation and reciprocal
                return op("neg", children[0]) if name == "sub" else op("div", const(1.0), children[0])
            result = children[0]
            for other in children[1:]:
                result = op(name, result, other)
            return result
        if name in OPERATORS and OPERATORS[name].arity == len(children) == 1:
            return op(name, children[0])
        raise ValueError(f"cannot convert Operon node {kind} with {node.Arity} children")

    return convert(len(nodes) - 1)


BACKENDS: dict[str, type] = {"operon": OperonBackend}


def get_backend(name: str) -> RegressionBackend:
    """The backend registered under ``name``."""
    if name not in BACKENDS:
        raise ValueError(f"unknown regression backend {name!r}; choose from {sorted(BACKENDS)}")
    return BACKENDS[name]()
