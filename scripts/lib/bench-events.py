#!/usr/bin/env python3
"""The events `kafka_load produce ... uniform` sends, written to files for
the embedded mode, which has no broker to produce to.

    bench-events.py ndjson EVENTS USERS FILE
        one event per line, for `pulsehub run --events FILE`
    bench-events.py chunks EVENTS USERS DIR SIZE
        JSON arrays of SIZE events, DIR/000000.json, ..., one body each for
        `POST /api/v1/events`

Same payloads, same users in the same order as host/examples/kafka_load.rs
(SplitMix64, same seed), so the embedded figure is measured on the same
workload as the Kafka one. Prints the last event's id and user id: the
bench waits for that event to show in that user's profile.
"""

import os
import sys

USER_AGENTS = [
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.0 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Linux; Android 14; SM-S918B) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.6099.144 Mobile Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_2) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.2 Safari/605.1.15",
]
BASE_MS = 1_795_000_000_000
SEED = 0x005E_ED0F_B37C_2A91
MASK = (1 << 64) - 1


def users(count, events):
    """kafka_load's SplitMix64 draws, one user number per event."""
    state = SEED
    for _ in range(events):
        state = (state + 0x9E37_79B9_7F4A_7C15) & MASK
        z = state
        z = ((z ^ (z >> 30)) * 0xBF58_476D_1CE4_E5B9) & MASK
        z = ((z ^ (z >> 27)) * 0x94D0_49BB_1331_11EB) & MASK
        yield (z ^ (z >> 31)) % max(count, 1)


def events(count, user_count):
    """(user id, payload) of each event, as kafka_load formats them."""
    for i, u in enumerate(users(user_count, count)):
        user = f"bench-u{u}"
        kind = "page_view" if i % 3 == 0 else "click"
        yield user, (
            f'{{"event_id":"bench-{i}","user_id":"{user}","event_type":"{kind}",'
            f'"timestamp":{BASE_MS + i},"user_agent":"{USER_AGENTS[u % len(USER_AGENTS)]}",'
            f'"url":"https://shop.example/p/{i % 97}","properties":{{"n":{i}}}}}'
        )


def main(args):
    if len(args) < 3 or int(args[1]) < 1:
        sys.exit(__doc__)
    if len(args) == 4 and args[0] == "ndjson":
        count, user_count, path = int(args[1]), int(args[2]), args[3]
        with open(path, "w", encoding="utf-8") as out:
            for user, payload in events(count, user_count):
                out.write(payload + "\n")
    elif len(args) == 5 and args[0] == "chunks":
        count, user_count, folder, size = int(args[1]), int(args[2]), args[3], int(args[4])
        os.makedirs(folder, exist_ok=True)
        chunk = []
        for i, (user, payload) in enumerate(events(count, user_count)):
            chunk.append(payload)
            if len(chunk) == size or i == count - 1:
                with open(os.path.join(folder, f"{i // size:06d}.json"), "w", encoding="utf-8") as out:
                    out.write("[" + ",".join(chunk) + "]")
                chunk = []
    else:
        sys.exit(__doc__)
    print(f"bench-{count - 1} {user}")


if __name__ == "__main__":
    main(sys.argv[1:])
