"""Reward-ranked LoRA fine-tuning: prompt files, assemble ranking math, the round loop on tiny-sd, resume, node, CLI."""
from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import torch

from rewardloop.rewards.scoring import FunctionScorer
from rewardloop.rewards.types import RewardScores
from rewardloop.trainers import ranked
from rewardloop.trainers.prompts import PromptFileError, parse_prompt_text, read_prompts

RES = 32


# ---------------------------------------------------------------- fakes
def brightness(images, prompts):
    return [RewardScores("brightness", [float(np.asarray(im, dtype=np.float64).mean() / 255.0) for im in images],
                         True, (0.0, 1.0))]


def redness(images, prompts):  # lower is better: distance of the red channel from mid-grey
    return [RewardScores("red_dist", [abs(float(np.asarray(im, dtype=np.float64)[..., 0].mean() / 255.0) - 0.5)
                                      for im in images], False, (0.0, 0.5))]


class CountingScorer(FunctionScorer):
    """Counts calls and images; raises the bridge's Interrupted on call number ``stop_at`` (1-based)."""

    def __init__(self, names, fn, stop_at=None):
        super().__init__(names, fn)
        self.calls, self.images, self.stop_at = 0, 0, stop_at

    def __call__(self, images, prompts):
        self.calls += 1
        if self.stop_at is not None and self.calls == self.stop_at:
            from rewardloop.bridge import Interrupted
            raise Interrupted("stop for the test")
        self.images += len(images)
        return super().__call__(images, prompts)


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def configs(steps=2):
    from rewardloop.trainers.lora import LoraConfig, TrainConfig
    return LoraConfig(rank=2), TrainConfig(steps=steps, lr=1e-3, resolution=RES, seed=0)


# ---------------------------------------------------------------- prompt files
def test_prompt_text_comments_blanks_and_duplicates(tmp_path):
    f = tmp_path / "p.txt"
    f.write_text("# my prompts\na cat\n\n  a   dog  \na cat\n   # indented comment\nA cat\n", encoding="utf-8")
    assert read_prompts(f) == ["a cat", "a dog", "A cat"]
    assert read_prompts(f, limit=2) == ["a cat", "a dog"]
    assert parse_prompt_text("x\r\ny\r\n") == ["x", "y"]


def test_prompt_coco_json_and_list(tmp_path):
    coco = {"info": {}, "images": [{"id": 1}], "annotations": [
        {"image_id": 1, "id": 10, "caption": "A man riding a bike.\n"},
        {"image_id": 1, "id": 11, "caption": "A  man riding a bike."},
        {"image_id": 2, "id": 12, "caption": "Two dogs on a beach."}]}
    f = tmp_path / "captions_val2017.json"
    f.write_text(json.dumps(coco))
    assert read_prompts(f) == ["A man riding a bike.", "Two dogs on a beach."]
    g = tmp_path / "list.txt"  # JSON detected from the content, whatever the suffix
    g.write_text(json.dumps(["a", "b", "a"]))
    assert read_prompts(g) == ["a", "b"]


@pytest.mark.parametrize("content,match", [
    ("", "has no prompts"),
    ("# only a comment\n\n", "has no prompts"),
    ('{"annotations": [', "not valid JSON"),
    ('{"images": []}', "MS-COCO captions"),
    ('{"annotations": [{"image_id": 1}]}', "entry 0 has no text caption"),
    ('{"annotations": {"caption": "x"}}', "must be a list"),
    ('{"annotations": []}', "has no prompts"),
])
def test_prompt_file_errors(tmp_path, content, match):
    f = tmp_path / ("bad.json" if content.startswith("{") else "bad.txt")
    f.write_text(content)
    with pytest.raises(PromptFileError, match=match):
        read_prompts(f)


def test_prompt_file_missing_and_binary(tmp_path):
    with pytest.raises(PromptFileError, match="does not exist"):
        read_prompts(tmp_path / "nope.txt")
    b = tmp_path / "b.txt"
    b.write_bytes(b"\xff\xfe\x00bad\xff")
    with pytest.raises(PromptFileError, match="not UTF-8"):
        read_prompts(b)


# ---------------------------------------------------------------- ranking math
def test_descending_ranks_and_ties():
    assert ranked.descending_ranks([0.1, 0.9, 0.5]) == [2.0, 0.0, 1.0]
    assert ranked.descending_ranks([1.0, 3.0, 3.0, 0.0]) == [2.0, 0.5, 0.5, 3.0]  # tie shares mean position
    assert ranked.z_scores([2.0, 2.0]) == [0.0, 0.0]
    z = ranked.z_scores([1.0, 3.0])
    assert z == pytest.approx([-1.0, 1.0])


