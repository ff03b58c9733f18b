"""SQuAD question answering: exact match and F1 as the official v1.1/v2.0 scripts define them, checked
against figures worked out by hand, and `cllm eval --squad` end to end on a model trained on the file."""

import json
import re

import pytest

from cllm.coord.data.corpus import squad_prompt
from cllm.coord.inference.squad import Question, f1, normalize, read_squad, score

from .runs import TINY_MODEL, cllm, refused

CONTEXT_1 = ("Super Bowl 50 was played on February 7, 2016, at Levi's Stadium in Santa Clara, California. "
             "The Denver Broncos won a gold medal.")
CONTEXT_2 = "Beyonce was born in Houston, Texas. She sang in a choir."


def squad_file(path, version="v2.0"):
    qa = [
        {"id": "q1", "question": "Which team won?", "answers": [{"text": "Denver Broncos", "answer_start": 0},
                                                               {"text": "The Denver Broncos", "answer_start": 0}]},
        {"id": "q2", "question": "Where was it played?", "answers": [{"text": "Santa Clara, California",
                                                                     "answer_start": 0}]},
        {"id": "q3", "question": "What did they win?", "answers": [{"text": "gold medal", "answer_start": 0},
                                                                  {"text": "a gold medal", "answer_start": 0}]},
        {"id": "q4", "question": "Who lost?", "answers": [], "is_impossible": True,
         "plausible_answers": [{"text": "Carolina Panthers", "answer_start": 0}]},
    ]
    qb = [
        {"id": "q5", "question": "Where did she die?", "answers": [], "is_impossible": True},
        {"id": "q6", "question": "What is her name?", "answers": [{"text": "Beyonce", "answer_start": 0}]},
    ]
    data = {"version": version, "data": [
        {"title": "Super_Bowl_50", "paragraphs": [{"context": CONTEXT_1, "qas": qa}]},
        {"title": "Beyonce", "paragraphs": [{"context": CONTEXT_2, "qas": qb}]}]}
    path.write_text(json.dumps(data))
    return path


def test_normalisation_is_the_official_one():
    assert normalize("  The Denver-Broncos!  ") == "denverbroncos"  # punctuation goes before the articles
    assert normalize("An apple, a pear and THE plum.") == "apple pear and plum"
    assert normalize("theory") == "theory"  # articles are whole words


def test_exact_match_and_f1_against_hand_computed_values(tmp_path):
    questions = read_squad(squad_file(tmp_path / "dev.json"))
    assert [q.id for q in questions] == ["q1", "q2", "q3", "q4", "q5", "q6"]
    assert [q.answerable for q in questions] == [True, True, True, False, False, True]
    predictions = {
        "q1": "the Denver Broncos!",  # normalises to a gold answer: EM 1, F1 1
        "q2": "Santa Clara",          # 2 of 3 gold tokens, all predicted right: P 1, R 2/3, F1 0.8; EM 0
        "q3": "medal of gold",        # best over golds: 'gold medal' P 2/3, R 1, F1 0.8; EM 0
        "q4": "",                     # unanswerable, empty answer: EM 1, F1 1
        "q5": "Paris",                # unanswerable, an answer given: EM 0, F1 0
        "q6": "",                     # answerable, nothing given: EM 0, F1 0
    }
    got = score(questions, predictions)
    assert got["questions"] == 6
    assert got["exact_match"] == pytest.approx(100 * 2 / 6)
    assert got["f1"] == pytest.approx(100 * (1 + 0.8 + 0.8 + 1 + 0 + 0) / 6)  # 60.0
    assert got["answerable"] == pytest.approx({"questions": 4, "exact_match": 25.0, "f1": 65.0})
    assert got["unanswerable"] == pytest.approx({"questions": 2, "exact_match": 50.0, "f1": 50.0})
    assert f1("santa clara", "Santa Clara, California") == pytest.approx(0.8)


