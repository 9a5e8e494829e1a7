"""Build an impumae cohort store: ``python experiments/build_cohort.py SUBCOMMAND --out PATH_OR_URL ...``.

Each subcommand is a builder module exposing ``HELP``, ``add_arguments(parser)`` and
``build(args, out, overwrite) -> Cohort``; this script only adds the common options, calls ``build``
and prints ``impumae.data.store.summarize(cohort)``. A builder module that cannot be imported does
not break the other subcommands: using it prints why. Errors print one line and exit with status 2
(``--traceback`` shows the full traceback).

Examples::

    python experiments/build_cohort.py synthetic --out cohorts/synthetic.zarr --patients 600
    python experiments/build_cohort.py pancancer --shared ../shared/data --out cohorts/pancancer.zarr
    python experiments/build_cohort.py tables --out cohorts/mine.zarr --labels labels.csv \\
        --modality rna=rna.parquet --modality proteins=rppa.tsv --patch proteins=8
"""
from __future__ import annotations

import argparse
import importlib
import sys
import warnings

BUILDERS = {
    "synthetic": "impumae.data.synthetic",
    "tcga-gbmlgg-open": "impumae.data.tcga_open",
    "tables": "impumae.data.tables",
    "raw": "impumae.data.raw",
    "pancancer": "impumae.data.pancancer",
}


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    common = parser.add_argument_group("common options")
    common.add_argument("--out", required=True, metavar="PATH_OR_URL",
                        help="where to write the cohort store: a local path or an fsspec URL (file://, memory://, s3://...)")
    common.add_argument("--overwrite", action="store_true",
                        help="replace an existing store at --out (only once the new one is complete)")
    common.add_argument("--shard-patients", type=int, default=64, metavar="N",
                        help="patients per zarr shard (default: %(default)s)")
    common.add_argument("--split-seed", type=int, default=0, metavar="SEED",
                        help="seed of the stratified holdout/fold split (default: %(default)s)")
    common.add_argument("--test-frac", type=float, default=0.2, metavar="FRAC",
                        help="fraction of patients in the holdout test split, unless the data fix it (default: %(default)s)")
    common.add_argument("--folds", type=int, default=5, metavar="K",
                        help="cross-validation folds of the non-holdout patients, unless the data fix them (default: %(default)s)")
    common.add_argument("--quiet", action="store_true", help="no progress bars")
    common.add_argument("--traceback", action="store_true", help="on error, show the full traceback")


def make_parser() -> tuple[argparse.ArgumentParser, dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="Run 'build_cohort.py SUBCOMMAND --help' for a subcommand's options.")
    subparsers = parser.add_subparsers(dest="subcommand", metavar="SUBCOMMAND", required=True)
    modules = {}
    for name, module_name in BUILDERS.items():
        try:
            module = importlib.import_module(module_name)
            help_text = module.HELP
        except Exception as error:  # a builder that cannot load must not break the others
            module, help_text = error, f"(unavailable: {module_name} cannot be imported: {error})"
        sub = subparsers.add_parser(name, help=help_text, description=help_text)
        if not isinstance(module, Exception):
            module.add_arguments(sub)
        add_common_arguments(sub)
        modules[name] = module
    return parser, modules


def main(argv: list[str] | None = None) -> int:
    parser, modules = make_parser()
    args = parser.parse_args(argv)
    module = modules[args.subcommand]
    warnings.showwarning = lambda message, category, *rest: print(f"warning: {message}", file=sys.stderr)
    try:
        if isinstance(module, Exception):
            raise RuntimeError(f"subcommand {args.subcommand!r} is unavailable: {BUILDERS[args.subcommand]} "
                               f"cannot be imported ({type(module).__name__}: {module})")
        from impumae.data.store import store_location, summarize

        store_location(args.out)  # an s3:// URL without s3fs fails now, naming the extra, before any work
        cohort = module.build(args, args.out, args.overwrite)
        print(summarize(cohort))
    except KeyboardInterrupt:
        print("error: interrupted; nothing was written at --out", file=sys.stderr)
        return 2
    except Exception as error:
        if args.traceback:
            raise
        message = " ".join(str(error).split())  # one line
        kind = "" if isinstance(error, ValueError) else f"{type(error).__name__}: "
        print(f"error: {kind}{message}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
