"""An embedded, offline text corpus: an encyclopedia of fictional places and
people, written out through many sentence templates.

Deterministic from a seed; needs no network and no files.  Each entity has
facts (a country, a river, a founding year, a profession, a home town, ...)
that recur across its articles in different wordings, so predicting the text
well needs memorized facts (parameters), not only grammar.  Documents about
an entity are either all in train or all in validation.

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
def _entities(seed, num_cities, num_people, sentences_per_doc):
  """((facts, kind, split, docs), ...) in generation order (cached: treat
  as read-only)."""
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
  for i, (facts, kind) in enumerate(entities):
    templates = _CITY_TEMPLATES if kind == "city" else _PERSON_TEMPLATES
    docs = []
    for _ in range(2):
      chosen = rng.sample(templates, min(sentences_per_doc, len(templates)))
      docs.append(" ".join(t.format(**facts) for t in chosen))
    result.append((facts, kind,
                   "validation" if i % VALIDATION_EVERY == 0 else "train",
                   tuple(docs)))
  return tuple(result)


NUM_CITIES, NUM_PEOPLE = 2000, 3000   # about 3.4 MB of text
VALIDATION_EVERY = 50                  # 2% of the entities


def generate(seed=0, num_cities=NUM_CITIES, num_people=NUM_PEOPLE,
             sentences_per_doc=6):
  """Returns {"train": [docs], "validation": [docs]} (docs are strings).

  Every entity gets two articles with different sentences; every 50th
  entity (and all its articles) goes to validation.
  """
  split = {"train": [], "validation": []}
  for _, _, name, docs in _entities(seed, num_cities, num_people,
                                    sentences_per_doc):
    split[name].extend(docs)
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
                   sentences_per_doc=6):
  """Questions about the entities of the pre-training (train) articles:
  {"train": [(question, answer)], "validation": [...]}.

  The answers are in the pre-training text, never in the question: a model
  can only answer from what it memorized (closed-book QA, as the paper's
  Natural Questions / TriviaQA fine-tuning).  Only facts that the entity's
  articles state are asked.  Questions about every 50th train entity are
  held out for validation.
  """
  qa = {"train": [], "validation": []}
  seen = 0
  for facts, kind, split, docs in _entities(seed, num_cities, num_people,
                                            sentences_per_doc):
    if split != "train":
      continue
    name = "validation" if seen % VALIDATION_EVERY == 0 else "train"
    seen += 1
    text = " ".join(docs)
    for question, key in _QUESTIONS[kind]:
      answer = str(facts[key])
      if answer in text:   # only facts that the entity's articles state
        qa[name].append((question.format(**facts), answer))
  return qa
