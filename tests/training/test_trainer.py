import pytest
import torch

from slatte.training import TrainConfig, Trainer, TrainingError, train
from slatte.training.checkpoint import latest_checkpoint, load_training_state


def tiny(tmp_path, **kw):
    base = dict(
        out_dir=str(tmp_path / "run"),
        model="Latte-T/2",
        num_frames=2,
        size=8,
        batch_size=2,
        steps=4,
        log_every=1,
        ckpt_every=2,
        sample_steps=1,
        seed=5,
        ema_decay=0.9,
    )
    base.update(kw)
    return TrainConfig(**base)


def test_resume_continues_exactly(tmp_path):
    straight = Trainer(tiny(tmp_path / "a"))
    straight.fit()
    first = Trainer(tiny(tmp_path / "b", steps=2))
    first.fit()
    resumed = Trainer(tiny(tmp_path / "b", steps=4), resume=True)
    assert resumed.step == 2
    resumed.fit()
    for name, value in straight.model.state_dict().items():
        torch.testing.assert_close(resumed.model.state_dict()[name], value, msg=name)
    for name, value in straight.ema.state_dict().items():
        torch.testing.assert_close(resumed.ema.state_dict()[name], value, msg=name)
    loss_a = [line for line in (tmp_path / "a/run/metrics.jsonl").read_text().splitlines()]
    loss_b = [line for line in (tmp_path / "b/run/metrics.jsonl").read_text().splitlines()]
    assert [eval_loss(x) for x in loss_a] == pytest.approx([eval_loss(x) for x in loss_b], rel=1e-5)


def eval_loss(line):
    import json

    return json.loads(line)["loss"]


def test_training_writes_checkpoint_metrics_plot_and_samples(tmp_path):
    result = train(tiny(tmp_path))
    run = tmp_path / "run"
    assert result["step"] == 4
    ckpt = latest_checkpoint(run)
    assert ckpt.name == "step_0000004"
    assert (ckpt / "model" / "config.json").is_file()
    assert load_training_state(ckpt)["step"] == 4
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 4
    assert (run / "loss_curve.png").stat().st_size > 0
    # Previews are gif + png: no ffmpeg needed.
    assert {p.rsplit(".", 1)[1] for p in result["samples"]} == {"gif", "png"}


def test_nonfinite_loss_stops_with_a_clear_error_and_keeps_the_last_checkpoint(
    tmp_path, monkeypatch
):
    trainer = Trainer(tiny(tmp_path, steps=6, ckpt_every=2))
    real = trainer.objective.diffusion.training_losses

    def poisoned(model_fn, x0, t, **kwargs):
        out = real(model_fn, x0, t, **kwargs)
        if trainer.step == 3:
            out["loss"] = out["loss"] * float("nan")
        return out

    monkeypatch.setattr(trainer.objective.diffusion, "training_losses", poisoned)
    with pytest.raises(TrainingError, match="non-finite.*step 3"):
        trainer.fit()
    ckpt = latest_checkpoint(tmp_path / "run")
    assert ckpt.name == "step_0000002"
    assert load_training_state(ckpt)["step"] == 2


def test_a_crash_while_saving_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    trainer = Trainer(tiny(tmp_path, steps=4, ckpt_every=2))
    calls = {"n": 0}
    real_save = torch.save

    def failing_save(obj, path, *a, **k):
        calls["n"] += 1
        if calls["n"] == 2:  # the second checkpoint dies half-way
            raise OSError("disk full")
        return real_save(obj, path, *a, **k)

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        trainer.fit()
    ckpt = latest_checkpoint(tmp_path / "run")
    assert ckpt.name == "step_0000002"
    assert not (tmp_path / "run/checkpoints/step_0000004").exists()


def test_mixed_precision_on_cpu_is_refused(tmp_path):
    with pytest.raises(ValueError, match="needs a CUDA device"):
        Trainer(tiny(tmp_path, precision="bf16"))


def test_bad_training_options_are_named():
    with pytest.raises(ValueError, match="precision"):
        TrainConfig(precision="fp8")
    with pytest.raises(ValueError, match="steps"):
        TrainConfig(steps=0)


