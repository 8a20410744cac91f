"""Command-line entry points: parse arguments, call ``distbp.train``, map errors to exit codes
(0 done, 1 run error, 2 bad command line or config; 128 + signal number when SIGINT or
SIGTERM stopped a run after checkpointing)."""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from typing import Callable, Sequence

from ._version import __version__
from .errors import EXIT_OK, EXIT_RUN_ERROR


def _fail(prog: str, message: str, code: int) -> int:
    print(f"{prog}: error: {message}", file=sys.stderr)
    return code


def _guard(prog: str, body: Callable[[], int]) -> int:
    """Run ``body``; every failure becomes one message and an exit code, never a traceback
    (set DISTBP_DEBUG=1 to see one). distbp's errors carry their exit code.

    Under mpirun, errors that every rank raises together (``collective``: config, rank
    mismatch, a signal) are reported once, by rank 0. Any other error is printed with its
    rank and aborts the whole job, so no rank is left waiting in a collective.
    """
    from .errors import DistbpError
    from .train import Interrupted, abort_job, launched_by_mpi, world_rank

    rank, size = world_rank(), launched_by_mpi()
    if size > 1:
        prog = f"{prog}[rank {rank}]"
    try:
        return body()
    except DistbpError as e:
        if e.collective and rank != 0:
            return e.exit_code
        if os.environ.get("DISTBP_DEBUG"):
            traceback.print_exc()
        if isinstance(e, Interrupted):
            print(f"{prog}: {e}", file=sys.stderr)
            return e.exit_code
        code = _fail(prog, str(e).replace("\n", "\n  "), e.exit_code)
        if e.collective:
            return code
    except KeyboardInterrupt:
        code = _fail(prog, "interrupted", 128 + 2)
    except (OSError, ImportError) as e:
        if os.environ.get("DISTBP_DEBUG"):
            traceback.print_exc()
        code = _fail(prog, str(e), EXIT_RUN_ERROR)
    except Exception as e:  # a bug: still one line, with the way to the traceback
        if os.environ.get("DISTBP_DEBUG"):
            traceback.print_exc()
        code = _fail(prog, f"internal error {type(e).__name__}: {e} (set DISTBP_DEBUG=1 for the traceback)",
                     EXIT_RUN_ERROR)
    if size > 1:
        abort_job(code)
    return code


def _config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="FILE", help="YAML config (default: the built-in digits MLP)")
    parser.add_argument("--set", metavar="KEY=VALUE", action="append", default=[], dest="overrides",
                        help="override a config key, e.g. --set optimizer.lr=0.01 (repeatable)")


EXIT_CODES = ("exit codes: 0 done; 1 a run error (a data file, a damaged checkpoint, a non-finite loss, a lost "
              "worker); 2 a bad command line or config; 128 + N when signal N (SIGINT 130, SIGTERM 143) stopped "
              "the run after a checkpoint.")
DEBUG = "environment: DISTBP_DEBUG=1 prints the traceback behind an error message."


def _train_epilog() -> str:
    import textwrap

    from .train.config import SCHEMA

    sections = "; ".join(f"{k} ({', '.join(v)})" if isinstance(v, dict) else k for k, v in SCHEMA.items())
    text = (f"config sections and keys (a YAML file, or --set SECTION.KEY=VALUE; --print-config shows them all "
            f"with their values; README.md, 'Config', says what each does): {sections}.")
    return "\n\n".join(textwrap.fill(t, 100) for t in (text, EXIT_CODES, DEBUG))


def train_main(argv: Sequence[str] | None = None) -> int:
    """distbp-train: train the configured model; with no --config, the default config."""
    parser = argparse.ArgumentParser(prog="distbp-train", description=train_main.__doc__, epilog=_train_epilog(),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"distbp {__version__}")
    _config_args(parser)
    parser.add_argument("--run-dir", metavar="DIR", help="where config, metrics, log and checkpoints go "
                        "(default: the config's run_dir)")
    parser.add_argument("--resume", default="auto", metavar="auto|never|PATH",
                        help="auto: continue from the newest good checkpoint in the run directory (default; "
                             "damaged ones are moved to checkpoints/damaged/, and if none is good the run stops); "
                             "never: start fresh (refused while checkpoints are there); PATH: that checkpoint")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    args = parser.parse_args(argv)
    from .train import launched_by_mpi, supervise_rank, world_rank

    if launched_by_mpi() > 1:
        supervise_rank(world_rank())  # returns in the child, which trains

    def body() -> int:
        from .train import Trainer, load_config, run_rejoining
        from .train.config import ConfigError, check_memory, dump, run_dir_path

        if args.run_dir is not None:
            run_dir_path(args.run_dir, "--run-dir")  # "" would train into the working directory
        cfg = load_config(args.config, args.overrides)
        if args.print_config:
            print(dump(cfg), end="")
            return EXIT_OK
        check_memory(cfg)  # a model or synthetic data set too big for this machine, before any is allocated
        if args.resume not in ("auto", "never") and not os.path.isfile(args.resume):
            raise ConfigError(f"--resume: no such checkpoint file: {args.resume}")
        trainer, result = run_rejoining(
            lambda c: Trainer(c, run_dir=args.run_dir, resume=args.resume, stream=sys.stdout), cfg)
        if not trainer.comm.is_coordinator:
            return EXIT_OK
        acc = "" if result.val_accuracy is None else f", val_accuracy {result.val_accuracy:.4f}"
        print(f"done: {result.step} steps in {result.seconds:.1f} s{acc}; checkpoint {result.checkpoint}")
        return EXIT_OK

    return _guard("distbp-train", body)


