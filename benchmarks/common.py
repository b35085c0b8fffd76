"""Shared by the benchmark scripts: the machine they ran on, and their section of RESULTS.md."""

from __future__ import annotations

import os
import platform
import sys
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo, or 'unknown'."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def machine_and_command(arguments: str, machine_note: str = "") -> list[str]:
    """The **Machine** and **Command** lines that end a results section; `arguments` is what
    follows the interpreter on the command line (the script and its options)."""
    return [
        f"- **Machine**: {cpu_model()} ({platform.machine()}), {len(os.sched_getaffinity(0))} cores{machine_note}; "
        f"Python {platform.python_version()}.",
        f"- **Command** (from the repository root, {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC): "
        f"`{display_python()} {arguments}`",
    ]


def display_python() -> str:
    """The running interpreter, relative to the repository root where it is inside it (for the
    command line a results section quotes)."""
    exe = Path(sys.executable)
    try:
        return str(exe.relative_to(ROOT))
    except ValueError:
        return str(exe)


def write_section(path: Path, start: str, end: str, section: str) -> None:
    """Put `section` (which begins with `start` and ends with `end`) into the results file, in
    place of the one between those markers if there is one, else at the end; atomically."""
    if path.exists():
        text = path.read_text(encoding="utf-8")
        first, last = text.find(start), text.find(end)
        if first != -1 and last > first:
            text = text[:first] + section.rstrip("\n") + text[last + len(end):]
        else:
            text = text.rstrip("\n") + ("\n\n" if text.strip() else "") + section
    else:
        text = "# Benchmark results\n\n" + section
    tmp = path.with_suffix(".md.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def publish(path: Path, start: str, end: str, section: str, write: bool) -> None:
    """Print a benchmark's section and, if `write`, put it into the results file."""
    print(section)
    if write:
        write_section(path, start, end, section + "\n")
