"""The README's Python example runs as written."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_opens_with_the_two_commands():
    text = README.read_text()
    first_block = re.search(r"```bash\n(.*?)```", text, flags=re.S).group(1)
    assert "make demo" in first_block and "make test" in first_block


@pytest.mark.slow
def test_readme_python_example_runs(tmp_path):
    blocks = python_blocks()
    assert len(blocks) == 2 and len(blocks[0].strip().splitlines()) <= 10
    proc = subprocess.run([sys.executable, "-c", blocks[0]], capture_output=True, text=True, timeout=600,
                          cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    acc = float(re.search(r"'accuracy': ([0-9.]+)", out).group(1))
    assert 0.70 < acc < 0.90


@pytest.mark.slow
def test_readme_personalization_example_runs(tmp_path):
    block = python_blocks()[1]
    proc = subprocess.run([sys.executable, "-c", block], capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    match = re.search(r"ask next: (\d+) \| top items: \[\('(i\d+)', ", proc.stdout)
    assert match, proc.stdout
