"""Pretrained weights: the on-disk format, local lookup by name, and the Hugging Face Hub.

A weights directory is what ``huggingface_hub`` stores in a model repo::

    config.json         {"format_version": 1, "library": "learned_optim", "architecture": "rnnprop",
                         "config": {...}, "description": "...", "metrics": {...}, "recipe": {...}}
    model.safetensors   the learned network's tensors (theta), float32
    README.md           the model card

A name resolves, in order, to: an existing directory; ``<name>`` in the shipped weights folders
(``$LEARNED_OPTIM_WEIGHTS``, the installed package's ``pretrained/``, a source checkout's
``weights/``); a Hub repo id ``owner/name``, downloaded through ``huggingface_hub`` into its cache.
Nothing is unpickled and nothing read from a file is evaluated.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import sys
import tempfile
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import safetensors
import safetensors.torch
from torch import Tensor
from torch.optim.optimizer import ParamsT

from learned_optim import cards
from learned_optim.base import (
    LearnedOptimizer,
    check_names_and_shapes,
    config_from_dict,
    install_weights_io,
    validate_theta,
)
from learned_optim.errors import WeightsError
from learned_optim.optimizers import ARCHITECTURES, get_architecture
from learned_optim.weights_file import expected_theta, read_json_file, read_safetensors_shapes

FORMAT_VERSION = 1
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
CARD_NAME = "README.md"
_PACKAGE_DIR = Path(__file__).resolve().parent
_LOCAL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")


# ``recommendation`` in a weights folder's config.json: whether to train models with them. A study
# object is kept to compare with the literature or to study what meta-training learns; weights
# saved without one (your own) list as "".
RECOMMENDATIONS = ("recommended", "not recommended", "study object")


class WeightsNotFoundError(WeightsError):
    """No weights under that name, path or Hub repo (or the Hub is unreachable and nothing is cached)."""


# Names once shipped, and why they are not any more (so an old script gets a reason, not a list).
WITHDRAWN = {
    "lstm-mnist": (
        "withdrawn in 0.2.0: it amplifies rounding (a 1e-6 relative change of the gradients moves the "
        "parameters by 2e-3 in 20 steps), so runs under DDP and in one process disagree; its recipe is "
        "configs/experiments/lstm-mnist.json in the source repository"
    ),
}


@dataclass
class Pretrained:
    """Weights read from a directory, with everything its ``config.json`` says about them."""

    architecture: str
    config: Any
    theta: dict[str, Tensor]
    description: str = ""
    metrics: dict[str, Any] = field(default_factory=dict)
    recipe: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None
    recommendation: str = ""  # one of RECOMMENDATIONS, or "" for weights saved without one

    def build(self, params: ParamsT, **optimizer_kwargs: Any) -> LearnedOptimizer:
        """An optimizer of this architecture over ``params`` with these weights."""
        cls = get_architecture(self.architecture)
        return cls(params, config=self.config, theta=self.theta, **optimizer_kwargs)


def weights_dirs() -> list[Path]:
    """Folders searched for pretrained weights by name, first match wins."""
    dirs = [Path(p) for p in os.environ.get("LEARNED_OPTIM_WEIGHTS", "").split(os.pathsep) if p]
    dirs.append(_PACKAGE_DIR / "pretrained")  # an installed wheel
    dirs.append(_PACKAGE_DIR.parent / "weights")  # a source checkout or editable install
    return [d for d in dirs if d.is_dir()]


def list_pretrained() -> list[dict[str, str]]:
    """Name, architecture, description and recommendation (see ``RECOMMENDATIONS``) of every weights folder found."""
    found: dict[str, dict[str, str]] = {}
    for folder in weights_dirs():
        for directory in sorted(folder.iterdir()):
            if directory.name in found or not (directory / CONFIG_NAME).is_file():
                continue
            config = _read_config(directory)
            found[directory.name] = {
                "name": directory.name,
                "architecture": str(config.get("architecture", "?")),
                "description": str(config.get("description", "")),
                "recommendation": str(config.get("recommendation", "")),
            }
    return sorted(found.values(), key=lambda entry: entry["name"])


def _read_config(directory: Path) -> dict[str, Any]:
    path = directory / CONFIG_NAME
    try:
        config = read_json_file(path)
    except FileNotFoundError:
        raise WeightsNotFoundError(f"{path}: no {CONFIG_NAME} in this weights directory") from None
    if not isinstance(config, dict):
        raise WeightsError(f"{path}: expected a JSON object")
    return config


def read_pretrained(directory: str | os.PathLike[str]) -> Pretrained:
    """Read and validate a weights directory (config.json + model.safetensors)."""
    directory = Path(directory)
    config_path, weights_path = directory / CONFIG_NAME, directory / WEIGHTS_NAME
    document = _read_config(directory)
    version = document.get("format_version")
    foreign = _reference_format(document, str(config_path)) if version is None else None
    if foreign is not None:  # a published optimizer's own format (e.g. PyLO's CELO2MLP)
        cls, config = foreign
        document = {}
    elif not isinstance(version, int):
        raise WeightsError(f"{config_path}: missing integer 'format_version'")
    elif version > FORMAT_VERSION:
        raise WeightsError(
            f"{config_path}: format_version {version} is newer than this learned_optim supports "
            f"({FORMAT_VERSION}); upgrade learned_optim"
        )
    else:
        cls = get_architecture(document.get("architecture"), str(config_path))
        config = config_from_dict(cls.Config, document.get("config", {}), str(config_path))
    try:
        # The header alone first: what the config asks for is checked before anything is allocated.
        held = read_safetensors_shapes(weights_path)
        expected = expected_theta(cls, config, held, f"{config_path} (with {weights_path})")
        check_names_and_shapes(expected, held, str(weights_path))
        tensors = safetensors.torch.load_file(weights_path)
    except FileNotFoundError:
        raise WeightsNotFoundError(f"{weights_path}: weights file is missing") from None
    except WeightsError:
        raise
    except (safetensors.SafetensorError, OSError, ValueError) as error:
        raise WeightsError(
            f"{weights_path}: not a readable safetensors file, truncated or corrupted ({error})"
        ) from None
    theta = validate_theta(expected, tensors, str(weights_path))
    return Pretrained(
        architecture=cls.architecture,
        config=config,
        theta=theta,
        description=str(document.get("description", "")),
        metrics=dict(document.get("metrics", {})),
        recipe=dict(document.get("recipe", {})),
        path=directory,
        recommendation=str(document.get("recommendation", "")),
    )


def _reference_format(document: dict[str, Any], source: str) -> tuple[type[LearnedOptimizer], Any] | None:
    """The architecture and config of a folder in a published optimizer's own format, if one reads it."""
    for cls in ARCHITECTURES.values():
        reader = getattr(cls, "config_from_reference", None)
        config = reader(document, source) if reader is not None else None
        if config is not None:
            return cls, config
    return None


