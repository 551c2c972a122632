"""View transforms: shapes, grey-scale safety, exact identity when every augmentation is off, YAML build."""

from __future__ import annotations

import jsonargparse
import pytest
import torch
from torch.utils.data import DataLoader
from torchvision.transforms import v2

from vispre.data import MAEView, MultiCropViews, SimCLRViews, ViewDataset, ViewTransform
from vispre.errors import VispreError

OFF = dict(scale=(1.0, 1.0), hflip=0.0, jitter_prob=0.0, grey_prob=0.0, blur_prob=0.0)


def grey_image(seed: int = 0, chans: int = 1, side: int = 28) -> torch.Tensor:
    return torch.randint(0, 256, (chans, side, side), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def test_simclr_all_off_is_exact_normalisation() -> None:
    image = grey_image()
    views = SimCLRViews(28, mean=(0.3,), std=(0.5,), **OFF)(image)
    expected = (image.float() / 255.0 - 0.3) / 0.5
    assert len(views) == 2
    for view in views:
        assert view.dtype == torch.float32
        torch.testing.assert_close(view, expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("chans", [1, 3])
def test_simclr_full_recipe_shapes_and_two_different_views(chans: int) -> None:
    mean, std = (0.5,) * chans, (0.25,) * chans
    transform = SimCLRViews(16, mean=mean, std=std, jitter_prob=1.0, grey_prob=0.5, blur_prob=(1.0, 0.1),
                            solarize_prob=(0.0, 0.2))
    views = transform(grey_image(chans=chans))
    assert transform.num_views == 2 and [v.shape for v in views] == [(chans, 16, 16)] * 2
    assert all(torch.isfinite(v).all() for v in views)
    assert not torch.equal(views[0], views[1])


def test_simclr_grey_prob_one_makes_rgb_channels_equal() -> None:
    views = SimCLRViews(28, mean=(0.0,) * 3, std=(1.0,) * 3, **{**OFF, "grey_prob": 1.0})(grey_image(chans=3))
    for view in views:
        assert torch.allclose(view[0], view[1]) and torch.allclose(view[1], view[2])


def test_seeded_views_are_reproducible() -> None:
    transform, image = SimCLRViews(20, mean=(0.5,), std=(0.5,), jitter_prob=1.0), grey_image(3)
    torch.manual_seed(7)
    first = transform(image)
    torch.manual_seed(7)
    second = transform(image)
    assert all(torch.equal(a, b) for a, b in zip(first, second))


def test_per_view_probability_length_is_checked() -> None:
    with pytest.raises(VispreError, match=r"blur_prob must be one number or 2 numbers \(one per view\)"):
        SimCLRViews(28, blur_prob=(0.1, 0.2, 0.3))


def test_multicrop_shapes_and_counts() -> None:
    transform = MultiCropViews(global_size=28, local_size=12, num_local=3, mean=(0.5,), std=(0.5,))
    views = transform(grey_image())
    assert transform.num_views == 5
    assert [tuple(v.shape) for v in views] == [(1, 28, 28)] * 2 + [(1, 12, 12)] * 3
    assert len(MultiCropViews(28, 12, num_local=0, mean=(0.5,), std=(0.5,))(grey_image())) == 2
    with pytest.raises(VispreError, match="num_local must be >= 0, got -1"):
        MultiCropViews(num_local=-1)


def test_multicrop_batches_collate_per_view() -> None:
    images = torch.stack([grey_image(i) for i in range(6)])
    dataset = ViewDataset(images, None, MultiCropViews(28, 14, num_local=2, mean=(0.5,), std=(0.5,)))
    batch = next(iter(DataLoader(dataset, batch_size=3)))
    assert [tuple(v.shape) for v in batch["views"]] == [(3, 1, 28, 28)] * 2 + [(3, 1, 14, 14)] * 2


def test_views_build_from_yaml_config() -> None:
    parser = jsonargparse.ArgumentParser()
    parser.add_argument("--view", type=ViewTransform)
    yaml = """
view:
  class_path: vispre.data.MultiCropViews
  init_args: {global_size: 28, local_size: 12, num_local: 4, local_scale: [0.1, 0.3], mean: [0.3], std: [0.4]}
"""
    view = parser.instantiate_classes(parser.parse_string(yaml)).view
    assert isinstance(view, MultiCropViews) and view.num_views == 6
    simclr = parser.instantiate_classes(parser.parse_string(
        "view: {class_path: vispre.data.SimCLRViews, init_args: {img_size: 20, blur_prob: [1.0, 0.1]}}"))
    assert isinstance(simclr.view, SimCLRViews) and simclr.view(grey_image(chans=3))[1].shape == (3, 20, 20)


def test_mae_view_unchanged_signature() -> None:
    view = MAEView(28, scale=(1.0, 1.0), hflip=0.0, mean=(0.0,), std=(1.0,))(grey_image())
    torch.testing.assert_close(view[0], grey_image().float() / 255.0, rtol=0, atol=1e-6)


@pytest.mark.parametrize("chans,size,pil", [(1, (28, 28), False), (3, (40, 32), False), (3, (37, 50), True)])
def test_mae_view_is_bit_identical_to_its_torchvision_pipeline(chans: int, size: tuple[int, int], pil: bool) -> None:
    """The fast path draws the same random numbers in the same order and runs the same kernels."""
    gen = torch.Generator().manual_seed(chans)
    image = torch.randint(0, 256, (chans, *size), dtype=torch.uint8, generator=gen)
    source = v2.functional.to_pil_image(image) if pil else image
    view = MAEView(24, scale=(0.2, 1.0), hflip=0.5, mean=[0.3] * chans, std=[0.4] * chans)
    flipped = 0
    for seed in range(12):
        torch.manual_seed(seed)
        fast = view(source)[0]
        torch.manual_seed(seed)
        reference = view.transform(source)
        assert fast.shape == (chans, 24, 24) and fast.dtype == torch.float32 and type(fast) is torch.Tensor
        assert torch.equal(fast, reference.as_subclass(torch.Tensor)), f"seed {seed}"
        torch.manual_seed(seed)
        view.crop.make_params([image])
        flipped += bool(torch.rand(1) < 0.5)
    assert 0 < flipped < 12  # both branches of the flip were compared