def test_a_v1_file_has_no_unanswerable_breakdown(tmp_path):
    questions = [Question("a", "ctx", "q?", ("red car", "a red car")), Question("b", "ctx", "q?", ("blue",))]
    got = score(questions, {"a": "The red car", "b": "blue sky"})
    assert got == pytest.approx({"questions": 2, "exact_match": 50.0, "f1": 100 * (1 + 2 / 3) / 2})  # b: P 1/2, R 1


@pytest.mark.parametrize("text, message", [
    ('{"data": 3}', "no list 'data' of articles"),
    ('{"data": [{"paragraphs": [{"context": "c", "qas": [{"question": "q", "answers": [3]}]}]}]}',
     "answers[0] is not an object"),
    ('{"data": [{"paragraphs": [{"qas": []}]}]}', "context is not a string"),
    ('{"data": []}', "holds no questions"),
    ("not json", "not SQuAD JSON"),
])
def test_a_file_that_is_not_squad_is_one_line(tmp_path, text, message):
    path = tmp_path / "bad.json"
    path.write_text(text)
    refused(cllm("eval", tmp_path / "nowhere", "--squad", path), 2, message)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A char model trained on the SQuAD file itself (read as text: context, questions and answers)."""
    tmp = tmp_path_factory.mktemp("squad")
    data = squad_file(tmp / "dev.json")
    result = cllm("train", data, *TINY_MODEL, "--steps", 30, "--threads", 1, "--checkpoint-dir", tmp / "run",
                  "--cache-dir", tmp / "cache")
    assert result.returncode == 0, result.stderr
    return tmp, data


def test_cllm_eval_squad_answers_greedily_and_scores_what_it_answered(trained):
    tmp, data = trained
    out = cllm("eval", tmp / "run", "--squad", data, "--json", "--predictions", tmp / "predictions.json",
               "--max-answer-tokens", 12)
    assert out.returncode == 0, out.stderr
    figures = json.loads(out.stdout)
    predictions = json.loads((tmp / "predictions.json").read_text())
    questions = read_squad(data)
    assert set(predictions) == {q.id for q in questions}
    assert {k: figures[k] for k in ("questions", "exact_match", "f1", "answerable", "unanswerable")} == \
        score(questions, predictions)
    for q in questions[:2]:  # the answer is greedy decoding after "Answer:" up to the line's end
        sample = cllm("generate", tmp / "run", "--prompt", squad_prompt(q.context, q.question), "--temperature", 0,
                      "--stop", "\n", "--max-new-tokens", 12)
        text = sample.stdout[len(squad_prompt(q.context, q.question)):].strip()
        assert predictions[q.id] == ("" if text == "(no answer)" else text)

    table = cllm("eval", tmp / "run", "--squad", data, "--max-answer-tokens", 12).stdout.splitlines()
    rows = {line.split()[0]: line.split()[1:] for line in table[3:]}
    assert table[2].split() == ["questions", "exact", "match", "F1"]
    assert rows["all"] == ["6", f"{figures['exact_match']:.2f}", f"{figures['f1']:.2f}"]
    assert rows["unanswerable"][0] == "2" and rows["answerable"][0] == "4"


def test_cllm_eval_reports_token_accuracy_beside_loss_and_perplexity(trained):
    tmp, data = trained
    out = cllm("eval", tmp / "run", data, "--json", "--cache-dir", tmp / "cache")
    assert out.returncode == 0, out.stderr
    figures = json.loads(out.stdout)
    assert 0 < figures["accuracy"] < 1 and figures["perplexity"] > 1
    table = dict(re.split(r"\s{2,}", line, maxsplit=1) for line in
                 cllm("eval", tmp / "run", data, "--cache-dir", tmp / "cache").stdout.splitlines())
    assert table["accuracy"] == f"{100 * figures['accuracy']:.2f}%" and table["loss"] == f"{figures['loss']:.4f}"
