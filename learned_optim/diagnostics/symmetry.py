r"""Symmetries of a network and the constraints they put on gradients (Kunin et al., ICLR 2021).

"Neural Mechanics: Symmetry and Broken Conservation Laws in Deep Learning Dynamics". A loss that
is invariant under a group action constrains its gradient g at every θ; under gradient flow the
matching quantity is conserved. Per unit (hidden neuron or channel):

=============  ==========================================  ===============================
symmetry       constraint on a vector field u              conserved under gradient flow
=============  ==========================================  ===============================
rescale        ⟨u_in, θ_in⟩ + u_b · b − ⟨u_out, θ_out⟩ = 0   ‖θ_in‖² + b² − ‖θ_out‖²
translation    Σ_k u[k, j] = 0 per input column j, bias      Σ_k θ[k, j]
scale          ⟨u_θ, θ⟩ = 0 (weights and bias of a unit)      ‖θ‖²
=============  ==========================================  ===============================

* rescale: hidden units between two layers with a positively homogeneous activation (ReLU,
  LeakyReLU, identity; max-pooling and flattening commute with it): scaling a unit's incoming
  weights and bias by α and its outgoing weights by 1/α leaves the function unchanged;
* translation: the layer feeding softmax/cross-entropy: adding a vector to every row of its
  weights (one number per input column) shifts all logits equally;
* scale: weights and bias of a unit feeding BatchNorm or LayerNorm (normalised away; the
  normaliser's ε makes this approximate, with a relative deviation of order ε/σ²).

The gradient satisfies the constraints exactly; an optimizer's update −Δθ/lr does only if the
optimizer preserves the symmetry (SGD without weight decay does; Adam and learned optimizers do
not). Reported per structure: each unit's deviation, Σ|dev| and the signed sum (which can cancel),
and the conserved quantities.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

HOMOGENEOUS = (nn.ReLU, nn.LeakyReLU, nn.Identity)
TRANSPARENT = (nn.MaxPool2d, nn.MaxPool1d, nn.Flatten, nn.Dropout)  # commute with positive per-unit scaling
AFFINE = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.BatchNorm1d, nn.BatchNorm2d)
NORMALISATION = (nn.BatchNorm1d, nn.BatchNorm2d, nn.LayerNorm)


@dataclass(frozen=True)
class Structure:
    """One symmetric structure: its kind and the parameter names involved."""

    kind: str  # "rescale", "translation" or "scale"
    name: str
    incoming: tuple[str, str | None]  # (weight, bias) of the layer whose units the symmetry acts on
    outgoing: str | None = None  # rescale: the next layer's weight


def _leaves(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(name, module) for name, module in model.named_modules() if not list(module.children())]


def _params(prefix: str, module: nn.Module) -> tuple[str, str | None]:
    bias = f"{prefix}.bias" if getattr(module, "bias", None) is not None else None
    return f"{prefix}.weight", bias


def find_symmetries(model: nn.Module, softmax_output: bool = True) -> list[Structure]:
    """Symmetric structures of a feed-forward model built from ordinary torch modules.

    Leaf modules are read in registration order (``nn.Sequential`` MLPs and CNNs); a model whose
    forward reorders them is outside what this detects.
    """
    leaves = _leaves(model)
    structures: list[Structure] = []
    last_affine: tuple[str, nn.Module] | None = None
    chain_ok = False  # only homogeneous or transparent modules since last_affine
    had_activation = False
    for name, module in leaves:
        if isinstance(module, NORMALISATION) and last_affine is not None and chain_ok:
            source, layer = last_affine
            if isinstance(layer, (nn.Linear, nn.Conv1d, nn.Conv2d)):
                structures.append(Structure("scale", f"{source} → {name}", _params(source, layer)))
        if isinstance(module, AFFINE):
            if last_affine is not None and chain_ok and had_activation:
                source, layer = last_affine
                if not (isinstance(module, NORMALISATION)) and getattr(layer, "weight", None) is not None:
                    structures.append(
                        Structure("rescale", f"{source} → {name}", _params(source, layer), f"{name}.weight")
                    )
            last_affine, chain_ok, had_activation = (name, module), True, False
        elif isinstance(module, HOMOGENEOUS):
            had_activation = True
        elif not isinstance(module, TRANSPARENT) and not isinstance(module, NORMALISATION):
            chain_ok = False  # sigmoid, tanh, softmax…: no rescale symmetry across it
    if softmax_output and last_affine is not None and isinstance(last_affine[1], nn.Linear):
        structures.append(Structure("translation", f"{last_affine[0]} → softmax", _params(*last_affine)))
    return structures


def _rows(tensor: Tensor) -> Tensor:
    """Per-unit rows: (units, everything else)."""
    return tensor.reshape(tensor.shape[0], -1)


def _outgoing_columns(weight: Tensor, units: int) -> Tensor:
    """Per-unit groups of the next layer's inputs, (units, …); a flatten after conv groups features."""
    columns = weight.transpose(0, 1).reshape(weight.shape[1], -1)  # (inputs, rest)
    return columns.reshape(units, -1)


