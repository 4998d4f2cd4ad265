import argparse
import json

import pytest
import torch

from slatte.data import MovingDigits, read_video, write_video
from slatte.eval.cli import add_eval_parser
from slatte.eval.evaluate import evaluate_videos
from slatte.eval.videos import list_video_files


def _run(argv):
    parser = argparse.ArgumentParser(prog="slatte")
    add_eval_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    data = MovingDigits("test", length=24, seed=99)
    gen = torch.Generator().manual_seed(0)
    for i in range(len(data)):
        item = data[i]
        # Both formats in one folder, and some samples in both (as `slatte sample` writes them).
        suffixes = {0: ["gif"], 1: ["mp4", "gif"]}.get(i % 4, ["mp4"])
        for suffix in suffixes:
            name = f"sample_{i:02d}_class{item['label']}.{suffix}"
            write_video(root / "real" / name, item["video"])
        noise = torch.rand(item["video"].shape, generator=gen) * 2 - 1
        write_video(root / "noise" / f"sample_{i:02d}_class{item['label']}.mp4", noise)
    return root


def test_eval_folder_of_digit_videos_prints_json(folders, tmp_path, capsys):
    out = tmp_path / "metrics.json"
    argv = ["eval", "--videos", str(folders / "real"), "--labels-from-filename"]
    assert _run([*argv, "--out", str(out)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert json.loads(out.read_text()) == printed
    # Pillow merges identical consecutive GIF frames, so a slow digit's GIF may read back
    # shorter; the folder is cut to its shortest video.
    shortest = min(len(read_video(p)) for p in list_video_files(folders / "real"))
    assert printed["num_videos"] == 24 and printed["size"] == 32  # each sample counted once
    assert printed["num_frames"] == shortest >= 12
    assert printed["accuracy"]["frame_accuracy"] >= 0.9
    assert printed["accuracy"]["video_accuracy"] >= 0.9
    assert printed["motion"]["smoothness"] >= 0.95
    assert printed["fd"]["num_real"] == 24

    assert _run(["eval", "--videos", str(folders / "noise"), "--labels-from-filename"]) == 0
    noise = json.loads(capsys.readouterr().out)
    assert noise["accuracy"]["frame_accuracy"] < 0.5
    assert noise["motion"]["smoothness"] < printed["motion"]["smoothness"]
    # 24 vs 24 videos in 64 dimensions: the small-sample bias of real vs real is large (~70).
    assert noise["fd"]["value"] > 5 * printed["fd"]["value"]


def test_real_folder_and_metric_choice(folders, capsys):
    argv = ["eval", "--videos", str(folders / "real"), "--real", str(folders / "real")]
    assert _run([*argv, "--metrics", "fd"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert set(result) >= {"fd"} and "accuracy" not in result and "motion" not in result
    assert result["fd"]["value"] == pytest.approx(0.0, abs=1e-6)  # a set against itself


def test_errors_name_what_is_wrong(folders, tmp_path):
    with pytest.raises(ValueError, match="subset of"):
        _run(["eval", "--videos", str(folders / "real"), "--metrics", "fid"])
    with pytest.raises(FileNotFoundError, match="does not exist"):
        _run(["eval", "--videos", str(tmp_path / "missing")])
    write_video(tmp_path / "odd" / "clip.mp4", torch.zeros(4, 1, 16, 16))
    with pytest.raises(ValueError, match="class<N>"):
        _run(["eval", "--videos", str(tmp_path / "odd"), "--labels-from-filename"])
    with pytest.raises(ValueError, match="real set"):
        evaluate_videos(torch.zeros(2, 4, 1, 32, 32), metrics=["fd"])


def test_a_video_in_several_formats_counts_once_preferring_mp4(tmp_path):
    for name in ("a.gif", "a.mp4", "b.gif", "sub/a.mp4", "notes.txt"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).touch()
    names = [p.relative_to(tmp_path).as_posix() for p in list_video_files(tmp_path)]
    assert names == ["a.mp4", "b.gif", "sub/a.mp4"]