def test_rank_sum_matches_hand_built_ranking():
    # 4 candidates, 3 rewards; the second is lower-is-better.
    a = RewardScores("a", [0.9, 0.2, 0.5, 0.7], True)       # ranks: c0=0 c3=1 c2=2 c1=3
    b = RewardScores("b", [3.0, 1.0, 2.0, 4.0], False)      # lower better: c1=0 c2=1 c0=2 c3=3
    c = RewardScores("c", [0.1, 0.3, 0.8, 0.2], True)       # c2=0 c1=1 c3=2 c0=3
    # equal weights: sums c0=5 c1=4 c2=3 c3=6 -> order 2,1,0,3
    assert ranked.rank_candidates([a, b, c]) == [2, 1, 0, 3]
    # weights 3,1,1: c0=0+2+3=5, c1=9+0+1=10, c2=6+1+0=7, c3=3+3+2=8 -> 0,2,3,1
    assert ranked.rank_candidates([a, b, c], [3, 1, 1]) == [0, 2, 3, 1]
    tab = ranked.assemble_table([a, b, c], [3, 1, 1])
    assert tab["rank_sum"] == [5.0, 10.0, 7.0, 8.0]
    # raw mode: a - b + c -> c0=-2.0 c1=-0.5 c2=-0.7 c3=-3.1 -> 1,2,0,3
    assert ranked.rank_candidates([a, b, c], mode="raw") == [1, 2, 0, 3]


def test_rank_sum_tie_breaks_by_zscore_then_index():
    # Two rewards with mirrored ranks: every candidate sums to the same rank total.
    a = RewardScores("a", [1.0, 0.0], True)
    b = RewardScores("b", [0.0, 10.0], True)
    # z-scores: a -> [1,-1]; b -> [-1, 1]; sums equal -> index decides
    assert ranked.rank_candidates([a, b]) == [0, 1]
    # a third reward breaks the z tie without changing ranks much: c favours candidate 1
    a3 = RewardScores("a", [1.0, 0.0, 0.5], True)     # ranks 0,2,1   z: [1.2247, -1.2247, 0]
    b3 = RewardScores("b", [0.0, 1.0, 0.9], True)     # ranks 2,0,1   z: [-1.3887, 0.9258, 0.4629]
    # rank sums: c0=2, c1=2, c2=2 -> z sums: c0=-0.164, c1=-0.299, c2=0.463 -> 2,0,1
    assert ranked.rank_candidates([a3, b3]) == [2, 0, 1]


def test_local_ranking_agrees_with_shared_module():
    """The selection's one entry point uses rewards.ranking when present; both must agree (rank_sum)."""
    shared = ranked._ranking_module()
    if shared is None or not hasattr(shared, "assemble_rank"):
        pytest.skip("rewards.ranking is not installed: the local implementation is used")
    rng = np.random.default_rng(0)
    for trial in range(20):
        k = int(rng.integers(2, 7))
        scores = [RewardScores(f"r{j}", np.round(rng.random(k), 1).tolist(), bool(rng.random() < 0.7))
                  for j in range(int(rng.integers(1, 4)))]
        w = np.round(rng.random(len(scores)) * 2 + 0.5, 2).tolist()
        assert ranked.rank_candidates(scores, w) == ranked._local_rank(scores, w, "rank_sum"), trial


def test_rank_errors():
    with pytest.raises(ValueError, match="NaN"):
        ranked.rank_candidates([RewardScores("a", [1.0, math.nan])])
    with pytest.raises(ValueError, match="same candidates"):
        ranked.rank_candidates([RewardScores("a", [1.0, 2.0]), RewardScores("b", [1.0])])
    with pytest.raises(ValueError, match="one weight per reward"):
        ranked.rank_candidates([RewardScores("a", [1.0, 2.0])], [1, 2])
    with pytest.raises(ValueError, match="not all 0"):
        ranked.rank_candidates([RewardScores("a", [1.0, 2.0])], [0])
    with pytest.raises(ValueError, match="Unknown ranking mode"):
        ranked.rank_candidates([RewardScores("a", [1.0, 2.0])], mode="best")


