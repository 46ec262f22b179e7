"""Rebuild a study's report from its output folder, without running a trial; or write the
README's results blocks from study folders.

    python -m harness.report <study.output_dir> [--no-explain] [--explainers a,b,...]
    python -m harness.report --readme README.md --study <name>=<study.output_dir> [...]
                             [--studies <name>=<dir>,<dir>,...]

The first writes `<study.output_dir>/report/index.html` and the figures and tables beside it (see
reports/study_report.py); the sweep writes the same at the end of a study. Works on a finished,
resumed or interrupted study (the page says which stages are missing). The second rewrites the
blocks `<!-- results:<name> begin -->` ... `<!-- results:<name> end -->` of the README from the
studies' own files (reports/readme.py), and copies their figures to docs/figures/. Exit status 2,
with a message, for a folder that is not a study, a study none of whose stages has finished, or
(--readme) a block the README lacks or a study without its final stage.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _pair(text: str) -> tuple[str, str]:
    name, sep, folder = text.partition("=")
    if not sep or not name or not folder:
        raise argparse.ArgumentTypeError(f"{text!r}: expected <name>=<study.output_dir>")
    return name, folder


def _readme(args: argparse.Namespace) -> int:
    from reports.readme import ReadmeError, load_blocks, update_readme

    specs = [(n, f, False) for n, f in args.study] + [(n, f, True) for n, f in args.explainer_table]
    side_by_side = [(n, [f for f in folders.split(",") if f]) for n, folders in args.studies]
    if not specs and not side_by_side:
        print("error: --readme needs at least one --study, --explainer-table or --studies",
              file=sys.stderr)  # fmt: skip
        return 2
    figures = None if args.figures is None else {n for n in args.figures.split(",") if n}
    try:
        blocks = load_blocks(specs, figures, side_by_side)
        names = update_readme(args.readme, blocks, where=args.where)
    except (ReadmeError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"{args.readme}: results blocks {', '.join(names)} rewritten")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m harness.report",
        description="Rebuild a study's report (report/index.html, figures, knob table, "
        "hyperparameter importance, explanations of the final models) from its output folder; "
        "or, with --readme, write the README's results blocks from study folders.",
        epilog="Examples: python -m harness.report outputs/birds_video;  python -m harness.report "
        "--readme README.md --study birds_video=outputs/birds_video",
    )
    parser.add_argument("study_dir", nargs="?", help="the study's study.output_dir")
    parser.add_argument(
        "--no-explain", action="store_true",
        help="do not put the final models through the explainers (reuse report/models/)",
    )  # fmt: skip
    parser.add_argument(
        "--explainers", default=None,
        help="comma-separated explainers for the final models, tested like for like (default: "
        "evaluation.explainers, the like-for-like table's)",
    )  # fmt: skip
    readme = parser.add_argument_group("README results (--readme)")
    readme.add_argument("--readme", type=Path, help="the README whose results blocks to rewrite")
    readme.add_argument(
        "--study", type=_pair, action="append", default=[], metavar="NAME=DIR",
        help="block <!-- results:NAME begin/end --> gets DIR's comparison tables and figures",
    )  # fmt: skip
    readme.add_argument(
        "--explainer-table", type=_pair, action="append", default=[], metavar="NAME=DIR",
        help="block NAME gets the explainer tables of DIR's final models "
        "(report/models/<method>/explainers.csv)",
    )  # fmt: skip
    readme.add_argument(
        "--studies", type=_pair, action="append", default=[], metavar="NAME=DIR,DIR,...",
        help="block NAME gets the studies side by side: every arm of each, the settings they "
        "differ in, the paired difference to the first study (reports/studies.py)",
    )  # fmt: skip
    readme.add_argument(
        "--figures", default=None, metavar="NAMES",
        help="comma-separated blocks that get figures (default: every --study block)",
    )  # fmt: skip
    readme.add_argument(
        "--where", default=None,
        help="a few words added to the measured line, e.g. 'shared with other jobs'",
    )  # fmt: skip
    args = parser.parse_args(argv)
    if args.readme is not None:
        if args.study_dir:
            parser.error("--readme takes its studies as --study NAME=DIR, not a positional folder")
        return _readme(args)
    if not args.study_dir:
        parser.error("the study's study.output_dir is required (or --readme)")
    from harness.explain import EXPLAINERS
    from reports.study_folder import StudyFolderError
    from reports.study_report import build_report

    explainers = None
    if args.explainers:
        explainers = [n.strip() for n in args.explainers.split(",") if n.strip()]
        unknown = [n for n in explainers if n not in EXPLAINERS]
        if unknown or not explainers:
            print(f"error: --explainers: unknown explainer {', '.join(map(repr, unknown))}; "
                  f"expected a comma-separated list of: {', '.join(EXPLAINERS)}",
                  file=sys.stderr)  # fmt: skip
            return 2
    try:
        report = build_report(args.study_dir, explain=not args.no_explain, explainers=explainers)
    except StudyFolderError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if report.missing_stages:
        print(f"note: partial study; stages not finished: {', '.join(report.missing_stages)}")
    print(f"report: {report.index}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
