"""The unit file parses: systemd-analyze verify prints problems but exits 0, so any output fails."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
@pytest.mark.parametrize(
    ("template", "installed_as"),
    [("watchgw.service", "watchgw.service"), ("watchgw@.service", "watchgw@8081.service")],
)
def test_unit_verifies_cleanly(tmp_path: Path, template: str, installed_as: str) -> None:
    unit = (ROOT / "systemd" / template).read_text()
    executable = Path(sys.executable).parent / "watchgw"
    unit = unit.replace("/opt/watchgw/bin/watchgw", str(executable))
    unit = unit.replace("/etc/watchgw/watchgw.toml", str(ROOT / "config" / "watchgw.toml"))
    (tmp_path / template).write_text(unit)
    path = tmp_path / installed_as  # an instance of a template is verified by its instance name
    if installed_as != template:
        path.symlink_to(tmp_path / template)
    else:
        path = tmp_path / template
    result = subprocess.run(
        ["systemd-analyze", "verify", str(path)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0
    assert (result.stdout + result.stderr).strip() == ""


def test_unit_runs_the_documented_commands() -> None:
    unit = (ROOT / "systemd" / "watchgw.service").read_text()
    assert "watchgw serve --config" in unit
    assert "watchgw check-config --config" in unit
    assert "KillSignal=SIGTERM" in unit


def test_the_template_gives_each_instance_its_port() -> None:
    unit = (ROOT / "systemd" / "watchgw@.service").read_text()
    assert "watchgw serve --config /etc/watchgw/watchgw.toml --port %i" in unit
