"""What the user documents say of themselves: commands a reader can copy,
and the project as it is, not the process that made it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
USER_DOCUMENTS = sorted(
    [ROOT / "README.md", *(ROOT / "docs").glob("*.md"), *(ROOT / "examples").rglob("*")]
)

#: Words of how the project was made (the issue or seed asking for a
#: feature, the engineers at work), which a user of it has no use for.
#: ("Authorities that issue certificates" is another matter.)
PROCESS = re.compile(
    r"\b(the|an|this|next) issue\b|\bissue #?\d|\bengineers?\b|\bseed\b",
    re.IGNORECASE,
)

#: A command the README runs that ``make`` installs in ``.venv/bin`` alone.
BARE_COMMAND = re.compile(r"(?:^|[;&|(]\s*)(ocsbal|twistd|python3?|pip)\s")


def code_lines(markdown: str) -> list[str]:
    """The lines of ``markdown``'s fenced code blocks."""
    lines, fenced = [], False
    for line in markdown.splitlines():
        if line.startswith("```"):
            fenced = not fenced
        elif fenced:
            lines.append(line)
    return lines


@pytest.mark.parametrize(
    "path", [p for p in USER_DOCUMENTS if p.is_file()], ids=lambda p: p.name
)
def test_user_documents_speak_of_the_project_not_its_process(path: Path) -> None:
    said = [line for line in path.read_text().splitlines() if PROCESS.search(line)]
    assert said == []


def test_the_readme_runs_what_make_installs_by_its_path() -> None:
    bare = [
        line
        for line in code_lines((ROOT / "README.md").read_text())
        if BARE_COMMAND.search(line)
    ]
    assert bare == []
