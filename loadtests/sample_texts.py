"""A small bundled set of texts for load tests when ../shared/data is not there.

Written for this project (not copied from the datasets), in the styles of the three datasets:
movie-review sentences (SST-2), caption-like premise/hypothesis pairs (SNLI) and image captions
(Multi30k). Lengths vary on purpose so the load mix still exercises padding and truncation.
"""

REVIEW_SENTENCES: tuple[str, ...] = (
    "A warm, funny and surprisingly moving film.",
    "The plot goes nowhere.",
    "I laughed more than I expected to.",
    "Two hours of my life I will never get back.",
    "The lead actress carries the whole thing with effortless charm.",
    "Beautifully shot, but the script is thin and the pacing drags in the middle act.",
    "It is the kind of movie that stays with you for days after the credits roll.",
    "Predictable from the first scene to the last.",
    "An ambitious mess that never decides what it wants to be.",
    "The soundtrack alone is worth the ticket.",
    "Every joke lands, and the supporting cast is wonderful.",
    "Dull, overlong and strangely cold.",
    "A clever twist on a familiar genre, told with real affection for its characters.",
    "The dialogue sounds like it was written by a committee that never met a human being.",
    "Not a masterpiece, but a thoroughly enjoyable evening at the cinema.",
    "The special effects look cheap and the story is even cheaper.",
    "I would happily watch it again tomorrow.",
    "The director's best work in a decade.",
    "Despite a strong opening, the film loses its nerve and settles for easy sentiment.",
    "Smart, tender and quietly devastating.",
    "Nothing here you have not seen done better elsewhere.",
    "The children in the audience were bored within twenty minutes, and so was I.",
    "A small film with a very big heart.",
    "Its message is muddled and its characters are paper thin.",
    "The final scene is one of the most satisfying endings in recent memory.",
    "Painfully slow.",
    "Great performances cannot rescue a screenplay this confused about its own story.",
    "A delight from start to finish.",
    "The humour is crude and the romance never convinces.",
    "Gorgeous to look at and a pleasure to listen to.",
)

NLI_PAIRS: tuple[tuple[str, str], ...] = (
    ("A man is playing a guitar on a stage.", "A man is performing music."),
    ("A man is playing a guitar on a stage.", "The man is asleep in his bed."),
    ("A man is playing a guitar on a stage.", "The man is a famous rock star."),
    ("Two children are building a sandcastle on the beach.", "Kids are outside."),
    ("Two children are building a sandcastle on the beach.", "The children are in school."),
    ("A woman in a red coat walks her dog through the park.", "A person is walking an animal."),
    ("A woman in a red coat walks her dog through the park.", "The woman is going home."),
    ("A group of people are waiting for a bus in the rain.", "Nobody is outdoors."),
    ("A chef is chopping vegetables in a busy restaurant kitchen.", "Someone is cooking."),
    ("A chef is chopping vegetables in a busy restaurant kitchen.", "The chef is tired."),
    (
        "An old man with a long white beard is reading a newspaper on a wooden bench while "
        "pigeons gather around his feet.",
        "A man is feeding the birds.",
    ),
    ("A cyclist in a yellow jersey races down a mountain road.", "A person rides a bike."),
)

CAPTIONS: tuple[str, ...] = (
    "A dog runs across a green field.",
    "Two men are talking on a street corner.",
    "A little girl in a pink dress is climbing stairs.",
    "A woman is reading a book in a cafe.",
    "Several people are swimming in a lake.",
    "A boy jumps off a wooden dock into the water.",
    "A man in a blue shirt is repairing a bicycle.",
    "Three friends are sitting on a bench and laughing.",
    "A street musician plays the violin for a small crowd.",
    "A black and white cat sleeps on a sunny windowsill.",
    "A construction worker in an orange vest stands next to a large yellow machine.",
    "Children are playing soccer in the park after school.",
)
