"""Streaming reader for JSONL, a JSON array, or concatenated (pretty-printed) JSON values.

Every ``ech0 data import|validate`` reads its input through here::

    from ech0.data.reader import sniff, iter_records
    fmt = sniff(path)                      # fatal problems (UTF-16, binary, empty) raise UserError
    for rec in iter_records(fmt):          # one Rec per line / array item; nothing dropped silently
        ...

A ``Rec`` is either text to parse (``rec.text``) or an error already found by the reader
(``rec.error`` = a reason code such as ``invalid_utf8`` or ``line_too_long``, ``rec.detail``,
``rec.preview`` = a short, not yet redacted excerpt). Blank lines are counted, not yielded.
Memory is bounded: lines longer than ``max_line_bytes`` are skipped in chunks and reported.
"""

from __future__ import annotations

import codecs
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, NamedTuple

from ech0.errors import UserError

BOM = b"\xef\xbb\xbf"
DEFAULT_MAX_LINE_BYTES = 1 << 20  # 1 MiB: a training row is ~1 KB; a megabyte line is a blob
PREVIEW_BYTES = 240
NOT_JSON_PROBE = 20  # this many leading non-blank lines failing to parse, none parsing -> "not JSON"

_MAGIC = [
    (b"\x1f\x8b", "gzip-compressed; decompress it first (gunzip)"),
    (b"PK\x03\x04", "a zip archive; extract it first"),
    (b"BZh", "bzip2-compressed; decompress it first (bunzip2)"),
    (b"\xfd7zXZ\x00", "xz-compressed; decompress it first (unxz)"),
    (b"\x28\xb5\x2f\xfd", "zstd-compressed; decompress it first (unzstd)"),
    (b"PAR1", "a Parquet file; export it to JSONL first"),
    (b"SQLite format 3", "an SQLite database; export it to JSONL first"),
    (b"%PDF", "a PDF document, not JSON"),
]


class Rec(NamedTuple):
    line: int  # 1-based line where the row starts
    offset: int  # byte offset of the row's start in the file
    item: int | None  # index in a JSON array / value stream; None for JSONL
    text: str | None  # JSON text to parse, or None when ``error`` is set
    error: str | None = None
    detail: str | None = None
    preview: str | None = None
    last: bool = False  # JSONL: the final line had no trailing newline


@dataclass
class Format:
    path: Path
    mode: str  # "jsonl" | "array" | "stream"
    size: int
    start: int = 0  # bytes to skip (BOM)
    notes: dict = field(default_factory=dict)  # e.g. {"bom": 1}


def _preview(b: bytes) -> str:
    return b[:PREVIEW_BYTES].decode("utf-8", errors="backslashreplace")


def sniff(path: str | Path, max_line_bytes: int = DEFAULT_MAX_LINE_BYTES) -> Format:
    """Decide how to read ``path``; raise UserError (one line) for files that are not UTF-8 JSON."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(1 << 16)
    except IsADirectoryError:
        raise UserError(f"{path}: is a directory; pass a .jsonl or .json file") from None
    except FileNotFoundError:
        raise UserError(f"{path}: not found") from None
    except OSError as e:
        raise UserError(f"{path}: cannot read ({e.strerror or e})") from None
    if size == 0 or not head.strip():
        raise UserError(f"{path}: file is empty (no rows); nothing to do")
    if head.startswith((b"\xff\xfe\x00\x00", b"\x00\x00\xfe\xff")):
        raise UserError(f"{path}: byte 0: UTF-32 text; convert it to UTF-8 (iconv -f UTF-32 -t UTF-8)")
    if head.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise UserError(f"{path}: byte 0: UTF-16 text; convert it to UTF-8 (iconv -f UTF-16 -t UTF-8)")
    for magic, what in _MAGIC:
        if head.startswith(magic):
            raise UserError(f"{path}: byte 0: {what}")
    nul = head.count(b"\x00")
    if nul:
        even = head[0::2].count(b"\x00")
        odd = head[1::2].count(b"\x00")
        if nul > len(head) // 8 and max(even, odd) > 0.9 * nul:
            raise UserError(f"{path}: byte {head.index(0)}: looks like UTF-16 without a BOM; convert it to UTF-8")
        ctrl = sum(head.count(bytes([c])) for c in range(32) if c not in (9, 10, 13))
        if ctrl > max(8, len(head) // 100):
            raise UserError(f"{path}: byte {head.index(0)}: binary data, not JSON text")
    start = 3 if head.startswith(BOM) else 0
    notes = {"bom": 1} if start else {}
    body = head[start:]
    stripped = body.lstrip()
    first_char = stripped[:1]
    nl = body.find(b"\n")
    first_line = body if nl < 0 else body[:nl]
    mode = "jsonl"
    if first_char in (b"[", b"{"):
        try:
            value = json.loads(first_line.decode("utf-8", errors="strict").strip())
            if isinstance(value, list) and not body[nl + 1 :].strip() and size <= len(head):
                mode = "array"  # a one-line array and nothing else
            elif isinstance(value, list) and nl < 0:
                mode = "array"
        except (ValueError, UnicodeDecodeError, RecursionError):
            if first_char == b"[":
                mode = "array"
            else:
                # a value spanning lines (pretty-printed objects one after another)?
                dec = json.JSONDecoder(strict=False)
                try:
                    text = stripped.decode("utf-8", errors="strict")
                    _, end = dec.raw_decode(text)
                    if "\n" in text[:end]:
                        mode = "stream"
                except (ValueError, UnicodeDecodeError, RecursionError):
                    pass
    return Format(path=path, mode=mode, size=size, start=start, notes=notes)


NORMALIZATION_NOTES = ("blank_lines", "bom", "crlf", "unclosed_array")  # reader notes a manifest counts


def normalizations(fmt: Format) -> dict:
    """The reader's notes a manifest records under ``normalizations`` (read them after the last record)."""
    return {k: fmt.notes[k] for k in NORMALIZATION_NOTES if k in fmt.notes}


