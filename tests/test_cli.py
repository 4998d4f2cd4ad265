import json

import imageio.v3 as iio
import pytest

from slatte.cli import main

TRAIN = [
    "train",
    "--model",
    "Latte-T/2",
    "--frames",
    "4",
    "--size",
    "16",
    "--steps",
    "3",
    "--batch-size",
    "2",
    "--sample-steps",
    "2",
    "--log-every",
    "1",
]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "run"
    assert main([*TRAIN, "--out", str(out)]) == 0
    return out


def test_train_then_sample_writes_readable_videos(run_dir, tmp_path, capsys):
    out = tmp_path / "samples"
    code = main(
        [
            "sample",
            "--checkpoint",
            str(run_dir),
            "--steps",
            "2",
            "--num-samples",
            "2",
            "--class",
            "3",
            "--out",
            str(out),
            "--seed",
            "1",
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out.split()
    mp4s = [p for p in printed if p.endswith(".mp4")]
    assert len(mp4s) == 2 and all("class3" in p for p in mp4s)
    frames = iio.imread(mp4s[0])
    assert frames.shape[0] == 4 and frames.shape[1:3] == (16, 16)
    assert (out / "frames.png").is_file()


def test_same_seed_same_video(run_dir, tmp_path):
    for name in ("a", "b"):
        assert (
            main(
                [
                    "sample",
                    "--checkpoint",
                    str(run_dir),
                    "--steps",
                    "2",
                    "--num-samples",
                    "1",
                    "--formats",
                    "gif",
                    "--out",
                    str(tmp_path / name),
                    "--seed",
                    "7",
                ]
            )
            == 0
        )
    a = iio.imread(next((tmp_path / "a").glob("*.gif")))
    b = iio.imread(next((tmp_path / "b").glob("*.gif")))
    assert (a == b).all()


def test_resume_from_the_cli_extends_the_run(run_dir, capsys):
    assert main([*TRAIN, "--out", str(run_dir), "--resume", "--steps", "4"]) == 0
    out = capsys.readouterr().out
    assert json.loads(out[out.index("{") :])["step"] == 4
    assert (run_dir / "latest").read_text().strip() == "step_0000004"


@pytest.mark.parametrize(
    "argv, message",
    [
        (["train", "--model", "Latte-Q/9", "--steps", "1"], "Latte-Q/9"),
        (["sample", "--checkpoint", "/nonexistent/model"], "does not exist"),
    ],
)
def test_user_mistakes_give_one_line_errors(argv, message, capsys, tmp_path):
    if argv[0] == "train":
        argv = [*argv, "--out", str(tmp_path / "r")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_class_out_of_range_and_corrupt_checkpoint(run_dir, tmp_path, capsys):
    assert (
        main(
            [
                "sample",
                "--checkpoint",
                str(run_dir),
                "--class",
                "10",
                "--steps",
                "1",
                "--out",
                str(tmp_path),
            ]
        )
        == 2
    )
    assert "class 10 is out of range" in capsys.readouterr().err
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    (broken / "model.safetensors").write_bytes(b"garbage")
    assert (
        main(["sample", "--checkpoint", str(broken), "--steps", "1", "--out", str(tmp_path)]) == 2
    )
    assert "config.json" in capsys.readouterr().err


def test_train_with_sla_options_from_the_command_line(tmp_path):
    """--attention and every --sla-* flag reach the saved model config; an identity projection
    stays the identity through training (it is not trained)."""
    import torch

    from slatte.models import load_model

    out = tmp_path / "sla_run"
    flags = ["--attention", "sla_reference", "--sla-critical", "0.5", "--sla-block-q", "16"]
    flags += ["--sla-block-k", "16", "--sla-feature-map", "elu", "--sla-projection", "identity"]
    assert main([*TRAIN, "--block-pattern", "full", "--out", str(out), *flags]) == 0
    config = json.loads((out / "checkpoints/step_0000003/model/config.json").read_text())
    assert config["config"]["attention_backend"] == "sla_reference"
    assert config["config"]["sla"] == {
        "critical": 0.5,
        "negligible": 0.1,
        "block_q": 16,
        "block_k": 16,
        "feature_map": "elu",
        "linear_scope": "marginal",
        "projection": "identity",
    }
    model = load_model(out / "checkpoints/step_0000003/model")
    for block in model.blocks:
        assert torch.equal(block.attn.sla.proj_l.weight, torch.eye(block.attn.sla.head_dim))
