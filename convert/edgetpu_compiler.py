"""Run Coral's `edgetpu_compiler` on a bundle and parse what it reports.

The compiler is only distributed for x86-64 Debian/Ubuntu, from Coral's apt repository
(packages.cloud.google.com/apt, suite coral-edgetpu-stable, package edgetpu-compiler). Where it is
absent we say so in one line with the pre-flight verdict, and exit with our own code.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from edge.bundle import CPU_MODEL, EDGETPU_MODEL, Bundle, write_bundle
from edge.errors import EdgeError

COMPILER = "edgetpu_compiler"
INSTALL_HINT = (
    "install Coral's edgetpu-compiler on an x86-64 Debian/Ubuntu host (apt repository "
    "'deb https://packages.cloud.google.com/apt coral-edgetpu-stable main', then "
    "`sudo apt-get install edgetpu-compiler`) and rerun `edge compile` there"
)


class CompilerMissingError(EdgeError):
    """edgetpu_compiler is not on PATH (it only runs on x86-64 Debian)."""

    exit_code = 6


class CompilerFailedError(EdgeError):
    """edgetpu_compiler ran and refused the model."""

    exit_code = 7


_UNITS = {"B": 1, "KiB": 1024, "MiB": 1024**2, "GiB": 1024**3}
_FIELDS = {
    "compiler_version": (r"Edge TPU Compiler version\s+(\S+)", str),
    "compile_ms": (r"compiled successfully in\s+(\d+)\s*ms", int),
    "input_model": (r"^Input model:\s*(.+?)\s*$", str),
    "input_size": (r"^Input size:\s*(\S+)", "size"),
    "output_model": (r"^Output model:\s*(.+?)\s*$", str),
    "output_size": (r"^Output size:\s*(\S+)", "size"),
    "on_chip_memory_used": (r"On-chip memory used for caching model parameters:\s*(\S+)", "size"),
    "on_chip_memory_remaining": (r"On-chip memory remaining for caching model parameters:\s*(\S+)", "size"),
    "off_chip_memory_used": (
        r"Off-chip memory used for streaming uncached model parameters:\s*(\S+)",
        "size",
    ),
    "subgraphs": (r"Number of Edge TPU subgraphs:\s*(\d+)", int),
    "ops_total": (r"Total number of operations:\s*(\d+)", int),
    "ops_on_edgetpu": (r"Number of operations that will run on Edge TPU:\s*(\d+)", int),
    "ops_on_cpu": (r"Number of operations that will run on CPU:\s*(\d+)", int),
}
_TABLE_ROW = re.compile(r"^([A-Z][A-Z0-9_]+)\s+(\d+)\s+(\S.*?)\s*$")
MAPPED = "Mapped to Edge TPU"


def parse_size(text: str) -> int | None:
    """'6.08MiB' -> bytes; None when the text is not a size."""
    m = re.fullmatch(r"([\d.]+)\s*(B|KiB|MiB|GiB)", text.strip())
    return int(round(float(m.group(1)) * _UNITS[m.group(2)])) if m else None


def parse_compiler_log(text: str) -> dict:
    """The compiler's summary and per-operator table as a dict for manifest.edgetpu.

    Memory figures are kept as printed and in bytes. When every op maps, the compiler omits the
    "will run on Edge TPU / CPU" lines; we derive both counts from the operator table.
    """
    out: dict = {}
    for key, (pattern, kind) in _FIELDS.items():
        m = re.search(pattern, text, flags=re.MULTILINE)
        if not m:
            continue
        value = m.group(1)
        if kind == "size":
            out[key] = value
            out[f"{key}_bytes"] = parse_size(value)
        else:
            out[key] = kind(value)
    operators = []
    in_table = False
    for line in text.splitlines():  # the first table only (stdout and the .log file both carry it)
        if operators and not in_table:
            break
        if re.match(r"^\s*Operator\s+Count\s+Status", line):
            in_table = True
            continue
        if in_table:
            m = _TABLE_ROW.match(line.strip())
            if m:
                operators.append({"operator": m.group(1), "count": int(m.group(2)), "status": m.group(3)})
            elif line.strip() and operators:
                in_table = False
    out["operators"] = operators
    if operators:
        on_tpu = sum(r["count"] for r in operators if r["status"] == MAPPED)
        out.setdefault("ops_on_edgetpu", on_tpu)
        out.setdefault("ops_on_cpu", sum(r["count"] for r in operators) - on_tpu)
    return out


@dataclass
class CompileResult:
    log: dict
    edgetpu_bytes: bytes
    stdout: str


def find_compiler(name: str = COMPILER) -> str | None:
    return shutil.which(name)


def run_compiler(compiler: str, model_path: Path, timeout_s: int = 180) -> CompileResult:
    """`edgetpu_compiler -s -o TMP model.tflite`; returns the parsed log and the compiled model."""
    with tempfile.TemporaryDirectory(prefix="edgetpu-") as tmp:
        cmd = [
            compiler,
            "--show_operations",
            "--out_dir",
            tmp,
            "--timeout_sec",
            str(timeout_s),
            str(model_path),
        ]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s + 30)
        except subprocess.TimeoutExpired:
            raise CompilerFailedError(f"{compiler}: no answer within {timeout_s + 30} s") from None
        text = proc.stdout + "\n" + proc.stderr
        compiled = Path(tmp) / f"{model_path.stem}_edgetpu.tflite"
        log_file = Path(tmp) / f"{model_path.stem}_edgetpu.log"
        if proc.returncode != 0 or not compiled.exists():
            last = next((ln for ln in reversed(text.strip().splitlines()) if ln.strip()), "no output")
            raise CompilerFailedError(
                f"{compiler} failed on {model_path} (exit {proc.returncode}): {last.strip()}"
            )
        if log_file.exists() and "Operator" not in proc.stdout:  # without -s the table is only in the .log
            text += "\n" + log_file.read_text(errors="replace")
        log = parse_compiler_log(text)
        return CompileResult(log, compiled.read_bytes(), proc.stdout)


def compile_bundle(bundle: Bundle, compiler: str, preflight_summary: dict, timeout_s: int = 180) -> dict:
    """Compile model.tflite, add model_edgetpu.tflite (hash in the manifest) and manifest.edgetpu."""
    with tempfile.TemporaryDirectory(prefix="edgetpu-in-") as tmp:  # the verified bytes, not the file now
        model = Path(tmp) / CPU_MODEL
        model.write_bytes(bundle.model_bytes())
        result = run_compiler(compiler, model, timeout_s)
    manifest = bundle.manifest
    manifest.edgetpu = {"compiler": result.log, "preflight": preflight_summary, "model": EDGETPU_MODEL}
    write_bundle(bundle.path, {EDGETPU_MODEL: result.edgetpu_bytes}, manifest)
    return result.log
