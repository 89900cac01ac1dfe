"""Personalize (DPG): reference photos → a LoRA in models/loras, trained with the DPG objective."""
from __future__ import annotations

import logging

import numpy as np
import torch
from PIL import Image

from .. import bridge
from ._common import CATEGORY, SCORER

log = logging.getLogger("rewardloop")

PRESET_CHOICES = ["auto", "8GB", "12GB", "24GB", "cpu", "paper"]
CROP_CHOICES = ["center crop", "resize (squash)"]


def checkpoint_choices() -> list[str]:
    """ComfyUI's checkpoints, diffusers folders, catalogue bases and the tiny test models."""
    from ..weights.catalogue import CATALOGUE
    names = bridge.list_folder("checkpoints") + [n for n in bridge.list_folder("diffusers")]
    keys = [s.key for s in CATALOGUE if s.kind in ("sd", "sdxl") and s.source != "tiny"]
    known_files = {s.name for s in CATALOGUE if s.kind in ("sd", "sdxl")}
    tiny = [s.key for s in CATALOGUE if s.kind in ("sd", "sdxl") and s.source == "tiny"]
    out = []
    for n in names + keys + tiny:
        if n not in out and not (n in known_files and n not in names):
            out.append(n)
    return out


def dino_choices() -> list[str]:
    from ._common import model_choices
    return model_choices("dino", ("dino",))


def _free_comfy_vram() -> None:
    """Ask ComfyUI to unload its models first: training needs the whole card."""
    try:
        import comfy.model_management as mm  # type: ignore
        mm.unload_all_models()
        mm.soft_empty_cache()
    except Exception:
        bridge.soft_empty_cache()


def _plot_tensor(path) -> torch.Tensor:
    with Image.open(path) as im:
        arr = np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(arr)[None]


def _reward_summary(log_csv) -> str:
    """'; rewards (last scored): caption 0.123, dino 0.456; critic loss 0.01' from the run's log, '' without rewards."""
    from ..trainers.checkpoints import read_log
    rows = read_log(log_csv)
    if not rows or "critic_s" not in rows[-1]:
        return ""
    last = rows[-1]
    skip = ("reward_s", "reward_q", "reward_critic_loss")
    vals = [f"{k[len('reward_'):]} {float(v):.4g}" for k, v in last.items()
            if k.startswith("reward_") and k not in skip and v not in ("", None)]
    return f"; rewards (last scored): {', '.join(vals)}; critic loss {float(last['reward_critic_loss']):.4g}"


def reward_config(scorers, dino_weight: float, every: int, target: str):
    """Connected scorer sockets (+ DINO through the critic) → a RewardCriticConfig, or None when none is on."""
    from ..trainers.reward_critic import DINO, RewardCriticConfig, RewardSpec
    specs, seen = [], set()
    for scorer, weight in scorers:
        if scorer is None:
            continue
        names = list(getattr(scorer, "names", []) or ["reward"])
        name = names[0] if len(names) == 1 else f"reward{len(specs) + 1}"
        while name in seen:
            name += "_2"
        seen.add(name)
        specs.append(RewardSpec(name, float(weight), scorer=scorer))
    if dino_weight and float(dino_weight) > 0:
        specs.append(RewardSpec(DINO, float(dino_weight)))
    if not specs:
        return None
    cfg = RewardCriticConfig(rewards=specs, every=int(every), target=str(target))
    cfg.validate()
    return cfg


