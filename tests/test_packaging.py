"""`pip install .` (a wheel, not only an editable install) must ship what schemas/ and the WebUI's static/ hold."""

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_wheel_ships_schemas_and_console_script(tmp_path):
    # From a copy without the editable install's egg-info and build/: setuptools adds the files listed
    # in an existing egg-info's SOURCES.txt, so a wheel built in place ships files pyproject forgets.
    source = tmp_path / "source"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(
        ".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".cache", "models", ".connector", "tests"))
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp_path), str(source)],
        check=True, capture_output=True, timeout=300,
    )
    wheel = next(tmp_path.glob("connector-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    for layout in (ROOT / "schemas").glob("*.yaml"):
        assert f"connector/schemas/{layout.name}" in names
    assert "connector/testing/sentences.txt" in names
    for asset in ("index.html", "app.js", "style.css"):  # the WebUI that `connector serve` serves
        assert f"connector/serve/static/{asset}" in names
    for package in (ROOT / "connector").rglob("__init__.py"):  # every subpackage, e.g. connector/engines
        assert package.relative_to(ROOT).as_posix() in names
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "connector = connector.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()
