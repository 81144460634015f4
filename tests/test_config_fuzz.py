"""A fuzz of the daemon's config file (issue 24, item 7; issue 21): every wrong type, NaN, infinity,
negative, absurd size, unknown key and table given as a scalar, in every section, through the real
`edge run --config`. Each must be one line naming the key and exit 2: never a traceback, a run that
ignores it, or a crash (`pipeline.threads = 100000` segfaulted in the interpreter's thread pool).

The command line also gives `--max-frames`, as a user does: a flag must not paper over a section of
the file given as a scalar (`pipeline = 3` was silently ignored when a flag set a key inside it), and
it bounds the run of a case that is wrongly accepted. Each command line runs edge.cli.main in a fork
of one process that has imported it (`drive`), so that a crash ends only that case.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from edge.daemon.config import ConfigError, load_config

ALERT = {"name": '"blast"', "classes": '["myeloblast"]', "min_fraction": "0.2", "min_cells": "100"}

# (the key the error must name, the TOML value written there)
WRONG_TYPES = [
    ("bundle", "7"),
    ("trusted_keys", '"abc"'),
    ("source.uri", "5"),
    ("source.fps", '"fast"'),
    ("source.loop", '"yes"'),
    ("source.queue_size", "4.5"),
    ("source.max_pixels", "1.5e7"),
    ("source.picamera2.main_size", '"2028x1520"'),
    ("source.picamera2.lock_exposure", "1"),
    ("source.opencv.fourcc", "4"),
    ("source.folder.recursive", '"true"'),
    ("source.sim.classes", '"myeloblast"'),
    ("source.sim.seed", "1.5"),
    ("pipeline.mode", "1"),
    ("pipeline.threads", '"4"'),
    ("pipeline.region", "true"),
    ("pipeline.field.target_cells", '"100"'),
    ("store.db", "3"),
    ("store.max_db_mb", '"1 GB"'),
    ("archive.enabled", '"no"'),
    ("archive.alert_classes", '"myeloblast"'),
    ("http.listen", "8080"),
    ("differential.count_uncertain", "0"),
    ("differential.alerts[0].min_cells", "1.5"),
    ("mqtt.port", '"1883"'),
    ("mqtt.tls.enabled", '"yes"'),
]
NANS = [
    ("source.fps", "nan"),
    ("source.reconnect_max_s", "nan"),
    ("source.picamera2.analogue_gain", "nan"),
    ("source.opencv.fps", "nan"),
    ("pipeline.region", "nan"),
    ("pipeline.duration_s", "nan"),
    ("pipeline.field.threshold", "nan"),
    ("store.fsync_interval_s", "nan"),
    ("store.max_db_mb", "nan"),
    ("archive.min_free_mb", "nan"),
    ("differential.alerts[0].min_fraction", "nan"),
    ("mqtt.drain_s", "nan"),
]
INFINITIES = [
    ("source.fps", "inf"),
    ("source.picamera2.settle_s", "inf"),
    ("source.folder.poll_s", "-inf"),
    ("pipeline.duration_s", "inf"),
    ("pipeline.field.max_age_s", "inf"),
    ("store.max_db_mb", "inf"),
    ("archive.min_free_mb", "inf"),
    ("mqtt.reconnect_max_s", "inf"),
    ("mqtt.status_interval_s", "-inf"),
]
NEGATIVES = [
    ("source.fps", "-1.0"),
    ("source.queue_size", "-4"),
    ("source.reconnect_max_s", "-1.0"),
    ("source.picamera2.camera", "-1"),
    ("source.picamera2.exposure_time_us", "-1"),
    ("source.opencv.width", "-640"),
    ("source.sim.seed", "-1"),
    ("source.sim.prerender", "-1"),
    ("pipeline.threads", "-2"),
    ("pipeline.region_px", "-224"),
    ("pipeline.field.max_age_frames", "-1"),
    ("store.fsync_interval_s", "-1.0"),
    ("store.max_db_mb", "-1.0"),
    ("archive.min_free_mb", "-500.0"),
    ("archive.jpeg_quality", "-90"),
    ("differential.alerts[0].min_cells", "-100"),
    ("mqtt.port", "-1"),
    ("mqtt.differential_interval_s", "-1.0"),
]
ABSURD_SIZES = [
    ("pipeline.threads", "100000"),
    ("pipeline.region_px", "1000000"),
    ("pipeline.field.target_cells", "1000000000000"),
    ("source.queue_size", "100000"),
    ("source.max_pixels", "10000000000000"),
    ("source.fps", "1e9"),
    ("source.sim.width", "1000000"),
    ("source.sim.prerender", "1000000"),
    ("source.picamera2.main_size", "[100000, 100000]"),
    ("source.picamera2.colour_gains", "[1e9, 1e9]"),
    ("source.opencv.height", "1000000"),
    ("store.max_db_mb", "0.001"),  # below what a schema and one session need
    ("archive.jpeg_quality", "1000"),
    ("differential.alerts[0].min_cells", "1000000000000000"),
    ("mqtt.keepalive_s", "1000000000"),
    ("mqtt.max_inflight", "1000000"),
]
UNKNOWN_KEYS = [
    ("threads", "4"),
    ("source.fsp", "10"),
    ("source.picamera2.exposure", "1"),
    ("source.opencv.codec", '"MJPG"'),
    ("source.folder.poll", "1"),
    ("source.sim.speed", "2"),
    ("pipeline.thread", "4"),
    ("pipeline.field.max_age", "3"),
    ("store.path", '"x.db"'),
    ("archive.quality", "90"),
    ("http.port", "8080"),
    ("differential.alert", "[]"),
    ("differential.alerts[0].fraction", "0.2"),
    ("mqtt.hots", '"b"'),
    ("mqtt.tls.verify", "false"),
]
TABLES_AS_SCALARS = [
    ("source", "3"),
    ("pipeline", "3"),
    ("store", '"edge.db"'),
    ("archive", "false"),
    ("http", '"127.0.0.1:8080"'),
    ("differential", "1"),
    ("mqtt", '"broker"'),
    ("source.picamera2", "0"),
    ("source.opencv", '"0"'),
    ("source.folder", "1"),
    ("source.sim", "true"),
    ("pipeline.field", '"detector"'),
    ("mqtt.tls", "true"),
    ("differential.alerts", "3"),
    ("differential.alerts[0]", "3"),
]
CASES = [
    pytest.param(key, value, id=f"{kind}-{key}")
    for kind, cases in (
        ("type", WRONG_TYPES),
        ("nan", NANS),
        ("inf", INFINITIES),
        ("negative", NEGATIVES),
        ("absurd", ABSURD_SIZES),
        ("unknown", UNKNOWN_KEYS),
        ("scalar", TABLES_AS_SCALARS),
    )
    for key, value in cases
]


def _set(tree: dict, key: str, value: str) -> None:
    """Write the TOML literal `value` at `key`; `differential.alerts[0]...` becomes a one-rule list."""
    if key.startswith("differential.alerts[0]"):
        field = key.removeprefix("differential.alerts[0]").lstrip(".")
        rule = {**ALERT, field: value} if field else None
        inline = "{" + ", ".join(f"{k} = {v}" for k, v in rule.items()) + "}" if rule else value
        key, value = "differential.alerts", f"[{inline}]"
    *parents, leaf = key.split(".")
    node = tree
    for name in parents:
        node = node.setdefault(name, {})
    node[leaf] = value


def _toml(tree: dict, prefix: str = "") -> str:
    lines = [f"{k} = {v}" for k, v in tree.items() if not isinstance(v, dict)]
    for k, v in tree.items():
        if isinstance(v, dict):
            lines += [f"\n[{prefix}{k}]", _toml(v, f"{prefix}{k}.")]
    return "\n".join(lines)


def case_file(folder, bundle, key: str, value: str):
    """The config of one case: a runnable base (the test bundle, no page, a database of its own) with
    the case's value written over it (a scalar where the base has a table replaces the table)."""
    tree: dict = {}
    _set(tree, "bundle", f'"{bundle}"')
    _set(tree, "store.db", f'"{folder / "results.db"}"')
    _set(tree, "http.listen", '"off"')
    _set(tree, key, value)
    path = folder / "case.toml"
    path.write_text(_toml(tree) + "\n")
    return path


