"""The README's first command: `nsctl demo` shows a job namespace made, used and torn down."""

import subprocess
import sys


def test_demo_passes_every_check(no_leaks):
    result = subprocess.run(
        [sys.executable, "-m", "nsctl", "demo"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "FAIL" not in result.stdout
    assert result.stdout.count("  ok   ") == 7
    assert result.stdout.rstrip().endswith(
        "demo passed: a job namespace was made, used and torn down."
    )
