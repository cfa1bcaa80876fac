"""The environment every test runs in (tests/conftest.py's ``hermetic_env``), as seen by a
process a test starts: Flower telemetry off and the Hugging Face hub offline, so nothing the
suite starts reaches the hub (``.ci/run`` exports ``HF_HUB_OFFLINE=1`` too, but the hermetic
fixture clears every caller's ``HF_*`` variable before each test)."""

import subprocess
import sys

CHILD = """
import os
from huggingface_hub import HfApi, constants
from huggingface_hub.errors import OfflineModeIsEnabled
assert os.environ["FLWR_TELEMETRY_ENABLED"] == "0"
assert constants.HF_HUB_OFFLINE
try:  # refused before any connection is tried
    HfApi().model_info("openai-community/gpt2")
except OfflineModeIsEnabled:
    print("refused offline")
"""


def test_a_process_a_test_starts_is_offline():
    out = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "refused offline", out.stderr[-2000:]
