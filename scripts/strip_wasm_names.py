#!/usr/bin/env python3
"""Drops the custom `name` section from a wasm module, in place.

    python3 scripts/strip_wasm_names.py WASM

Cargo's `strip = true` removes rustc's names, but wasm-bindgen writes a
name section of its own (about 11 KB: the debug names of its generated
adapters, e.g. "Closure(Closure { owned: true, ... })"). Names only label
stack frames; panics carry none anyway (panic = "abort"). Every other
section is copied byte for byte. Fails, leaving the file as it was, on
anything that does not parse as a wasm module.
"""

from __future__ import annotations

import sys

MAGIC = b"\0asm\x01\0\0\0"


def leb128(b: bytes, i: int) -> tuple[int, int]:
    """An unsigned LEB128 at i: (value, index after it)."""
    value = shift = 0
    for _ in range(5):  # a u32 is at most 5 bytes
        if i >= len(b):
            raise ValueError("truncated LEB128")
        byte = b[i]
        i += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return value, i
    raise ValueError("LEB128 longer than 5 bytes")


def strip_names(wasm: bytes) -> tuple[bytes, int]:
    """The module without its custom `name` sections, and the bytes dropped."""
    if not wasm.startswith(MAGIC):
        raise ValueError("not a wasm module (bad magic or version)")
    out = bytearray(MAGIC)
    i = len(MAGIC)
    dropped = 0
    while i < len(wasm):
        start = i
        section_id = wasm[i]
        size, body = leb128(wasm, i + 1)
        end = body + size
        if end > len(wasm):
            raise ValueError(f"section {section_id} at {start} runs past the end")
        if section_id == 0:
            name_len, name_at = leb128(wasm, body)
            if wasm[name_at : name_at + name_len] == b"name":
                dropped += end - start
                i = end
                continue
        out += wasm[start:end]
        i = end
    return bytes(out), dropped


def main() -> None:
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    path = sys.argv[1]
    with open(path, "rb") as f:
        wasm = f.read()
    try:
        stripped, dropped = strip_names(wasm)
    except ValueError as e:
        sys.exit(f"strip_wasm_names: {path}: {e}")
    with open(path, "wb") as f:
        f.write(stripped)
    print(f"strip_wasm_names: {path}: dropped {dropped} bytes of name section")


if __name__ == "__main__":
    main()