def test_select_per_prompt_groups_and_weights_expansion():
    s = RewardScores("a", [0.1, 0.9, 0.5, 0.3, 0.2, 0.4], True)
    orders = ranked.select_per_prompt([s], [0, 0, 0, 1, 1, 1], top=1)
    assert orders == {0: [1, 2, 0], 1: [5, 3, 4]}
    one = FunctionScorer(["x"], None)
    four = FunctionScorer(["p", "q", "r", "s"], None)
    assert ranked.expand_weights([one, four], None) == [1.0, 0.25, 0.25, 0.25, 0.25]
    assert ranked.expand_weights([one, four], [2, 1]) == [2.0, 0.25, 0.25, 0.25, 0.25]
    assert ranked.expand_weights([one, four], [1, 2, 3, 4, 5]) == [1, 2, 3, 4, 5]
    with pytest.raises(ValueError, match="one weight"):
        ranked.expand_weights([one, four], [1, 2, 3])


def test_config_validation():
    with pytest.raises(ValueError, match="top"):
        ranked.RankedConfig(k=2, top=3).validate()
    with pytest.raises(ValueError, match="rounds"):
        ranked.RankedConfig(rounds=0).validate()


# ---------------------------------------------------------------- the round loop on tiny-sd
def _check_round_dir(run_dir, label, k, n_prompts, top, weights):
    rows = read_csv(run_dir / label / "scores.csv")
    assert len(rows) == k * n_prompts
    for p in range(n_prompts):
        grp = [r for r in rows if int(r["prompt_index"]) == p]
        # hand-built ranking from the CSV's raw values: brightness higher better, red_dist lower better
        bright = np.array([float(r["brightness"]) for r in grp])
        red = np.array([float(r["red_dist"]) for r in grp])
        rb = np.argsort(np.argsort(-bright, kind="stable"), kind="stable")
        rr = np.argsort(np.argsort(red, kind="stable"), kind="stable")
        total = weights[0] * rb + weights[1] * rr
        expected = sorted(range(k), key=lambda j: (total[j], j))  # no ties among random images
        kept = [j for j, r in enumerate(grp) if r["kept"] == "1"]
        assert sorted(kept) == sorted(expected[:top])
        for j, r in enumerate(grp):
            assert int(r["position"]) == expected.index(j)
            assert float(r["rank_sum"]) == pytest.approx(total[j])
            if r["kept"] == "1":
                assert (run_dir / r["file"]).is_file()
    return rows


def test_one_round_end_to_end(tiny, tmp_path):
    from safetensors.torch import load_file
    key = tiny("tiny-sd")
    lora_cfg, train_cfg = configs(steps=3)
    scorers = [CountingScorer(["brightness"], brightness), CountingScorer(["red_dist"], redness)]
    cfg = ranked.RankedConfig(k=3, rounds=1, top=1, weights=[2.0, 1.0], gen_steps=2, gen_batch=4, seed=5)
    final = tmp_path / "loras" / "ranked.safetensors"
    res = ranked.train_ranked(key, ["a red car", "a cat on a table"], scorers, tmp_path / "run", cfg, lora_cfg,
                              train_cfg, final_lora_path=final)
    run = tmp_path / "run"
    rows = _check_round_dir(run, "round_000", 3, 2, 1, [2.0, 1.0])
    assert [int(r["seed"]) for r in rows] == [5, 6, 7, 8, 9, 10]
    assert len(list((run / "round_000" / "kept").glob("*.png"))) == 2
    # the LoRA checkpoint of the round and the exported final LoRA
    sd = load_file(str(run / "round_000" / "lora.safetensors"))
    assert sd and all("lora" in k.lower() for k in sd)
    assert res.lora_path == final and final.is_file()
    # mean reward per round recorded: table + plot + state, equal to the CSV mean
    table = read_csv(run / "rounds.csv")
    assert [t["kind"] for t in table] == ["train", "eval"]
    assert float(table[0]["mean_brightness"]) == pytest.approx(np.mean([float(r["brightness"]) for r in rows]), abs=1e-5)
    kept_b = [float(r["brightness"]) for r in rows if r["kept"] == "1"]
    assert float(table[0]["kept_mean_brightness"]) == pytest.approx(np.mean(kept_b), abs=1e-5)
    assert float(table[0]["kept_mean_brightness"]) >= float(table[0]["mean_brightness"]) - 1e-9
    assert (run / "rounds.png").stat().st_size > 1000
    assert res.mean_rewards()[0]["brightness"] == pytest.approx(float(table[0]["mean_brightness"]), abs=1e-5)
    # the eval pass reuses round 0's seeds with the trained LoRA
    ev = read_csv(run / "final" / "scores.csv")
    assert [int(r["seed"]) for r in ev] == [5, 6, 7, 8, 9, 10]
    assert res.eval is not None and len(res.kept_images) == 2
    # 2 scoring passes (round 0 + eval) x 6 images, one scorer call per generation batch of 4 (4 + 2 images): the
    # same calls whichever process of a torchrun job makes the batch, and memory bounded by the batch
    assert scorers[0].calls == 4 and scorers[0].images == 12
    # the same run again is complete: nothing is generated, scored or trained
    again = ranked.train_ranked(key, ["a red car", "a cat on a table"], scorers, run, cfg, lora_cfg, train_cfg,
                                final_lora_path=final)
    assert scorers[0].calls == 4 and again.lora_path == final
    # a fresh run in the same folder without resume is refused; other settings are refused
    with pytest.raises(FileExistsError, match="resume"):
        ranked.train_ranked(key, ["a red car"], scorers, run, cfg, lora_cfg, train_cfg, resume=False)
    with pytest.raises(ValueError, match="other settings"):
        ranked.train_ranked(key, ["a red car"], scorers, run, cfg, lora_cfg, train_cfg)


