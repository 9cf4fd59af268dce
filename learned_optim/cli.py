"""The ``learned-optim`` command."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shlex
import shutil
import sys
import textwrap
from collections.abc import Sequence
from pathlib import Path

import learned_optim
from learned_optim import hub

LIST_MIN_WIDTH = 60  # narrower terminals still get whole names and a few words of summary
_SUMMARY_MIN = 12


def first_sentence(text: str) -> str:
    """``text`` up to its first ". " outside brackets ("Lv et al. 2017" in parentheses is no end), one line."""
    text = " ".join(text.split())
    depth = 0
    for index, char in enumerate(text):
        if char in "([{":
            depth += 1
        elif char in ")]}":
            depth = max(depth - 1, 0)
        elif char == "." and depth == 0 and text[index + 1 : index + 2] == " ":
            return text[: index + 1]
    return text


def shorten(text: str, width: int) -> str:
    """``text`` cut to ``width`` characters, ending in "…" where it was cut (at a word boundary if one is near)."""
    if len(text) <= width:
        return text
    cut = text[: max(width - 1, 0)]
    space = cut.rfind(" ")
    if space >= width * 2 // 3:  # cut at a word unless that loses too much
        cut = cut[:space]
    return cut.rstrip(" ,;:(-") + "…"


def _list(args: argparse.Namespace) -> int:
    entries = hub.list_pretrained()
    if args.json:
        print(json.dumps(entries, indent=2))
        return 0
    if not entries:
        searched = ", ".join(map(str, hub.weights_dirs())) or "(no weights folder exists)"
        print(f"no pretrained weights found; searched {searched}")
        return 0
    columns = ("name", "architecture", "recommendation")
    header = {"name": "NAME", "architecture": "ARCHITECTURE", "recommendation": "RECOMMENDATION", "summary": "SUMMARY"}
    # Recommended weights first; weights without a recommendation (your own) last.
    rank = {value: index for index, value in enumerate(hub.RECOMMENDATIONS)}
    entries = sorted(entries, key=lambda entry: rank.get(entry["recommendation"], len(rank)))
    rows = [
        header,
        *(
            {**entry, "recommendation": entry["recommendation"] or "—", "summary": first_sentence(entry["description"])}
            for entry in entries
        ),
    ]
    widths = {c: max(len(row[c]) for row in rows) for c in columns}
    prefix = sum(widths.values()) + 2 * len(columns)  # the columns and the separators before the summary
    width = max(shutil.get_terminal_size(fallback=(100, 24)).columns, LIST_MIN_WIDTH)
    summary_width = max(width - prefix, _SUMMARY_MIN)
    for row in rows:
        line = "  ".join(f"{row[c]:<{widths[c]}}" for c in columns) + "  " + shorten(row["summary"], summary_width)
        print(line.rstrip())
    print()
    print("learned-optim show NAME: the card, config and recipe of one")
    return 0


def _show(args: argparse.Namespace) -> int:
    directory = hub.resolve(args.name, revision=args.revision, cache_dir=args.cache_dir)
    pretrained = hub.read_pretrained(directory)  # validates config.json and model.safetensors
    card = directory / hub.CARD_NAME
    if args.card:
        if not card.is_file():
            raise hub.WeightsNotFoundError(f"{args.name}: no model card ({hub.CARD_NAME}) in {directory}")
        print(card.read_text(encoding="utf-8"), end="")
        return 0
    recommendation = pretrained.recommendation or "— (none given)"
    name = Path(args.name).resolve().name if Path(args.name).is_dir() else str(args.name)
    print(f"name: {name}")
    print(f"architecture: {pretrained.architecture}")
    print(f"recommendation: {recommendation}")
    print(f"path: {directory}")
    print()
    print("config:")
    config = dataclasses.asdict(pretrained.config)
    rule = getattr(pretrained.config, "parsed", None)  # a symbolic rule: its formula, not its JSON tree
    for key, value in config.items():
        if key == "rule" and hasattr(rule, "infix"):
            constants = pretrained.theta.get("constants")
            if constants is not None:  # the (possibly meta-tuned) constants the optimizer uses
                rule = rule.with_constants(constants.tolist())
            shown = f"d = {rule.infix()}"
        else:
            shown = json.dumps(value) if isinstance(value, (list, dict, tuple, bool)) or value is None else str(value)
        print(f"  {key}: {shown}")
    print()
    print("description:")
    width = min(max(shutil.get_terminal_size(fallback=(100, 24)).columns, LIST_MIN_WIDTH), 100) - 2
    print(textwrap.indent(textwrap.fill(pretrained.description or "(none)", width=width), "  "))
    for title, value in (("recipe", pretrained.recipe), ("metrics", pretrained.metrics)):
        if value:
            print()
            print(f"{title}:")
            print(textwrap.indent(json.dumps(value, indent=2), "  "))
    print()
    if card.is_file():
        print(f"card: {card} (learned-optim show {shlex.quote(args.name)} --card prints it)")
    else:
        print(f"card: none ({hub.CARD_NAME} is not in {directory})")
    return 0


def _download(args: argparse.Namespace) -> int:
    directory = hub.resolve(args.repo_id, revision=args.revision, cache_dir=args.cache_dir)
    pretrained = hub.read_pretrained(directory)
    print(f"{args.repo_id}: {pretrained.architecture} weights in {directory}")
    return 0


def _meta_train(args: argparse.Namespace) -> int:
    import torch

    from learned_optim.meta.export import export_weights
    from learned_optim.meta.trainer import CHECKPOINT_NAME, MetaTrainConfig, MetaTrainer

    if args.threads:
        torch.set_num_threads(args.threads)
    config = MetaTrainConfig.from_file(args.config)
    if args.distributed:
        from learned_optim.meta import distributed

        distributed.init_from_environment()
    run_dir = Path(args.run_dir or Path("runs") / Path(args.config).stem)
    trainer = MetaTrainer(config, run_dir, data_root=args.data_root, coordinate_threads=args.coordinate_threads)
    if args.export_only:
        checkpoint = run_dir / CHECKPOINT_NAME
        if not checkpoint.exists():
            raise SystemExit(f"--export-only: no checkpoint in {run_dir}")
        trainer.load_checkpoint(checkpoint)
        trainer.write_plot()
        result = trainer.result()
    else:
        result = trainer.run(resume=args.resume, progress_bar=not args.no_progress)
    launcher = ""
    if args.distributed:
        exports = distributed.rank() == 0
        launcher = f"torchrun --nproc_per_node {distributed.world_size()} -m learned_optim"
        # Every rank leaves the process group before exiting: without it gloo's threads can abort at exit.
        distributed.shutdown()
        if not exports:
            return 0  # rank 0 exports the weights
    command = f"{launcher or 'learned-optim'} meta-train {args.config}"
    command += f" --threads {args.threads}" if args.threads else ""
    command += f" --coordinate-threads {args.coordinate_threads}" if args.coordinate_threads > 1 else ""
    command += " --distributed" if args.distributed else ""
    command = args.command or command
    out = export_weights(trainer, result, args.out or run_dir / "weights", command)
    print(f"weights written to {out} (best meta-validation loss {min(result.progress.best_valid, 1e9):.4f})")
    return 0


def _distill(args: argparse.Namespace) -> int:
    import torch

    from learned_optim.meta import distill, distill_export
    from learned_optim.meta.regression import DEFAULT_OPERATORS, SearchSettings, get_backend
    from learned_optim.optimizers.symbolic import INPUTS

    if args.threads:
        torch.set_num_threads(args.threads)
    teacher = hub.from_pretrained(args.teacher)
    # The teacher's own decays where it has them (Hamiltonian's single ``beta`` is its g² average's).
    teacher_betas = {"beta1": getattr(teacher.config, "beta1", 0.95)}
    teacher_betas["beta2"] = getattr(teacher.config, "beta2", getattr(teacher.config, "beta", 0.95))
    betas = {b: teacher_betas[b] if getattr(args, b) is None else getattr(args, b) for b in ("beta1", "beta2")}
    spec = {
        "task": args.task,
        "trajectories": args.trajectories,
        "steps": args.steps,
        "coordinates_per_tensor": args.coordinates,
        "seed": args.seed,
        **betas,
    }
    work = Path(args.work_dir or Path("runs") / f"distill-{Path(args.teacher).name}")
    work.mkdir(parents=True, exist_ok=True)
    cached = work / "dataset.safetensors"
    inputs = args.inputs.split(",")
    unknown = sorted(set(inputs) - set(INPUTS))
    if unknown:  # before recording, which takes minutes
        raise ValueError(f"unknown rule inputs {unknown}; choose from {sorted(INPUTS)}")
    dataset = distill.Dataset.load(cached) if cached.exists() else None
    stale = dataset is not None and (
        any(dataset.metadata.get(k) != v for k, v in {**spec, "teacher": args.teacher}.items())
        or not set(inputs) <= set(dataset.columns)  # recorded before an input was added
    )
    if dataset is None or stale:
        dataset = distill.record(teacher, data_root=args.data_root, progress_bar=not args.no_progress, **spec)
        dataset.metadata["teacher"] = args.teacher
        dataset.save(cached)
    else:
        print(f"reusing the recorded dataset {cached}")
    operators = tuple(args.operators.split(",")) if args.operators else DEFAULT_OPERATORS
    settings = SearchSettings(
        operators=operators,
        max_length=args.max_length,
        time_limit=args.time_limit,
        seed=args.seed,
        threads=torch.get_num_threads(),
    )
    result = distill.fit(
        dataset,
        inputs,
        get_backend(args.backend),
        settings,
        heldout_fraction=args.heldout,
        sign_symmetric=args.sign_symmetric,
    )
    command = "learned-optim " + shlex.join(args.argv)  # the recipe: exactly what was run
    recipe = {
        "command": command,
        "teacher": args.teacher,
        "inputs": inputs,
        "backend": args.backend,
        "search": {"operators": list(operators), "max_length": args.max_length, "time_limit": args.time_limit},
        "heldout_fraction": args.heldout,
        "sign_symmetric": args.sign_symmetric,
        "seed": args.seed,
        "threads": torch.get_num_threads(),
    }
    out = distill_export.export(result, dataset, args.out or work / "weights", teacher=args.teacher, recipe=recipe)
    chosen = result.chosen
    print(f"rule: d = {chosen.rule.infix()}")
    print(f"held-out R² {chosen.heldout_r2:.4f} (train {chosen.train_r2:.4f}), size {chosen.size}; written to {out}")
    return 0


def _diagnose(args: argparse.Namespace) -> int:
    from learned_optim.diagnostics.report import diagnose, write_report

    report = diagnose(args.task, args.optimizers.split(","), args.steps, args.every, args.seed)
    for path in write_report(report, args.out or Path("reports") / "diagnostics" / args.task):
        print(path)
    return 0


def _bench(args: argparse.Namespace) -> int:
    try:  # installed: the benchmarks/ folder ships as learned_optim.benchmarks
        from learned_optim.benchmarks.cli import main as bench_main
    except ImportError:  # pragma: no cover - a checkout whose install predates the mapping
        from benchmarks.cli import main as bench_main
    return bench_main(args.bench_args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="learned-optim", description="Pretrained learned optimizers for PyTorch.")
    parser.add_argument("--version", action="version", version=f"learned_optim {learned_optim.__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    listing = commands.add_parser(
        "list", help="list the pretrained weights: name, architecture, whether to use them, a one-line summary"
    )
    listing.add_argument("--json", action="store_true", help="print JSON (full descriptions) instead of a table")
    listing.set_defaults(handler=_list)

    show = commands.add_parser(
        "show", help="one weights' architecture, config, recommendation, description, recipe, metrics and card"
    )
    show.add_argument("name", help="a shipped name (learned-optim list), a weights directory or a Hub repo id")
    show.add_argument("--card", action="store_true", help="print the model card (README.md) instead")
    show.add_argument("--revision", help="Hub branch, tag or commit (default: main)")
    show.add_argument("--cache-dir", help="Hub cache folder (default: huggingface_hub's)")
    show.set_defaults(handler=_show)

    download = commands.add_parser("download", help="download weights from the Hugging Face Hub into its cache")
    download.add_argument("repo_id", help="Hub model repo, 'owner/name'")
    download.add_argument("--revision", help="branch, tag or commit (default: main)")
    download.add_argument("--cache-dir", help="cache folder (default: huggingface_hub's)")
    download.set_defaults(handler=_download)

    meta = commands.add_parser("meta-train", help="meta-train a learned optimizer from a JSON config")
    meta.add_argument("config", help="recipe file, e.g. configs/rnnprop-mnist.json")
    meta.add_argument("--run-dir", help="checkpoint, metrics and plot folder (default: runs/<config name>)")
    meta.add_argument("--out", help="weights directory to write (default: <run-dir>/weights)")
    meta.add_argument("--resume", action="store_true", help="continue from the run directory's checkpoint")
    meta.add_argument(
        "--export-only",
        action="store_true",
        help="write the best weights so far from the run directory's checkpoint, without training (an unfinished "
        "run's card says so)",
    )
    meta.add_argument(
        "--command", help="with --export-only: the command line that trained the run, for the card and config.json"
    )
    meta.add_argument("--data-root", help="dataset folder (default: $LEARNED_OPTIM_DATA or ~/.cache)")
    meta.add_argument("--threads", type=int, help="torch CPU threads (results depend on it; the recipe records it)")
    meta.add_argument(
        "--coordinate-threads",
        type=int,
        default=1,
        metavar="N",
        help="split each inner step's coordinates over N threads of one core each: same math, first order "
        "only; faster or not depending on the CPU (docs/performance.md)",
    )
    meta.add_argument("--no-progress", action="store_true", help="no progress bar")
    meta.add_argument(
        "--distributed", action="store_true", help="multi-process meta-training under torchrun (one task per rank)"
    )
    meta.set_defaults(handler=_meta_train)

    distill = commands.add_parser("distill", help="distill a learned optimizer into a closed-form rule")
    distill.add_argument("teacher", help="weights name or directory, e.g. rnnprop-mnist")
    distill.add_argument(
        "--task", default="mnist-mlp", help="task or task distribution (e.g. general-tasks) the teacher is recorded on"
    )
    distill.add_argument("--inputs", default="m_tilde,g_tilde", help="comma-separated rule inputs (see lo.Symbolic)")
    distill.add_argument("--operators", help="comma-separated operators (default: add,sub,mul,square,tanh,sinh,abs)")
    distill.add_argument("--out", help="weights directory to write (default: <work-dir>/weights)")
    distill.add_argument("--work-dir", help="dataset cache folder (default: runs/distill-<teacher>)")
    distill.add_argument("--trajectories", type=int, default=8, help="task instances recorded")
    distill.add_argument("--steps", type=int, default=300, help="steps recorded per trajectory")
    distill.add_argument("--coordinates", type=int, default=16, help="coordinates sampled per tensor per step")
    distill.add_argument("--heldout", type=float, default=0.25, help="fraction of trajectories held out for R²")
    distill.add_argument(
        "--sign-symmetric",
        action="store_true",
        help="fit the teacher's odd part, d(-g) = -d(g), as SGD and Adam keep it: no rule with a constant drift",
    )
    distill.add_argument("--beta1", type=float, help="input moments' decay (default: the teacher's, else 0.95)")
    distill.add_argument("--beta2", type=float, help="input moments' decay (default: the teacher's, else 0.95)")
    distill.add_argument("--backend", default="operon", help="symbolic-regression engine")
    distill.add_argument("--time-limit", type=int, default=120, help="seconds of search")
    distill.add_argument("--max-length", type=int, default=25, help="largest rule size the search considers")
    distill.add_argument("--seed", type=int, default=0)
    distill.add_argument("--threads", type=int, help="torch and search threads")
    distill.add_argument("--data-root", help="dataset folder (default: $LEARNED_OPTIM_DATA or ~/.cache)")
    distill.add_argument("--no-progress", action="store_true", help="no progress bar")
    distill.set_defaults(handler=_distill)

    diagnose = commands.add_parser("diagnose", help="symmetry (conservation-law) report for several optimizers")
    diagnose.add_argument("--task", default="mnist-mlp-relu", help="task name, e.g. mnist-mlp-relu, mnist-cnn-bn")
    diagnose.add_argument(
        "--optimizers",
        default="sgd,sgd-wd,adam",
        help="comma-separated: sgd, sgd-wd, adam, lstm, rnnprop, weights names; name@lr",
    )
    diagnose.add_argument("--steps", type=int, default=300)
    diagnose.add_argument("--every", type=int, default=10, help="record every N-th step")
    diagnose.add_argument("--seed", type=int, default=0)
    diagnose.add_argument("--out", help="report folder (default: reports/diagnostics/<task>)")
    diagnose.set_defaults(handler=_diagnose)
    # Listed for the help text only: main() hands `bench ...` to the suite runner's own parser.
    commands.add_parser(
        "bench", help="benchmark suites: quick, mnist, transfer, resnet50, real, overhead (learned-optim bench --help)"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["bench"]:  # the suite runner parses its own options, --help included
        args = argparse.Namespace(handler=_bench, bench_args=argv[1:])
    else:
        args = build_parser().parse_args(argv)
        args.argv = argv
    try:
        status = args.handler(args)
        sys.stdout.flush()  # here, so that a closed pipe is caught below and not at exit
        return status
    except BrokenPipeError:  # `learned-optim show NAME | head`: the reader has all it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # Python's own flush at exit
        return 1
    except (ValueError, KeyError, FileNotFoundError) as error:  # bad input: a message, not a traceback
        message = error.args[0] if isinstance(error, KeyError) and error.args else error
        print(f"learned-optim: error: {message}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