def gradcheck_main(argv: Sequence[str] | None = None) -> int:
    """distbp-gradcheck: check the configured model's gradients against central differences
    in float64 and print the worst relative error per parameter."""
    parser = argparse.ArgumentParser(prog="distbp-gradcheck", description=gradcheck_main.__doc__)
    _config_args(parser)
    parser.add_argument("--samples", type=int, default=8, help="batch size of the check (default 8)")
    parser.add_argument("--max-elements", type=int, default=200,
                        help="elements checked per parameter, chosen at random (default 200; 0 = all)")
    parser.add_argument("--tolerance", type=float, default=1e-4,
                        help="largest relative error that passes (default 1e-4)")
    args = parser.parse_args(argv)
    if args.samples < 1 or args.max_elements < 0:
        parser.error("--samples must be at least 1 and --max-elements at least 0")

    def body() -> int:
        from .train import load_config
        from .train.check import gradcheck_config
        from .train.config import check_memory

        cfg = load_config(args.config, args.overrides)
        check_memory(cfg)
        results = gradcheck_config(cfg, args.samples, args.max_elements or None)
        width = max(len(r.name) for r in results)
        print(f"{'parameter':<{width}}  {'shape':>14}  {'checked':>7}  {'worst rel. error':>16}  result")
        failed = 0
        for r in results:
            ok = r.worst_rel_error <= args.tolerance
            failed += not ok
            print(f"{r.name:<{width}}  {str(r.shape):>14}  {r.checked:>7}  {r.worst_rel_error:>16.3e}  "
                  + ("ok" if ok else f"FAIL at {r.worst_index}: analytic {r.analytic:.6g} numeric {r.numeric:.6g}"))
        if failed:
            return _fail("distbp-gradcheck", f"{failed} parameter(s) above tolerance {args.tolerance}", EXIT_RUN_ERROR)
        print(f"all {len(results)} parameters within {args.tolerance} (float64, central differences)")
        return EXIT_OK

    return _guard("distbp-gradcheck", body)


def plot_main(argv: Sequence[str] | None = None) -> int:
    """distbp-plot: write a PNG of a run's training loss and validation accuracy."""
    parser = argparse.ArgumentParser(prog="distbp-plot", description=plot_main.__doc__)
    parser.add_argument("run_dir", metavar="RUN_DIR")
    parser.add_argument("--out", metavar="FILE.png", help="default RUN_DIR/metrics.png")
    args = parser.parse_args(argv)

    def body() -> int:
        from .train.plot import plot_run

        print(plot_run(args.run_dir, args.out))
        return EXIT_OK

    return _guard("distbp-plot", body)


def keys_main(argv: Sequence[str] | None = None) -> int:
    """distbp-keys: create CURVE key pairs for a parameter-server job (comm.curve: DIR)."""
    parser = argparse.ArgumentParser(prog="distbp-keys", description=keys_main.__doc__)
    parser.add_argument("dir", metavar="DIR")
    parser.add_argument("--workers", type=int, metavar="N", help="one key per worker, in DIR/worker-0 ... "
                        "DIR/worker-(N-1); a key admits one worker at a time (default: one key, for one worker)")
    args = parser.parse_args(argv)
    if args.workers is not None and args.workers < 1:
        parser.error("--workers must be at least 1")

    def body() -> int:
        from .train import make_keys

        for path in make_keys(args.dir, args.workers):
            print(path)
        if args.workers is None:
            print(f"server: comm.curve={args.dir} with server.key_secret and clients/; "
                  f"worker: comm.curve=DIR with server.key and client.key_secret (one worker: a key admits one "
                  f"worker at a time; for more, distbp-keys NEWDIR --workers N)")
        else:
            print(f"server: comm.curve={args.dir} with server.key_secret and clients/; worker I: "
                  f"comm.curve={args.dir}/worker-I, its own directory (give each worker only its own)")
        return EXIT_OK

    return _guard("distbp-keys", body)


