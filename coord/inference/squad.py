"""Question answering on SQuAD: ask a checkpoint each question of a SQuAD v1.1/v2.0 file after its
context, and score the answers with exact match and F1 as the official evaluation scripts do.

The answer is what greedy decoding writes after "Answer:" (the way training reads SQuAD) up to
the end of the line or the end-of-text token; "(no answer)", what a v2.0 question without an
answer is trained on, counts as the empty prediction. Scores are percentages:

- text is normalised first: lower case, punctuation removed, the articles a, an, the removed,
  whitespace collapsed;
- exact match is 1 when the normalised prediction equals a normalised gold answer;
- F1 is the harmonic mean of precision and recall of the normalised tokens in common (counted
  with multiplicity); when either side has no tokens it is 1 if both have none, else 0;
- a question takes its best score over its gold answers; one without a gold answer (v2.0
  ``is_impossible``) has the empty answer as its gold, so only an empty prediction scores.
"""

import re
import string
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from ..data.corpus import (NO_ANSWER, check_unicode, field, parse_json, squad_answers, squad_paragraphs,
                           squad_prompt)
from ..errors import UserError

PUNCTUATION = frozenset(string.punctuation)
ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
MAX_FILE_BYTES = 256 << 20


@dataclass(frozen=True)
class Question:
    id: str
    context: str
    question: str
    answers: tuple  # gold answer texts; () for a question without an answer

    @property
    def answerable(self) -> bool:
        return bool(self.answers)


def read_squad(path: Path) -> list:
    """The questions of a SQuAD v1.1/v2.0 file; UserError (one line) when it is not one."""
    path = Path(path)
    try:
        if path.stat().st_size > MAX_FILE_BYTES:
            raise UserError(f"{path}: larger than {MAX_FILE_BYTES >> 20} MiB; give a SQuAD file")
        data = parse_json(path.read_bytes().decode("utf-8"))
    except OSError as error:
        raise UserError(f"cannot read {path}: {error.strerror}; give a SQuAD v1.1/v2.0 JSON file") from None
    except (UnicodeDecodeError, ValueError) as error:
        raise UserError(f"{path}: not SQuAD JSON ({error}); give a SQuAD v1.1/v2.0 file") from None
    questions = []
    try:
        for a, _, p, paragraph, at in squad_paragraphs(data):
            context = field(paragraph, "context", str, at)
            for q, qa in enumerate(field(paragraph, "qas", list, at, [])):
                answers = tuple(squad_answers(qa, f"{at}.qas[{q}]"))
                if qa.get("is_impossible") is True:
                    answers = ()
                text = field(qa, "question", str, f"{at}.qas[{q}]")
                qid = qa.get("id", f"{a}.{p}.{q}")
                for value in (context, text, *answers):
                    check_unicode(value)
                questions.append(Question(str(qid), context, text, answers))
    except ValueError as error:
        raise UserError(f"{path}: not a SQuAD v1.1/v2.0 file ({error}); fix the file") from None
    if not questions:
        raise UserError(f"{path}: holds no questions; give a SQuAD file with questions")
    ids = Counter(q.id for q in questions)
    if max(ids.values()) > 1:
        raise UserError(f"{path}: the question id {next(i for i, n in ids.items() if n > 1)!r} appears twice; "
                        "ids must be unique")
    return questions


# ----- scoring, as the official SQuAD evaluation scripts -----

def normalize(text: str) -> str:
    text = "".join(ch for ch in text.lower() if ch not in PUNCTUATION)
    return " ".join(ARTICLES.sub(" ", text).split())


def exact_match(prediction: str, gold: str) -> float:
    return float(normalize(prediction) == normalize(gold))


def f1(prediction: str, gold: str) -> float:
    predicted, expected = normalize(prediction).split(), normalize(gold).split()
    if not predicted or not expected:
        return float(predicted == expected)
    same = sum((Counter(predicted) & Counter(expected)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(predicted), same / len(expected)
    return 2 * precision * recall / (precision + recall)


def golds(question: Question) -> list:
    """The gold answers scored against: those that normalise to something, else the empty answer."""
    return [a for a in question.answers if normalize(a)] or [""]


def summary(scores: list) -> dict:
    """{"questions", "exact_match", "f1"} over (exact, f1) pairs, as percentages."""
    n = len(scores)
    return {"questions": n, "exact_match": 100.0 * sum(e for e, _ in scores) / n if n else 0.0,
            "f1": 100.0 * sum(f for _, f in scores) / n if n else 0.0}


def score(questions: list, predictions: dict) -> dict:
    """Exact match and F1 over ``questions`` of ``predictions`` {id: answer text}; with the answerable
    and unanswerable questions apart when the file has both kinds."""
    per = {q.id: (max(exact_match(predictions[q.id], g) for g in golds(q)),
                  max(f1(predictions[q.id], g) for g in golds(q))) for q in questions}
    result = summary(list(per.values()))
    answerable = [per[q.id] for q in questions if q.answerable]
    if len(answerable) < len(questions):
        result["answerable"] = summary(answerable)
        result["unanswerable"] = summary([per[q.id] for q in questions if not q.answerable])
    return result


# ----- asking the model -----

def answer(weights, cache, tokenizer, question: Question, max_tokens: int) -> str:
    """The model's greedy answer to ``question`` after its context, to the end of the line."""
    from .sampling import SamplingConfig, generate_text

    config = SamplingConfig(max_new_tokens=max_tokens, temperature=0.0, stop=("\n",))
    try:
        text = "".join(generate_text(weights, cache, tokenizer, squad_prompt(question.context, question.question),
                                     config)).strip()
    except UserError as error:
        raise UserError(f"question {question.id}: {error}") from None
    return "" if text == NO_ANSWER else text
