"""transformers prints "PyTorch was not found. Models won't be available..." when imported without torch; this
package uses it for tokenizers and configurations only, so every import site goes through
``io_utils.import_transformers``, which silences that one advisory message and no later warning."""

import importlib.util
import os
import subprocess
import sys

import pytest

BANNER = "PyTorch was not found"
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(code: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRANSFORMERS_")}
    env.update(JAX_PLATFORMS="cpu", PYTHONPATH=REPO)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)


@pytest.mark.skipif(importlib.util.find_spec("torch") is not None, reason="with PyTorch there is no banner")
def test_model_loader_prints_no_pytorch_banner():
    bare = _run("import transformers")
    assert BANNER in bare.stderr  # the control: transformers itself prints it here
    loaded = _run(
        "import os\n"
        "from infalign_jax.models import load\n"
        "model, tok = load('tests/fixtures/models/llama')\n"
        "assert tok is not None and tok('hi')['input_ids']\n"
        "print('env', os.environ.get('TRANSFORMERS_NO_ADVISORY_WARNINGS'))\n"
    )
    assert loaded.returncode == 0, loaded.stderr
    assert BANNER not in loaded.stderr + loaded.stdout
    assert "env None" in loaded.stdout  # set for the import only: later advisory warnings still show


def test_import_transformers_keeps_a_users_setting():
    out = _run(
        "import os\n"
        "os.environ['TRANSFORMERS_NO_ADVISORY_WARNINGS'] = 'mine'\n"
        "from infalign_jax.io_utils import import_transformers\n"
        "import sys\n"
        "assert import_transformers() is sys.modules['transformers']\n"
        "print('env', os.environ['TRANSFORMERS_NO_ADVISORY_WARNINGS'])\n"
    )
    assert out.returncode == 0, out.stderr
    assert "env mine" in out.stdout and BANNER not in out.stderr
