"""Assemble ranking math against hand-computed cases, the Assemble Rank node and the rank CLI."""
from __future__ import annotations

import csv
import math
import sys
import types

import pytest
import torch

from rewardloop.rewards.ranking import assemble_rank, average_ranks
from rewardloop.rewards.types import RewardScores


def R(name, values, hib=True, group=None):
    return RewardScores(name, values, hib, None, [], group)


def test_average_ranks_ties():
    import numpy as np
    assert average_ranks(np.array([1.0, 1.0, 0.0])).tolist() == [0.5, 0.5, 2.0]
    assert average_ranks(np.array([2.0, 2.0, 2.0])).tolist() == [1.0, 1.0, 1.0]


def test_rank_sum_with_tied_values():
    r = assemble_rank([R("a", [1, 1, 0]), R("b", [5, 3, 4])])
    assert r.ranks["a"] == [0.5, 0.5, 2.0]
    assert r.ranks["b"] == [0.0, 2.0, 1.0]
    assert r.totals == [0.5, 2.5, 3.0]
    assert r.order == [0, 1, 2] and r.best() == [0]


def test_rank_sum_total_tie_broken_by_zscore_sum_then_index():
    # ranks a [0,1,2], b [2,1,0] → all totals 2; z-sums (hand): [0.1836, -0.5930, 0.4093]
    r = assemble_rank([R("a", [10, 1, 0]), R("b", [0, 1, 2])])
    assert r.totals == [2.0, 2.0, 2.0]
    assert r.zsum == pytest.approx([0.1836, -0.5930, 0.4093], abs=1e-3)
    assert r.order == [2, 0, 1]
    # symmetric case: z-sums all 0 as well → index order
    s = assemble_rank([R("a", [2, 1, 0]), R("b", [0, 1, 2])])
    assert s.zsum == pytest.approx([0, 0, 0], abs=1e-12) and s.order == [0, 1, 2]


def _documented_order(values, weights):
    """The documented rank_sum rule in exact decimal arithmetic (50 digits), independent of the library."""
    from decimal import Decimal, localcontext
    with localcontext() as ctx:
        ctx.prec = 50
        n = len(values[0])
        w = [Decimal(str(x)) for x in weights]
        total = [Decimal(0)] * n
        zsum = [Decimal(0)] * n
        for wj, col in zip(w, values):
            col = [Decimal(v) for v in col]
            mean = sum(col) / n
            sd = (sum((v - mean) ** 2 for v in col) / n).sqrt()
            for k, v in enumerate(col):
                rank = sum(1 for u in col if u > v) + Decimal(sum(1 for u in col if u == v) - 1) / 2
                total[k] += wj * rank
                zsum[k] += wj * ((v - mean) / sd if sd else 0)
        return sorted(range(n), key=lambda k: (total[k], -zsum[k].quantize(Decimal("1e-30")), k))


def test_rank_sum_ties_follow_the_documented_rule_not_the_last_bit():
    """10,000 random batches, weights 0.1/0.2/0.3, small integer scores (many ties): the order is the documented
    rule (lowest exact total, then higher z-score sum, then lower index), checked in exact decimal arithmetic."""
    import random

    import numpy as np
    rng = random.Random(0)
    weights = [0.1, 0.2, 0.3]
    float_rule_wrong = 0
    for _ in range(10_000):
        n = rng.randint(2, 8)
        values = [[rng.randint(0, 3) for _ in range(n)] for _ in weights]
        want = _documented_order(values, weights)
        r = assemble_rank([R(f"r{j}", v) for j, v in enumerate(values)], weights)
        assert r.order == want, (values, r.order, want)
        # the plain float sum (the old code) disagrees in some of these cases: the test exercises last-bit ties
        ranks = np.array([average_ranks(np.array(v, dtype=float)) for v in values])
        tot = (np.array(weights)[:, None] * ranks).sum(0)
        float_rule_wrong += sorted(range(n), key=lambda i: (tot[i], -r.zsum[i], i)) != want
    assert float_rule_wrong > 100


def test_exact_totals_tie_decimal_weights():
    # image 0: ranks (3, 0) → 0.1·3 = 0.30000000000000004 in floats; image 1: ranks (0, 1) → 0.3·1 = 0.3
    r = assemble_rank([R("a", [0, 10, 2, 1]), R("b", [3, 2, 1, 0])], [0.1, 0.3])
    assert r.totals[0] == r.totals[1] == 0.3               # tied as written (exact sums, then rounded)
    assert r.zsum[0] > r.zsum[1]                           # z-sums (hand): 0.3205 vs 0.3046
    assert r.order[:2] == [0, 1]                           # the float sums would have put image 1 first
    raw = assemble_rank([R("a", [1.0, 0.0]), R("b", [1.0, 0.0]), R("c", [0.0, 1.0])], [0.1, 0.2, 0.3], "raw")
    assert raw.totals[0] == raw.totals[1] and raw.order == [0, 1]   # 0.1 + 0.2 vs 0.3: tied → lower index


