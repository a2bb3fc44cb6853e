"""Merge measured profiles (same target and device) into the shipped one in hw_profiles/.

    python tools/ship_profile.py /tmp/halp-fidelity/*-ort-cpu.json --out hw_profiles/ort-cpu.json

Profiles whose fingerprints differ are refused (a shipped profile describes one device).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("profiles", nargs="+")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    from halp_onnx.profiles.store import merge_tables, read_profile, write_profile

    merged = None
    for p in args.profiles:
        prof = read_profile(p)
        if merged is None:
            merged = prof
            merged.name = Path(args.out).stem
            continue
        if prof.match_key() != merged.match_key():
            print(f"{p}: measured on another device/runtime than {args.profiles[0]}; not merged", file=sys.stderr)
            return 2
        merge_tables(merged, prof)
    write_profile(merged, args.out)
    print(f"{args.out}: {len(merged.tables)} tables, {merged.measured_points} measured points")
    return 0


if __name__ == "__main__":
    sys.exit(main())
