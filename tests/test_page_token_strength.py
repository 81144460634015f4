"""A page on the network needs a token worth the name (issue 24, item 5): a token of 16 blanks was
accepted for a 0.0.0.0 bind. Weak tokens are refused before anything starts, in one line naming the
key (exit 2), and the token itself is never printed."""

from __future__ import annotations

import json

import pytest

from tests.daemon_cli import edge_run


@pytest.mark.parametrize(
    "token,why",
    [
        (" " * 16, "blank or control characters"),
        ("\t" * 20, "blank or control characters"),
        ("lab token with spaces", "blank or control characters"),
        ("secret\x01secret\x01ab", "blank or control characters"),
        ("x" * 40, "1 different characters"),
        ("abababababababab", "2 different characters"),
        ("s3cret-tok", "this one has 10"),
    ],
    ids=["spaces", "tabs", "inner-spaces", "control", "one-char", "two-chars", "short"],
)
@pytest.mark.parametrize("how", ["env", "config"])
def test_a_weak_token_is_refused_for_a_network_bind(tiny_bundle, tmp_path, token, why, how):
    config = tmp_path / "edge-run.toml"
    config.write_text(
        '[http]\nlisten = "0.0.0.0:0"\n' + (f"token = {json.dumps(token)}\n" if how == "config" else "")
    )
    run = edge_run(
        "--bundle", tiny_bundle, "--config", config, "--db", tmp_path / "r.db", "--max-frames", "1",
        cwd=tmp_path, env={"EDGE_RUN_TOKEN": token} if how == "env" else None,
    )  # fmt: skip
    assert run.returncode == 2, run.stdout + run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        "error: http.token: a non-loopback bind (0.0.0.0) needs a token"
    )
    assert why in lines[0]
    if token.strip():
        assert token not in run.stderr + run.stdout
    assert not (tmp_path / "r.db").exists()


def test_a_strong_token_is_accepted(tiny_bundle, tmp_path):
    run = edge_run(
        "--bundle", tiny_bundle, "--source", "sim", "--http", "0.0.0.0:0", "--db", tmp_path / "r.db",
        "--max-frames", "2", cwd=tmp_path, env={"EDGE_RUN_TOKEN": "9f2c-lab-page-41d7"},
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