def test_one_reward_and_reversed_direction():
    assert assemble_rank([R("a", [0.2, 0.9, 0.5])]).order == [1, 2, 0]
    low = assemble_rank([R("err", [0.2, 0.9, 0.5], hib=False)])
    assert low.order == [0, 2, 1] and low.ranks["err"] == [0.0, 2.0, 1.0]
    both = assemble_rank([R("a", [3, 2, 1]), R("b", [0.1, 0.3, 0.2], hib=False)])
    # ranks a [0,1,2], b [0,2,1] → totals [0,3,3]; z-sums [2.449,-1.225,-1.225] tie too → index order
    assert both.totals == [0.0, 3.0, 3.0] and both.order == [0, 1, 2]
    assert both.zsum[1] == pytest.approx(both.zsum[2]) == pytest.approx(-1.2247, abs=1e-4)


def test_weights_change_the_winner():
    a, b = R("a", [3, 2, 1]), R("b", [1, 2, 3])
    assert assemble_rank([a, b], [2, 1]).totals == [2.0, 3.0, 4.0]
    r = assemble_rank([a, b], [1, 3])
    assert r.totals == [6.0, 4.0, 2.0] and r.order == [2, 1, 0]
    zero = assemble_rank([a, b], [0, 1])
    assert zero.order == [2, 1, 0]


def test_zscore_mode_hand_computed():
    # a: z = [-1.2247, 0, 1.2247]; b lower-better [10,10,40] → oriented z = [0.7071, 0.7071, -1.4142]
    r = assemble_rank([R("a", [1, 2, 3]), R("b", [10, 10, 40], hib=False)], mode="zscore")
    assert r.totals == pytest.approx([-0.5176, 0.7071, -0.1895], abs=1e-4)
    assert r.order == [1, 2, 0] and r.total_higher_is_better


def test_raw_mode_hand_computed_and_index_tiebreak():
    r = assemble_rank([R("a", [1, 2, 3]), R("b", [0.5, 0.1, 0.0])], [1, 10], mode="raw")
    assert r.totals == pytest.approx([6.0, 3.0, 3.0])
    assert r.order == [0, 1, 2]
    neg = assemble_rank([R("a", [1, 2, 3], hib=False)], mode="raw")
    assert neg.totals == [-1.0, -2.0, -3.0] and neg.order == [0, 1, 2]


def test_constant_reward_gives_zero_zscores():
    r = assemble_rank([R("c", [0.5, 0.5, 0.5])], mode="zscore")
    assert r.totals == [0.0, 0.0, 0.0] and r.order == [0, 1, 2]


def test_groups_rank_each_prompt_separately():
    a = R("a", [1, 2, 5, 3])
    r = assemble_rank([a], group_size=2)
    assert r.group == [0, 0, 1, 1]
    assert r.order == [1, 0, 2, 3] and r.position == [1, 0, 0, 1]
    assert r.top_k(1) == [1, 2] and r.best() == [1, 2]
    # without groups image 2 would beat everything
    assert assemble_rank([a]).order == [2, 3, 1, 0]
    # groups from the scores' own group ids
    g = assemble_rank([R("a", [1, 2, 5, 3], group=[1, 0, 1, 0])])
    assert g.order == [2, 0, 3, 1] and g.groups == [1, 0] and g.best() == [2, 3]
    # z-scores are per group: a group of identical values contributes 0
    z = assemble_rank([R("a", [1, 1, 0, 9])], mode="zscore", group_size=2)
    assert z.totals[:2] == [0.0, 0.0] and z.totals[2] == pytest.approx(-1.0)
    with pytest.raises(ValueError, match="groups of 3"):
        assemble_rank([a], group_size=3)


def test_bad_inputs_refused_clearly():
    with pytest.raises(ValueError, match=r"'b' has NaN/infinite scores for images \[1\]"):
        assemble_rank([R("a", [1, 2]), R("b", [0.1, math.nan])])
    with pytest.raises(ValueError, match="same images"):
        assemble_rank([R("a", [1, 2]), R("b", [1, 2, 3])])
    with pytest.raises(ValueError, match="one weight per reward"):
        assemble_rank([R("a", [1, 2])], [1, 2])
    with pytest.raises(ValueError, match="≥ 0"):
        assemble_rank([R("a", [1, 2])], [-1])
    with pytest.raises(ValueError, match="All weights are 0"):
        assemble_rank([R("a", [1, 2])], [0])
    with pytest.raises(ValueError, match="Unknown ranking mode"):
        assemble_rank([R("a", [1, 2])], mode="median")
    with pytest.raises(ValueError, match="No scores"):
        assemble_rank([])


