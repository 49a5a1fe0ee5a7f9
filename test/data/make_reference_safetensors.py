#!/usr/bin/env python3
"""Writes reference.safetensors for test/core/safetensors_test.cpp.

An independent writer: only the Python standard library (struct, json), following the format
specification of huggingface/safetensors (8-byte little-endian header length, JSON header, data).
The values are given by formulas that the test recomputes on its own.
Run from anywhere: python3 test/data/make_reference_safetensors.py
"""
import json
import math
import os
import struct


def bf16_bits(x):
    # The values below are exact in bf16, so the top 16 bits of the float32 are the bf16.
    return struct.unpack("<I", struct.pack("<f", x))[0] >> 16


def main():
    tensors = [
        # name, dtype, shape, packed little-endian bytes
        ("f32_matrix", "F32", [3, 4], struct.pack("<12f", *[i * 0.25 - 1.5 for i in range(12)])),
        ("f64_vector", "F64", [5], struct.pack("<5d", *[math.sin(i + 1) for i in range(5)])),
        ("bf16_matrix", "BF16", [2, 3],
         struct.pack("<6H", *[bf16_bits((i - 2.5) * 0.375) for i in range(6)])),
        ("empty_rows", "F32", [0, 3], b""),
        ("i32_cube", "I32", [2, 2, 2], struct.pack("<8i", *[i * 7 - 20 for i in range(8)])),
    ]
    header = {"__metadata__": {"format": "pt", "source": "make_reference_safetensors.py"}}
    data = b""
    for name, dtype, shape, raw in tensors:
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    # The header lists the tensors in reverse data order: readers must not rely on key order.
    ordered = {"__metadata__": header["__metadata__"]}
    for name, _, _, _ in reversed(tensors):
        ordered[name] = header[name]
    text = json.dumps(ordered, separators=(",", ":")).encode("utf-8")
    text += b" " * ((8 - len(text) % 8) % 8)
    out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "reference.safetensors")
    with open(out, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        f.write(data)


if __name__ == "__main__":
    main()
