"""The unit files: they parse (systemd-analyze verify prints problems but exits 0, so any output
fails), their hardening scores at most 2.0, and deploy/install-service.sh installs what they name."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
UNITS = ("watchgw.service", "watchgw@.service", "watchgw.socket", "watchgw@.socket")
#: What each file is verified as: an instance of a template is verified by its instance name.
INSTANCES = {
    "watchgw.service": "watchgw.service",
    "watchgw@.service": "watchgw@8081.service",
    "watchgw.socket": "watchgw.socket",
    "watchgw@.socket": "watchgw@8081.socket",
}
needs_systemd_analyze = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed"
)


def place(units: Path, into: Path) -> None:
    """The units of ``units`` in ``into``, with a link for every template's instance."""
    for template, instance in INSTANCES.items():
        if not (into / template).exists():
            shutil.copy(units / template, into / template)
        if instance != template:
            (into / instance).symlink_to(into / template)


def analyze(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["systemd-analyze", *args], capture_output=True, text=True, timeout=60, check=False)


@needs_systemd_analyze
@pytest.mark.parametrize("unit", INSTANCES.values())
def test_unit_verifies_cleanly(tmp_path: Path, unit: str) -> None:
    for template in UNITS:
        text = (ROOT / "systemd" / template).read_text()
        text = text.replace("/opt/watchgw/bin/watchgw", str(Path(sys.executable).parent / "watchgw"))
        text = text.replace("/etc/watchgw/watchgw.toml", str(ROOT / "config" / "watchgw.toml"))
        (tmp_path / template).write_text(text)
    place(tmp_path, tmp_path)
    result = analyze("verify", str(tmp_path / unit))
    assert result.returncode == 0
    assert (result.stdout + result.stderr).strip() == ""


@needs_systemd_analyze
@pytest.mark.parametrize("unit", ["watchgw.service", "watchgw@8081.service"])
def test_hardening_exposure_is_at_most_2(tmp_path: Path, unit: str) -> None:
    place(ROOT / "systemd", tmp_path)
    result = analyze("security", "--offline=yes", str(tmp_path / unit))
    found = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout)
    assert found, result.stdout + result.stderr
    assert float(found.group(1)) <= 2.0


def test_unit_runs_the_documented_commands() -> None:
    unit = (ROOT / "systemd" / "watchgw.service").read_text()
    assert "watchgw serve --config" in unit
    assert "watchgw check-config --config" in unit
    assert "KillSignal=SIGTERM" in unit


@pytest.mark.parametrize("template", ["watchgw.service", "watchgw@.service"])
def test_the_service_notifies_and_has_a_watchdog(template: str) -> None:
    unit = (ROOT / "systemd" / template).read_text()
    assert "\nType=notify\n" in unit
    assert "\nNotifyAccess=main\n" in unit
    assert re.search(r"\nWatchdogSec=\d+", unit)


def test_the_template_gives_each_instance_its_port() -> None:
    unit = (ROOT / "systemd" / "watchgw@.service").read_text()
    assert "watchgw serve --config /etc/watchgw/watchgw.toml --port %i" in unit
    assert "\nListenStream=127.0.0.1:%i\n" in (ROOT / "systemd" / "watchgw@.socket").read_text()


def test_the_socket_listens_where_the_shipped_config_does() -> None:
    config = (ROOT / "config" / "watchgw.toml").read_text()
    host = re.search(r'^host = "([^"]+)"', config, re.MULTILINE)
    port = re.search(r"^port = (\d+)", config, re.MULTILINE)
    assert host
    assert port
    socket_unit = (ROOT / "systemd" / "watchgw.socket").read_text()
    assert f"\nListenStream={host.group(1)}:{port.group(1)}\n" in socket_unit


@needs_systemd_analyze
@pytest.mark.slow
def test_install_service_installs_what_the_units_name(tmp_path: Path) -> None:
    # A copy of the sources: pip builds in the source tree, and the repository is not the test's.
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    for name in ("watchgw", "config", "systemd"):
        shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    prefix, sysconf, unitdir = tmp_path / "venv", tmp_path / "conf", tmp_path / "units"
    env = {
        **os.environ,
        "SRC": str(src),
        "PY": sys.executable,
        "PREFIX": str(prefix),
        "SYSCONFDIR": str(sysconf),
        "UNITDIR": str(unitdir),
        # The package alone, not its dependencies: the units need the entry point to exist. (pip
        # still fetches the build backend, setuptools, as every install of the package does.)
        "PIP_ARGS": "--no-deps",
    }
    # An operator's token from an earlier install stays (and so does a config: the same code).
    sysconf.mkdir(parents=True)
    (sysconf / "token").write_text("tok-from-the-operator\n")
    (sysconf / "token").chmod(0o600)
    result = subprocess.run(
        [str(ROOT / "deploy" / "install-service.sh")], env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    assert os.access(prefix / "bin" / "watchgw", os.X_OK)
    assert (prefix / "README.md").is_file()
    assert (sysconf / "watchgw.toml").read_text() == (ROOT / "config" / "watchgw.toml").read_text()
    assert (sysconf / "token").read_text() == "tok-from-the-operator\n"
    service = (unitdir / "watchgw.service").read_text()
    assert f"ExecStart={prefix}/bin/watchgw serve --config {sysconf}/watchgw.toml\n" in service
    assert f"LoadCredential=token:{sysconf}/token\n" in service
    assert "/opt/watchgw" not in service
    assert "/etc/watchgw" not in service
    place(unitdir, unitdir)
    for unit in INSTANCES.values():
        verified = analyze("verify", str(unitdir / unit))
        assert (verified.stdout + verified.stderr).strip() == "", unit
