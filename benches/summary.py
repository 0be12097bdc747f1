#!/usr/bin/env python3
"""Per-event medians of the plugin benches, and the wasm/native ratios.

Run after `cargo bench --bench plugins`; reads criterion's estimates under
target/criterion and prints a Markdown table.
"""
import json
import pathlib
import sys

root = pathlib.Path(__file__).resolve().parent.parent / "target" / "criterion"
names = ["empty", "device-classifier", "page-view-counter", "last-active", "chain"]
batches = [1, 64, 256]


def per_event_ns(kind, name, batch):
    path = root / f"{kind}_{name}" / str(batch) / "new" / "estimates.json"
    if not path.exists():
        return None
    median = json.loads(path.read_text())["median"]["point_estimate"]
    return median / batch


def show(ns):
    return "-" if ns is None else (f"{ns / 1000:.2f} µs" if ns >= 1000 else f"{ns:.0f} ns")


if not root.exists():
    sys.exit(f"no criterion results under {root}; run `cargo bench --bench plugins` first")
print("| plugin | batch | wasm 0.2 per event | wasm 0.1 per event | native per event | 0.2/native | 0.1/0.2 |")
print("|---|---:|---:|---:|---:|---:|---:|")
for name in names:
    for batch in batches:
        wasm = per_event_ns("wasm", name, batch)
        old = per_event_ns("wasm-0.1", name, batch)
        native = per_event_ns("native", name, batch)
        ratio = f"{wasm / native:.1f}×" if wasm and native else "-"
        gain = f"{old / wasm:.1f}×" if wasm and old else "-"
        print(f"| {name} | {batch} | {show(wasm)} | {show(old)} | {show(native)} | {ratio} | {gain} |")
