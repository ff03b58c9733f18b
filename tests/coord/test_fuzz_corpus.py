"""Property-based fuzzing of the corpus readers: any bytes as text, JSON Lines or SQuAD give documents or
one clear line (UserError), never another exception."""

import json

import pytest
from hypothesis import given, strategies as st

from cllm.coord.data.corpus import SNIFF_BYTES
from cllm.coord.errors import UserError

from ..fuzzing import FUZZ, damaged, deep_text, dumps, edits, replaced, rewrite, values
from .runs import texts



@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz")


def read(path):
    try:
        found = texts(path)
    except UserError as error:
        assert str(error) and "\n" not in str(error)
        return None
    assert all(isinstance(text, str) for text in found)
    return found


@FUZZ
@given(st.binary(max_size=600) | st.text(max_size=100).map(lambda t: t.encode("utf-8", "surrogatepass")))
def test_any_bytes_as_a_text_file(folder, data):
    path = folder / "any.txt"
    rewrite(path, data)
    try:
        expected = [] if b"\0" in data[:SNIFF_BYTES] else [data.decode("utf-8")]
    except UnicodeDecodeError:
        expected = []
    assert read(path) == expected


RECORDS = [b'{"text": "one"}', b'{"text": "two", "id": 3}', b"", b"   ", b'{"text": "\\u00e9\\ud83d\\ude80"}']
jsonl_lines = st.sampled_from(RECORDS) | st.builds(damaged, st.sampled_from(RECORDS[:2]), edits) \
    | values.map(dumps) | values.map(lambda v: dumps({"text": v})) | deep_text.map(str.encode) | st.binary(max_size=12)


@FUZZ
@given(st.lists(jsonl_lines, max_size=5))
def test_any_lines_as_json_lines(folder, lines):
    path = folder / "any.jsonl"
    data = b"\n".join(lines)
    rewrite(path, data)
    found = read(path)
    if b"\0" in data[:SNIFF_BYTES]:
        assert found == []  # binary: skipped unread
    elif found is not None:
        assert len(found) == sum(1 for line in data.split(b"\n") if line.decode().strip())


SQUAD = {"version": "v2.0", "data": [{"title": "T", "paragraphs": [
    {"context": "Paris is in France.", "qas": [{"question": "Where?", "answers": [{"text": "France"}]},
                                              {"question": "Why?", "answers": [], "is_impossible": True}]},
    {"context": "Rome.", "qas": []}]}]}
squad_files = st.one_of(
    st.builds(lambda path, value: dumps(replaced(json.loads(json.dumps(SQUAD)), path, value)),
              st.lists(st.integers(0, 40), max_size=8), values),
    st.builds(damaged, st.just(dumps(SQUAD)), edits),
    values.map(lambda v: dumps({"data": v})),
    deep_text.map(lambda nest: ('{"data": [' + nest + "]}").encode()),
    st.binary(max_size=200))


@FUZZ
@given(squad_files)
def test_any_json_as_squad(folder, data):
    path = folder / "any.json"
    rewrite(path, data)
    read(path)
