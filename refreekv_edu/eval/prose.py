"""Deterministic English prose for long prompts: paragraphs built from a small grammar and a seed.

The filler of the long-prompt tasks must be the same text on every machine, every Python version and every
import order, or the results page cannot be reproduced. This module writes it from its own word lists with
:class:`random.Random` seeded by a string (string seeds hash with SHA-512, the same on every CPython 3), and
uses only ``choice``, ``randint`` and ``shuffle``, whose outputs for a given seed have been stable across
Python 3 releases (``tests/eval/test_prompt_hashes.py`` pins the hashes, and CI checks them on two Pythons).

A paragraph is about one *topic* (a town, a valley, an island...) and has 3 to 5 sentences drawn from
:data:`_TEMPLATES`, so it reads like plain descriptive prose: grammatical, varied, and irrelevant to any
question a task asks, which is what a haystack should be. Nothing here is copied from a corpus.

Standard library only.
"""

from __future__ import annotations

import random

_PLACES = ("the harbour town", "the mountain village", "the river valley", "the old quarter", "the island", "the market town",
           "the mining settlement", "the coastal plain", "the university district", "the farming hamlet", "the border town",
           "the lake shore", "the northern province", "the wine country", "the desert oasis", "the forest parish")
_PEOPLE = ("the fishermen", "the weavers", "the schoolteachers", "the shepherds", "the clockmakers", "the bakers", "the sailors",
           "the gardeners", "the stonemasons", "the librarians", "the potters", "the carpenters", "the beekeepers",
           "the surveyors", "the musicians", "the ferry pilots")
_THINGS = ("the stone bridge", "the covered market", "the lighthouse", "the water mill", "the chapel", "the granary",
           "the railway station", "the town hall", "the orchard", "the tannery", "the printing house", "the observatory",
           "the salt pans", "the boatyard", "the village well", "the school")
_ADJECTIVES = ("narrow", "quiet", "crowded", "ancient", "busy", "windy", "sunlit", "muddy", "steep", "broad", "famous",
               "modest", "remote", "colourful", "weathered", "peaceful")
_SEASONS = ("in spring", "in the dry summer months", "every autumn", "through the long winter", "after the harvest",
            "during the rainy season", "at the turn of the year", "before the first frost")
_ACTIVITIES = ("mend their nets", "trade wool and cheese", "repair the roads", "gather in the square", "plant new vines",
               "tell old stories", "carry water from the spring", "sell bread at dawn", "paint the shutters",
               "clear the drainage ditches", "count the sheep", "tune their instruments", "cut peat for the fires",
               "sort the morning catch", "bind books by hand", "salt fish for the winter")
_MATERIALS = ("grey granite", "red brick", "pale limestone", "dark oak", "river clay", "whitewashed plaster", "slate",
              "rough timber", "sandstone", "iron and glass")
_CENTURIES = ("twelfth", "fourteenth", "sixteenth", "seventeenth", "eighteenth", "nineteenth")
_REASONS = ("the river changed its course", "a new road was built", "the old mine closed", "trade moved to the coast",
            "a fire destroyed the wooden houses", "the railway arrived", "the population doubled", "a long drought ended")
_WEATHER = ("a cold wind blows from the hills", "fog settles over the rooftops", "the rain arrives without warning",
            "the sky stays clear for weeks", "storms roll in from the sea", "the air smells of pine and smoke")
_SOUNDS = ("church bells", "gulls", "cart wheels on cobblestones", "a distant train", "children playing", "the mill wheel")

#: Sentence templates; ``{topic}`` is the paragraph's subject, the other slots draw from the lists above.
_TEMPLATES = (
    "{Topic} lies at the edge of {place}, where the land is {adjective} and the roads are {adjective2}.",
    "Most of its buildings are made of {material}, and many of them date from the {century} century.",
    "{Season}, {people} {activity} while {weather}.",
    "Visitors often remark that {thing} is the most {adjective} place in {topic}.",
    "Nobody remembers exactly when {thing} was built, although the oldest records mention it in the {century} century.",
    "Life in {topic} changed after {reason}, and {people} had to find other ways to earn a living.",
    "On quiet evenings one can hear {sounds} from almost every street.",
    "{People} say that {weather} more often now than in their grandparents' time.",
    "The path from {thing} to {thing2} is {adjective}, and it takes about {minutes} minutes on foot.",
    "A small museum near {thing} keeps tools, letters and photographs that {people} left behind.",
    "{Season}, the population of {topic} grows as families return from {place}.",
    "Some of the houses were rebuilt in {material} when {reason}.",
    "The local council meets once a month in {thing} to discuss repairs, markets and the school timetable.",
    "Older residents still {activity}, even though machines could now do the work faster.",
    "There are {number} families living near {thing}, and most of them have been there for generations.",
    "Travel writers have described {topic} as {adjective} and {adjective2}, which is only partly true.",
    "When {weather}, {people} stay indoors and {activity} instead.",
    "The view from {thing} reaches across {place} on a clear day.",
    "Every year {people} hold a festival near {thing}, with music, food and a long procession.",
    "Maps from the {century} century show {thing} in a different place, closer to {place}.",
)


def _fill(template: str, topic: str, rng: random.Random) -> str:
    adjective, adjective2 = rng.sample(_ADJECTIVES, 2)
    thing, thing2 = rng.sample(_THINGS, 2)
    people = rng.choice(_PEOPLE)
    season = rng.choice(_SEASONS)
    slots = {
        "topic": topic, "Topic": topic[0].upper() + topic[1:], "place": rng.choice(_PLACES), "adjective": adjective,
        "adjective2": adjective2, "material": rng.choice(_MATERIALS), "century": rng.choice(_CENTURIES),
        "Season": season[0].upper() + season[1:], "people": people, "People": people[0].upper() + people[1:],
        "activity": rng.choice(_ACTIVITIES), "weather": rng.choice(_WEATHER), "thing": thing, "thing2": thing2,
        "reason": rng.choice(_REASONS), "sounds": rng.choice(_SOUNDS), "minutes": rng.randint(5, 55),
        "number": rng.randint(3, 90),
    }
    return template.format(**slots)


def prose_paragraphs(count: int, seed: int) -> list[str]:
    """``count`` paragraphs of descriptive prose, each about one topic; the same list for the same ``seed``.

    Returns:
        ``count`` strings, each 3-5 sentences (roughly 40-100 words) on one line.
    """
    rng = random.Random(f"prose-{seed}")
    out = []
    for _ in range(count):
        topic = rng.choice(_PLACES)
        templates = list(_TEMPLATES)
        rng.shuffle(templates)
        out.append(" ".join(_fill(t, topic, rng) for t in templates[: rng.randint(3, 5)]))
    return out
