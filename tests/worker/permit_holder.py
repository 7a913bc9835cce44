"""A process that takes registry pull permits, for the permit tests: run as a script.

``churn``: THREADS threads each take a permit ROUNDS times, and while holding it keep a file of
their own in DIR (created exclusively, removed before the release), so a test counts who is
really inside from the filesystem, not from anyone's counters. ``hold``: take one permit, print
its key, and hold it until killed.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
import uuid
from pathlib import Path

from tasks.bus import NatsBus
from tasks.settings import NatsSettings
from worker.permits import RegistryLimits, RegistryPermits


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=("churn", "hold"))
    parser.add_argument("--nats", required=True)
    parser.add_argument("--registry", required=True)
    parser.add_argument("--limit", type=int, required=True)
    parser.add_argument("--dir", type=Path)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--hold", type=float, default=0.2)
    args = parser.parse_args()
    bus = NatsBus(NatsSettings(url=args.nats))
    permits = RegistryPermits(
        bus, RegistryLimits(args.limit), f"holder-{os.getpid()}", max_wait=120
    )
    slots = threading.Semaphore(args.threads)
    if args.mode == "hold":
        permit = permits.acquire(args.registry, slots)
        print(permit.key, flush=True)
        while True:
            time.sleep(60)

    def churn() -> None:
        for _ in range(args.rounds):
            permit = permits.acquire(args.registry, slots)
            inside = args.dir / uuid.uuid4().hex
            inside.touch(exist_ok=False)
            time.sleep(args.hold)
            inside.unlink()
            slots.release()
            permit.release()

    threads = [threading.Thread(target=churn) for _ in range(args.threads)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    bus.close()
    print("done", flush=True)
    sys.exit(0)


if __name__ == "__main__":
    main()
