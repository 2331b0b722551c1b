"""Hostile inputs, in one place: every case gets a clear error or a correct result, and nothing is lost,
half-written or written where it must not be.

Where a case is already asserted elsewhere, the table points there; the tests here add what was missing (mostly
the node level, and the combinations). ``hostile::`` = this module.

Case -> where tested
--------------------
no face (photo)
    test_face::test_no_face_error_names_fallbacks (core); hostile::test_no_face_through_the_nodes (LoadPortrait and
    LivePortraitExtractMotion with a real S3FD that finds nothing)
no face (SDA alignment, FOM find_best_frame)
    test_sda::test_no_face_error_names_the_alternatives, test_classic::test_sda_node;
    test_fom::test_node_find_best_frame_uses_the_landmark_match
several faces: the largest is used, and it says so
    test_face::test_largest_face_is_used (core); hostile::test_several_faces_largest_is_used_and_reported (node UI
    text and log)
tiny images 1x1, 8x8 (and 20x300)
    test_image::test_tiny_image (decoding); hostile::test_tiny_images_end_to_end (LoadPortrait ->
    LivePortraitRender -> MuxVideo); hostile::test_tiny_images_with_the_s3fd_detector
huge images 12000x9000 (and a 1.6-gigapixel bomb)
    test_image::test_pixel_limit (limit logic, small files); hostile::test_huge_image_files_are_refused_before_decoding
    (header-only files: refused from the header, nothing of that size allocated). Widget limits (crop_size <= 2048,
    ResizePad256 size <= 4096) are enforced by validation: test_graph::test_bad_literals,
    test_headless::test_bad_inputs_fail_clearly_and_write_nothing
RGBA, LA, grayscale, palette, 16-bit, CMYK images
    test_image (every Pillow mode, core); hostile::test_image_modes_through_load_portrait (node: RGB out, nothing lost)
silent audio
    test_audio::test_prepare_checks_and_converts, test_audio_features::test_audio_errors,
    test_procedural::test_silence_closes_the_mouth_and_energy_opens_it_monotonically;
    hostile::test_audio_to_embedding_refuses_bad_audio_before_loading_a_model,
    hostile::test_silent_and_empty_audio_in_the_other_nodes
0-length audio
    test_audio::test_load_errors, test_headless::test_corrupt_image_and_empty_audio,
    test_motion_nodes::test_procedural_node_drives_mouth_and_eyes;
    hostile::test_audio_to_embedding_refuses_bad_audio_before_loading_a_model,
    hostile::test_silent_and_empty_audio_in_the_other_nodes
1-sample audio (shorter than one video frame)
    test_audio::test_audio_shorter_than_one_video_frame_is_refused (core);
    test_finite_inputs::test_audio_shorter_than_one_frame_is_refused_by_the_nodes_that_make_frames (AudioToEmbedding,
    ProceduralMotion, SDABase), test_finite_inputs::test_one_sample_speech_file_fails_the_classic_run (headless)
NaN/inf audio samples (a damaged float WAV; ComfyUI's own LoadAudio passes them on)
    test_audio::test_non_finite_samples_are_refused_naming_the_file_and_count (load_audio);
    test_finite_inputs::test_nan_audio_is_refused_by_the_audio_nodes_before_a_model_loads,
    test_finite_inputs::test_nan_speech_file_fails_the_run_and_writes_no_video (classic and Ditto, headless),
    test_finite_inputs::test_nan_audio_from_comfyuis_load_audio_is_refused (inside ComfyUI),
    test_finite_inputs::test_headless_load_video_refuses_a_nan_sound_track_instead_of_dropping_it
NaN/inf images, motion, speech features, portraits and FLOATs at any node input; a model overflowing into NaN
    test_finite_inputs::test_every_node_refuses_non_finite_inputs_naming_node_and_input (every node, every such
    input), test_finite_inputs::test_nan_image_refused_by_load_portrait, test_nan_motion_file_refused_by_load_motion,
    test_model_output_with_nan_is_stopped_naming_the_node, test_liveportrait_renderers_never_hand_on_nan_frames
audio file cut short (WAV, FLAC): used, with a warning saying how much was read
    test_audio::test_truncated_wav_is_used_with_a_warning_saying_how_much_was_read,
    test_audio::test_truncated_flac_warns_and_other_formats_are_not_guessed;
    test_finite_inputs::test_cut_speech_file_makes_the_video_and_says_how_much_was_read (headless)
8 kHz and 48 kHz stereo audio
    test_audio::test_prepare_checks_and_converts (8 kHz),
    test_audio_features::test_resamples_44k_stereo_like_core_audio,
    test_video::test_mp4_streams_size_count_and_audio_fitted (44.1 kHz stereo), test_segments::test_join_segments_node;
    hostile::test_audio_rates_through_the_nodes (MuxVideo, SDABase, ProceduralMotion)
10-minute audio (cheap: stand-in encoder, tiny frames, no model run)
    hostile::test_ten_minutes_through_audio_to_embedding_limits (and 31 minutes refused:
    hostile::test_audio_to_embedding_refuses_bad_audio_before_loading_a_model),
    hostile::test_ten_minutes_of_procedural_motion, hostile::test_ten_minutes_through_mux_video_audio_fitting
MuxVideo fps vs motion fps
    hostile::test_mux_fps_differs_from_the_motion_fps
driving video at 30 / 29.97 fps
    hostile::test_driving_video_at_other_frame_rates (LoadVideo -> ExtractMotion -> Render -> MuxVideo)
JoinSegments: segments at another fps, mixed audio rates
    test_segments::test_join_segments_node (25 fps); hostile::test_join_segments_at_29_97_fps_with_hostile_audio (an
    IMAGE has no fps: JoinSegments' fps times every segment)
corrupt / truncated checkpoints
    test_weights::test_corrupt_and_truncated_files, test_sda::test_corrupt_and_mismatched_checkpoints,
    test_audio_features::test_bad_hubert_files; hostile::test_bad_checkpoints_through_the_nodes[*-truncated]
wrong-family checkpoints (FOM file as LivePortrait's appearance extractor, Ditto file picked as JoyVASA, ...)
    test_fom::test_loading_errors (not a FOM file);
    hostile::test_bad_checkpoints_through_the_nodes[lp-fom-as-appearance, joyvasa-given-ditto, ditto-given-joyvasa,
    fom-given-sda, sda-given-fom]
wrong-size checkpoints
    test_fom::test_loading_errors, test_sda::test_corrupt_and_mismatched_checkpoints,
    test_weights::test_check_state_dict_lists_problems;
    hostile::test_bad_checkpoints_through_the_nodes[lp-wrong-size, ditto-wrong-size]
a pickle that tries to run code
    test_weights::test_code_carrying_pickle_is_refused, test_weights::test_plain_pickle_loader (core; JoyVASA's
    motion_template.pkl goes through the same load_pickle); hostile::test_bad_checkpoints_through_the_nodes[lp-code,
    fom-code, sda-code, ditto-code-cfg] (side effect checked)
path traversal in file-name inputs: ../x, absolute paths, symlinks leading out
    test_image::test_safe_join_refuses, test_image::test_safe_join_symlinks (core),
    test_headless::test_bad_inputs_fail_clearly_and_write_nothing,
    test_headless::test_hostile_file_names_inside_a_shared_workflow, test_lp_nodes::test_save_and_load_motion_nodes
    (LoadMotion '../'); hostile::test_file_name_inputs_stay_inside_the_input_folder (LoadPortrait, LoadMotion,
    LoadAudio, LoadImage, LoadVideo)
hostile but legal file names (newline, leading '-', unicode)
    hostile::test_odd_but_legal_file_names_work
hostile filename_prefix: ../../evil, absolute, NUL, newline, symlinked sub-folder
    test_video::test_output_naming_and_traversal (core), test_headless::test_bad_inputs_fail_clearly_and_write_nothing;
    hostile::test_filename_prefix_never_writes_outside_the_output_folder (MuxVideo, SaveMotion; standalone and under
    ComfyUI)
output folder not writable
    test_video::test_unwritable_output_folder (core); hostile::test_output_folder_not_writable (MuxVideo, SaveMotion:
    a file where the folder should be, a folder squatting on the temporary name; both bite as root);
    hostile::test_output_folder_read_only (chmod; skipped when running as root)
cancel mid-run: MuxVideo
    test_nodes::test_cancel_mid_mux_leaves_nothing, test_headless::test_cancel_leaves_no_partial_video,
    test_video::test_failure_and_cancel_leave_no_file; hostile::test_cancel_mux_video_while_holding_the_last_frame
cancel mid-run: FOMAnimate
    test_fom::test_node_cancel_between_batches
cancel mid-run: LivePortraitRender, MotionDiT, SDABase (model cache usable afterwards)
    hostile::test_cancel_liveportrait_render, hostile::test_cancel_motion_dit, hostile::test_cancel_sda_base
"""
import importlib
import os
import resource
import shutil
import struct
import tempfile
import time
import zlib
from contextlib import contextmanager
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from conftest import FIXTURES, ROOT, lp_set, sub
from test_classic import classic_models
from test_lp_nodes import models_dir