def resolve(
    name: str | os.PathLike[str],
    *,
    revision: str | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    local_files_only: bool = False,
) -> Path:
    """The local directory holding the weights called ``name`` (downloading from the Hub if needed)."""
    if Path(name).is_dir():
        return Path(name)
    name = str(name)
    if _LOCAL_NAME.match(name):
        for folder in weights_dirs():
            if (folder / name / CONFIG_NAME).is_file():
                return folder / name
        if name in WITHDRAWN:
            raise WeightsNotFoundError(f"pretrained weights {name!r} were {WITHDRAWN[name]}")
        available = [entry["name"] for entry in list_pretrained()]
        raise WeightsNotFoundError(
            f"no pretrained weights named {name!r}; available: {available}. "
            "Pass a directory or a Hub repo id ('owner/name') for other weights."
        )
    if _REPO_ID.match(name):
        return _download(name, revision=revision, cache_dir=cache_dir, local_files_only=local_files_only)
    raise WeightsNotFoundError(f"{name!r} is neither a directory, a pretrained name nor a Hub repo id ('owner/name')")


HUB_CONNECT_TIMEOUT = 3.0  # seconds to open a connection to the Hub before treating it as offline
_PROXY_VARIABLES = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")


def _hub_reachable(endpoint: str | None) -> bool:
    """Whether a TCP connection to the Hub opens within ``HUB_CONNECT_TIMEOUT``.

    Unreachable, huggingface_hub retries with backoff for half a minute before it falls back to the
    cache. Behind a proxy (``*_PROXY`` set) a direct connection says nothing, so assume reachable.
    """
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE or any(os.environ.get(k) for k in _PROXY_VARIABLES):
        return True  # offline mode is handled by huggingface_hub itself, without retries
    url = urllib.parse.urlsplit(endpoint or constants.ENDPOINT)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname, port), timeout=HUB_CONNECT_TIMEOUT):
            return True
    except OSError:
        return False