def test_joint_image_training_resumes_exactly_and_uses_the_frames(tmp_path):
    straight = Trainer(tiny(tmp_path / "a", image_batch=2))
    straight.fit()
    first = Trainer(tiny(tmp_path / "b", image_batch=2, steps=2))
    first.fit()
    resumed = Trainer(tiny(tmp_path / "b", image_batch=2, steps=4), resume=True)
    resumed.fit()
    for name, value in straight.model.state_dict().items():
        torch.testing.assert_close(resumed.model.state_dict()[name], value, msg=name)
    video_only = Trainer(tiny(tmp_path / "c"))
    video_only.fit()
    weight = "blocks.0.attn.qkv.weight"
    assert not torch.allclose(
        video_only.model.state_dict()[weight], straight.model.state_dict()[weight]
    )


def test_single_frames_are_frames_of_the_given_clips(tmp_path):
    trainer = Trainer(tiny(tmp_path, image_batch=3, num_frames=4))
    videos = torch.arange(3 * 4, dtype=torch.float32).reshape(3, 4, 1, 1, 1).expand(3, 4, 1, 8, 8)
    frames = trainer._single_frames(videos)
    assert frames.shape == (3, 1, 1, 8, 8)
    for i in range(3):  # frame j of clip i holds the value 4 i + j
        assert 4 * i <= frames[i, 0, 0, 0, 0].item() < 4 * (i + 1)
    torch.testing.assert_close(trainer._single_frames(videos), frames)


def test_compile_flag_compiles_the_forward(tmp_path, monkeypatch):
    compiled = []

    def fake_compile(module, *args, **kwargs):
        compiled.append(module)
        return module

    monkeypatch.setattr(torch, "compile", fake_compile)
    trainer = Trainer(tiny(tmp_path, compile=True, steps=1))
    assert compiled == [trainer.ddp_model]
    trainer.fit()


def test_joint_images_and_sequence_parallel_are_refused():
    with pytest.raises(ValueError, match="image_batch"):
        TrainConfig(image_batch=2, sequence_parallel=2, num_frames=16)


def test_latent_training_with_and_without_cache_is_the_same(tmp_path, tiny_vae_dir):
    kw = dict(vae=str(tiny_vae_dir), size=16, steps=3, ckpt_every=3)
    plain = Trainer(tiny(tmp_path / "plain", **kw))
    assert plain.model.config.in_channels == 4 and plain.model.config.input_size == 8
    plain.fit()
    cached = Trainer(tiny(tmp_path / "cached", latent_cache=str(tmp_path / "cache"), **kw))
    cached.fit()
    assert len(list((tmp_path / "cache").glob("*.safetensors"))) >= 2
    for name, value in plain.model.state_dict().items():
        torch.testing.assert_close(cached.model.state_dict()[name], value, msg=name)


def test_latent_cache_without_vae_is_refused():
    with pytest.raises(ValueError, match="latent_cache needs vae"):
        TrainConfig(latent_cache="/tmp/x")


def test_checkpoints_before_the_first_log_line_and_keeps_all_when_asked(tmp_path):
    Trainer(tiny(tmp_path, log_every=3, ckpt_every=1, steps=4, keep_checkpoints=0)).fit()
    run = tmp_path / "run"
    assert sorted(p.name for p in (run / "checkpoints").glob("step_*")) == [
        f"step_{s:07d}" for s in (1, 2, 3, 4)
    ]
    assert (run / "loss_curve.png").exists()


def test_model_options_cannot_override_what_the_data_decides():
    with pytest.raises(ValueError, match=r"'num_frames' follows the training data.*--frames"):
        TrainConfig(model_overrides={"num_frames": 8})


def test_min_snr_gamma_weights_the_logged_loss_but_not_the_mse(tmp_path):
    def first_step(**kw):
        trainer = Trainer(tiny(tmp_path / str(kw), steps=1, image_batch=0, **kw))
        batch = next(iter(trainer._loader()))
        return trainer.train_step(batch, None)

    plain, weighted = first_step(), first_step(min_snr_gamma=1.0)
    assert weighted["mse"] == pytest.approx(plain["mse"])
    # Every timestep with SNR > 1 is weighted down, so the weighted loss is smaller.
    assert weighted["loss"] < plain["loss"] - 1e-3 * plain["mse"]
