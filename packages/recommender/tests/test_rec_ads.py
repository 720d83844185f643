"""The ad-copy studio: the conversion model learns the simulated rule; files; ranking; a real LM end to end."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from click.testing import CliRunner

from nanoforge.recommender.adconv import (
    AdConversionModel,
    evaluate_conversion_model,
    fit_conversion_model,
    train_conversion_model,
)
from nanoforge.recommender.ads import ad_schema, parse_copy, run_studio
from nanoforge.recommender.adsim import AdCopy, read_audience, read_impressions, simulate_impressions
from nanoforge.recommender.cli import group
from nanoforge.recommender.textgen import Generated, InferenceTextGenerator

SPORTY = {"interest": "sports", "age": 27, "device": "mobile", "price_sensitive": True}
HOMEY = {"interest": "home", "age": 61, "device": "desktop", "price_sensitive": False}


@pytest.fixture(scope="module")
def data():
    return simulate_impressions(15_000, seed=0), simulate_impressions(4_000, seed=1)  # held out: new copies


@pytest.fixture(scope="module")
def model(data):
    return train_conversion_model(data[0])


def test_rec_ads_conversion_model_learns_the_simulated_rule(data, model) -> None:
    train, held = data
    ours = evaluate_conversion_model(model, held, simulated=True)
    copy_only = evaluate_conversion_model(
        train_conversion_model(train, feature_set="copy_only"), held, simulated=True
    )
    audience_only = evaluate_conversion_model(
        train_conversion_model(train, feature_set="audience_only"), held, simulated=True
    )
    assert 0.2 < ours["positive_rate"] < 0.6
    # the ceiling is the rule's own probability (labels are Bernoulli draws from it)
    assert ours["auc"] > 0.70 and ours["auc"] > ours["rule_auc"] - 0.08, ours
    assert ours["auc"] > audience_only["auc"] + 0.04 and ours["auc"] > copy_only["auc"] + 0.1, (
        ours, audience_only, copy_only)  # fmt: skip


def test_rec_ads_attributions_add_up_and_follow_the_rule(model) -> None:
    copy = AdCopy("Run fast with our team", "Save on every pair today.", "Shop now")
    feats, words = model.attributions(copy, [SPORTY])
    logit = math.log(model.audience_rate(copy, [SPORTY]) / (1 - model.audience_rate(copy, [SPORTY])))
    assert float(model.bias.detach()) + sum(v for _, v in feats) == pytest.approx(logit, abs=1e-4)
    contrib = dict(feats)
    assert contrib["interest=sports|w:run"] > 0.3  # the copy speaks to the viewer's interest
    assert contrib["price_sensitive=true|w:save"] > 0.1  # discount words help price-sensitive viewers
    assert (
        dict(model.attributions(copy, [HOMEY])[0])["price_sensitive=false|w:save"] < 0
    )  # ... and not others
    assert {w for w, _ in words} >= {"run", "save", "shop"}
    # same copy, two audiences: it is predicted to work better for the one it was written for
    assert model.audience_rate(copy, [SPORTY]) > model.audience_rate(copy, [HOMEY]) + 0.2


def test_rec_ads_save_load_and_files(tmp_path, model) -> None:
    model.meta = {"trained_on": "test"}
    model.save(tmp_path / "m")
    back = AdConversionModel.load(tmp_path / "m")
    copy = AdCopy("Smart app", "Fast code, free trial.", "Try it")
    assert back.audience_rate(copy, [SPORTY, HOMEY]) == pytest.approx(
        model.audience_rate(copy, [SPORTY, HOMEY])
    )
    assert back.meta == {"trained_on": "test"}
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "ad_conversion.json").write_text('{"format": "other"}')
    with pytest.raises(ValueError, match="not a readable ad conversion model"):
        AdConversionModel.load(tmp_path / "bad")
    (tmp_path / "a.jsonl").write_text(json.dumps(SPORTY) + "\n\n" + json.dumps(HOMEY) + "\n")
    (tmp_path / "a.csv").write_text("interest,device,price_sensitive\nsports,mobile,true\n")
    assert read_audience(tmp_path / "a.jsonl") == [SPORTY, HOMEY]
    assert read_audience(tmp_path / "a.csv") == [
        {"interest": "sports", "device": "mobile", "price_sensitive": "true"}
    ]
    (tmp_path / "n.jsonl").write_text('{"interest": {"nested": 1}}\n')
    with pytest.raises(ValueError, match=r"n.jsonl:1: profile fields must be strings, numbers or booleans"):
        read_audience(tmp_path / "n.jsonl")
    with pytest.raises(ValueError, match=r"unsupported file extension '.txt'; accepted: .jsonl, .csv"):
        read_audience(tmp_path / "a.txt")
    (tmp_path / "e.jsonl").write_text("\n")
    with pytest.raises(ValueError, match="no audience profiles"):
        read_audience(tmp_path / "e.jsonl")
    (tmp_path / "c.jsonl").write_text(
        '{"headline": "a", "body": "b", "call_to_action": "c", "converted": 2}\n'
    )
    with pytest.raises(ValueError, match=r"c.jsonl:1: converted='2'; accepted: 0, 1, true, false"):
        read_impressions(tmp_path / "c.jsonl")


def test_rec_ads_fit_from_click_logs(tmp_path) -> None:
    rows = [
        {**i.copy.to_dict(), **i.profile, "converted": i.converted} for i in simulate_impressions(400, seed=4)
    ]
    (tmp_path / "clicks.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    m = fit_conversion_model(tmp_path / "clicks.jsonl", epochs=1)
    assert m.meta["trained_on"].startswith("click logs") and m.meta["n_train"] == 320
    assert m.meta["n_held_out"] == 80 and "rule_auc" not in m.meta["held_out"]


class Scripted:
    """A TextGenerator that returns fixed samples (the ranking logic, without a language model)."""

    def __init__(self, texts: list[str]) -> None:
        self.texts, self.calls = texts, []

    def generate_json(self, messages, schema, *, n, max_new_tokens, temperature, seed):
        self.calls.append((messages, schema, n))
        if "headline" in schema["properties"]:
            return [Generated(t, "FINISH_REASON_STOP" if t.endswith("}") else "FINISH_REASON_LENGTH", 9)
                    for t in self.texts[:n]]  # fmt: skip
        return [Generated('{"rationale": "It speaks to runners."}', "FINISH_REASON_STOP", 9)]


def test_rec_ads_studio_ranks_rejects_and_explains(model) -> None:
    home = {"headline": "Cozy kitchen decor", "body": "Made for your home.", "call_to_action": "Learn more"}
    sport = {"headline": "Run with the team", "body": "Fit gear, sale today.", "call_to_action": "Shop now"}
    gen = Scripted([json.dumps(home), '{"headline": "cut off', json.dumps(sport)])
    res = run_studio("running shoes", [SPORTY, SPORTY, HOMEY], gen, model, n=3)
    assert [c.copy.headline for c in res.candidates] == ["Run with the team", "Cozy kitchen decor"]
    assert [c.rank for c in res.candidates] == [1, 2] and res.candidates[0].conversion > res.candidates[
        1
    ].conversion
    assert len(res.rejected) == 1 and "FINISH_REASON_LENGTH" in res.rejected[0]["reason"]
    assert res.rationale == "It speaks to runners." and res.top_features
    assert "running shoes" in gen.calls[0][0][-1]["content"] and "3 viewers" in gen.calls[0][0][-1]["content"]
    with pytest.raises(ValueError, match="none of the 1 generated samples was a valid ad"):
        run_studio("x", [SPORTY], Scripted(["[1]"]), model, n=1)
    with pytest.raises(ValueError, match=r"n=17 candidates is out of range; accepted: 1..16"):
        run_studio("x", [SPORTY], gen, model, n=17)
    with pytest.raises(ValueError, match="key 'body' missing"):
        parse_copy('{"headline": "a", "call_to_action": "b"}')


@pytest.mark.integration
def test_rec_ads_end_to_end_with_a_real_inference_server(inference_addr, model) -> None:
    gen = InferenceTextGenerator(inference_addr, timeout=120)
    try:
        res = run_studio("trail running shoes", [SPORTY, HOMEY], gen, model, n=3, seed=1)
    finally:
        gen.close()
    # a random model writes gibberish, but constrained decoding keeps it in the JSON shape
    assert len(res.candidates) + len(res.rejected) == 3 and res.candidates, res.rejected
    assert [c.rank for c in res.candidates] == list(range(1, len(res.candidates) + 1))
    rates = [c.conversion for c in res.candidates]
    assert rates == sorted(rates, reverse=True) and all(0 < r < 1 for r in rates)
    limits = {k: v["maxLength"] for k, v in ad_schema(200)["properties"].items()}
    for c in res.candidates:
        for key, value in c.copy.to_dict().items():
            assert 1 <= len(value) <= limits[key], (key, value)
    assert res.top_features and (res.rationale or res.rationale_note)


@pytest.mark.integration
def test_rec_ads_cli_json(tmp_path, inference_addr) -> None:
    runner = CliRunner()
    r = runner.invoke(group, ["ads-train", "--out", str(tmp_path / "conv"), "--n", "3000"])
    assert r.exit_code == 0, r.output
    assert "SIMULATED impressions" in r.output and "held-out AUC" in r.output
    (tmp_path / "people.jsonl").write_text(json.dumps(SPORTY) + "\n" + json.dumps(HOMEY) + "\n")
    args = ["ads", "--product", "a smart water bottle", "--audience", str(tmp_path / "people.jsonl"),
            "--inference", inference_addr, "-n", "2", "--conversion-model", str(tmp_path / "conv"), "--json"]  # fmt: skip
    r = runner.invoke(group, args)
    assert r.exit_code == 0, r.output
    out = json.loads(r.output)
    assert out["audience_size"] == 2 and out["conversion_model"]["trained_on"].startswith("SIMULATED")
    assert len(out["candidates"]) + len(out["rejected"]) == 2
    assert all(
        set(c) >= {"rank", "conversion", "headline", "body", "call_to_action"} for c in out["candidates"]
    )
    r = runner.invoke(group, [*args[:-1], "-n", "0"])
    assert r.exit_code != 0 and "n=0 candidates is out of range" in str(r.exception)


def test_rec_ads_features_are_stable_hashes() -> None:
    m = AdConversionModel(n_hash=1 << 10)
    copy = AdCopy("Run", "Save now.", "Buy it")
    ids = m.ids(copy, SPORTY)
    assert np.array_equal(ids, [m.hash(f) for f in m.feature_strings(copy, SPORTY)])
    assert m.hash("w:run") == AdConversionModel(n_hash=1 << 10).hash("w:run")  # CRC32, not Python's hash()
