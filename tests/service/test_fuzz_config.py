"""Property-based fuzzing of the daemon's TOML loader and of submitted jobs: a configuration or one clear
line (UserError), never another exception; a job that passes never reaches outside what it may."""

import math

import pytest
from hypothesis import given, strategies as st

from cllm.coord.errors import UserError
from cllm.coord.service.config import RUN_KEYS, TABLES, keys_of, load_config, merge_job

from ..fuzzing import FUZZ, damaged, edits, rewrite, values

KEYS = sorted({key for table in TABLES for key in keys_of(table)}) + ["x", ""]
EXAMPLE = b'[data]\npath = "corpus.txt"\ntokenizer = "bpe"\n[model]\nembed_dim = 64\n[training]\nsteps = 10\n' \
          b'threads = 2\n[service]\nstate_dir = "state"\nstep_timeout = 5.0\ndata_roots = ["corpora"]\n' \
          b'[metrics]\nenabled = false\nport = 9464\n'


def toml_value(value) -> str:
    """A value as TOML writes it (inline tables for objects); None has no TOML form and becomes a string."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf") if math.isinf(value) else repr(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f'"{k}" = {toml_value(v)}' for k, v in value.items()) + "}"
    text = str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{text}"'


tables = st.dictionaries(st.sampled_from(list(TABLES) + ["extra"]),
                         st.dictionaries(st.sampled_from(KEYS), values, max_size=4), max_size=4)
documents = st.one_of(
    tables.map(lambda t: "".join(f"[{name}]\n" + "".join(f'"{k}" = {toml_value(v)}\n' for k, v in keys.items())
                                 for name, keys in t.items()).encode("utf-8", "surrogatepass")),
    st.builds(damaged, st.just(EXAMPLE), edits),
    st.binary(max_size=300),
    st.integers(1, 3000).map(lambda n: b"a = " + b"[" * n + b"]" * n + b"\n"))


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return tmp_path_factory.mktemp("toml")


@FUZZ
@given(documents)
def test_any_file_is_a_configuration_or_one_clear_line(folder, data):
    path = folder / "cllm.toml"
    rewrite(path, data)
    try:
        config = load_config(path, {})
    except UserError as error:
        assert str(error) and "\n" not in str(error)
        return
    assert config.service.state_dir.is_absolute() and config.service.socket.is_absolute()


jobs = st.dictionaries(st.sampled_from(["data", "model", "training", "service", "x"]),
                       st.dictionaries(st.sampled_from(sorted({k for t in RUN_KEYS.values() for k in t}) + ["x"]),
                                       values | st.sampled_from(["/etc/shadow", "../..", "state/../..", "state/ok",
                                                                 "corpora/a.txt", "state/../cache", "state/cache"]),
                                       max_size=4), max_size=3) | values


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    directory = tmp_path_factory.mktemp("jobs")
    (directory / "cllm.toml").write_text('[data]\npath = "corpora"\n[service]\nstate_dir = "state"\n')
    return load_config(directory / "cllm.toml", {})


@FUZZ
@given(jobs)
def test_any_job_is_merged_within_bounds_or_refused_in_one_line(service, overrides):
    try:
        merged = merge_job(service, overrides)
    except UserError as error:
        assert str(error) and "\n" not in str(error)
        return
    state, corpora = service.service.state_dir.resolve(), service.run.data.path.resolve()
    path = merged.run.data.path
    assert path == service.run.data.path or path.is_relative_to(state) or path.is_relative_to(corpora)
    cache = merged.run.data.cache_dir
    assert cache == service.run.data.cache_dir or cache.is_relative_to(state)
    assert 0 <= merged.run.threads <= 1024