def test_batched_generation_does_not_depend_on_batching(tiny):
    from rewardloop.trainers import lora as core
    comps = core.load_base(tiny("tiny-sd"))
    prompts, seeds = ["a cat", "a dog", "a cat"], [3, 4, 5]
    batched = ranked.generate_batch(comps, prompts, seeds, steps=2, cfg=3.0, width=RES, height=RES)
    single = [ranked.generate_batch(comps, [p], [s], steps=2, cfg=3.0, width=RES, height=RES)[0]
              for p, s in zip(prompts, seeds)]
    for a, b in zip(batched, single):
        assert a.size == (RES, RES)
        assert np.abs(np.asarray(a, dtype=np.int16) - np.asarray(b, dtype=np.int16)).max() <= 2
    assert np.abs(np.asarray(batched[0], np.int16) - np.asarray(batched[2], np.int16)).max() > 2  # seeds differ
    with pytest.raises(ValueError, match="seeds"):
        ranked.generate_batch(comps, prompts, seeds[:2])


def test_resume_continues_with_next_round(tiny, tmp_path):
    key = tiny("tiny-sd")
    lora_cfg, train_cfg = configs(steps=2)
    prompts = ["a dog"]
    run = tmp_path / "run"
    cfg = ranked.RankedConfig(k=2, rounds=2, top=1, gen_steps=2, eval_final=False, seed=1)
    # round 0 completes; the scorer is interrupted in round 1 (its 2nd call: one call per pass)
    s1 = CountingScorer(["brightness"], brightness, stop_at=2)
    s2 = CountingScorer(["red_dist"], redness)
    from rewardloop.bridge import Interrupted
    with pytest.raises(Interrupted):
        ranked.train_ranked(key, prompts, [s1, s2], run, cfg, lora_cfg, train_cfg)
    state = json.loads((run / "state.json").read_text())
    assert [(r["round"], r["phase"]) for r in state["rounds"]] == [(0, "done")]
    before = {p: p.read_bytes() for p in (run / "round_000").rglob("*") if p.is_file() and "train" not in p.parts}
    lora0 = (run / "round_000" / "lora.safetensors").read_bytes()
    # resume: only round 1 is generated and scored
    s1b, s2b = CountingScorer(["brightness"], brightness), CountingScorer(["red_dist"], redness)
    res = ranked.train_ranked(key, prompts, [s1b, s2b], run, cfg, lora_cfg, train_cfg)
    assert s1b.calls == 1 and s1b.images == 2 and s2b.calls == 1
    assert {p: p.read_bytes() for p in before} == before  # round 0 untouched
    assert [r["round"] for r in res.rounds] == [0, 1]
    rows1 = _check_round_dir(run, "round_001", 2, 1, 1, [1.0, 1.0])
    assert [int(r["seed"]) for r in rows1] == [1 + ranked.SEED_STRIDE, 2 + ranked.SEED_STRIDE]
    assert (run / "round_001" / "lora.safetensors").read_bytes() != lora0  # trained on from round 0's LoRA
    table = read_csv(run / "rounds.csv")
    assert [int(t["round"]) for t in table] == [0, 1]
    # the resumed run ends where an uninterrupted one does
    from safetensors.torch import load_file
    straight = tmp_path / "straight"
    ranked.train_ranked(key, prompts, [FunctionScorer(["brightness"], brightness),
                                       FunctionScorer(["red_dist"], redness)], straight, cfg, lora_cfg, train_cfg)
    assert (straight / "round_001" / "scores.csv").read_text() == (run / "round_001" / "scores.csv").read_text()
    a, b = load_file(str(run / "round_001" / "adapter.safetensors")), load_file(str(straight / "round_001" / "adapter.safetensors"))
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    # the number of rounds may grow on resume: only the new round is left to do (2 images + training steps)
    cfg3 = ranked.RankedConfig(k=2, rounds=3, top=1, gen_steps=2, eval_final=False, seed=1)
    t3 = ranked.RankedTrainer(key, prompts, [s1b, s2b], run, cfg3, lora_cfg, train_cfg)
    assert t3.units_total() == 2 * 2 + train_cfg.steps and len(t3.done_rounds()) == 2


