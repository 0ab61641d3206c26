"""`make demo`: the whole pipeline on generated sample videos, ending with a published subset.

    python -m curate.demo --root demo_root            # pretrained CLIP ViT-B/32 (needs to download weights)
    python -m curate.demo --root demo_root --offline  # randomly initialised weights, recorded in the card
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m curate.demo", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", default="demo_root", help="dataset root to create (default: demo_root)")
    ap.add_argument("--offline", action="store_true",
                    help="use randomly initialised CLIP weights instead of downloading pretrained ones")
    ap.add_argument("--model", default="ViT-B-32", help="open_clip architecture (default ViT-B-32)")
    ap.add_argument("--weights", default="openai", help="open_clip pretrained tag, hub id or local path")
    args = ap.parse_args(argv)

    from rich.console import Console
    from rich.markup import escape

    from curate.console import RichProgress, print_result, status_table
    from curate.errors import CurateError, WeightsUnavailable
    from curate.pipeline import load_config, run_config
    from curate.samples import make_demo_inputs

    console = Console(stderr=True)
    root = Path(args.root).resolve()
    console.print(f"[bold]curate demo[/] -> {root}")
    sources = make_demo_inputs(root / "inputs")
    weights = "random" if args.offline else args.weights
    cfg = {
        "root": str(root),
        "sources": str(sources),
        "ingest": {"workers": 2},
        "split": {"detector": "content", "min_clip_s": 1.0, "max_clip_s": 5.0},
        "embed": [{"encoder": "clip", "options": {"model": args.model, "weights": weights}, "batch_size": 16}],
        "score": {},
        # random weights give meaningless similarities: offline, only the duration rule applies
        "filter": {"subset": "demo", "min_sim": None if args.offline else 0.2, "min_duration": 1.0},
        "publish": {"subset": "demo", "shard_size": 8},
    }
    cfg_path = root / "demo.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    try:
        run_config(load_config(cfg_path), RichProgress, on_result=print_result)
    except WeightsUnavailable as e:
        console.print(f"[bold red]The pretrained CLIP weights could not be loaded.[/] {escape(str(e))}\n\n"
                      "Without internet access the demo can continue only with randomly initialised weights, "
                      "and only if you ask for it: [bold]make demo OFFLINE=1[/] (the card then says 'weights: random').")
        return 1
    except CurateError as e:
        console.print(f"[bold red]error:[/] {escape(str(e))}")
        return 2
    status_table(root)
    card = root / "subsets" / "demo" / "README.md"
    console.print(f"\n[bold green]Published[/] {root / 'subsets' / 'demo'}  (card: {card})")
    for line in card.read_text().splitlines()[4:14]:
        console.print("  " + line)
    console.print(f"\nNext: curate status --root {root}; curate filter --root {root} --subset strict --min-sim 0.3; "
                  f"curate publish --root {root} --subset strict")
    return 0


if __name__ == "__main__":
    sys.exit(main())
