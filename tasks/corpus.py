"""An embedded, offline text corpus: an encyclopedia of fictional places and
people, written out through many sentence templates.

Deterministic from a seed; needs no network and no files.  Each entity has
facts (a country, a river, a founding year, a profession, a home town, ...)
that recur across its articles in different wordings, so predicting the text
well needs memorized facts (parameters), not only grammar.  By default one
article of every 20th entity is held out for validation while the entity's
other articles stay in training (see ``generate``).

What it is not: natural text.  The vocabulary is small and the syntax comes
from a few dozen templates; use it to exercise the pipeline and to compare
models against each other, never to compare with published numbers.

Plain Python, no TensorFlow.
"""
import functools
import random

_ONSETS = ["b", "br", "c", "d", "dr", "f", "g", "gl", "h", "k", "l", "m", "n",
           "p", "r", "s", "st", "t", "tr", "v", "w", "z"]
_VOWELS = ["a", "e", "i", "o", "u", "ae", "io", "ou"]
_CODAS = ["", "", "n", "r", "s", "l", "th", "m", "nd", "rk"]
_PROFESSIONS = ["painter", "astronomer", "merchant", "poet", "engineer",
                "cartographer", "physician", "composer", "sailor", "judge",
                "architect", "historian"]
_PRODUCTS = ["wool", "glass", "salt", "copper", "tea", "timber", "silk",
             "cheese", "paper", "wine", "iron", "rice"]
_CITY_TEMPLATES = [
    "{name} is a city in {country}, on the banks of the {river}.",
    "{name} was founded in {year} by settlers from {origin}.",
    "The city of {name} lies on the {river} river in {country}.",
    "{name} is known for its {product}, which is traded across {country}.",
    "About {population} people live in {name} today.",
    "The main industry of {name} is {product}.",
    "In {year}, the town of {name} was built near the {river}.",
    "Travellers reach {name} by boat along the {river}.",
    "{name}, a city of {population} people, is the largest town on the "
    "{river}.",
    "The people of {name} speak the language of {country}.",
]
_PERSON_TEMPLATES = [
    "{name} was a {profession} born in {town} in {year}.",
    "{name} grew up in {town} and became a famous {profession}.",
    "Born in {year}, {name} worked as a {profession} for most of a long life.",
    "The {profession} {name} is remembered in {town} for {work}.",
    "{name} wrote {work} while living in {town}.",
    "Many consider {work} the finest achievement of {name}.",
    "{name}, the {profession} from {town}, died in {death}.",
    "In {death}, {name} left {town} for the last time.",
]
_WORKS = ["The Silent Harbour", "A Map of Winter", "The Copper Song",
          "Letters from the River", "The Long Bridge", "Nine Lanterns",
          "The Salt Road", "A Theory of Tides", "The Glass Orchard",
          "The Weaver's Almanac"]


def _word(rng, syllables):
  text = "".join(rng.choice(_ONSETS) + rng.choice(_VOWELS)
                 for _ in range(syllables)) + rng.choice(_CODAS)
  return text.capitalize()


def _unique_names(rng, count, syllables):
  names = set()
  while len(names) < count:
    names.add(_word(rng, rng.choice(syllables)))
  return sorted(names)


@functools.lru_cache(maxsize=4)
def _entities(seed, num_cities, num_people, sentences_per_doc,
              docs_per_entity):
  """((facts, kind, docs), ...) in generation order (cached: treat as
  read-only)."""
  rng = random.Random(seed)
  countries = _unique_names(rng, 12, (2, 3))
  rivers = _unique_names(rng, 40, (2,))
  city_names = _unique_names(rng, num_cities, (2, 3))
  cities = [dict(name=n, country=rng.choice(countries),
                 river=rng.choice(rivers), year=rng.randint(800, 1900),
                 origin=rng.choice(countries), product=rng.choice(_PRODUCTS),
                 population="{:,}".format(rng.randint(2, 900) * 1000))
            for n in city_names]
  first = _unique_names(rng, 300, (2,))
  last = _unique_names(rng, 300, (2, 3))
  people = set()
  while len(people) < num_people:
    people.add("%s %s" % (rng.choice(first), rng.choice(last)))
  persons = []
  for n in sorted(people):
    year = rng.randint(1200, 1950)
    persons.append(dict(name=n, profession=rng.choice(_PROFESSIONS),
                        town=rng.choice(city_names), year=year,
                        death=year + rng.randint(25, 90),
                        work=rng.choice(_WORKS)))
  entities = ([(c, "city") for c in cities]
              + [(p, "person") for p in persons])
  rng.shuffle(entities)
  result = []
  for facts, kind in entities:
    templates = _CITY_TEMPLATES if kind == "city" else _PERSON_TEMPLATES
    docs = []
    while len(docs) < docs_per_entity:
      chosen = rng.sample(templates, min(sentences_per_doc, len(templates)))
      doc = " ".join(t.format(**facts) for t in chosen)
      if doc not in docs:   # a held-out article is never a training one
        docs.append(doc)
    result.append((facts, kind, tuple(docs)))
  return tuple(result)


