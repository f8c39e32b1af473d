"""agegender: reproduce and extend the MLLM age and gender estimation study."""

__version__ = "0.1.0"
