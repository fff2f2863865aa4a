"""tools/: the model-averaging script's selection logic (the rest of it is run by hand on trained models)."""

from __future__ import annotations

import pytest

pytest.importorskip("torch")


def test_greedy_soup_adds_a_member_only_when_val_does_not_fall():
    from tools.average_models import greedy_soup

    asked = []

    def score(members: tuple[int, ...]) -> float:
        asked.append(members)
        return {(1,): 0.80, (1, 0): 0.80, (1, 0, 2): 0.79, (1, 0, 3): 0.83}[members]

    assert greedy_soup([1, 0, 2, 3], score) == ((1, 0, 3), 0.83)
    # A tie keeps the member (Wortsman et al.'s rule); the member that lowered val is never tried again.
    assert asked == [(1,), (1, 0), (1, 0, 2), (1, 0, 3)]


def test_average_weights_is_uniform_and_keeps_integer_buffers():
    import torch

    from tools.average_models import average

    out = average([{"w": torch.tensor([1.0, 3.0]), "n": torch.tensor(1)},
                   {"w": torch.tensor([2.0, 5.0]), "n": torch.tensor(7)},
                   {"w": torch.tensor([3.0, 7.0]), "n": torch.tensor(9)}])
    assert torch.equal(out["w"], torch.tensor([2.0, 5.0])) and int(out["n"]) == 9
