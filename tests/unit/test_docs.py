"""The documents say what the code does: the design and runbook are in the repository and
linked from the README, and the analyzer's thresholds in the README are the code's."""

from __future__ import annotations

import re
from pathlib import Path

from streams.core import analysis

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()


def test_the_readme_links_the_design_and_the_runbook_that_are_in_the_repository() -> None:
    for doc in ("docs/design.md", "docs/runbook.md"):
        assert f"]({doc})" in README
        assert (ROOT / doc).is_file()
    # Local links of the design document resolve.
    design = (ROOT / "docs" / "design.md").read_text()
    for target in re.findall(r"\]\(([^)#:]+)\)", design):
        assert (ROOT / "docs" / target).exists(), target
    assert "ARCHITECTURE.md" not in README


def test_the_readme_states_the_analyzers_severity_thresholds() -> None:
    table = README[README.index("| severity | when |"):]
    table = table[:table.index("\n\n")]
    critical, warning = (line for line in map(str.strip, table.splitlines())
                         if line.startswith(("| `critical`", "| `warning`")))
    assert f"{analysis.ERROR_RATE_CRITICAL:.0%} or more" in critical
    assert f"{analysis.P95_ABSOLUTE_MS / 1000:g} s or more" in critical
    assert f"at least {analysis.ERROR_RATE_MIN:.0%}" in warning
    assert f"{analysis.ERROR_COUNT_MIN} errors or more" in warning
    assert f"z ≥ {analysis.Z_THRESHOLD:g}" in warning
    assert f"fewer than {analysis.MIN_BASELINE_BATCHES} earlier batches" in warning
    assert f"above {analysis.P95_MIN_MS:g} ms" in warning