AS_IS = "as is (already face crops)"
DETECT = "detect face (one box for the video)"


# ============================================================================ helpers
def _nodes(pack):
    return pack.NODE_CLASS_MAPPINGS


def _portrait(pack, h=90, w=70, seed=0):
    img = torch.rand(1, h, w, 3, generator=torch.Generator().manual_seed(seed))
    return _nodes(pack)["TalkingHead_LoadPortrait"]().run("", "center", 256, 1.8, -0.1, image_in=img)["result"][0]


def _tone(seconds, sr=16000, channels=1, freq=220.0, amp=0.3):
    t = torch.arange(int(round(seconds * sr))) / sr
    w = amp * torch.sin(2 * torch.pi * freq * t)
    return {"waveform": w.reshape(1, 1, -1).repeat(1, channels, 1).contiguous(), "sample_rate": sr}


def _motion(pack, n, fps=25.0, seed=0):
    """A small non-composed LivePortrait motion (a nod and some expression)."""
    Motion = sub(pack, "core.liveportrait.motion").Motion
    g = torch.Generator().manual_seed(seed)
    k = torch.linspace(0, 1, n)
    return Motion(exp=0.01 * torch.randn(n, 21, 3, generator=g), pitch=5 * k, yaw=-3 * k, roll=k, t=torch.zeros(n, 3),
                  scale=torch.ones(n), fps=fps)


def _tree(root: Path, skip: Path = None):
    """Every path under ``root`` (relative), ignoring ``skip`` and what is under it."""
    out = set()
    for folder, dirs, files in os.walk(root):  # symlinks are listed, not followed
        here = Path(folder)
        if skip is not None and (here == skip or skip in here.parents):
            dirs[:] = []
            continue
        out.update((here / n).relative_to(root).as_posix() for n in dirs + files)
    return out


def _files(folder: Path):
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


def _png_header_only(path: Path, w: int, h: int) -> Path:
    """A PNG that claims ``w x h`` pixels and holds none: opening it costs nothing, decoding would."""
    def chunk(t, d):
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b""))
    return path


class _MakesDir:
    """Unpickling this calls os.mkdir(target): the side effect shows whether pickled code ran."""

    def __init__(self, target):
        self.target = str(target)

    def __reduce__(self):
        return (os.mkdir, (self.target,))


class _Execs:
    def __init__(self, target):
        self.code = f"open({str(target)!r}, 'w').write('pwned')"

    def __reduce__(self):
        return (exec, (self.code,))


def _ditto_embeddings(pack, frames=13):
    """What AudioToEmbedding's HuBERT-large setting hands to MotionDiT, without running HuBERT."""
    af = sub(pack, "core.audio_features")
    feats = 0.1 * torch.randn(frames, 1024, generator=torch.Generator().manual_seed(1))
    spec = {"encoder": af.HUBERT_NAME, "layer": af.LAST, "chunking": "ditto-offline", "dim": 1024,
            "sample_rate": 16000}
    return af.AudioEmbeddings(features=feats, spec=spec, fps=25.0, num_frames=frames, audio_samples=frames * 640)


def _tiny_lmdm(path: Path) -> Path:
    state = load_file(str(FIXTURES / "ditto" / "weights.safetensors"))
    save_file({k: v for k, v in state.items() if not k.startswith(("stitch.", "schedule."))}, str(path),
              metadata={"num_heads": "4"})
    return path


def _tiny_joyvasa_state():
    return {k: v for k, v in load_file(str(FIXTURES / "joyvasa" / "weights.safetensors")).items()
            if not k.startswith("retarget.")}


def _dit_args(checkpoint, steps=2):
    return dict(checkpoint=checkpoint, steps=steps, guidance_scale=2.0, seed=0, pose_strength=1.0,
                expression_strength=1.0, lip_strength=1.0, emotion="Neutral")


# The tiny networks gain nothing from a second thread, and lose a lot when the CPU is shared.
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def offline(monkeypatch):
    monkeypatch.setenv("TALKINGHEAD_OFFLINE", "1")


# ============================================================================ faces
@pytest.fixture(scope="module")
def s3fd_blind(tmp_path_factory):
    """S3FD weights (random backbone) whose classifier never sees a face: a real detector that finds none."""
    from face_alignment.detection.sfd.net_s3fd import s3fd

    torch.manual_seed(0)
    net = s3fd()
    with torch.no_grad():
        for name, module in net.named_modules():
            if name.endswith("mbox_conf"):
                module.weight.zero_()
                module.bias.fill_(10.0)   # background
                module.bias[-1] = -10.0   # face (the last channel in every head)
    path = tmp_path_factory.mktemp("s3fd") / "s3fd.safetensors"
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path))
    return path


def _install_s3fd(root: Path, weights: Path):
    folder = root / "face_detection"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "s3fd.safetensors").symlink_to(weights)


@pytest.mark.parametrize("hw", [(1, 1), (8, 8), (20, 300), (64, 48)])
def test_tiny_images_with_the_s3fd_detector(pack, tmp_path, s3fd_blind, offline, hw):
    """S3FD's backbone needs 32 pixels a side: a smaller (or very flat) picture must end in the clear
    "no face" message that names the fallbacks, never in a PyTorch size error."""
    _install_s3fd(tmp_path / "models", s3fd_blind)
    errors = sub(pack, "core.errors")
    node = _nodes(pack)["TalkingHead_LoadPortrait"]()
    with pytest.raises(errors.InputError) as err:
        node.run("", "face-alignment sfd", 64, 1.8, -0.1, image_in=torch.rand(1, *hw, 3))
    msg = str(err.value)
    assert "No face was found" in msg and '"center"' in msg and "none (already cropped)" in msg
    # and a detector that does see faces still runs on them (boxes in the picture's own pixels)
    face = sub(pack, "core.face")
    det = face.make_detector("face-alignment sfd", lambda fid: s3fd_blind, "cpu")
    with torch.no_grad():
        for name, module in det.net.named_modules():
            if name.endswith("mbox_conf"):
                module.bias[-1] = 20.0
    found = det.detect(torch.rand(*hw, 3))
    assert found and all(np.isfinite(f.box).all() and f.width > 0 and f.height > 0 for f in found)


def test_no_face_through_the_nodes(pack, tmp_path, s3fd_blind, offline):
    """LoadPortrait and LivePortraitExtractMotion with a detector that finds nothing: errors naming the way out."""
    _install_s3fd(tmp_path / "models", s3fd_blind)
    models_dir(tmp_path / "models")
    errors = sub(pack, "core.errors")
    (tmp_path / "input").mkdir()
    Image.fromarray(np.full((120, 100, 3), 128, np.uint8)).save(tmp_path / "input" / "wall.png")
    with pytest.raises(errors.InputError, match=r'(?s)No face was found in the image.*"center".*none \(already'):
        _nodes(pack)["TalkingHead_LoadPortrait"]().run("wall.png", "face-alignment sfd", 256, 1.8, -0.1)
    with pytest.raises(errors.InputError, match=r'(?s)No face was found in the driving video.*"center"'):
        _nodes(pack)["TalkingHead_LivePortraitExtractMotion"]().run(
            lp_set(pack), torch.full((3, 64, 64, 3), 0.5), 25.0, DETECT, "face-alignment sfd", 2)
    assert _files(tmp_path / "output") == []


