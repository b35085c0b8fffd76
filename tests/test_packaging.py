"""`pip install .` (a wheel, not only an editable install) must ship what schemas/ holds."""

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_wheel_ships_schemas_and_console_script(tmp_path):
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp_path), str(ROOT)],
        check=True, capture_output=True, timeout=300,
    )
    wheel = next(tmp_path.glob("connector-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    for layout in (ROOT / "schemas").glob("*.yaml"):
        assert f"connector/schemas/{layout.name}" in names
    assert "connector/testing/sentences.txt" in names
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "connector = connector.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()
