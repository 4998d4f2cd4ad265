import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from slatte.data.moving_digits import NUM_SOURCE_IMAGES, MovingDigits


def _reflect_reference(start, velocity, num_frames, span):
    """Step-by-step simulation: move, and mirror at a wall (slow, obviously right)."""
    pos, vel = np.array(start, dtype=np.float64), np.array(velocity, dtype=np.float64)
    positions, velocities = [], []
    for _ in range(num_frames):
        positions.append(pos.copy())
        # Velocity to the next frame: flip a component that will hit a wall in this step,
        # handling several bounces for speeds above the span.
        step_vel = vel.copy()
        nxt = pos + vel
        while np.any(nxt < 0) or np.any(nxt > span):
            low, high = nxt < 0, nxt > span
            nxt = np.where(low, -nxt, np.where(high, 2 * span - nxt, nxt))
            vel = np.where(low | high, -vel, vel)
        velocities.append(step_vel)
        pos = nxt
    return np.array(positions), np.array(velocities)


def test_trajectory_matches_step_by_step_reflection():
    ds = MovingDigits(num_frames=40, size=32, digit_size=12, speed=(4.0, 9.0), length=20)
    span = 32 - 12
    for i in range(20):
        traj = ds.trajectory(i)
        pos, vel = traj.positions[0], traj.velocities[0]
        ref_pos, _ = _reflect_reference(pos[0], vel[0], 40, span)
        np.testing.assert_allclose(pos, ref_pos, atol=1e-9)
        # The stored velocity is the displacement to the next frame whenever no wall is hit.
        free = np.all((pos[:-1] + vel[:-1] >= 0) & (pos[:-1] + vel[:-1] <= span), axis=1)
        np.testing.assert_allclose((pos[1:] - pos[:-1])[free], vel[:-1][free], atol=1e-9)


def test_digit_stays_inside_frame():
    ds = MovingDigits(num_frames=48, size=24, digit_size=12, speed=(3.0, 7.0), length=16)
    for i in range(len(ds)):
        video = ds[i]["video"]
        traj = ds.trajectory(i)
        assert video.shape == (48, 1, 24, 24)
        assert video.min() >= -1.0 and video.max() <= 1.0
        assert traj.pixel_positions.min() >= 0 and traj.pixel_positions.max() <= 24 - 12
        # A clipped digit would lose lit pixels: the total intensity must be the same per frame.
        intensity = (video + 1).sum(dim=(1, 2, 3))
        torch.testing.assert_close(intensity, intensity[:1].expand(48), rtol=0, atol=1e-4)
        assert intensity[0] > 10  # the digit is actually drawn


def test_digit_is_drawn_at_its_trajectory():
    ds = MovingDigits(num_frames=8, size=32, digit_size=16, length=4)
    for i in range(4):
        video = ds[i]["video"][:, 0] > -1  # lit pixels
        traj = ds.trajectory(i)
        for t, (y, x) in enumerate(traj.pixel_positions[0]):
            inside = torch.zeros(32, 32, dtype=torch.bool)
            inside[y : y + 16, x : x + 16] = True
            assert video[t].any() and not (video[t] & ~inside).any()


def test_bounces_off_the_border():
    # Fast and long: every clip must hit a wall and reverse a velocity component.
    ds = MovingDigits(num_frames=64, size=32, digit_size=16, speed=(5.0, 6.0), length=8)
    span = 16
    for i in range(len(ds)):
        traj = ds.trajectory(i)
        vel, pos = traj.velocities[0], traj.positions[0]
        flips = np.nonzero(np.sign(vel[1:]) != np.sign(vel[:-1]))
        assert len(flips[0]) > 0
        for t, axis in zip(*flips, strict=True):
            # Between frames t and t+1 the digit reached a wall on that axis.
            before, after = pos[t, axis], pos[t + 1, axis]
            speed = abs(vel[t, axis])
            assert min(before, after) <= speed or max(before, after) >= span - speed


def test_label_is_the_source_digit():
    targets = load_digits().target
    ds = MovingDigits(length=50)
    for i in range(50):
        item, traj = ds[i], ds.trajectory(i)
        assert item["label"] == targets[traj.source_indices[0]]
        assert 0 <= item["label"] < ds.num_classes
    assert len({ds[i]["label"] for i in range(50)}) > 3


def test_determinism_and_variety():
    a = MovingDigits(length=20, seed=3)
    b = MovingDigits(length=20, seed=3)
    for i in range(5):
        torch.testing.assert_close(a[i]["video"], a[i]["video"], rtol=0, atol=0)
        torch.testing.assert_close(a[i]["video"], b[i]["video"], rtol=0, atol=0)
    assert not torch.equal(a[0]["video"], a[1]["video"])
    assert not torch.equal(a[0]["video"], MovingDigits(length=20, seed=4)[0]["video"])
    # Order of access does not matter (no shared RNG state).
    c = MovingDigits(length=20, seed=3)
    _ = c[7]
    torch.testing.assert_close(c[2]["video"], a[2]["video"], rtol=0, atol=0)


def test_determinism_across_dataloader_workers():
    ds = MovingDigits(num_frames=4, size=16, digit_size=8, length=6)
    loader = torch.utils.data.DataLoader(ds, batch_size=2, num_workers=2)
    batched = torch.cat([batch["video"] for batch in loader])
    expected = torch.stack([ds[i]["video"] for i in range(6)])
    torch.testing.assert_close(batched, expected, rtol=0, atol=0)


def test_split_is_disjoint_by_source_image():
    train, test = MovingDigits("train", seed=0), MovingDigits("test", seed=5)
    tr, te = set(train.source_indices), set(test.source_indices)
    assert not tr & te
    assert len(tr) + len(te) == NUM_SOURCE_IMAGES
    assert abs(len(tr) / NUM_SOURCE_IMAGES - 0.8) < 0.01
    used = {int(s) for i in range(200) for s in test.trajectory(i).source_indices}
    assert used <= te


def test_two_digits():
    ds = MovingDigits(num_digits=2, num_frames=6, length=10)
    for i in range(10):
        item, traj = ds[i], ds.trajectory(i)
        assert traj.positions.shape == (2, 6, 2) and traj.source_indices.shape == (2,)
        assert item["label"] == -1 and traj.labels.shape == (2,)
        # Both digit boxes hold lit pixels in every frame.
        video = item["video"][:, 0]
        for d in range(2):
            for t, (y, x) in enumerate(traj.pixel_positions[d]):
                assert (video[t, y : y + 16, x : x + 16] > -1).any()
    assert ds.num_classes == 0 and MovingDigits.num_classes == 10
    one = MovingDigits(num_digits=1, num_frames=6, length=10)
    lit_two = (ds[0]["video"] > -1).sum()
    assert lit_two > (one[0]["video"] > -1).sum() * 0.5


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"split": "val"}, "split"),
        ({"num_frames": 0}, "num_frames"),
        ({"digit_size": 40, "size": 32}, "digit_size"),
        ({"num_digits": 3}, "num_digits"),
        ({"speed": (3.0, 1.0)}, "speed"),
        ({"speed": (1.0, 2.0, 3.0)}, "speed"),
        ({"speed": -1.0}, "speed"),
        ({"length": 0}, "length"),
    ],
)
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        MovingDigits(**kwargs)


def test_index_out_of_range():
    with pytest.raises(IndexError):
        MovingDigits(length=3)[3]
