"""embed and rerank in a fleet: two boards on the C double and one real mosquitto. An embedding
model one board serves is reached on its own topic through the group; a model no live board
serves is answered ``unknown_model`` by the leader, once (docs/FLEET.md, "Per-model topics")."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from tests.e2e import test_fleet
from tests.e2e.test_embed_daemon import close, mean_vector
from tests.e2e.test_fleet import Board, _finals, _quiet
from tests.helpers import Broker, Probe, probe

fleet = test_fleet.fleet  # the same boards fixture


def _ask(p: Probe, base: str, rid: str, topic: str, body: dict[str, Any]) -> None:
    p.publish(
        f"{base}/request/{topic}",
        {"id": rid, **body},
        response_topic=f"{base}-test/reply",
        correlation_data=rid.encode(),
    )


def test_an_embedding_model_one_board_serves_is_reached_through_the_fleet(
    fleet: tuple[str, Board], broker: Broker, fake_libs: dict[str, Path], tmp_path: Path
) -> None:
    """embed/<model> goes only to the board with the model, as generate/<model> does; embed and
    rerank on a model no board serves are answered unknown_model once; generate/<embedding model>
    is answered wrong_model_kind by that board (it subscribes every per-model topic of its models)."""
    base, board = fleet
    board("b0")  # the leader (lowest node id): chat models only
    lib = str(fake_libs["1.3"])
    emb = {
        "emb": {
            "runtime": "rkllm",
            "path": str(tmp_path / "b1" / "fake-model.rkllm"),  # written by the board's config
            "library": lib,
            "kind": "embedding",
            "pooling": "mean",
        }
    }
    board("b1", extra_models=emb)
    texts = [f"fleet text {i}" for i in range(4)]
    with probe(broker) as p:
        p.subscribe(f"{base}-test/reply")
        for i, text in enumerate(texts):  # every one to b1, the only board with "emb"
            _ask(p, base, f"e{i}", "embed/emb", {"input": text})
        _ask(p, base, "gone-e", "embed/nowhere", {"input": "x"})
        _ask(p, base, "gone-r", "rerank/nowhere", {"query": "q", "documents": ["d"]})
        _ask(p, base, "kind", "generate/emb", {"prompt": "hi", "stream": False})
        finals = _finals(p, base, len(texts) + 3, timeout=30)
        finals += _quiet(p, base, 1.5)  # each answered once
    by_id = {f["id"]: f for f in finals}
    want = [*(f"e{i}" for i in range(4)), "gone-e", "gone-r", "kind"]
    assert Counter(f["id"] for f in finals) == Counter(want), finals
    for i, text in enumerate(texts):
        f = by_id[f"e{i}"]
        assert f["status"] == "ok" and f["node"] == "b1", f
        assert close(f["data"]["embeddings"][0], mean_vector(text))
    for rid in ("gone-e", "gone-r"):
        assert by_id[rid]["code"] == "unknown_model" and "nowhere" in by_id[rid]["error"], by_id[rid]
        # the fleet's answer, not the leader's own list of models, which lacks b1's "emb"
        assert "no board of fleet" in by_id[rid]["error"], by_id[rid]
    # a request of the wrong kind on a served model's topic: the board that has it says so
    assert by_id["kind"]["code"] == "wrong_model_kind" and by_id["kind"]["node"] == "b1", by_id["kind"]
