"""Plain words for what a variant changed: 'raising LoRA rank 8→32', 'turning on paraphrase augmentation'.

Shared by `tunelab sweep --dry-run` (the plan) and `tunelab compare` (the report).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tunelab.compare.spec import AXIS_LABELS
from tunelab.config import DataSource


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


def _source_desc(path: str, fields: dict[str, Any]) -> str:
    """'code_alpaca_2k.json (answers python)': a source by its file name and its settings that are not defaults."""
    settings = [f"{name.replace('_', ' ')} {_fmt_value(v)}" for name, v in fields.items() if v != DataSource.model_fields[name].default]
    return Path(path).name + (f" ({', '.join(settings)})" if settings else "")


def _replaced_sources(changes: dict[str, list]) -> tuple[list[str], dict[str, list]]:
    """A source whose path changed is another source: one phrase for it ('replacing source 0, stdlib (format
    python_functions), with code_alpaca_2k.json (answers python)'), not one per field; the other changes as they were."""
    phrases, rest = [], dict(changes)
    for key in [k for k in changes if k.startswith("data.sources.") and k.endswith(".path") and k.count(".") == 3]:
        prefix = key.removesuffix("path")
        own = [k for k in rest if k.startswith(prefix) and k != key and k.removeprefix(prefix) in DataSource.model_fields]
        fields = {k.removeprefix(prefix): rest.pop(k) for k in own}
        old_path, new_path = rest.pop(key)
        old = _source_desc(old_path, {k: a for k, (a, _) in fields.items()})
        new = _source_desc(new_path, {k: b for k, (_, b) in fields.items()})
        phrases.append(f"replacing source {key.split('.')[2]}, {old}, with {new}")
    return phrases, rest


def changes_phrase(changes: dict[str, list]) -> str:
    if not changes:
        return "the same settings"
    phrases, rest = _replaced_sources(changes)
    phrases += [change_phrase(k, a, b) for k, (a, b) in rest.items()]
    text = phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]
    return text
