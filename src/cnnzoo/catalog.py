"""The model table: every registered network with its family, year, parameters and MACs at its default input.

Measuring it means building and tracing every network (on the meta device, so without weights or arithmetic, but
still about 20 s of Python for a hundred networks), so `cnnzoo models` reads a cached copy,
`model_table.json` beside this module, and does not even import torch. The cache records a fingerprint of the
sources that decide its numbers (the model modules, layers, registry and summary); when they have changed since it
was written, the table is measured again instead, so it is never stale, only slow. `make readme-table`
(`cnnzoo models --update-readme README.md`) measures it, rewrites the cache and the README's copy; tests check
that both agree with a fresh measurement of every network.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path

from cnnzoo.units import format_count

__all__ = [
    "CatalogRow",
    "model_table",
    "measure_table",
    "cached_table",
    "cache_is_current",
    "write_cache",
    "render_text",
    "render_markdown",
    "update_readme",
    "format_count",
]

BEGIN, END = "<!-- model-table:begin -->", "<!-- model-table:end -->"
CACHE = Path(__file__).with_name("model_table.json")
_PACKAGE = Path(__file__).parent
_SOURCES = ("models/*.py", "layers.py", "registry.py", "summary.py")  # what a row's numbers depend on


@dataclass(frozen=True)
class CatalogRow:
    name: str
    family: str
    year: int
    params: int
    macs: int
    input_size: tuple[int, int, int]
    small_input: bool


def model_table(pattern: str = "*") -> list[CatalogRow]:
    """Rows of the registered networks matching a glob pattern: cached while the sources are unchanged."""
    if cache_is_current():
        return [row for row in cached_table() if fnmatch.fnmatchcase(row.name, pattern)]
    return measure_table(pattern)


def measure_table(pattern: str = "*") -> list[CatalogRow]:
    """Build and trace every matching network on the meta device (the slow path the cache saves)."""
    import torch

    from cnnzoo.registry import create_model, list_models, model_info
    from cnnzoo.summary import summarize

    rows = []
    for name in list_models(pattern):
        info = model_info(name)
        with torch.device("meta"):
            model = create_model(name)
        summary = summarize(model, info.input_size, name)
        rows.append(CatalogRow(name, info.family, info.year, summary.total_params, summary.total_macs,
                               info.input_size, info.small_input))  # fmt: skip
    return rows


def fingerprint() -> str:
    """Hash of the sources the table's numbers depend on."""
    digest = hashlib.sha256()
    for path in sorted(p for pattern in _SOURCES for p in _PACKAGE.glob(pattern)):
        digest.update(path.relative_to(_PACKAGE).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def cached_table(path: str | Path | None = None) -> list[CatalogRow]:
    """The rows as the cache file holds them (no check that they are current)."""
    data = json.loads(Path(path or CACHE).read_text())
    return [CatalogRow(**dict(row, input_size=tuple(row["input_size"]))) for row in data["models"]]


def cache_is_current(path: str | Path | None = None) -> bool:
    """Whether the cache was written from the sources as they are now."""
    try:
        return json.loads(Path(path or CACHE).read_text())["fingerprint"] == fingerprint()
    except (OSError, ValueError, KeyError):
        return False


def write_cache(rows: list[CatalogRow], path: str | Path | None = None) -> None:
    """Write the full table (every registered network) with the current sources' fingerprint."""
    lines = ",\n".join(json.dumps(asdict(row)) for row in rows)  # one line per network: readable diffs
    Path(path or CACHE).write_text(f'{{"fingerprint": "{fingerprint()}", "models": [\n{lines}\n]}}\n')


def _cells(row: CatalogRow) -> tuple[str, ...]:
    size = "x".join(map(str, row.input_size))
    return (row.name, row.family, str(row.year), f"{row.params:,}", format_count(row.macs).strip(), size,
            "yes" if row.small_input else "")  # fmt: skip


HEADER = ("model", "family", "year", "params", "MACs", "input", "small_input")


def render_text(rows: list[CatalogRow]) -> str:
    table = [HEADER, *map(_cells, rows)]
    widths = [max(len(r[i]) for r in table) for i in range(len(HEADER))]
    lines = ["  ".join(c.rjust(w) if i == 3 else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))).rstrip()
             for r in table]  # fmt: skip
    return "\n".join(lines[:1] + ["-" * max(map(len, lines))] + lines[1:])


def render_markdown(rows: list[CatalogRow]) -> str:
    align = ["---", "---", "---:", "---:", "---:", "---", "---"]
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(_cells(r)) + " |" for r in rows]
    return "\n".join(lines)


def update_readme(path: str | Path, table: str) -> bool:
    """Replace the text between the model-table markers; returns whether the file changed."""
    path = Path(path)
    text = path.read_text()
    pattern = re.compile(re.escape(BEGIN) + r".*?" + re.escape(END), re.S)
    if not pattern.search(text):
        raise ValueError(f"{path} has no {BEGIN} ... {END} markers")
    new = pattern.sub(lambda _: f"{BEGIN}\n{table}\n{END}", text)
    path.write_text(new)
    return new != text
