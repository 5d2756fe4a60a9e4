"""Starts one `gorae serve` (SmolLM2, an API key, a free loopback port) for the whole session
and stops it with SIGTERM at the end, checking that it exits 0."""

import os
import pathlib
import re
import signal
import subprocess
import threading
import time
import urllib.request

import openai
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[4]
API_KEY = "sk-gorae-test"
MODEL_ID = "smollm2"


def _model_path() -> pathlib.Path:
    models = pathlib.Path(os.environ.get("GORAE_MODELS_DIR", ROOT / "models"))
    path = models / "smollm2" / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not path.exists():
        pytest.fail(f"{path} is missing: run `python3 scripts/fetch_models.py smollm2` first")
    return path


def _binary() -> str:
    binary = os.environ.get("GORAE_BIN", str(ROOT / "target" / "debug" / "gorae"))
    if not os.path.exists(binary):
        pytest.fail(f"{binary} is missing: run scripts/test_server_openai.sh (it builds it)")
    return binary


# A ChatML template whose generation prompt opens `<think>`, as DeepSeek-R1's does.
THINK_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n<think>\n{% endif %}"
)


def _deepseek_path() -> pathlib.Path:
    models = pathlib.Path(os.environ.get("GORAE_MODELS_DIR", ROOT / "models"))
    path = models / "fixtures" / "tiny-deepseek-v3"
    if not (path / "model.safetensors").exists():
        pytest.fail(f"{path} is missing: run `python3 scripts/fetch_models.py` first")
    return path


def _start(extra_args, model=None):
    proc = subprocess.Popen(
        [_binary(), "serve", str(model or _model_path()), "--port", "0", "--ctx", "512",
         "--alias", MODEL_ID, "--api-key", API_KEY, *extra_args],
        stderr=subprocess.PIPE, text=True,
    )
    base = None
    deadline = time.time() + 120
    while base is None:
        line = proc.stderr.readline()
        if not line:
            pytest.fail(f"gorae serve exited with {proc.wait()} before listening")
        m = re.search(r"serving on (http://\S+)", line)
        if m:
            base = m.group(1)
        if time.time() > deadline:
            proc.kill()
            pytest.fail("gorae serve did not start")
    log = []
    threading.Thread(target=lambda: log.extend(proc.stderr), daemon=True).start()
    while True:
        try:
            with urllib.request.urlopen(base + "/ready", timeout=5) as r:
                if r.status == 200:
                    break
        except OSError:
            pass
        if time.time() > deadline:
            proc.kill()
            pytest.fail("gorae serve never became ready")
        time.sleep(0.05)
    return proc, base, log


def _stop(proc, log):
    proc.send_signal(signal.SIGTERM)
    code = proc.wait(timeout=60)
    assert code == 0, f"gorae serve exited with {code} after SIGTERM:\n{''.join(log)}"


@pytest.fixture(scope="session")
def server():
    proc, base, log = _start([])
    yield base
    _stop(proc, log)


@pytest.fixture(scope="session")
def think_client(tmp_path_factory):
    """A server whose template opens `<think>`, with both reasoning fields."""
    template = tmp_path_factory.mktemp("tmpl") / "think.jinja"
    template.write_text(THINK_TEMPLATE)
    proc, base, log = _start(["--chat-template-file", str(template), "--reasoning-format", "both"])
    yield openai.OpenAI(base_url=base + "/v1", api_key=API_KEY, max_retries=0, timeout=120)
    _stop(proc, log)


@pytest.fixture(scope="session")
def client(server):
    return openai.OpenAI(base_url=server + "/v1", api_key=API_KEY, max_retries=0, timeout=120)


@pytest.fixture(scope="session")
def deepseek_client():
    """The tiny random DeepSeek-V3 fixture (MLA, MoE, MTP layer present) with SmolLM2's
    tokenizer, which it was made for, serving 4 sequences at once."""
    proc, base, log = _start(
        ["--tokenizer", str(_model_path()), "--parallel", "4"], model=_deepseek_path()
    )
    yield openai.OpenAI(base_url=base + "/v1", api_key=API_KEY, max_retries=0, timeout=120)
    _stop(proc, log)
