"""Secrets and PII: every rule redacts to a typed placeholder; nothing is ever echoed.

    HF_HUB_OFFLINE=1 python -m pytest -q tests/test_data_secrets.py
"""

from __future__ import annotations

import random

import pytest

from ech0.data.pii import find_pii, iban_ok, luhn_ok
from ech0.data.redact import Redactor
from ech0.data.secrets import RULE_NAMES, find_secrets


def _secret_value(text: str) -> str:
    """The longest whitespace-free run in a planted sample (what must never be echoed)."""
    return max(text.replace('"', " ").replace("'", " ").replace("=", " ").split(), key=len)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_every_rule_detects_its_secret(seed, data_hygiene):
    samples = data_hygiene.fake_secrets(random.Random(seed))
    assert {r for r, _ in samples} == set(RULE_NAMES)  # a sample for every rule in the table
    for rule, text in samples:
        red = Redactor()
        out = red(text)
        assert f"<SECRET:{rule}>" in out, (rule, out)
        assert _secret_value(text) not in out


def test_false_positive_filters(data_hygiene):
    clean = [
        "commit 3f2a9c1d8e7b6a5f4e3d2c1b0a9f8e7d6c5b4a39 fixed it",  # hex: no generic entropy hit
        "uuid 550e8400-e29b-41d4-a716-446655440000",
        "sha256 " + "ab12" * 16,
        "the password field is required; password: <your password here>",
        "token = tokenizer(text); api_key = os.environ['API_KEY']",
        "password = ${DB_PASSWORD} and secret: ********",
        "max_tokens: 4096000 and the key is important",
        "src/components/MyWidgetFactory/index.tsx",
        "ThisIsAVeryLongCamelCaseIdentifierName",
        "see https://example.com/path?query=1 and ftp://files.example.com/pub",
        "version 3.11.2 released on 2024-01-15 at 10:30",
    ]
    for t in clean:
        assert find_secrets(t) == [], t
    g = data_hygiene.Gen(3)
    fp = sum(1 for i in range(500) if find_secrets(g.row(i)["completion"]))
    assert fp <= 5  # <= 1% of clean synthetic rows


def test_pii_types_and_negatives(data_hygiene):
    for kind, text in data_hygiene.fake_pii(random.Random(0)):
        assert [t for *_, t in find_pii(text)] == [kind if kind != "IP" else "IP"], (kind, text)
    assert find_pii("NI number AB 12 34 56 C")[0][2] == "NATIONAL_ID"
    assert find_pii("ip6 2a02:c7f:1234:5600::8a2e:370:7334 ok")[0][2] == "IP"
    assert find_pii("ip6 2001:db8::8a2e:370:7334 ok") == []  # documentation range: not a person's
    assert find_pii("(415) 555-0199")[0][2] == "PHONE"
    for t in ["version 1.2.3", "on 2024-01-15", "costs $1,234.56", "call me maybe", "4111 1111 1111 1112",
              "12:30:45", "a = b[1:3]", "order 1234567890", "GB82 WEST 1234 5698 7654 33"]:
        assert find_pii(t) == [], t
    assert luhn_ok("4111111111111111") and not luhn_ok("4111111111111112")
    assert iban_ok("GB82WEST12345698765432") and not iban_ok("GB82WEST12345698765433")


def test_redaction_in_outputs_rejects_and_manifest(home, tmp_path, make_row, write_jsonl, read_jsonl, data_main,
                                                   data_hygiene):
    rng = random.Random(5)
    samples = data_hygiene.fake_secrets(rng)
    rows = [make_row(f"please use {s}", "ok", metadata={"note": s}) for _, s in samples]
    bad = [f'{{"prompt": "{samples[0][1]}", "completion": 1}}\n',  # wrong type: a reject
           f'{{"prompt": "{dict(samples)["github_token"]}", "compl\n']  # invalid JSON: a raw-text reject
    p = write_jsonl(tmp_path / "in.jsonl", rows, bad)
    code, out, err = data_main("validate", "--input", str(p), "--name", "s", "--no-progress")
    assert code == 0, err
    blobs = [(home / "data/clean/s.jsonl").read_text(), (home / "data/clean/s.rejects.jsonl").read_text(),
             (home / "metadata/s.clean.manifest.json").read_text(), out, err]
    for _, s in samples:
        v = _secret_value(s)
        for b in blobs:
            assert v not in b, v
    kept = read_jsonl(home / "data/clean/s.jsonl")
    assert all("<SECRET:" in r["prompt"] and "<SECRET:" in r["metadata"]["note"] for r in kept)
    m = __import__("json").loads(blobs[2])
    assert sum(v for k, v in m["redactions"].items() if k.startswith("secret:")) >= 2 * len(samples)


def test_fail_on_secrets_cli(home, tmp_path, make_row, write_jsonl, data_cli, data_hygiene):
    s = dict(data_hygiene.fake_secrets(random.Random(9)))["github_token"]
    p = write_jsonl(tmp_path / "in.jsonl", [make_row(), make_row(f"token {s}"), make_row("mail bob@example.com")])
    r = data_cli("--input", str(p), "--stage", "processed", "--dedupe", "--fail-on-secrets",
                 script="scripts/validate_dataset.py")
    assert r.returncode == 3
    assert r.stderr.count("\n") == 1 and "line 2" in r.stderr and "github_token" in r.stderr
    assert _secret_value(s) not in r.stderr + r.stdout and "Traceback" not in r.stderr
    assert not (home / "data/processed/in.jsonl").exists()
    assert not list(home.glob("metadata/*.json")), "no manifest (only the dataset's lock files)"
    # no secret -> exit 0 (PII alone does not fail the gate; it is redacted)
    q = write_jsonl(tmp_path / "ok.jsonl", [make_row(), make_row("mail bob@example.com")])
    r = data_cli("validate", "--input", str(q), "--stage", "processed", "--fail-on-secrets")
    assert r.returncode == 0, r.stderr
    assert "<EMAIL>" in (home / "data/processed/ok.jsonl").read_text()


def test_redaction_is_idempotent():
    """The processed stage re-scans clean rows: its own placeholders must not read as new secrets."""
    from ech0.data.redact import Redactor

    r = Redactor()
    once = r("my deploy key AKIAZ7QK4N3XVB2LM5TD, mail bob@example.com, password=hunter2hunter")
    assert once == "my deploy key <SECRET:aws_access_key>, mail <EMAIL>, password=<SECRET:password_assignment>"
    counts = dict(r.counts)
    assert r(once) == once and r.counts == counts