FLAGS = ["--max-frames", "2"]


def drive(jobs_file: str) -> None:
    """Run each job's `edge run` command line in a fork of this process, which has imported the CLI
    once: the real edge.cli.main, as `python -m edge.cli` calls it, with its exit status (a signal
    such as a segfault is negative) and stderr, without 111 interpreter start-ups on a busy machine.
    Each fork is single-use, limited to 3 GiB and 90 s, so a wrongly accepted case cannot hang the
    test or take the machine's memory."""
    import edge.cli
    import edge.commands.run  # noqa: F401 - imported once, before forking

    jobs = json.loads(Path(jobs_file).read_text())
    for job in jobs:
        pid = os.fork()
        if pid == 0:  # the child: one command line, then out without running the parent's cleanup
            code = 1
            try:
                os.chdir(job["cwd"])
                with open(job["stderr"], "w") as err, open(os.devnull, "w") as out:
                    os.dup2(err.fileno(), 2)
                    os.dup2(out.fileno(), 1)
                resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))
                signal.alarm(90)
                edge.cli.main(job["argv"])
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else int(exc.code is not None)
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        job["exit"] = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
    Path(jobs_file).write_text(json.dumps(jobs))


@pytest.fixture(scope="module")
def cli_runs(tiny_bundle, tmp_path_factory) -> dict:
    """(key, value) -> (exit status, stderr) of `edge run --config CASE --max-frames 2`."""
    root = tmp_path_factory.mktemp("fuzz")
    jobs = []
    for i, param in enumerate(CASES):
        folder = root / str(i)
        folder.mkdir()
        path = case_file(folder, tiny_bundle, *param.values)
        jobs.append(
            {
                "argv": ["run", "--config", str(path), *FLAGS],
                "cwd": str(folder),
                "stderr": str(folder / "err"),
            }
        )
    (root / "jobs.json").write_text(json.dumps(jobs))
    env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "EDGE_RUN_TOKEN")}
    env["OPENBLAS_NUM_THREADS"] = "1"  # no BLAS thread pool in the process that forks
    driver = subprocess.run(
        [sys.executable, __file__, str(root / "jobs.json")],
        capture_output=True,
        text=True,
        env=env,
        timeout=1200,
    )
    assert driver.returncode == 0, driver.stderr[-2000:]
    done = json.loads((root / "jobs.json").read_text())
    return {
        tuple(param.values): (job["exit"], Path(job["stderr"]).read_text())
        for param, job in zip(CASES, done, strict=True)
    }


