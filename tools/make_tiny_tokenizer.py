"""Build the embedded demo model's tokenizer: a small sentencepiece unigram model in a T5 tokenizer folder.

The training text is generated here from templates over count words, colours, shapes, animals, objects,
verbs and places (no benchmark prompts), with a fixed seed and one training thread, so running this
twice writes the same files. Special ids follow T5: <pad> 0, </s> 1, <unk> 2; no bos, no sentinels.

    python tools/make_tiny_tokenizer.py [--out tests/assets/tiny-wan/tokenizer] [--vocab-size 1024]
    python tools/make_tiny_tokenizer.py --world --out numina_engine/assets/counting-world/tokenizer

--world trains on the counting world's captions instead (numina_engine.demo: the demo model's
vocabulary, 45 words) with WORLD_VOCAB_SIZE pieces, the most sentencepiece's unigram trainer allows on
so small a corpus: the nouns stay whole ("apples", "tree", "boxes"), other words are split into pieces
("▁Th", "ree"), and any other word still tokenizes from the letters.

The folder loads with `AutoTokenizer.from_pretrained(folder, local_files_only=True)`; the script checks
that the loaded tokenizer gives the same ids as the raw sentencepiece model (plus </s>) before finishing.
"""
from __future__ import annotations

import argparse
import io
import json
import random
import shutil
import tempfile
from pathlib import Path

import sentencepiece as spm

DEFAULT_OUT = Path(__file__).resolve().parents[1] / "tests" / "assets" / "tiny-wan" / "tokenizer"
SEED = 20240601
NUM_SENTENCES = 30000
WORLD_VOCAB_SIZE = 80
FILES = ("spiece.model", "tokenizer.json", "tokenizer_config.json")
TOKENIZER_CONFIG = {"tokenizer_class": "T5Tokenizer", "pad_token": "<pad>", "eos_token": "</s>",
                    "unk_token": "<unk>", "extra_ids": 0, "additional_special_tokens": []}

COUNT_WORDS = ["two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve",
               "thirteen", "fourteen", "fifteen", "twenty", "several", "many", "a few", "a pair of",
               "a dozen", "a group of", "a row of", "a pile of", "dozens of", "sixteen", "seventeen", "eighteen",
               "nineteen", "thirty", "forty", "fifty", "a hundred", "a couple of", "a handful of",
               "a crowd of", "a flock of", "a herd of", "a swarm of", "a stack of", "a bunch of", "a line of",
               "a team of", "a family of", "a pack of", "a school of", "countless", "numerous", "various"]
SINGLE_WORDS = ["one", "a", "a single", "only one", "exactly one"]
COLOURS = ["red", "blue", "green", "yellow", "orange", "purple", "pink", "brown", "black", "white", "gray",
           "golden", "silver", "dark", "bright", "pale", "striped", "spotted", "colorful", "transparent"]
ADJECTIVES = ["small", "big", "tiny", "large", "fluffy", "shiny", "old", "young", "cute", "happy", "wooden",
              "metal", "glass", "plastic", "soft", "round", "tall", "short", "wet", "sleepy", "playful",
              "heavy", "light", "bright", "dusty", "shaggy", "smooth", "rough", "curious", "hungry", "lazy",
              "giant", "miniature", "wild", "tame", "fresh", "ripe", "broken", "shiny new", "antique",
              "elegant", "noisy", "quiet", "friendly", "brave", "gentle", "furry", "spotted", "wrinkled",
              "crystal", "ceramic", "paper", "woolen", "leather", "velvet", "frozen", "burning", "floating"]
SHAPES = ["circle", "square", "triangle", "cube", "sphere", "star", "heart", "ring", "cone", "cylinder",
          "pyramid", "block", "dot", "diamond", "spiral"]
ANIMALS = ["cat", "dog", "bird", "horse", "cow", "sheep", "duck", "fish", "rabbit", "elephant", "lion",
           "tiger", "bear", "fox", "deer", "penguin", "owl", "frog", "butterfly", "monkey", "zebra", "giraffe",
           "goat", "pig", "chicken", "mouse", "squirrel", "turtle", "dolphin", "whale", "puppy", "kitten",
           "goose", "wolf", "panda", "koala", "parrot", "swan", "bee", "snail", "camel", "kangaroo", "hippo",
           "rhino", "crocodile", "lizard", "snake", "spider", "ant", "ladybug", "dragonfly", "crab", "lobster",
           "octopus", "jellyfish", "shark", "seal", "otter", "beaver", "hedgehog", "raccoon", "bat", "eagle",
           "hawk", "pigeon", "crow", "flamingo", "peacock", "ostrich", "hamster", "donkey", "llama", "alpaca",
           "moose", "buffalo", "leopard", "cheetah", "gorilla", "sloth", "chipmunk", "lamb", "calf", "foal"]