def deviations(structure: Structure, field: dict[str, Tensor], params: dict[str, Tensor]) -> Tensor:
    """Per-unit deviation of vector field ``field`` (e.g. gradients) from the structure's constraint."""
    weight_name, bias_name = structure.incoming
    u_in, theta_in = _rows(field[weight_name]), _rows(params[weight_name])
    if structure.kind == "translation":
        columns = field[weight_name].sum(0)
        return torch.cat([columns, field[bias_name].sum().reshape(1)]) if bias_name else columns
    value = (u_in * theta_in).sum(1)
    if bias_name:
        value = value + field[bias_name] * params[bias_name]
    if structure.kind == "scale":
        return value
    units = theta_in.shape[0]
    out_name = structure.outgoing
    return value - (_outgoing_columns(field[out_name], units) * _outgoing_columns(params[out_name], units)).sum(1)


def relative_deviations(structure: Structure, field: dict[str, Tensor], params: dict[str, Tensor]) -> Tensor:
    """Per-unit deviation divided by the sum of the magnitudes of its terms: 0 is exact, 1 is no
    cancellation at all. Scale-free, so comparable across layers, optimizers and training time."""
    magnitudes = {k: v.abs() for k, v in field.items()}
    if structure.kind == "rescale":  # the outgoing term enters with a minus sign: count it positively
        magnitudes[structure.outgoing] = -magnitudes[structure.outgoing]
    bound = deviations(structure, magnitudes, {k: v.abs() for k, v in params.items()})
    return deviations(structure, field, params).abs() / bound.clamp_min(1e-30)


def symmetry_penalty(structures: list[Structure], params: dict[str, Tensor], update: dict[str, Tensor]) -> Tensor:
    """Mean squared relative deviation of an update over all units of all structures: a
    differentiable regulariser that asks a learned optimizer to respect the symmetries."""
    terms = [relative_deviations(s, update, params).pow(2).mean() for s in structures]
    return torch.stack(terms).mean() if terms else torch.zeros(())


def conserved(structure: Structure, params: dict[str, Tensor]) -> Tensor:
    """Per-unit quantity conserved under gradient flow (see the module docstring)."""
    weight_name, bias_name = structure.incoming
    theta_in = _rows(params[weight_name])
    if structure.kind == "translation":
        columns = params[weight_name].sum(0)
        return torch.cat([columns, params[bias_name].sum().reshape(1)]) if bias_name else columns
    value = (theta_in**2).sum(1)
    if bias_name:
        value = value + params[bias_name] ** 2
    if structure.kind == "scale":
        return value
    units = theta_in.shape[0]
    return value - (_outgoing_columns(params[structure.outgoing], units) ** 2).sum(1)


def theory_sgd_weight_decay(kind: str, initial: Tensor, lr: float, weight_decay: float, steps: Tensor) -> Tensor:
    """Gradient-flow prediction for SGD with weight decay λ after ``steps`` steps of size η (t = η·steps).

    rescale and scale quantities (quadratic in θ) decay as e^{−2λt}; translation sums as e^{−λt}.
    """
    rate = weight_decay * lr * steps
    factor = torch.exp(-rate) if kind == "translation" else torch.exp(-2 * rate)
    return initial.unsqueeze(0) * factor.unsqueeze(-1)
