"""Bundled sample inputs for export-time parity checks when no dev file is given.

Real sentences of deliberately varied length (two words to a long paragraph), so a parity check
exercises padding, short and long sequences. Written for this project; not taken from a dataset.
"""

from __future__ import annotations

SENTENCES: tuple[str, ...] = (
    "Great movie.",
    "Terrible.",
    "I loved every minute of it.",
    "The plot was thin and the acting was worse.",
    "A quiet, moving film about two brothers who stop talking to each other.",
    "Not bad at all.",
    "It is neither funny nor clever, and it lasts far too long.",
    "What a waste of a talented cast!",
    "The soundtrack alone is worth the price of the ticket.",
    "I fell asleep halfway through and did not feel I had missed anything when I woke up.",
    "Charming, warm and surprisingly sharp.",
    "An overlong, self-indulgent mess.",
    "The director knows exactly when to hold a shot and when to cut away, which gives the "
    "quieter scenes a tension most thrillers never reach.",
    "Meh.",
    "Funny in places, but the jokes wear thin by the third act.",
    "This is the best thing the studio has released in years, and I say that as someone who "
    "usually avoids big-budget sequels.",
    "The dialogue sounds like it was written by a committee.",
    "A beautiful, heartbreaking story told with great restraint.",
    "I would not recommend it to anyone.",
    "Visually stunning but emotionally empty.",
    "Honestly, the kids in the audience seemed to enjoy it more than the adults did, but even "
    "they were restless by the end, and the final twist made no sense to anyone I asked "
    "afterwards, including the friend who had read the book twice and insisted the film had "
    "changed the ending for no reason at all.",
    "Solid performances all round.",
    "The pacing is a disaster.",
    "It made me laugh, it made me cry, and it made me call my mother.",
    "Forgettable.",
    "The first hour is gripping; the second is a slog.",
    "A clever premise undone by lazy writing.",
    "I can't stop thinking about the final scene.",
    "The special effects look cheap and the story is predictable from the opening minutes.",
    "Easily one of the most original films of the decade.",
    "Two hours of my life I will never get back.",
    "Delightful from start to finish, with a lead performance that deserves every award it gets.",
)

# Sentiment of each of SENTENCES (0 negative, 1 positive), as their author meant them.
SENTENCE_LABELS: tuple[int, ...] = (
    1, 0, 1, 0, 1, 1, 0, 0, 1, 0, 1, 0, 1, 0, 0, 1,
    0, 1, 0, 0, 0, 1, 0, 1, 0, 0, 0, 1, 0, 1, 0, 1,
)  # fmt: skip

# (premise, hypothesis) pairs for the NLI model.
PAIRS: tuple[tuple[str, str], ...] = (
    ("A man is playing a guitar on stage.", "A man is performing music."),
    ("A man is playing a guitar on stage.", "The man is asleep in bed."),
    ("A man is playing a guitar on stage.", "The man is a famous rock star."),
    ("Two children are building a sandcastle at the beach.", "Kids are outside."),
    ("Two children are building a sandcastle at the beach.", "The children are in school."),
    ("A woman in a red coat walks her dog through the snowy park.", "It is winter."),
    ("A woman in a red coat walks her dog through the snowy park.", "A woman is swimming."),
    ("A chef is slicing vegetables.", "Someone is cooking."),
    ("A chef is slicing vegetables.", "The chef is preparing dinner for his family."),
    ("People are waiting at a bus stop in the rain.", "Nobody is outside."),
    (
        "A group of cyclists in bright jerseys climbs a steep mountain road while spectators "
        "cheer from both sides.",
        "A bicycle race is taking place.",
    ),
    ("An old man reads a newspaper on a bench.", "A man is reading."),
    ("An old man reads a newspaper on a bench.", "A young girl is running."),
    ("A dog catches a frisbee.", "An animal is playing."),
    ("A dog catches a frisbee.", "The dog belongs to a police officer."),
    ("Students listen to a lecture.", "The students are bored."),
)

# English source sentences for the translator (image-caption style, like Multi30k).
SOURCE_SENTENCES: tuple[str, ...] = (
    "A man is riding a bike.",
    "Two dogs are playing in the snow.",
    "A woman in a blue dress is walking down the street.",
    "Children are playing soccer in a park.",
    "A group of people are standing in front of a building.",
    "A little girl is eating an ice cream cone.",
    "A man with a hat is sitting on a bench and reading a newspaper.",
    "The boy jumps into the water.",
    "Several workers in orange vests are repairing the road while cars drive past.",
    "A black dog runs across the grass.",
    "A woman is cooking in the kitchen.",
    "Two men are climbing a rock wall.",
)
