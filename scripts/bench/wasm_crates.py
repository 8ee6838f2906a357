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


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("twiggy")
    p.add_argument("wasm")
    p.add_argument("--top", type=int, default=18)
    a = p.parse_args()
    out = subprocess.run(
        [a.twiggy, "top", "-n", "1000000", "-f", "csv", a.wasm], check=True, capture_output=True, text=True
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
    print("| crate | KB | share |")
    print("|---|---:|---:|")
    shown = 0
    for crate, size in sizes.most_common(a.top):
        shown += size
        print(f"| {crate} | {size / 1024:.1f} | {100 * size / total:.1f}% |")
    print(f"| (everything else) | {(total - shown) / 1024:.1f} | {100 * (total - shown) / total:.1f}% |")
    print(f"| **total without the name section** | {total / 1024:.1f} | 100% |")


if __name__ == "__main__":
    sys.exit(main())