def _download(repo_id: str, *, revision: str | None, cache_dir: Any, local_files_only: bool) -> Path:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import (
        EntryNotFoundError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    endpoint = os.environ.get("HF_ENDPOINT")
    where = f"Hub repo {repo_id!r}" + (f" at revision {revision!r}" if revision else "")
    if not local_files_only and not _hub_reachable(endpoint):
        local_files_only = True  # the cache, or the clear error below, in seconds instead of retries
    paths = []
    for filename in (CONFIG_NAME, WEIGHTS_NAME):
        try:
            paths.append(
                hf_hub_download(
                    repo_id,
                    filename,
                    revision=revision,
                    cache_dir=cache_dir,
                    local_files_only=local_files_only,
                    endpoint=endpoint,
                )
            )
        except RepositoryNotFoundError:
            raise WeightsNotFoundError(f"{where} does not exist (or is private and no token was given)") from None
        except RevisionNotFoundError:
            raise WeightsNotFoundError(f"{where}: no such revision") from None
        except LocalEntryNotFoundError:
            raise WeightsNotFoundError(
                f"{where}: {filename} is not in the local cache and the Hub cannot be reached "
                "(offline, or HF_HUB_OFFLINE=1); connect once to download it"
            ) from None
        except EntryNotFoundError:
            raise WeightsNotFoundError(f"{where} has no {filename}; is it a learned_optim weights repo?") from None
        except HfHubHTTPError as error:
            raise WeightsNotFoundError(f"{where}: download of {filename} failed ({error})") from None
    directory = Path(paths[0]).parent
    if Path(paths[1]).parent != directory:
        raise WeightsError(f"{where}: files resolved to different snapshots")
    return directory


def from_pretrained(
    name: str | os.PathLike[str],
    *,
    revision: str | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    local_files_only: bool = False,
) -> Pretrained:
    """Read weights by shipped name, directory or Hub repo id (see the module docstring)."""
    directory = resolve(name, revision=revision, cache_dir=cache_dir, local_files_only=local_files_only)
    return read_pretrained(directory)


def load(
    name: str | os.PathLike[str],
    params: ParamsT,
    *,
    revision: str | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    local_files_only: bool = False,
    **optimizer_kwargs: Any,
) -> LearnedOptimizer:
    """A pretrained learned optimizer over ``params``: ``lo.load("rnnprop-mnist", model.parameters())``.

    ``optimizer_kwargs`` (``lr``, ``weight_decay``, ``maximize``, ``chunk_size``, ``fused``) go to the optimizer.
    """
    pretrained = from_pretrained(name, revision=revision, cache_dir=cache_dir, local_files_only=local_files_only)
    return pretrained.build(params, **optimizer_kwargs)


def save_pretrained(
    optimizer: LearnedOptimizer,
    directory: str | os.PathLike[str],
    *,
    description: str = "",
    metrics: dict[str, Any] | None = None,
    recipe: dict[str, Any] | None = None,
    model_card: str | None = None,
    recommendation: str = "",
) -> Path:
    """Write ``optimizer``'s network as a weights directory; returns its path.

    ``model_card`` is the README.md text; a minimal card is written when it is omitted.
    ``recommendation`` (one of ``RECOMMENDATIONS``) is what ``list_pretrained`` and ``learned-optim list`` show.
    Each file is written atomically, so an interrupted save never leaves a truncated file.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    document = {
        "format_version": FORMAT_VERSION,
        "library": "learned_optim",
        "architecture": optimizer.architecture,
        "config": optimizer.export_config(),
        "description": description,
        "metrics": metrics or {},
        "recipe": recipe or {},
    }
    if recommendation:
        if recommendation not in RECOMMENDATIONS:
            raise ValueError(f"recommendation {recommendation!r} is not one of {RECOMMENDATIONS}")
        document["recommendation"] = recommendation
    with _atomic_path(directory / WEIGHTS_NAME) as tmp:
        safetensors.torch.save_file(optimizer.theta, tmp, metadata={"format": "pt"})
    with _atomic_path(directory / CONFIG_NAME) as tmp:
        Path(tmp).write_text(json.dumps(document, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    card = model_card if model_card is not None else default_model_card(directory.name, document)
    with _atomic_path(directory / CARD_NAME) as tmp:
        Path(tmp).write_text(card, encoding="utf-8")
    return directory


def default_model_card(name: str, document: dict[str, Any]) -> str:
    """A model card with the Hub's YAML header, the description, metrics and recipe."""
    summary = document["description"] or f"A `{document['architecture']}` learned optimizer."
    parts = (("Metrics", "metrics"), ("Recipe", "recipe"))
    sections = [(title, cards.json_block(document[key])) for title, key in parts if document[key]]
    return cards.model_card(name, summary, sections, architecture=(document["architecture"], document["config"]))


@contextlib.contextmanager
def _atomic_path(target: Path) -> Iterator[str]:
    """A temporary path beside ``target`` that replaces it only if the block succeeds."""
    handle, temporary = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
    os.close(handle)
    try:
        yield temporary
    except BaseException:
        os.unlink(temporary)
        raise
    os.replace(temporary, target)


def push_to_hub(
    source: LearnedOptimizer | str | os.PathLike[str],
    repo_id: str,
    *,
    token: str | None = None,
    private: bool | None = None,
    revision: str | None = None,
    commit_message: str = "Upload learned_optim weights",
    **save_kwargs: Any,
) -> str:
    """Upload an optimizer's weights (or an existing weights directory) to a Hub model repo.

    Returns the commit URL. ``save_kwargs`` (description, metrics, recipe, model_card) are used
    when ``source`` is an optimizer.
    """
    from huggingface_hub import HfApi

    api = HfApi(endpoint=os.environ.get("HF_ENDPOINT"), token=token)
    with tempfile.TemporaryDirectory() as tmp:
        if isinstance(source, LearnedOptimizer):
            folder = save_pretrained(source, Path(tmp) / repo_id.split("/")[-1], **save_kwargs)
        else:
            folder = Path(source)
            read_pretrained(folder)  # refuse to upload something we could not load back
        api.create_repo(repo_id, private=private, exist_ok=True)
        commit = api.upload_folder(
            repo_id=repo_id,
            folder_path=folder,
            revision=revision,
            commit_message=commit_message,
            allow_patterns=[CONFIG_NAME, WEIGHTS_NAME, CARD_NAME],
        )
    return str(commit.commit_url if hasattr(commit, "commit_url") else commit)


install_weights_io(sys.modules[__name__])  # LearnedOptimizer.from_pretrained & co. (base cannot import hub)
