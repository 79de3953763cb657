"""Plain words for what a variant changed: 'raising LoRA rank 8→32', 'turning on paraphrase augmentation'.

Shared by `tunelab sweep --dry-run` (the plan) and `tunelab compare` (the report).
"""

from __future__ import annotations

from typing import Any

from tunelab.compare.spec import AXIS_LABELS


def _fmt_value(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, list):
        return "[" + ", ".join(map(str, v)) + "]"
    if v is None:
        return "none"
    return str(v)


def change_phrase(path: str, old: Any, new: Any, plain: bool = False) -> str:
    """'Raising LoRA rank 8→32', 'Turning on paraphrase augmentation', ..."""
    label = AXIS_LABELS.get(path)
    if label is None:
        parts = path.split(".")
        if path.startswith("data.sources.") and len(parts) == 4:
            label = f"the {parts[3].replace('_', ' ')} of source {parts[2]}"
            if parts[3] == "weight":
                label = f"the mixing weight of source {parts[2]}"
            elif parts[3] == "share":
                label = f"the replay share of source {parts[2]}"
        else:
            label = path
    if plain:
        return f"{path}: {_fmt_value(old)} → {_fmt_value(new)}"
    if isinstance(old, bool) or isinstance(new, bool):
        return f"turning {'on' if new else 'off'} {label}"
    if isinstance(old, (int, float)) and isinstance(new, (int, float)):
        verb = "raising" if new > old else "lowering"
        return f"{verb} {label} {_fmt_value(old)}→{_fmt_value(new)}"
    if old is None:
        return f"setting {label} to {_fmt_value(new)}"
    if new is None:
        return f"removing {label} ({_fmt_value(old)})"
    return f"changing {label} from {_fmt_value(old)} to {_fmt_value(new)}"


def changes_phrase(changes: dict[str, list]) -> str:
    if not changes:
        return "the same settings"
    phrases = [change_phrase(k, a, b) for k, (a, b) in changes.items()]
    text = phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]
    return text