# The default corpus: 2,000 cities and 3,000 people, three articles each
# (about 5 MB of text).  Validation holds out one article of every 20th
# entity; the entity's other articles, which state the same facts in other
# words, stay in training (holdout="articles").  So the validation text is
# predictable from what training showed: knowing the facts takes parameters,
# which is what a Switch model has more of at equal FLOPs.  holdout=
# "entities" holds out whole entities instead (every article of every 20th
# one): their facts were never seen, and only fluency in the templates can
# be measured.
NUM_CITIES, NUM_PEOPLE = 2000, 3000
DOCS_PER_ENTITY = 3
VALIDATION_EVERY = 20
HOLDOUTS = ("articles", "entities")


def _split(index, doc_index, docs_per_entity, holdout,
           validation_every=VALIDATION_EVERY):
  if index % validation_every:
    return "train"
  if holdout == "entities" or doc_index == docs_per_entity - 1:
    return "validation"
  return "train"


def generate(seed=0, num_cities=NUM_CITIES, num_people=NUM_PEOPLE,
             sentences_per_doc=6, docs_per_entity=DOCS_PER_ENTITY,
             holdout="articles", validation_every=VALIDATION_EVERY):
  """Returns {"train": [docs], "validation": [docs]} (docs are strings).

  Every entity gets ``docs_per_entity`` articles, each ``sentences_per_doc``
  sentences from its templates; for every ``validation_every``-th entity
  the last article (``holdout="articles"``) or all of them
  (``"entities"``) go to validation.  (The corpus before issue 14 was
  ``docs_per_entity=2, holdout="entities", validation_every=50``.)
  """
  if holdout not in HOLDOUTS:
    raise ValueError("holdout=%r: use one of %s" % (holdout, HOLDOUTS))
  if holdout == "articles" and docs_per_entity < 2:
    raise ValueError("holdout='articles' needs docs_per_entity >= 2 (one "
                     "article to hold out, one to learn the facts from)")
  split = {"train": [], "validation": []}
  for i, (_, _, docs) in enumerate(_entities(
      seed, num_cities, num_people, sentences_per_doc, docs_per_entity)):
    for j, doc in enumerate(docs):
      split[_split(i, j, docs_per_entity, holdout, validation_every)].append(
          doc)
  return split


_QUESTIONS = {
    "city": [("In which country is {name}?", "country"),
             ("On which river is {name}?", "river"),
             ("What is {name} known for?", "product"),
             ("When was {name} founded?", "year")],
    "person": [("What was the profession of {name}?", "profession"),
               ("Where was {name} born?", "town"),
               ("When was {name} born?", "year"),
               ("What did {name} write?", "work")],
}


def closed_book_qa(seed=0, num_cities=NUM_CITIES, num_people=NUM_PEOPLE,
                   sentences_per_doc=6, docs_per_entity=DOCS_PER_ENTITY,
                   holdout="articles", validation_every=VALIDATION_EVERY):
  """Questions about the entities of the pre-training (train) articles:
  {"train": [(question, answer)], "validation": [...]}.

  The answers are in the pre-training text, never in the question: a model
  can only answer from what it memorized (closed-book QA, as the paper's
  Natural Questions / TriviaQA fine-tuning).  Only facts that the entity's
  training articles state are asked.  Questions about every 50th entity
  with training articles are held out for validation.
  """
  qa = {"train": [], "validation": []}
  seen = 0
  entities = _entities(seed, num_cities, num_people, sentences_per_doc,
                       docs_per_entity)
  for i, (facts, kind, docs) in enumerate(entities):
    text = " ".join(doc for j, doc in enumerate(docs)
                    if _split(i, j, docs_per_entity, holdout,
                              validation_every) == "train")
    if not text:
      continue
    name = "validation" if seen % 50 == 0 else "train"
    seen += 1
    for question, key in _QUESTIONS[kind]:
      answer = str(facts[key])
      if answer in text:   # only facts that the training articles state
        qa[name].append((question.format(**facts), answer))
  return qa
