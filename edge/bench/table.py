"""Terminal tables: one run at a glance (with field mode's per-frame and per-cell breakdown), a matrix of
runs, the op placement of --profile."""

from __future__ import annotations

from pathlib import Path

from edge.bench import STAGES, reference
from edge.bench.field import FIELD_STAGES
from edge.bench.field import TARGET as FIELD_TARGET

OVERHEAD_TARGET = 1.3
_COLUMNS = ("count", "min_ms", "p50_ms", "p90_ms", "p95_ms", "p99_ms", "max_ms", "mean_ms", "std_ms")


def _tables_ms(startup: dict) -> str:
    ms = startup.get("lab_tables_ms")  # absent in JSON written before it was recorded
    return f"LAB tables {_ms(ms)} ms  " if ms and ms >= 1 else ""


def _preprocess_path(ctx: dict) -> str:
    path = ctx.get("preprocess")  # absent in JSON written before it was recorded (--compare)
    if not path:
        return ""
    return "  LAB tables on" if path["lab_tables"] else "  LAB tables off"


def _region(r: dict) -> str:
    """How much of each frame is classified, as `edge run --region/--region-px` says it."""
    region = r.get("region")
    if not region:
        return ""
    if region.get("mode") == "field":
        return ", field mode: every white cell the detector finds"
    if region.get("px"):
        return f", centred {region['px']} px region"
    return (
        " (whole frame)"
        if region["fraction"] >= 1.0
        else f", centred region {region['fraction']:g} of the short side"
    )


def _ms(v) -> str:
    if v is None:
        return "-"
    return f"{v:.3f}" if v < 1 else f"{v:.2f}" if v < 100 else f"{v:.0f}"


