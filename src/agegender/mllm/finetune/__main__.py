"""`python -m agegender.mllm.finetune ...`: one process, or under torchrun / accelerate launch."""

from agegender.cli.mllm_finetune import main

raise SystemExit(main())
