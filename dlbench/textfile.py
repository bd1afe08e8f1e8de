"""A study file's bytes to text: whatever the path holds, text or a ConfigError that says what is
wrong with it and what would be right (never a UnicodeDecodeError).

TOML is UTF-8. A byte-order mark names its encoding unambiguously, so UTF-8 with a BOM and
UTF-16/UTF-32 with a BOM (what Windows tools often write) are decoded; anything else must be UTF-8.
"""

from __future__ import annotations

from pathlib import Path

from dlbench.errors import ConfigError

MAX_BYTES = 10_000_000  # a study file is a few kilobytes; refuse to parse what cannot be one

# longest first: a UTF-32-LE mark starts with the UTF-16-LE one
BYTE_ORDER_MARKS = [
    (b"\xff\xfe\x00\x00", "utf-32", "UTF-32"), (b"\x00\x00\xfe\xff", "utf-32", "UTF-32"),
    (b"\xef\xbb\xbf", "utf-8-sig", "UTF-8"),
    (b"\xff\xfe", "utf-16", "UTF-16"), (b"\xfe\xff", "utf-16", "UTF-16"),
]
PASS_A_STUDY = "pass the path of a TOML study file such as ablation.toml"
SAVE_AS_UTF8 = ("save it as UTF-8 (in an editor, 'Save with encoding: UTF-8'; or "
                "iconv -f <its encoding> -t UTF-8 old.toml > new.toml)")


def read_text(path: Path) -> str:
    """The text of the study file at ``path``."""
    data = _read_bytes(path)
    text, problem = _decode(data)
    if problem:
        raise ConfigError(str(path), [problem])
    if not text.strip():
        raise ConfigError(str(path), ["the file is empty; a study file defines at least one study, e.g. "
                                      "[studies.dropout.levels] with off = {} and on = { regularizers = [\"dropout\"] }"])
    return text


def _read_bytes(path: Path) -> bytes:
    def refuse(problem: str) -> ConfigError:
        return ConfigError(str(path), [problem])

    try:
        if path.is_dir():
            raise refuse(f"it is a directory, not a study file; {PASS_A_STUDY}")
        if not path.exists():
            broken = " (a symbolic link to a missing file)" if path.is_symlink() else ""
            raise refuse(f"no such study file{broken}; {PASS_A_STUDY}")
        if not path.is_file():
            raise refuse(f"not a regular file (a device, pipe or socket); {PASS_A_STUDY}")
        size = path.stat().st_size
        if size > MAX_BYTES:
            raise refuse(f"the file holds {size:,} bytes; a study file is a few kilobytes of TOML and dlbench reads "
                         f"at most {MAX_BYTES:,}: is this the right file?")
        return path.read_bytes()
    except PermissionError:
        raise refuse("permission denied: dlbench may not read the file; make it readable (chmod u+r) "
                     "or run as a user who may") from None
    except OSError as exc:
        raise refuse(f"the file cannot be read: {exc.strerror or exc}") from None


def _decode(data: bytes) -> tuple[str, str | None]:
    """``(text, None)`` or ``("", what is wrong)``."""
    codec, encoding = next(((c, e) for bom, c, e in BYTE_ORDER_MARKS if data.startswith(bom)), ("utf-8", "UTF-8"))
    if codec == "utf-8" and b"\0" in data:
        line = data.count(b"\n", 0, data.index(b"\0")) + 1
        return "", (f"the file holds NUL bytes (the first on line {line}): it is a binary file, or UTF-16/UTF-32 text "
                    f"without a byte-order mark, not the UTF-8 text of a TOML file; {PASS_A_STUDY}, or {SAVE_AS_UTF8}")
    try:
        text = data.decode(codec)
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        if codec != "utf-8":  # it has a byte-order mark
            return "", (f"the file starts with a {encoding} byte-order mark but is not valid {encoding} "
                        f"(line {line}: {exc.reason}); {SAVE_AS_UTF8}")
        return "", (f"the file is not UTF-8 text: byte 0x{data[exc.start]:02X} on line {line} is not valid UTF-8. "
                    f"TOML files are UTF-8: if it is text saved in another encoding (Latin-1, Windows-1252, ...), "
                    f"{SAVE_AS_UTF8}; if it is not a text file, {PASS_A_STUDY}")
    if "\0" in text:
        line = text.count("\n", 0, text.index("\0")) + 1
        return "", f"the file holds a NUL character (line {line}): a study file is TOML text; {PASS_A_STUDY}"
    return text, None