OBJECTS = ["apple", "ball", "balloon", "car", "bicycle", "book", "cup", "chair", "table", "lamp", "bottle",
           "flower", "tree", "boat", "airplane", "kite", "umbrella", "candle", "hat", "shoe", "clock", "banana",
           "egg", "cookie", "box", "basket", "guitar", "drum", "bus", "train", "truck", "cherry", "strawberry",
           "lemon", "orange", "pencil", "glass", "leaf", "knife", "spoon", "plate", "toy robot", "teddy bear",
           "rubber duck", "paper boat", "coin", "key", "marble", "donut", "cupcake", "person", "child", "man",
           "woman", "girl", "boy", "dancer", "soldier", "runner", "chef", "robot", "astronaut", "farmer",
           "tomato", "carrot", "potato", "pear", "peach", "grape", "watermelon", "pineapple", "mushroom",
           "sandwich", "pizza", "sausage", "muffin", "pie", "cake", "bowl", "fork", "jar", "mug", "teapot",
           "pillow", "blanket", "sofa", "bed", "desk", "window", "door", "mirror", "vase", "painting",
           "motorcycle", "scooter", "tractor", "helicopter", "rocket", "ship", "canoe", "sailboat", "wagon",
           "jacket", "scarf", "glove", "sock", "backpack", "suitcase", "watch", "necklace", "bracelet",
           "violin", "piano", "trumpet", "flute", "bell", "whistle", "camera", "phone", "laptop", "television",
           "rose", "tulip", "sunflower", "daisy", "cactus", "pine tree", "palm tree", "bush", "stone", "rock",
           "shell", "feather", "snowflake", "cloud", "lantern", "flag", "tent", "fence", "bench", "bridge",
           "tower", "house", "castle", "windmill", "lighthouse", "statue", "fountain", "wheel", "brick",
           "ladder", "hammer", "brush", "bucket", "rope", "chain", "trophy", "medal", "envelope", "gift",
           "dice", "domino", "puzzle piece", "chess piece", "crayon", "notebook", "sticker", "button"]
IRREGULAR_PLURALS = {"mouse": "mice", "sheep": "sheep", "fish": "fish", "deer": "deer", "goose": "geese",
                     "child": "children", "person": "people", "man": "men", "woman": "women", "knife": "knives",
                     "leaf": "leaves", "wolf": "wolves"}
VERBS = ["running", "jumping", "walking", "sitting", "playing", "flying", "swimming", "dancing", "rolling",
         "spinning", "floating", "eating", "sleeping", "chasing each other", "bouncing", "standing still",
         "moving slowly", "falling", "turning around", "lined up", "gathered together", "resting",
         "sliding", "drifting", "hopping", "waving", "climbing", "racing", "crawling", "grazing", "digging",
         "splashing", "wandering", "marching", "circling", "gliding", "diving", "nibbling grass", "barking",
         "singing", "laughing", "looking at the camera", "huddled close", "scattered around", "stacked up",
         "glowing softly", "melting", "swaying in the wind", "sparkling", "rotating slowly", "tumbling",
         "being juggled", "lying in a row", "arranged in a circle", "parked side by side", "sailing",
         "landing", "taking off", "blooming", "ripening", "cooking", "painting", "reading", "writing",
         "stretching", "yawning", "sniffing around", "playing tag", "fighting playfully", "cuddling"]
