"""The ``relzoo`` command: what relzoo publishes.

    relzoo list [--family san] [--json]     every variant: family, parameters, Hub repo, whether weights exist
    relzoo show VARIANT                     one variant's file (architecture, preprocessing, card metadata)
    relzoo segment / classify / app         few-shot models on your own images (see `relzoo segment --help`)
"""
from __future__ import annotations

import argparse
import json
import sys


def main(argv: list[str] | None = None) -> int:
    import relzoo  # noqa: F401  (registers the families)

    from .registry import families
    from .variants import list_models, load_variant

    parser = argparse.ArgumentParser(prog="relzoo", description="relzoo's published variants and its few-shot models on your images",
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    listing = commands.add_parser("list", help="every variant, its parameters, Hub repo and weights")
    listing.add_argument("--family", help="only this family: " + "; ".join(f"{f.name} = {f.title}"
                                                                          for f in families()))
    listing.add_argument("--json", action="store_true", help="JSON rows instead of a table")
    show = commands.add_parser("show", help="one variant's hub_configs file")
    show.add_argument("variant")
    from .app.commands import RUNNERS, add_parsers, run

    add_parsers(commands)
    args = parser.parse_args(argv)
    if args.command in RUNNERS:
        return run(args, parser)
    try:
        if args.command == "list":
            rows = list_models(args.family)
            if args.json:
                print(json.dumps(rows, indent=2))
                return 0
            header = f"{'variant':45s} {'family':16s} {'params':>12s}  {'Hub repo':50s} {'weights':10s} official weights"
            print(header)
            print("-" * len(header))
            for r in rows:
                official = "convertible (scripts/convert.py)" if r["convertible"] else "no converter"
                print(f"{r['variant']:45s} {r['family']:16s} {r['params']:>12,d}  {r['repo_id']:50s} "
                      f"{r['weights']:10s} {official}")
            return 0
        print(json.dumps(load_variant(args.variant), indent=2))
        return 0
    except ValueError as err:
        parser.exit(2, f"relzoo {args.command}: error: {err}\n")


if __name__ == "__main__":
    sys.exit(main())
