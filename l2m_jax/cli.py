"""The `l2m` command line (also `python -m l2m_jax`).

Each subcommand lives in its own module under `l2m_jax.experiments`, which defines
`add_arguments(parser)` and `run(args) -> int`. Only the chosen module is imported, so
`l2m --help` is fast and one subcommand's heavy imports never slow another.

Every command runs under `jax.distributed` when the environment describes a multi-process
job (`l2m_jax.distributed.initialize`; docs/scaling.md shows the launch lines): the same
command is started once per host, process 0 prints and writes the results, and a process
that loses the others stops with an error instead of waiting.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import sys

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "gaussian-mi": ("gaussian_mi", "exact I_BP and I_TP of the hierarchical Gaussian families"),
    "two-point": ("two_point", "two-point MI I_TP(d) from token counts, with a power-law fit"),
    "bipartite": ("bipartite", "bipartite MI I_BP(l) estimated with an autoregressive model"),
    "models": ("models", "model presets: parameters, history-state size, L2M condition"),
    "train": ("train", "train a model on Gaussian or token data (exact KL / NLL)"),
    "sweep": ("sweep", "the L2M experiment: models x sequence lengths on Gaussian data"),
    "report": ("report", "the main job: every measurement, a folder of JSON, plots, summary"),
}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="l2m",
        description="l2m_jax: mutual-information scaling and the memory models need to carry it.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, help_) in COMMANDS.items():
        sub.add_parser(name, help=help_, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in COMMANDS:
        parser = _parser()
        if argv and not argv[0].startswith("-"):
            parser.error(f"unknown command {argv[0]!r}; choose one of: {', '.join(COMMANDS)}")
        parser.parse_args(argv)  # prints help / handles --help
        parser.print_help()
        return 2
    name, rest = argv[0], argv[1:]
    module_name, help_ = COMMANDS[name]
    module = importlib.import_module(f"l2m_jax.experiments.{module_name}")
    parser = argparse.ArgumentParser(
        prog=f"l2m {name}",
        description=(module.__doc__ or help_).strip(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    module.add_arguments(parser)
    args = parser.parse_args(rest)
    where = ""
    try:
        if name != "report":  # the report runs every part as its own command
            from l2m_jax import distributed

            if distributed.initialize():
                import jax

                where = f" (process {jax.process_index()} of {jax.process_count()})"
        with _results_on_primary(bool(where)):
            return int(module.run(args) or 0)
    except ValueError as err:  # bad input: one clear line, no traceback
        print(f"l2m {name}: error{where}: {err}", file=sys.stderr)
        code = 2
    except RuntimeError as err:
        import jax

        if not where or not isinstance(err, jax.errors.JaxRuntimeError):
            raise
        text = str(err).strip()
        print(
            f"l2m {name}: error{where}: a computation across processes failed: "
            f"{text.splitlines()[0][:500] if text else repr(err)}\n"
            f"l2m {name}: if another process died, start all of them again (training: with "
            "--resume; the run directory is intact)",
            file=sys.stderr,
        )
        code = 1
    if where:
        # Leave at once: JAX's shutdown would wait for the other processes (a lost one until
        # its heartbeat times out); they stop at their next collective.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


@contextlib.contextmanager
def _results_on_primary(multi_process: bool):
    """In a multi-process run only process 0 prints results (the others compute the same)."""
    import jax

    if not multi_process or jax.process_index() == 0:
        yield
        return
    with open(os.devnull, "w") as null, contextlib.redirect_stdout(null):
        yield


if __name__ == "__main__":
    raise SystemExit(main())
