"""What the command line promises every user: --version, defaults in every --help, one-line errors,
settings from a TOML file, several samples and prompts from files, syslog priorities for the journal."""

import json
import os
import re
import subprocess
import sys
from importlib import metadata

import pytest
import structlog

from cllm.coord.cli.main import build_parser
from cllm.coord.logs import configure

from .runs import TINY_MODEL, cllm, command, events, refused, small_corpus


def test_version_names_the_package_and_python():
    result = cllm("--version")
    assert result.returncode == 0
    assert result.stdout == f"cllm {metadata.version('cllm')} (Python {sys.version.split()[0]})\n"


def test_a_missing_command_is_one_line_without_a_doubled_prefix():
    result = cllm()
    assert result.returncode == 2
    assert result.stderr == "cllm: error: the following arguments are required: command (see 'cllm --help')\n"


def help_entries(text: str) -> dict:
    """{first option string: its whole help entry, whitespace collapsed} from an argparse help text."""
    entries, current = {}, None
    for line in text.splitlines():
        if re.match(r"^  -", line):
            current = line.split()[0].rstrip(",")
            entries[current] = line
        elif current and line.startswith("    "):
            entries[current] += " " + line.strip()
        else:
            current = None
    return {k: " ".join(v.split()) for k, v in entries.items()}


def subcommands():
    parser = build_parser()
    commands = next(a for a in parser._actions if a.dest == "command")
    return [parser, *commands.choices.values()]


@pytest.mark.parametrize("parser", subcommands(), ids=lambda p: p.prog)
def test_every_help_shows_the_default_of_every_option_that_has_one(parser):
    from cllm.coord.training.config import BY_NAME

    entries = help_entries(parser.format_help())
    for action in parser._actions:
        if not action.option_strings or action.nargs == 0 or action.dest == "help":
            continue
        entry = entries[action.option_strings[0]]
        if parser.prog == "cllm train" and action.dest in BY_NAME:  # None there stands for "not given"
            default = BY_NAME[action.dest].default
            shown = "the cores this process may use" if action.dest == "threads" else default
            assert default in (None, ()) or f"(default: {shown})" in entry, entry
        elif action.default not in (None, "", []):
            assert f"(default: {action.default})" in entry, entry


def test_help_as_printed_shows_defaults():
    shown = help_entries(cllm("train", "--help").stdout)
    assert shown["--batch-size"].endswith("sequences per micro-step (default: 16)")
    assert shown["--lr-schedule"].endswith("(default: constant)")
    assert help_entries(cllm("generate", "--help").stdout)["--top-k"].endswith("(default: 0)")


# ----- train --config -----

def test_train_takes_its_settings_from_a_toml_file_and_options_override_it(tmp_path):
    small_corpus(tmp_path)
    config = tmp_path / "settings" / "train.toml"
    config.parent.mkdir()
    config.write_text('[data]\npath = "../corpus.txt"\ncache_dir = "../cache"\n\n'
                      '[model]\nembed_dim = 32\nnum_layers = 1\nnum_heads = 2\nseq_len = 16\n\n'
                      '[training]\nbatch_size = 4\nsteps = 50\nthreads = 1\nlearning_rate = 0.002\n'
                      'checkpoint_dir = "run"\neval_interval = 0\n\n[service]\nstep_timeout = 120\n')
    result = subprocess.run(command("train", "--config", config, "--steps", 3, "--learning-rate", "0.004"),
                            capture_output=True, text=True, timeout=600, cwd="/")
    assert result.returncode == 0, result.stderr
    started = next(e for e in events(result.stdout) if e["event"] == "train_started")
    assert (started["steps"], started["batch_size"], started["seq_len"], started["threads"]) == (3, 4, 16, 1)
    steps = [e for e in events(result.stdout) if e["event"] == "step"]
    assert steps[0]["lr"] == 0.004  # the option, not the file's 0.002
    saved = next(e for e in events(result.stdout) if e["event"] == "checkpoint_saved")
    assert saved["path"].startswith(str(tmp_path / "settings" / "run") + "/")  # relative to the file


@pytest.mark.parametrize("text, message", [
    ("[training]\nbatch_size = 0\n", "[training] batch_size must be a positive integer, got 0"),
    ("[training]\nbatch = 4\n", "unknown key [training] batch; allowed:"),
    ("[trainig]\nsteps = 4\n", "unknown table [trainig]"),
    ("[training\n", "invalid TOML"),
])
def test_a_bad_settings_file_is_one_line_and_status_2(tmp_path, text, message):
    config = tmp_path / "train.toml"
    config.write_text(text)
    line = refused(cllm("train", "--config", config, "--checkpoint-dir", tmp_path / "run"), 2, message)
    assert line.startswith(f"cllm: error: {config}: "), line
    assert not (tmp_path / "run").exists()


