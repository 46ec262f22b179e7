"""The README's results, generated from study folders: every block between the two lines

    <!-- results:<name> begin -->
    <!-- results:<name> end -->

(each marker a line of its own; `<name>`: letters, digits, '_' and '.') is rewritten from the
study folder given for `<name>` (`python -m harness.report --readme README.md --study
<name>=<study.output_dir>`), and nothing else in the file changes. A block holds one line
saying what was measured where and when (the study's experiment and budget, its recorded wall
time, the cores of the machine it was started on, SYNTHETIC when the data is), the comparison and
like-for-like tables as `reports/comparison.py` formats them from the study's `report/*.csv`, and
one small PNG per figure kind of the study report (`report/figures/`, `report/models/`), copied to
`docs/figures/<name>-<kind>.png`, downscaled and palette-quantised so that every PNG there stays
under a total budget. `--explainer-table <name>=<dir>` fills a block with the explainer tables of
the study's final models instead (`report/models/<method>/explainers.csv`, as `harness.report`
wrote them, e.g. with `--explainers` naming every explainer).

Nothing is written unless every block, every study and every table is there (`ReadmeError`
otherwise, which the CLI turns into exit status 2).
"""

from __future__ import annotations

import io
import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from PIL import Image

from reports.comparison import comparison_markdown, faithfulness_markdown
from reports.studies import STUDIES_NOTE, studies_table
from reports.study_folder import StudyFolder, StudyFolderError, load_study_folder

FIGURE_BUDGET_BYTES = 300_000  # every PNG in the figures folder together
WIDTHS = (640, 560, 480, 400, 340)  # tried in turn until the budget holds
# kind -> what it shows (the README's caption); the file each kind is taken from: _figure_sources
FIGURE_KINDS = {
    "knobs": "`report/figures/knobs_<method>.png`: validation accuracy of every search trial "
    "against each knob it searched, one panel per knob over the knob's whole range; hollow: "
    "stopped early by ASHA (at its last value), red crosses: failed; star: the selected trial",
    "history": "`history`: each method's search by trial order and by time, with the best so far",
    "importance": "`importance`: fANOVA and PED-ANOVA importance of each knob (Optuna); fewer than "
    "3 complete trials give a sentence, not a bar",
    "final_accuracy": "`final_accuracy`: each final seed's test accuracy, the mean and its "
    "interval (the comparison table's, else a 95% Student-t interval over seeds)",
    "occlusion": "`occlusion`: MoRF and LeRF accuracy of each method's final model (its lowest "
    "seed), like for like: the same explainers (`evaluation.explainers`, `random` the floor, "
    "default parameters) and the plain forward for every method; all panels on the same axes",
    "gallery": "`models/<method>/galleries/<explainer>.png`: the same first test clips for every "
    "method and explainer (true -> predicted class), side by side on the report page; GIFs "
    "beside them",
    "trends": "`models/<method>/trends/<explainer>.png` and `trends.md`: per class, the mean "
    "normalised map of each frame and its share per frame (and per region in the table), the "
    "001 seed's per-class analysis",
}
BEGIN, END = "<!-- results:{} begin -->", "<!-- results:{} end -->"
NAME = re.compile(r"[A-Za-z0-9_.]+")  # a block's name (no '-': the figures are <name>-<kind>.png)
# a marker is a line of its own (a marker quoted in the text is not one)
MARKER = re.compile(rf"^<!-- results:(?P<name>{NAME.pattern}) (?P<end>begin|end) -->$", re.M)


class ReadmeError(ValueError):
    """A README block or a study folder the results cannot be generated from."""


@dataclass
class Block:
    name: str
    study: StudyFolder
    explainers: bool = False  # the final models' explainer tables instead of the comparison
    figures: bool = True
    others: list[StudyFolder] = field(default_factory=list)  # studies side by side with `study`


