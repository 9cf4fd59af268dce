"""Model cards: one builder for every producer, and the Evaluation section filled in place."""

import pytest

from learned_optim import cards


def test_model_card_has_the_hub_header_title_loading_example_and_sections():
    card = cards.model_card(
        "my-weights", "What they are.", [("Recipe", "how")], architecture=("rnnprop", {"a": 1}), tags=["extra"]
    )
    assert card.startswith("---\nlibrary_name: learned_optim\ntags:\n- learned-optimizer\n- extra\n- pytorch\n---\n")
    assert "# my-weights\n\nWhat they are.\n" in card and 'lo.load("my-weights", model.parameters())' in card
    assert 'Architecture `rnnprop` with `{"a": 1}`.' in card and card.endswith("## Recipe\n\nhow\n")


def test_set_subsection_replaces_the_placeholder_then_keeps_order():
    card = cards.model_card("w", "s", [(cards.EVALUATION, cards.NOT_EVALUATED.format(name="w")), ("Recipe", "r")])
    card = cards.set_subsection(card, "### task-a\n\nA1\n")
    card = cards.set_subsection(card, "### task-b\n\nB\n")
    card = cards.set_subsection(card, "### task-a\n\nA2\n")
    assert "Not evaluated" not in card and "A1" not in card
    assert card.index("### task-a") < card.index("A2") < card.index("### task-b") < card.index("## Recipe")
    assert cards.set_subsection("# bare\n", "### t\n\nx\n").endswith("\n## Evaluation\n\n### t\n\nx\n")
    with pytest.raises(ValueError, match="subsection"):
        cards.set_subsection(card, "## not a subsection\n")