def grid(header: list[str], rows: list[list[str]], left: int = 1) -> str:
    """Columns sized to their content; the first `left` columns left-aligned, the rest right-aligned."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]

    def line(cells):
        return "  ".join(
            str(c).ljust(w) if i < left else str(c).rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        )

    return "\n".join([line(header), "  ".join("-" * w for w in widths), *(line(r) for r in rows)])


def _threads(ctx: dict) -> str:
    return f"{ctx.get('threads')} thread{'s' if ctx.get('threads') != 1 else ''}"


def _line(label: str, text: str) -> str:
    return f"{label:<10}{text}"


def _header(r: dict) -> list[str]:
    """What ran where: bundle, device, runtime, source, start-up."""
    b, ctx, up = r["bundle"], r["context"], r["startup"]
    src = " ".join(str(v) for k, v in r["source"].items() if k in ("kind", "frame", "folder", "uri"))
    load = " ".join(str(v) for v in ctx.get("load_average") or []) or "?"
    return [
        _line(
            "bundle",
            f"{b['name']}  {b.get('architecture') or '?'} {b.get('precision') or ''} "
            f"{'x'.join(str(v) for v in b['input'][1:3])}  {b['model_size_mb']} MB  sha {b['sha256'][:12]}",
        ),
        _line(
            "device",
            f"{ctx['device']}  ({ctx['machine']}, {ctx['cores']} cores, "
            f"governor {ctx['governor'] or 'unknown'}, load {load})",
        ),
        _line(
            "runtime",
            f"{ctx['backend']}: {ctx['runtime']} {ctx['runtime_version']}, delegate {ctx['delegate']}, "
            f"{_threads(ctx)}   numpy {ctx['numpy']}  opencv {ctx['opencv']}{_preprocess_path(ctx)}",
        ),
        _line("source", f"{src}{_region(r)}   {r['runs']} runs after {r['warmup']} warm-up"),
        _line(
            "startup",
            f"bundle load {_ms(up['bundle_load_ms'])} ms  init {_ms(up['init_ms'])} ms  "
            f"{_tables_ms(up)}"
            f"first inference {_ms(up['first_inference_ms'])} ms  "
            f"warm-up invoke mean {_ms(up['warmup_invoke_mean_ms'])} ms",
        ),
    ]


def _verdict(r: dict) -> list[str]:
    """The overhead against its target, the frame rates and the resources."""
    s, res, ratio = r["stages"], r["resources"], r.get("overhead_ratio")
    target = (
        FIELD_TARGET if "field" in r else OVERHEAD_TARGET
    )  # field mode: over detector + classifier invoke
    verdict = "ok" if ratio is not None and ratio <= target else "ABOVE TARGET"
    return [
        _line(
            "result",
            f"end_to_end p50 {_ms(s['end_to_end']['p50_ms'])} ms = invoke p50 {_ms(s['invoke']['p50_ms'])} ms "
            f"x {ratio:.2f} overhead (target <= {target}: {verdict})"
            if ratio is not None
            else "-",
        ),
        _line(
            "fps",
            f"{r['throughput_fps']:.1f} sustained ({r.get('layout', 'threaded')} layout kept): "
            f"{r.get('threaded_fps', r['throughput_fps']):.1f} with a capture thread overlapping inference, "
            f"{r['serial_fps']:.1f} inline",
        ),
        _line(
            "memory",
            f"peak RSS {res['peak_rss_mb']} MB   CPU {res['cpu_percent_serial']}% serial, "
            f"{res['cpu_percent_pipelined']}% pipelined (100% = one core)",
        ),
    ]


def format_result(r: dict) -> str:
    s = r["stages"]
    table = grid(
        ["stage (ms)", "n", "min", "p50", "p90", "p95", "p99", "max", "mean", "std"],
        [
            [name, str(s[name]["count"]), *(_ms(s[name][c]) for c in _COLUMNS[1:])]
            for name in STAGES
            if name in s
        ],
    )
    out = [
        *_header(r),
        "",
        table,
        "",
        *_verdict(r),
        *format_reference(r.get("reference") or [], r),
        *(_line("warning", w) for w in r["context"].get("warnings") or []),
    ]
    if r.get("field"):
        out += ["", *format_field(r)]
    if r.get("profile"):
        out += ["", format_profile(r["profile"])]
    return "\n".join(out)


def format_field(r: dict) -> list[str]:
    f = r["field"]
    c = f["cells_per_frame"]
    s = f["stages"]
    rows = [
        [
            name,
            str(s[name]["count"]),
            *(
                _ms(s[name][k])
                for k in ("min_ms", "p50_ms", "p90_ms", "p95_ms", "p99_ms", "max_ms", "mean_ms")
            ),
        ]
        for name in FIELD_STAGES
    ]
    for name, v in f["per_cell"].items():
        rows.append(
            [
                f"per cell: {name}",
                str(v["count"]),
                *(_ms(v[k]) for k in ("min_ms", "p50_ms", "p90_ms", "p95_ms", "p99_ms", "max_ms", "mean_ms")),
            ]
        )
    ratio = f["overhead_ratio"]
    verdict = "ok" if ratio is not None and ratio <= FIELD_TARGET else "ABOVE FIELD_TARGET"
    d = f["detector"]
    return [
        _line(
            "field",
            f"detector {d['path']} ({'x'.join(map(str, d['input'][1:3]))}, sha {d['sha256'][:12]}, threshold "
            f"{d['threshold']:.3f}); {c['mean']:.2f} white cells per frame (max {c['max']}, none in "
            f"{c['frames_without']} of {c['frames']} frames); crop rule {f['crop_cell_fraction']:g}",
        ),
        "",
        grid(["field stage (ms)", "n", "min", "p50", "p90", "p95", "p99", "max", "mean"], rows),
        "",
        _line(
            "field",
            f"end_to_end p50 {_ms(s['end_to_end']['p50_ms'])} ms = (detector + classifier invoke) p50 "
            f"x {ratio:.2f} (goal <= {FIELD_TARGET}: {verdict}); x {f['overhead_ratio_per_cell_invoke']:.2f} over "
            f"detector invoke + classifier invoke per cell x cells per frame",
        ),
    ]


def format_reference(marks: list[dict], r: dict) -> list[str]:
    if not marks:
        b = r["bundle"]
        what = f"{r['context']['backend']} / {b.get('architecture') or b['name']}"
        return [_line("published", f"no reference number for this device / {what}")]
    lines = []
    for m in marks:
        rng = f"{m['low_ms']}" if m["low_ms"] == m["high_ms"] else f"{m['low_ms']}-{m['high_ms']}"
        lines.append(
            _line(
                "published",
                f"{m['board']}: {rng} ms; invoke p50 {_ms(m['measured_ms'])} ms "
                f"= {m['ratio']:.2f}x  {_reference_verdict(m)}",
            )
        )
        if m.get("checked") is False:
            lines.append(_line("", f"({m['caveat']})"))
    return lines


def _short_verdict(m: dict) -> str:
    return {None: "context", True: "ok", False: "OUTSIDE"}[m.get("within_tolerance")]


def _reference_verdict(m: dict) -> str:
    if m.get("within_tolerance") is None:  # another runtime or model: context, not a check
        return "for context"
    return f"within ±{m['tolerance']:.0%}" if m["within_tolerance"] else f"OUTSIDE ±{m['tolerance']:.0%}"


def format_matrix(results: list[dict]) -> str:
    rows, notes = [], []
    for r in results:
        if "error" in r:
            cfg = r["config"]
            notes.append(
                f"[{len(notes) + 1}] {cfg['runtime']}, {cfg['threads'] or 'default'} threads: {r['error']}"
            )
            rows.append(
                [
                    Path(cfg["bundle"]).name,
                    cfg["backend"],
                    cfg["runtime"],
                    str(cfg["threads"] or "-"),
                    f"unavailable [{len(notes)}]",
                    *[""] * 7,
                ]
            )
            continue
        ctx, s = r["context"], r["stages"]
        marks = r.get("reference") or []
        ref = "-" if not marks else " ".join(f"{m['ratio']:.2f}x {_short_verdict(m)}" for m in marks)
        rows.append(
            [
                r["bundle"]["name"],
                ctx["backend"],
                # the delegate or provider too: cpu-tflite (xnnpack) and onnx (cpu, tensorrt int8) side by side
                f"{ctx['runtime']} {ctx['runtime_version']} {ctx.get('delegate') or ''}".strip(),
                str(ctx["threads"]),
                _ms(s["invoke"]["p50_ms"]),
                _ms(s["preprocess"]["p50_ms"]),
                _ms(s["end_to_end"]["p50_ms"]),
                _ms(s["end_to_end"].get("p95_ms")),
                _ms(s["end_to_end"]["p99_ms"]),
                f"{r['overhead_ratio']:.2f}",
                f"{r['throughput_fps']:.1f}",
                ref,
            ]
        )
    header = [
        "bundle",
        "backend",
        "runtime",
        "threads",
        "invoke p50",
        "preproc p50",
        "e2e p50",
        "e2e p95",
        "e2e p99",
        "e2e/inv",
        "fps",
        "vs published",
    ]
    legend = (
        "(ms; fps = pipelined throughput; e2e/inv = overhead ratio; vs published = invoke p50 / reference,\n"
        " 'context' where the published figure is for another runtime or model: edge bench --list-references)"
    )
    return "\n".join([grid(header, rows, left=3), legend, *notes])


def format_profile(p: dict) -> str:
    lines = [_line("profile", p["note"])]
    if p.get("placement"):
        lines.append(
            f"          {p['ops_total']} ops: {p['ops_on_edgetpu']} on the Edge TPU, {p['ops_on_cpu_xnnpack']} on the CPU "
            f"through XNNPACK, {p['ops_on_cpu_builtin']} on the interpreter's built-in CPU kernels; "
            f"{p['macs_total'] / 1e6:.0f} M multiply-accumulates (a static count from tensor shapes, not a timing)"
        )
        rows = [
            [x["op"], x["runs_on"], str(x["count"]), f"{x['macs'] / 1e6:.1f}", f"{x['macs_share']:.0%}"]
            for x in p["placement"]
        ]
        lines.append(grid(["op", "runs on", "count", "M MACs", "share"], rows, 2))
    return "\n".join(lines)


def format_references() -> str:
    """The built-in published numbers (`edge bench --list-references`)."""
    rows = [
        [
            r.board,
            f"{r.backend}/{r.provider}" if r.provider else r.backend,
            f"{r.model} {r.size}",
            f"{r.low_ms}" if r.low_ms == r.high_ms else f"{r.low_ms}-{r.high_ms}",
            r.source,
        ]
        for r in reference.REFERENCES
    ]
    lines = [grid(["board", "backend", "model", "published invoke ms", "source"], rows, left=3)]
    lines += [f"{r.board}: {r.caveat}" for r in reference.REFERENCES if r.caveat]
    lines.append(
        f"a like-for-like figure (the same int8 model on the same kind of runtime) more than "
        f"{reference.TOLERANCE:.0%} away is marked OUTSIDE; the others are shown for context"
    )
    return "\n".join(lines)
