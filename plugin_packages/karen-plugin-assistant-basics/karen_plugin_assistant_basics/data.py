"""Small offline tables: the plugin never touches the network."""

from __future__ import annotations

#: unit -> (kind, factor to the base unit: metre or kilogram)
UNITS: dict[str, tuple[str, float]] = {
    "mm": ("length", 0.001), "cm": ("length", 0.01), "m": ("length", 1.0), "km": ("length", 1000.0),
    "meter": ("length", 1.0), "meters": ("length", 1.0), "kilometer": ("length", 1000.0),
    "kilometers": ("length", 1000.0), "in": ("length", 0.0254), "inch": ("length", 0.0254),
    "inches": ("length", 0.0254), "ft": ("length", 0.3048), "foot": ("length", 0.3048), "feet": ("length", 0.3048),
    "mi": ("length", 1609.344), "mile": ("length", 1609.344), "miles": ("length", 1609.344),
    "g": ("mass", 0.001), "kg": ("mass", 1.0), "kilogram": ("mass", 1.0), "kilograms": ("mass", 1.0),
    "lb": ("mass", 0.45359237), "lbs": ("mass", 0.45359237), "pound": ("mass", 0.45359237),
    "pounds": ("mass", 0.45359237), "oz": ("mass", 0.028349523125), "ounce": ("mass", 0.028349523125),
}  # fmt: skip

DEFINITIONS: dict[str, str] = {
    "serendipity": "the occurrence of happy events by chance",
    "ephemeral": "lasting for a very short time",
    "ubiquitous": "present, appearing or found everywhere",
    "cogent": "clear, logical and convincing",
    "laconic": "using very few words",
    "plugin": "a software component that adds a feature to an existing program",
}

TRANSLATIONS: dict[str, dict[str, str]] = {
    "hello": {"es": "hola", "fr": "bonjour", "de": "hallo"},
    "thank you": {"es": "gracias", "fr": "merci", "de": "danke"},
    "cat": {"es": "gato", "fr": "chat", "de": "Katze"},
    "dog": {"es": "perro", "fr": "chien", "de": "Hund"},
    "water": {"es": "agua", "fr": "eau", "de": "Wasser"},
    "goodbye": {"es": "adiós", "fr": "au revoir", "de": "auf Wiedersehen"},
}

JOKES: list[str] = [
    "I told my computer a joke about UDP. I'm not sure it got it.",
    "There are 10 kinds of people: those who understand binary and those who don't.",
    "Why do programmers prefer dark mode? Because light attracts bugs.",
]

QUOTES: list[tuple[str, str]] = [
    ("The best way out is always through.", "Robert Frost"),
    ("Well begun is half done.", "Aristotle"),
    ("It always seems impossible until it's done.", "Nelson Mandela"),
]
