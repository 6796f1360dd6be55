"""The package type-checks: mypy with django-stubs over chatstream/, as pyproject sets it
(strict on the public modules), so a wrong hint fails the suite like a wrong result."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import ROOT


def test_chatstream_type_checks() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "mypy"], cwd=ROOT, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith("Success: no issues found")
