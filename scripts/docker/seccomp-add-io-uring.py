#!/usr/bin/env python3
"""Writes a Docker seccomp profile that is the given one plus the three io_uring system calls.

Docker Engine >= 25 and containerd 2 leave io_uring_setup, io_uring_enter and io_uring_register
out of their default profiles, so ringfan's RINGFAN_DRIVER=auto falls back to epoll in a
container. This adds exactly those three calls and nothing else:

    scripts/docker/seccomp-add-io-uring.py default.json > seccomp-ringfan.json
    docker run --security-opt seccomp=seccomp-ringfan.json ... ringfan

default.json is the engine's default profile (profiles/seccomp/default.json in the moby source
of your engine's version).
"""
import json
import sys

IO_URING = ["io_uring_setup", "io_uring_enter", "io_uring_register"]


def main() -> int:
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    try:
        with open(sys.argv[1]) as f:
            profile = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        print(f"cannot read a seccomp profile from {sys.argv[1]}: {e}", file=sys.stderr)
        return 1
    rules = profile.setdefault("syscalls", [])
    allowed = {n for r in rules if r.get("action") == "SCMP_ACT_ALLOW" for n in r.get("names", [])}
    missing = [n for n in IO_URING if n not in allowed]
    if missing:
        rules.append({"names": missing, "action": "SCMP_ACT_ALLOW", "comment": "ringfan: io_uring"})
    json.dump(profile, sys.stdout, indent=2)
    print()
    print(f"added: {', '.join(missing) or 'nothing (already allowed)'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
