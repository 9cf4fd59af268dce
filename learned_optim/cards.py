"""Model cards: the README.md of a weights folder, built the same way by every producer.

``save_pretrained`` (a minimal card), the meta-trainer's export and the distillation export build
their cards with :func:`model_card`; the evaluation protocol (``benchmarks.l2o_eval``) fills the
card's Evaluation section with :func:`set_subsection`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

TAGS = ("learned-optimizer", "pytorch")
EVALUATION = "Evaluation"
NOT_EVALUATED = "Not evaluated yet: run `python -m benchmarks.l2o_eval --weights {name}` to fill this section."


def model_card(
    name: str,
    summary: str,
    sections: Sequence[tuple[str, str]] = (),
    *,
    architecture: tuple[str, dict[str, Any]] | None = None,
    tags: Sequence[str] = (),
) -> str:
    """A card: the Hub's YAML header, ``# name``, ``summary``, how to load the weights, then sections.

    ``architecture``: (name, config) to state under the loading example; ``sections``: (heading,
    Markdown body) pairs, each written as a ``## heading``; ``tags``: Hub tags besides ``TAGS``.
    """
    all_tags = [*TAGS[:1], *tags, *TAGS[1:]]
    lines = ["---", "library_name: learned_optim", "tags:", *(f"- {tag}" for tag in all_tags), "---", ""]
    lines += [f"# {name}", "", summary.strip(), "", "```python", "import learned_optim as lo", ""]
    lines += [f'opt = lo.load("{name}", model.parameters())', "```"]
    if architecture is not None:
        lines += ["", f"Architecture `{architecture[0]}` with `{json.dumps(architecture[1])}`."]
    for heading, body in sections:
        lines += ["", f"## {heading}", "", body.strip()]
    return "\n".join(lines) + "\n"


def json_block(value: Any) -> str:
    """``value`` as an indented JSON code block (for metrics and recipes without a table of their own)."""
    return "```json\n" + json.dumps(value, indent=2) + "\n```"


def set_subsection(card: str, block: str, section: str = EVALUATION) -> str:
    """``card`` with ``block`` (starting ``### heading``) in ``## section``, replacing the same heading in place.

    Other subsections keep their order; a ``Not evaluated`` placeholder is dropped; a card without
    the section gets it at the end.
    """
    heading = block.split("\n", 1)[0] + "\n"
    if not heading.startswith("### "):
        raise ValueError(f"a subsection starts with '### ', not {heading!r}")
    head, marker, tail = card.partition(f"## {section}\n")
    if not marker:
        return card + f"\n## {section}\n\n" + block
    body, next_heading, rest = tail.partition("\n## ")
    placeholder = NOT_EVALUATED.split(":")[0]
    blocks = [b for b in body.split("\n### ") if b.strip() and not b.lstrip().startswith(placeholder)]
    blocks = [b if b.startswith("### ") else "### " + b for b in blocks]
    if any(b.startswith(heading) for b in blocks):
        blocks = [block if b.startswith(heading) else b for b in blocks]
    else:
        blocks.append(block)
    return head + marker + "\n" + "\n".join(b.strip() + "\n" for b in blocks) + next_heading + rest
