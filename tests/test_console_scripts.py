"""The installed console scripts find their Hydra configs (they run outside the
source tree's ``python -m`` path, so a missing package marker breaks only them)."""
import subprocess
import sys
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent


@pytest.mark.parametrize("script, expect", [
    ("diffpolicy-train", "pusht_keypoints"),
    ("diffpolicy-eval", "checkpoint"),
])
def test_script_resolves_its_config(script, expect, tmp_path):
    exe = BIN / script
    if not exe.exists():
        pytest.skip(f"{exe} not installed (run `make setup`)")
    out = subprocess.run([str(exe), "--cfg", "job"], cwd=tmp_path, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert expect in out.stdout
