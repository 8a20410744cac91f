"""Generate ner-small.conll: a small synthetic CoNLL-2003-style NER corpus (token, POS-like
placeholder, tag per line; blank lines between sentences) for configs/ner-window.yaml.

The sentences come from templates, so the entities are recognizable from their context
words and from the names themselves, as in real NER; some names are shared between entity
types and some appear only in validation-sized amounts, so the task is not trivial.
Run: python configs/data/make_ner.py  (deterministic; rewrites the file)."""

from __future__ import annotations

import random
from pathlib import Path

PEOPLE = ["Alice Smith", "Bob Jones", "Maria Garcia", "Wei Chen", "Ahmed Khan", "Olga Petrova", "John",
          "Fatima", "Kenji Watanabe", "Lucia Rossi", "Peter Brown", "Anna Kowalski", "Jordan", "Grace Lee"]
PLACES = ["Paris", "Berlin", "New York", "Lagos", "Tokyo", "Lima", "Cairo", "Oslo", "Jordan",
          "San Francisco", "Mumbai", "Toronto", "Madrid", "Nairobi"]
ORGS = ["Acme Corp", "the United Nations", "Globex", "Initech", "Reuters", "the World Bank", "Siemens",
        "Stark Industries", "the Red Cross", "Umbrella Inc", "Nokia", "Oxfam"]
TEMPLATES = [
    "{PER} flew to {LOC} on Monday .",
    "{PER} works for {ORG} in {LOC} .",
    "{ORG} opened a new office in {LOC} .",
    "Officials from {ORG} met {PER} yesterday .",
    "{PER} said the talks in {LOC} went well .",
    "Shares of {ORG} rose 3 percent after {PER} resigned .",
    "The mayor of {LOC} thanked {ORG} for its support .",
    "{PER} and {PER} visited {LOC} last week .",
    "In {LOC} , {ORG} hired 200 new workers .",
    "According to {ORG} , prices in {LOC} fell sharply .",
    "{PER} will speak at {ORG} headquarters .",
    "Rain is expected in {LOC} and {LOC} tomorrow .",
]


SYLLABLES = ["ka", "lo", "mi", "ra", "tu", "ne", "sa", "vo", "di", "en", "ba", "zu", "or", "li", "pe"]


def invented(rng: random.Random, kind: str) -> str:
    # Rare names, mostly seen once: the classifier must read the context, not memorize names.
    word = "".join(rng.choice(SYLLABLES) for _ in range(rng.randint(2, 3))).capitalize()
    if kind == "PER":
        return word + " " + "".join(rng.choice(SYLLABLES) for _ in range(2)).capitalize()
    if kind == "ORG":
        return word + " " + rng.choice(["Corp", "Group", "Bank", "Labs"])
    return word


def sentence(rng: random.Random) -> list[tuple[str, str]]:
    out = []
    for piece in rng.choice(TEMPLATES).split():
        if piece in ("{PER}", "{LOC}", "{ORG}"):
            kind = piece[1:4]
            known = {"PER": PEOPLE, "LOC": PLACES, "ORG": ORGS}[kind]
            name = rng.choice(known) if rng.random() < 0.6 else invented(rng, kind)
            for i, word in enumerate(name.split()):
                out.append((word, ("B-" if i == 0 else "I-") + kind))
        else:
            out.append((piece, "O"))
    return out


def main(n: int = 1500, seed: int = 224) -> None:
    rng = random.Random(seed)
    lines = ["-DOCSTART- -X- O", ""]
    for _ in range(n):
        for word, tag in sentence(rng):
            lines.append(f"{word} X {tag}")
        lines.append("")
    Path(__file__).with_name("ner-small.conll").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
