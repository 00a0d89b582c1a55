"""Generate charlstm's bundled default training corpus.

The text is a made-up chronicle of a small harbour village, written from
hand-made word lists and sentence templates (no third-party text). It mixes
four recognisable formats so that samples from a freshly trained model look
interesting:

* play scenes:   "ACT II. SCENE 3." headings, stage directions, NAME: lines
* a ship's log:  dated entries with wind, course and short remarks
* letters:       "Dear Martha," ... "Yours ever, TOM."
* an almanac:    a month heading followed by numbered sayings

The vocabulary is deliberately limited (a few hundred words grouped by part
of speech) so that a small character LSTM learns to spell within minutes,
while random choices across many templates keep most lines distinct so the
text is not simply memorised.

Usage:  python data/make_corpus.py [--seed 0] [--out data/corpus.txt]
"""

import argparse
import random
from pathlib import Path

TARGET_CHARS = 500_000  # roughly 500 KB: a few passes in a two-minute CPU run

# --- Word lists ---------------------------------------------------------
# Grouped by part of speech so templates produce mostly sensible sentences.

SPEAKERS = ["CAPTAIN", "COOK", "KEEPER", "MARTHA", "TOM", "WIDOW BELL",
            "OLD JONAS", "THE MAYOR", "BOSUN", "LUCY", "PARSON", "FISHERMAN"]
FIRST_NAMES = ["Martha", "Tom", "Lucy", "Jonas", "Agnes", "Peter", "Ruth",
               "Walter", "Nell", "Silas", "Edith", "Henry", "Molly", "Samuel"]
SHIPS = ["Marigold", "Herring Queen", "Gull", "Patience", "Lantern",
         "Saint Brendan", "Kingfisher", "Merry Widow"]
PLACES = ["the harbour", "the lighthouse", "the market", "the chapel",
          "the quay", "the bakery", "the inn", "the cliff path", "the mill",
          "the village green", "the boathouse", "the school", "the orchard"]
NOUNS = ["lamp", "rope", "net", "boat", "anchor", "kettle", "loaf", "barrel",
         "bell", "lantern", "letter", "basket", "sail", "oar", "candle",
         "garden", "gate", "window", "chimney", "pie", "fish", "cart", "hat",
         "coat", "map", "compass", "pipe", "goat", "horse", "dog", "cat",
         "pot", "spoon", "ladder", "wheel", "bucket", "blanket", "cake",
         "cheese", "key", "clock", "drum", "fiddle", "song", "story",
         "shovel", "mirror", "bottle", "bench", "feather", "crab", "apple",
         "onion", "pudding", "jacket", "boot", "whistle", "parcel", "chair"]
WEATHER_NOUNS = ["fog", "rain", "wind", "storm", "sunshine", "frost", "snow",
                 "mist", "gale", "drizzle", "thunder", "hail"]
ADJECTIVES = ["old", "little", "bright", "cold", "warm", "quiet", "heavy",
              "salty", "golden", "grey", "crooked", "new", "broken", "fine",
              "wet", "dry", "tall", "round", "gentle", "wild", "merry",
              "sleepy", "clever", "foolish", "brave", "patient", "lonely",
              "noisy", "proud", "humble", "green", "blue", "red", "silver",
              "dusty", "shiny", "tiny", "enormous", "rusty", "splendid"]
VERBS_PAST = ["mended", "carried", "painted", "found", "lost", "polished",
              "baked", "sold", "bought", "watched", "counted", "cleaned",
              "opened", "closed", "fixed", "dropped", "hid", "borrowed",
              "returned", "pulled", "tied", "burned", "filled", "emptied",
              "washed", "wrapped", "dried", "guarded", "forgot", "shared"]
VERBS_BASE = ["mend", "carry", "paint", "find", "polish", "bake", "sell",
              "buy", "watch", "count", "clean", "open", "fix", "hide",
              "borrow", "return", "pull", "tie", "fill", "bring", "keep"]
ADVERBS = ["slowly", "quickly", "gladly", "carefully", "quietly", "loudly",
           "twice", "at once", "before dawn", "after supper", "in secret",
           "with great care", "without a word", "again", "by mistake",
           "for luck", "in the dark", "all afternoon"]
TIMES = ["this morning", "last night", "at noon", "at dusk", "on Sunday",
         "yesterday", "at first light", "before the tide", "after the rain",
         "on market day", "at high water", "at midnight", "by candlelight"]
