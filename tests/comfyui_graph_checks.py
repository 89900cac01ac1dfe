"""Run with ComfyUI's Python: the in-graph trainer's look-forward step on a real ComfyUI model, raw numbers out.

``python tests/comfyui_graph_checks.py COMFYUI_PATH CHECKPOINT OUT.json`` (``rewardloop`` importable). For an
ε-model (the checkpoint as loaded), the same model patched to v-prediction (core ModelSamplingDiscrete) and to
rectified flow (core ModelSamplingSD3, shift 3), it runs ``comfy_graph.predict_x0`` (the trainer's own forward:
noise_scaling → ComfyUI's guider → calculate_denoised) with a hook that captures the diffusion model's raw output,
and writes x0, ε, σ, x_t, the raw output, x̂0, the trainer's native MSE and γ-timestep; tests/test_comfy_graph.py
checks them against the formulas by hand, with the td target's chain step (:func:`comfy_graph.chain_step`) from
the true x0. With a 4th argument ``resume``: :func:`resume_check`.
"""
from __future__ import annotations

import json
import sys


def resume_check(comfy_path: str, ckpt: str, out: str) -> None:
    """Interrupt after step 2 of 3 (a progress callback raises like ComfyUI's interrupt), queue again: the resumed
    LoRA must equal an uninterrupted run's, and the loaded model's weights must be exactly as before training.

    The runs have the paper's critic and a reward through the learned reward critic (a deterministic brightness
    scorer, the td target, warm-up 1 so the actor term is on from the second step); one more run without the reward
    shows that the reward changed the LoRA."""
    sys.path.insert(0, comfy_path)
    import os
    import tempfile

    import torch
    from comfy.cli_args import args
    args.cpu = True
    import comfy.sd
    import folder_paths

    from rewardloop import bridge
    from rewardloop.trainers import comfy_graph as G
    from rewardloop.trainers import reward_critic as RC
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import _fake_rewards as FR
    tmp = tempfile.mkdtemp()
    folder_paths.set_output_directory(tmp)
    folder_paths.folder_names_and_paths["loras"] = ([os.path.join(tmp, "loras")], {".safetensors"})
    with torch.inference_mode():
        model, clip, vae, _ = comfy.sd.load_checkpoint_guess_config(ckpt, output_vae=True, output_clip=True)
        before = {k: v.clone() for k, v in model.model.state_dict().items()}
        refs = torch.rand(2, 64, 64, 3, generator=torch.Generator().manual_seed(1))

    class StopAt:
        def __init__(self, n):
            self.n, self.i = n, 0

        def update(self, *a, **k):
            self.i += 1
            if self.i == self.n:
                raise bridge.Interrupted("test interrupt")

    def train(name, progress=None, resume=True, reward=True):
        cfg = G.GraphTrainConfig(steps=3, rank=2, lr=0.05, seed=5, save_every=0, gradient_checkpointing=False)
        rc = RC.RewardCriticConfig(rewards=[RC.RewardSpec("brightness", 1.0, scorer=FR.make_scorer())],
                                   target="td", warmup=1, td_hop=100, iters=2) if reward else None
        with torch.inference_mode():
            res, _ = G.personalize_in_graph(model, clip, vae, refs, "sks", "a photo of a dog", num_class_images=0,
                                            out_name=name, overwrite=True, mode="critic", cfg=cfg, resolution=64,
                                            resume=resume, progress=progress, sample_prompts=[], reward=rc)
        return res
    straight = train("straight", resume=False)
    plain = train("plain", resume=False, reward=False)
    import csv
    with open(straight.log_csv) as f:
        log_rows = list(csv.DictReader(f))
    interrupted = False
    try:
        train("resumed", progress=StopAt(2), resume=False)
    except bridge.Interrupted:
        interrupted = True
    ck = sorted(os.listdir(os.path.join(tmp, "rewardloop_runs", "resumed_ingraph", "checkpoints")))
    resumed = train("resumed")
    diff = max(float((straight.lora_sd[k].float() - resumed.lora_sd[k].float()).abs().max()) for k in straight.lora_sd)
    moved = max(float((model.model.state_dict()[k].float() - v.float()).abs().max()) for k, v in before.items())
    by_reward = max(float((straight.lora_sd[k].float() - plain.lora_sd[k].float()).abs().max())
                    for k in straight.lora_sd)
    json.dump({"log": log_rows, "reward_vs_plain_max_diff": by_reward,
               "interrupted": interrupted, "checkpoints": ck, "resumed_steps": resumed.steps_done,
               "losses_straight": straight.losses, "losses_resumed": resumed.losses, "lora_max_diff": diff,
               "lora_keys": len(straight.lora_sd), "model_max_change": moved}, open(out, "w"))


def main(comfy_path: str, ckpt: str, out: str) -> None:
    sys.path.insert(0, comfy_path)
    import torch
    from comfy.cli_args import args
    args.cpu = True
    import comfy.sd
    from comfy_extras.nodes_model_advanced import ModelSamplingDiscrete, ModelSamplingSD3

    from rewardloop.trainers import comfy_graph as G
    torch.manual_seed(0)
    with torch.inference_mode():
        model, clip, _vae, _ = comfy.sd.load_checkpoint_guess_config(ckpt, output_vae=True, output_clip=True)
        cond = clip.encode_from_tokens_scheduled(clip.tokenize("a photo of sks dog"))
    variants = {"eps": model, "v": ModelSamplingDiscrete().patch(model, "v_prediction", False)[0],
                "flow": ModelSamplingSD3().patch(model, 3.0)[0]}
    res = {}
    for name, m in variants.items():
        ms = m.get_model_object("model_sampling")
        x0_vae = torch.randn(2, 4, 8, 8)
        idx = torch.tensor([100, 900])
        sigma = ms.sigmas[idx].float()
        noise = torch.randn(2, 4, 8, 8)
        raw = []
        h = m.model.diffusion_model.register_forward_hook(lambda mod, a, o: raw.append(o.detach().float().clone()))
        try:
            x_t, x0_hat, sig = G.predict_x0(m, cond, x0_vae, sigma, noise)
        finally:
            h.remove()
        x0 = m.model.process_latent_in(x0_vae)
        with torch.inference_mode(False):
            native = G.native_mse(ms, sig, x0_hat, x0)
            t = G.paper_timestep(ms, sig)
            sig2, eps_hat, t2 = G.chain_step(ms, sig, x_t, x0, t, 150)   # from the true x0: ε̂ must be the noise
            roundtrip = G.sigma_at(ms, t)
        res[name] = {"sigma": sig.tolist(), "index": idx.tolist(), "x0": x0.tolist(), "noise": noise.tolist(),
                     "x_t": x_t.tolist(), "raw": raw[-1].tolist(), "x0_hat": x0_hat.tolist(),
                     "native": native.tolist(), "t": t.tolist(), "sigma_min": float(ms.sigma_min),
                     "chain_sigma": sig2.tolist(), "chain_eps": eps_hat.tolist(), "chain_t": t2.tolist(),
                     "sigma_roundtrip": roundtrip.tolist(), "table_sigma_minus_150": ms.sigmas[idx - 150].tolist(),
                     "sigma_max": float(ms.sigma_max), "sigma_data": float(getattr(ms, "sigma_data", 1.0)),
                     "type": type(ms).__name__}
    with open(out, "w") as f:
        json.dump(res, f)


if __name__ == "__main__":
    (resume_check if sys.argv[4:] == ["resume"] else main)(sys.argv[1], sys.argv[2], sys.argv[3])
