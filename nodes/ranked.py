"""Reward-ranked LoRA fine-tuning node (FineRewards' assemble reward-ranked learning): thin adapter over
``trainers/ranked.py``."""
from __future__ import annotations

import torch

from ._common import CATEGORY, SCORER

MODES = ["rank_sum", "zscore", "raw"]


def checkpoint_choices() -> list[str]:
    """Catalogue keys, ComfyUI's checkpoints (sub-folders included), diffusers folders, then the tiny model."""
    from ..bridge import list_folder
    from ._common import model_choices
    try:
        extra = []
        try:
            import folder_paths  # type: ignore
            extra = list(folder_paths.get_filename_list("checkpoints"))
        except Exception:
            pass
        choices = model_choices("checkpoints", ("sd", "sdxl"), extra=extra + list_folder("diffusers"))
        return list(dict.fromkeys(choices)) or ["tiny-sd"]
    except Exception:  # never stop the pack from loading
        return ["tiny-sd"]


class RewardLoopRankedFinetune:
    DESCRIPTION = ("Reward-ranked LoRA fine-tuning (FineRewards, assemble reward-ranked learning): each round "
                   "generates K images per prompt with the current LoRA, scores them with the connected rewards, "
                   "keeps the best per prompt by rank-sum (Borda) over the rewards and fine-tunes the LoRA on them. "
                   "Every round is saved in output/rewardloop_ranked/<name>; an interrupted run resumes where it "
                   "stopped. The LoRA lands in models/loras/<name>.safetensors.")
    CATEGORY = f"{CATEGORY}/training"
    FUNCTION = "train"
    OUTPUT_NODE = True
    RETURN_TYPES = ("STRING", "IMAGE", "IMAGE")
    RETURN_NAMES = ("lora_name", "rewards_plot", "samples")
    OUTPUT_TOOLTIPS = (
        "File name of the trained LoRA in models/loras (feed it to LoraLoader).",
        "Mean reward per round, one panel per reward: all candidates (solid), kept ones (dashed), final LoRA (diamond).",
        "The kept (best) image of each prompt from the last pass (the final LoRA's evaluation pass when run).",
    )

    @classmethod
    def INPUT_TYPES(cls):
        ckpts = checkpoint_choices()
        w = {"default": 1.0, "min": 0.0, "max": 100.0, "step": 0.05}
        return {
            "required": {
                "checkpoint": (ckpts, {"tooltip": "Base model to fine-tune (models/checkpoints single file or "
                                                  "models/diffusers folder; SD 1.x/2.x or SDXL)."}),
                "prompts": ("STRING", {"multiline": True, "default": "a photo of a cat sitting on a table",
                                       "tooltip": "Training prompts, one per line (blank lines and lines starting "
                                                  "with # are skipped, duplicates removed)."}),
                "scorer": (SCORER, {"tooltip": "A reward (from a RewardLoop reward loader) that ranks the candidates."}),
                "k": ("INT", {"default": 10, "min": 1, "max": 64, "tooltip": "Candidates generated per prompt "
                                                                            "per round (paper: 10)."}),
                "rounds": ("INT", {"default": 2, "min": 1, "max": 50, "tooltip": "Generate/score/train rounds "
                                                                               "(paper: 2). May grow on resume."}),
                "top_k": ("INT", {"default": 1, "min": 1, "max": 64, "tooltip": "Best candidates kept per prompt per "
                                                                              "round (paper: 1); at most K."}),
                "weight": ("FLOAT", {**w, "tooltip": "Weight of the first reward in the rank sum (a reward with "
                                                     "several scores shares it evenly)."}),
                "lora_rank": ("INT", {"default": 4, "min": 1, "max": 256, "tooltip": "LoRA rank (paper: 4)."}),
                "learning_rate": ("FLOAT", {"default": 1e-4, "min": 1e-7, "max": 1e-2, "step": 1e-6, "round": False,
                                            "tooltip": "AdamW learning rate of the LoRA."}),
                "steps_per_round": ("INT", {"default": 100, "min": 1, "max": 100000,
                                            "tooltip": "Training steps on the kept images in each round."}),
                "resolution": ("INT", {"default": 512, "min": 32, "max": 2048, "step": 8,
                                       "tooltip": "Generation and training resolution in pixels."}),
                "sample_steps": ("INT", {"default": 20, "min": 1, "max": 200, "tooltip": "Sampling steps per candidate."}),
                "cfg": ("FLOAT", {"default": 7.5, "min": 0.0, "max": 30.0, "step": 0.1,
                                  "tooltip": "Classifier-free guidance scale for the candidates."}),
                "seed": ("INT", {"default": 0, "min": 0, "max": 2 ** 31 - 1,
                                 "tooltip": "Seed of the candidates (different every round) and of training."}),
                "output_name": ("STRING", {"default": "ranked_lora", "tooltip": "Name of the LoRA file and of its "
                                                                                "run folder (no '..' or leading '/')."}),
                "overwrite": ("BOOLEAN", {"default": False, "tooltip": "Replace an existing LoRA of the same name and "
                                                                        "start its run afresh (off: a run of the same "
                                                                        "name is resumed)."}),
            },
            "optional": {
                "scorer_2": (SCORER, {"tooltip": "A second reward for the assemble ranking."}),
                "weight_2": ("FLOAT", {**w, "tooltip": "Weight of the second reward."}),
                "scorer_3": (SCORER, {"tooltip": "A third reward for the assemble ranking."}),
                "weight_3": ("FLOAT", {**w, "tooltip": "Weight of the third reward."}),
                "scorer_4": (SCORER, {"tooltip": "A fourth reward for the assemble ranking."}),
                "weight_4": ("FLOAT", {**w, "tooltip": "Weight of the fourth reward."}),
                "ranking": (MODES, {"default": "rank_sum", "tooltip": "rank_sum: add per-reward ranks (paper, Borda; "
                                                                       "no normalisation needed); zscore / raw: weighted "
                                                                       "sums of z-scored / raw rewards."}),
            },
            "hidden": {"unique_id": "UNIQUE_ID"},
        }

    def train(self, checkpoint, prompts, scorer, k, rounds, top_k, weight, lora_rank, learning_rate, steps_per_round,
              resolution, sample_steps, cfg, seed, output_name, overwrite, scorer_2=None, weight_2=1.0, scorer_3=None,
              weight_3=1.0, scorer_4=None, weight_4=1.0, ranking="rank_sum", unique_id=None):
        from .. import bridge
        from ..fileio import safe_output_path
        from ..rewards.images import pil_to_image
        from ..trainers import run_folder
        from ..trainers.lora import LoraConfig, TrainConfig, check_base
        from ..trainers.prompts import parse_prompt_text
        from ..trainers.ranked import RUNS_SUBDIR, RankedConfig, RankedTrainer, image_grid

        prompt_list = parse_prompt_text(prompts or "")
        if not prompt_list:
            raise ValueError("No prompts: type at least one prompt (one per line).")
        pairs = [(s, w) for s, w in ((scorer, weight), (scorer_2, weight_2), (scorer_3, weight_3),
                                     (scorer_4, weight_4)) if s is not None]
        lora_path = safe_output_path(bridge.loras_dir(), output_name, ".safetensors", overwrite=True)
        run_dir = run_folder.run_dir_for(RUNS_SUBDIR, output_name)
        rcfg = RankedConfig(k=k, rounds=rounds, top=min(top_k, k), weights=[w for _, w in pairs], mode=ranking,
                            gen_steps=sample_steps, cfg=cfg, seed=seed)
        tcfg = TrainConfig(steps=steps_per_round, lr=learning_rate, resolution=resolution, seed=seed)
        check_base(checkpoint)   # a missing model: one line before anything runs
        with torch.inference_mode(False), torch.enable_grad():
            trainer = RankedTrainer(checkpoint, prompt_list, [s for s, _ in pairs], run_dir, rcfg,
                                    LoraConfig(rank=lora_rank), tcfg, resume=True, overwrite=bool(overwrite))
            with bridge.Progress(trainer.units_total(), desc="ranked fine-tune", node_id=unique_id) as progress:
                trainer.progress = progress
                result = trainer.run(lora_path, overwrite=overwrite)
        from PIL import Image
        with Image.open(result.plot_path) as im:
            plot = pil_to_image(im.convert("RGB"))
        grid = pil_to_image(image_grid(result.kept_images)) if result.kept_images else torch.zeros(1, 64, 64, 3)
        lora_name = result.lora_path.relative_to(bridge.loras_dir().resolve()).as_posix() \
            if result.lora_path.resolve().is_relative_to(bridge.loras_dir().resolve()) else str(result.lora_path)
        lines = [f"LoRA: {lora_name}", f"run: {result.run_dir}"] + [
            f"round {r['round']}: " + ", ".join(f"{n} {v:.4f}" for n, v in r["means"].items()) for r in result.rounds]
        if result.eval:
            lines.append("final LoRA: " + ", ".join(f"{n} {v:.4f}" for n, v in result.eval["means"].items()))
        return {"ui": {"text": ["\n".join(lines)]}, "result": (lora_name, plot, grid)}


NODE_CLASS_MAPPINGS = {"RewardLoopRankedFinetune": RewardLoopRankedFinetune}
NODE_DISPLAY_NAME_MAPPINGS = {"RewardLoopRankedFinetune": "Reward-Ranked LoRA Fine-Tune (RewardLoop)"}
