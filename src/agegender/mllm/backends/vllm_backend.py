"""Offline batch inference with vLLM (GPU users; optional extra `agegender[vllm]`, imported lazily).

Requests are built exactly as the `transformers` backend builds them: the prompt text is the model's own
chat template (from its Hugging Face processor) applied to one user turn (image, then prompt), and the
image goes in `multi_modal_data={"image": PIL image}`; vLLM's processor expands the placeholder (any-res
for LLaVA-NeXT). LLaVA-1.5's original mean-colour pad-to-square is applied to the image before it is
handed over (default for `model_type == "llava"`), because vLLM runs the checkpoint's processor, whose
llava-hf default is a plain resize + centre crop. Sampling: temperature 0 (greedy), `max_tokens`, `seed`.

Multi-GPU:
- tensor parallel (one model across GPUs, for models that do not fit one): `tensor_parallel_size=N`.
- data parallel (the fast way for 7B/13B models that fit one GPU): one process per GPU, each with its
  shard of the data set, then merge::

      for i in 0 1 2 3; do
        CUDA_VISIBLE_DEVICES=$i agegender query ... --backend vllm --shard $i/4 --store STORE &
      done; wait; agegender query ... --backend vllm --store STORE   # second pass: all answers cached, merges

  vLLM's own offline data parallel (`data_parallel_size` with the `VLLM_DP_RANK`/`VLLM_DP_SIZE`/
  `VLLM_DP_MASTER_*` environment of its `data_parallel.py` example) also needs one process per rank that
  feeds its own share of the prompts, so the runner's `--shard` gives the same result with less machinery
  (and the shards can run on different hosts). Serving with `vllm serve --data-parallel-size N` and the
  `openai` backend is the other option.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from agegender.errors import InputError
from agegender.mllm.backend_options import VLLMOptions
from agegender.mllm.backends.base import Answer, Backend, GenerationParams, Query, register_backend
from agegender.mllm.backends.transformers_backend import (
    chat_prompt,
    check_image,
    find_model_folder,
    folder_revision,
    pad_to_square,
    square_pad_color,
)


class VLLMUnavailableError(InputError, ImportError):
    """vLLM is not installed (or does not import): the CLI reports it in one line."""


def import_vllm() -> Any:
    """Import vLLM, or explain how to get it.

    Returns:
        The `vllm` module.

    Raises:
        VLLMUnavailableError: vLLM is missing or fails to import (an InputError and an ImportError).
    """
    try:
        import vllm
    except ImportError as exc:
        raise VLLMUnavailableError(
            f"the vllm backend needs vLLM (Linux, CUDA GPU): pip install 'agegender[vllm]' ({exc})", field="backend"
        ) from exc
    return vllm


@register_backend
class VLLMBackend(Backend):
    """A model served in-process by `vllm.LLM` (offline batch inference).

    Args:
        model: a local model folder (HF format) or a cached hub id.
        params: generation settings (temperature 0 = greedy; `seed` passed to SamplingParams; n must be 1;
            `detail` is ignored).
        options: `VLLMOptions` (batch_size, tensor_parallel_size, dtype, max_model_len, gpu_memory_utilization,
            pad_to_square, local_files_only, model_revision, engine_options, system_prompt).
        **kwargs: the same options as keyword arguments, instead of `options`.

    Raises:
        VLLMUnavailableError: vLLM is not installed.
        InputError: bad model folder or options.
    """

    name = "vllm"
    options_type = VLLMOptions

    def __init__(
        self, model: str, *, params: GenerationParams | None = None, options: VLLMOptions | None = None, **kwargs: Any
    ) -> None:
        super().__init__(model, params=params)
        if self.params.n != 1:
            raise InputError(f"the vllm backend answers one completion per query (n=1), got n={self.params.n}")
        o = self.load_options(options, **kwargs)
        self.system_prompt = o.system_prompt
        self.batch_size = o.batch_size
        self.tensor_parallel_size = o.tensor_parallel_size
        local_files_only, pad_to_square, model_revision = o.local_files_only, o.pad_to_square, o.model_revision
        dtype, gpu_memory_utilization, max_model_len, engine_options = (
            o.dtype, o.gpu_memory_utilization, o.max_model_len, o.engine_options
        )  # fmt: skip
        self._vllm = import_vllm()  # before any heavy loading: a missing extra fails fast

        from transformers import AutoConfig, AutoProcessor

        folder = find_model_folder(model, local_files_only=local_files_only)
        source = str(folder) if folder is not None else model
        try:
            self.processor = AutoProcessor.from_pretrained(source, local_files_only=local_files_only)
            model_type = getattr(
                AutoConfig.from_pretrained(source, local_files_only=local_files_only), "model_type", ""
            )
        except (OSError, ValueError, KeyError) as exc:
            raise InputError(f"cannot load the model's processor/config: {exc}", file=source) from exc
        try:
            chat_prompt(self.processor, "")
        except InputError as exc:
            raise InputError(exc.message, file=source, field="chat_template") from exc
        self.pad_to_square = model_type == "llava" if pad_to_square is None else bool(pad_to_square)
        self._pad_color = square_pad_color(self.processor)
        self._revision = model_revision or (folder_revision(folder) if folder is not None else None)
        self.engine_args: dict[str, Any] = {
            "model": source,
            "tensor_parallel_size": self.tensor_parallel_size,
            "limit_mm_per_prompt": {"image": 1},
            "dtype": dtype,
            "gpu_memory_utilization": float(gpu_memory_utilization),
            "seed": 0 if self.params.seed is None else int(self.params.seed),
            **({"max_model_len": int(max_model_len)} if max_model_len else {}),
            **(engine_options or {}),
        }
        self.llm = self._vllm.LLM(**self.engine_args)

    @property
    def model_revision(self) -> str | None:
        """Hub commit hash, or a digest of the local folder (as the transformers backend computes it)."""
        return self._revision

    def key_options(self) -> dict[str, Any]:
        """Settings that change answers (store key): preprocessing, system turn, dtype; vLLM kernels differ too."""
        return {
            "pad_to_square": self.pad_to_square,
            "system_prompt": self.system_prompt,
            "dtype": self.engine_args.get("dtype"),
            "engine": "vllm",
        }

    def describe(self) -> dict[str, Any]:
        """Backend, model, revision, params, engine settings and the vLLM version."""
        info = super().describe()
        info.update(
            {
                "tensor_parallel_size": self.tensor_parallel_size,
                "pad_to_square": self.pad_to_square,
                "system_prompt": self.system_prompt,
                "engine": {k: v for k, v in self.engine_args.items() if k != "model"},
                "vllm": getattr(self._vllm, "__version__", None),
            }
        )
        return info

    def sampling_params(self) -> Any:
        """`vllm.SamplingParams` for the generation settings (greedy at temperature 0)."""
        kwargs: dict[str, Any] = {
            "n": 1,
            "temperature": float(self.params.temperature),
            "max_tokens": int(self.params.max_new_tokens),
        }
        if self.params.seed is not None:
            kwargs["seed"] = int(self.params.seed)
        return self._vllm.SamplingParams(**kwargs)

    def build_request(self, query: Query) -> dict[str, Any]:
        """One vLLM prompt: the chat-template text and the (padded) PIL image."""
        from PIL import Image

        check_image(query.image)
        image = pad_to_square(query.image, self._pad_color) if self.pad_to_square else query.image
        return {
            "prompt": chat_prompt(self.processor, query.prompt, self.system_prompt),
            "multi_modal_data": {"image": Image.fromarray(image)},
        }

    def _run(self, queries: Sequence[Query]) -> list[Answer]:
        start = time.perf_counter()
        outputs = self.llm.generate([self.build_request(q) for q in queries], self.sampling_params(), use_tqdm=False)
        elapsed = time.perf_counter() - start
        answers = []
        for query, out in zip(queries, outputs, strict=True):
            completion = out.outputs[0]
            answers.append(
                Answer(
                    request_id=query.request_id,
                    status="answered",
                    text=completion.text.strip(),
                    finish_reason=completion.finish_reason,
                    prompt_tokens=len(out.prompt_token_ids) if out.prompt_token_ids is not None else None,
                    completion_tokens=len(completion.token_ids),
                    model_revision=self._revision,
                    latency_s=elapsed,
                )
            )
        return answers

    def _run_safely(self, queries: Sequence[Query]) -> list[Answer]:
        try:
            return self._run(queries)
        except (InputError, ValueError, RuntimeError) as exc:
            if len(queries) == 1:
                error = f"{type(exc).__name__}: {exc}"
                return [
                    Answer(query.request_id, "failed", error=error, model_revision=self._revision) for query in queries
                ]
        # One bad request (e.g. an image vLLM rejects) must not fail the others.
        return [a for q in queries for a in self._run_safely([q])]

    def generate_batch(self, queries: Sequence[Query]) -> list[Answer]:
        """Answer queries (in order) with one `LLM.generate` call per `batch_size` queries."""
        answers: list[Answer] = []
        for start in range(0, len(queries), self.batch_size):
            answers.extend(self._run_safely(list(queries[start : start + self.batch_size])))
        return answers

    def close(self) -> None:
        """Drop the engine and free GPU memory."""
        import gc

        self.__dict__.pop("llm", None)
        gc.collect()
        try:
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except ImportError:
            pass
