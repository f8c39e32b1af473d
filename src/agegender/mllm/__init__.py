"""Multimodal LLMs, in three layers.

The query core (this package's modules): the paper's prompt (`prompt`), answer parsing (`parse`), the backends
and their typed options (`backends`, `backend_options`), the response store (`store`) and the one query path
(`runner`: plan the queries, ask them through the store, write the prediction table). `finetune` (the paper's
fine-tuning recipe and checkpoint selection) and `tools` (server, converter, cost, tiny models, annotate) are
built on the core; the core imports neither.
"""
