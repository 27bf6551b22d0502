"""Synthetic structured documents: technical manuals with facts and single-/two-hop questions.

The embedded default task of DESIGN.md §5: it needs no download and every manual is a pure
function of its seed (one `numpy.random.Generator` per manual, no global random state).

Layout: one chapter per device (all devices of a manual share a brand and have near-identical
model codes such as "Halvard H7" / "Halvard H9" / "Halvard K7"). A chapter has an overview
section, component and procedure sections, and a closing "service contacts" section with facts
about teams, people and suppliers; the last is where the second hop of a two-hop question lives.
Each section is one paragraph: fact sentences mixed with filler that states no attribute.

Invariant: a fact's (subject, attribute) is unique within a manual and no other sentence names
both its subject and its value, so a question is answerable from its gold sentences only.
Distractors: the same attribute of other devices' parts, near-identical names of devices, teams
and people, and attribute-like values (durations, places) in other sentences.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

SYLLABLES = ("al an ar bel bor cal cor dan del dor el fen gar hal hol is jor kel kor lan len lum"
             " mar mir mor nal nor or pel pra quin ra ren rud sal sen sil tam tav tor ul var ven"
             " vik wen zar brin cas gil ost").split()
PLACE_ENDINGS = "ly ford wick ton by holm stad mouth field bury dale".split()
FIRST_ENDINGS = ("a", "o", "en", "ia", "is", "el", "ina", "an")
COMPANY_WORDS = ("Industries", "Works", "Components", "Precision", "Supply", "Engineering")
MODEL_LETTERS = "HKMRSTVXZ"
VOWELS = "aeiou"
MONTHS = ("January February March April May June July August September October November"
          " December").split()  # not calendar.month_name: that follows the locale
COLOURS = "red blue green yellow orange grey black white teal violet silver brown crimson".split()
_ROT, _FLU, _ELE = (("speed", "max_temp", "voltage", "part", "colour", "supplier"),
                    ("pressure", "max_temp", "part", "colour", "supplier"),
                    ("voltage", "max_temp", "part", "colour", "supplier"))
COMPONENTS = {c: attrs for names, attrs in (
    ("drive motor,cooling fan,spindle,starter motor,feed roller,gear assembly,main bearing,"
     "compressor", _ROT),
    ("coolant pump,intake valve,relief valve,hydraulic pump,fuel injector,filter housing,"
     "water pump,exhaust valve", _FLU),
    ("control board,pressure sensor,power supply,relay unit,heating element,display panel,"
     "temperature sensor,battery pack", _ELE)) for c in names.split(",")}
PROCEDURES = ("cold restart,filter replacement,calibration,belt tensioning,firmware update,"
              "pressure test,lubrication,emergency shutdown,descaling,alignment check").split(",")
DEVICE_ATTRS = ("weight", "released", "power", "warranty", "designer", "team")
PROCEDURE_ATTRS = ("duration", "steps", "interval")
SUPPORT_ATTRS = {"team": ("base", "lead"), "person": ("office", "extension"),
                 "supplier": ("hq", "founded")}

# attribute -> (statement, question, value kind); {s} is the subject, {v} the value.
ATTRS = {
    "weight": ("The {s} weighs {v}.", "How much does the {s} weigh?", "kg"),
    "released": ("The {s} was first released on {v}.", "When was the {s} first released?", "date"),
    "power": ("The {s} draws {v} at full load.", "What power does the {s} draw at full load?",
              "kw"),
    "warranty": ("The {s} has a warranty of {v}.", "How long is the {s}'s warranty?", "months"),
    "designer": ("The {s} was designed by {v}.", "Who designed the {s}?", "person"),
    "team": ("The {s} is serviced by the {v} team.", "Which team services the {s}?", "team"),
    "speed": ("The {s} runs at {v}.", "At what speed does the {s} run?", "rpm"),
    "pressure": ("The {s} works at a pressure of {v}.", "At what pressure does the {s} work?",
                 "kpa"),
    "max_temp": ("The {s} must stay below {v}.", "Below what temperature must the {s} stay?",
                 "celsius"),
    "voltage": ("The {s} is rated for {v}.", "What voltage is the {s} rated for?", "volt"),
    "part": ("The {s} has part number {v}.", "What is the part number of the {s}?", "code"),
    "colour": ("The {s} is painted {v}.", "What colour is the {s} painted?", "colour"),
    "supplier": ("The {s} is made by {v}.", "Which company makes the {s}?", "supplier"),
    "duration": ("The {s} takes {v}.", "How long does the {s} take?", "minutes"),
    "steps": ("The {s} consists of {v} steps.", "How many steps does the {s} consist of?", "steps"),
    "interval": ("The {s} is repeated every {v}.", "How often is the {s} repeated?", "hours"),
    "base": ("The {s} is based in {v}.", "Where is the {s} based?", "place"),
    "lead": ("The {s} is led by {v}.", "Who leads the {s}?", "person"),
    "office": ("{s} works from the office in {v}.", "In which town does {s} work?", "place"),
    "extension": ("{s} can be reached on extension {v}.", "What is the extension of {s}?", "ext"),
    "hq": ("{s} is headquartered in {v}.", "Where is {s} headquartered?", "place"),
    "founded": ("{s} was founded in {v}.", "In what year was {s} founded?", "year"),
}
# relation attribute -> (kind of the bridge entity, its subject string from the fact's value)
RELATIONS = {"team": ("team", "{} team"), "designer": ("person", "{}"),
             "supplier": ("supplier", "{}")}
TWO_HOP = {
    ("team", "base"): "Where is the team that services the {s} based?",
    ("team", "lead"): "Who leads the team that services the {s}?",
    ("designer", "office"): "In which town does the designer of the {s} work?",
    ("designer", "extension"): "What is the extension of the designer of the {s}?",
    ("supplier", "hq"): "Where is the company that makes the {s} headquartered?",
    ("supplier", "founded"): "In what year was the company that makes the {s} founded?",
}
FACT_PREFIXES = ("According to the specification sheet, ", "As recorded in the service files, ",
                 "For reference, ", "Note that ")
# Filler (" | "-separated): no attribute value next to an entity; {d} device, {c} component.
FILLER = tuple(" ".join("""
Keep the work area clean and well lit, and store removed parts in the order in which they were
taken out so that reassembly is straightforward. | Wear protective gloves and eye protection
whenever covers are removed, even for a quick look. | Most faults reported by customers were
traced back to loose connectors or dirty contacts rather than to parts that had actually worn
out. | Read the general safety rules at the start of this manual before beginning any of the
work that is described in this section. | Allow at least 30 minutes for the unit to cool down
before touching the housing or any of the parts behind it. | Use only the tools listed in the
appendix, because improvised tools can damage fasteners, seals and painted surfaces. | Tighten
all fasteners to the values given in the torque table at the end of this manual and mark each
one once it is done. | After reassembly, run the unit without load for a few minutes and check
carefully for leaks, rattles and warning lights. | Dispose of used oil, filters and packaging
according to local regulations, and never pour any fluid into a drain. | Illustrations in this
manual are for guidance only and may differ slightly from the unit in front of you. | In cold
weather, give the unit time to reach room temperature before switching it on, since
condensation can cause short circuits. | Replace damaged or unreadable labels immediately,
because they carry warnings that the operator relies on every day. | Do not mix parts from
different production batches unless the parts list explicitly allows it for the part in
question. | Check that the emergency stop works before returning the unit to service, and note
the result in the log. | Any modification that the manufacturer has not approved in writing
voids the warranty and may make the unit unsafe. | Spare parts should be stored in a dry
place, away from direct sunlight and from sources of heat or strong vibration. | If a fault
cannot be found within a reasonable time, contact the service team instead of replacing parts
at random. | A short visual inspection at the start of every shift catches many problems long
before they turn into expensive repairs. | Some older units were delivered with a slightly
different cover, which is removed in exactly the same way as the current one. | Before opening
the {d}, disconnect it from the mains and wait until all moving parts have come to a complete
stop. | Only trained personnel should carry out the work on the {d} that is described in this
section. | Keep a written record of every inspection of the {d}, including the date and the
name of the technician who did it. | The {d} should stand on a level, dry surface with enough
free space around it for cooling air to circulate. | Listen for unusual noise from the {c}
during the first hour of operation after any repair. | Dust and grease around the {c} make
faults harder to see, so clean the area before you inspect it closely. | A worn {c} rarely
fails at once; it usually announces itself through vibration, heat or a change in sound. |
Never force the {c} into place; if it does not seat easily, remove it again and check the
alignment.
""".split()).split(" | "))
CONTACT_TITLES = ("Service contacts", "Support and suppliers", "Contacts")


@dataclass
class Fact:
    """One stated fact: `(subject, attribute)` is unique within its manual."""

    subject: str                 # e.g. "coolant pump of the Halvard H7"
    attribute: str               # a key of ATTRS
    value: str                   # the literal answer string, e.g. "3400 rpm"
    sentence: str
    span: tuple[int, int]        # [start, end) of the sentence in Manual.text
    section: int                 # index into Manual.sections
    bridge: str | None = None    # relation facts: the subject string of the entity they point to


@dataclass
class Question:
    """A question with its answers and the character spans of its gold fact sentences."""

    question: str
    answers: list[str]
    gold_spans: list[tuple[int, int]]  # [start, end) of the gold fact sentences in Manual.text
    hops: int
    qid: str
    gold_facts: list[int] = field(default_factory=list)  # indices into Manual.facts
    bridge: str | None = None  # two-hop: the bridge entity named in both gold sentences


@dataclass
class Manual:
    """A generated markdown manual, its questions and the structured record of its facts."""

    doc_id: str
    title: str
    text: str
    questions: list[Question]
    facts: list[Fact] = field(default_factory=list)
    sections: list[tuple[int, int]] = field(default_factory=list)  # heading-to-end char spans
    seed: int = 0


def _pick(rng: np.random.Generator, seq):
    return seq[int(rng.integers(len(seq)))]


def _word(rng: np.random.Generator, n: int) -> str:
    return "".join(_pick(rng, SYLLABLES) for _ in range(n)).capitalize()


def _variant(rng: np.random.Generator, name: str) -> str:
    """A near-identical name: one vowel of the first word swapped."""
    pos = [i for i, ch in enumerate(name.split(" ")[0]) if ch in VOWELS]
    if not pos:
        return name
    i = _pick(rng, pos)
    return name[:i] + _pick(rng, [v for v in VOWELS if v != name[i]]) + name[i + 1:]


def _within(name: str, other: str) -> bool:
    """`name` occurs in `other` as whole words ("Lenhol" in "Casina Lenhol")."""
    return re.search(rf"(?<!\w){re.escape(name)}(?!\w)", other) is not None


def _names(rng, n: int, make, used: set[str], p_variant: float = 0.35) -> list[str]:
    """`n` new distinct names from `make(rng)`; a share `p_variant` are near-copies of others.
    No name occurs inside another (a team "Lenhol" beside a person "Casina Lenhol" would make a
    sentence about the person also name the team)."""
    out: list[str] = []
    while len(out) < n:
        name = _variant(rng, _pick(rng, out)) if out and rng.random() < p_variant else make(rng)
        if name not in used and not any(_within(name, u) or _within(u, name) for u in used):
            used.add(name)
            out.append(name)
    return out


def _value(rng: np.random.Generator, kind: str, pools: dict[str, list[str]]) -> str:
    r = lambda lo, hi: int(rng.integers(lo, hi))  # noqa: E731
    if kind in pools:
        return _pick(rng, pools[kind])
    return {"kg": lambda: f"{r(20, 1800) / 10:.1f} kg", "kw": lambda: f"{r(5, 400) / 10:.1f} kW",
            "date": lambda: f"{r(1, 29)} {_pick(rng, MONTHS)} {r(1995, 2024)}",
            "months": lambda: f"{_pick(rng, (6, 12, 18, 24, 36, 48, 60))} months",
            "rpm": lambda: f"{50 * r(16, 180)} rpm", "kpa": lambda: f"{5 * r(10, 180)} kPa",
            "celsius": lambda: f"{r(40, 150)} °C",
            "volt": lambda: f"{_pick(rng, ('3.3', '5', '12', '24', '48', '110', '230'))} V",
            "code": lambda: f"{_pick(rng, MODEL_LETTERS)}{chr(65 + r(0, 26))}-{r(100, 1000)}",
            "colour": lambda: _pick(rng, COLOURS), "minutes": lambda: f"{5 * r(5, 37)} minutes",
            "steps": lambda: str(r(3, 25)), "hours": lambda: f"{50 * r(1, 41)} operating hours",
            "ext": lambda: str(r(1000, 10000)), "year": lambda: str(r(1880, 2016))}[kind]()


def manual_seed(seed: int, index: int) -> int:
    """The seed of manual `index` of dataset `seed` (so one manual can be regenerated alone)."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1)[0])


