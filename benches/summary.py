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
print("| plugin | batch | wasm per event | native per event | wasm/native |")
print("|---|---:|---:|---:|---:|")
for name in names:
    for batch in batches:
        wasm = per_event_ns("wasm", name, batch)
        native = per_event_ns("native", name, batch)
        ratio = f"{wasm / native:.1f}×" if wasm and native else "-"
        print(f"| {name} | {batch} | {show(wasm)} | {show(native)} | {ratio} |")

# The prototype of the batch-shaped world 0.2 (benches/abi_probe.rs), beside
# the same plugins under 0.1, when it was measured.
if (root / "abi-0.2_empty").exists():
    print()
    print("| plugin | batch | 0.1 per event | 0.2 prototype per event | 0.1/0.2 |")
    print("|---|---:|---:|---:|---:|")
    for name in ["empty", "page-view-counter"]:
        for batch in batches:
            old = per_event_ns("wasm", name, batch)
            new = per_event_ns("abi-0.2", name, batch)
            ratio = f"{old / new:.1f}×" if old and new else "-"
            print(f"| {name} | {batch} | {show(old)} | {show(new)} | {ratio} |")
    three = per_event_ns("abi-0.2", "three-empty-one-arena", 256)
    if three is not None:
        print()
        print(f"Three empty 0.2 instances over one arena (a chain's boundary), batch 256: {show(three)} per event.")
