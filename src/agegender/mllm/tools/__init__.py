"""Tools around the query core, each used on its own.

- `server`: an OpenAI-compatible chat-completions server for any backend (`python -m agegender.mllm.tools.server`).
- `convert`: original LLaVA checkpoints -> transformers model folders, and their checks.
- `cost`: what a configured query run would send and cost, planned by the query core.
- `tiny`: tiny, randomly initialised LLaVA models for tests and the demo profile.
- `annotate`: label a folder of unlabelled photos with an MLLM (`agegender annotate --backend`).
"""