def test_several_faces_largest_is_used_and_reported(pack, monkeypatch, caplog):
    face = sub(pack, "core.face")

    class Three(face.FaceDetector):
        name = "three"

        def detect(self, image):
            return [face.Face((5, 5, 25, 25), 0.99), face.Face((40, 30, 90, 85), 0.6), face.Face((0, 60, 8, 70), 0.9)]

    monkeypatch.setattr(sub(pack, "core.face.portrait"), "get_detector", lambda *a, **k: Three())
    img = torch.rand(1, 100, 120, 3)
    with caplog.at_level("WARNING"):
        res = _nodes(pack)["TalkingHead_LoadPortrait"]().run("", "face-alignment sfd", 64, 1.5, 0.0, image_in=img)
    portrait = res["result"][0]
    assert portrait.record.bbox == (40.0, 30.0, 90.0, 85.0) and portrait.record.num_faces == 3
    assert "3 faces found, the largest was used" in res["ui"]["text"][0]
    assert any("largest" in r.getMessage() for r in caplog.records)
    # the crop is centred on the largest face: its centre maps to the crop's centre
    assert np.allclose(portrait.record.to_crop([[65.0, 57.5]]), [[31.5, 31.5]])


# ============================================================================ image sizes and modes
@pytest.mark.parametrize("hw", [(1, 1), (8, 8)])
def test_tiny_images_end_to_end(pack, tmp_path, hw):
    """A 1x1 / 8x8 file: LoadPortrait (center) gives a sensible crop, LivePortrait renders it and pastes the face
    back into the tiny picture, MuxVideo writes an even-sized mp4."""
    models_dir(tmp_path / "models")
    (tmp_path / "input").mkdir()
    pixels = np.random.default_rng(0).integers(0, 256, (*hw, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "input" / "tiny.png")
    res = _nodes(pack)["TalkingHead_LoadPortrait"]().run("tiny.png", "center", 64, 1.8, -0.1)
    portrait, crop, full = res["result"]
    assert full.shape == (1, *hw, 3) and torch.equal(full[0], torch.from_numpy(pixels).float() / 255)
    assert crop.shape == (1, 64, 64, 3) and torch.isfinite(crop).all() and 0 <= crop.min() and crop.max() <= 1
    if hw == (1, 1):  # one pixel, edge-padded: the crop is that colour
        assert torch.allclose(crop[0], full[0, 0, 0].expand(64, 64, 3), atol=1e-6)
    frames, faces, _ = _nodes(pack)["TalkingHead_LivePortraitRender"]().run(lp_set(pack), portrait, _motion(pack, 2),
                                                                             True, "all", True, 1.0, 2)
    assert frames.shape == (2, *hw, 3) and torch.isfinite(frames).all()
    out = _nodes(pack)["TalkingHead_MuxVideo"]().run(frames, 25.0, "tiny", preset="ultrafast")
    info = sub(pack, "core.video").probe(out["result"][0])
    assert (info["video"]["width"], info["video"]["height"]) == (hw[1] + hw[1] % 2, hw[0] + hw[0] % 2)
    assert info["video"]["frames"] == 2


def test_huge_image_files_are_refused_before_decoding(pack, tmp_path):
    """12000x9000 (108 MP, 1.3 GB as an IMAGE) is over the 100 MP limit; a 40000x40000 file is a decompression
    bomb. Both are refused from the header alone: nothing near their size is ever allocated."""
    (tmp_path / "input").mkdir()
    _png_header_only(tmp_path / "input" / "big.png", 12000, 9000)
    _png_header_only(tmp_path / "input" / "bomb.png", 40000, 40000)
    errors = sub(pack, "core.errors")
    node = _nodes(pack)["TalkingHead_LoadPortrait"]()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    t0 = time.perf_counter()
    assert node.VALIDATE_INPUTS("big.png") is True  # the file exists; the size is checked when it is read
    with pytest.raises(errors.InputError, match=r"big\.png' is 12000x9000 = 108\.0 megapixels, above the limit of "
                                                r"100\.0 megapixels; resize it first"):
        node.run("big.png", "center", 512, 1.8, -0.1)
    with pytest.raises(errors.InputError, match=r"bomb\.png' .*too large"):
        node.run("bomb.png", "center", 512, 1.8, -0.1)
    with pytest.raises(errors.InputError, match="megapixels"):
        sub(pack, "headless.builtins").LoadImage().load_image("big.png")
    assert time.perf_counter() - t0 < 5
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 200_000  # < 200 MB more, not 1.3 GB


def _mode_files(folder: Path):
    """(name, expected full image [H,W,3] float64) for every hostile pixel format."""
    rng = np.random.default_rng(5)
    rgb = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    alpha = rng.integers(0, 256, (64, 64), dtype=np.uint8)
    alpha[:8] = 0  # fully transparent rows keep their colour
    out = []
    Image.fromarray(np.dstack([rgb, alpha]), "RGBA").save(folder / "rgba.png")
    out.append(("rgba.png", rgb / 255.0))
    gray = rgb[..., 0]
    Image.fromarray(np.dstack([gray, alpha]), "LA").save(folder / "la.png")
    out.append(("la.png", np.repeat(gray[..., None] / 255.0, 3, -1)))
    Image.fromarray(gray, "L").save(folder / "gray.png")
    out.append(("gray.png", np.repeat(gray[..., None] / 255.0, 3, -1)))
    g16 = (rng.integers(0, 65536, (64, 64))).astype(np.uint16)
    g16[0, 0], g16[0, 1] = 256, 257  # one 16-bit step apart, the same 8-bit value
    Image.fromarray(g16).save(folder / "gray16.png")
    out.append(("gray16.png", np.repeat(g16[..., None] / 65535.0, 3, -1)))
    Image.new("CMYK", (64, 64), (255, 0, 0, 0)).save(folder / "cyan.tif")
    out.append(("cyan.tif", np.broadcast_to(np.array([0.0, 1.0, 1.0]), (64, 64, 3))))
    pal = Image.fromarray((rgb[..., 0] // 64).astype(np.uint8), "P")
    pal.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 255, 255, 255, 255] + [0] * 756)
    pal.save(folder / "palette.png", transparency=0)
    table = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 255]]) / 255.0
    out.append(("palette.png", table[rgb[..., 0] // 64]))
    return out


def test_image_modes_through_load_portrait(pack, tmp_path):
    """RGBA, LA, grayscale, 16-bit, CMYK and palette files: LoadPortrait hands on RGB float images, the colour as
    stored (transparent pixels keep theirs), 16-bit precision kept in the full image."""
    (tmp_path / "input").mkdir()
    node = _nodes(pack)["TalkingHead_LoadPortrait"]()
    for name, expected in _mode_files(tmp_path / "input"):
        portrait, crop, full = node.run(name, "none (already cropped)", 64, 1.8, -0.1)["result"]
        assert full.shape == (1, 64, 64, 3) and full.dtype == torch.float32, name
        assert np.allclose(full[0].double().numpy(), expected, atol=1e-6), name
        assert torch.equal(crop, full), name  # the whole picture at its own size: pixel-exact
        assert portrait.crop.shape == (1, 64, 64, 3)
    full16 = node.run("gray16.png", "none (already cropped)", 64, 1.8, -0.1)["result"][2]
    assert float(full16[0, 0, 1, 0] - full16[0, 0, 0, 0]) == pytest.approx(1 / 65535, abs=1e-8)


# ============================================================================ audio
def test_audio_to_embedding_refuses_bad_audio_before_loading_a_model(pack, monkeypatch):
    """0 samples, silence (48 kHz stereo zeros) and 31 minutes: refused with a message saying why, and no encoder
    is loaded or downloaded for them."""
    af = sub(pack, "core.audio_features")

    def no_encoder(*a, **k):
        raise AssertionError("an encoder was loaded for audio that should have been refused")

    monkeypatch.setattr(af, "get_encoder", no_encoder)
    errors = sub(pack, "core.errors")
    node = _nodes(pack)["TalkingHead_AudioToEmbedding"]()
    with pytest.raises(errors.InputError, match="empty"):
        node.run({"waveform": torch.zeros(1, 2, 0), "sample_rate": 48000}, "HuBERT-large (Ditto)")
    with pytest.raises(errors.InputError, match="silent"):
        node.run({"waveform": torch.zeros(1, 2, 48000), "sample_rate": 48000}, "HuBERT-large (Ditto)")
    # 31 minutes, cheaply: at 100 Hz that is only 186,000 samples; the limit is on the duration
    long = {"waveform": 0.1 * torch.randn(1, 1, 31 * 60 * 100), "sample_rate": 100}
    with pytest.raises(errors.InputError, match=r"31\.0 minutes long; the limit is 30 minutes"):
        node.run(long, "HuBERT-large (Ditto)")


class _ZeroHubert:
    """A stand-in for HuBERT-large: the right shapes, no compute."""

    name, dim, sample_rate, layer = "hubert-large-ls960-ft", 1024, 16000, "last_hidden_state"

    def __init__(self):
        self.chunks = 0

    def __call__(self, chunks):
        self.chunks += chunks.shape[0]
        return torch.zeros(chunks.shape[0], 20, 1024)


def test_ten_minutes_through_audio_to_embedding_limits(pack, monkeypatch):
    """10 minutes of 8 kHz speech-like audio is under the 30-minute limit: every video frame gets its row and its
    loudness, the encoder sees bounded batches (16 chunks), and the progress reaches the end."""
    af = sub(pack, "core.audio_features")
    enc = _ZeroHubert()
    monkeypatch.setattr(af, "get_encoder", lambda *a, **k: enc)
    sr, seconds = 8000, 600
    t = torch.arange(sr * seconds) / sr
    speech = 0.3 * torch.sin(2 * torch.pi * 180 * t) * ((t % 2) < 1)  # 1 s on, 1 s off
    seen = []
    monkeypatch.setattr(sub(pack, "nodes.motion"), "progress", lambda label: lambda d, n, *p: seen.append((d, n)))
    audio = {"waveform": speech.reshape(1, 1, -1), "sample_rate": sr}
    (emb,) = _nodes(pack)["TalkingHead_AudioToEmbedding"]().run(audio, "HuBERT-large (Ditto)")
    assert emb.num_frames == 15000 and emb.features.shape == (15000, 1024) and emb.seconds == pytest.approx(600)
    assert enc.chunks == 3000 and seen[-1][0] == seen[-1][1] == 3000
    assert max(b - a for (a, _), (b, _) in zip(seen, seen[1:])) <= 16  # 16 chunks per encoder call
    env = emb.envelope
    assert env.shape == (15000,) and float(env[25:50].max()) < 0.01 and float(env[5:20].min()) > 0.5


def test_ten_minutes_of_procedural_motion(pack):
    """ProceduralMotion's maths over 10 minutes (15000 frames): one frame per video frame, the mouth shut in every
    silence, blinks at the natural rate, the head within its bounds."""
    pm = sub(pack, "core.motion.procedural")
    SourceMotion = sub(pack, "core.liveportrait.motion").SourceMotion
    src = SourceMotion(kp=torch.zeros(1, 21, 3), exp=torch.zeros(1, 21, 3), pitch=torch.zeros(1, 1),
                       yaw=torch.zeros(1, 1), roll=torch.zeros(1, 1), t=torch.zeros(1, 3), scale=torch.ones(1, 1))
    sr, seconds = 16000, 600
    t = torch.arange(sr * seconds) / sr
    speech = 0.3 * torch.sin(2 * torch.pi * 180 * t) * ((t % 4) < 2)  # 2 s on, 2 s off
    t0 = time.perf_counter()
    motion = pm.procedural_motion({"waveform": speech.reshape(1, 1, -1), "sample_rate": sr}, src, seed=3)
    assert time.perf_counter() - t0 < 10
    assert len(motion) == 15000 and motion.composed and motion.fps == 25.0
    lip = motion.lip[:, 0]
    frame_t = torch.arange(15000) / 25.0
    silent = ((frame_t % 4) > 2.4) & ((frame_t % 4) < 3.9)
    speaking = ((frame_t % 4) > 0.2) & ((frame_t % 4) < 1.8)
    assert float(lip[silent].max()) == 0.0 and float(lip[speaking].min()) > 0.1
    closed = (motion.eyes[:, 0] < 0.05).int()
    blinks = int(((closed[1:] - closed[:-1]) == 1).sum())
    assert 600 / 6.5 <= blinks <= 600 / 2.4
    for axis, limit in pm.HEAD_DEGREES.items():
        extra = pm.NOD_DEGREES if axis == "pitch" else 0.0
        assert float(getattr(motion, axis).abs().max()) <= 2 * limit + extra + 1e-4


def test_ten_minutes_through_mux_video_audio_fitting(pack, tmp_path):
    """10 minutes of audio under 2 frames: trimmed to the 2 frames (0.08 s); with extend_to_audio the last frame is
    held for all 10 minutes (at 2 fps: 1200 frames) and the whole track is kept, its last seconds included. (The
    track is silent apart from a tone at both ends, which keeps the AAC encoding cheap.)"""
    sr = 8000
    t = torch.arange(sr * 600) / sr
    wave = 0.3 * torch.sin(2 * torch.pi * 200 * t) * ((t < 1) | (t >= 598))
    audio = {"waveform": wave.reshape(1, 1, -1), "sample_rate": sr}
    video = sub(pack, "core.video")
    load_audio = sub(pack, "core.audio").load_audio
    node = _nodes(pack)["TalkingHead_MuxVideo"]()
    frames = torch.rand(2, 8, 8, 3)
    short = node.run(frames, 25.0, "long/short", audio=audio, preset="ultrafast")["result"][0]
    assert video.probe(short)["video"]["frames"] == 2 and video.audio_duration(short) == pytest.approx(0.08, abs=1e-3)
    held = node.run(frames, 2.0, "long/held", audio=audio, preset="ultrafast", extend_to_audio=True)["result"][0]
    info = video.probe(held)
    assert info["video"]["frames"] == 1200 and info["audio"]["sample_rate"] == sr
    back = load_audio(held)
    assert back.duration == pytest.approx(600.0, abs=1e-3)
    rms = lambda a, b: float(back.waveform[0, int(a * sr):int(b * sr)].pow(2).mean().sqrt())  # noqa: E731
    assert rms(0.2, 0.8) > 0.15 and rms(300, 301) < 0.01 and rms(598.2, 599.8) > 0.15  # the end is not lost
    assert _files(tmp_path / "output") == ["long/held_00001_.mp4", "long/short_00001_.mp4"]


@pytest.mark.parametrize("sr,channels", [(8000, 1), (48000, 2)])
def test_audio_rates_through_the_nodes(pack, tmp_path, sr, channels):
    """8 kHz mono and 48 kHz stereo: MuxVideo keeps the rate and channels (fitted to the frames); SDABase and
    ProceduralMotion give the same number of frames as for 16 kHz mono."""
    classic_models(tmp_path / "models")
    models_dir(tmp_path / "models")
    audio = _tone(0.5, sr, channels)
    out = _nodes(pack)["TalkingHead_MuxVideo"]().run(torch.rand(10, 16, 16, 3), 25.0, "rates", audio=audio,
                                                     preset="ultrafast")["result"][0]
    video = sub(pack, "core.video")
    info = video.probe(out)
    assert info["audio"]["sample_rate"] == sr and info["audio"]["channels"] == channels
    assert video.audio_duration(out) == pytest.approx(0.4, abs=1e-3)
    sda = _nodes(pack)["TalkingHead_SDABase"]()
    face = torch.rand(1, 40, 30, 3, generator=torch.Generator().manual_seed(0))
    frames, used, fps, _ = sda.run(face, audio, "already aligned", 0, "tiny-grid.dat")
    ref, _, _, _ = sda.run(face, _tone(0.5), "already aligned", 0, "tiny-grid.dat")
    assert frames.shape == ref.shape and fps == 25.0 and used["sample_rate"] == 50000
    assert used["waveform"].shape == (1, 1, 25000)  # mono at the model's rate, 0.5 s
    portrait = _portrait(pack)
    procedural, lps = _nodes(pack)["TalkingHead_ProceduralMotion"](), lp_set(pack)
    motion, _ = procedural.run(lps, portrait, audio, 25.0, 0, 1.0, 1.0, True)
    ref_motion, _ = procedural.run(lps, portrait, _tone(0.5), 25.0, 0, 1.0, 1.0, True)
    assert len(motion) == len(ref_motion) == 13
    assert torch.allclose(motion.lip, ref_motion.lip, atol=0.02)


def test_silent_and_empty_audio_in_the_other_nodes(pack, tmp_path):
    """Silence is a valid input where it means something (a closed mouth, a silent track); no samples at all is
    refused by the speech models and makes MuxVideo write the video without an audio track."""
    classic_models(tmp_path / "models")
    models_dir(tmp_path / "models")
    errors = sub(pack, "core.errors")
    video = sub(pack, "core.video")
    silent = {"waveform": torch.zeros(1, 2, 48000), "sample_rate": 48000}
    empty = {"waveform": torch.zeros(1, 1, 0), "sample_rate": 16000}
    mux = _nodes(pack)["TalkingHead_MuxVideo"]()
    out = mux.run(torch.rand(5, 16, 16, 3), 25.0, "silent", audio=silent, preset="ultrafast")["result"][0]
    assert video.probe(out)["audio"]["channels"] == 2 and video.audio_duration(out) == pytest.approx(0.2, abs=1e-3)
    out = mux.run(torch.rand(5, 16, 16, 3), 25.0, "empty", audio=empty, extend_to_audio=True,
                  preset="ultrafast")["result"][0]
    info = video.probe(out)
    assert info["audio"] is None and info["video"]["frames"] == 5
    motion, _ = _nodes(pack)["TalkingHead_ProceduralMotion"]().run(lp_set(pack), _portrait(pack), silent, 25.0, 0,
                                                                  1.0, 1.0, True)
    assert len(motion) == 25 and float(motion.lip.abs().max()) == 0.0  # a closed mouth, not noise made loud
    sda = _nodes(pack)["TalkingHead_SDABase"]()
    face = torch.rand(1, 40, 30, 3)
    frames, _, _, _ = sda.run(face, silent, "already aligned", 0, "tiny-grid.dat")
    assert frames.shape[0] == 25 and torch.isfinite(frames).all()
    with pytest.raises(errors.InputError, match="empty|no samples|0 samples"):
        sda.run(face, empty, "already aligned", 0, "tiny-grid.dat")


# ============================================================================ frame rates
def test_mux_fps_differs_from_the_motion_fps(pack, tmp_path):
    """An IMAGE batch carries no frame rate: MuxVideo's fps decides the duration and the audio is fitted to it.
    30 frames of a 30 fps motion over 1 s of speech: at 30 fps exactly 1 s; at 25 fps 1.2 s with the speech whole
    (padded); at 50 fps 0.6 s, and the speech is only kept whole with extend_to_audio."""
    video = sub(pack, "core.video")
    speech = _tone(1.0, 16000)
    frames = torch.rand(30, 16, 16, 3)
    node = _nodes(pack)["TalkingHead_MuxVideo"]()
    for fps, seconds, extend, n in [(30.0, 1.0, False, 30), (25.0, 1.2, False, 30), (50.0, 0.6, False, 30),
                                    (50.0, 1.0, True, 50)]:
        out = node.run(frames, fps, f"fps{int(fps)}_{extend}", audio=speech, extend_to_audio=extend,
                       preset="ultrafast")["result"][0]
        info = video.probe(out)
        assert info["video"]["fps"] == fps and info["video"]["frames"] == n
        assert video.audio_duration(out) == pytest.approx(seconds, abs=1e-3)
        decoded = sub(pack, "core.audio").load_audio(out)
        head = decoded.waveform[0, : int(0.5 * decoded.sample_rate)]
        assert float(head.abs().max()) > 0.1  # the speech is there from the start


@pytest.mark.parametrize("rate", [Fraction(30), Fraction(30000, 1001)])
def test_driving_video_at_other_frame_rates(pack, tmp_path, rate):
    """A 30 / 29.97 fps driving video with 48 kHz stereo sound: LoadVideo -> GetVideoComponents ->
    LivePortraitExtractMotion -> LivePortraitRender -> MuxVideo keeps every frame, the rate and the sync."""
    models_dir(tmp_path / "models")
    video = sub(pack, "core.video")
    builtins = sub(pack, "headless.builtins")
    (tmp_path / "input").mkdir()
    n = 8
    seconds = float(n / rate)
    with video.VideoWriter(tmp_path / "input" / "drive.mp4", fps=float(rate), audio=_tone(seconds, 48000, 2),
                           preset="ultrafast", expected_frames=n) as w:
        w.write(torch.rand(n, 64, 64, 3, generator=torch.Generator().manual_seed(2)))
    (clip,) = builtins.LoadVideo().execute("drive.mp4")
    frames, audio, fps = builtins.GetVideoComponents().execute(clip)
    assert frames.shape[0] == n and fps == pytest.approx(float(rate), rel=1e-5)
    lps = lp_set(pack)
    (motion,) = _nodes(pack)["TalkingHead_LivePortraitExtractMotion"]().run(lps, frames, fps, AS_IS, "center", 4)
    assert len(motion) == n and motion.fps == fps
    rendered, _, _ = _nodes(pack)["TalkingHead_LivePortraitRender"]().run(lps, _portrait(pack), motion, True, "all",
                                                                          True, 1.0, 4)
    out = _nodes(pack)["TalkingHead_MuxVideo"]().run(rendered, motion.fps, "drive", audio=audio,
                                                     preset="ultrafast")["result"][0]
    info = video.probe(out)
    assert info["video"]["frames"] == n and info["video"]["fps"] == pytest.approx(float(rate), abs=0.01)
    assert info["audio"]["sample_rate"] == 48000 and info["audio"]["channels"] == 2
    assert video.audio_duration(out) == pytest.approx(seconds, abs=1e-3)


def test_join_segments_at_29_97_fps_with_hostile_audio(pack):
    """Segments at 29.97 fps with 48 kHz stereo, 8 kHz mono, no samples and no audio: each segment's sound starts
    exactly at its first frame on the joined timeline (no drift), at the first segment's rate and channels.
    (An IMAGE batch carries no frame rate, so segments made at different rates cannot be told apart here:
    JoinSegments' fps is the one every segment is timed by; resample the frames first.)"""
    fps = 30000 / 1001
    audio_mod = sub(pack, "core.audio")
    node = _nodes(pack)["TalkingHead_JoinSegments"]()
    seg = [torch.full((n, 8, 8, 3), v) for n, v in ((31, 0.1), (17, 0.5), (9, 0.7), (12, 0.9))]
    a1 = {"waveform": torch.ones(1, 2, 48000 * 2), "sample_rate": 48000}     # longer than its frames
    a2 = {"waveform": 0.5 * torch.ones(1, 1, 800), "sample_rate": 8000}      # shorter
    a3 = {"waveform": torch.zeros(1, 1, 0), "sample_rate": 8000}             # no samples
    frames, audio, _ = node.run(seg[0], seg[1], fps, audio_1=a1, audio_2=a2, images_3=seg[2], audio_3=a3,
                                images_4=seg[3])
    assert frames.shape[0] == 69 and torch.equal(frames[31:48], seg[1])
    w, sr = audio["waveform"][0], audio["sample_rate"]
    assert sr == 48000 and w.shape == (2, audio_mod.samples_for_frames(69, fps, sr))
    b = [audio_mod.samples_for_frames(k, fps, sr) for k in (0, 31, 48, 57, 69)]
    assert torch.all(w[:, b[0]:b[1]] == 1)                       # segment 1, trimmed at its last frame
    assert w[:, b[1]:b[1] + 4500].mean() == pytest.approx(0.5, abs=0.02)  # segment 2 (0.1 s), in both channels
    assert float(w[:, b[1] + 5000:b[2]].abs().max()) < 0.01           # ...then silence to its last frame
    assert torch.all(w[:, b[2]:] == 0)                           # segments 3 and 4: silence


# ============================================================================ checkpoints
def _lp_node_run(pack):
    return _nodes(pack)["TalkingHead_LoadLivePortrait"]().run("human", "fp32", auto_download=False)


def _fom_node_run(pack, name="vox-cpk.pth.tar"):
    return _nodes(pack)["TalkingHead_FOMAnimate"]().run(torch.rand(1, 64, 64, 3), torch.rand(2, 256, 256, 3), name,
                                                        True, True, False, 2, "fp32", auto_download=False)


def _sda_node_run(pack, name="grid.dat"):
    return _nodes(pack)["TalkingHead_SDABase"]().run(torch.rand(1, 40, 30, 3), _tone(0.3), "already aligned", 0, name,
                                                     auto_download=False)


def _ditto_node_run(pack, name="ditto/lmdm_v0.4_hubert.safetensors"):
    return _nodes(pack)["TalkingHead_MotionDiT"]().run(lp_set(pack), _ditto_embeddings(pack), _portrait(pack),
                                                       auto_download=False, **_dit_args(name))


def _joyvasa_embed_run(pack, name):
    return _nodes(pack)["TalkingHead_AudioToEmbedding"]().run(_tone(0.5), "JoyVASA (its own HuBERT)",
                                                              joyvasa_checkpoint=name, auto_download=False)


def _truncate(path: Path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _case_lp_truncated(root, marker):
    models_dir(root)
    _truncate(root / "liveportrait" / "warping_module.safetensors")
    return _lp_node_run, r"warping_module\.safetensors: not a readable safetensors file \(corrupt or truncated"


def _case_lp_fom_as_appearance(root, marker):
    models_dir(root)  # the official .pth name outranks the safetensors twin
    shutil.copy(FIXTURES / "fom" / "tiny-cpk.pth.tar", root / "liveportrait" / "appearance_feature_extractor.pth")
    return _lp_node_run, (r"(?s)appearance_feature_extractor\.pth.*looks like a First Order Motion Model.*"
                          r"Missing keys \(\d+\): first\.conv\.weight.*Unexpected keys \(\d+\): generator\.")


def _case_lp_wrong_size(root, marker):
    models_dir(root)
    path = root / "liveportrait" / "warping_module.safetensors"
    state = load_file(str(path))
    state["third.conv.weight"] = torch.zeros(*[s + 1 if i == 0 else s for i, s in
                                               enumerate(state["third.conv.weight"].shape)])
    save_file(state, str(path))
    return _lp_node_run, r"(?s)warping_module\.safetensors \(warping_module\) does not match.*Wrong shapes \(1\): " \
                         r"third\.conv\.weight: file \("


def _case_lp_code(root, marker):
    models_dir(root)
    torch.save({"first.conv.weight": torch.zeros(1), "x": _MakesDir(marker)},
               root / "liveportrait" / "appearance_feature_extractor.pth")
    return _lp_node_run, r"appearance_feature_extractor\.pth: refused to load: the file asks to run"


def _case_fom_truncated(root, marker):
    classic_models(root)
    shutil.copy(root / "fom" / "tiny-cpk.pth.tar", root / "fom" / "vox-cpk.pth.tar")
    _truncate(root / "fom" / "vox-cpk.pth.tar")
    return _fom_node_run, r"vox-cpk\.pth\.tar: not a readable checkpoint \(corrupt or truncated"


def _case_fom_given_sda(root, marker):
    (root / "fom").mkdir(parents=True)
    shutil.copy(FIXTURES / "sda" / "tiny-grid.dat", root / "fom" / "vox-cpk.pth.tar")
    return _fom_node_run, (r"vox-cpk\.pth\.tar is not a First Order Motion Model checkpoint: it has no kp_detector "
                           r"weights \(top-level keys: \['encoder', 'encoder_id', 'generator'\]\)")


def _case_fom_code(root, marker):
    (root / "fom").mkdir(parents=True)
    torch.save({"generator": {"w": torch.zeros(1)}, "epoch": _Execs(marker)}, root / "fom" / "vox-cpk.pth.tar",
               _use_new_zipfile_serialization=False)  # the official file's legacy format
    return _fom_node_run, r"vox-cpk\.pth\.tar: refused to load: the file asks to run"


def _case_sda_given_fom(root, marker):
    (root / "sda").mkdir(parents=True)
    shutil.copy(FIXTURES / "fom" / "tiny-cpk.pth.tar", root / "sda" / "grid.dat")
    return _sda_node_run, r"grid\.dat' has no 'encoder' weights .*not a speech-driven-animation model file"


def _case_sda_code(root, marker):
    (root / "sda").mkdir(parents=True)
    torch.save({"encoder": {"w": torch.zeros(1)}, "mean_face": _MakesDir(marker)}, root / "sda" / "grid.dat",
               _use_new_zipfile_serialization=False)
    return _sda_node_run, r"grid\.dat: refused to load: the file asks to run"


def _case_ditto_truncated(root, marker):
    models_dir(root)
    (root / "ditto").mkdir()
    _truncate(_tiny_lmdm(root / "ditto" / "lmdm_v0.4_hubert.safetensors"))
    return _ditto_node_run, r"lmdm_v0\.4_hubert\.safetensors: not a readable safetensors file"


def _case_ditto_given_joyvasa(root, marker):
    models_dir(root)
    (root / "ditto").mkdir()
    save_file(_tiny_joyvasa_state(), str(root / "ditto" / "lmdm_v0.4_hubert.safetensors"))
    return _ditto_node_run, (r"(?s)lmdm_v0\.4_hubert\.safetensors.*not a Ditto LMDM.*missing input_projection\.weight"
                             r".*looks like a JoyVASA motion generator")


def _case_ditto_wrong_size(root, marker):
    models_dir(root)
    (root / "ditto").mkdir()
    path = _tiny_lmdm(root / "ditto" / "lmdm_v0.4_hubert.safetensors")
    state = load_file(str(path))
    key = "null_cond_hidden"
    state[key] = torch.zeros(*state[key].shape[:-1], state[key].shape[-1] + 3)
    save_file(state, str(path), metadata={"num_heads": "4"})
    return _ditto_node_run, r"(?s)lmdm_v0\.4_hubert\.safetensors \(Ditto LMDM\) does not match.*null_cond_hidden"


def _case_ditto_code_cfg(root, marker):
    models_dir(root)
    (root / "ditto").mkdir()
    _tiny_lmdm(root / "ditto" / "lmdm_v0.4_hubert.safetensors")
    import pickle

    (root / "ditto" / "v0.4_hubert_cfg_pytorch.pkl").write_bytes(pickle.dumps({"base_cfg": _MakesDir(marker)}))
    return _ditto_node_run, r"v0\.4_hubert_cfg_pytorch\.pkl: refused to load: .*mkdir"


def _case_joyvasa_given_ditto(root, marker):
    (root / "joyvasa").mkdir(parents=True)
    _tiny_lmdm(root / "joyvasa" / "lmdm_v0.4_hubert.safetensors")
    return (lambda pack: _joyvasa_embed_run(pack, "joyvasa/lmdm_v0.4_hubert.safetensors"),
            r"(?s)lmdm_v0\.4_hubert\.safetensors: not a JoyVASA motion generator: 'start_motion_feat'.*looks like a "
            r"Ditto LMDM")


CHECKPOINT_CASES = {
    "lp-truncated": _case_lp_truncated,
    "lp-fom-as-appearance": _case_lp_fom_as_appearance,
    "lp-wrong-size": _case_lp_wrong_size,
    "lp-code": _case_lp_code,
    "fom-truncated": _case_fom_truncated,
    "fom-given-sda": _case_fom_given_sda,
    "fom-code": _case_fom_code,
    "sda-given-fom": _case_sda_given_fom,
    "sda-code": _case_sda_code,
    "ditto-truncated": _case_ditto_truncated,
    "ditto-given-joyvasa": _case_ditto_given_joyvasa,
    "ditto-wrong-size": _case_ditto_wrong_size,
    "ditto-code-cfg": _case_ditto_code_cfg,
    "joyvasa-given-ditto": _case_joyvasa_given_ditto,
}


@pytest.mark.parametrize("case", list(CHECKPOINT_CASES))
def test_bad_checkpoints_through_the_nodes(pack, tmp_path, offline, case):
    """A bad file in the models folder, picked by the node: a CheckpointError naming the file and what is wrong
    with it (the keys, or the family it looks like); pickled code never runs; nothing is cached or written."""
    marker = tmp_path / "PWNED"
    run, message = CHECKPOINT_CASES[case](tmp_path / "models", marker)
    errors = sub(pack, "core.errors")
    with pytest.raises(errors.CheckpointError, match=message):
        run(pack)
    assert not marker.exists()
    broken = {"lp": "liveportrait", "fom": "fom", "sda": "sda", "ditto": "motion", "joyvasa": "motion"}
    if case != "ditto-code-cfg":  # (there the LMDM itself is fine and stays cached; its cfg file is refused)
        assert broken[case.split("-")[0]] not in sub(pack, "core.cache").CACHE.families()  # never a broken model
    assert _files(tmp_path / "output") == []


# ============================================================================ file names
@pytest.fixture
def outside(tmp_path_factory):
    d = tmp_path_factory.mktemp("outside")
    Image.new("RGB", (16, 16), (9, 9, 9)).save(d / "secret.png")
    shutil.copy(ROOT / "example_inputs" / "motion.safetensors", d / "secret.safetensors")
    shutil.copy(ROOT / "example_inputs" / "speech.wav", d / "secret.wav")
    shutil.copy(FIXTURES / "driving_short.mp4", d / "secret.mp4")
    return d


def test_file_name_inputs_stay_inside_the_input_folder(pack, tmp_path, outside):
    """'../x', absolute paths, symlinks leading out, NUL bytes and '[output]' tricks are refused by every node
    that takes a file name, before running (VALIDATE_INPUTS) and when run; files inside still work, including by
    their absolute path and through a symlink that stays inside."""
    builtins = sub(pack, "headless.builtins")
    errors = sub(pack, "core.errors")
    inp = tmp_path / "input"
    inp.mkdir()
    (inp / "sub").mkdir()
    loaders = {  # extension -> (VALIDATE_INPUTS, run)
        "png": (_nodes(pack)["TalkingHead_LoadPortrait"].VALIDATE_INPUTS,
                lambda n: _nodes(pack)["TalkingHead_LoadPortrait"]().run(n, "center", 64, 1.8, -0.1)),
        "safetensors": (_nodes(pack)["TalkingHead_LoadMotion"].VALIDATE_INPUTS,
                        lambda n: _nodes(pack)["TalkingHead_LoadMotion"]().run(n)),
        "wav": (builtins.LoadAudio.VALIDATE_INPUTS, lambda n: builtins.LoadAudio().load(n)),
        "mp4": (builtins.LoadVideo.VALIDATE_INPUTS, lambda n: builtins.LoadVideo().execute(n)),
    }
    for ext, (validate, run) in loaders.items():
        secret = outside / f"secret.{ext}"
        shutil.copy(secret, inp / f"ok.{ext}")
        os.symlink(secret, inp / f"link.{ext}")
        os.symlink(inp / f"ok.{ext}", inp / "sub" / f"inner.{ext}")
        if not (inp / "escape").exists():
            os.symlink(outside, inp / "escape")
        hostile = [f"../secret.{ext}", f"../../{outside.name}/secret.{ext}", str(secret), f"link.{ext}",
                   f"escape/secret.{ext}", f"sub/../../secret.{ext}", f"sub\\..\\..\\secret.{ext}",
                   f"ok.{ext}\x00.png", f"../secret.{ext} [output]", f"{secret} [temp]", "/etc/passwd",
                   f"//{secret}"]
        for name in hostile:
            verdict = validate(name)
            assert verdict is not True and ("outside" in verdict or "NUL" in verdict or "not found" in verdict), \
                (name, verdict)
            with pytest.raises(errors.InputError):
                run(name)
        for name in (f"ok.{ext}", str(inp / f"ok.{ext}"), f"sub/inner.{ext}", f"./sub//inner.{ext}"):
            assert validate(name) is True, name
            run(name)
    assert "outside" in builtins.LoadImage.VALIDATE_INPUTS("link.png")
    with pytest.raises(errors.InputError):
        builtins.LoadImage().load_image("escape/secret.png")
    # the outside files were never touched
    assert sorted(p.name for p in outside.iterdir()) == ["secret.mp4", "secret.png", "secret.safetensors",
                                                          "secret.wav"]


def test_odd_but_legal_file_names_work(pack, tmp_path):
    """Names with a newline, spaces, unicode or a leading '-' (which ffmpeg could take for an option) are files
    like any other, inside the input folder and as output prefixes."""
    builtins = sub(pack, "headless.builtins")
    video = sub(pack, "core.video")
    inp = tmp_path / "input"
    inp.mkdir()
    for name in ("-i.wav", "we\nird name.wav", "ünï cödé.wav", "-y"):
        shutil.copy(ROOT / "example_inputs" / "speech.wav", inp / name)
        (audio,) = builtins.LoadAudio().load(name)
        assert audio["sample_rate"] == 16000 and audio["waveform"].shape[-1] > 16000
    node = _nodes(pack)["TalkingHead_MuxVideo"]()
    for prefix in ("-y", "-i/-f", "new\nline", "sp ace/ünï"):
        out = Path(node.run(torch.rand(2, 16, 16, 3), 25.0, prefix, audio=audio, preset="ultrafast")["result"][0])
        assert out.is_file() and (tmp_path / "output") in out.parents and video.probe(out)["video"]["frames"] == 2
    assert sorted(p.name for p in inp.iterdir()) == sorted(["-i.wav", "we\nird name.wav", "ünï cödé.wav", "-y"])


HOSTILE_PREFIXES = ["../evil", "../../evil", "sub/../../../evil", "..\\..\\evil", "./../evil", "<ABS>",
                    "<ABS>/deeper/evil", "ev\x00il", "sub/ev\x00il", "ev\nil", "evil\r\n", "", "   ", "/", ".", "..",
                    "sub/", "<LINK>/evil"]


def _save_nodes(pack):
    Motion = sub(pack, "core.liveportrait.motion").Motion
    motion = Motion.load(ROOT / "example_inputs" / "motion.safetensors").frames(0, 3)
    return {
        "MuxVideo": lambda prefix: _nodes(pack)["TalkingHead_MuxVideo"]().run(torch.rand(2, 16, 16, 3), 25.0, prefix,
                                                                              preset="ultrafast")["result"][0],
        "SaveMotion": lambda prefix: _nodes(pack)["TalkingHead_SaveMotion"]().run(motion, prefix)["result"][0],
    }


@pytest.mark.parametrize("host", ["standalone", "comfyui"])
def test_filename_prefix_never_writes_outside_the_output_folder(request, tmp_path, monkeypatch, host):
    """MuxVideo and SaveMotion with traversal, absolute, NUL, newline, empty and symlinked prefixes: either a clear
    error or a file inside the output folder; nothing anywhere else, no temporary file left behind."""
    if host == "standalone":
        pack = request.getfixturevalue("pack")
        out = tmp_path / "a" / "b" / "output"
        monkeypatch.setattr(sub(pack, "core.host").HOST, "output_dir", lambda: out)
    else:
        pack = request.getfixturevalue("comfy_pack")
        out = tmp_path / "a" / "b" / "ComfyUI" / "output"
        monkeypatch.setattr(pack.folder_paths, "output_directory", str(out))
    out.mkdir(parents=True, exist_ok=True)
    (tmp_path / "elsewhere").mkdir()
    os.symlink(tmp_path / "elsewhere", out / "link")
    errors = sub(pack, "core.errors")
    before = _tree(tmp_path, skip=out)
    for node, save in _save_nodes(pack).items():
        for raw in HOSTILE_PREFIXES:
            if raw.startswith("<LINK>") and host == "comfyui":
                continue  # ComfyUI itself lets a symlinked sub-folder of the output folder lead elsewhere
            prefix = raw.replace("<ABS>", str(tmp_path / "abs")).replace("<LINK>", "link")
            try:
                result = Path(save(prefix))
            except errors.TalkingHeadError as exc:
                if "\x00" in prefix:
                    assert "NUL" in str(exc), (node, prefix, exc)
                continue
            except Exception as exc:  # ComfyUI's own refusal (folder_paths.get_save_image_path)
                assert host == "comfyui" and "outside the output folder" in str(exc), (node, prefix, exc)
                continue
            assert result.is_file() and out.resolve() in result.resolve().parents, (node, prefix, result)
            assert "\x00" not in prefix
        assert _tree(tmp_path, skip=out) == before, node
    assert not list(out.rglob("*partial*")) and not list((tmp_path / "elsewhere").iterdir())


# ============================================================================ output folder not writable
def test_output_folder_not_writable(pack, tmp_path, monkeypatch):
    """The output folder cannot be created (a file is in the way), or the temporary file cannot be written (a
    folder squats on its name): a clear error saying so, nothing left over. Both bite when running as root too."""
    host = sub(pack, "core.host").HOST
    errors = sub(pack, "core.errors")
    saves = _save_nodes(pack)
    (tmp_path / "blocked").write_bytes(b"a file, not a folder")
    monkeypatch.setattr(host, "output_dir", lambda: tmp_path / "blocked" / "output")
    for node, save in saves.items():
        with pytest.raises(errors.TalkingHeadError, match="cannot create the output folder"):
            save("talks/x")
    assert (tmp_path / "blocked").read_bytes() == b"a file, not a folder"

    out = tmp_path / "out"
    out.mkdir()
    monkeypatch.setattr(host, "output_dir", lambda: out)
    # SaveMotion's temporary file cannot be written (refused half-way): the error names the file, and neither
    # the motion file nor its temporary file is left
    lp = sub(pack, "core.liveportrait")

    def refused(self, path):
        Path(path).write_bytes(b"half")
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(lp.Motion, "save", refused)
    with pytest.raises(errors.TalkingHeadError, match=r"(?s)cannot write.*m_00001_\.safetensors.*writable"):
        saves["SaveMotion"]("m")
    assert list(out.iterdir()) == []


def test_output_folder_read_only(pack, tmp_path, monkeypatch):
    """A read-only output folder (chmod; skipped when running as root, where chmod does not bite)."""
    host = sub(pack, "core.host").HOST
    errors = sub(pack, "core.errors")
    saves = _save_nodes(pack)
    out = tmp_path / "out"
    out.mkdir()
    monkeypatch.setattr(host, "output_dir", lambda: out)
    out.chmod(0o500)
    try:
        if os.access(out, os.W_OK):
            pytest.skip("running as a user (root) that can write into a read-only folder")
        for node, save in saves.items():
            with pytest.raises(errors.TalkingHeadError, match="writable"):
                save("x")
        assert list(out.iterdir()) == []
    finally:
        out.chmod(0o700)


# ============================================================================ cancel
@contextmanager
def _cancel_at(comfy_pack, step):
    """ComfyUI's cancel button, pressed when the ``step``-th progress update arrives."""
    mm = comfy_pack.comfy
    utils = importlib.import_module("comfy.utils")
    calls = []

    def hook(value, total, preview, node_id=None):
        calls.append(value)
        if len(calls) == step:
            mm.interrupt_current_processing(True)
        mm.throw_exception_if_processing_interrupted()

    utils.set_progress_bar_global_hook(hook)
    try:
        yield calls
    finally:
        utils.set_progress_bar_global_hook(None)
        mm.interrupt_current_processing(False)


def _comfy_models(comfy_pack) -> Path:
    return Path(comfy_pack.folder_paths.models_dir)


def _assert_nothing_written(comfy_pack):
    for d in (comfy_pack.folder_paths.get_output_directory(), comfy_pack.folder_paths.get_temp_directory()):
        assert _files(Path(d)) == []


def test_cancel_liveportrait_render(comfy_pack):
    """Cancel after the first of two batches: the interrupt propagates, nothing is written, the cached networks
    stay loaded and the next run gives exactly the frames of an uninterrupted run; with keep_model_loaded off the
    networks are freed even though the run was cancelled."""
    models_dir(_comfy_models(comfy_pack))
    mm = comfy_pack.comfy
    cache = sub(comfy_pack, "core.cache").CACHE
    portrait, motion = _portrait(comfy_pack), _motion(comfy_pack, 4)
    render = _nodes(comfy_pack)["TalkingHead_LivePortraitRender"]()
    args = (lp_set(comfy_pack), portrait, motion, True, "all", True, 1.0, 2)
    reference, _, _ = render.run(*args)
    (entry,) = cache.entries("liveportrait")
    with _cancel_at(comfy_pack, 1) as calls, pytest.raises(mm.InterruptProcessingException):
        render.run(*args)
    assert calls == [1]
    assert cache.entries("liveportrait") == [entry] and len(mm.current_loaded_models) == 7
    again, _, _ = render.run(*args)
    assert torch.equal(again, reference)
    with _cancel_at(comfy_pack, 1), pytest.raises(mm.InterruptProcessingException):
        render.run(*args, keep_model_loaded=False)
    assert cache.entries("liveportrait") == [] and mm.current_loaded_models == []
    _assert_nothing_written(comfy_pack)


def test_cancel_motion_dit(comfy_pack, monkeypatch):
    """Cancel MotionDiT (Ditto) between diffusion steps: the LMDM stays cached and usable, the same seed then gives
    the same motion as before; keep_model_loaded off frees it even on cancel."""
    monkeypatch.setenv("TALKINGHEAD_OFFLINE", "1")
    root = _comfy_models(comfy_pack)
    models_dir(root)
    (root / "ditto").mkdir(exist_ok=True)
    _tiny_lmdm(root / "ditto" / "lmdm_v0.4_hubert.safetensors")
    mm = comfy_pack.comfy
    cache = sub(comfy_pack, "core.cache").CACHE
    node = _nodes(comfy_pack)["TalkingHead_MotionDiT"]()
    emb, portrait = _ditto_embeddings(comfy_pack), _portrait(comfy_pack)
    kwargs = _dit_args("ditto/lmdm_v0.4_hubert.safetensors", steps=4)
    lps = lp_set(comfy_pack)
    reference, fps = node.run(lps, emb, portrait, **kwargs)
    (entry,) = cache.entries("motion")
    with _cancel_at(comfy_pack, 2) as calls, pytest.raises(mm.InterruptProcessingException):
        node.run(lps, emb, portrait, **kwargs)
    assert calls == [1, 2]
    assert cache.entries("motion") == [entry]
    again, _ = node.run(lps, emb, portrait, **kwargs)
    assert torch.equal(again.exp, reference.exp) and torch.equal(again.yaw, reference.yaw)
    with _cancel_at(comfy_pack, 1), pytest.raises(mm.InterruptProcessingException):
        node.run(lps, emb, portrait, keep_model_loaded=False, **kwargs)
    assert cache.entries("motion") == []
    assert torch.equal(node.run(lps, emb, portrait, **kwargs)[0].exp, reference.exp)
    _assert_nothing_written(comfy_pack)


def test_cancel_sda_base(comfy_pack):
    """Cancel SDABase between frame chunks: the model stays cached and the next run equals an uninterrupted one."""
    classic_models(_comfy_models(comfy_pack))
    mm = comfy_pack.comfy
    cache = sub(comfy_pack, "core.cache").CACHE
    node = _nodes(comfy_pack)["TalkingHead_SDABase"]()
    face = torch.rand(1, 40, 30, 3, generator=torch.Generator().manual_seed(0))
    args = (face, _tone(0.5), "already aligned", 3, "tiny-grid.dat")
    reference, _, _, _ = node.run(*args, chunk_frames=4)
    (entry,) = cache.entries("sda")
    with _cancel_at(comfy_pack, 2) as calls, pytest.raises(mm.InterruptProcessingException):
        node.run(*args, chunk_frames=4)
    assert calls == [4, 8]  # frames done, 4 per chunk, of 12
    assert cache.entries("sda") == [entry]
    assert torch.equal(node.run(*args, chunk_frames=4)[0], reference)
    with _cancel_at(comfy_pack, 1), pytest.raises(mm.InterruptProcessingException):
        node.run(*args, chunk_frames=4, keep_model_loaded=False)
    assert cache.entries("sda") == []
    _assert_nothing_written(comfy_pack)


@pytest.mark.parametrize("step", [1, 2, 3])
def test_cancel_mux_video_while_holding_the_last_frame(comfy_pack, tmp_path, monkeypatch, step):
    """MuxVideo with extend_to_audio, cancelled in the frames, in the held frames, or on the last update: no mp4, no
    hidden partial file and no temporary audio/log folder is left, and an existing video of the same name is kept."""
    systmp = tmp_path / "systmp"
    systmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(systmp))
    out = Path(comfy_pack.folder_paths.get_output_directory())
    (out / "keep").mkdir()
    (out / "keep" / "x_00001_.mp4").write_bytes(b"an earlier result")
    mm = comfy_pack.comfy
    node = _nodes(comfy_pack)["TalkingHead_MuxVideo"]()
    with _cancel_at(comfy_pack, step) as calls, pytest.raises(mm.InterruptProcessingException):
        node.run(torch.rand(2, 16, 16, 3), 25.0, "keep/x", audio=_tone(2.0), extend_to_audio=True, preset="ultrafast")
    assert len(calls) == step
    assert _files(out) == ["keep/x_00001_.mp4"] and (out / "keep" / "x_00001_.mp4").read_bytes() == b"an earlier result"
    assert list(systmp.iterdir()) == []
