"""``LearnedOptimizer``: the ``torch.optim.Optimizer`` that every learned optimizer subclasses.

A subclass provides only its math, as pure functions (see ``docs/architecture.md``)::

    init_theta(config, generator) -> theta                     the learned network's weights
    init_state(param, config)     -> state                     per-parameter tensors
    update(theta, grad, state, step, config) -> (direction, new_state)

and this class turns them into an optimizer::

    p ← p · (1 − lr · weight_decay)          decoupled weight decay (Loshchilov & Hutter 2019)
    p ← p − lr · direction                   lr = 1 is the step the network was trained with

Policies shared by all learned optimizers:

* Non-finite gradients: a coordinate whose gradient is NaN or ±inf is left unchanged and its
  state is not advanced; the other coordinates update normally. Hidden states never see NaN.
* Precision: the network runs, and its state is stored, in float32 for float16/bfloat16/float32
  parameters and in float64 for float64 parameters.
* Memory: large tensors are processed in chunks of ``chunk_size`` coordinates, so the network's
  temporaries stay small next to its state.
* Speed: with ``fused=True`` (as in ``torch.optim.Adam``) each chunk's whole step — masking, the
  update, the state write and the parameter update — is one ``torch.compile``d function, which
  fuses elementwise math into single loops; the first step compiles (seconds) and needs what
  ``torch.compile`` needs (a C++ compiler on the CPU, Triton on GPUs). The math is the same.
  Calling compiled code costs a fixed ~0.3 ms on a CPU, so small tensors (≤ ``FUSED_GROUP_NUMEL``
  coordinates) of one group, dtype, device and step count are concatenated into one call.
* ``state_dict()`` also carries the learned network (``theta``), so a checkpoint resumes the
  same trajectory even in an optimizer built with other weights. (``torch.distributed.checkpoint``
  keeps only ``state`` and ``param_groups``: there, rebuild the optimizer from the same weights.)
* Distributed: under DDP every rank runs the identical, deterministic step. Under FSDP2
  (``fully_shard``), state is a DTensor sharded like its parameter and a coordinatewise network
  runs on the local shard, with no communication. A per-tensor architecture (``per_tensor``, e.g.
  Celo2) gathers each sharded tensor whole instead (``learned_optim.per_tensor``).
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, Protocol

import torch
from torch import Tensor
from torch.optim.optimizer import ParamsT

from learned_optim import per_tensor
from learned_optim.errors import WeightsError
from learned_optim.weights_file import expected_theta

DEFAULT_CHUNK_SIZE = 8192
FUSED_VARIANT_LIMIT = 256  # compiled variants of the fused step kept per process
# Fused steps concatenate tensors up to this size: copying them costs less than a compiled call each.
FUSED_GROUP_NUMEL = 1 << 16
FUSED_DEVICES = ("cpu", "cuda", "xpu")  # where torch.compile's Inductor generates kernels
_STATE_DICT_KEY = "learned_optimizer"


class WeightsIO(Protocol):
    """What the weights I/O methods of :class:`LearnedOptimizer` call (``learned_optim.hub``)."""

    def from_pretrained(self, name: str, **hub_kwargs: Any) -> Any: ...
    def save_pretrained(self, optimizer: LearnedOptimizer, directory: str, **kwargs: Any) -> Any: ...
    def push_to_hub(self, source: LearnedOptimizer, repo_id: str, **kwargs: Any) -> str: ...


# hub builds on this module (it finds an optimizer's class through the registry of subclasses),
# so this module must not import it: hub installs itself here on import, which ``import
# learned_optim`` (the parent of this module, hence always imported first) does. One direction.
_weights_io: WeightsIO | None = None


def install_weights_io(implementation: WeightsIO) -> None:
    """Called once by ``learned_optim.hub``: where ``from_pretrained``/``save_pretrained``/``push_to_hub`` go."""
    global _weights_io
    _weights_io = implementation


def _hub() -> WeightsIO:
    if _weights_io is None:  # only if a caller bypassed the package import, which Python does not allow
        raise RuntimeError("learned_optim.hub is not imported; import learned_optim first")
    return _weights_io


def compute_dtype_for(param_dtype: torch.dtype) -> torch.dtype:
    """dtype in which the network runs and its state is kept for parameters of ``param_dtype``."""
    return torch.promote_types(param_dtype, torch.float32)


def config_from_dict(
    config_class: type, values: Mapping[str, Any], source: str, *, keyword_arguments: bool = False
) -> Any:
    """Build a config dataclass from a mapping, naming ``source`` and the valid keys on error.

    A key or type that does not fit raises :class:`WeightsError`; for ``keyword_arguments`` (a
    constructor's keywords) it raises ``TypeError`` as Python does for a bad keyword, and a value the
    config refuses raises its ``ValueError`` unchanged, in ``torch.optim``'s wording.
    """
    wrong = TypeError if keyword_arguments else WeightsError
    fields = {field.name: field for field in dataclasses.fields(config_class)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise wrong(f"{source}: unknown {config_class.__name__} keys {unknown}; valid keys: {sorted(fields)}")
    cleaned = {}
    for name, value in values.items():
        expected = type(getattr(config_class(), name))
        if expected is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if expected is tuple and isinstance(value, list):  # JSON has no tuples
            value = tuple(value)
        if type(value) is not expected:
            raise wrong(f"{source}: {config_class.__name__}.{name} must be {expected.__name__}, got {value!r}")
        cleaned[name] = value
    try:
        return config_class(**cleaned)
    except ValueError as error:  # a config's own validation, e.g. a malformed symbolic rule
        if keyword_arguments:
            raise
        raise WeightsError(f"{source}: {error}") from None


def held_shapes(theta: Any, source: str) -> dict[str, tuple[int, ...]]:
    """``{name: shape}`` of a mapping of tensors, refusing anything else."""
    if not isinstance(theta, Mapping) or not all(isinstance(v, Tensor) for v in theta.values()):
        raise WeightsError(f"{source}: the learned network must be a mapping of names to tensors")
    return {str(name): tuple(tensor.shape) for name, tensor in theta.items()}


def check_names_and_shapes(expected: Mapping[str, Tensor], held: Mapping[str, tuple[int, ...]], source: str) -> None:
    """Refuse ``held`` (``{name: shape}``) unless it has exactly the names and shapes of ``expected``."""
    missing = sorted(set(expected) - set(held))
    unexpected = sorted(set(held) - set(expected))
    if missing or unexpected:
        raise WeightsError(
            f"{source}: tensor names do not match the architecture (missing {missing}, unexpected {unexpected})"
        )
    for name, reference in expected.items():
        if tuple(held[name]) != tuple(reference.shape):
            raise WeightsError(
                f"{source}: tensor {name!r} has shape {tuple(held[name])}, the config expects {tuple(reference.shape)}"
            )


def validate_theta(expected: Mapping[str, Tensor], theta: Mapping[str, Tensor], source: str) -> dict[str, Tensor]:
    """Check ``theta`` has exactly the names and shapes of ``expected``, finite floating values.

    ``expected`` may be ``meta`` tensors (only shapes are read). Returns float32 contiguous CPU
    copies, so the caller's tensors are never aliased.
    """
    check_names_and_shapes(expected, held_shapes(theta, source), source)
    cleaned = {}
    for name in expected:
        tensor = theta[name]
        if not tensor.is_floating_point():
            raise WeightsError(f"{source}: tensor {name!r} must be a floating-point tensor")
        if not torch.isfinite(tensor).all():
            raise WeightsError(f"{source}: tensor {name!r} contains NaN or inf")
        cleaned[name] = tensor.detach().to(device="cpu", dtype=torch.float32, copy=True).contiguous()
    return cleaned


def _is_dtensor(tensor: Tensor) -> bool:
    if not torch.distributed.is_available():
        return False
    from torch.distributed.tensor import DTensor

    return isinstance(tensor, DTensor)


def _local(tensor: Tensor) -> Tensor:
    """This rank's shard of a DTensor (sharing its storage); any other tensor unchanged."""
    return tensor.to_local() if _is_dtensor(tensor) else tensor


def _constructor_signature(cls: type[LearnedOptimizer]) -> inspect.Signature:
    """The class's ``__init__`` signature with ``**config_overrides`` spelled out as the Config's
    fields, so ``help()``, ``inspect.signature`` and tools list every option a user can pass."""
    signature = inspect.signature(cls.__init__)
    named = [p for p in list(signature.parameters.values())[1:] if p.kind is not inspect.Parameter.VAR_KEYWORD]
    taken = {p.name for p in named}
    defaults = cls.Config()
    overrides = [
        inspect.Parameter(
            field.name,
            inspect.Parameter.KEYWORD_ONLY,
            default=getattr(defaults, field.name),
            annotation=field.type,
        )
        for field in dataclasses.fields(cls.Config)
        if field.name not in taken
    ]
    return signature.replace(parameters=[*named, *overrides])


class LearnedOptimizer(torch.optim.Optimizer):
    """Base class of the learned optimizers; see the module docstring for the shared policies.

    Args:
        params: iterable of parameters or of param-group dicts, as for any ``torch.optim`` optimizer.
        lr: multiplies the learned step (a float, or a 0-dim tensor as torch.optim allows); 1.0 is
            the step the network was trained with.
        weight_decay: decoupled weight decay: p ← p · (1 − lr · weight_decay) each step. At the
            default lr of 1 it is the fraction decayed per step (AdamW's 0.01 at lr 1e-3 is 1e-5).
        maximize: maximize the objective instead of minimizing it.
        config: the architecture's config dataclass (or a dict of its fields); defaults otherwise.
        theta: the learned network's weights; fresh weights drawn with ``seed`` when omitted.
        seed: seed of the fresh weights, so that every process builds the same network.
        chunk_size: coordinates processed at once; bounds the temporary memory of ``step``. Default:
            ``default_chunk_size(config, fused)``.
        fused: run each chunk's step as one ``torch.compile``d function (see the module docstring).
        **config_overrides: individual config fields, e.g. ``hidden_size=32``.
    """

    architecture: ClassVar[str]
    Config: ClassVar[type]
    # A per-tensor architecture's update reads the parameter and statistics of the whole tensor:
    # update(theta, grad, state, step, config, *, param, options) -> (D, new_state), p ← p − lr · D
    # (weight decay inside D); every engine hands it whole tensors. ``tensor_state`` names its state
    # that is not shaped like the parameter; ``group_options`` its per-group options and defaults.
    per_tensor: ClassVar[bool] = False
    tensor_state: ClassVar[frozenset[str]] = frozenset()
    group_options: ClassVar[Mapping[str, Any]] = {}
    # The architecture whose weights this one extends (keeps every weight, adds its own): meta-training
    # may start from those weights (``initial_weights``).
    extends: ClassVar[str | None] = None
    # Default chunk sizes (eager, fused): a fused step keeps no temporaries, so its chunks only
    # amortise the call; the network's hidden layers still bound them (measured at 10M, 2-core CPU).
    chunk_sizes: ClassVar[tuple[int, int]] = (DEFAULT_CHUNK_SIZE, 1 << 16)
    init_theta: ClassVar[Callable[..., dict[str, Tensor]]]
    init_state: ClassVar[Callable[..., dict[str, Tensor]]]
    update: ClassVar[Callable[..., tuple[Tensor, dict[str, Tensor]]]]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "Config" in cls.__dict__:
            cls.__signature__ = _constructor_signature(cls)

    @classmethod
    def default_chunk_size(cls, config: Any, fused: bool) -> int:
        """The chunk size when none is given: the class's ``chunk_sizes`` (eager, fused)."""
        return cls.chunk_sizes[1] if fused else cls.chunk_sizes[0]

    def __init__(
        self,
        params: ParamsT,
        lr: float | Tensor = 1.0,
        *,
        weight_decay: float = 0.0,
        maximize: bool = False,
        config: Any = None,
        theta: Mapping[str, Tensor] | None = None,
        seed: int = 0,
        chunk_size: int | None = None,
        fused: bool = False,
        **config_overrides: Any,
    ) -> None:
        if isinstance(lr, Tensor) and lr.numel() != 1:
            raise ValueError("Tensor lr must be 1-element")
        if not lr >= 0.0:
            raise ValueError(f"Invalid learning rate: {lr}")
        if not weight_decay >= 0.0:
            raise ValueError(f"Invalid weight_decay value: {weight_decay}")
        if config is None:
            config = self.Config()
        elif isinstance(config, Mapping):
            config = config_from_dict(self.Config, config, f"{type(self).__name__} config")
        elif not isinstance(config, self.Config):
            raise TypeError(f"config must be a {self.Config.__name__} or a dict, got {type(config).__name__}")
        if config_overrides:
            merged = {**dataclasses.asdict(config), **config_overrides}
            config = config_from_dict(self.Config, merged, type(self).__name__, keyword_arguments=True)
        if chunk_size is None:
            chunk_size = self.default_chunk_size(config, fused)
        if chunk_size < 1:
            raise ValueError(f"Invalid chunk_size: {chunk_size}")
        self.config = config
        self.chunk_size = chunk_size
        self.theta = theta if theta is not None else self.init_theta(config, torch.Generator().manual_seed(seed))
        self._compiled_step: Callable[..., None] | None = None
        defaults = {"lr": lr, "weight_decay": weight_decay, "maximize": maximize, "fused": fused}
        super().__init__(params, defaults | self._extra_group_defaults())
        for group in self.param_groups:
            for p in group["params"]:
                if p.is_complex():
                    raise ValueError(
                        f"{type(self).__name__} does not support complex parameters; "
                        "optimize torch.view_as_real(p) instead"
                    )

    # -- the learned network -------------------------------------------------------------------

    @property
    def theta(self) -> dict[str, Tensor]:
        """The learned network's weights (float32, CPU). Assigning validates names and shapes."""
        return self._theta

    @theta.setter
    def theta(self, value: Mapping[str, Tensor]) -> None:
        source = f"{type(self).__name__} weights"
        expected = expected_theta(self, self.config, held_shapes(value, source), source)
        self._theta = validate_theta(expected, value, source)
        self._theta_cache: dict[tuple[torch.device, torch.dtype], dict[str, Tensor]] = {}

    def _theta_for(self, device: torch.device, dtype: torch.dtype) -> dict[str, Tensor]:
        key = (device, dtype)
        if key not in self._theta_cache:
            self._theta_cache[key] = {k: v.to(device=device, dtype=dtype) for k, v in self._theta.items()}
        return self._theta_cache[key]

    # -- torch.optim.Optimizer -----------------------------------------------------------------

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        """Perform one optimization step; ``closure`` re-evaluates the model and returns the loss."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        # Validate every gradient before touching any parameter, so a bad one loses nothing.
        work = []
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError(f"{type(self).__name__} does not support sparse gradients")
                if p.grad.is_complex():
                    raise RuntimeError(f"{type(self).__name__} does not support complex gradients")
                if group["fused"] and p.device.type not in FUSED_DEVICES:
                    raise RuntimeError(
                        f"`fused=True` requires all the params to be floating point Tensors of supported devices: "
                        f"{list(FUSED_DEVICES)}, got {p.device.type}"
                    )
                work.append((group, p))
        together: dict[tuple[Any, ...], tuple[dict[str, Any], list[tuple[Tensor, dict[str, Tensor]]]]] = {}
        whole_tensors: list[tuple[dict[str, Any], Tensor, dict[str, Tensor]]] = []
        for group, p in work:
            state = self.state[p]
            if not state:
                state["step"] = torch.tensor(0.0)
                state.update(self._init_state(p, group))
            state["step"] += 1
            if self.per_tensor:
                whole_tensors.append((group, p, state))
                continue
            if group["fused"] and 0 < p.numel() <= FUSED_GROUP_NUMEL and not _is_dtensor(p):
                key = (id(group), p.device, p.dtype, float(state["step"]))
                together.setdefault(key, (group, []))[1].append((p, state))
                continue
            # Sharded (DTensor) parameters: the network is coordinatewise and keeps no per-tensor
            # statistic, so each rank updates its own shard and ranks never need to communicate.
            local_state = {k: _local(v) for k, v in state.items()}
            self._update_parameter(_local(p), _local(p.grad), local_state, group)
        for group, members in together.values():
            if len(members) == 1:
                p, state = members[0]
                self._update_parameter(p, p.grad, state, group)
            else:
                self._update_together(members, group)
        if whole_tensors:
            self._update_whole_tensors(whole_tensors)
        return loss

    # -- per-tensor architectures (docs/per-tensor-contract.md; engine in learned_optim.per_tensor) ---

    def _extra_group_defaults(self) -> dict[str, Any]:
        """Per-group options an architecture adds to torch.optim's defaults (``group_options``)."""
        return {}

    def options_of(self, group: Mapping[str, Any]) -> dict[str, Any]:
        """The per-group options a per-tensor update reads, from ``group``."""
        return {"weight_decay": group["weight_decay"]} | {k: group.get(k, v) for k, v in self.group_options.items()}

    def gradient_scales(self, groups: list[dict[str, Any]]) -> dict[int, float]:
        """Factors by ``id(group)`` that the gradients of a per-tensor step are multiplied with."""
        return {}

    def _update_whole_tensors(self, work: list[tuple[dict[str, Any], Tensor, dict[str, Tensor]]]) -> None:
        per_tensor.step_whole_tensors(self, work)

    def _update_together(self, members: list[tuple[Tensor, dict[str, Tensor]]], group: dict[str, Any]) -> None:
        """One fused step for small tensors: concatenate parameters, gradients and state, step the
        flat copy as if it were one tensor, and copy the results back."""
        params = [p for p, _ in members]
        flat_param = torch.cat([p.reshape(-1) for p in params])
        flat_grad = torch.cat([p.grad.reshape(-1) for p in params])
        states = [
            {k: v.view(*v.shape[: v.dim() - p.dim()], p.numel()) for k, v in s.items() if k != "step"}
            for p, s in members
        ]
        flat_state = {k: torch.cat([s[k] for s in states], dim=-1) for k in states[0]}
        # flat_param is a copy: the step (weight decay included) is applied to it, then copied back.
        self._update_parameter(flat_param, flat_grad, flat_state | {"step": members[0][1]["step"]}, group)
        offset = 0
        for p, state in zip(params, states, strict=True):
            numel = p.numel()
            p.copy_(flat_param[offset : offset + numel].view_as(p))
            for key, value in state.items():
                value.copy_(flat_state[key][..., offset : offset + numel])
            offset += numel

    def _init_state(self, p: Tensor, group: dict[str, Any] | None = None) -> dict[str, Tensor]:
        """Fresh state for ``p``; for a DTensor, sharded like ``p`` (so distributed checkpoints reshard it)."""
        if self.per_tensor:
            return per_tensor.init_state(self, p, group if group is not None else self.defaults)
        if not _is_dtensor(p):
            return self.init_state(p, self.config)
        from torch.distributed.tensor import DTensor, Shard

        state = {}
        for key, local in self.init_state(p.to_local(), self.config).items():
            extra = local.dim() - p.dim()  # leading feature dimensions of a feature-major state
            placements = [Shard(pl.dim + extra) if isinstance(pl, Shard) else pl for pl in p.placements]
            shape = (*local.shape[:extra], *p.shape)
            stride = torch.empty(shape, device="meta").stride()
            state[key] = DTensor.from_local(
                local, p.device_mesh, placements, run_check=False, shape=torch.Size(shape), stride=stride
            )
        return state

    def _update_parameter(self, p: Tensor, grad: Tensor, state: dict[str, Tensor], group: dict[str, Any]) -> None:
        lr, weight_decay = group["lr"], group["weight_decay"]
        if isinstance(lr, Tensor):  # any one-element shape, as torch.optim accepts: broadcast as a scalar
            lr = lr.reshape(())
        if group["maximize"]:
            grad = -grad
        if weight_decay != 0:
            p.mul_(1 - lr * weight_decay)
        numel = p.numel()
        if numel == 0:
            return
        compute_dtype = compute_dtype_for(p.dtype)
        theta = self._theta_for(p.device, compute_dtype)
        step = state["step"]
        target = p if p.is_contiguous() else p.contiguous()
        flat_param = target.view(numel)
        flat_grad = grad.reshape(numel).to(compute_dtype)
        # State tensors are shaped (*extra, *p.shape), feature-major; view them as (*extra, numel).
        flat_state = {k: v.view(*v.shape[: v.dim() - p.dim()], numel) for k, v in state.items() if k != "step"}
        fused_step = self._fused_step() if group.get("fused", False) else None
        if fused_step is not None:
            # Tensors, not Python numbers: a changed number would make torch.compile recompile.
            step_t = step.to(device=p.device, dtype=compute_dtype)
            lr_t = torch.as_tensor(lr).to(device=p.device, dtype=compute_dtype)
        else:
            # In the parameter's precision, as fused: a float32 count would put float32 rounding into
            # a float64 parameter's bias corrections (1 − 0.999^t is off by 1e-5 relative in float32).
            step_c = step.to(dtype=compute_dtype)
            # Masking costs a pass over the state; on the CPU skip it when every gradient is finite
            # (on accelerators that check would force a device sync, so always mask there). A finite
            # sum proves every element finite (NaN and ±inf propagate) at the cost of one reduction;
            # an overflowing sum only means masking when it was not needed.
            mask_non_finite = p.device.type != "cpu" or not bool(torch.isfinite(flat_grad.sum()))
        for start in range(0, numel, self.chunk_size):
            end = min(start + self.chunk_size, numel)
            chunk_grad = flat_grad[start:end]
            chunk_state = {k: v[..., start:end] for k, v in flat_state.items()}
            if fused_step is not None:
                fused_step(theta, flat_param[start:end], chunk_grad, chunk_state, step_t, lr_t)
                continue
            if mask_non_finite:
                finite = torch.isfinite(chunk_grad)
                chunk_grad = torch.where(finite, chunk_grad, 0.0)
            direction, new_state = self.update(theta, chunk_grad, chunk_state, step_c, self.config)
            if mask_non_finite:
                direction = torch.where(finite, direction, 0.0)
                new_state = {k: torch.where(finite, v, chunk_state[k]) for k, v in new_state.items()}
            for key, old in chunk_state.items():
                old.copy_(new_state[key])
            if isinstance(lr, Tensor):  # a tensor lr (as torch.optim allows) cannot be an alpha
                flat_param[start:end].sub_(direction * lr.to(direction.dtype))
            else:
                flat_param[start:end].sub_(direction, alpha=lr)
        if target is not p:
            p.copy_(target)

    def _fused_step(self) -> Callable[..., None]:
        """The compiled chunk step for this optimizer's update and config (built on first use)."""
        if self._compiled_step is None:
            update, config = self.update, self.config

            State = dict[str, Tensor]

            def masked_step(theta: State, param: Tensor, grad: Tensor, state: State, step: Tensor, lr: Tensor) -> None:
                # The eager path's policy, always applied: fused, the mask costs no extra pass.
                finite = torch.isfinite(grad)
                direction, new_state = update(theta, torch.where(finite, grad, 0.0), state, step, config)
                for key, old in state.items():
                    old.copy_(torch.where(finite, new_state[key], old))
                param.sub_(torch.where(finite, direction, 0.0) * lr)

            compiled = torch.compile(masked_step, dynamic=True, fullgraph=True)

            def run(*args: Any) -> None:
                # Every optimizer shares masked_step's code object, and each (architecture, config,
                # dtype) adds a compiled variant to it: raise dynamo's per-code limit (8) here only.
                with torch._dynamo.config.patch(recompile_limit=FUSED_VARIANT_LIMIT):
                    compiled(*args)

            self._compiled_step = run
        return self._compiled_step

    def export_config(self) -> dict[str, Any]:
        """The config as written to ``config.json`` by :meth:`save_pretrained`."""
        return dataclasses.asdict(self.config)

    def state_dict(self) -> dict[str, Any]:
        """``torch.optim`` state dict plus the learned network (architecture, config, theta)."""
        state_dict = super().state_dict()
        state_dict[_STATE_DICT_KEY] = {
            "architecture": self.architecture,
            "config": dataclasses.asdict(self.config),
            "theta": {k: v.clone() for k, v in self._theta.items()},
        }
        return state_dict

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a state dict; per-parameter state keeps full precision (see module docstring)."""
        learned = state_dict.get(_STATE_DICT_KEY)
        if learned is not None:
            if learned["architecture"] != self.architecture:
                raise ValueError(
                    f"state dict is for a {learned['architecture']!r} optimizer, this is {self.architecture!r}"
                )
            if not isinstance(learned.get("config"), Mapping):
                raise WeightsError("state dict: the learned network's config must be a mapping")
            config = config_from_dict(self.Config, learned["config"], "state dict")
            expected = expected_theta(self, config, held_shapes(learned.get("theta"), "state dict"), "state dict")
            theta = validate_theta(expected, learned["theta"], "state dict")
        saved_state = state_dict["state"]
        super().load_state_dict(state_dict)
        if learned is not None:
            self.config = config
            self._theta = theta
            self._theta_cache = {}
            self._compiled_step = None  # compiled for the old config
        # torch casts floating state to the parameter's dtype; restore our precision policy.
        # Saved ids are indices, or parameter names when torch.distributed.checkpoint loads.
        saved_ids = [i for group in state_dict["param_groups"] for i in group["params"]]
        params = dict(zip(saved_ids, (p for group in self.param_groups for p in group["params"]), strict=True))
        for index, saved in saved_state.items():
            p = params[index]
            dtype = compute_dtype_for(p.dtype)
            for key, value in saved.items():
                if key == "step":
                    # Older checkpoints and other tools store the count as a number; torch's own
                    # optimizers turn it back into a (CPU, float32) tensor, as we keep it.
                    self.state[p][key] = torch.as_tensor(value, dtype=torch.float32, device="cpu").clone().reshape(())
                elif isinstance(value, Tensor) and value.is_floating_point():
                    self.state[p][key] = value.to(device=p.device, dtype=dtype, copy=True)

    # -- weights I/O (implemented in learned_optim.hub) -----------------------------------------

    @classmethod
    def from_pretrained(cls, name: str, params: ParamsT, **kwargs: Any) -> LearnedOptimizer:
        """Like :func:`learned_optim.load`, checking that the weights are of this architecture."""
        hub_keys = ("revision", "cache_dir", "local_files_only")
        pretrained = _hub().from_pretrained(name, **{k: kwargs.pop(k) for k in hub_keys if k in kwargs})
        if pretrained.architecture != cls.architecture:
            raise WeightsError(f"{name}: weights are for {pretrained.architecture!r}, not {cls.architecture!r}")
        return pretrained.build(params, **kwargs)

    def save_pretrained(self, directory: str, **kwargs: Any) -> Any:
        """Write the learned network as a weights directory (see :func:`learned_optim.hub.save_pretrained`)."""
        return _hub().save_pretrained(self, directory, **kwargs)

    def push_to_hub(self, repo_id: str, **kwargs: Any) -> str:
        """Upload the learned network to a Hub repo (see :func:`learned_optim.hub.push_to_hub`)."""
        return _hub().push_to_hub(self, repo_id, **kwargs)

    def __getstate__(self) -> dict[str, Any]:
        # Optimizer.__getstate__ keeps only defaults/state/param_groups; keep the network too.
        state = super().__getstate__()
        state.update(
            config=self.config, chunk_size=self.chunk_size, _theta=self._theta, _theta_cache={}, _compiled_step=None
        )
        return state

    def __repr__(self) -> str:
        # torch.optim's listing of the param groups, then the architecture's config.
        return f"{super().__repr__()[:-1]}{self.config!r}\n)"
