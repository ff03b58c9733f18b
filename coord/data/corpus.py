"""Reading training text: a file, a directory tree, JSON Lines or SQuAD, each file read once.

In a directory, files are walked in sorted order; binary files (a NUL byte in the first
8 KiB) and files that are not UTF-8 are skipped with one log line each; a symlinked
directory is entered at most once, so a link cycle ends. A ``.jsonl`` file gives one
document per line (its ``text`` field); a SQuAD v1.1/v2.0 file gives one document per
paragraph: the context, then each question and its answer.
"""

import fnmatch
import json
import os
import sysconfig
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import structlog

from ..errors import UserError

log = structlog.get_logger("cllm.corpus")

SNIFF_BYTES = 8192
DEFAULT_MAX_BYTES = 4 << 20
DEFAULT_INCLUDE = ("*.py",)
DEFAULT_EXCLUDE = ("test/*", "*/test/*", "tests/*", "*/tests/*", "idlelib/*", "site-packages/*", "lib2to3/*",
                   "dist-packages/*", "__pycache__/*", "*/__pycache__/*")


@dataclass(frozen=True)
class Document:
    source: str
    text: str


def default_corpus_root() -> Path:
    """The Python standard library's source directory: text every machine with Python has."""
    return Path(sysconfig.get_paths()["stdlib"])


def matches(relative: str, include: tuple, exclude: tuple) -> bool:
    if include and not any(fnmatch.fnmatch(relative, p) for p in include):
        return False
    return not any(fnmatch.fnmatch(relative, p) for p in exclude)


def walk(root: Path) -> Iterator[Path]:
    """Files under ``root`` in sorted order; each real directory entered once."""
    visited = set()

    def visit(directory: Path):
        try:
            info = directory.stat()
        except OSError:
            return
        key = (info.st_dev, info.st_ino)
        if key in visited:
            log.warning("corpus_link_cycle", path=str(directory))
            return
        visited.add(key)
        try:
            entries = sorted(os.scandir(directory), key=lambda e: e.name)
        except OSError as error:
            log.warning("corpus_file_skipped", path=str(directory), reason=f"unreadable: {error.strerror}")
            return
        for entry in entries:
            path = Path(entry.path)
            if entry.is_dir(follow_symlinks=True):
                yield from visit(path)
            elif entry.is_file(follow_symlinks=True):
                yield path

    yield from visit(root)


def read_text(path: Path) -> str | None:
    """The file's text, or None (logged) when it is binary, not UTF-8 or unreadable."""
    try:
        data = path.read_bytes()
    except OSError as error:
        log.warning("corpus_file_skipped", path=str(path), reason=f"unreadable: {error.strerror}")
        return None
    if b"\0" in data[:SNIFF_BYTES]:
        log.warning("corpus_file_skipped", path=str(path), reason="binary")
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        log.warning("corpus_file_skipped", path=str(path), reason="not utf-8")
        return None


def jsonl_documents(path: Path, text: str) -> Iterator[Document]:
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            value = record["text"]
            if not isinstance(value, str):
                raise TypeError("'text' is not a string")
        except (ValueError, KeyError, TypeError) as error:
            raise UserError(f"{path}:{number}: not a JSON object with a string 'text' field ({error}); "
                            "fix or remove the line") from None
        yield Document(f"{path}:{number}", value)


def squad_paragraph(paragraph: dict) -> str:
    lines = [paragraph["context"].strip(), ""]
    for qa in paragraph.get("qas", []):
        answers = qa.get("answers") or []
        answer = answers[0]["text"] if answers else "(no answer)"
        lines += [f"Question: {qa['question'].strip()}", f"Answer: {answer.strip()}"]
    return "\n".join(lines)


def squad_documents(path: Path, data: dict) -> Iterator[Document]:
    try:
        for article in data["data"]:
            for index, paragraph in enumerate(article["paragraphs"]):
                yield Document(f"{path}:{article.get('title', '')}:{index}", squad_paragraph(paragraph))
    except (KeyError, TypeError, IndexError) as error:
        raise UserError(f"{path}: not a SQuAD v1.1/v2.0 file (missing {error}); give plain text or SQuAD JSON") from None


def file_documents(path: Path, text: str) -> Iterator[Document]:
    if path.suffix == ".jsonl":
        yield from jsonl_documents(path, text)
        return
    if path.suffix == ".json":
        try:
            data = json.loads(text)
        except ValueError:
            data = None
        if isinstance(data, dict) and isinstance(data.get("data"), list):
            yield from squad_documents(path, data)
            return
    yield Document(str(path), text)


def iter_documents(path: Path | None, include: tuple = (), exclude: tuple = (),
                   max_bytes: int | None = None) -> Iterator[Document]:
    """The documents of ``path`` (default: the standard library's source, capped at 4 MiB)."""
    if path is None:
        path = default_corpus_root()
        include, exclude = include or DEFAULT_INCLUDE, exclude or DEFAULT_EXCLUDE
        max_bytes = max_bytes or DEFAULT_MAX_BYTES
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path} does not exist; give a text file, a directory, a .jsonl or SQuAD file")
    files = [path] if path.is_file() else (p for p in walk(path) if matches(str(p.relative_to(path)), include,
                                                                              exclude))
    total = 0
    for file in files:
        text = read_text(file)
        if text is None:
            continue
        for document in file_documents(file, text):
            if not document.text:
                continue
            yield document
            total += len(document.text.encode("utf-8"))
            if max_bytes is not None and total >= max_bytes:
                return