def predict_main(argv: Sequence[str] | None = None) -> int:
    """distbp-predict: predictions of a trained model for every row (or token) of INPUT, in
    the format it trained on (CSV, npz, IDX, CoNLL), read and written a chunk at a time."""
    parser = argparse.ArgumentParser(prog="distbp-predict", description=predict_main.__doc__)
    parser.add_argument("model", metavar="RUN_OR_CHECKPOINT", help="a run directory, a checkpoint or a .safetensors")
    parser.add_argument("input", metavar="INPUT")
    parser.add_argument("-o", "--output", metavar="OUTPUT", help="default: INPUT's name with .pred before its suffix")
    parser.add_argument("--proba", action="store_true", help="also write one probability column per class")
    parser.add_argument("--chunk", type=int, default=4096, help="rows per chunk (default 4096)")
    args = parser.parse_args(argv)
    if args.chunk < 1:
        parser.error("--chunk must be at least 1")

    def body() -> int:
        from pathlib import Path

        from .train.inference import predict_file
        from .train.predictor import load

        out = predict_file(load(args.model), Path(args.input), Path(args.output) if args.output else None,
                           args.proba, args.chunk, progress=sys.stderr.isatty())
        print(out)
        return EXIT_OK

    return _guard("distbp-predict", body)


def export_main(argv: Sequence[str] | None = None) -> int:
    """distbp-export: a trained model as named tensors in a .safetensors file, with its config,
    class names, vocabulary and preprocessing as metadata; --layout torch names and shapes
    them as torch.nn does (Linear weights (out, in))."""
    parser = argparse.ArgumentParser(prog="distbp-export", description=export_main.__doc__)
    parser.add_argument("model", metavar="RUN_OR_CHECKPOINT")
    parser.add_argument("-o", "--output", metavar="FILE.safetensors", required=True)
    parser.add_argument("--layout", choices=("distbp", "torch"), default="distbp")
    args = parser.parse_args(argv)

    def body() -> int:
        from pathlib import Path

        from .train.export import export
        from .train.predictor import checkpoint_of

        print(export(checkpoint_of(Path(args.model)), Path(args.output), args.layout))
        return EXIT_OK

    return _guard("distbp-export", body)


def eval_main(argv: Sequence[str] | None = None) -> int:
    """distbp-eval: the metrics of a trained model on labelled data: accuracy, per-class
    precision/recall/F1 and the confusion matrix; entity-level F1 for CoNLL (conlleval's
    rules); MSE, MAE and R² for regression."""
    parser = argparse.ArgumentParser(prog="distbp-eval", description=eval_main.__doc__)
    parser.add_argument("model", metavar="RUN_OR_CHECKPOINT")
    parser.add_argument("--data", metavar="PATH", required=True, help="labelled data in the format it trained on")
    parser.add_argument("--labels", metavar="PATH", help="the label file of IDX images")
    parser.add_argument("--json", metavar="OUT", help="also write the metrics as JSON")
    parser.add_argument("--plot", metavar="PNG", nargs="?", const="", help="also write the confusion matrix as a PNG "
                        "(default: beside --json, or confusion.png)")
    parser.add_argument("--chunk", type=int, default=4096, help="rows per chunk (default 4096)")
    args = parser.parse_args(argv)

    def body() -> int:
        from pathlib import Path

        from .train.config import ConfigError
        from .train.inference import evaluate_file, format_report, plot_confusion, write_json
        from .train.predictor import load

        report = evaluate_file(load(args.model), Path(args.data), args.chunk,
                               Path(args.labels) if args.labels else None, progress=sys.stderr.isatty())
        print(format_report(report))
        if args.json:
            print(f"metrics: {write_json(report, Path(args.json))}")
        if args.plot is not None:
            if report["task"] == "regression":
                raise ConfigError("--plot: a regression has no confusion matrix")
            png = Path(args.plot) if args.plot else (Path(args.json).with_suffix(".png") if args.json
                                                     else Path("confusion.png"))
            print(f"confusion matrix: {plot_confusion(report, png)}")
        return EXIT_OK

    return _guard("distbp-eval", body)


if __name__ == "__main__":
    sys.exit(train_main())
