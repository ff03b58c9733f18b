"""Reading training text: a file, a directory tree, JSON Lines or SQuAD, each file read once.

Text streams in blocks, so memory does not depend on the size of a file or of a line. In a
directory, files are walked in sorted order; a file whose first 8 KiB hold a NUL byte is
binary and skipped unread, one that is not UTF-8 is skipped when the bad bytes come (its
document raises ``Skipped``: the reader drops what it took of it); each skip is one log
line. A symlinked directory is entered at most once, so a link cycle ends, and a link that
leads out of the tree is not followed. A ``.jsonl`` file gives one document per line (its
``text`` field); a SQuAD v1.1/v2.0 file gives one document per paragraph: the context,
then each question and its answer.
"""

import codecs
import fnmatch
import json
import os
import stat
import sysconfig
from pathlib import Path
from typing import Iterable, Iterator

import structlog

from ..errors import UserError

log = structlog.get_logger("cllm.corpus")

SNIFF_BYTES = 8192
BLOCK_BYTES = 1 << 20
MAX_RECORD_BYTES = 16 << 20  # one JSON Lines record
MAX_JSON_BYTES = 256 << 20  # a .json file is parsed whole as SQuAD up to this size, else read as text
DEFAULT_MAX_BYTES = 4 << 20
DEFAULT_INCLUDE = ("*.py",)
DEFAULT_EXCLUDE = ("test/*", "*/test/*", "tests/*", "*/tests/*", "idlelib/*", "site-packages/*", "lib2to3/*",
                   "dist-packages/*", "__pycache__/*", "*/__pycache__/*")


class Skipped(Exception):
    """A document's file turned out unusable part-way through (already logged): drop what it gave."""


class Document:
    """One document: ``source`` names it; ``pieces()`` streams its text, once."""

    def __init__(self, source: str, pieces: Iterable[str]):
        self.source = source
        self._pieces = pieces
        self.size = 0  # UTF-8 bytes streamed so far
        self.file = ""  # the file it is read from, relative to the corpus (set by iter_documents)

    def pieces(self) -> Iterator[str]:
        for piece in self._pieces:
            self.size += len(piece.encode("utf-8"))
            yield piece

    @property
    def text(self) -> str:
        return "".join(self.pieces())


def default_corpus_root() -> Path:
    """The Python standard library's source directory: text every machine with Python has."""
    return Path(sysconfig.get_paths()["stdlib"])


def matches(relative: str, include: tuple, exclude: tuple) -> bool:
    if include and not any(fnmatch.fnmatch(relative, p) for p in include):
        return False
    return not any(fnmatch.fnmatch(relative, p) for p in exclude)


def skip(path: Path, reason: str) -> None:
    log.warning("corpus_file_skipped", path=str(path), reason=reason)


def walk(root: Path, leave_out: tuple = ()) -> Iterator[Path]:
    """Files under ``root`` in sorted order; each real directory entered once, none outside ``root``
    and none of ``leave_out`` (a cache kept inside the corpus)."""
    top = root.resolve()
    visited = set()
    left_out = set()
    for directory in leave_out:
        try:
            info = Path(directory).stat()
            left_out.add((info.st_dev, info.st_ino))
        except OSError:
            pass

    def visit(directory: Path):
        try:
            info = directory.stat()
        except OSError:
            return
        key = (info.st_dev, info.st_ino)
        if key in left_out:
            return
        if key in visited:
            log.warning("corpus_link_cycle", path=str(directory))
            return
        visited.add(key)
        try:
            entries = sorted(os.scandir(directory), key=lambda e: e.name)
        except OSError as error:
            skip(directory, f"unreadable: {error.strerror}")
            return
        for entry in entries:
            path = Path(entry.path)
            if entry.is_symlink():
                try:
                    inside = path.resolve().is_relative_to(top)
                except (OSError, RuntimeError):  # a link loop
                    inside = False
                if not inside:
                    skip(path, "outside the corpus tree")
                    continue
            if entry.is_dir(follow_symlinks=True):
                yield from visit(path)
            elif entry.is_file(follow_symlinks=True):
                yield path

    yield from visit(top)