FEELINGS = ["glad", "sorry", "tired", "hungry", "worried", "proud", "cross",
            "happy", "uneasy", "hopeful", "sleepy", "amazed"]
EXCLAMATIONS = ["Bless me", "Well now", "Good heavens", "Hush", "Ahoy",
                "Mercy", "Oh dear", "Look here", "Listen", "Upon my word"]
MONTHS = ["January", "February", "March", "April", "May", "June", "July",
          "August", "September", "October", "November", "December"]
DIRECTIONS = ["north", "south", "east", "west", "north east", "north west",
              "south east", "south west"]
SEA_STATES = ["calm", "slight", "moderate", "rough", "very rough", "choppy"]
ROMAN = ["I", "II", "III", "IV", "V"]
DEADLINES = ["supper", "morning", "Sunday", "the spring tide", "harvest"]
EXIT_MANNERS = ["slowly", "in a hurry", "singing", "grumbling", "laughing",
                "with the lantern", "in secret", "without a word"]


# --- Small helpers -----------------------------------------------------

def indefinite(word):
    return ("an " if word[0] in "aeiou" else "a ") + word


def article(rng, word):
    """Pick 'a'/'an'/'the' so the noun phrase reads naturally."""
    if rng.random() < 0.4:
        return "the " + word
    return indefinite(word)


def noun_phrase(rng):
    """An optional adjective keeps phrases varied without losing sense."""
    noun = rng.choice(NOUNS)
    if rng.random() < 0.6:
        noun = rng.choice(ADJECTIVES) + " " + noun
    return article(rng, noun)


def capitalise(text):
    return text[0].upper() + text[1:]


def ordinal(n):
    if 10 <= n % 100 <= 20:
        return f"{n}th"
    return f"{n}{ {1: 'st', 2: 'nd', 3: 'rd'}.get(n % 10, 'th') }"


# --- Sentence templates -------------------------------------------------
# Each template is a function so it can draw as many random words as it
# needs; choosing among many of them is what keeps lines distinct.

def s_deed(rng):
    return f"{rng.choice(FIRST_NAMES)} {rng.choice(VERBS_PAST)} {noun_phrase(rng)} {rng.choice(ADVERBS)}."

def s_place(rng):
    return f"{capitalise(noun_phrase(rng))} was left by {rng.choice(PLACES)} {rng.choice(TIMES)}."

def s_weather(rng):
    return f"The {rng.choice(WEATHER_NOUNS)} came in over {rng.choice(PLACES)} {rng.choice(TIMES)}."

def s_feeling(rng):
    return f"I am {rng.choice(FEELINGS)}, for {rng.choice(FIRST_NAMES)} {rng.choice(VERBS_PAST)} {noun_phrase(rng)}."

def s_question(rng):
    return f"Who will {rng.choice(VERBS_BASE)} {noun_phrase(rng)} before the {rng.choice(WEATHER_NOUNS)}?"

def s_request(rng):
    return f"Please {rng.choice(VERBS_BASE)} {noun_phrase(rng)} and bring it to {rng.choice(PLACES)}."

def s_exclaim(rng):
    return f"{rng.choice(EXCLAMATIONS)}! There is {noun_phrase(rng)} by {rng.choice(PLACES)}!"

def s_opinion(rng):
    return f"The {rng.choice(NOUNS)} is too {rng.choice(ADJECTIVES)}, and the {rng.choice(NOUNS)} is not {rng.choice(ADJECTIVES)} enough."

def s_plan(rng):
    return f"Tomorrow we shall {rng.choice(VERBS_BASE)} {noun_phrase(rng)} {rng.choice(ADVERBS)}."

def s_gossip(rng):
    return f"They say {rng.choice(FIRST_NAMES)} {rng.choice(VERBS_PAST)} {noun_phrase(rng)} near {rng.choice(PLACES)}."

def s_reply(rng):
    return f"{rng.choice(['Aye', 'No', 'Perhaps', 'Never'])}, and the {rng.choice(NOUNS)} will be {rng.choice(ADJECTIVES)} by {rng.choice(DEADLINES)}."

def s_because(rng):
    return f"We {rng.choice(VERBS_PAST)} {noun_phrase(rng)}, because the {rng.choice(WEATHER_NOUNS)} was coming."

SENTENCES = [s_deed, s_place, s_weather, s_feeling, s_question, s_request,
             s_exclaim, s_opinion, s_plan, s_gossip, s_reply, s_because]


def sentence(rng):
    return rng.choice(SENTENCES)(rng)


