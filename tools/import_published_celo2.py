"""Copy the published Celo2 network into ``weights/celo2-published``, in this package's format.

    python -m tools.import_published_celo2 PUBLISHED_FOLDER [--out weights/celo2-published]

``PUBLISHED_FOLDER`` is the reference Hub format (``PyTorchModelHubMixin``: the network's
constructor arguments as ``config.json``, e.g. the Hub repo ``DiamondXL/celo2``). The tensors are
read and validated by ``lo.from_pretrained`` and written unchanged; the folder gets this package's
``config.json`` (architecture, config, recommendation "study object", the source) and a card that
names the source and its license. Shipped so that the suites benchmark the field's reference
weights beside ours on any machine, without the Hub.
"""

from __future__ import annotations

import argparse
import hashlib
from pathlib import Path

import torch

import learned_optim as lo
from learned_optim import cards

NAME = "celo2-published"
SOURCE = (
    "Moudgil et al., Celo2 (ICLR 2026, arXiv 2602.19142): the authors' meta-trained network, PES on four small "
    "image-MLP tasks, about 4.5 GPU-hours; weights from Belilovsky-Lab/pylo (branch celo2, "
    "pylo/models/celo2_weights.pt at faf6fcb), converted from the authors' theta.state (Hugging Face amoudgl/celo2), "
    "in the format of the Hub repo DiamondXL/celo2"
)
LICENSE = "MIT (the authors' weights, model card of amoudgl/celo2); PyLO, which converted them, is BSD-3-Clause"
SUMMARY = (
    "The published Celo2 network (Moudgil et al. 2026), unchanged: the field's reference point, benchmarked beside "
    "the weights meta-trained here. Use it at lr 1e-3, as its authors do."
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("published", type=Path)
    parser.add_argument("--out", type=Path, default=Path("weights") / NAME)
    args = parser.parse_args()
    pretrained = lo.from_pretrained(args.published)
    optimizer = pretrained.build([torch.nn.Parameter(torch.zeros(1))])
    digest = hashlib.sha256((args.published / "model.safetensors").read_bytes()).hexdigest()
    recipe = {
        "source": SOURCE,
        "license": LICENSE,
        "source_sha256": digest,
        "command": f"python -m tools.import_published_celo2 {args.published.name} --out {args.out}",
    }
    card = cards.model_card(
        NAME,
        SUMMARY,
        [("Source and license", f"{SOURCE}.\n\nLicense: {LICENSE}.\n\nsha256 of the source's model.safetensors: "
          f"`{digest}`; the tensors are written unchanged.")],
        architecture=(pretrained.architecture, optimizer.export_config()),
    )  # fmt: skip
    lo.save_pretrained(
        optimizer, args.out, description=SUMMARY, recipe=recipe, model_card=card, recommendation="study object"
    )
    print(f"{args.out}: {pretrained.architecture} weights from {args.published}")


if __name__ == "__main__":
    main()