def open_file(path: Path):
    """``path`` open for reading at its start, or None (logged) when it is unreadable, not a regular
    file, or binary (a NUL byte among its first SNIFF_BYTES)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY)  # a FIFO must not block the walk
    except OSError as error:
        skip(path, f"unreadable: {error.strerror}")
        return None
    f = os.fdopen(fd, "rb")
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            skip(path, "not a regular file")
        elif b"\0" in f.read(SNIFF_BYTES):
            skip(path, "binary")
        else:
            f.seek(0)
            return f
    except OSError as error:
        skip(path, f"unreadable: {error.strerror}")
    f.close()
    return None


def text_pieces(f, path: Path) -> Iterator[str]:
    """The file's text in blocks of about BLOCK_BYTES; Skipped (logged) when it is not UTF-8."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    try:
        while block := f.read(BLOCK_BYTES):
            if text := decoder.decode(block):
                yield text
        decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        skip(path, "not utf-8")
        raise Skipped(str(path)) from None
    except OSError as error:
        skip(path, f"unreadable: {error.strerror}")
        raise Skipped(str(path)) from None
    finally:
        f.close()


def check_unicode(text: str) -> None:
    """ValueError when ``text`` holds a lone surrogate (JSON can spell one, "\\udcff"; UTF-8 cannot)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        raise ValueError(f"a lone surrogate {text[error.start]!r} at character {error.start}") from None


def parse_json(text: str):
    """The JSON value of ``text``; ValueError when it is not JSON or nests deeper than the parser goes."""
    try:
        return json.loads(text)
    except RecursionError:
        raise ValueError("nested too deeply") from None


def jsonl_documents(f, path: Path) -> Iterator[Document]:
    with f:
        for number, line in enumerate(iter(lambda: f.readline(MAX_RECORD_BYTES + 1), b""), start=1):
            where = f"{path}:{number}"
            if len(line) > MAX_RECORD_BYTES:
                raise UserError(f"{where}: a line longer than {MAX_RECORD_BYTES >> 20} MiB; split the document")
            try:
                text = line.decode("utf-8")
            except UnicodeDecodeError as error:
                raise UserError(f"{where}: not UTF-8 (byte {error.start}); fix or remove the line") from None
            if not text.strip():
                continue
            try:
                record = parse_json(text)
                if not isinstance(record, dict) or not isinstance(record.get("text"), str):
                    raise ValueError("not an object with a string 'text'")
                check_unicode(record["text"])
            except ValueError as error:
                raise UserError(f"{where}: not a JSON object with a string 'text' field ({error}); "
                                "fix or remove the line") from None
            yield Document(where, (record["text"],))


def field(record: dict, key: str, kind: type, where: str, default=None):
    value = record.get(key, default)
    if not isinstance(value, kind):
        raise ValueError(f"{where}.{key} is not {'a list' if kind is list else 'a string'}")
    return value


NO_ANSWER = "(no answer)"  # the answer a SQuAD v2.0 question without one is trained on


def squad_answers(qa, at: str) -> list:
    """The gold answer texts of one SQuAD question (none for a v2.0 question without an answer)."""
    if not isinstance(qa, dict):
        raise ValueError(f"{at} is not an object")
    answers = field(qa, "answers", list, at, [])
    for j, answer in enumerate(answers):
        if not isinstance(answer, dict):
            raise ValueError(f"{at}.answers[{j}] is not an object")
        field(answer, "text", str, f"{at}.answers[{j}]")
    return [answer["text"] for answer in answers]


def squad_prompt(context: str, question: str) -> str:
    """The text a question is asked with, as training reads SQuAD: the answer follows "Answer:"."""
    return f"{context.strip()}\n\nQuestion: {question.strip()}\nAnswer:"


def squad_paragraph(paragraph: dict, where: str) -> str:
    """A paragraph as training text: the context, then each question and its first answer."""
    lines = [field(paragraph, "context", str, where).strip(), ""]
    for i, qa in enumerate(field(paragraph, "qas", list, where, [])):
        at = f"{where}.qas[{i}]"
        answers = squad_answers(qa, at)
        answer = answers[0] if answers else NO_ANSWER
        lines += [f"Question: {field(qa, 'question', str, at).strip()}", f"Answer: {answer.strip()}"]
    return "\n".join(lines)


def squad_paragraphs(data) -> Iterator[tuple]:
    """(article index, article, paragraph index, paragraph, where it is) for each paragraph of SQuAD
    JSON ``data``; ValueError saying where the first article, title or paragraph of the wrong kind is."""
    if not isinstance(data, dict) or not isinstance(data.get("data"), list):
        raise ValueError("no list 'data' of articles")
    for a, article in enumerate(data["data"]):
        where = f"data[{a}]"
        if not isinstance(article, dict):
            raise ValueError(f"{where} is not an object")
        field(article, "title", str, where, "")
        for index, paragraph in enumerate(field(article, "paragraphs", list, where)):
            at = f"{where}.paragraphs[{index}]"
            if not isinstance(paragraph, dict):
                raise ValueError(f"{at} is not an object")
            yield a, article, index, paragraph, at


def squad_documents(path: Path, data: dict) -> list:
    documents = []
    try:
        for _, article, index, paragraph, where in squad_paragraphs(data):
            title = article.get("title", "")
            text = squad_paragraph(paragraph, where)
            check_unicode(text)
            documents.append(Document(f"{path}:{title}:{index}", (text,)))
    except ValueError as error:
        raise UserError(f"{path}: not a SQuAD v1.1/v2.0 file ({error}); give plain text or SQuAD JSON") from None
    return documents


def json_documents(f, path: Path) -> Iterator[Document]:
    """SQuAD when the file is SQuAD JSON, else the file as one text document."""
    if os.fstat(f.fileno()).st_size > MAX_JSON_BYTES:
        yield Document(str(path), text_pieces(f, path))
        return
    with f:
        raw = f.read()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        skip(path, "not utf-8")
        return
    try:
        data = parse_json(text)
    except ValueError:
        data = None
    if isinstance(data, dict) and isinstance(data.get("data"), list):
        yield from squad_documents(path, data)
    else:
        yield Document(str(path), (text,))


def file_documents(path: Path) -> Iterator[Document]:
    f = open_file(path)
    if f is None:
        return
    if path.suffix == ".jsonl":
        yield from jsonl_documents(f, path)
    elif path.suffix == ".json":
        yield from json_documents(f, path)
    else:
        yield Document(str(path), text_pieces(f, path))


def iter_documents(path: Path | None, include: tuple = (), exclude: tuple = (), max_bytes: int | None = None,
                   leave_out: tuple = ()) -> Iterator[Document]:
    """The documents of ``path`` (default: the standard library's source, capped at 4 MiB), each to be
    read before the next is asked for; the directories ``leave_out`` are not read. Each document's
    ``file`` names its file: the path relative to a directory, the file's name when ``path`` is one."""
    if path is None:
        path = default_corpus_root()
        include, exclude = include or DEFAULT_INCLUDE, exclude or DEFAULT_EXCLUDE
        max_bytes = max_bytes or DEFAULT_MAX_BYTES
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path} does not exist; give a text file, a directory, a .jsonl or SQuAD file")
    if path.is_dir():
        root = path.resolve()
        files = ((p, name) for p in walk(path, leave_out)
                 if matches(name := str(p.relative_to(root)), include, exclude))
    else:
        files = [(path, path.name)]
    total = 0
    for file, name in files:
        for document in file_documents(file):
            document.file = name
            yield document
            total += document.size
            if max_bytes is not None and total >= max_bytes:
                return
