"""Options every pruning command shares: what stays dense, channel multiples, what a result may remove."""
from __future__ import annotations

import argparse
from typing import Any


def add_guard_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("guards")
    g.add_argument("--exclude", action="append", default=[], metavar="PATTERN",
                   help="keep dense the channel groups a node matching PATTERN produces or consumes "
                        "(node name or shell glob, e.g. 'head.*'; repeatable)")
    g.add_argument("--round-to", type=int, default=1, metavar="N",
                   help="kept channel counts are multiples of N (e.g. 8 for tensor cores; default 1)")
    g.add_argument("--min-params", type=float, default=0.25, metavar="SHARE",
                   help="warn when fewer than this share of the parameters is kept (default 0.25)")
    g.add_argument("--strict", action="store_true",
                   help="refuse (exit 2) a result a guard warns about: a removed branch, too few parameters")


def guard_kwargs(args: Any) -> dict[str, Any]:
    return {"exclude": tuple(args.exclude or ()), "round_to": args.round_to, "min_params": args.min_params,
            "strict": args.strict}