def generate_manual(seed: int, *, chapters: int = 4, sections_per_chapter: int = 3,
                    sentences_per_section: int = 6, n_single: int = 6,
                    n_two_hop: int = 3) -> Manual:
    """One manual: `chapters` devices x `sections_per_chapter` sections x `sentences_per_section`.

    Asks up to `n_single` single-hop and `n_two_hop` two-hop questions (fewer only when the
    manual has too few facts, e.g. `sections_per_chapter=1` leaves no contacts section).
    """
    rng = np.random.default_rng(seed)
    used: set[str] = set()
    brand = _names(rng, 1, lambda g: _word(g, 2), used)[0]
    n_letters = min(len(MODEL_LETTERS), 1 + chapters // 6)
    letters = [MODEL_LETTERS[i] for i in rng.permutation(len(MODEL_LETTERS))[:n_letters]]
    codes = [f"{l}{d}" for l in letters for d in range(2, 10)]
    codes += [f"{l}{d}" for l in letters for d in range(10, 100)] if chapters > len(codes) else []
    devices = [f"{brand} {codes[i]}" for i in rng.permutation(len(codes))[:chapters]]
    n_ent = max(2, chapters // 2 + 1)
    pools = {"place": _names(rng, max(4, chapters), lambda g: _word(g, 1) + _pick(g, PLACE_ENDINGS),
                             used, 0.1),
             "team": _names(rng, n_ent, lambda g: _word(g, 2), used),
             "person": _names(rng, n_ent + 2, lambda g: f"{_word(g, 1)}{_pick(g, FIRST_ENDINGS)} "
                                                        f"{_word(g, 2)}", used),
             "supplier": _names(rng, n_ent, lambda g: f"{_word(g, 2)} {_pick(g, COMPANY_WORDS)}",
                                used)}
    comps = list(COMPONENTS)
    comp_pool = [comps[i] for i in rng.permutation(len(comps))[:max(6, sections_per_chapter)]]
    n_facts = max(1, round(sentences_per_section / 2))
    n_contact = max(1, sentences_per_section - 2)

    def fact(subject: str, attr: str) -> tuple[str, str, str, str]:
        value = _value(rng, ATTRS[attr][2], pools)
        sentence = ATTRS[attr][0].format(s=subject, v=value)
        if sentence.startswith("The ") and rng.random() < 0.3:
            sentence = _pick(rng, FACT_PREFIXES) + "t" + sentence[1:]
        return subject, attr, value, sentence

    # sections: [chapter, title, facts, component that filler sentences may name]
    sections: list[list] = []
    contacts: list[int] = []
    for c, dev in enumerate(devices):
        rel = _pick(rng, ("team", "designer"))  # every overview names a bridge entity
        rest = [a for a in DEVICE_ATTRS if a != rel]
        attrs = [rel] + [rest[i] for i in rng.permutation(len(rest))]
        sections.append([c, _pick(rng, ("Overview", "General description")),
                         [fact(dev, a) for a in attrs[:n_facts]], _pick(rng, comp_pool)])
        parts = [("c", x) for x in comp_pool] + [("p", x) for x in PROCEDURES]
        parts = [parts[i] for i in rng.permutation(len(parts))]
        parts.sort(key=lambda p: p[0] == "p" and rng.random() < 0.6)  # mostly components first
        for s in range(1, sections_per_chapter - (sections_per_chapter > 1)):
            if s > len(parts):
                sections.append([c, "Notes", [], _pick(rng, comp_pool)])
                continue
            kind, name = parts[s - 1]
            subj = f"{name} of the {dev}" if kind == "c" else f"{name} procedure for the {dev}"
            attrs = COMPONENTS[name] if kind == "c" else PROCEDURE_ATTRS
            title = name.capitalize() + ("" if kind == "c" else " procedure")
            chosen = [fact(subj, attrs[a]) for a in rng.permutation(len(attrs))[:n_facts]]
            sections.append([c, title, chosen, name if kind == "c" else _pick(rng, comp_pool)])
        if sections_per_chapter > 1:
            contacts.append(len(sections))
            sections.append([c, _pick(rng, CONTACT_TITLES), [], _pick(rng, comp_pool)])

    # Contacts sections state the support facts: referenced bridge entities first, then others.
    referenced = {(RELATIONS[f[1]][0], f[2]) for s in sections for f in s[2] if f[1] in RELATIONS}
    support = [(k, n, a) for k, attrs in SUPPORT_ATTRS.items() for n in pools[k] for a in attrs]
    order = rng.permutation(len(support))
    support = sorted((support[i] for i in order), key=lambda x: (x[0], x[1]) not in referenced)
    slots = [i for i in rng.permutation(contacts) for _ in range(n_contact)]
    for sec, (kind, name, attr) in zip(slots, support):
        sections[sec][2].append(fact(name + " team" if kind == "team" else name, attr))

    # Render: paragraphs of shuffled facts and filler; record spans while joining.
    title = f"{brand} {_pick(rng, ('Series', 'Product Line', 'Range'))} Service Manual"
    out, pos = [], 0
    facts: list[Fact] = []
    sec_spans: list[tuple[int, int]] = []

    def emit(s: str) -> tuple[int, int]:
        nonlocal pos
        out.append(s)
        pos += len(s)
        return pos - len(s), pos

    emit(f"# {title}\n\n")
    for si, (c, sec_title, sec_facts, comp) in enumerate(sections):
        start = pos
        if si == 0 or sections[si - 1][0] != c:
            emit(f"## {c + 1}. {_pick(rng, ('The {}', 'Servicing the {}', '{} reference'))}"
                 .format(devices[c]) + "\n\n")
            start, k, fill_order, used_fill = pos, 0, rng.permutation(len(FILLER)), 0
        k += 1
        emit(f"### {c + 1}.{k} {sec_title}\n\n")
        n_fill = max(0, sentences_per_section - len(sec_facts))  # no repeats within a chapter
        filler = [FILLER[fill_order[(used_fill + t) % len(FILLER)]].format(d=devices[c], c=comp)
                  for t in range(n_fill)]
        used_fill += n_fill
        items = [(None, s) for s in filler] + [(f, f[3]) for f in sec_facts]
        for j, i in enumerate(rng.permutation(len(items))):
            f, sentence = items[i]
            span = emit(sentence)
            emit(" " if j + 1 < len(items) else "\n\n")
            if f is not None:
                kind = RELATIONS.get(f[1])
                facts.append(Fact(*f, span=span, section=si,
                                  bridge=kind[1].format(f[2]) if kind else None))
        sec_spans.append((start, pos - 2))
    text = "".join(out)[:-1]
    doc_id = f"synthetic-{seed}"

    # Questions.
    index = {(f.subject, f.attribute): i for i, f in enumerate(facts)}
    questions: list[Question] = []
    for i in rng.permutation(len(facts))[:n_single]:
        f = facts[i]
        questions.append(Question(ATTRS[f.attribute][1].format(s=f.subject), [f.value], [f.span],
                                  1, f"{doc_id}-q{len(questions)}", [int(i)]))
    pairs = [(i, index[(f.bridge, a)], q) for i, f in enumerate(facts) if f.bridge
             for (r, a), q in TWO_HOP.items() if r == f.attribute and (f.bridge, a) in index]
    for p in rng.permutation(len(pairs))[:n_two_hop]:
        i, j, q = pairs[p]
        a, b = facts[i], facts[j]
        questions.append(Question(q.format(s=a.subject), [b.value], [a.span, b.span], 2,
                                  f"{doc_id}-q{len(questions)}", [i, j], a.value))
    return Manual(doc_id, title, text, questions, facts, sec_spans, seed)


def generate_dataset(seed: int, n_manuals: int, **kwargs) -> list[Manual]:
    """`n_manuals` manuals; manual i is `generate_manual(manual_seed(seed, i), **kwargs)`."""
    return [generate_manual(manual_seed(seed, i), **kwargs) for i in range(n_manuals)]


def to_longbench_records(manuals: list[Manual]) -> list[dict]:
    """One LongBench v1 style record per question (plus `gold_spans` and `hops`)."""
    return [{"input": q.question, "context": m.text, "answers": list(q.answers),
             "length": len(m.text.split()), "dataset": "synthetic", "language": "en",
             "all_classes": None, "_id": q.qid, "gold_spans": [tuple(s) for s in q.gold_spans],
             "hops": q.hops}
            for m in manuals for q in m.questions]
