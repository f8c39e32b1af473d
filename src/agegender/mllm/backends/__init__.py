"""MLLM backends: one interface (`Backend`), registered by name."""

from agegender.mllm.backends.base import (
    BACKENDS,
    Answer,
    Backend,
    GenerationParams,
    Query,
    create_backend,
    register_backend,
)

__all__ = ["BACKENDS", "Answer", "Backend", "GenerationParams", "Query", "create_backend", "register_backend"]