def reward_inputs() -> dict:
    """The reward-critic widgets shared by both DPG nodes (optional inputs, in this order)."""
    return {
        "reward": (SCORER, {"tooltip": "A reward (Reward Scorer node) steering the LoRA through a learned "
                            "critic Q(x̂0, t): scored on decoded x̂0 every critic_update_every steps; any "
                            "reward, differentiable or not. Off when not connected."}),
        "reward_weight": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 100.0, "step": 0.01,
                                    "tooltip": "λ of that reward (z-scored over the critic's reward cache; "
                                               "the paper uses 0.1 or 1)."}),
        "reward_2": (SCORER, {"tooltip": "A second reward, weighted with it (FineRewards' assemble idea)."}),
        "reward_2_weight": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 100.0, "step": 0.01,
                                      "tooltip": "λ of the second reward."}),
        "dino_reward_weight": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 100.0, "step": 0.01,
                                         "tooltip": "λ of DINO similarity to the references *through the "
                                                    "critic* (0 = off; dino_weight is the direct term)."}),
        "critic_update_every": ("INT", {"default": 1, "min": 1, "max": 1000,
                                        "tooltip": "Critic update interval: score x̂0 and update the critic "
                                                   "every K steps (scoring cost is logged as reward_s)."}),
        "critic_target": (["regression", "td"], {"default": "regression", "tooltip": "regression: the "
                          "critic predicts the reward of the decoded x̂0; td: the paper's cumulative "
                          "target r + γ·Q(next state) along the denoising chain."}),
    }


def weight_inputs() -> dict:
    """The term-weight widgets shared by both DPG nodes (optional inputs, in this order)."""
    from ..trainers.dpg_objective import GAMMA
    return {
        "dreambooth_weight": ("FLOAT", {"default": -1.0, "min": -1.0, "max": 100.0, "step": 0.01,
                                        "tooltip": "Weight of the instance noise MSE (-1 = the mode's)."}),
        "prior_weight": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 100.0, "step": 0.01,
                                   "tooltip": "Weight of the prior-preservation loss."}),
        "look_forward_weight": ("FLOAT", {"default": -1.0, "min": -1.0, "max": 100.0, "step": 0.01,
                                          "tooltip": "Weight of the γ^t·mean((x̂0−x0)²) term (-1 = mode's)."}),
        "critic_weight": ("FLOAT", {"default": -1.0, "min": -1.0, "max": 100.0, "step": 0.01,
                                    "tooltip": "Weight of the critic term γ^t·Q(E) (-1 = the mode's)."}),
        "dino_weight": ("FLOAT", {"default": -1.0, "min": -1.0, "max": 100.0, "step": 0.01,
                                  "tooltip": "λ of the DINO reward term (-1 = the mode's; paper: 0.1 or 1)."}),
        "gamma": ("FLOAT", {"default": GAMMA, "min": 0.9, "max": 1.0, "step": 0.0001, "round": False,
                            "tooltip": "Discount γ in γ^t, t the sampled noise level on a 0…999 timestep scale (paper "
                                       "0.9986; its ablation prefers 1.0)."}),
    }


def weights_from_inputs(loss_mode, dreambooth_weight, prior_weight, look_forward_weight, critic_weight, dino_weight,
                        gamma):
    """Widget values → DPGWeights: the mode's preset, each weight ≥ 0 overriding it (-1 keeps the mode's)."""
    from ..trainers.dpg_objective import GAMMA, DPGWeights
    ov = {"dreambooth": dreambooth_weight, "look_forward": look_forward_weight, "critic": critic_weight,
          "dino": dino_weight}
    w = DPGWeights.for_mode(loss_mode, **{k: (None if v is None or v < 0 else float(v)) for k, v in ov.items()},
                            prior=float(prior_weight), gamma=float(gamma if gamma is not None else GAMMA))
    w.validate()
    return w


