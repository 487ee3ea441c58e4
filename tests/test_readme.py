"""The README's Python example runs as written (a user copies it first)."""

import re
from pathlib import Path

import pytest

from fidelity_adapters.bundled import WATER_CLUSTERS

README = Path(__file__).resolve().parents[1] / "README.md"


@pytest.mark.skipif(not WATER_CLUSTERS.exists(), reason="bundled data not generated yet")
def test_readme_python_blocks_run(tmp_path, monkeypatch, capsys):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks, "README.md has no python example"
    monkeypatch.chdir(tmp_path)
    for block in blocks:
        exec(compile(block, str(README), "exec"), {"__name__": "readme"})
    assert (tmp_path / "runs" / "water").is_dir()
    assert capsys.readouterr().out.strip()