def test_resume_after_selection_trains_without_regenerating(tiny, tmp_path, monkeypatch):
    from rewardloop.trainers import lora as core
    key = tiny("tiny-sd")
    lora_cfg, train_cfg = configs(steps=2)
    run = tmp_path / "run"
    cfg = ranked.RankedConfig(k=2, rounds=1, top=1, gen_steps=2, eval_final=False)
    real_train = core.train_lora

    def stopped(*a, **k):
        from rewardloop.bridge import Interrupted
        raise Interrupted("stopped while training")

    monkeypatch.setattr(core, "train_lora", stopped)
    s = CountingScorer(["brightness"], brightness)
    with pytest.raises(Exception):
        ranked.train_ranked(key, ["a cat"], [s], run, cfg, lora_cfg, train_cfg)
    state = json.loads((run / "state.json").read_text())
    assert state["rounds"][0]["phase"] == "selected"
    monkeypatch.setattr(core, "train_lora", real_train)
    s2 = CountingScorer(["brightness"], brightness)
    with torch.inference_mode():  # the library leaves inference mode itself (as ComfyUI would call it)
        res = ranked.train_ranked(key, ["a cat"], [s2], run, cfg, lora_cfg, train_cfg)
    assert s2.calls == 0 and res.rounds[0]["phase"] == "done"
    assert (run / "round_000" / "lora.safetensors").is_file()


class StopAt:
    """A progress bar that interrupts on its ``n``-th update (like ComfyUI's stop button)."""

    def __init__(self, n):
        self.n, self.calls = n, 0

    def update(self, k=1, postfix=None, preview=None):
        self.calls += 1
        if self.calls == self.n:
            from rewardloop.bridge import Interrupted
            raise Interrupted("stop button")

    def close(self):
        pass


def test_interrupted_training_resumes_to_the_same_lora(tiny, tmp_path):
    from safetensors.torch import load_file
    key = tiny("tiny-sd")
    lora_cfg, train_cfg = configs(steps=3)
    cfg = ranked.RankedConfig(k=2, rounds=1, top=1, gen_steps=2, eval_final=False)
    scorers = [FunctionScorer(["brightness"], brightness)]
    run = tmp_path / "stopped"
    # updates: 1 = generation, 2 = scoring, 3.. = training steps: stop after training step 2 of 3
    trainer = ranked.RankedTrainer(key, ["a cat"], scorers, run, cfg, lora_cfg, train_cfg, progress=StopAt(4))
    from rewardloop.bridge import Interrupted
    with pytest.raises(Interrupted):
        trainer.run()
    assert json.loads((run / "state.json").read_text())["rounds"][0]["phase"] == "selected"
    assert list((run / "round_000" / "train" / "checkpoints").iterdir())  # the core saved where it stopped
    ranked.train_ranked(key, ["a cat"], scorers, run, cfg, lora_cfg, train_cfg)
    ranked.train_ranked(key, ["a cat"], scorers, tmp_path / "straight", cfg, lora_cfg, train_cfg)
    a = load_file(str(run / "round_000" / "adapter.safetensors"))
    b = load_file(str(tmp_path / "straight" / "round_000" / "adapter.safetensors"))
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    table = read_csv(run / "rounds.csv")
    assert float(table[0]["train_loss"]) > 0


