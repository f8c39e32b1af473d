"""Print (and write as JSON) the interpreter, GPU and library versions that the GPU checks ran with.

Each library line also says where the module was imported from, so a run shows whether the carried wheels
(`/tmp/site`) or the machine's own packages were used. Never fails on a missing package.

    python3 gpu/env_report.py [OUT.json]
"""

from __future__ import annotations

import importlib
import importlib.metadata
import json
import platform
import sys
from typing import Any

#: distribution name -> module name
LIBRARIES: dict[str, str] = {
    "torch": "torch",
    "torchvision": "torchvision",
    "transformers": "transformers",
    "timm": "timm",
    "peft": "peft",
    "accelerate": "accelerate",
    "huggingface_hub": "huggingface_hub",
    "tokenizers": "tokenizers",
    "safetensors": "safetensors",
    "regex": "regex",
    "numpy": "numpy",
    "pandas": "pandas",
    "pyarrow": "pyarrow",
    "pillow": "PIL",
    "opencv-python-headless": "cv2",
    "onnx": "onnx",
    "onnxruntime": "onnxruntime",
    "scipy": "scipy",
    "pytest": "pytest",
    "vllm": "vllm",
}


def library_versions() -> dict[str, dict[str, str | None]]:
    """Version and import location of each library in `LIBRARIES` (None where it is missing or broken)."""
    out: dict[str, dict[str, str | None]] = {}
    for dist, module in LIBRARIES.items():
        try:
            version: str | None = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            version = None
        try:
            where: str | None = getattr(importlib.import_module(module), "__file__", None)
        except Exception as exc:  # a broken install must not stop the report
            where = f"import failed: {type(exc).__name__}: {exc}"[:300]
        out[dist] = {"version": version, "from": where}
    return out


def gpu_info() -> dict[str, Any]:
    """CUDA device name, memory, capability and the CUDA/cuDNN versions torch was built with."""
    try:
        import torch
    except ImportError as exc:
        return {"error": str(exc)}
    info: dict[str, Any] = {"cuda_available": torch.cuda.is_available(), "torch_cuda": torch.version.cuda}
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(
            {
                "name": props.name,
                "memory_gib": round(props.total_memory / 2**30, 1),
                "capability": f"{props.major}.{props.minor}",
                "multiprocessors": props.multi_processor_count,
                "bf16": torch.cuda.is_bf16_supported(),
                "cudnn": torch.backends.cudnn.version(),
            }
        )
    return info


def main(argv: list[str] | None = None) -> None:
    """Print one line per item and write everything to the JSON path given as the first argument, if any."""
    args = sys.argv[1:] if argv is None else argv
    report = {
        "python": sys.version.split()[0],
        "executable": sys.executable,
        "platform": platform.platform(),
        "gpu": gpu_info(),
        "libraries": library_versions(),
    }
    print(f"python {report['python']} ({report['executable']})")
    gpu = report["gpu"]
    print("GPU " + ", ".join(f"{k}={v}" for k, v in gpu.items()))
    for name, lib in report["libraries"].items():
        print(f"{name} {lib['version']} from {lib['from']}")
    if args:
        with open(args[0], "w", encoding="utf-8") as f:
            json.dump(report, f, indent=2)
            f.write("\n")


if __name__ == "__main__":
    main()
