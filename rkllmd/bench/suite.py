"""The prompt suite: editable TOML files under ``benchmarks/prompts/``, one category per file."""

from __future__ import annotations

import base64
import tomllib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

_KEYS = {"id", "prompt", "system", "max_tokens", "note", "kind", "warm_prompt", "images"}
KINDS = ("single", "ha_turn")


@dataclass(frozen=True)
class Case:
    """One prompt of the suite; ``category`` is the file it came from."""

    id: str
    category: str
    prompt: str
    max_tokens: int
    system: str | None = None
    note: str = ""
    kind: str = "single"  # or "ha_turn": cold, warm and reload turns (rkllmd.bench.haturn)
    warm_prompt: str = ""  # ha_turn: the question of the warm and reload turns
    images: tuple[str, ...] = ()  # names of rkllmd.bench.images: a case for vision models only

    def request(self, max_tokens: int | None, temperature: float, seed: int) -> dict[str, Any]:
        """The generate payload both paths use, so direct and MQTT runs get the same input."""
        req: dict[str, Any] = {
            "prompt": self.prompt,
            "max_tokens": max_tokens or self.max_tokens,
            "temperature": temperature,
            "seed": seed,
        }
        if self.system:
            req["system"] = self.system
        if self.images:
            from rkllmd.bench.images import image_bytes

            req["images"] = [base64.b64encode(image_bytes(name)).decode() for name in self.images]
        return req

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def default_suite_dir() -> Path:
    """``benchmarks/prompts`` of the checkout rkllmd runs from, else of the current directory."""
    repo = Path(__file__).resolve().parents[2] / "benchmarks" / "prompts"
    return repo if repo.is_dir() else Path.cwd() / "benchmarks" / "prompts"


def load_suite(folder: Path, only: list[str] | None = None) -> list[Case]:
    """Every ``[[case]]`` of every ``*.toml`` in ``folder`` (sorted), optionally only these ids."""
    cases: list[Case] = []
    for path in sorted(folder.glob("*.toml")):
        data = tomllib.loads(path.read_text(encoding="utf-8"))
        for i, raw in enumerate(data.get("case", [])):
            unknown = set(raw) - _KEYS
            if unknown or "id" not in raw or "prompt" not in raw:
                raise ValueError(f"{path}: case {i}: needs id and prompt; unknown keys {sorted(unknown)}")
            kind = str(raw.get("kind", "single"))
            if kind not in KINDS:
                raise ValueError(f"{path}: case {i}: kind must be one of {list(KINDS)}, not {kind!r}")
            images = tuple(str(x) for x in raw.get("images", ()))
            if images:
                from rkllmd.bench.images import NAMES

                unknown_images = sorted(set(images) - set(NAMES))
                if unknown_images or kind != "single":
                    raise ValueError(f"{path}: case {i}: images of a single case, one of {list(NAMES)}")
            cases.append(
                Case(
                    id=str(raw["id"]),
                    category=path.stem,
                    prompt=str(raw["prompt"]).strip(),
                    max_tokens=int(raw.get("max_tokens", 128)),
                    system=raw.get("system"),
                    note=str(raw.get("note", "")),
                    kind=kind,
                    warm_prompt=str(raw.get("warm_prompt", raw["prompt"])).strip(),
                    images=images,
                )
            )
    ids = [c.id for c in cases]
    dupes = sorted({x for x in ids if ids.count(x) > 1})
    if dupes:
        raise ValueError(f"{folder}: duplicate case ids {dupes}")
    if only:
        missing = sorted(set(only) - set(ids))
        if missing:
            raise ValueError(f"no such case(s) in {folder}: {missing}; have {ids}")
        cases = [c for c in cases if c.id in only]
    if not cases:
        raise ValueError(f"no prompt cases found in {folder}")
    return cases
