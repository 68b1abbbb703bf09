"""Prompt and scoring of `hicom_offline`, in the format of lmms-eval's multiple-choice video tasks (VideoMME)."""

import re
from pathlib import Path

HERE = Path(__file__).resolve().parent


def doc_to_visual(doc):
    return [str(HERE / doc["video"])]


def doc_to_text(doc):
    options = "\n".join(doc["options"])
    return f"{doc['question']}\n{options}\nAnswer with the option's letter from the given choices directly."


def process_results(doc, results):
    """The first standalone option letter of the answer, scored against the doc's."""
    match = re.search(r"\b([A-D])\b", results[0])
    return {"accuracy": float(match is not None and match.group(1) == doc["answer"])}
