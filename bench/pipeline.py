"""The whole offline default, cold and cached: wall time, peak memory, Prefect's overhead.

Runs ``python flows/main.py`` exactly as a user does (a fresh storage folder for the cold run,
the same folder again for the cached one), against a Prefect server this script starts on
loopback so that the runs' timings can be read back from its API afterwards:

- wall: the command, from start to exit (imports, checks and the flow);
- flow: the pipeline flow run, from its start to its end;
- task bodies: the running time of every task run and inpainting subflow run of that flow;
- Prefect overhead: flow minus task bodies (orchestration, state changes, caching, artifacts);
- per stage: the running time of each stage's task runs (the inpainting stage: planning, its
  batch subflows and collecting), as a table;
- peak RSS: the largest resident memory of the command's process; and the peak of its process
  tree's proportional set size (PSS: pages shared between processes, as in a child just forked,
  counted once in all, not once per process).

Prints a table and writes bench/results/pipeline.json.

    python bench/pipeline.py [--repeats 1] [--set KEY=VALUE ...]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
from results_file import save

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(home: Path, env: dict[str, str]) -> subprocess.Popen:
    port = free_port()
    env["PREFECT_API_URL"] = f"http://127.0.0.1:{port}/api"
    log = open(home / "server.log", "w")  # noqa: SIM115 (lives as long as the server)
    server = subprocess.Popen(
        [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
         "--port", str(port)],
        env=env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    import urllib.request

    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"{env['PREFECT_API_URL']}/health", timeout=2)
            return server
        except OSError:
            time.sleep(0.5)
    server.kill()
    raise RuntimeError(f"the Prefect server did not start; see {home / 'server.log'}")


def run_pipeline(storage: Path, overrides: list[str], env: dict[str, str]) -> dict:
    command = [sys.executable, "flows/main.py", "--storage", str(storage)]
    command += [arg for o in overrides for arg in ("--set", o)]
    peak_tree, breakdown = 0, {}  # PSS
    start = time.perf_counter()
    process = psutil.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                           stderr=subprocess.DEVNULL)  # fmt: skip
    done = threading.Event()

    def watch() -> None:
        nonlocal peak_tree, breakdown
        while not done.is_set():
            try:
                tree = {p: p.memory_full_info().pss for p in [process, *process.children(True)]}
            except psutil.Error:
                continue
            if sum(tree.values()) > peak_tree:
                peak_tree = sum(tree.values())
                breakdown = {f"{p.pid} {' '.join(p.cmdline()[1:3])[:60]}": round(pss / 2**30, 2)
                             for p, pss in tree.items()}  # fmt: skip
            time.sleep(0.2)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - start
    done.set()
    watcher.join()
    out = process.stdout.read().decode()
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"the pipeline failed:\n{out[-2000:]}")
    summary = json.loads(out[out.index("{") :])
    return {
        "wall_s": wall,
        "peak_rss_gib": usage.ru_maxrss / 2**20,  # kilobytes on Linux
        "peak_tree_pss_gib": peak_tree / 2**30,
        "peak_tree_processes_gib": breakdown,
        "roc_auc": summary["roc_auc"],
        "run_id": summary["run_id"],
    }


def flow_timings(env: dict[str, str]) -> dict:
    """Flow, task-body and overhead seconds of the latest pipeline flow run on the server."""
    os.environ["PREFECT_API_URL"] = env["PREFECT_API_URL"]
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowFilter,
        FlowFilterName,
        FlowRunFilter,
        FlowRunFilterId,
        FlowRunFilterParentFlowRunId,
    )
    from prefect.client.schemas.sorting import FlowRunSort

    with get_client(sync_client=True) as client:
        (pipeline,) = client.read_flow_runs(
            flow_filter=FlowFilter(name=FlowFilterName(any_=["deepfake-pipeline"])),
            sort=FlowRunSort.START_TIME_DESC,
            limit=1,
        )
        tasks = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[pipeline.id]))
        )
        subflows = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[pipeline.id])
            )
        )
    flow_s = (pipeline.end_time - pipeline.start_time).total_seconds()
    # A subflow run also appears as a placeholder task run of its parent: count its body once.
    placeholders = {r.parent_task_run_id for r in subflows}
    stages: dict[str, float] = {}
    for t in tasks:
        if t.id not in placeholders:
            name = STAGE_OF.get(t.name.rsplit("-", 1)[0], t.name.rsplit("-", 1)[0])
            stages[name] = stages.get(name, 0.0) + t.total_run_time.total_seconds()
    batches = sum(r.total_run_time.total_seconds() for r in subflows)
    stages["inpainting"] = stages.get("inpainting", 0.0) + batches
    bodies = sum(stages.values())
    return {
        "flow_s": flow_s,
        "task_bodies_s": bodies,
        "prefect_overhead_s": flow_s - bodies,
        "task_runs": len(tasks) - len(placeholders),
        "subflow_runs": len(subflows),
        "stages_s": {name: round(s, 2) for name, s in stages.items()},
    }


# Task names (without their run suffix) -> the stage they belong to.
STAGE_OF = {
    "fingerprint-sources": "sources",
    "prepare-sources": "sources",
    "make-masks": "masks",
    "plan-inpainting": "inpainting",
    "collect-inpainting": "inpainting",
    "split-dataset": "split",
    "extract-features": "features",
    "extract-frozen-features": "features",
    "train-detector": "detector",
    "train-frozen-detector": "detector",
    "evaluate-detector": "evaluation",
    "publish-run": "publish",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--keep", action="store_true", help="keep the storage folder")
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="bench-pipeline-"))
    env = {**os.environ, "PREFECT_HOME": str(home / "prefect"),
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}  # fmt: skip
    server = start_server(home, env)
    try:
        rows = {}
        for name in ("cold", "cached"):
            row = run_pipeline(home / "storage", args.overrides, env)
            row.update(flow_timings(env))
            rows[name] = row
            print(
                f"{name:6s} wall {row['wall_s']:6.1f} s  flow {row['flow_s']:6.1f} s  "
                f"task bodies {row['task_bodies_s']:6.1f} s  Prefect overhead "
                f"{row['prefect_overhead_s']:5.1f} s  peak RSS {row['peak_rss_gib']:.2f} GiB "
                f"(tree PSS {row['peak_tree_pss_gib']:.2f} GiB)  ROC-AUC {row['roc_auc']:.4f}",
                flush=True,
            )
        stages = sorted({s for row in rows.values() for s in row["stages_s"]},
                        key=lambda s: -rows["cold"]["stages_s"].get(s, 0))  # fmt: skip
        print(f"\n| stage | {' | '.join(f'{n} (s)' for n in rows)} |")
        print(f"|---|{'---|' * len(rows)}")
        for s in stages:
            cells = " | ".join(f"{row['stages_s'].get(s, 0):.1f}" for row in rows.values())
            print(f"| {s} | {cells} |")
    finally:
        server.terminate()
        server.wait(timeout=30)
        if not args.keep:
            shutil.rmtree(home, ignore_errors=True)
    save(
        "pipeline",
        {
            "overrides": args.overrides,
            "note": "the Prefect server runs beside the pipeline (not counted in its RSS); without "
            "PREFECT_API_URL the command starts a temporary one itself (about 7-10 s more wall)",
            "runs": rows,
        },
    )


if __name__ == "__main__":
    main()
