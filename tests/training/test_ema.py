import torch
from torch import nn

from slatte.training.ema import make_ema, update_ema
from slatte.training.trainer import ema_decay_at


def test_update_ema_is_the_moving_average():
    torch.manual_seed(0)
    model = nn.Linear(4, 3)
    ema = make_ema(model)
    start = {k: v.clone() for k, v in ema.state_dict().items()}
    with torch.no_grad():
        model.weight.add_(1.0)
    update_ema(ema, model, decay=0.9)
    expected = 0.9 * start["weight"] + 0.1 * model.weight
    torch.testing.assert_close(ema.weight, expected)
    assert not ema.weight.requires_grad


def test_ema_decay_warms_up_and_caps():
    assert ema_decay_at(0, 0.9999) == 0.1
    assert ema_decay_at(10**7, 0.9999) == 0.9999
    assert ema_decay_at(100, 0.9999) < ema_decay_at(1000, 0.9999)
