import json
import subprocess
import sys

import pytest
from hub_server import FakeHub

import learned_optim as lo
from learned_optim import cli


def run_cli(*args, env=None, check=True):
    import os

    result = subprocess.run(
        [sys.executable, "-m", "learned_optim", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
    )
    if check and result.returncode != 0:
        raise AssertionError(result.stderr)
    return result


@pytest.fixture
def weights_folder(tmp_path):
    import torch

    optimizer = lo.LSTMOptimizer([torch.nn.Parameter(torch.zeros(2))], hidden_size=3, num_layers=1)
    optimizer.save_pretrained(tmp_path / "weights" / "tiny-lstm", description="tiny LSTM for tests")
    return tmp_path / "weights"


def table(out):
    """The header and rows of `learned-optim list`, without the blank line and hint after them."""
    lines = out.splitlines()
    assert lines[-2:] == ["", HINT], lines[-2:]
    return lines[0], lines[1:-2]


HINT = "learned-optim show NAME: the card, config and recipe of one"


def test_list_prints_name_architecture_and_summary(weights_folder):
    out = run_cli("list", env={"LEARNED_OPTIM_WEIGHTS": str(weights_folder)}).stdout
    header, rows = table(out)
    assert header.split() == ["NAME", "ARCHITECTURE", "RECOMMENDATION", "SUMMARY"]
    assert rows[-1].split() == ["tiny-lstm", "lstm", "—", "tiny", "LSTM", "for", "tests"]  # own weights: last
    entries = json.loads(run_cli("list", "--json", env={"LEARNED_OPTIM_WEIGHTS": str(weights_folder)}).stdout)
    assert {
        "name": "tiny-lstm",
        "architecture": "lstm",
        "description": "tiny LSTM for tests",
        "recommendation": "",
    } in entries
    shipped = {entry["name"]: entry for entry in lo.list_pretrained()}
    celo2 = next(entry for entry in entries if entry["name"] == "celo2-small-tasks")
    assert celo2 == shipped["celo2-small-tasks"] and len(celo2["description"]) > 600  # --json: the whole text


def test_list_puts_recommended_weights_first_and_marks_study_objects():
    header, rows = table(run_cli("list").stdout)
    column = header.index("RECOMMENDATION")
    use = {row.split()[0]: row[column:].split("  ")[0] for row in rows}
    assert use["celo2-small-tasks"] == "recommended" and use["rnnprop-mnist"] == "study object"
    assert use["hamiltonian-quadratic"] == "study object"
    assert use[rows[0].split()[0]] == "recommended"


def list_in_process(monkeypatch, capsys, columns):
    monkeypatch.setenv("COLUMNS", str(columns))  # what shutil.get_terminal_size reads first
    assert cli.main(["list"]) == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("columns", [80, 100, 200])
def test_list_is_one_short_line_per_weights_that_fits_the_terminal(monkeypatch, capsys, columns):
    out = list_in_process(monkeypatch, capsys, columns)
    assert all(len(line) <= columns for line in out.splitlines()), out
    header, rows = table(out)
    entries = lo.list_pretrained()
    assert sorted(row.split()[0] for row in rows) == sorted(entry["name"] for entry in entries)  # each once
    summary = header.index("SUMMARY")
    for entry in entries:
        (row,) = (row for row in rows if row.split()[0] == entry["name"])
        shown = row[summary:]
        sentence = cli.first_sentence(entry["description"])
        if len(sentence) <= columns - summary:
            assert shown == sentence
        else:  # cut, and marked as cut
            assert shown.endswith("…") and sentence.startswith(shown[:-1]) and len(shown) >= 8
    long = next(entry["description"] for entry in entries if entry["name"] == "celo2-small-tasks")
    assert len(long) > 600 and long not in out and long[:200] not in out


@pytest.mark.parametrize("columns", [20, 60])  # the shipped names and verdicts alone take 58
def test_list_on_a_narrow_terminal_still_shows_whole_names(monkeypatch, capsys, columns):
    out = list_in_process(monkeypatch, capsys, columns)
    header, rows = table(out)
    names = {row.split()[0] for row in rows}
    assert names == {entry["name"] for entry in lo.list_pretrained()}
    summary = header.index("SUMMARY")
    assert all(len(row[summary:]) >= 8 for row in rows)  # a few words of each (12 less a cut word), not nothing
    assert max(map(len, out.splitlines())) <= max(cli.LIST_MIN_WIDTH, summary + 12)


def test_list_without_weights_has_no_hint(monkeypatch, capsys):
    monkeypatch.setattr(cli.hub, "list_pretrained", list)
    assert cli.main(["list"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("no pretrained weights found") and HINT not in out


def test_first_sentence_does_not_end_inside_brackets():
    text = "RNNprop (Lv et al. 2017) meta-trained. Then more."
    assert cli.first_sentence(text) == "RNNprop (Lv et al. 2017) meta-trained."
    assert cli.first_sentence("one  line\nno period") == "one line no period"
    assert cli.first_sentence("") == ""


def test_show_prints_architecture_config_recipe_and_card_path():
    directory = lo.hub.resolve("celo2-small-tasks")
    document = json.loads((directory / "config.json").read_text())
    out = run_cli("show", "celo2-small-tasks").stdout
    lines = out.splitlines()
    assert lines[:3] == ["name: celo2-small-tasks", "architecture: celo2", "recommendation: recommended"]
    assert "  ff_hidden_size: 8" in lines and "  ns_coeffs: [3.4445, -4.775, 2.0315]" in lines
    assert " ".join(out.split("description:\n")[1].split("recipe:")[0].split()) == document["description"]
    recipe = json.dumps(document["recipe"], indent=2).replace("\n", "\n  ")
    assert "recipe:\n  " + recipe + "\n" in out and document["recipe"]["command"] in out
    if document.get("metrics"):
        assert "metrics:\n" in out
    assert lines[-1].startswith(f"card: {directory / 'README.md'} ")


def test_show_of_own_weights_directory(weights_folder, capsys):
    assert cli.main(["show", str(weights_folder / "tiny-lstm")]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[:3] == ["name: tiny-lstm", "architecture: lstm", "recommendation: — (none given)"]
    assert "  hidden_size: 3" in out and "  tiny LSTM for tests" in out and "recipe:" not in out


def test_show_of_a_symbolic_rule_prints_its_formula(capsys):
    assert cli.main(["show", "symbolic-lstm-mnist-tuned"]) == 0
    rule = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("  rule: "))
    assert rule.startswith("  rule: d = (") and "m_tilde" in rule and "{" not in rule


def test_show_card_prints_the_model_card(weights_folder):
    card = (lo.hub.resolve("celo2-small-tasks") / "README.md").read_text(encoding="utf-8")
    assert run_cli("show", "celo2-small-tasks", "--card").stdout == card
    (weights_folder / "tiny-lstm" / "README.md").unlink()
    missing = run_cli("show", str(weights_folder / "tiny-lstm"), "--card", check=False)
    assert missing.returncode == 1 and "no model card (README.md)" in missing.stderr and not missing.stdout


def test_show_of_an_unknown_name_is_a_one_line_error():
    result = run_cli("show", "no-such-weights", check=False)
    assert result.returncode == 1 and not result.stdout
    assert result.stderr.startswith("learned-optim: error: no pretrained weights named 'no-such-weights'")
    assert "celo2-small-tasks" in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_output_into_a_closed_pipe_is_no_traceback():
    process = subprocess.Popen(
        [sys.executable, "-m", "learned_optim", "show", "celo2-small-tasks"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    process.stdout.close()  # as `| head` does once it has its lines
    stderr = process.stderr.read().decode()
    process.stderr.close()
    assert process.wait() == 1 and "Traceback" not in stderr and "BrokenPipe" not in stderr


def test_download_from_the_hub_into_the_cache(weights_folder, tmp_path):
    files = {p.name: p.read_bytes() for p in (weights_folder / "tiny-lstm").iterdir()}
    with FakeHub() as hub:
        hub.commit("org/tiny", files)
        env = {"HF_ENDPOINT": hub.endpoint}
        out = run_cli("download", "org/tiny", "--cache-dir", str(tmp_path / "cache"), env=env).stdout
        assert "org/tiny: lstm weights in" in out and str(tmp_path / "cache") in out
        missing = run_cli("download", "org/nothing", "--cache-dir", str(tmp_path / "c2"), env=env, check=False)
    assert missing.returncode == 1 and "'org/nothing' does not exist" in missing.stderr


@pytest.mark.parametrize("command", [[], ["list"], ["show"], ["download"]])
def test_help_everywhere(command):
    out = run_cli(*command, "--help").stdout
    assert out.startswith("usage: learned-optim")


def test_bad_input_is_a_message_not_a_traceback(tmp_path):
    config = tmp_path / "bad.json"
    config.write_text('{"horizon": 100}')
    result = run_cli("meta-train", str(config), "--run-dir", str(tmp_path / "run"), check=False)
    assert result.returncode == 1 and "unknown keys ['horizon']" in result.stderr and "Traceback" not in result.stderr
    missing = run_cli("meta-train", str(tmp_path / "nope.json"), check=False)
    assert missing.returncode == 1 and "nope.json" in missing.stderr
    unknown = run_cli("diagnose", "--task", "cifar-vit", "--steps", "1", check=False)
    assert unknown.returncode == 1 and "unknown task 'cifar-vit'" in unknown.stderr


def test_an_unfinished_run_exports_its_best_weights_and_says_so(tmp_path):
    import json

    from learned_optim.meta.trainer import MetaTrainConfig, MetaTrainer

    recipe = {"architecture": "hamiltonian", "task": "quadratic", "horizons": [10], "unroll": 5}
    recipe |= {"meta_epochs": 3, "trajectories_per_epoch": 2, "validation_trajectories": 1}
    config_path = tmp_path / "tiny.json"
    config_path.write_text(json.dumps(recipe))
    trainer = MetaTrainer(MetaTrainConfig.from_file(config_path), tmp_path / "run")
    trainer.run_dir.mkdir()
    trainer.meta_trajectory(10)
    trainer.progress.trajectory = 1
    trainer.progress.processes, trainer.progress.threads_per_process = 2, 1  # as under torchrun, --threads 1
    trainer.save_checkpoint()
    assert trainer.inner_steps() == (10, 10)

    command = "torchrun --nproc_per_node 2 -m learned_optim meta-train tiny.json --distributed"
    out = tmp_path / "weights"
    run_cli("meta-train", str(config_path), "--run-dir", str(tmp_path / "run"), "--export-only", "--out", str(out),
            "--command", command)  # fmt: skip
    card = (out / "README.md").read_text()
    assert "**Unfinished**" in card and "after 0 of 3 epochs" in card and command in card
    assert "Budget: 10 inner" in card
    saved = json.loads((out / "config.json").read_text())
    assert saved["recipe"]["inner_steps"] == 10 and saved["recipe"]["finished"] is False
    # The run's processes and threads, not the exporting process's (which has torch's default).
    assert (saved["recipe"]["processes"], saved["recipe"]["threads"]) == (2, 1)
    assert "on 2 process(es) of 1 CPU thread(s)" in " ".join(card.split())
    assert "recommendation" not in saved
    # Re-exporting the run as it goes on keeps the verdict its weights were given.
    (out / "config.json").write_text(json.dumps(saved | {"recommendation": "not recommended"}))
    run_cli("meta-train", str(config_path), "--run-dir", str(tmp_path / "run"), "--export-only", "--out", str(out))
    assert json.loads((out / "config.json").read_text())["recommendation"] == "not recommended"
    missing = run_cli("meta-train", str(config_path), "--run-dir", str(tmp_path / "none"), "--export-only", check=False)
    assert missing.returncode != 0 and "no checkpoint" in missing.stderr