# ----- generate, trained under a journal -----

@pytest.fixture(scope="module")
def journal_run(tmp_path_factory):
    """A run trained with its standard output as 'the journal' (JOURNAL_STREAM names the file it writes to)."""
    tmp = tmp_path_factory.mktemp("journal")
    out = tmp / "journal"
    with open(out, "w") as stream:
        info = os.fstat(stream.fileno())
        env = {**os.environ, "JOURNAL_STREAM": f"{info.st_dev}:{info.st_ino}"}
        result = subprocess.run(command("train", small_corpus(tmp), *TINY_MODEL, "--steps", 8, "--threads", 1,
                                        "--checkpoint-dir", tmp / "run", "--cache-dir", tmp / "cache",
                                        "--max-bad-steps", 1, "--log-level", "debug"),
                                stdout=stream, stderr=subprocess.PIPE, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr
    return tmp / "run", out.read_text()


def test_lines_to_the_journal_carry_their_syslog_priority(journal_run):
    _, journal = journal_run
    priorities = {"debug": "<7>", "info": "<6>", "warning": "<4>", "error": "<3>"}
    lines = journal.splitlines()
    assert lines and all(re.match(r"^<[3467]>\{", line) for line in lines), lines[:3]
    for line in lines:
        event = json.loads(line[3:])  # the payload is the JSON line unchanged
        assert line[:3] == priorities[event["level"]]
    assert {json.loads(line[3:])["event"] for line in lines} >= {"train_started", "step", "train_finished"}


def test_the_journal_prefix_only_where_journal_stream_matches(tmp_path, monkeypatch):
    journal, other = tmp_path / "journal", tmp_path / "other"
    saved = structlog.get_config()
    try:
        with open(journal, "w") as j, open(other, "w") as o:
            info = os.fstat(j.fileno())
            monkeypatch.setenv("JOURNAL_STREAM", f"{info.st_dev}:{info.st_ino}")
            for stream in (j, o):
                configure("json", "debug", stream=stream)
                log = structlog.get_logger("test")
                log.debug("d")
                log.info("i")
                log.warning("w", x=1)
                log.error("e")
    finally:
        structlog.configure(**saved)  # the files are closed: later tests must not log into them
    assert [line[:3] for line in journal.read_text().splitlines()] == ["<7>", "<6>", "<4>", "<3>"]
    assert [json.loads(line)["event"] for line in other.read_text().splitlines()] == ["d", "i", "w", "e"]
    assert json.loads(journal.read_text().splitlines()[2][3:])["x"] == 1


def test_the_last_error_line_carries_its_priority_in_the_journal(tmp_path):
    err = tmp_path / "stderr"
    with open(err, "w") as stream:
        info = os.fstat(stream.fileno())
        subprocess.run(command("serve", "--config", tmp_path / "missing.toml"), stderr=stream, timeout=60,
                       env={**os.environ, "JOURNAL_STREAM": f"{info.st_dev}:{info.st_ino}"})
    assert err.read_text().startswith("<3>cllm: error: ") and err.read_text().count("\n") == 1


def generate(run, *args, stdin=None):
    result = subprocess.run(command("generate", run, "--max-new-tokens", 30, *args), input=stdin,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_num_samples_draws_each_with_the_next_seed(journal_run):
    run, _ = journal_run
    both = generate(run, "--prompt", "KING", "--seed", 3, "--num-samples", 2)
    first, second = generate(run, "--prompt", "KING", "--seed", 3), generate(run, "--prompt", "KING", "--seed", 4)
    assert first != second
    assert both == first + "-" * 40 + "\n" + second


def test_the_prompt_comes_from_a_file_or_standard_input(journal_run, tmp_path):
    run, _ = journal_run
    prompt = tmp_path / "prompt.txt"
    prompt.write_text("ROMEO:\nWhat")
    expected = generate(run, "--prompt", "ROMEO:\nWhat", "--seed", 1)
    assert expected.startswith("ROMEO:\nWhat")
    assert generate(run, "--prompt-file", prompt, "--seed", 1) == expected
    assert generate(run, "--prompt-file", "-", "--seed", 1, stdin="ROMEO:\nWhat") == expected
    prompt.write_bytes(b"ROMEO\xff")
    refused(cllm("generate", run, "--prompt-file", prompt), 2, "is not UTF-8 text")
    both = cllm("generate", run, "--prompt-file", prompt, "--prompt", "x")
    assert both.returncode == 2 and "not allowed with argument" in both.stderr
