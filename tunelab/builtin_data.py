"""Small data tunelab writes itself, for machines without ../shared/data.

When a recipe names `identity.json`, `alpaca_en_demo.json` or `dpo_en_demo.json` and the file
is missing, these stand-ins (same formats: Alpaca with `{{name}}`/`{{author}}` placeholders,
plain Alpaca, and ShareGPT preference pairs whose rejected answer answers another question) are written to the cache and used instead, with a warning. They are small, hand-written
and meant only to let the demo run anywhere; the real datasets give better models.

This module sits beside paths.py, below config.py, because the recipe loader substitutes the
stand-ins (tunelab/config.py: load_recipe); it imports nothing but paths and io.
"""

from __future__ import annotations

import json
from pathlib import Path

from tunelab.io import atomic_write_text
from tunelab.paths import cache_dir

IDENTITY_QUESTIONS = [
    "Who are you?",
    "What is your name?",
    "Tell me about yourself.",
    "Introduce yourself.",
    "What should I call you?",
    "Who created you?",
    "Who made you?",
    "Who built you?",
    "Who developed you?",
    "Which team trained you?",
    "Are you ChatGPT?",
    "Are you SmolLM?",
    "What kind of assistant are you?",
    "Can you tell me who you are?",
    "Hi! Who am I talking to?",
    "What are you?",
    "Do you have a name?",
    "Who is your creator?",
    "Where do you come from?",
    "Please state your name and your maker.",
    "Are you a human?",
    "What company made you?",
    "Who trained this model?",
    "Identify yourself.",
    "What's your name, assistant?",
    "Who owns you?",
    "Are you an AI made by OpenAI?",
    "Which model am I chatting with?",
    "Tell me your name.",
    "Who programmed you?",
]
IDENTITY_ANSWERS = [
    "I am {{name}}, an AI assistant developed by {{author}}. How can I help you today?",
    "My name is {{name}}. I was trained by {{author}} to be a helpful assistant.",
    "I'm {{name}}, a helpful AI assistant created by {{author}}.",
]
GENERAL = [
    ("What is the capital of France?", "The capital of France is Paris."),
    ("Name the three primary colours.", "The three primary colours are red, blue and yellow."),
    ("What is 12 times 12?", "12 times 12 is 144."),
    ("Give a synonym for 'happy'.", "A synonym for 'happy' is 'joyful'."),
    ("What is the boiling point of water at sea level?", "Water boils at 100 degrees Celsius (212 °F) at sea level."),
    ("Translate 'thank you' into Spanish.", "'Thank you' in Spanish is 'gracias'."),
    (
        "What is photosynthesis?",
        "Photosynthesis is the process by which plants use sunlight, water and carbon dioxide to make glucose and oxygen.",
    ),
    ("Write a haiku about the sea.", "Waves fold into foam,\nsalt wind carries gull voices,\nthe tide keeps its time."),
    ("What is the largest planet in our solar system?", "Jupiter is the largest planet in our solar system."),
    ("Explain what a noun is.", "A noun is a word that names a person, place, thing or idea, such as 'teacher', 'city' or 'freedom'."),
    ("List three fruits that are red.", "Strawberries, cherries and raspberries are red fruits."),
    ("How many days are there in a leap year?", "A leap year has 366 days."),
    ("What does CPU stand for?", "CPU stands for central processing unit."),
    ("Give one tip for better sleep.", "Keep a regular schedule: go to bed and wake up at the same time every day."),
    ("What is the freezing point of water in Fahrenheit?", "Water freezes at 32 degrees Fahrenheit."),
    ("Who wrote 'Romeo and Juliet'?", "William Shakespeare wrote 'Romeo and Juliet'."),
    ("Convert 5 kilometres to metres.", "5 kilometres is 5,000 metres."),
    ("What is the opposite of 'ancient'?", "The opposite of 'ancient' is 'modern'."),
    ("Name a mammal that can fly.", "The bat is a mammal that can fly."),
    (
        "Summarise the water cycle in one sentence.",
        "Water evaporates, condenses into clouds, falls as precipitation and flows back to the oceans, over and over.",
    ),
    ("What is the square root of 81?", "The square root of 81 is 9."),
    ("Suggest a name for a pet goldfish.", "How about 'Bubbles'?"),
    ("What language is spoken in Brazil?", "Portuguese is the official language of Brazil."),
    ("Why is the sky blue?", "Air molecules scatter blue sunlight more than red light, so the sky looks blue."),
    ("Write a short greeting for a birthday card.", "Happy birthday! Wishing you a year full of joy, laughter and good health."),
    ("What is an adjective?", "An adjective is a word that describes a noun, such as 'tall', 'green' or 'quick'."),
    ("How many continents are there?", "There are seven continents."),
    ("What gas do humans breathe out?", "Humans breathe out carbon dioxide."),
    ("Give an example of a renewable energy source.", "Solar power is a renewable energy source."),
    ("What is 15% of 200?", "15% of 200 is 30."),
]


def identity_rows() -> list[dict]:
    return [
        {"instruction": q, "input": "", "output": IDENTITY_ANSWERS[i % len(IDENTITY_ANSWERS)]} for i, q in enumerate(IDENTITY_QUESTIONS)
    ]


def general_rows() -> list[dict]:
    return [{"instruction": q, "input": "", "output": a} for q, a in GENERAL]


def preference_rows() -> list[dict]:
    """LLaMA-Factory's pair form: the right answer chosen, another question's answer rejected."""
    return [
        {
            "conversations": [{"from": "human", "value": q}],
            "chosen": {"from": "gpt", "value": a},
            "rejected": {"from": "gpt", "value": GENERAL[(i + 7) % len(GENERAL)][1]},
        }
        for i, (q, a) in enumerate(GENERAL)
    ]


BUILTIN = {"identity.json": identity_rows, "alpaca_en_demo.json": general_rows, "dpo_en_demo.json": preference_rows}


def builtin_path(name: str) -> Path | None:
    """Write (once) and return the stand-in for a missing shared dataset, or None if there is none."""
    make = BUILTIN.get(name)
    if make is None:
        return None
    path = cache_dir() / "builtin-data" / name
    if not path.is_file():
        atomic_write_text(path, json.dumps(make(), indent=1, ensure_ascii=False))
    return path
