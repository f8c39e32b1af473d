"""`python -m agegender.mllm.tools.server --backend NAME --model M [--port N] ...`: its parser.

Kept apart from `agegender.cli.mllm` so that the stages that start a server (`running_server` runs this entry
point in a subprocess) depend on this parser only, not on every MLLM command.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence

from agegender.errors import InputError


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: `python -m agegender.mllm.tools.server --backend NAME --model M [--port N] [--latency-ms MS]`."""
    from agegender.mllm.backends.base import GenerationParams
    from agegender.mllm.tools import server

    ap = argparse.ArgumentParser(
        prog="python -m agegender.mllm.tools.server", description=(server.__doc__ or "").splitlines()[0]
    )
    ap.add_argument("--backend", default="transformers", help="registered backend (transformers, constant, echo, ...)")
    ap.add_argument("--model", default="", help="model id or folder of the wrapped backend")
    ap.add_argument("--served-model-name", dest="served_model", default=None, help="id clients send (default: --model)")
    ap.add_argument("--host", default="127.0.0.1", help="interface (default 127.0.0.1: this machine only)")
    ap.add_argument("--port", type=int, default=8000, help="TCP port (0 = any free port)")
    ap.add_argument(
        "--max-new-tokens",
        type=int,
        default=None,
        help="answer length limit of the wrapped backend, and the cap of a request's max_tokens",
    )
    ap.add_argument("--params", default=None, help="generation params as JSON (GenerationParams fields)")
    ap.add_argument("--backend-options", default=None, help='backend options as JSON, e.g. \'{"device": "cuda"}\'')
    ap.add_argument("--batch-size", type=int, default=None, help="most queries per backend batch")
    ap.add_argument("--max-wait-ms", type=float, default=5.0, help="how long a batch waits to fill")
    ap.add_argument("--latency-ms", type=float, default=0.0, help="injected latency per request")
    ap.add_argument("--faults", default=None, help='fault plan as JSON, e.g. \'{"429": [1, 2], "drop": ["#x"]}\'')
    ap.add_argument("--retry-after-s", type=float, default=1.0, help="Retry-After of injected 429s")
    ap.add_argument("--hang-s", type=float, default=300.0, help="how long an injected timeout holds a request")
    ap.add_argument("--reject-params", default="", help="comma list of fields answered with 400 Unsupported parameter")
    ap.add_argument("--announce", action="store_true", help=f"print {server.ANNOUNCE_PREFIX}<port> once bound")
    ap.add_argument("--log-level", default="warning")
    ap.add_argument(
        "--exit-with-parent",
        type=int,
        default=None,
        metavar="PID",
        help="exit when process PID (which holds our stdin pipe) ends; set by running_server",
    )
    args = ap.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    if args.exit_with_parent is not None:
        server.exit_with_parent(args.exit_with_parent)  # first: loading a large model takes minutes
    try:
        params = GenerationParams(**json.loads(args.params)) if args.params else GenerationParams()
        if args.max_new_tokens is not None:
            params = GenerationParams(**{**params.as_key(), "max_new_tokens": args.max_new_tokens})
        backend_options = json.loads(args.backend_options) if args.backend_options else {}
        faults = json.loads(args.faults) if args.faults else None
    except (ValueError, TypeError) as exc:
        print(f"error: bad JSON option: {exc}", file=sys.stderr)
        return 2
    try:
        server.serve(
            args.backend,
            args.model,
            host=args.host,
            port=args.port,
            params=params,
            backend_options=backend_options,
            announce=args.announce,
            log_level=args.log_level,
            served_model=args.served_model,
            latency_ms=args.latency_ms,
            faults=faults,
            retry_after_s=args.retry_after_s,
            hang_s=args.hang_s,
            batch_size=args.batch_size,
            max_wait_ms=args.max_wait_ms,
            reject_params=[p for p in args.reject_params.split(",") if p],
        )
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0
