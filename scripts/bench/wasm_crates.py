#!/usr/bin/env python3
"""What the wasm code is made of, by crate, for scripts/bench.sh (section `code`).

  wasm_crates.py TWIGGY WASM [--top N]
      Runs `twiggy top` (CSV) on WASM, which must keep its name section
      (a build with strip = false), and sums the shallow size of every
      function by the crate its demangled name starts with (`<T as
      crate::Trait>` impls count for the crate of T). Data segments are
      one row; the name section itself (not shipped: release strips it) is
      left out. Generated protobuf code is split into prost's and pbjson's
      (the JSON decoders/encoders). Prints a markdown table: crate, KB, share.

  wasm_crates.py TWIGGY WASM --compare LABEL=OTHER_WASM
      The same for two builds side by side, with the difference.
"""

from __future__ import annotations

import argparse
import csv
import io
import re
import subprocess
import sys
from collections import Counter

# Names that are not a crate path.
DATA = re.compile(r"^data\[|^\.rodata|^data segment")
PATH = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)(?:\[[0-9a-f]+\])?::")
SERDE = re.compile(r"serde(_core)?::(de|ser)::|pbjson")


def crate_of(name: str) -> str:
    if "function names" in name or name.startswith(('"', "custom section")):
        return "(name section: not code, only in strip=false builds)"
    if DATA.search(name):
        return "(data segments: strings, tables, embedded state)"
    n = name.lstrip("<&*").removeprefix("mut ").removeprefix("dyn ")
    if n.startswith("["):
        n = n.lstrip("[")
    m = PATH.match(n)
    if m:
        crate = m.group(1)
        # Generated message code: prost's, or pbjson's serde impls (JSON).
        if n.startswith("edgeflag::proto::") or "edgeflag::proto::" in name.split(" as ")[0]:
            return "edgeflag::proto, serde (pbjson JSON decoders/encoders)" if SERDE.search(name) else "edgeflag::proto (prost)"
        return "std/core/alloc" if crate in ("core", "alloc", "std") else crate
    if n.startswith(("table[", "elem[", "type[", "import ", "export ", "global[", "memory[")):
        return "(wasm tables, types, imports, exports)"
    if n.startswith("code["):
        return "(unnamed functions)"
    if n.startswith(("__wbg", "__wbindgen", "__externref", "wasm_bindgen")):
        return "wasm_bindgen"
    return "(other: " + (n.split(" ", 1)[0][:24]) + ")"


def by_crate(twiggy: str, wasm: str) -> tuple[Counter[str], int]:
    out = subprocess.run(
        [twiggy, "top", "-n", "1000000", "-f", "csv", wasm], check=True, capture_output=True, text=True
    ).stdout
    sizes: Counter[str] = Counter()
    total = 0
    for row in csv.DictReader(io.StringIO(out)):
        size = int(row["ShallowSize"])
        crate = crate_of(row["Name"])
        if crate.startswith("(name section"):
            continue  # not in the shipped (stripped) wasm
        total += size
        sizes[crate] += size
    return sizes, total


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("twiggy")
    p.add_argument("wasm")
    p.add_argument("--top", type=int, default=18)
    p.add_argument("--compare", metavar="LABEL=WASM", help="a second build: its column and the difference")
    a = p.parse_args()
    sizes, total = by_crate(a.twiggy, a.wasm)
    if not a.compare:
        print("| crate | KB | share |")
        print("|---|---:|---:|")
        shown = 0
        for crate, size in sizes.most_common(a.top):
            shown += size
            print(f"| {crate} | {size / 1024:.1f} | {100 * size / total:.1f}% |")
        print(f"| (everything else) | {(total - shown) / 1024:.1f} | {100 * (total - shown) / total:.1f}% |")
        print(f"| **total without the name section** | {total / 1024:.1f} | 100% |")
        return
    label, _, other = a.compare.partition("=")
    if not other:
        sys.exit("--compare wants LABEL=WASM")
    osizes, ototal = by_crate(a.twiggy, other)
    kb = lambda n: f"{n / 1024:.1f}"  # noqa: E731
    print(f"| crate | KB | {label} KB | difference KB |")
    print("|---|---:|---:|---:|")
    # The crates either build has most of, so the difference shows.
    crates = sorted(set(sizes) | set(osizes), key=lambda c: -max(sizes[c], osizes[c]))[: a.top]
    shown = oshown = 0
    for crate in crates:
        shown += sizes[crate]
        oshown += osizes[crate]
        print(f"| {crate} | {kb(sizes[crate])} | {kb(osizes[crate])} | {kb(sizes[crate] - osizes[crate])} |")
    rest, orest = total - shown, ototal - oshown
    print(f"| (everything else) | {kb(rest)} | {kb(orest)} | {kb(rest - orest)} |")
    print(f"| **total without the name section** | {kb(total)} | {kb(ototal)} | {kb(total - ototal)} |")


if __name__ == "__main__":
    main()
