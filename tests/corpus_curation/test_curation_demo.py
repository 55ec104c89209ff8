"""Issue 12 item 6: the demo's corpus: distinct scenes are distinct for every dedup level, planted copies
(and copies of its evaluation images) are found, and nothing else is dropped."""
from __future__ import annotations

import itertools
import json

import pytest

from ccmb import synthetic
from ccmb.corpus.primitives import minhash
from ccmb.corpus.primitives.phash import phash_variants_bytes, variant_distance


def test_distinct_scenes_are_distinct_for_caption_and_phash_levels(tmp_path):
    items = synthetic.sample_items(120, seed=0, distinct=True)
    assert len(set(items)) == 120
    grams = [minhash.ngrams(t, 3) for t in minhash.normalize_texts([i.title for i in items]).to_pylist()]
    assert max(minhash.jaccard_sets(a, b) for a, b in itertools.combinations(grams, 2)) < 0.8
    names = synthetic.write_images(items, tmp_path, size=128, seed=0)
    h = phash_variants_bytes([(tmp_path / n).read_bytes() for n in names])
    d = [variant_distance(h[i], h[j])[0] for i, j in itertools.combinations(range(len(h)), 2)]
    assert min(d) >= synthetic.MIN_PHASH_DISTANCE
    # and every planted near-copy is within the dedup level's default threshold of its original
    data = (tmp_path / names[0]).read_bytes()
    for kind in synthetic.NEAR_COPIES:
        hc = phash_variants_bytes([synthetic.near_copy(data, kind)])
        assert variant_distance(h[0], hc[0])[0] <= 4, kind


@pytest.mark.slow
def test_demo_curation_drops_exactly_what_it_planted(tmp_path):
    from ccmb.cli.demo import Transcript, _curate

    transcript = Transcript(tmp_path)
    outcome = _curate(transcript, images=40, seed=0, mismatches=0)
    log = transcript.lines
    assert outcome["planted"], outcome
    for what, expect, got in outcome["planted"]:
        assert got == expect, (what, expect, got)
    assert outcome["others"] == {}
    report = json.loads((tmp_path / "decontaminate.json").read_text())
    assert report["datasets"]["icr/val"]["images_with_copies"] == 3
    assert all(p["texts_with_copies"] == 0 for p in report["datasets"].values())  # held-out texts are new
    assert any("decontaminate" in c for c in log)
    manifest = json.loads((tmp_path / "shards" / "manifest.json").read_text())
    kinds = [t["kind"] for t in manifest["provenance"]["decision_tables"]]
    assert kinds == ["filter", "dedup", "decontaminate"]
    assert manifest["provenance"]["decontamination"]["against"] == ["icr/val", "icm/val"]
    assert manifest["total_samples"] == 40  # the 40 distinct scenes, nothing planted
