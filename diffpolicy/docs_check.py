"""Check that every figure in the README's results tables is in a committed report.

A results table is announced by a marker comment on the line(s) before it::

    <!-- figures: docs/results/noprop_bench.json docs/results/noprop_bench.md -->
    | row | test acc. % | ... |

naming the report files or folders (under ``docs/results/``, paths from the
repository root) that hold its numbers.  Every figure in the table's body rows
(decimals such as ``0.938``, percentages such as ``63.8 %``, ratios such as
``1.46x``; plain integers are labels and counts and are not checked) must
appear in one of those reports (``.json`` or ``.md`` files, searched as text):

- the README may round a report value to the digits it shows
  (``0.9375965`` in a report backs ``0.938``);
- a percentage matches a fraction (``0.640`` backs ``64.0 %``) or the same
  number (``92.45`` backs ``92.45 %``);
- a figure in milliseconds (``23.3 ms``) also matches seconds (``0.0233``).

``<!-- figures: outside, ... -->`` marks a table whose numbers come from
outside sources (papers, repositories, named in the table); it is skipped.
A marker followed by no table (a placeholder line such as ``@@UNET_TABLE@@``)
checks nothing.  A table that holds figures but has no marker is an error,
unless ``--marked-only`` is given (for docs pages with descriptive tables).

    python -m diffpolicy.docs_check                 # README.md of the repository
    python -m diffpolicy.docs_check README.md docs/speed.md --marked-only

Exit status 0 when every figure was found, 1 otherwise (each missing figure is
printed with its file, table and the reports searched), 2 on bad arguments.
"""
from __future__ import annotations

import argparse
import re
import subprocess
import sys
from dataclasses import dataclass, field
from decimal import ROUND_HALF_EVEN, ROUND_HALF_UP, Decimal, InvalidOperation
from pathlib import Path

MARKER_RE = re.compile(r"<!--\s*figures:\s*(.*?)\s*-->")
REPORTS_DIR = "docs/results"

# A figure in a README cell: optional sign (only where it cannot be a range dash),
# digits with optional thousands commas, optional fraction, then an optional unit.
_FIGURE_RE = re.compile(
    r"(?<![\w.,/])"                       # not inside a word, a path or a longer number
    r"(?P<sign>(?<![\d])[+\-\u2212])?"
    r"(?P<int>\d{1,3}(?:,\d{3})+|\d+)"
    r"(?P<frac>\.\d+)?"
    r"(?!\d|\.\d|[eE][+\-]?\d)"          # not a version (2.14.1) or 1e-3
    r"(?:(?P<pct>\s?%)|(?P<ratio>[x\u00d7])(?![A-Za-z\d])|(?P<ms>\s?ms\b))?"
)
# A number anywhere in a report (JSON or Markdown text).
_REPORT_NUM_RE = re.compile(r"[+\-]?\d+(?:\.\d+)?(?:[eE][+\-]?\d+)?")


@dataclass
class Figure:
    text: str          # as written in the README, e.g. "63.8 %"
    value: Decimal     # signed, unit removed
    digits: int        # decimals shown
    kind: str          # "decimal", "percent", "ratio"
    ms: bool = False


@dataclass
class Table:
    path: Path
    line: int                       # 1-based line of the table's header row
    sources: list[str] | None       # None: no marker; []: marker "outside"
    marker_line: int | None
    rows: list[tuple[int, str]] = field(default_factory=list)   # (line number, text) of body rows


@dataclass
class Problem:
    path: Path
    line: int
    message: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.message}"


def _strip_cell_noise(text: str) -> str:
    """Remove what is not a published figure: code spans, link targets, comments, emphasis."""
    text = re.sub(r"<!--.*?-->", " ", text)
    text = re.sub(r"`[^`]*`", " ", text)
    text = re.sub(r"\]\([^)]*\)", "]", text)
    text = re.sub(r"<[^>]+>", " ", text)
    return text.replace("**", "").replace("__", "")


def figures_in(text: str) -> list[Figure]:
    """The checked figures of one table row: decimals, percentages and ratios.

    A cell that shows a percentage is read in percent throughout, so the interval
    in ``64.0 % [57.1, 70.3]`` is matched like its ``64.0 %``.
    """
    out = []
    for cell in _strip_cell_noise(text).strip().strip("|").split("|"):
        out.extend(_figures_in_cell(cell))
    return out


