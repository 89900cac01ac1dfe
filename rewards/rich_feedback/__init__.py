"""RAHF (Rich Automatic Human Feedback, Liang et al. CVPR 2024): model, converter, predictor, metrics.

Submodules are imported lazily by their users (the pack never imports model code at ComfyUI start-up):
``model`` (the network, config, save/load, loader), ``convert`` (the public RichHF checkpoint → our format),
``predict`` (batched inference and the ``rich`` scorer), ``metrics`` (the paper's evaluation metrics),
``words`` (RichHF prompt tokenisation and ``_0`` tag parsing).
"""
SCORE_TYPES = ("plausibility", "alignment", "aesthetics", "overall")
HEATMAP_TYPES = ("implausibility", "misalignment")