def test_table_and_assembled_scores():
    r = assemble_rank([R("caption", [0.2, 0.8]), R("err", [1.0, 2.0], hib=False)])
    t = r.table()
    assert "caption (↑)" in t and "err (↓)" in t and "total (↓)" in t and "lowest total wins" in t
    s = r.as_scores(r.order)
    assert s.name == "assemble_rank_sum" and not s.higher_is_better
    assert [d["image"] for d in s.details] == r.order and s.values == [r.totals[i] for i in r.order]
    dup = assemble_rank([R("x", [1, 2]), R("x", [2, 1])])
    assert dup.names == ["x", "x#2"]


# ---------------------------------------------------------------- node
def test_assemble_rank_node(image_batch, tmp_path, monkeypatch):
    import rewardloop
    from rewardloop import bridge
    monkeypatch.setattr(bridge, "temp_dir", lambda: tmp_path)
    node = rewardloop.NODE_CLASS_MAPPINGS["RewardLoopAssembleRank"]()
    imgs = image_batch(4, 16, 24)
    out = node.rank(imgs, "rank_sum", 2, 2, scores_1=R("a", [1, 2, 5, 3]), scores_3=R("b", [0, 0, 1, 1]),
                    weight_1=1.0, weight_3=0.5)
    ranked, top, indices, assembled, table = out["result"][:5]  # outputs are public API: later ones are appended
    assert indices == [1, 0, 2, 3]
    assert torch.equal(ranked, imgs[[1, 0, 2, 3]]) and torch.equal(top, imgs[[1, 0, 2, 3]])
    assert assembled.name == "assemble_rank_sum" and len(assembled) == 4
    assert out["ui"]["text"] == [table]
    ims = out["ui"]["images"]
    assert len(ims) == 4 and all(e["type"] == "temp" and (tmp_path / e["filename"]).exists() for e in ims)
    with pytest.raises(ValueError, match="connect at least one"):
        node.rank(imgs, "rank_sum", 1, 0)
    with pytest.raises(ValueError, match="4 images but reward"):
        node.rank(imgs, "rank_sum", 1, 0, scores_1=R("a", [1, 2]))


# ---------------------------------------------------------------- CLI with fake rewards
def _fake_module():
    import numpy as np

    from rewardloop.rewards.scoring import FunctionScorer
    mod = types.ModuleType("rl_fake_rewards")

    def bright(images, prompts):
        return [RewardScores("bright", [float(np.asarray(im).mean()) / 255 for im in images], True, (0, 1))]

    def red_err(images, prompts):
        return [RewardScores("red_err", [float(np.asarray(im)[..., 0].mean()) / 255 for im in images], False)]

    def rich(images, prompts):
        hm = [np.linspace(0, 1, 64, dtype=np.float32).reshape(8, 8) for _ in images]
        vals = [float(np.asarray(im)[..., 1].mean()) / 255 for im in images]
        det = [{"implausibility_heatmap": h} for h in hm]
        return [RewardScores("plausibility", vals, True, (0, 1), det), RewardScores("overall", vals, True, (0, 1), det)]

    mod.make_bright = lambda models=None, **kw: FunctionScorer(["bright"], bright)
    mod.make_red = lambda models=None, **kw: FunctionScorer(["red_err"], red_err)
    mod.make_rich = lambda models=None, **kw: FunctionScorer(["plausibility", "overall"], rich)
    return mod