def blocks_of(text: str, path: Path | str = "README") -> dict[str, tuple[int, int]]:
    """Each block's name -> the (start, end) offsets of its content, between its two markers.
    ReadmeError for a marker without its partner, nested or repeated blocks."""
    blocks, open_name, start = {}, None, 0
    for match in MARKER.finditer(text):
        name, is_end = match["name"], match["end"] == "end"
        line = text.count("\n", 0, match.start()) + 1
        if not is_end and open_name is None and name not in blocks:
            open_name, start = name, match.end()
        elif is_end and name == open_name:
            blocks[name], open_name = (start, match.start()), None
        else:
            raise ReadmeError(f"{path}:{line}: unexpected {match[0]!r} (each block is "
                              f"{BEGIN.format('<name>')} ... {END.format('<name>')}, once, "
                              "not nested)")  # fmt: skip
    if open_name is not None:
        raise ReadmeError(f"{path}: {BEGIN.format(open_name)} has no {END.format(open_name)}")
    return blocks


def _note(study: StudyFolder, key: str) -> str | None:
    """A `- key: value` note line of the sweep's comparison.md."""
    path = study.folder / "report" / "comparison.md"
    text = path.read_text() if path.is_file() else ""
    match = re.search(rf"^- {re.escape(key)}: (.+)$", text, re.MULTILINE)
    return match[1].strip() if match else None


def measured_line(study: StudyFolder, where: str | None = None) -> str:
    """The one line naming what was measured, where and when, from the study's own records
    (its config, the machine study_state.json recorded, the sweep's wall-time and Ray notes)."""
    cfg, machine = study.config, study.state.machine or {}
    models = cfg["study"].get("models")
    what = (f"`python -m harness.sweep {cfg.get('experiment', '?')}`"
            + (f" with `study.models=[{','.join(models)}]`" if models else "")
            + f", {cfg['sweep']['num_samples']} trials per method, {cfg['train']['epochs']} "
            f"epochs per trial, {cfg['final']['seeds']} final seed(s)")  # fmt: skip
    wall = _note(study, "wall time")
    if wall is None and study.state.summary:
        wall = f"{study.state.summary['params']['wall_seconds'] / 60:.1f} min"
    if machine:
        host = f"a {machine['cpus']}-core {machine['system']} {machine['arch']} machine"
    else:
        host = "a machine the study did not record"
    ray = _note(study, "Ray")
    data = ("**SYNTHETIC data** (the built-in generator, not a real dataset)" if study.synthetic
            else f"data {study.state.tags.get('data', '?')}")  # fmt: skip
    return (f"*Measured:* {what}; {data}; wall time {wall or 'not recorded'} on {host}"
            + (f", {where}" if where else "") + (f"; Ray: {ray}" if ray else "")
            + (f"; started {machine['started']}" if machine.get("started") else "") + ".")


def _comparison_tables(study: StudyFolder) -> list[str]:
    table = study.tables.get("comparison")
    if table is None or not len(table):
        raise ReadmeError(f"{study.folder}: no report/comparison.csv (the study's final "
                          "stage has not finished: run the study's command again to resume "
                          "it)")  # fmt: skip
    parts = [comparison_markdown(table)]
    faithfulness = study.tables.get("faithfulness")
    if faithfulness is not None and len(faithfulness):
        parts += ["Like-for-like faithfulness (every arm's final models, the same explainers, "
                  "the plain forward; `random` is the floor):", faithfulness_markdown(faithfulness)]
    return parts


def _side_by_side(block: Block, where: str | None) -> str:
    """A side-by-side block: each study's measured line, one table, what it covers."""
    studies = [block.study, *block.others]
    try:
        table = studies_table(studies)
    except ValueError as error:
        raise ReadmeError(f"--studies {block.name}=...: {error}") from None
    lines = [f"- `{s.folder.name}`: {measured_line(s, where)}" for s in studies]
    return "\n\n".join(["\n".join(lines),
                         table.to_markdown(index=False, disable_numparse=True), STUDIES_NOTE])