PLACES = ["on a table", "in a park", "on the beach", "in a garden", "on a busy street", "in a bright room",
          "in the snow", "on the grass", "in a field", "in the sky", "under a tree", "in a kitchen",
          "on a wooden floor", "by a lake", "in a forest", "in the desert", "on a shelf", "in the water",
          "on a road", "near a river", "on a rooftop", "at sunset", "at night", "in the rain",
          "on a white background", "in a living room", "on a farm", "in a city square", "along a path",
          "inside a classroom", "in a library", "at the train station", "in an airport", "on a mountain top",
          "in a valley", "on a frozen pond", "inside a cave", "in a greenhouse", "on a balcony", "in a barn",
          "at the zoo", "in a stadium", "on a playground", "beside a campfire", "under the stars",
          "during a thunderstorm", "in thick fog", "on a sandy dune", "across a meadow", "in a bakery",
          "at a market", "on a pier", "in an aquarium", "on the moon", "in outer space", "underwater",
          "in a jungle", "by the window", "in a hallway", "on a kitchen counter", "in a bathtub",
          "on a picnic blanket", "in a garage", "next to the fireplace", "beneath a bridge"]
STYLES = ["cinematic lighting", "high quality", "4k", "slow motion", "close-up shot", "wide angle",
          "realistic", "soft light", "sharp focus", "natural colors", "aerial view", "handheld camera",
          "shallow depth of field", "studio lighting", "documentary style", "8k, detailed", "vivid",
          "warm tones", "cool tones", "morning light", "golden hour", "overcast sky", "film grain",
          "time-lapse", "macro photography", "cartoon style", "watercolor painting", "3D render",
          "anime style", "oil painting", "black and white", "dreamy atmosphere", "dramatic shadows",
          "minimalist", "hyperrealistic", "smooth motion", "steady shot", "photorealistic"]
CAMERA = ["pans left", "pans right", "zooms in", "zooms out", "stays still", "moves forward", "tilts up",
          "follows them", "circles around", "tracks slowly", "pulls back", "looks down from above",
          "rises above the scene", "shakes a little", "moves sideways"]
SIDES = ["left", "right", "top", "bottom", "far left", "far right", "center", "foreground", "background"]
POSITIONS = ["behind", "in front of", "beside", "around", "above", "below", "between the others and",
             "opposite", "toward", "away from", "on top of", "underneath", "surrounding", "facing"]
TEMPLATES = [
    "{count} {adj} {colour} {nouns} {verb} {place}.",
    "A video of {count} {nouns} {verb} {place}, {style}.",
    "There are {count} {nouns} and {count2} {nouns2} {place}.",
    "{Count} {colour} {nouns} {verb} together {place} while the camera {camera}.",
    "{single} {adj} {noun} is {verb} {place}, {style}, {style2}.",
    "{Count} {nouns} {verb} next to {single} {colour} {noun2}.",
    "In this scene, {count} {adj} {nouns} are {verb} {place}; the camera {camera}.",
    "{number} {colour} {nouns} {verb} {place}. {style}.",
    "Exactly {number} {nouns} and {number2} {nouns2}, {style}.",
    "\"{Count} {nouns}\" {verb} {place} - {style}!",
    "{single} {noun} on the {side}, {count} {nouns2} {position} it, {style}.",
    "Why are {count} {nouns} {verb}? Because {count2} {nouns2} are {verb2} {place}.",
]


def plural(noun: str) -> str:
    """English plural of a singular noun phrase (the last word is inflected)."""
    *head, last = noun.split(" ")
    if last in IRREGULAR_PLURALS:
        last = IRREGULAR_PLURALS[last]
    elif last.endswith("y") and last[-2] not in "aeiou":
        last = last[:-1] + "ies"
    elif last.endswith(("s", "x", "ch", "sh")):
        last += "es"
    else:
        last += "s"
    return " ".join([*head, last])


def generate_corpus(num_sentences: int = NUM_SENTENCES, seed: int = SEED) -> list[str]:
    """Deterministic template sentences (strings) for training the tokenizer."""
    rng = random.Random(seed)
    nouns = SHAPES + ANIMALS + OBJECTS
    sentences = []
    for _ in range(num_sentences):
        count, count2 = rng.choice(COUNT_WORDS), rng.choice(COUNT_WORDS)
        noun, noun2 = rng.choice(nouns), rng.choice(nouns)
        fields = dict(
            count=count, Count=count[0].upper() + count[1:], count2=count2,
            single=rng.choice(SINGLE_WORDS).capitalize(), adj=rng.choice(ADJECTIVES), colour=rng.choice(COLOURS),
            noun=noun, noun2=noun2, nouns=plural(noun), nouns2=plural(noun2), verb=rng.choice(VERBS),
            place=rng.choice(PLACES), verb2=rng.choice(VERBS), side=rng.choice(SIDES),
            position=rng.choice(POSITIONS), style=rng.choice(STYLES), style2=rng.choice(STYLES),
            camera=rng.choice(CAMERA), number=str(rng.randint(2, 30)), number2=str(rng.randint(1, 12)))
        sentences.append(rng.choice(TEMPLATES).format(**fields))
    sentences += [" ".join(words) for words in (COUNT_WORDS, SINGLE_WORDS, COLOURS, ADJECTIVES, nouns,
                                                [plural(n) for n in nouns], VERBS, PLACES, STYLES, SIDES,
                                                POSITIONS)]
    return sentences