def test_rank_cli_with_fake_rewards(tmp_path, monkeypatch, capsys):
    from PIL import Image

    from rewardloop.cli import main
    from rewardloop.rewards import scoring
    monkeypatch.setitem(sys.modules, "rl_fake_rewards", _fake_module())
    monkeypatch.setattr(scoring, "SCORER_FACTORIES", {"caption": "rl_fake_rewards:make_bright",
                                                      "sam_llm": "rl_fake_rewards:make_red",
                                                      "rich": "rl_fake_rewards:make_rich"})
    src = tmp_path / "in"
    src.mkdir()
    colours = [(40, 40, 40), (200, 200, 200), (250, 10, 10), (10, 250, 10)]
    for i, c in enumerate(colours):
        Image.new("RGB", (20, 16), c).save(src / f"img{i}.png")
    out = tmp_path / "out"
    rc = main(["rank", "--rewards", "caption,sam_llm,rich", "--weights", "1,1,1", "--prompt", "a thing",
               str(src), "--out", str(out)])
    assert rc == 0, capsys.readouterr().err
    # hand: bright [.157,.784,.353,.353] ranks [3,0,1.5,1.5]; red_err(↓) [.157,.784,.980,.039] ranks [1,2,3,0];
    # plausibility=overall=green [.157,.784,.039,.980] ranks [2,1,3,0], each weighted 1/2 → totals [6,3,7.5,1.5]
    rows = list(csv.DictReader(open(out / "report.csv")))
    assert [int(r["image_index"]) for r in rows] == [3, 1, 0, 2]
    assert [float(r["total_rank_sum"]) for r in rows] == [1.5, 3.0, 6.0, 7.5]
    ranked = sorted(p.name for p in (out / "ranked").iterdir())
    assert ranked == ["001_img3.png", "002_img1.png", "003_img0.png", "004_img2.png"]
    assert (out / "ranked" / "001_img3.png").read_bytes() == (src / "img3.png").read_bytes()
    page = (out / "index.html").read_text()
    assert "thumbs/0003.png" in page and "heatmaps/0003_implausibility_heatmap.png" in page
    assert len(list((out / "heatmaps").iterdir())) == 4
    # never overwrite: a non-empty --out is refused, --overwrite allows it
    assert main(["rank", "--rewards", "caption", "--prompt", "x", str(src), "--out", str(out)]) == 1
    assert "not empty" in capsys.readouterr().err
    assert main(["rank", "--rewards", "caption", "--prompt", "x", str(src), "--out", str(out), "--overwrite",
                 "--mode", "zscore"]) == 0
    # groups: two prompts × 2 images
    out2 = tmp_path / "out2"
    assert main(["rank", "--rewards", "caption", "--prompt", "p1", "--prompt", "p2", "--group-size", "2",
                 str(src), "--out", str(out2)]) == 0
    rows = list(csv.DictReader(open(out2 / "report.csv")))
    assert [(r["group"], r["image_index"]) for r in rows] == [("0", "1"), ("0", "0"), ("1", "2"), ("1", "3")]
    assert sorted(p.name for p in (out2 / "ranked").iterdir())[0] == "g000_001_img1.png"
    assert main(["rank", "--rewards", "caption", "--weights", "1,2", "--prompt", "x", str(src), "--out",
                 str(tmp_path / "o3")]) == 1
    assert "--weights has 2 values" in capsys.readouterr().err


def test_score_with_scorer_node_gives_scores_table_and_heatmap(image_batch):
    import rewardloop
    fake = _fake_module()
    node = rewardloop.NODE_CLASS_MAPPINGS["RewardLoopScoreWithScorer"]()
    imgs = image_batch(2, 16, 24)
    s1, s2, s3, s4, table, heat = node.score(fake.make_rich(), imgs, "a thing")
    assert s1.name == "plausibility" and s2.name == "overall" and s3 is None and s4 is None
    assert "plausibility (↑)" in table
    assert heat.shape == (2, 16, 24) and heat[0, 0, 0] < 0.1 and heat[0, -1, -1] > 0.9
    *_, none_heat = node.score(fake.make_bright(), imgs, "a thing")
    assert none_heat.shape == (2, 16, 24) and none_heat.max() == 0


def test_rank_cli_splits_model_roles_between_rewards():
    from rewardloop.rewards.scoring import models_for
    models = {"captioner": "c", "text_encoder": "t", "sam": "s", "llm": "l", "rich_feedback": "r",
              "sam_llm.captioner": "c2", "points_per_side": "8"}
    # a plain option goes only to the rewards that take it (points_per_side: sam_llm's), like a plain role
    assert models_for("caption", models) == {"captioner": "c", "text_encoder": "t"}
    # the semantic judge of sam_llm shares the caption reward's text encoder
    assert models_for("sam_llm", models) == {"sam": "s", "llm": "l", "text_encoder": "t", "captioner": "c2",
                                             "points_per_side": "8"}
    assert models_for("rich", models) == {"rich_feedback": "r"}
    assert models_for("custom", {"captioner": "c", "anything": "x"}) == {"captioner": "c", "anything": "x"}


def test_make_scorer_gives_each_reward_only_its_roles(monkeypatch):
    """`score`, `rank`, `fix`, the trainers and A1111 all pass one option set to several rewards."""
    import sys
    import types

    from rewardloop.rewards import scoring
    got = {}
    fake = types.ModuleType("rewardloop.rewards._fake_factory")
    fake.make = lambda models, **kw: got.setdefault("models", models)
    monkeypatch.setitem(sys.modules, "rewardloop.rewards._fake_factory", fake)
    monkeypatch.setitem(scoring.SCORER_FACTORIES, "caption", "._fake_factory:make")
    scoring.make_scorer("caption", {"captioner": "c", "llm": "l", "sam_llm.sam": "s", "caption.text_encoder": "t"})
    assert got["models"] == {"captioner": "c", "text_encoder": "t"}