def _explainer_tables(study: StudyFolder) -> list[str]:
    parts = []
    for method in study.methods:
        path = study.folder / "report" / "models" / method / "explainers.csv"
        if path.is_file():
            table = pd.read_csv(path).drop(columns=["synthetic"], errors="ignore")
            table = table.astype(object).where(table.notna(), None)  # shown as —
            parts += [f"`{method}`'s final model (`{path.relative_to(study.folder)}`):",
                      table.to_markdown(index=False, floatfmt=".3f", missingval="—")]  # fmt: skip
    if not parts:
        raise ReadmeError(f"{study.folder}: no report/models/<method>/explainers.csv (the "
                          "final models have not been explained: python -m harness.report "
                          f"{study.folder})")  # fmt: skip
    return parts


def _figure_sources(study: StudyFolder) -> dict[str, tuple[Path, str]]:
    """Each figure kind the study has -> the report's PNG of it and which one it is, where a
    kind is per method (the last method's, ET's by default) or per explainer (the first of the
    explainers that model was put through, `random` last)."""
    report = study.folder / "report"
    sources = {}
    methods = list(reversed(study.methods))
    for kind in FIGURE_KINDS:
        if kind == "knobs":
            paths = [(report / "figures" / f"knobs_{m}.png", m) for m in methods]
        elif kind in ("gallery", "trends"):
            sub = "galleries" if kind == "gallery" else "trends"
            paths = [(report / "models" / m / sub / f"{e}.png", f"{m}, {e}") for m in methods
                     for e in _explained_by(report / "models" / m)]  # fmt: skip
        else:
            paths = [(report / "figures" / f"{kind}.png", "")]
        found = next((p for p in paths if p[0].is_file()), None)
        if found is not None:
            sources[kind] = found
    return sources


def _explained_by(folder: Path) -> list[str]:
    """The explainers a final model was put through, `random` (the floor) last."""
    source = folder / "source.json"
    names = json.loads(source.read_text()).get("explainers", []) if source.is_file() else []
    return sorted(names, key=lambda n: n == "random")


def _small_png(path: Path, width: int) -> bytes:
    image = Image.open(path).convert("RGB")
    if image.width > width:
        image = image.resize((width, round(image.height * width / image.width)), Image.LANCZOS)
    buffer = io.BytesIO()
    image.quantize(256).save(buffer, "PNG", optimize=True)
    return buffer.getvalue()


def _figures(sources: Mapping[str, Mapping[str, Path]], folder: Path, budget: int) -> None:
    """Write every block's figures as `<folder>/<block>-<kind>.png` at the widest of WIDTHS that
    keeps every PNG of `folder` (other blocks' included) under `budget` bytes; a block's old
    figures of kinds it no longer has are removed."""
    others = sum(p.stat().st_size for p in folder.glob("*.png")
                 if p.name.split("-")[0] not in sources) if folder.is_dir() else 0  # fmt: skip
    for width in WIDTHS:
        images = {folder / f"{b}-{k}.png": _small_png(p, width)
                  for b, kinds in sources.items() for k, p in kinds.items()}  # fmt: skip
        if others + sum(map(len, images.values())) <= budget:
            break
    else:
        raise ReadmeError(f"{folder}: the figures need {others + sum(map(len, images.values()))} "
                          f"bytes even at {WIDTHS[-1]} px, over the budget of {budget}; pass "
                          "--figures for fewer blocks")  # fmt: skip
    folder.mkdir(parents=True, exist_ok=True)
    for block in sources:
        for old in folder.glob(f"{block}-*.png"):
            if old not in images:
                old.unlink()
    for path, data in images.items():
        path.write_bytes(data)


def _figure_table(block: str, kinds: Mapping[str, str], folder: Path, readme: Path) -> str:
    """kinds: kind -> which one (a method, an explainer) or ''."""
    link = Path(os.path.relpath(folder, readme.parent)).as_posix()
    rows = [f"| ![{k}]({link}/{block}-{k}.png) | {FIGURE_KINDS[k]}" + (f" (here: {which})"
            if which else "") + " |" for k, which in kinds.items()]  # fmt: skip
    return "\n".join(["| figure | what it shows |", "|---|---|", *rows])


