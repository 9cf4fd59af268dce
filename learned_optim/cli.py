"""The ``learned-optim`` command."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import learned_optim
from learned_optim import hub


def _list(args: argparse.Namespace) -> int:
    entries = hub.list_pretrained()
    if args.json:
        print(json.dumps(entries, indent=2))
        return 0
    if not entries:
        searched = ", ".join(map(str, hub.weights_dirs())) or "(no weights folder exists)"
        print(f"no pretrained weights found; searched {searched}")
        return 0
    width = max(len(entry["name"]) for entry in entries)
    arch_width = max(len(entry["architecture"]) for entry in entries)
    for entry in entries:
        print(f"{entry['name']:<{width}}  {entry['architecture']:<{arch_width}}  {entry['description']}")
    return 0


def _download(args: argparse.Namespace) -> int:
    directory = hub.resolve(args.repo_id, revision=args.revision, cache_dir=args.cache_dir)
    pretrained = hub.read_pretrained(directory)
    print(f"{args.repo_id}: {pretrained.architecture} weights in {directory}")
    return 0


def _meta_train(args: argparse.Namespace) -> int:
    import torch

    from learned_optim.meta.export import export_weights
    from learned_optim.meta.trainer import MetaTrainConfig, MetaTrainer

    if args.threads:
        torch.set_num_threads(args.threads)
    config = MetaTrainConfig.from_file(args.config)
    if args.distributed:
        from learned_optim.meta import distributed

        distributed.init_from_environment()
    run_dir = Path(args.run_dir or Path("runs") / Path(args.config).stem)
    trainer = MetaTrainer(config, run_dir, data_root=args.data_root)
    result = trainer.run(resume=args.resume, progress_bar=not args.no_progress)
    if args.distributed and distributed.rank() != 0:
        return 0  # rank 0 exports the weights
    launcher = f"torchrun --nproc_per_node {distributed.world_size()} -m learned_optim" if args.distributed else ""
    command = f"{launcher or 'learned-optim'} meta-train {args.config}"
    command += (f" --threads {args.threads}" if args.threads else "") + (" --distributed" if args.distributed else "")
    out = export_weights(trainer, result, args.out or run_dir / "weights", command)
    print(f"weights written to {out} (best meta-validation loss {min(result.progress.best_valid, 1e9):.4f})")
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

    listing = commands.add_parser("list", help="list the pretrained weights shipped with the package")
    listing.add_argument("--json", action="store_true", help="print JSON instead of a table")
    listing.set_defaults(handler=_list)

    download = commands.add_parser("download", help="download weights from the Hugging Face Hub into its cache")
    download.add_argument("repo_id", help="Hub model repo, 'owner/name'")
    download.add_argument("--revision", help="branch, tag or commit (default: main)")
    download.add_argument("--cache-dir", help="cache folder (default: huggingface_hub's)")
    download.set_defaults(handler=_download)

    meta = commands.add_parser("meta-train", help="meta-train a learned optimizer from a JSON config")
    meta.add_argument("config", help="recipe file, e.g. configs/lstm-mnist.json")
    meta.add_argument("--run-dir", help="checkpoint, metrics and plot folder (default: runs/<config name>)")
    meta.add_argument("--out", help="weights directory to write (default: <run-dir>/weights)")
    meta.add_argument("--resume", action="store_true", help="continue from the run directory's checkpoint")
    meta.add_argument("--data-root", help="dataset folder (default: $LEARNED_OPTIM_DATA or ~/.cache)")
    meta.add_argument("--threads", type=int, help="torch CPU threads (results depend on it; the recipe records it)")
    meta.add_argument("--no-progress", action="store_true", help="no progress bar")
    meta.add_argument(
        "--distributed", action="store_true", help="multi-process meta-training under torchrun (one task per rank)"
    )
    meta.set_defaults(handler=_meta_train)

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
        "bench", help="benchmark suites: quick, mnist, transfer, resnet50, overhead (learned-optim bench --help)"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["bench"]:  # the suite runner parses its own options, --help included
        args = argparse.Namespace(handler=_bench, bench_args=argv[1:])
    else:
        args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except (ValueError, KeyError, FileNotFoundError) as error:  # bad input: a message, not a traceback
        message = error.args[0] if isinstance(error, KeyError) and error.args else error
        print(f"learned-optim: error: {message}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
