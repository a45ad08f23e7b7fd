"""Redis's own cost of one decide.lua call, this tree's scripts against another commit's: the same customer state,
the same EVALSHA (a request_id each, so the answer is remembered too), pipelined 1,000 at a time on one fresh
redis-server; Redis's time inside the command (INFO commandstats usec_per_call) and its process CPU (/proc) per
call, rounds interleaved. Without the server's Python and the network in the figure, a change to the scripts shows
even on a noisy machine (quote medians of many rounds).

    python bench/script_cost.py --against b838565 --rounds 9
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import tempfile
from pathlib import Path

import redis
from run import Processes, start_redis

REPO = Path(__file__).resolve().parent.parent
ENGINE = "server/creditgate/server/engine"
# decide.lua as scripts.py builds it: lib.lua, then the decision, then the script calling it.
PARTS = ("lib", "decide_one", "decide")
CUSTOMER = ["cg:c", "cg:b", "cg:u", "", "cg:o", "cg:h", "cg:bo", "cg:bx"]  # the request key is per call
RULES = '{"basic":[1,0,0,"",-1,0]}'  # one credit per unit, no free units, no cap, no overage, no threshold


def script_at(commit: str | None) -> str:
    """decide.lua's source in this tree (None) or at `commit`."""
    if commit is None:
        return "\n".join((REPO / ENGINE / f"{part}.lua").read_text() for part in PARTS)
    shown = [["git", "-C", str(REPO), "show", f"{commit}:{ENGINE}/{part}.lua"] for part in PARTS]
    return "\n".join(subprocess.run(argv, capture_output=True, text=True, check=True).stdout for argv in shown)


def fresh_customer(client: redis.Redis) -> None:
    """An active customer in epoch e1 with one grant big enough for every round (key layout 3)."""
    client.flushall()
    credits = 10**12
    client.hset(
        "cg:c",
        mapping={"id": "cg", "plan": "basic", "status": "active", "period_end": 2**50, "period_start": 0, "seq": 0,
                 "ep": "e1", "bucket_credits": credits},
    )  # fmt: skip
    client.hset("cg:b", "b1", f"{credits}|10|0|grant")
    client.zadd("cg:bo", {"010999999999999999000000000001": 0})


def redis_cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def one_round(client: redis.Redis, pid: int, sha: str, calls: int, tag: str) -> dict[str, float]:
    fresh_customer(client)
    client.config_resetstat()
    before = redis_cpu_seconds(pid)
    for start in range(0, calls, 1000):
        pipe = client.pipeline(transaction=False)
        for n in range(start, min(calls, start + 1000)):
            request_id = f"{tag}-{n}"
            keys = [*CUSTOMER[:3], f"cg:r:{request_id}", *CUSTOMER[4:]]
            args = [1000, "cg", "email_unlock", 1, RULES, "", "0", request_id, "fp", 60, "{}", "e1"]
            pipe.evalsha(sha, len(keys), *keys, *args)
        pipe.execute()
    stats = client.info("commandstats")["cmdstat_evalsha"]
    return {
        "command_us": float(stats["usec_per_call"]),
        "process_cpu_us": (redis_cpu_seconds(pid) - before) / calls * 1e6,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--against", required=True, help="the commit whose decide.lua is the baseline")
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--calls", type=int, default=10_000, help="decisions per round and version")
    parser.add_argument("--out", type=Path)
    options = parser.parse_args()
    versions = {options.against: script_at(options.against), "this tree": script_at(None)}
    rounds: dict[str, list[dict[str, float]]] = {name: [] for name in versions}
    with tempfile.TemporaryDirectory() as workdir:
        processes = Processes(Path(workdir))
        try:
            port, process = start_redis(processes, Path(workdir), "redis")
            if len(os.sched_getaffinity(0)) >= 2:
                # Redis on one core and this client on another: neither waits for the other's time slice.
                os.sched_setaffinity(process.pid, {1})
                os.sched_setaffinity(0, {0})
            client = redis.Redis(port=port, protocol=2)
            shas = {name: client.script_load(source) for name, source in versions.items()}
            for n in range(options.rounds):
                for name, sha in shas.items():
                    rounds[name].append(one_round(client, process.pid, sha, options.calls, f"{n}"))
        finally:
            processes.stop_all()
    result = {
        name: {
            "rounds": runs,
            "median_command_us": statistics.median(run["command_us"] for run in runs),
            "median_process_cpu_us": statistics.median(run["process_cpu_us"] for run in runs),
        }
        for name, runs in rounds.items()
    }
    for name, figures in result.items():
        print(
            f"{name}: decide.lua {figures['median_command_us']:.1f} us in the command,"
            f" {figures['median_process_cpu_us']:.1f} us Redis CPU per call (medians of {options.rounds} rounds)"
        )
    if options.out:
        options.out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