# ---------------------------------------------------------------- node and CLI
def test_node_runs_under_inference_mode(tiny, models_root, tmp_path, monkeypatch):
    import rewardloop
    monkeypatch.setenv("REWARDLOOP_OUTPUT", str(tmp_path / "out"))
    key = tiny("tiny-sd")
    node = rewardloop.NODE_CLASS_MAPPINGS["RewardLoopRankedFinetune"]()
    kw = dict(checkpoint=key, prompts="# comment\na cat\na dog\n", scorer=FunctionScorer(["brightness"], brightness),
              k=2, rounds=1, top_k=1, weight=1.0, lora_rank=2, learning_rate=1e-3, steps_per_round=1,
              resolution=RES, sample_steps=1, cfg=5.0, seed=0, output_name="node_test", overwrite=False,
              scorer_2=FunctionScorer(["red_dist"], redness), weight_2=0.5)
    with torch.inference_mode():
        out = node.train(**kw)
    name, plot, grid = out["result"]
    assert name == "node_test.safetensors"
    assert (models_root / "loras" / name).is_file()
    assert plot.ndim == 4 and plot.shape[-1] == 3 and plot.dtype == torch.float32
    assert grid.shape == (1, RES, 2 * RES, 3)
    assert "round 0" in out["ui"]["text"][0]
    assert not torch.is_inference_mode_enabled()
    # queueing the same node again resumes the finished run (no new work, same result)
    with torch.inference_mode():
        out2 = node.train(**kw)
    assert out2["result"][0] == name
    with pytest.raises(ValueError, match="No prompts"):
        node.train(**{**kw, "prompts": "# nothing\n"})
    with pytest.raises(ValueError, match="leave"):
        node.train(**{**kw, "output_name": "../escape"})


def test_cli_train_ranked(tiny, models_root, tmp_path, monkeypatch, capsys):
    from rewardloop.cli import main
    from rewardloop.rewards import scoring
    monkeypatch.setenv("REWARDLOOP_OUTPUT", str(tmp_path / "out"))
    import sys
    import types
    made = []
    fake = types.ModuleType("rl_fake_ranked_rewards")

    def factory(name, fn, score_name):
        def make(models=None, **options):
            made.append((name, options.get("device")))
            return FunctionScorer([score_name], fn)
        return make

    fake.make_bright = factory("bright", brightness, "brightness")
    fake.make_red = factory("red", redness, "red_dist")
    monkeypatch.setitem(sys.modules, "rl_fake_ranked_rewards", fake)
    monkeypatch.setattr(scoring, "SCORER_FACTORIES", {"bright": "rl_fake_ranked_rewards:make_bright",
                                                      "red": "rl_fake_ranked_rewards:make_red"})
    coco = tmp_path / "captions.json"
    coco.write_text(json.dumps({"annotations": [{"caption": "a cat"}, {"caption": "a cat"}, {"caption": "a dog"}]}))
    key = tiny("tiny-sd")
    argv = ["train-ranked", "--base", key, "--prompts", str(coco), "--k", "2", "--rounds", "1", "--rewards",
            "bright,red", "--weights", "1,2", "--out", "cli_run", "--steps", "1", "--resolution", str(RES),
            "--gen-steps", "1", "--no-eval", "--device", "cpu"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "mean_brightness" in out and "cli_run.safetensors" in out
    assert made == [("bright", "cpu"), ("red", "cpu")]
    assert (models_root / "loras" / "cli_run.safetensors").is_file()
    rows = read_csv(tmp_path / "out" / "rewardloop_ranked" / "cli_run" / "round_000" / "scores.csv")
    assert sorted({r["prompt"] for r in rows}) == ["a cat", "a dog"]
    # an existing run without --resume is refused with a clear message; --resume finishes at once
    assert main(argv) == 1
    assert "--resume" in capsys.readouterr().err
    assert main(argv + ["--resume"]) == 0
    # bad prompt file and bad weights give one-line errors
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    assert main(argv[:4] + [str(bad)] + argv[5:]) == 1
    assert "not valid JSON" in capsys.readouterr().err
    assert main(argv[:12] + ["1,x"] + argv[13:] + ["--out", "other"]) == 1
    assert "--weights" in capsys.readouterr().err


def test_ranked_workflow_is_valid():
    """workflows/api/ranked_finetune.api.json names existing nodes with valid inputs and links."""
    from rewardloop.workflows import graph
    path = graph.API_DIR / "ranked_finetune.api.json"
    assert any(n["class_type"] == "RewardLoopRankedFinetune" for n in json.loads(path.read_text()).values())
    assert graph.validate_file(path, graph.all_specs()) == []
