"""The README's promise: two set-up commands, and CI runs the second one verbatim."""

from __future__ import annotations

import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parent.parent


def readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    block = re.search(r"```sh\n(.*?)```", text, re.DOTALL).group(1)
    return [line for line in block.splitlines() if line.strip() and not line.startswith("#")]


def test_the_readme_starts_with_two_commands_install_and_demo_then_tests():
    install, tests = readme_commands()
    assert install.endswith("nsctl demo")
    assert "pytest" in tests


def test_ci_runs_the_readmes_commands_verbatim_in_a_fresh_clone_under_tmp():
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    install, tests = readme_commands()
    clone = ci.index('git clone -q "$repo" "$work/nsctl"')
    assert ci.index(install) > clone and ci.index(tests) > ci.index(install)
    assert "work=$(mktemp -d /tmp/nsctl-ci.XXXXXX)" in ci
    assert 'export PIP_CONSTRAINT="$work/nsctl/constraints.txt"' in ci


def test_the_test_dependencies_are_pinned_to_exact_versions():
    lines = (ROOT / "constraints.txt").read_text(encoding="utf-8").splitlines()
    pins = [line.split(";")[0].strip() for line in lines if line and not line.startswith("#")]
    assert pins and all(re.fullmatch(r"[A-Za-z0-9_.-]+==[0-9][0-9A-Za-z.]*", p) for p in pins)
    assert {"pytest", "hypothesis", "ruff", "setuptools"} <= {p.split("==")[0] for p in pins}
    assert "-c constraints.txt" in readme_commands()[1]
