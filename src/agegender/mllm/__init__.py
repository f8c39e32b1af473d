"""Multimodal LLMs: the paper's prompt, answer parsing, backends, response store and runner."""