def _figures_in_cell(cell: str) -> list[Figure]:
    out = []
    percent_cell = "%" in cell
    for m in _FIGURE_RE.finditer(cell):
        frac = m.group("frac") or ""
        pct, ratio, ms = m.group("pct"), m.group("ratio"), m.group("ms")
        if frac and percent_cell and not ratio:
            pct = pct or "%"
        if not frac and not pct and not ratio:
            continue                                  # a plain integer: a label or a count
        sign = "-" if m.group("sign") in ("-", "\u2212") else ""
        number = m.group("int").replace(",", "") + frac
        try:
            value = Decimal(sign + number)
        except InvalidOperation:                      # pragma: no cover - the regex admits only numbers
            continue
        kind = "percent" if pct else "ratio" if ratio else "decimal"
        out.append(Figure(m.group(0).strip(), value, len(frac) - 1 if frac else 0, kind, bool(ms)))
    return out


def parse_tables(path: Path) -> list[Table]:
    """Markdown tables of a file, each with the sources of the marker just before it."""
    lines = path.read_text(encoding="utf-8").splitlines()
    tables: list[Table] = []
    pending: tuple[list[str], int] | None = None      # marker waiting for its table
    i = 0
    while i < len(lines):
        line = lines[i]
        stripped = line.strip()
        marker = MARKER_RE.search(stripped)
        if marker:
            words = marker.group(1).replace(",", " ").split()
            if words and words[0].lower() == "outside":
                sources: list[str] = []
            else:
                sources = words
            pending = (sources, i + 1)
            i += 1
            continue
        if stripped.startswith("|"):
            start = i
            block = []
            while i < len(lines) and lines[i].strip().startswith("|"):
                block.append((i + 1, lines[i].strip()))
                i += 1
            body = [(n, t) for n, t in block[1:] if not re.fullmatch(r"\|[\s:|\-]*\|?", t)]
            srcs, mline = pending if pending else (None, None)
            tables.append(Table(path, start + 1, srcs, mline, body))
            pending = None
            continue
        if stripped and pending is not None and not stripped.startswith("<!--"):
            # A marker followed by prose or a placeholder (@@UNET_TABLE@@): no table to check.
            pending = None
        i += 1
    return tables


def find_root(start: Path) -> Path:
    """The repository root above ``start`` (a folder with pyproject.toml or .git), else ``start``."""
    for d in [start, *start.parents]:
        if (d / "pyproject.toml").is_file() or (d / ".git").exists():
            return d
    return start


def _git_tracked(root: Path) -> set[str] | None:
    """Paths tracked by git under the reports folder, or None where git cannot tell."""
    try:
        res = subprocess.run(["git", "-C", str(root), "ls-files", "--", REPORTS_DIR],
                             capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    if res.returncode != 0:
        return None
    return set(res.stdout.splitlines())


class ReportIndex:
    """The numbers of a set of report files, with rounded views cached per digit count."""

    def __init__(self, files: list[Path]):
        self.files = files
        self.numbers: list[Decimal] = []
        for f in files:
            for tok in _REPORT_NUM_RE.findall(f.read_text(encoding="utf-8", errors="replace")):
                try:
                    self.numbers.append(Decimal(tok))
                except InvalidOperation:          # pragma: no cover
                    pass
        self._views: dict[tuple[int, str], set[Decimal]] = {}

    def _view(self, digits: int, scale: str) -> set[Decimal]:
        key = (digits, scale)
        if key not in self._views:
            q = Decimal(1).scaleb(-digits)
            factor = {"1": Decimal(1), "100": Decimal(100), "1000": Decimal(1000)}[scale]
            view: set[Decimal] = set()
            for n in self.numbers:
                v = n * factor
                if abs(v) >= Decimal("1e15"):
                    continue
                view.add(v.quantize(q, rounding=ROUND_HALF_UP))
                view.add(v.quantize(q, rounding=ROUND_HALF_EVEN))
            self._views[key] = view
        return self._views[key]

    def holds(self, fig: Figure) -> bool:
        scales = ["1"]
        if fig.kind == "percent":
            scales.append("100")
        if fig.ms:
            scales.append("1000")
        q = Decimal(1).scaleb(-fig.digits)
        target = fig.value.quantize(q)
        return any(target in self._view(fig.digits, s) for s in scales)


def _report_files(root: Path, sources: list[str], where: str,
                  tracked: set[str] | None) -> tuple[list[Path], list[str]]:
    files: list[Path] = []
    errors: list[str] = []
    for src in sources:
        rel = src.strip("/")
        p = root / rel
        if not (rel == REPORTS_DIR or rel.startswith(REPORTS_DIR + "/")):
            errors.append(f"{where}: source {src!r} is not under {REPORTS_DIR}/ "
                          "(name a committed report, or mark the table 'outside')")
            continue
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.suffix in (".json", ".md") and f.is_file())
            if tracked is not None:          # a folder's reports are its committed files
                found = [f for f in found if f.relative_to(root).as_posix() in tracked]
            if not found:
                errors.append(f"{where}: source folder {src} holds no committed .json or .md report")
        elif p.is_file():
            found = [p]
            if tracked is not None and p.relative_to(root).as_posix() not in tracked:
                errors.append(f"{where}: report {src} is not committed (git add it, or name a committed one)")
                found = []
        else:
            errors.append(f"{where}: source {src} does not exist")
            continue
        files.extend(found)
    return files, errors


