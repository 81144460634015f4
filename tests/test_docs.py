"""The documented steps, run as written (issue 23): what a clinic pastes must work."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

from edge.bundle import Bundle
from edge.daemon.config import load_config

ROOT = Path(__file__).resolve().parents[1]
# Steps that change the machine itself (packages, users, services): left out in a temporary root.
SYSTEM_STEPS = ("apt-get ", "python3 -m venv ", "/opt/edge-hemato/.venv/bin/pip ", "useradd ", "for g in ")
SYSTEM_STEPS += ("systemctl ", "journalctl ")


def code_block(doc: Path, heading: str) -> list[str]:
    """The command lines of the first ```sh block after `heading`, comments dropped."""
    text = doc.read_text()
    start = text.index(heading)
    block = text[text.index("```sh\n", start) + 6 : text.index("\n```", text.index("```sh\n", start))]
    return [line.split("  #")[0].strip() for line in block.splitlines() if line and not line.startswith("#")]


def in_root(line: str, root: Path) -> str:
    """A step with its absolute paths moved under `root`, and no owner (there is no edge-run user here)."""
    line = re.sub(r"(?<![\w./])/(var|etc|opt)/", lambda m: f"{root}/{m.group(1)}/", line)
    return line.replace("-o edge-run -g edge-run ", "")


def test_run_on_boot_steps_give_a_service_whose_bundles_load(tmp_path):
    # Issue 23: `cp -r models/differential-int8 /var/lib/edge-run/models/` ran before that folder existed,
    # so the bundle's files landed in models/ itself and the service could not find its bundle.
    root = tmp_path / "root"
    for folder in ("etc/systemd/system", "var/lib", "opt"):  # what a fresh Debian has
        (root / folder).mkdir(parents=True)
    steps = code_block(ROOT / "docs" / "daemon.md", "### Run on boot")
    ran = []
    for step in steps:
        if step.startswith(SYSTEM_STEPS):
            continue
        if step.startswith("systemd-analyze ") and shutil.which("systemd-analyze") is None:
            continue
        r = subprocess.run(["bash", "-c", in_root(step, root)], cwd=ROOT, capture_output=True, text=True)
        assert r.returncode == 0 and not r.stdout.strip(), f"{step}\n{r.stdout}{r.stderr}"
        ran.append(step.split()[0])
    config = load_config(root / "etc" / "edge-run" / "edge-run.toml")
    for named in (config.bundle, config.pipeline.field.detector):
        bundle = Bundle.load(in_root(named, root))
        assert bundle.path.name == Path(named).name
    assert (root / "etc" / "systemd" / "system" / "edge-run.service").is_file()
    assert ran.count("install") == 3 and "cp" in ran  # the file steps did run


def _doc_section(heading: str) -> str:
    text = (ROOT / "docs" / "daemon.md").read_text()
    start = text.index(heading)
    return text[start : text.index("\n## ", start)]


def test_the_clinics_signing_steps_work_as_documented(tiny_bundle, tmp_path):
    # Issue 23: trusted_keys and edge sign appeared only in --help. The documented steps, on the tiny
    # bundle: make a key, sign, list the key; the daemon names the signer, and refuses what the doc says.
    from tests.daemon_cli import edge_cli, edge_run

    doc = _doc_section("## Approved bundles only")
    made = edge_cli("sign", "--new-key", tmp_path / "clinic.key", cwd=tmp_path)
    assert made.returncode == 0 and "(keep it private)" in made.stdout
    public = made.stdout.split("public key (for trusted_keys): ")[1].strip()
    assert (tmp_path / "clinic.key").stat().st_mode & 0o777 == 0o600
    approved = tmp_path / "approved"
    shutil.copytree(tiny_bundle, approved)
    signed = edge_cli(
        "sign", approved, "--key", tmp_path / "clinic.key", "--signer", "Clinic X lab", cwd=tmp_path
    )
    assert signed.returncode == 0 and signed.stdout.startswith(f"signed {approved} as 'Clinic X lab' (key ")
    assert "signed by   'Clinic X lab'" in edge_cli("info", approved, cwd=tmp_path).stdout
    config = tmp_path / "edge-run.toml"
    # cell mode: the simulated microscope is a camera, which pipeline.mode "auto" counts in field mode,
    # and this signs the classifier only (the doc's field-mode step signs the detector too)
    config.write_text(f'trusted_keys = ["{public}"]\nbundle = "{approved}"\n[pipeline]\nmode = "cell"\n')
    run = edge_run("--config", config, "--max-frames", 2, "--http", "off", "--db", "r.db", cwd=tmp_path)
    assert run.returncode == 0 and "(tiny-cnn, signed by 'Clinic X lab')" in run.stderr, run.stderr
    refused = edge_run(
        "--config", config, "--bundle", tiny_bundle, "--max-frames", 1, "--http", "off", cwd=tmp_path
    )
    line = f"error: {tiny_bundle}: unsigned bundle, and this device only runs bundles signed by a trusted key"
    assert refused.returncode == 3 and refused.stderr.strip() == line
    assert line.split(": ", 2)[2] in doc
    manifest = approved / "manifest.json"
    data = json.loads(manifest.read_text())
    data["training"]["note"] = "edited"
    manifest.write_text(json.dumps(data))
    tampered = edge_run("--config", config, "--max-frames", 1, "--http", "off", cwd=tmp_path)
    assert tampered.returncode == 3
    assert tampered.stderr.strip().endswith(
        "the signature does not match manifest.json (changed after signing)"
    )
    assert "the signature does not match manifest.json (changed after signing)" in doc