def load_blocks(specs: Sequence[tuple[str, str, bool]], figures: set[str] | None,
                side_by_side: Sequence[tuple[str, Sequence[str]]] = ()) -> list[Block]:  # fmt: skip
    """(name, study folder, explainer table?) -> Blocks, and (name, study folders) -> a block of
    those studies side by side (reports/studies.py); ReadmeError for a folder that is not a
    finished study. `figures`: the blocks that get figures (None: every comparison block)."""
    blocks = []
    for name, folder, explainers in specs:
        if not NAME.fullmatch(name):
            raise ReadmeError(f"--study {name}={folder}: a block name is letters, digits, '_' "
                              "and '.'")  # fmt: skip
        if name in [b.name for b in blocks]:
            raise ReadmeError(f"--study {name}=...: block {name!r} given twice")
        try:
            study = load_study_folder(folder)
        except StudyFolderError as error:
            raise ReadmeError(f"--study {name}={folder}: {error}") from None
        wanted = not explainers if figures is None else name in figures
        blocks.append(Block(name, study, explainers, wanted))
    for name, folders in side_by_side:
        if not NAME.fullmatch(name) or name in [b.name for b in blocks]:
            raise ReadmeError(f"--studies {name}=...: a block name is letters, digits, '_' and "
                              "'.', each block given once")  # fmt: skip
        if len(folders) < 2:
            raise ReadmeError(f"--studies {name}=...: expected two or more study folders, "
                              "comma-separated")  # fmt: skip
        studies = []
        for folder in folders:
            try:
                studies.append(load_study_folder(folder))
            except StudyFolderError as error:
                raise ReadmeError(f"--studies {name}=...: {folder}: {error}") from None
        blocks.append(Block(name, studies[0], figures=False, others=studies[1:]))
    unknown = sorted((figures or set()) - {b.name for b in blocks})
    if unknown:
        raise ReadmeError(f"--figures {','.join(unknown)}: not a block given by --study or "
                          f"--explainer-table ({', '.join(b.name for b in blocks)})")  # fmt: skip
    return blocks


def update_readme(readme: Path | str, blocks: Sequence[Block], *, where: str | None = None,
                  figures_dir: Path | str | None = None,
                  budget: int = FIGURE_BUDGET_BYTES) -> list[str]:  # fmt: skip
    """Rewrite `readme`'s blocks from their studies (see the module docstring); the figures go to
    `figures_dir` (default: `docs/figures` beside the README). Returns the names rewritten."""
    readme = Path(readme)
    text = readme.read_text()
    spans = blocks_of(text, readme)
    missing = [b.name for b in blocks if b.name not in spans]
    if missing:
        raise ReadmeError(
            f"{readme}: no block {', '.join(BEGIN.format(n) for n in missing)} (its blocks: "
            f"{', '.join(spans) or 'none'}); add the begin and end markers where the results go"
        )
    folder = Path(figures_dir) if figures_dir else readme.parent / "docs" / "figures"
    contents, sources = {}, {}
    for block in blocks:
        parts = [measured_line(block.study, where)]
        if block.others:
            parts = [_side_by_side(block, where)]
        else:
            parts += _explainer_tables(block.study) if block.explainers else _comparison_tables(
                block.study)  # fmt: skip
        found = _figure_sources(block.study) if block.figures else {}
        if found:
            sources[block.name] = {kind: path for kind, (path, _) in found.items()}
            which = {kind: note for kind, (_, note) in found.items()}
            parts.append(_figure_table(block.name, which, folder, readme))
        names = ", ".join(f"{s.folder.name}/" for s in [block.study, *block.others])
        note = ("<!-- generated by `python -m harness.report --readme` from "
                f"{names}: edit the study, not this block -->")  # fmt: skip
        contents[block.name] = "\n" + note + "\n" + "\n\n".join(parts) + "\n"
    if sources:
        _figures(sources, folder, budget)
    for name in sorted(contents, key=lambda n: -spans[n][0]):  # last first: offsets stay valid
        start, end = spans[name]
        text = text[:start] + contents[name] + text[end:]
    partial = readme.with_name(f".{readme.name}.partial")
    partial.write_text(text)
    os.replace(partial, readme)
    return [b.name for b in blocks]