def check_file(path: Path | str, root: Path | str | None = None,
               marked_only: bool = False, require_committed: bool = True) -> list[Problem]:
    """All problems of one Markdown file; an empty list means every figure was found."""
    path = Path(path)
    root = Path(root) if root is not None else find_root(path.resolve().parent)
    tracked = _git_tracked(root) if require_committed else None
    problems: list[Problem] = []
    indexes: dict[tuple[str, ...], tuple[ReportIndex, list[str]]] = {}
    for table in parse_tables(path):
        where = f"table at line {table.line}"
        if table.sources is None:
            if marked_only:
                continue
            figs = [f.text for _, row in table.rows for f in figures_in(row)]
            if figs:
                problems.append(Problem(path, table.line,
                                        f"{where} holds figures ({', '.join(figs[:3])}, ...) but has no "
                                        "'<!-- figures: REPORTS -->' marker before it"))
            continue
        if not table.sources:                          # outside sources, named in the table
            continue
        key = tuple(table.sources)
        if key not in indexes:
            files, errors = _report_files(root, table.sources, where, tracked)
            indexes[key] = (ReportIndex(files), errors)
        index, errors = indexes[key]
        for e in errors:
            problems.append(Problem(path, table.marker_line or table.line, e))
        names = ", ".join(table.sources)
        for lineno, row in table.rows:
            first_cell = row.strip("|").split("|")[0].strip()
            for fig in figures_in(row):
                if not index.holds(fig):
                    problems.append(Problem(
                        path, lineno,
                        f"{fig.text} ({where}, row '{first_cell[:40]}') is in none of: {names}"))
    return problems


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m diffpolicy.docs_check", description=__doc__.split("\n")[0])
    ap.add_argument("files", nargs="*", help="Markdown files (default: the repository's README.md)")
    ap.add_argument("--root", help="repository root the marker paths are relative to "
                                   "(default: found above each file)")
    ap.add_argument("--marked-only", action="store_true",
                    help="check only tables with a marker (no error for unmarked tables)")
    ap.add_argument("--allow-uncommitted", action="store_true",
                    help="accept reports that git does not track yet")
    args = ap.parse_args(argv)
    files = [Path(f) for f in args.files] or [find_root(Path.cwd()) / "README.md"]
    status = 0
    for f in files:
        if not f.is_file():
            print(f"error: {f} does not exist", file=sys.stderr)
            return 2
        problems = check_file(f, args.root, marked_only=args.marked_only,
                              require_committed=not args.allow_uncommitted)
        n_tables = sum(1 for t in parse_tables(f) if t.sources)
        for p in problems:
            print(p)
        if problems:
            status = 1
            print(f"{f}: {len(problems)} figure(s) or source(s) not backed by a report")
        else:
            print(f"{f}: every figure in {n_tables} checked table(s) is in its reports")
    return status


if __name__ == "__main__":
    sys.exit(main())