def iter_records(fmt: Format, max_line_bytes: int = DEFAULT_MAX_LINE_BYTES, progress=None) -> Iterator[Rec]:
    """Yield every row of the file as a ``Rec``; ``fmt.notes`` collects blank lines, BOMs, CRLFs."""
    if fmt.mode == "jsonl":
        yield from _iter_jsonl(fmt, max_line_bytes, progress)
    else:
        yield from _iter_values(fmt, max_line_bytes, progress)


def _note(fmt: Format, key: str, n: int = 1) -> None:
    fmt.notes[key] = fmt.notes.get(key, 0) + n


def _iter_jsonl(fmt: Format, cap: int, progress) -> Iterator[Rec]:
    parsed_any = False
    failures = 0
    with open(fmt.path, "rb", buffering=1 << 20) as f:
        f.seek(fmt.start)
        offset = fmt.start
        lineno = 0
        readline = f.readline
        while True:
            raw = readline(cap + 1)
            if not raw:
                break
            lineno += 1
            start = offset
            n = len(raw)
            if n > cap and raw[-1:] != b"\n":
                total = n
                while True:
                    more = readline(1 << 20)
                    if not more:
                        break
                    total += len(more)
                    if more[-1:] == b"\n":
                        break
                offset += total
                if progress is not None:
                    progress(total)
                yield Rec(lineno, start, None, None, "line_too_long",
                          f"line is {total} bytes, over the {cap}-byte cap (--max-line-bytes)", _preview(raw))
                continue
            offset += n
            if progress is not None:
                progress(n)
            has_nl = raw[-1:] == b"\n"
            if has_nl:
                raw = raw[:-1]
                if raw[-1:] == b"\r":
                    raw = raw[:-1]
                    _note(fmt, "crlf")
            if not raw.strip():
                _note(fmt, "blank_lines")
                continue
            if raw[:3] == BOM:
                raw = raw[3:]
                _note(fmt, "bom")
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                yield Rec(lineno, start, None, None, "invalid_utf8",
                          f"invalid UTF-8 at byte offset {start + e.start} (column {e.start + 1})",
                          raw.decode("utf-8", errors="backslashreplace"))
                continue
            if not parsed_any:
                # cheap probe for "this is not JSON at all": fail fast instead of rejecting every line
                parsed_any = _parses(text)
                if not parsed_any:
                    failures += 1
                    if failures >= NOT_JSON_PROBE:
                        raise UserError(f"{fmt.path}: line {lineno - failures + 1}: not JSON or JSONL (the first "
                                        f"{NOT_JSON_PROBE} non-blank lines do not parse); give a .jsonl file with "
                                        f"one JSON object per line")
            yield Rec(lineno, start, None, text, last=not has_nl)
    if not parsed_any and failures:
        raise UserError(f"{fmt.path}: line 1: not JSON or JSONL (no line parses as JSON); "
                        f"give a .jsonl file with one JSON object per line")


