"""core.frames: the frame stream (pulled batch by batch, any number of times) and the up-front memory check of
a whole video as one IMAGE batch."""
import pytest
import torch

from core import frames as F
from core.errors import Cancelled, FramesTooLargeError, InputError, TalkingHeadError
from core.host import HOST


def counting_stream(n=10, h=4, w=6, batch=3):
    """A stream of ``n`` frames whose frame i is filled with i; ``pulls`` counts the runs of its source."""
    pulls = []

    def source():
        pulls.append(1)
        for i in range(0, n, batch):
            k = min(batch, n - i)
            yield torch.arange(i, i + k, dtype=torch.float32).reshape(k, 1, 1, 1).expand(k, h, w, 3).clone()
    return F.FrameStream(source, n, h, w, fps=25.0, label="test frames"), pulls


def test_a_stream_is_lazy_and_can_be_pulled_again():
    stream, pulls = counting_stream()
    assert pulls == [] and len(stream) == 10 and stream.nbytes == 10 * 4 * 6 * 3 * 4
    first = torch.cat(list(stream))
    again = stream.materialize()
    assert pulls == [1, 1] and torch.equal(first, again) and again[:, 0, 0, 0].tolist() == list(range(10))


@pytest.mark.parametrize("size", [1, 2, 3, 4, 7, 10, 25])
def test_batches_of_any_size(size):
    stream, _ = counting_stream()
    parts = list(stream.batches(size))
    assert [p.shape[0] for p in parts] == [min(size, 10 - i) for i in range(0, 10, size)]
    assert torch.cat(parts)[:, 0, 0, 0].tolist() == list(range(10))


def test_map_and_concat_keep_counts_sizes_and_order():
    a, _ = counting_stream(5, batch=2)
    b, _ = counting_stream(4, batch=4)
    halves = a.map(lambda x: x[:, ::2, ::2] / 2, 2, 3)
    assert (halves.height, halves.width, len(halves)) == (2, 3, 5)
    assert torch.cat(list(halves))[:, 0, 0, 0].tolist() == [0, 0.5, 1, 1.5, 2]
    both = F.FrameStream.concat([a, b])
    assert len(both) == 9 and torch.cat(list(both))[:, 0, 0, 0].tolist() == [0, 1, 2, 3, 4, 0, 1, 2, 3]
    with pytest.raises(InputError, match="resize them to one size"):
        F.FrameStream.concat([a, halves])


def test_from_images_makes_views_not_copies():
    images = torch.rand(7, 4, 5, 3)
    stream = F.FrameStream.from_images(images, fps=30.0, batch_size=3)
    parts = list(stream)
    assert [p.shape[0] for p in parts] == [3, 3, 1] and parts[0].data_ptr() == images.data_ptr()
    with pytest.raises(InputError, match=r"expected an IMAGE batch \[B,H,W,3\]"):
        F.FrameStream.from_images(torch.rand(4, 5, 3))


def test_a_producer_that_lies_about_its_length_or_size_is_an_error():
    short = F.FrameStream(lambda: [torch.zeros(2, 4, 6, 3)], 3, 4, 6, label="short")
    with pytest.raises(TalkingHeadError, match="short: the producer ended after 2 of the 3 frames"):
        list(short)
    long = F.FrameStream(lambda: [torch.zeros(2, 4, 6, 3)] * 2, 3, 4, 6, label="long")
    with pytest.raises(TalkingHeadError, match="made more than the 3 frames"):
        list(long)
    wrong = F.FrameStream(lambda: [torch.zeros(2, 4, 5, 3)], 2, 4, 6, label="wrong")
    with pytest.raises(TalkingHeadError, match=r"a batch of shape \(2, 4, 5, 3\) in a stream of 6x4 frames"):
        list(wrong)


def test_cancel_stops_the_pull_between_batches(monkeypatch):
    stream, _ = counting_stream(10, batch=2)
    seen = []

    def interrupt():
        if len(seen) == 2:
            raise Cancelled("cancelled by the user")

    monkeypatch.setattr(HOST, "check_interrupt", interrupt)
    with pytest.raises(Cancelled):
        for batch in stream:
            seen.append(batch.shape[0])
    assert seen == [2, 2]


def test_a_video_that_does_not_fit_is_refused_before_any_work(monkeypatch):
    """15,000 frames of 480x600 (10 minutes at 25 fps) are 51.8 GB as float32: refused with the size, what is
    free and the way out, and the producer never runs."""
    ran = []
    huge = F.FrameStream(lambda: ran.append(1) or [], 15000, 600, 480, label="LivePortraitRender's frames")
    monkeypatch.setattr(F, "available_memory", lambda: 8 * 2 ** 30)
    with pytest.raises(FramesTooLargeError, match=r"LivePortraitRender's frames: 15000 frames of 480x600 as one "
                                                  r"IMAGE batch would need 48\.3 GiB, and 8\.0 GiB of memory is free\. "
                                                  r"Connect the stream instead"):
        huge.materialize(alternative="Connect the stream instead.")
    assert ran == []
    small, _ = counting_stream()
    assert small.materialize().shape == (10, 4, 6, 3)  # 2.9 KB fits
    monkeypatch.setattr(F, "available_memory", lambda: None)  # unknown: no refusal
    huge.check_fits()


def test_available_memory_is_a_plausible_number():
    free = F.available_memory()
    assert free is None or 2 ** 20 < free < 2 ** 50


def test_a_pull_that_stops_early_ends_the_producer_at_once(monkeypatch):
    """A cancel between batches closes the producer right away, so its clean-up (a model unload) runs now."""
    closed = []

    def source():
        try:
            for i in range(5):
                yield torch.zeros(2, 4, 6, 3)
        finally:
            closed.append(1)

    stream = F.FrameStream(source, 10, 4, 6)
    calls = []

    def interrupt():
        calls.append(1)
        if len(calls) == 2:
            raise Cancelled("cancelled by the user")

    monkeypatch.setattr(HOST, "check_interrupt", interrupt)
    pull = iter(stream)
    with pytest.raises(Cancelled):
        for _ in pull:
            pass
    assert closed == [1]
