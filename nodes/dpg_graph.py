"""Personalize in Graph (DPG): DPG LoRA training on the graph's own MODEL (+CLIP), any architecture ComfyUI loads."""
from __future__ import annotations

import logging

import torch

from .. import bridge
from ._common import CATEGORY
from .dpg import (PRESET_CHOICES, _plot_tensor, _reward_summary, dino_choices, reward_config, reward_inputs,
                  weight_inputs, weights_from_inputs)

log = logging.getLogger("rewardloop")

SWITCH = ["preset", "on", "off"]
DTYPE_CHOICES = ["preset", "fp32", "bf16", "fp16"]


def _switch(v: str):
    return None if v in (None, "", "preset") else v == "on"


class RewardLoopPersonalizeInGraphDPG:
    DESCRIPTION = ("Trains a subject LoRA with the DPG objective on the MODEL in your graph (SD1.x, SDXL, SD3.5, "
                   "Flux … whatever ComfyUI loaded, with the LoRAs and merges already applied), using ComfyUI's own "
                   "noise schedule and x̂0 (model_sampling). Saves the LoRA to models/loras in ComfyUI's LoRA format "
                   "and returns the MODEL (and CLIP) with it applied. The input MODEL is never modified. Interrupt "
                   "keeps a checkpoint; run again with the same output name to resume.")
    CATEGORY = f"{CATEGORY}/train"
    FUNCTION = "train"
    OUTPUT_NODE = True
    RETURN_TYPES = ("MODEL", "CLIP", "STRING", "IMAGE", "IMAGE")
    RETURN_NAMES = ("model", "clip", "lora_name", "samples", "loss_plot")
    OUTPUT_TOOLTIPS = ("The input MODEL with the trained LoRA applied (as core LoraLoader applies the file).",
                       "The input CLIP, with the text-encoder LoRA applied when it was trained.",
                       "File name of the LoRA inside models/loras (for LoraLoader in later workflows).",
                       "Images sampled with the trained LoRA (instance prompt, then a variation).",
                       "Training loss curve.")

    @classmethod
    def INPUT_TYPES(cls):
        from ..trainers.comfy_graph import TARGETS
        from ..trainers.dpg_objective import LOSS_MODES
        return {
            "required": {
                "model": ("MODEL", {"tooltip": "The diffusion model to personalize (any architecture ComfyUI loads)."}),
                "clip": ("CLIP", {"tooltip": "Encodes the prompts; gets a LoRA too when train_text_encoder is on."}),
                "vae": ("VAE", {"tooltip": "Encodes the reference (and class) images; decodes the samples."}),
                "references": ("IMAGE", {"tooltip": "Photos of the subject (3-8 is typical); centre-cropped to the "
                                                    "resolution."}),
                "trigger": ("STRING", {"default": "sks", "tooltip": "A rare one-word token for your subject."}),
                "class_prompt": ("STRING", {"default": "a photo of a dog", "tooltip": "What the subject is; also "
                                            "prompts the prior-preservation images."}),
                "steps": ("INT", {"default": 500, "min": 1, "max": 100000, "tooltip": "Optimizer steps."}),
                "lr": ("FLOAT", {"default": 1e-4, "min": 1e-7, "max": 1e-1, "step": 1e-6, "round": False,
                                 "tooltip": "Learning rate of the LoRA weights."}),
                "rank": ("INT", {"default": 0, "min": 0, "max": 256, "tooltip": "LoRA rank (0 = the preset's)."}),
                "loss_mode": (list(LOSS_MODES), {"default": "look_forward", "tooltip": "dreambooth: prediction MSE + "
                              "prior; look_forward: γ^t-weighted x̂0 error (released DPG code); critic: the paper's "
                              "Q-network; dino: DreamBooth + λ·DINO reward; custom: the weights below only."}),
                "resolution": ("INT", {"default": 512, "min": 64, "max": 2048, "step": 64,
                                       "tooltip": "Training resolution (512 SD1.x, 1024 SDXL/SD3.5/Flux)."}),
                "seed": ("INT", {"default": 0, "min": 0, "max": 2 ** 31 - 1, "tooltip": "Seed for LoRA init, noise, "
                                                                                         "sigmas and samples."}),
                "output_name": ("STRING", {"default": "dpg/my_subject_graph", "tooltip": "LoRA file name inside "
                                           "models/loras (sub-folders allowed, no '..'); also names the run folder "
                                           "used to resume."}),
                "overwrite": ("BOOLEAN", {"default": False, "tooltip": "Replace an existing LoRA of that name."}),
                "preset": (PRESET_CHOICES, {"default": "auto", "tooltip": "VRAM preset (auto: from the card). 8GB: "
                           "fp16, gradient checkpointing, offloading, rank 4; 12GB: bf16, checkpointing, rank 8; "
                           "24GB: bf16, rank 16, text-encoder LoRA, batch 2; cpu: fp32."}),
            },
            "optional": {
                "instance_prompt": ("STRING", {"default": "", "tooltip": "Prompt for the references; must contain the "
                                               "trigger. Empty: the class prompt with the trigger before the noun."}),
                "class_images": ("IMAGE", {"tooltip": "Prior-preservation images of the class (else generated once "
                                                      "by the input MODEL and cached)."}),
                "num_class_images": ("INT", {"default": 8, "min": 0, "max": 1000, "tooltip": "Class images to "
                                             "generate when none are connected (0 = no prior loss)."}),
                "targets": (list(TARGETS), {"default": "attention", "tooltip": "Layers that get a LoRA: attention "
                            "projections, every linear layer, or every ≥2-D weight (the core Train LoRA set)."}),
                "train_text_encoder": (SWITCH, {"default": "preset", "tooltip": "LoRA on the CLIP text towers "
                                       "(q/k/v/out, fc1/fc2; never T5)."}),
                "training_dtype": (DTYPE_CHOICES, {"default": "preset", "tooltip": "Autocast dtype of the forward "
                                   "pass (LoRA weights stay fp32)."}),
                "gradient_checkpointing": (SWITCH, {"default": "preset", "tooltip": "Recompute activations in "
                                           "backward (less memory, slower)."}),
                "offload": (SWITCH, {"default": "preset", "tooltip": "Let ComfyUI load the model partially and "
                                     "stream weights (low VRAM)."}),
                **weight_inputs(),
                "dino_model": (dino_choices(), {"default": "dino-vits16", "tooltip": "DINO ViT for the dino term."}),
                "resume": ("BOOLEAN", {"default": True, "tooltip": "Continue from this output name's checkpoint."}),
                "save_every": ("INT", {"default": 100, "min": 0, "max": 100000, "tooltip": "Checkpoint every N "
                                       "steps (0 = only on interrupt)."}),
                "sample_steps": ("INT", {"default": 20, "min": 1, "max": 200, "tooltip": "Sampler steps for the "
                                         "samples and the generated class images."}),
                **reward_inputs(),
            },
            "hidden": {"unique_id": "UNIQUE_ID"},
        }

    def train(self, model, clip, vae, references, trigger, class_prompt, steps, lr, rank, loss_mode, resolution, seed,
              output_name, overwrite, preset, instance_prompt="", class_images=None, num_class_images=8,
              targets="attention", train_text_encoder="preset", training_dtype="preset",
              gradient_checkpointing="preset", offload="preset", dreambooth_weight=-1.0, prior_weight=1.0,
              look_forward_weight=-1.0, critic_weight=-1.0, dino_weight=-1.0, gamma=None, dino_model="dino-vits16",
              resume=True, save_every=100, sample_steps=20, reward=None, reward_weight=1.0, reward_2=None,
              reward_2_weight=1.0, dino_reward_weight=0.0, critic_update_every=1, critic_target="regression",
              unique_id=None):
        from ..trainers import comfy_graph as G
        G.check_inputs(references, trigger, class_prompt, instance_prompt, resolution, output_name, overwrite)
        if class_images is not None:
            from ..rewards.images import check_finite
            check_finite(class_images, "class IMAGE")
        weights = weights_from_inputs(loss_mode, dreambooth_weight, prior_weight, look_forward_weight, critic_weight,
                                      dino_weight, gamma)
        critic = reward_config([(reward, reward_weight), (reward_2, reward_2_weight)], dino_reward_weight,
                               critic_update_every, critic_target)
        dev = model.load_device if hasattr(model, "load_device") else bridge.get_device()
        cfg = G.config_from_preset(preset, torch.device(dev), steps=int(steps), lr=float(lr),
                                   rank=int(rank) or None, targets=targets, seed=int(seed),
                                   train_text_encoder=_switch(train_text_encoder),
                                   training_dtype=None if training_dtype == "preset" else training_dtype,
                                   gradient_checkpointing=_switch(gradient_checkpointing), offload=_switch(offload),
                                   save_every=int(save_every), sample_steps=int(sample_steps))
        bar = bridge.Progress(int(steps), desc="DPG in graph", node_id=unique_id)
        try:
            res, samples = G.personalize_in_graph(
                model, clip, vae, references, trigger, class_prompt, instance_prompt=instance_prompt or None,
                class_images=class_images, num_class_images=int(num_class_images), out_name=output_name,
                overwrite=bool(overwrite), mode=loss_mode, weights=weights, cfg=cfg, resolution=int(resolution),
                resume=bool(resume), progress=bar, dino_model=dino_model, reward=critic)
        finally:
            bar.close()
        plot = _plot_tensor(res.loss_plot) if res.loss_plot else torch.zeros(1, 64, 64, 3)
        if samples is None:
            samples = torch.zeros(1, 64, 64, 3)
        ui = {"text": [f"{res.lora_name} ({res.steps_done} steps)" + _reward_summary(res.log_csv)]}
        return {"ui": ui, "result": (res.model, res.clip, res.lora_name, samples, plot)}


NODE_CLASS_MAPPINGS = {"RewardLoopPersonalizeInGraphDPG": RewardLoopPersonalizeInGraphDPG}
NODE_DISPLAY_NAME_MAPPINGS = {"RewardLoopPersonalizeInGraphDPG": "Personalize in Graph (DPG) (RewardLoop)"}
