"""In-graph DPG trainer vs ComfyUI's core TrainLoraNode: step time and peak memory, side by side in one ComfyUI
process, on the same tiny model, steps, resolution, rank and layer set.

    COMFYUI_PATH=… $COMFYUI_PYTHON benchmarks/ingraph_bench.py CHECKPOINT [--steps 4] [--resolution 64]
        [--rank 4] [--repeats 3] [--warmup 1] [--quick] [--mode dreambooth]

(``rewardloop`` must be importable: PYTHONPATH=<folder holding a rewardloop link to this checkout>.) CHECKPOINT: a
single file ComfyUI loads (e.g. tiny-sd15-single from weights/tiny.py, or weights/tiny_comfy.py's SDXL/SD3.5).

Both trainers get the same latents (1 reference image, VAE-encoded), the same prompt, AdamW, fp32, gradient
checkpointing on, LoRA rank r on every ≥2-D weight of the diffusion model (core: its fixed set, which also trains
norm/bias differences; ours: targets=all). Ours runs the DPG objective (default mode dreambooth = prediction-space
MSE; --mode look_forward adds x̂0 and γ^t) without prior images or samples.

Step time: the training loop only (core: TrainSampler.sample; ours: the loop inside our sampler) divided by steps,
timed with the shared method (``_method.py``: warm-up, alternating order, repeats, min and median, load).
``--quick``: 2 steps.
Peak memory: ``torch.cuda.max_memory_allocated`` on a GPU; on the CPU the peak resident-set growth during the loop
(psutil, sampled every 5 ms) — a coarse number on a shared machine. The machine load is printed with the figures.
"""
from __future__ import annotations

import os
import statistics
import sys
import tempfile
import threading
import time

from _method import Seconds, compare, header, parse, parser, ratio_line


def main(argv=None) -> None:
    ap = parser(__doc__.splitlines()[0])
    ap.add_argument("checkpoint")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--resolution", type=int, default=64)
    ap.add_argument("--rank", type=int, default=4)
    ap.add_argument("--mode", default="dreambooth")
    a = parse(ap, argv)
    if a.quick:
        a.steps = 2
    sys.path.insert(0, os.environ["COMFYUI_PATH"])
    import psutil
    import torch
    from comfy.cli_args import args
    if not torch.cuda.is_available():
        args.cpu = True
    import comfy.model_management as mm
    import comfy.sd
    import comfy_extras.nodes_train as NT
    import folder_paths

    from rewardloop.trainers import comfy_graph as G
    tmp = tempfile.mkdtemp(prefix="ingraph_bench_")
    folder_paths.set_output_directory(tmp)
    folder_paths.folder_names_and_paths["loras"] = ([os.path.join(tmp, "loras")], {".safetensors"})
    os.environ["REWARDLOOP_NO_TQDM"] = "1"
    dev = mm.get_torch_device()
    with torch.inference_mode():
        model, clip, vae, _ = comfy.sd.load_checkpoint_guess_config(a.checkpoint, output_vae=True, output_clip=True)
        refs = torch.rand(1, a.resolution, a.resolution, 3, generator=torch.Generator().manual_seed(0))
        latents = {"samples": vae.encode(refs)}
        positive = clip.encode_from_tokens_scheduled(clip.tokenize("a photo of sks dog"))
    timings: dict[str, float] = {}

    class Peak:
        def __enter__(self):
            self.base = psutil.Process().memory_info().rss
            self.peak, self.stop = self.base, False
            if dev.type == "cuda":
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
                self.cuda0 = torch.cuda.memory_allocated()
            self.t = threading.Thread(target=self._poll, daemon=True)
            self.t.start()
            return self

        def _poll(self):
            p = psutil.Process()
            while not self.stop:
                self.peak = max(self.peak, p.memory_info().rss)
                time.sleep(0.005)

        def __exit__(self, *exc):
            self.stop = True
            self.t.join()
            if dev.type == "cuda":
                torch.cuda.synchronize()
                self.bytes = torch.cuda.max_memory_allocated() - self.cuda0
            else:
                self.bytes = self.peak - self.base
            return False

    def timed(fn, key):
        def wrapper(*args, **kwargs):
            with Peak() as pk:
                t0 = time.perf_counter()
                out = fn(*args, **kwargs)
                timings[key] = time.perf_counter() - t0
            timings[key + "_mem"] = pk.bytes
            return out
        return wrapper

    core_sample = NT.TrainSampler.sample
    our_loop = G._Job.loop
    NT.TrainSampler.sample = lambda self, *x, **k: timed(core_sample, "core")(self, *x, **k)
    G._Job.loop = lambda self, *x, **k: timed(our_loop, "ours")(self, *x, **k)
    algo = list(NT.adapter_maps.keys())[0]

    seeds = iter(range(10 ** 6))
    memory: dict[str, list[float]] = {"core": [], "ours": []}

    def run_core():
        with torch.inference_mode():
            NT.TrainLoraNode().train(model, latents, positive, 1, a.steps, 1, 1e-4, a.rank, "AdamW", "MSE",
                                     next(seeds), "fp32", "fp32", algo, True, "[None]")
        memory["core"].append(timings["core_mem"])
        return Seconds(timings["core"] / a.steps)

    def run_ours():
        seed = next(seeds)
        cfg = G.GraphTrainConfig(steps=a.steps, lr=1e-4, rank=a.rank, targets="all", gradient_checkpointing=True,
                                 training_dtype="fp32", seed=seed, save_every=0)
        with torch.inference_mode():
            G.personalize_in_graph(model, clip, vae, refs, "sks", "a photo of a dog", num_class_images=0,
                                   out_name=f"bench_{seed}", overwrite=True, mode=a.mode, cfg=cfg,
                                   resolution=a.resolution, resume=False, sample_prompts=[],
                                   run_dir=os.path.join(tmp, f"run_{seed}"))
        memory["ours"].append(timings["ours_mem"])
        return Seconds(timings["ours"] / a.steps)

    sync = torch.cuda.synchronize if dev.type == "cuda" else None
    header("in-graph DPG trainer vs ComfyUI's core TrainLoraNode: seconds per training step",
           checkpoint=f"{os.path.basename(a.checkpoint)} ({type(model.model).__name__})", device=dev,
           steps=a.steps, resolution=a.resolution, rank=a.rank, mode=a.mode)
    t = compare({"core TrainLoraNode": run_core, "in-graph DPG": run_ours}, a.repeats, a.warmup, sync=sync)
    for (name, timing), key in zip(t.items(), ("core", "ours")):
        print(timing.line(unit_name="s/step"))
        print(f"{'':28} peak memory growth (median of the timed runs) "
              f"{statistics.median(memory[key][a.warmup:]) / 2 ** 20:.1f} MB")
    print(ratio_line("step time core / in-graph (below 1: in-graph is slower)", t["core TrainLoraNode"],
                     t["in-graph DPG"]))
    print(f"step-time ratio in-graph / core (medians): "
          f"{t['in-graph DPG'].median / t['core TrainLoraNode'].median:.2f}")


if __name__ == "__main__":
    main()