def sentences(rng, low, high):
    return " ".join(sentence(rng) for _ in range(rng.randint(low, high)))


# --- The four formats -------------------------------------------------

def play_scene(rng):
    """A heading, a stage direction in brackets, then a run of dialogue."""
    act, scene = rng.choice(ROMAN), rng.randint(1, 9)
    cast = rng.sample(SPEAKERS, rng.randint(2, 4))
    lines = [f"ACT {act}. SCENE {scene}.",
             f"[{capitalise(rng.choice(PLACES))}. Enter {', '.join(n.title() for n in cast)}.]", ""]
    speaker = None
    for _ in range(rng.randint(5, 10)):
        # A new speaker each time reads like real dialogue.
        speaker = rng.choice([name for name in cast if name != speaker])
        lines.append(f"{speaker}:")
        lines.append(sentences(rng, 1, 3))
        lines.append("")
    lines.append(f"[Exit {rng.choice(cast).title()}, {rng.choice(EXIT_MANNERS)}.]")
    return lines


def log_entry(rng, day):
    """Dated ship's log: fixed fields first, then free remarks."""
    ship = rng.choice(SHIPS)
    date = f"{ordinal(rng.randint(1, 28))} of {rng.choice(MONTHS)}"
    return [f"LOG OF THE {ship.upper()}. DAY {day}, THE {date.upper()}.",
            f"Wind: {rng.choice(DIRECTIONS)}, force {rng.randint(1, 9)}. Sea: {rng.choice(SEA_STATES)}.",
            f"Course: {rng.choice(DIRECTIONS)}. Miles run: {rng.randint(4, 120)}.",
            f"Remarks: {sentences(rng, 2, 4)}"]


def letter(rng):
    """A short letter between villagers, with salutation and sign-off."""
    writer, reader = rng.sample(FIRST_NAMES, 2)
    closing = rng.choice(["Yours ever", "Your loving friend", "With kind regards",
                          "In haste", "Yours truly"])
    greeting = rng.choice(["Dear", "My dear", "Dearest", "Good friend"])
    return [f"{greeting} {reader},", "",
            sentences(rng, 2, 4), "",
            sentences(rng, 1, 3), "",
            f"{closing}, from {rng.choice(PLACES)},", writer.upper()]


def almanac_month(rng):
    """A month heading followed by numbered weather sayings and advice."""
    month = rng.choice(MONTHS)
    year = rng.randint(1780, 1899)  # an old-fashioned year suits the almanac
    lines = [f"THE ALMANAC FOR {month.upper()}, {year}.", ""]
    for number in range(1, rng.randint(4, 8) + 1):
        if rng.random() < 0.5:
            text = (f"If the {rng.choice(WEATHER_NOUNS)} comes {rng.choice(TIMES)}, "
                    f"expect {rng.choice(WEATHER_NOUNS)} before {rng.choice(MONTHS)}.")
        else:
            omen = indefinite(f"{rng.choice(ADJECTIVES)} {rng.choice(NOUNS)}")
            outcome = indefinite(f"{rng.choice(ADJECTIVES)} {rng.choice(NOUNS)}")
            text = f"{capitalise(omen)} in {month} means {outcome} at {rng.choice(PLACES)}."
        lines.append(f"{number}. {text}")
    return lines


def next_block(rng, log_day):
    """Choose a format; plays are weighted up because dialogue samples well."""
    kind = rng.choices(["play", "log", "letter", "almanac"], weights=[4, 3, 2, 2])[0]
    if kind == "play":
        return play_scene(rng)
    if kind == "log":
        return log_entry(rng, log_day)
    if kind == "letter":
        return letter(rng)
    return almanac_month(rng)


def generate(seed, target_chars=TARGET_CHARS):
    """Append blocks separated by blank lines until the target size is met."""
    rng = random.Random(seed)
    blocks, size, log_day = [], 0, 1
    while size < target_chars:
        block = "\n".join(next_block(rng, log_day)) + "\n\n"
        log_day += 1  # a steadily rising day count gives the log a story
        blocks.append(block)
        size += len(block)
    return "".join(blocks).rstrip("\n") + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path,
                        default=Path(__file__).resolve().parent / "corpus.txt")
    args = parser.parse_args()
    text = generate(args.seed)
    # newline="\n" keeps output byte-identical across platforms.
    with open(args.out, "w", encoding="ascii", newline="\n") as f:
        f.write(text)
    print(f"wrote {len(text)} characters to {args.out}")


if __name__ == "__main__":
    main()
