"""Rules to and from sympy expressions (built node by node, never parsed from text), and LaTeX export."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import sympy

from learned_optim.expression import Rule, const, op, var
from learned_optim.optimizers.symbolic import INPUTS

_TO_SYMPY = {
    "neg": lambda a: -a,
    "abs": sympy.Abs,
    "sign": sympy.sign,
    "square": lambda a: a**2,
    "sqrt": sympy.sqrt,
    "exp": sympy.exp,
    "log": sympy.log,
    "tanh": sympy.tanh,
    "sinh": sympy.sinh,
    "cosh": sympy.cosh,
    "sin": sympy.sin,
    "cos": sympy.cos,
    "atan": sympy.atan,
    "add": lambda a, b: a + b,
    "sub": lambda a, b: a - b,
    "mul": lambda a, b: a * b,
    "div": lambda a, b: a / b,
}
# sympy function classes back to our names (sqrt, squares and quotients come back as powers).
_FROM_SYMPY = {fn: name for name, fn in _TO_SYMPY.items() if isinstance(fn, sympy.FunctionClass)}


def symbol(name: str) -> sympy.Symbol:
    """The sympy symbol of a rule input (real-valued)."""
    return sympy.Symbol(name, real=True)


def to_sympy(rule: Rule) -> sympy.Expr:
    """The rule as a sympy expression; constants become ``sympy.Float``."""

    def build(node: Mapping[str, Any]) -> sympy.Expr:
        if "input" in node:
            return symbol(node["input"])
        if "const" in node:
            return sympy.Float(node["const"])
        args = [build(arg) for arg in node["args"]]
        if node["op"] == "powi":
            return args[0] ** node["exponent"]
        return _TO_SYMPY[node["op"]](*args)

    return build(rule.tree)


def from_sympy(expr: sympy.Expr) -> Rule:
    """A rule from a sympy expression made of the whitelisted operators (raises ``ValueError`` otherwise)."""

    def build(e: sympy.Expr) -> dict[str, Any]:
        if e.is_Symbol:
            return var(e.name)
        if e.is_Number:
            return const(float(e))
        if e.is_Add or e.is_Mul:
            name = "add" if e.is_Add else "mul"
            terms = list(e.args)
            if e.is_Mul:  # a·b⁻¹ reads better, and evaluates as, a / b
                numerator = [t for t in terms if not (t.is_Pow and t.exp.is_Number and t.exp < 0)]
                denominator = [1 / t for t in terms if t not in numerator]
                if denominator:
                    top = build(sympy.Mul(*numerator)) if numerator else const(1.0)
                    return op("div", top, build(sympy.Mul(*denominator)))
            result = build(terms[0])
            for term in terms[1:]:
                result = op(name, result, build(term))
            return result
        if e.is_Pow:
            base, exponent = e.args
            if exponent == sympy.Rational(1, 2):
                return op("sqrt", build(base))
            if exponent.is_Integer and exponent < 0:
                return op("div", const(1.0), build(base ** (-exponent)))
            if exponent == 2:
                return op("square", build(base))
            if exponent.is_Integer:
                return op("powi", build(base), exponent=int(exponent))
            raise ValueError(f"cannot express the power {e} with whitelisted operators")
        if e.func in _FROM_SYMPY:
            return op(_FROM_SYMPY[e.func], build(e.args[0]))
        raise ValueError(f"cannot express {e.func.__name__} with whitelisted operators")

    return Rule.from_json(build(expr))


def simplify(rule: Rule) -> Rule:
    """sympy's simplification (folds constants, cancels terms); keeps the original if not shorter."""
    try:
        simplified = from_sympy(sympy.simplify(to_sympy(rule)))
    except ValueError:
        return rule
    return simplified if simplified.size() <= rule.size() else rule


def to_latex(rule: Rule, digits: int = 3) -> str:
    """LaTeX of the rule with constants rounded to ``digits`` significant digits (display only)."""
    expr = to_sympy(rule)
    rounded = {f: _rounded(float(f), digits) for f in expr.atoms(sympy.Float)}
    names = {symbol(name): INPUTS[name].latex for name in rule.inputs}
    return sympy.latex(expr.xreplace(rounded), symbol_names=names)


def _rounded(value: float, digits: int) -> sympy.Number:
    shown = float(f"{value:.{digits}g}")
    return sympy.Integer(int(shown)) if shown.is_integer() else sympy.Float(shown, digits)