def _parses(text: str) -> bool:
    dec = json.JSONDecoder(strict=False)
    s = text.lstrip()
    try:
        dec.raw_decode(s)
        return True
    except (ValueError, RecursionError):
        return False


def _iter_values(fmt: Format, cap: int, progress) -> Iterator[Rec]:
    """A top-level JSON array (``mode == "array"``) or whitespace-separated JSON values ("stream")."""
    dec = json.JSONDecoder(strict=False)
    udec = codecs.getincrementaldecoder("utf-8")("strict")
    chunk = 1 << 18
    buf = ""
    i = 0
    line = 1
    eof = False
    consumed_bytes = fmt.start
    in_array = fmt.mode == "array"
    state = "open" if in_array else "value"  # open -> value -> sep -> value ... -> done
    item = 0
    name = fmt.path
    with open(fmt.path, "rb") as f:
        f.seek(fmt.start)

        def fill() -> bool:
            nonlocal buf, i, eof, consumed_bytes
            if eof:
                return False
            b = f.read(chunk)
            if progress is not None and b:
                progress(len(b))
            try:
                s = udec.decode(b, final=not b)
            except UnicodeDecodeError as e:
                raise UserError(f"{name}: byte {consumed_bytes + e.start}: invalid UTF-8 inside a JSON "
                                f"{'array' if in_array else 'document'}; fix the encoding or convert to JSONL") from None
            consumed_bytes += len(b)
            if not b:
                eof = True
            buf = buf[i:] + s
            i = 0
            return bool(b)

        def skip_ws() -> bool:
            nonlocal i, line
            while True:
                n = len(buf)
                while i < n and buf[i] in " \t\r\n":
                    if buf[i] == "\n":
                        line += 1
                    i += 1
                if i < n:
                    return True
                if not fill():
                    return False

        fill()
        while True:
            if not skip_ws():
                if in_array and state != "done":
                    _note(fmt, "unclosed_array")
                return
            c = buf[i]
            if state == "open":
                if c != "[":
                    raise UserError(f"{name}: line {line}: expected '[' to start a JSON array")
                i += 1
                state = "first"
                continue
            if state in ("first", "sep") and c == "]" and in_array:
                i += 1
                state = "done"
                continue
            if state == "done":
                raise UserError(f"{name}: line {line}: unexpected data after the end of the JSON array; "
                                f"give one array or JSONL, not both")
            if state == "sep":
                if in_array:
                    if c != ",":
                        raise UserError(f"{name}: line {line}: expected ',' or ']' between array items")
                    i += 1
                    state = "value"
                    continue
                state = "value"
            # parse one value
            start_line = line
            while True:
                try:
                    _, end = dec.raw_decode(buf, i)
                    if end == len(buf) and not eof and buf[i] not in "{[\"":
                        if fill():  # a bare number might continue in the next chunk
                            continue
                    break
                except RecursionError:
                    end = None
                    break
                except ValueError as e:
                    truncated = getattr(e, "pos", 0) >= len(buf.rstrip()) - 1 or "Unterminated" in str(e)
                    if truncated and not eof and len(buf) - i <= cap:
                        if fill():
                            continue
                    if truncated and (eof or not fill()):
                        text = buf[i:]
                        _note(fmt, "unclosed_array" if in_array else "truncated_value")
                        yield Rec(start_line, None, item, None, "truncated_line",
                                  "the file ends inside this value (truncated?)",
                                  text[:PREVIEW_BYTES])
                        return
                    if len(buf) - i > cap:
                        raise UserError(f"{name}: line {start_line}: item {item} is over the {cap}-byte cap or "
                                        f"malformed; fix it or raise --max-line-bytes") from None
                    pos = getattr(e, "pos", i)
                    eline = start_line + buf.count("\n", i, pos)
                    msg = getattr(e, "msg", str(e))
                    raise UserError(f"{name}: line {eline}: malformed JSON ({msg}); fix it or convert to JSONL "
                                    f"(one object per line)") from None
            if end is None:
                # too deep to even find its end: reject and give up on the rest (cannot resync)
                raise UserError(f"{name}: line {start_line}: item {item} is nested too deeply to read")
            text = buf[i:end]
            if end - i > cap:
                yield Rec(start_line, None, item, None, "line_too_long",
                          f"item is {end - i} characters, over the {cap}-byte cap (--max-line-bytes)",
                          text[:PREVIEW_BYTES])
            else:
                yield Rec(start_line, None, item, text)
            line += buf.count("\n", i, end)
            i = end
            item += 1
            state = "sep"
