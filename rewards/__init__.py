"""The ComfyUI-free reward library: captions, similarity, segments, LLM judging, rich feedback, ranking, regions."""
