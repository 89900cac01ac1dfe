"""The README's "Try it offline in two minutes" block runs as written: every command exits 0 and writes what the
README says it writes. The ``python -m rewardloop`` lines run in-process (the same ``cli.main``); the shell lines
(``export``, ``mkdir``, ``python -c``, ``printf``) run as written. The tiny models of the session are linked in
where the block builds them, so the build line only checks and fills in what is missing."""
from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def try_it_lines() -> list[str]:
    text = README.read_text()
    start = text.index("## Try it offline in two minutes")
    body = text[text.index("```bash\n", start) + len("```bash\n"):]
    block = body[:body.index("```")]
    return [ln.split("  #")[0].strip() for ln in block.replace("\\\n", " ").splitlines() if ln.strip()]


def test_the_block_covers_the_promised_commands():
    cmds = [ln.split()[3] for ln in try_it_lines() if ln.startswith("python -m rewardloop")]
    assert cmds == ["selftest", "score", "rank", "fix", "train-dpg", "train-ranked"]


@pytest.mark.slow
def test_try_it_block_runs_as_written(tmp_path, monkeypatch, models_root, tiny, capsys):
    from rewardloop.cli import main
    (tmp_path / "try" / "rl").mkdir(parents=True)
    os.symlink(models_root, tmp_path / "try" / "rl" / "models")  # the tiny models this session already built
    monkeypatch.chdir(tmp_path)
    outputs = {}
    for line in try_it_lines():
        if line.startswith("export "):
            for item in shlex.split(line)[1:]:
                key, value = item.split("=", 1)
                monkeypatch.setenv(key, value.replace("$PWD", str(tmp_path)))
        elif line.startswith("python -m rewardloop "):
            args = shlex.split(line)[3:]
            rc = main(args)
            got = capsys.readouterr()
            assert rc == 0, f"{line}\n{got.err[-3000:]}"
            outputs[args[0]] = got.out
        else:
            cmd = re.sub(r"(^|&& )python ", lambda m: f"{m.group(1)}{shlex.quote(sys.executable)} ", line)
            subprocess.run(cmd, shell=True, check=True, cwd=tmp_path, env=dict(os.environ), timeout=120,
                           executable="/bin/bash")
    assert "caption (↑)" in outputs["score"] and "plausibility (↑)" in outputs["score"]
    assert (tmp_path / "try" / "ranked" / "index.html").is_file() and (tmp_path / "try/ranked/report.csv").is_file()
    assert (tmp_path / "try" / "fixed" / "report.txt").is_file()
    for name in ("train-dpg", "train-ranked"):
        lora = re.search(r"LoRA: (\S+\.safetensors)", outputs[name])
        assert lora and Path(lora.group(1)).is_file(), outputs[name]
