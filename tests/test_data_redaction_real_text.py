"""Redaction does not damage real text: false positives per rule on real corpora, recall kept.

    HF_HUB_OFFLINE=1 python -m pytest -q tests/test_data_redaction_real_text.py

The corpora are the project's real data (../shared/data, skipped when absent) and two shipped files
of instruction-like prose, lists, code, math and numbers (tests/data/redaction_fp_*.jsonl) in
which every hit is a false positive. The rule classes fixed (README, "Data hygiene", "Redaction on
real text"): keyword assignments need the keyword to start a name and a secret-shaped value; cards
need an issuer range, its length, card grouping and Luhn; phones, IPs, e-mails and high-entropy
tokens drop the shapes real text is full of.
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest

from ech0.data.pii import card_issuer_ok, find_pii, iban_ok
from ech0.data.redact import Redactor
from ech0.data.secrets import find_secrets, shannon_entropy

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench(redaction_benchmark):
    return redaction_benchmark


def _findings(text: str) -> list[str]:
    return [f"{k}:{r}" for k, r in Redactor().scan(text)[0]]


@pytest.mark.parametrize("name", ["redaction_fp_corpus.jsonl", "redaction_fp_heldout.jsonl"])
def test_shipped_corpora_have_no_false_positives(name):
    rows = [json.loads(line) for line in (ROOT / "tests" / "data" / name).read_text().splitlines()]
    assert len(rows) >= 60 and len({r["kind"] for r in rows}) >= 1
    hits = {r["id"]: _findings(r["text"]) for r in rows}
    hits = {k: v for k, v in hits.items() if v}
    # heldout-034 is Discover's published test card (issuer, length, grouping, Luhn): a card
    assert hits == ({"heldout-034": ["pii:CARD"]} if "heldout" in name else {}), hits


def test_shared_corpora_only_intended_hits(shared_data, bench):
    if not (shared_data / "seed_tasks.jsonl").is_file() or not (shared_data / "dummy_conversation.json").is_file():
        pytest.skip("../shared/data is absent")
    corpora = bench.corpora()
    seed = bench.scan_corpus("seed_tasks", corpora["seed_tasks"])
    chat = bench.scan_corpus("dummy_conversations", corpora["dummy_conversations"])
    assert seed["rows"] == 175 and chat["rows"] == 500
    # the only hits: a cover letter's phone and e-mail (seed task 74, twice) and a sender address
    assert seed["false_positives"] == 0 and seed["intended_hits"] == 5, seed["false_positives_by_rule"]
    assert seed["hits_by_rule"] == {"pii:PHONE": 2, "pii:EMAIL": 3}
    assert chat["hits_by_rule"] == {} and chat["false_positives"] == 0


def test_keyword_must_start_a_name_and_value_must_look_secret():
    innocent = [
        "bypass: Coronary-artery", "Compass: Northwestern", "Monkey: Primate", "Turkey: Ankara", "passport: X1234567",
        "Keyword: Photosynthesis", "Keywords: Climate-change", "Token: Represents", "Key: Ctrl+Shift+P",
        "Secret: Santa", "Password: Required.", "Key: COVID-19", "Keyword: 2023-10-05", "Token: 12:30:45",
        "pad_token = tokenizer.eos_token", "password: Optional[str] = None", "api_key=API_KEY",
        'sorted(d, key=d.get)', '{"Key": "Environment"}', '{"key": "Content-Type"}', "secret_name: db-credentials",
        "password_file = /run/secrets/db_password", "PWD=/home/user",
        "arn:aws:secretsmanager:us-east-1:1:secret:Db-a1b2c3",
        "Key=InstalledPendingRebootCount", "the key is pressed.", "Keywords: #MachineLearning", "Token: $1000.00",
    ]
    for t in innocent:
        assert find_secrets(t) == [], t
    secret = [
        "password: P@ssw0rd123", "DB_PASSWORD=s3cr3tP4ss", "api_key = 'a8f5f167f44f4964e6c998dee827110c'",
        "secret: 'xK9#mQ2$vL'", "dbPassword: hunter2hunter", "APIKEY=AbCdEf123456", "PGPASSWORD=Tr0ub4dor&3",
        "client_secret: AbCdEfGhIjKlMnOpQrSt", "x-api-key: 9f8e7d6c5b4a", "passwd=abc123xyz",
        "The password is hunter2hunter", "auth_token = 'kqzvxjwpfhtrmbnc'", "accessToken: 'ZmFrZVRva2VuVmFsdWU='",
        "settings.SECRET_KEY = 'django-insecure-8f$k2!x'", '{"password": "Winter2024!"}', "passphrase: 'Tr0ub4dor&3'",
        "mysecret=Zx81ab77qq", "PWD=hunter2hunter",
    ]
    for t in secret:
        assert [r for *_, r in find_secrets(t)] == ["password_assignment"], t


def test_high_entropy_skips_identifiers_but_keeps_random_tokens(data_hygiene):
    for t in ["HuggingFaceM4/Idefics3-8B-Llama3", "google/vit-base-patch32-224-in21k",
              "ResumableUploadStartOverException", "CMAKE_C_LINK_LIBRARY_USING_load_archive_SUPPORTED",
              "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789", "tr-0123456789abcdef0123456789abcdef",
              "sha384-SggXRQHwCG8g+DktYYzxkXRIkTiEYWBHqev0xnpCxYlqMBufKZHAHQM3/boDaI/0"]:
        assert find_secrets(f"see {t} here") == [], t
    rng = random.Random(0)
    for _ in range(300):
        tok = data_hygiene._rs(rng, rng.choice([32, 40, 64]))
        if shannon_entropy(tok) >= 0.82 * math.log2(min(len(tok), 64)):  # random enough for the rule
            assert [r for *_, r in find_secrets(f"use {tok} now")] == ["high_entropy"], tok


def test_cards_need_issuer_length_grouping_and_luhn():
    published_test_cards = ["4111 1111 1111 1111", "5555 5555 5555 4444", "2223 0031 2200 3222", "3782 822463 10005",
                            "6011 1111 1111 1117", "3530 1113 3330 0000", "3056 9309 0259 04", "6200 0000 0000 0005",
                            "4111111111111111", "4000-0566-5566-5556", "2200 0000 0000 0004"]
    for c in published_test_cards:
        assert [t for *_, t in find_pii(f"card {c} ok")] == ["CARD"], c
    assert find_pii("card 4111 1111 1111 1111 12/26")[0][:2] == (5, 24)  # the expiry is not part of it
    not_cards = ["1111 1111 1111 1117",  # Luhn-valid, no issuer starts with 1
                 "1010 1100 0011 0101", "1000 0000 0000 0001 1110",  # binary
                 "3782 8224 6310 0052",  # Amex prefix, but 16 digits
                 "4111 111111 111111", "4111-1111 1111-1111",  # not how cards are grouped
                 "4111 1111 1111 1111 1111",  # part of a longer number
                 "4006381333931",  # an EAN-13 barcode
                 "1318289051000", "5191625155316533644"]  # a millisecond timestamp; a 19-digit id
    for c in not_cards:
        assert find_pii(f"n {c} ok") == [], c
    assert card_issuer_ok("378282246310005") and not card_issuer_ok("3782822463100050")


def test_phone_ip_email_iban_classes():
    for t in ["+1 415-555-0199", "(415) 555-0199", "415-555-0199", "020 7946 0958", "+44 20 7946 0958",
              "+33 1 23 456 789", "0800 123 4567"]:
        assert [k for *_, k in find_pii(f"call {t} now")] == ["PHONE"], t
    for t in ["0110 1001 1010", "0800 1200 1600", "0046 0066 0069", "+12 345 678", "+1.234.567", "252.227-7014"]:
        assert find_pii(f"n {t} ok") == [], t
    for t in ["93.184.216.34", "2a02:c7f:1234:5600::8a2e:370:7334"]:
        assert [k for *_, k in find_pii(f"host {t}.")] == ["IP"], t  # also at a sentence's end
    for t in ["127.0.0.1", "192.168.1.1", "10.0.0.0", "255.255.255.0", "0.0.0.0", "8.8.8.8", "192.0.2.45",
              "169.254.10.20", "224.0.0.251", "::1", "fe80::1", "2001:db8::1", "1.7.12.1", "v3.11.10.25",
              "version 2.10.3.145", "section 12.4.1.30", "Foo::Face", "1.2.3.4.5"]:
        assert find_pii(f"host {t} ok") == [], t
    assert [k for *_, k in find_pii("mail bob.smith@example.com")] == ["EMAIL"]
    for t in ["git clone git@github.com:org/repo.git", 'src="icon@2x.png"', "logo@3x.webp"]:
        assert find_pii(t) == [], t
    assert iban_ok("GB82 WEST 1234 5698 7654 32") and iban_ok("DE89 3704 0044 0532 0130 00")
    assert not iban_ok("GB82 WEST 1234 5698 7654 3")  # wrong length for GB
    assert not iban_ok("XX82WEST12345698765432")  # not a country


def test_benchmark_reports_false_positives_per_rule(tmp_path, bench, capsys):
    out = tmp_path / "rfp.json"
    assert bench.main(["--out", str(out), "--seeds", "5", "--clean-rows", "300"]) == 0
    res = json.loads(out.read_text())
    for name in ("fp_corpus", "fp_heldout"):
        c = res["corpora"][name]
        assert c["rows"] >= 60 and c["false_positives"] == 0 and c["false_positives_by_rule"] == {}, c
    assert res["corpora"]["fp_heldout"]["hits_by_rule"] == {"pii:CARD": 1}
    p = res["planted"]
    assert p["secret_recall"] == 1.0 and p["pii_recall"] == 1.0 and p["misses_by_rule"] == {}
    assert p["synthetic_false_positive_rows"] == 0 and p["redact_rows_per_cpu_sec"] > 0
    printed = capsys.readouterr().out
    assert "fp_corpus" in printed and "false positives by rule" in printed