def train_sentencepiece(sentences: list[str], vocab_size: int) -> bytes:
    """Serialized sentencepiece unigram model with T5's special ids (pad 0, eos 1, unk 2, no bos)."""
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(sentences), model_writer=model, model_type="unigram", vocab_size=vocab_size,
        character_coverage=1.0, pad_id=0, eos_id=1, unk_id=2, bos_id=-1, pad_piece="<pad>",
        eos_piece="</s>", unk_piece="<unk>", num_threads=1, shuffle_input_sentence=False,
        input_sentence_size=0, minloglevel=2)
    return model.getvalue()


def write_tokenizer_folder(model_proto: bytes, out: Path) -> None:
    """Write spiece.model, tokenizer.json (converted by transformers) and a minimal tokenizer_config.json."""
    from transformers import T5Tokenizer

    with tempfile.TemporaryDirectory() as tmp:
        spiece = Path(tmp) / "spiece.model"
        spiece.write_bytes(model_proto)
        tokenizer = T5Tokenizer.from_pretrained(tmp, extra_ids=0, local_files_only=True)
        out.mkdir(parents=True, exist_ok=True)
        others = sorted(path.name for path in out.iterdir() if path.name not in FILES)
        if others:
            raise SystemExit(f"{out} holds other files too ({others}); they would change how the folder loads. "
                             f"Remove them or choose another --out.")
        tokenizer.backend_tokenizer.save(str(out / "tokenizer.json"))
        shutil.copyfile(spiece, out / "spiece.model")
    (out / "tokenizer_config.json").write_text(json.dumps(TOKENIZER_CONFIG, indent=2) + "\n", encoding="utf-8")


def check_tokenizer_folder(out: Path, sentences: list[str]) -> None:
    """Raise RuntimeError unless the saved folder tokenizes like the raw sentencepiece model plus </s>."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(out, local_files_only=True)
    processor = spm.SentencePieceProcessor(model_file=str(out / "spiece.model"))
    special = (tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id)
    if special != (0, 1, 2) or len(tokenizer) != processor.get_piece_size():
        raise RuntimeError(f"{out}: pad/eos/unk ids {special} (want 0, 1, 2), {len(tokenizer)} tokens "
                           f"(sentencepiece has {processor.get_piece_size()})")
    for text in sentences:
        expected, got = processor.encode(text) + [1], tokenizer(text).input_ids
        if got != expected:
            raise RuntimeError(f"{text!r}: transformers gives {got}, sentencepiece {expected}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output tokenizer folder")
    parser.add_argument("--vocab-size", type=int, default=None,
                        help=f"sentencepiece vocabulary size (default 1024, or {WORLD_VOCAB_SIZE} with --world)")
    parser.add_argument("--world", action="store_true", help="train on the counting world's captions")
    args = parser.parse_args()
    if args.world:
        from numina_engine.demo.world import vocabulary_sentences
        corpus = vocabulary_sentences(NUM_SENTENCES, seed=SEED)
        args.vocab_size = args.vocab_size or WORLD_VOCAB_SIZE
    else:
        corpus = generate_corpus()
        args.vocab_size = args.vocab_size or 1024
    write_tokenizer_folder(train_sentencepiece(corpus, args.vocab_size), args.out)
    probes = corpus[:: max(1, len(corpus) // 500)] + [
        "Three dogs play in a park.", "  odd   spacing\tand CAPITALS 123 ", "unseen words: xylophone, zeppelin",
        "中文 and émigré café", ""]
    check_tokenizer_folder(args.out, probes)
    size = sum(path.stat().st_size for path in args.out.iterdir())
    print(f"wrote {args.out} ({size / 1024:.0f} KiB, vocab {args.vocab_size})")


if __name__ == "__main__":
    main()
