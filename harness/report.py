"""Rebuild a study's report from its output folder, without running a trial.

    python -m harness.report <study.output_dir> [--no-explain] [--explainers a,b,...]

Writes `<study.output_dir>/report/index.html` and the figures and tables beside it (see
reports/study_report.py); the sweep writes the same at the end of a study. Works on a finished,
resumed or interrupted study (the page says which stages are missing). Exit status 2, with a
message, for a folder that is not a study or a study none of whose stages has finished.
"""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m harness.report",
        description="Rebuild a study's report (report/index.html, figures, knob table, "
        "hyperparameter importance, explanations of the final models) from its output folder.",
        epilog="Example: python -m harness.report outputs/birds_video",
    )
    parser.add_argument("study_dir", help="the study's study.output_dir")
    parser.add_argument(
        "--no-explain", action="store_true",
        help="do not put the final models through the explainers (reuse report/models/)",
    )  # fmt: skip
    parser.add_argument(
        "--explainers", default=None,
        help="comma-separated explainers for the final models (default: the methods' own "
        "explainers and random)",
    )  # fmt: skip
    args = parser.parse_args(argv)
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