def test_there_are_at_least_86_cases_covering_every_section():
    assert len(CASES) >= 86
    keys = {p.values[0] for p in CASES}
    for section in ("source", "pipeline", "store", "archive", "http", "differential", "mqtt"):
        assert sum(k.split(".")[0].split("[")[0] == section for k in keys) >= 3, section
    for table in ("picamera2", "opencv", "folder", "sim", "field", "tls", "alerts[0]"):
        assert any(f".{table}." in k or k.endswith(f".{table}") for k in keys), table


@pytest.mark.parametrize("key, value", CASES)
def test_a_bad_config_value_is_one_line_naming_the_key_and_exit_2(
    key, value, cli_runs, tiny_bundle, tmp_path
):
    # Through the real `edge run --config`, in a process of its own ...
    status, stderr = cli_runs[key, value]
    lines = stderr.splitlines()
    assert status == 2, f"exit {status}: {stderr[-600:]}"
    assert len(lines) == 1 and lines[0].startswith((f"error: {key}: ", f"error: {key}[")), stderr[-600:]
    assert "Input should" not in lines[0] and "pydantic" not in lines[0], lines[0]  # worded for a person
    # ... and in-process through the loader, as the command line calls it: the same line.
    with pytest.raises(ConfigError) as err:
        load_config(case_file(tmp_path, tiny_bundle, key, value), {"pipeline": {"max_frames": 2}})
    assert lines[0] == f"error: {err.value}"


if __name__ == "__main__":  # the driver of `cli_runs`
    drive(sys.argv[1])
