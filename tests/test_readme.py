"""Every fenced ``python`` block of README.md runs, so the documented examples stay true.

Each block runs in a fresh namespace, in a temporary working folder that sees the repository's
``configs/``, with matplotlib on the Agg backend and JAX's x64 flag restored afterwards. A block
preceded by ``<!-- readme-test: skip REASON -->`` is skipped with that reason.
"""

from __future__ import annotations

import re
from pathlib import Path

import jax
import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"

_FENCE = re.compile(
    r"(?P<skip><!--\s*readme-test:\s*skip(?P<reason>[^>]*?)-->\s*\n)?^```python[ \t]*\n(?P<code>.*?)^```[ \t]*$",
    re.M | re.S,
)


def readme_blocks(text: str) -> list[tuple[int, str, str | None]]:
    """(line, code, skip reason or None) for each fenced python block of a markdown text."""
    blocks = []
    for match in _FENCE.finditer(text):
        line = text.count("\n", 0, match.start("code"))  # the fence's own line, 1-based
        reason = None
        if match.group("skip") is not None:
            reason = (match.group("reason") or "").strip() or "marked readme-test: skip"
        blocks.append((line, match.group("code"), reason))
    return blocks


def _params():
    params = []
    for line, code, reason in readme_blocks(README.read_text(encoding="utf-8")):
        marks = [pytest.mark.skip(reason=reason)] if reason else []
        params.append(pytest.param(line, code, marks=marks, id=f"README.md:{line}"))
    return params


def test_the_extractor_finds_blocks_and_skip_markers():
    text = (
        "intro\n```python\nx = 1\n```\n```bash\nls\n```\n"
        "<!-- readme-test: skip needs 8 GPUs -->\n```python\ny = 2\n```\n"
        "```python\n# two\n# lines\n```\n"
    )
    blocks = readme_blocks(text)
    assert [(line, code) for line, code, _ in blocks] == [(2, "x = 1\n"), (9, "y = 2\n"), (12, "# two\n# lines\n")]
    assert [reason for _, _, reason in blocks] == [None, "needs 8 GPUs", None]


def test_readme_has_python_examples():
    assert len(readme_blocks(README.read_text(encoding="utf-8"))) >= 3


@pytest.mark.parametrize("line, code", _params())
def test_readme_example_runs(line, code, tmp_path, monkeypatch):
    configs = ROOT / "configs"
    if configs.is_dir():
        (tmp_path / "configs").symlink_to(configs, target_is_directory=True)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MPLBACKEND", "Agg")
    x64 = jax.config.jax_enable_x64
    try:
        exec(compile(code, f"README.md:{line}", "exec"), {"__name__": "__readme__"})
    finally:
        jax.config.update("jax_enable_x64", x64)