class RewardLoopPersonalizeDPG:
    DESCRIPTION = ("Trains a LoRA of your subject from a few reference photos with the DPG objective (DreamBooth, "
                   "look-forward x̂0 loss, the paper's critic, or a DINO reward) on your own checkpoint, and saves it "
                   "to models/loras. Interrupt saves a resumable checkpoint; run again with the same output name "
                   "to resume.")
    CATEGORY = f"{CATEGORY}/train"
    FUNCTION = "train"
    OUTPUT_NODE = True
    RETURN_TYPES = ("STRING", "IMAGE", "IMAGE")
    RETURN_NAMES = ("lora_name", "samples", "loss_plot")
    OUTPUT_TOOLTIPS = ("File name of the LoRA inside models/loras (feed it to LoraLoader); with the paper preset, "
                       "of the fine-tuned checkpoint inside models/checkpoints (Load Checkpoint).",
                       "Sample images generated with the trained LoRA (instance prompt, then a variation).",
                       "Training loss curve (per step, with a smoothed line).")

    @classmethod
    def INPUT_TYPES(cls):
        from ..trainers.dpg import LOSS_MODES
        ckpts = checkpoint_choices()
        return {
            "required": {
                "checkpoint": (ckpts, {"tooltip": "Base model: a file in models/checkpoints (SD1.x/2.x/SDXL) or a "
                                                  "diffusers folder in models/diffusers."}),
                "references": ("IMAGE", {"tooltip": "Photos of the subject (3-8 is typical). Any size: they are "
                                                    "centre-cropped (or squashed) to the resolution."}),
                "trigger": ("STRING", {"default": "sks", "tooltip": "A rare one-word token that will stand for "
                                                                    "your subject in prompts."}),
                "class_prompt": ("STRING", {"default": "a photo of a dog", "multiline": False,
                                            "tooltip": "What the subject is, e.g. 'a photo of a backpack'. Used for "
                                                       "prior-preservation images from the base model."}),
                "steps": ("INT", {"default": 500, "min": 1, "max": 100000, "tooltip": "Optimizer steps "
                                                                                      "(500-1000 typical)."}),
                "lr": ("FLOAT", {"default": 1e-4, "min": 1e-7, "max": 1e-1, "step": 1e-6, "round": False,
                                 "tooltip": "Learning rate of the LoRA weights (1e-4 typical for LoRA)."}),
                "rank": ("INT", {"default": 0, "min": 0, "max": 256, "tooltip": "LoRA rank (0 = the preset's: "
                                                                                "4 / 8 / 16 for 8 / 12 / 24 GB)."}),
                "loss_mode": (list(LOSS_MODES), {"default": "look_forward",
                                                 "tooltip": "dreambooth: noise MSE + prior (baseline); look_forward: "
                                                            "γ^t-weighted x̂0 error (the released DPG code); critic: "
                                                            "the paper's Q-network on the x̂0 error; dino: DreamBooth "
                                                            "+ λ·DINO similarity reward; custom: only the weights "
                                                            "below."}),
                "resolution": ("INT", {"default": 512, "min": 64, "max": 2048, "step": 64,
                                       "tooltip": "Training resolution (512 for SD1.x, 768-1024 for SDXL)."}),
                "seed": ("INT", {"default": 0, "min": 0, "max": 2 ** 31 - 1, "tooltip": "Seed for noise, "
                                                                                         "timesteps and samples."}),
                "output_name": ("STRING", {"default": "dpg/my_subject", "tooltip": "LoRA file name inside "
                                           "models/loras (sub-folders allowed, no '..'). Also names the run "
                                           "folder used to resume."}),
                "overwrite": ("BOOLEAN", {"default": False, "tooltip": "Replace an existing LoRA of that name and "
                                            "start its run afresh (off: an interrupted run of that name resumes)."}),
                "preset": (PRESET_CHOICES, {"default": "auto", "tooltip": "VRAM preset (auto: from the card). "
                                            "8GB: fp16, gradient checkpointing, rank 4; 12GB: bf16, checkpointing, "
                                            "rank 8; 24GB: bf16, rank 16, text-encoder LoRA, batch 2. paper: the "
                                            "paper's recipe, full fine-tuning of UNet + text encoder in fp32 (set "
                                            "lr 1e-6, steps 1000; 24 GB+ cards), saved to models/checkpoints."}),
            },
            "optional": {
                "instance_prompt": ("STRING", {"default": "", "tooltip": "Prompt for the references; must contain "
                                               "the trigger. Empty: the class prompt with the trigger before the "
                                               "noun ('a photo of sks dog')."}),
                "crop": (CROP_CHOICES, {"default": "center crop", "tooltip": "How references are fitted to the "
                                        "square training resolution."}),
                "num_class_images": ("INT", {"default": 8, "min": 0, "max": 1000, "tooltip": "Prior-preservation "
                                             "images generated once by the base model (0 = no prior loss)."}),
                **weight_inputs(),
                "dino_model": (dino_choices(), {"default": "dino-vits16", "tooltip": "DINO ViT for the dino "
                                                "reward (models/dino)."}),
                "resume": ("BOOLEAN", {"default": True, "tooltip": "Continue from the last checkpoint of this "
                                       "output name's run folder, if any."}),
                "sample_steps": ("INT", {"default": 20, "min": 1, "max": 200, "tooltip": "Sampler steps for the "
                                         "sample images and class images."}),
                **reward_inputs(),
            },
            "hidden": {"unique_id": "UNIQUE_ID"},
        }

    def train(self, checkpoint, references, trigger, class_prompt, steps, lr, rank, loss_mode, resolution, seed,
              output_name, overwrite, preset, instance_prompt="", crop="center crop", num_class_images=8,
              dreambooth_weight=-1.0, prior_weight=1.0, look_forward_weight=-1.0, critic_weight=-1.0,
              dino_weight=-1.0, gamma=None, dino_model="dino-vits16", resume=True, sample_steps=20, reward=None,
              reward_weight=1.0, reward_2=None, reward_2_weight=1.0, dino_reward_weight=0.0, critic_update_every=1,
              critic_target="regression", unique_id=None):
        from ..rewards.images import image_to_pil, pil_to_image
        from ..trainers.dpg import personalize
        if references is None or not isinstance(references, torch.Tensor) or references.shape[0] == 0:
            raise ValueError("No reference images were given: connect a batch of photos of the subject.")
        refs = image_to_pil(references)      # refuses NaN/inf with the batch item named, like every image node
        weights = weights_from_inputs(loss_mode, dreambooth_weight, prior_weight, look_forward_weight, critic_weight,
                                      dino_weight, gamma)
        critic = reward_config([(reward, reward_weight), (reward_2, reward_2_weight)], dino_reward_weight,
                               critic_update_every, critic_target)
        _free_comfy_vram()
        bar = bridge.Progress(int(steps), desc="DPG", node_id=unique_id)
        try:
            res = personalize(checkpoint, refs, trigger, class_prompt, instance_prompt=instance_prompt or None,
                              out_name=output_name, overwrite=bool(overwrite), mode=loss_mode, weights=weights,
                              steps=int(steps), lr=float(lr), rank=int(rank) or None, resolution=int(resolution),
                              seed=int(seed), preset=preset, num_class_images=int(num_class_images),
                              resume=bool(resume), progress=bar, dino_model=dino_model,
                              center_crop=crop == "center crop", sample_steps=int(sample_steps), reward=critic)
        finally:
            bar.close()
        samples = pil_to_image(res.samples)
        plot = _plot_tensor(res.loss_plot) if res.loss_plot else torch.zeros(1, 64, 64, 3)
        ui = {"text": [f"{res.lora_name} ({res.train.steps_done} steps)" + _reward_summary(res.train.log_csv)]}
        try:  # show the plot in the node (ComfyUI temp folder)
            import shutil
            tmp = bridge.temp_dir()
            tmp.mkdir(parents=True, exist_ok=True)
            name = f"rewardloop_dpg_loss_{abs(hash(str(res.run_dir))) % 10 ** 8}.png"
            shutil.copyfile(res.loss_plot, tmp / name)
            ui["images"] = [{"filename": name, "subfolder": "", "type": "temp"}]
        except Exception as e:  # pragma: no cover - display only
            log.debug("could not show the loss plot: %s", e)
        return {"ui": ui, "result": (res.lora_name, samples, plot)}


NODE_CLASS_MAPPINGS = {"RewardLoopPersonalizeDPG": RewardLoopPersonalizeDPG}
NODE_DISPLAY_NAME_MAPPINGS = {"RewardLoopPersonalizeDPG": "Personalize (DPG) (RewardLoop)"}
