"""The browser client's TypeScript declarations (watchgw/static/watch-client.d.ts) cover its whole
API: tsc, strict, checks example.ts, a small typed page that uses all of it through the ES module,
including lines that must NOT compile (@ts-expect-error: a wrong kind, a missing field)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent


def tsc_path() -> str | None:
    # Where .ci/run installs it (npm, no global install), else one on PATH.
    local = ROOT / ".ci" / "node" / "node_modules" / ".bin" / "tsc"
    return str(local) if local.exists() else shutil.which("tsc")


pytestmark = pytest.mark.skipif(
    tsc_path() is None and not os.environ.get("CI"),
    reason="TypeScript is not installed (npm install --no-save --prefix .ci/node typescript@5.6.3, "
    "as .ci/run does; under CI this test must run)",
)


def test_the_declarations_type_check_a_typed_page() -> None:
    tsc = tsc_path()
    assert tsc is not None, "CI must install TypeScript (.ci/run)"
    result = subprocess.run(
        [tsc, "--project", str(HERE / "tsconfig.json")], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr
