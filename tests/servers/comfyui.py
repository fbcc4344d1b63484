"""A protocol-faithful ComfyUI test server (no torch, no Pillow) for PODI's tests.

It speaks the HTTP + WebSocket protocol of ComfyUI 0.8.0 (see shared protocols.md §1 and §6 and
``docs/comfyui-real-run.md``, which records how it was checked against a real ComfyUI), runs
prompts one at a time in priority order and really writes PNG files.

Usage::

    from tests.servers.comfyui import ComfyUITestServer

    with ComfyUITestServer() as comfy:              # 127.0.0.1:<free port>, temp dirs
        httpx.post(comfy.url + "/api/prompt", json={"prompt": graph, "client_id": "w1"})
        comfy.wait_for_history(prompt_id)           # helper, polls the in-memory history

Constructor: ``ComfyUITestServer(root_dir=None, port=0, *, max_upload_size_mb=100)``. Without
``root_dir`` a temp dir is made (and removed by ``stop()``); it holds ``output/``, ``input/`` and
``temp/`` (``.output_dir``, ``.input_dir``, ``.temp_dir``). ``kill()`` / ``restart()`` keep the
files on disk (like a real restart) but drop queue, history, cache and sockets.

Routes (each also under ``/api``): ``POST/GET /prompt``, ``GET/POST /queue``, ``POST /interrupt``,
``GET /history``, ``GET /history/{id}``, ``POST /history``, ``GET /view``, ``POST /upload/image``,
``GET /object_info``, ``GET /object_info/{class}``, ``GET /system_stats``, ``GET /features``,
``POST /free``, ``GET /embeddings``, ``GET /ws?clientId=``.

Nodes: EmptyImage, ImageInvert, ImageScale, LoadImage, SaveImage, PreviewImage, PrimitiveString,
PrimitiveInt and ``PodiTestSleep`` (the project's test node: required ``seconds`` FLOAT 0..3600,
optional ``image`` IMAGE and ``steps`` INT 1..10000 (default 10); sleeps ``seconds`` in ``steps``
steps sending ``progress``/``progress_state`` per step, interruptible at each step; output node;
passes ``image`` through; never cached). A copy of that node for a real ComfyUI is in
``docs/comfyui-real-run.md``.

Knobs (plain attributes, may be changed at any time from the test thread):

``node_delay``            float s, extra sleep for every node that really executes (not cached).
``fail_next_prompt_with`` None | str | BaseException | dict(message=, exception_type=, node_id=):
                          the next prompt that runs fails at runtime with ``execution_error``
                          (at ``node_id`` or the first node that executes; its cache is bypassed).
                          Reset to None when consumed.
``drop_socket_after``     None | int N: for the next prompt that runs, after N messages of that
                          prompt have been emitted (counting from the worker picking it up; 0 = at
                          once) every websocket is cut abruptly (TCP abort, no close frame). The
                          prompt itself still completes and lands in history. Reset when consumed.
``silent_socket``         bool: websockets are accepted but nothing is ever sent on them.
``lose_prompt_end``       bool: the next prompt that ends sends no ``executing`` (``node: None``)
                          nor ``execution_success`` (lost on the way; the socket stays up, the
                          prompt lands in history). Reset to False when consumed.
``refuse_websockets``     bool: the ``/ws`` handshake answers 503 (HTTP routes work): a client
                          whose socket was cut cannot reconnect until this is False again.
``forget_prompts``        bool: POST /prompt validates and answers 200 as usual, but the prompt is
                          never queued, run, nor recorded in history (as if the server restarted).
``http_delay``            float s: sleep before answering every HTTP request (not the ws stream).
``garbage``               bool: /system_stats and /object_info* answer 200 non-JSON garbage.
``http_status_override``  None | int: every route (also the ws handshake) answers this status.
``installed_nodes``       None | iterable of class names: only these exist (object_info and
                          validation), e.g. to simulate a missing custom node.
``history_delay``         float s: delay between ``execution_success``/``execution_error`` being
                          delivered and the history write (opens the race of protocols.md §1.10).
``view_delay``            float s: sleep before answering every ``GET /view`` (a slow output
                          download: outputs are fetched one after another, so this holds the
                          client between them).

Observation attributes (kept across kill/restart): ``.requests`` (see base.py), ``.prompts``
(prompt_id -> POST body, for every POST /prompt carrying a ``prompt``), ``.interrupts`` (ids of
running prompts an /interrupt was applied to), ``.interrupt_calls`` (requested id or None per
call), ``.deleted`` (ids actually removed from the pending queue), ``.uploads`` (dicts name,
subfolder, type, filename_sent, size, duplicate, path), ``.sent`` (every ws message delivered:
dicts ``to`` (sid or None = broadcast), ``type``, ``data``). Helpers: ``history()``,
``queue_snapshot()``, ``wait_for_history(id)``, ``wait_idle()``, ``file_path(filename,
subfolder, type)``, ``add_input_file(name, data, subfolder="")``, ``ws_clients``.

Known differences from a real ComfyUI (all documented in docs/comfyui-real-run.md): only the nodes
above exist; ImageScale always resamples with nearest-neighbour; ``/view`` ignores ``preview``;
``/upload/mask``, ``/api/jobs``, ``/models``, ``/userdata`` and binary preview frames are absent;
``execution_error.traceback`` and the tensor strings in ``current_inputs`` come from this server;
there is no periodic GC pause; PNGs are pixel-identical but not byte-identical to Pillow's.
"""

from __future__ import annotations

import asyncio
import copy
import hashlib
import heapq
import inspect
import ipaddress
import json
import math
import mimetypes
import os
import random
import shutil
import struct
import sys
import tempfile
import time
import traceback
import urllib.parse
import uuid
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web

from .base import LoopbackServer

__all__ = [
    "ComfyUITestServer",
    "png_encode",
    "png_decode",
    "solid_png",
    "PngDecodeError",
    "COMFYUI_VERSION",
]

COMFYUI_VERSION = "0.8.0"
MAX_RESOLUTION = 16384
MAXIMUM_HISTORY_SIZE = 10000
SENSITIVE_EXTRA_DATA_KEYS = ("auth_token_comfy_org", "api_key_comfy_org")

# =============================================================================================
# PNG (pure python)
# =============================================================================================
_PNG_SIG = b"\x89PNG\r\n\x1a\n"


class PngDecodeError(Exception):
    pass


def _chunk(kind: bytes, data: bytes) -> bytes:
    return (
        struct.pack(">I", len(data))
        + kind
        + data
        + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    )


def png_encode(
    width: int,
    height: int,
    pixels: bytes,
    channels: int = 3,
    text: dict[str, str] | None = None,
    compress_level: int = 4,
) -> bytes:
    """Encode 8-bit RGB (channels=3), RGBA (4) or grey (1) pixels (row-major) as a PNG."""
    color_type = {1: 0, 3: 2, 4: 6}[channels]
    stride = width * channels
    if len(pixels) != stride * height:
        raise ValueError("pixel buffer size does not match width*height*channels")
    mv = memoryview(pixels)
    raw = b"".join(b"\x00" + mv[y * stride : (y + 1) * stride].tobytes() for y in range(height))
    out = [
        _PNG_SIG,
        _chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, color_type, 0, 0, 0)),
    ]
    for k, v in (text or {}).items():
        out.append(_chunk(b"tEXt", k.encode("latin-1") + b"\x00" + v.encode("latin-1", "replace")))
    out.append(_chunk(b"IDAT", zlib.compress(raw, compress_level)))
    out.append(_chunk(b"IEND", b""))
    return b"".join(out)


def solid_png(width: int, height: int, rgb: tuple[int, int, int] = (255, 0, 0)) -> bytes:
    return png_encode(width, height, bytes(rgb) * (width * height))


def png_decode(data: bytes) -> tuple[int, int, int, bytes]:
    """Decode an 8-bit non-interlaced PNG -> (width, height, channels(1..4), pixels)."""
    if data[:8] != _PNG_SIG:
        raise PngDecodeError("not a PNG file")
    pos, idat, ihdr, palette, trns = 8, [], None, None, None
    while pos + 8 <= len(data):
        (ln,) = struct.unpack(">I", data[pos : pos + 4])
        kind = data[pos + 4 : pos + 8]
        body = data[pos + 8 : pos + 8 + ln]
        pos += 12 + ln
        if kind == b"IHDR":
            ihdr = struct.unpack(">IIBBBBB", body)
        elif kind == b"PLTE":
            palette = body
        elif kind == b"tRNS":
            trns = body
        elif kind == b"IDAT":
            idat.append(body)
        elif kind == b"IEND":
            break
    if ihdr is None or not idat:
        raise PngDecodeError("truncated PNG")
    w, h, depth, ctype, _, _, interlace = ihdr
    if depth != 8 or interlace != 0:
        raise PngDecodeError("only 8-bit non-interlaced PNGs are supported")
    bpp = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}.get(ctype)
    if bpp is None:
        raise PngDecodeError("bad colour type")
    try:
        raw = zlib.decompress(b"".join(idat))
    except zlib.error as e:
        raise PngDecodeError(str(e)) from e
    stride = w * bpp
    out = bytearray()
    prev = bytearray(stride)
    p = 0
    for _y in range(h):
        f = raw[p]
        line = bytearray(raw[p + 1 : p + 1 + stride])
        p += 1 + stride
        if f == 1:
            for i in range(bpp, stride):
                line[i] = (line[i] + line[i - bpp]) & 255
        elif f == 2:
            for i in range(stride):
                line[i] = (line[i] + prev[i]) & 255
        elif f == 3:
            for i in range(stride):
                a = line[i - bpp] if i >= bpp else 0
                line[i] = (line[i] + ((a + prev[i]) >> 1)) & 255
        elif f == 4:
            for i in range(stride):
                a = line[i - bpp] if i >= bpp else 0
                b = prev[i]
                c = prev[i - bpp] if i >= bpp else 0
                pa, pb, pc = abs(b - c), abs(a - c), abs(a + b - 2 * c)
                pr = a if (pa <= pb and pa <= pc) else (b if pb <= pc else c)
                line[i] = (line[i] + pr) & 255
        elif f != 0:
            raise PngDecodeError("bad filter type")
        out += line
        prev = line
    if ctype == 3:
        if palette is None:
            raise PngDecodeError("palette missing")
        has_alpha = trns is not None
        px = bytearray()
        for idx in out:
            px += palette[idx * 3 : idx * 3 + 3]
            if has_alpha:
                px.append(trns[idx] if idx < len(trns) else 255)
        return w, h, 4 if has_alpha else 3, bytes(px)
    channels = {0: 1, 2: 3, 4: 2, 6: 4}[ctype]
    if channels == 2:  # grey + alpha -> RGBA
        px = bytearray()
        for i in range(0, len(out), 2):
            g, a = out[i], out[i + 1]
            px += bytes((g, g, g, a))
        return w, h, 4, bytes(px)
    return w, h, channels, bytes(out)


# =============================================================================================
# Image values (float32 emulation through a per-image lookup table)
# =============================================================================================
def _f32(x: float) -> float:
    return struct.unpack("f", struct.pack("f", x))[0]


_BASE_LUT = tuple(_f32(i / 255) for i in range(256))


@dataclass
class ImageValue:
    """A ComfyUI IMAGE batch. Pixels are stored as 8-bit codes plus a code -> float32 table, so
    that ``1.0 - x`` and the final ``uint8(255 * x)`` truncation give the same bytes as torch."""

    width: int
    height: int
    frames: list[bytes]
    lut: tuple[float, ...] = _BASE_LUT

    def u8_frames(self) -> list[bytes]:
        table = bytes(int(min(255.0, max(0.0, _f32(255.0 * v)))) for v in self.lut)
        return [f.translate(table) for f in self.frames]

    def __str__(self) -> str:  # stands in for str(torch.Tensor) in execution_error
        if not self.frames:
            return "tensor([])"
        px = self.frames[0][:3]
        vals = ", ".join(_fmt_float(self.lut[c]) for c in px)
        return (
            f"tensor([[[[{vals}],\n          ...]]])  "
            f"# shape [{len(self.frames)}, {self.height}, {self.width}, 3]"
        )


def _fmt_float(v: float) -> str:
    if v == int(v):
        return f"{int(v)}."
    return f"{v:.4f}"


@dataclass
class MaskValue:
    width: int
    height: int
    frames: list[bytes]

    def __str__(self) -> str:
        return f"tensor(...)  # mask shape [{len(self.frames)}, {self.height}, {self.width}]"


# =============================================================================================
# Node definitions
# =============================================================================================
class NodeRuntimeError(Exception):
    """A node failure reported with a specific ``exception_type``."""

    def __init__(self, message: str, exception_type: str = "Exception"):
        super().__init__(message)
        self.exception_type = exception_type


class _Interrupted(Exception):
    pass


@dataclass
class NodeDef:
    name: str
    display_name: str
    category: str
    required: dict
    optional: dict = field(default_factory=dict)
    hidden: dict = field(default_factory=dict)
    output: tuple = ()
    output_name: tuple | None = None
    output_node: bool = False
    description: str = ""
    python_module: str = "nodes"
    func: Callable | None = None
    validate: Callable | None = None  # (server, **inputs) -> True | str
    validate_inputs: tuple = ()
    is_changed: Callable | None = None  # (server, **literal inputs) -> value; NaN = never cached
    v3_extra: dict | None = None  # extra object_info keys of new-style (v3) nodes
    dynamic_required: Callable | None = None  # (server) -> required dict

    def input_types(self, server: ComfyUITestServer) -> dict:
        req = self.dynamic_required(server) if self.dynamic_required else self.required
        out: dict = {"required": req}
        if self.optional:
            out["optional"] = self.optional
        if self.hidden:
            out["hidden"] = self.hidden
        return out

    def object_info(self, server: ComfyUITestServer) -> dict:
        it = self.input_types(server)
        info: dict = {
            "input": it,
            "input_order": {k: list(v.keys()) for k, v in it.items()},
            "output": list(self.output),
            "output_is_list": [False] * len(self.output),
            "output_name": list(self.output_name or self.output),
        }
        if self.v3_extra is not None:
            info["output_tooltips"] = [None] * len(self.output)
            info["output_matchtypes"] = None
        info.update(
            {
                "name": self.name,
                "display_name": self.display_name,
                "description": self.description,
                "python_module": self.python_module,
                "category": self.category,
                "output_node": self.output_node,
            }
        )
        if self.v3_extra is not None:
            info.update(self.v3_extra)
        return info


def _input_info(it: dict, name: str) -> tuple[Any, str | None, dict | None]:
    for cat in ("required", "optional", "hidden"):
        if name in it.get(cat, {}):
            spec = it[cat][name]
            if cat == "hidden":
                return spec, cat, {}
            return spec[0], cat, (spec[1] if len(spec) > 1 else {})
    return None, None, None


def _types_compatible(received: Any, expected: Any) -> bool:
    if not received != expected:
        return True
    if received == "*" or expected == "*":
        return True
    if isinstance(received, list) and expected == "COMBO":
        return True
    if not isinstance(received, str) or not isinstance(expected, str):
        return False
    a = {t.strip() for t in received.split(",")}
    b = {t.strip() for t in expected.split(",")}
    if "*" in a or "*" in b:
        return True
    return bool(a & b)


@dataclass
class _Ctx:
    server: ComfyUITestServer
    prompt_id: str
    node_id: str
    prompt: dict
    extra_data: dict

    async def progress(self, value: float, total: float) -> None:
        await self.server._progress_hook(self, value, total)


# ---- node implementations -------------------------------------------------------------------
def _empty_image(ctx: _Ctx, width: int, height: int, batch_size: int = 1, color: int = 0):
    px = bytes(((color >> 16) & 0xFF, (color >> 8) & 0xFF, color & 0xFF)) * (width * height)
    return (ImageValue(width, height, [px] * batch_size),)


def _image_invert(ctx: _Ctx, image: ImageValue):
    lut = tuple(_f32(1.0 - v) for v in image.lut)
    return (ImageValue(image.width, image.height, list(image.frames), lut),)


def _resize(img: ImageValue, width: int, height: int, method: str, crop: str) -> ImageValue:
    ow, oh = img.width, img.height
    frames = img.frames
    x0, y0, cw, ch = 0, 0, ow, oh
    if crop == "center":
        old_aspect, new_aspect = ow / oh, width / height
        if old_aspect > new_aspect:
            x0 = round((ow - ow * (new_aspect / old_aspect)) / 2)
        elif old_aspect < new_aspect:
            y0 = round((oh - oh * (old_aspect / new_aspect)) / 2)
        cw, ch = ow - 2 * x0, oh - 2 * y0
    sx, sy = cw / width, ch / height
    exact = method != "nearest"
    if exact:
        xs = [min(int((x + 0.5) * sx), cw - 1) + x0 for x in range(width)]
        ys = [min(int((y + 0.5) * sy), ch - 1) + y0 for y in range(height)]
    else:
        xs = [min(int(x * sx), cw - 1) + x0 for x in range(width)]
        ys = [min(int(y * sy), ch - 1) + y0 for y in range(height)]
    out = []
    for f in frames:
        mv = memoryview(f)
        rows = []
        cache: dict[int, bytes] = {}
        for y in ys:
            row = cache.get(y)
            if row is None:
                base = y * ow * 3
                src = mv[base : base + ow * 3]
                row = b"".join(src[x * 3 : x * 3 + 3].tobytes() for x in xs)
                cache[y] = row
            rows.append(row)
        out.append(b"".join(rows))
    return ImageValue(width, height, out, img.lut)


def _image_scale(
    ctx: _Ctx, image: ImageValue, upscale_method: str, width: int, height: int, crop: str
):
    if width == 0 and height == 0:
        return (image,)
    if width == 0:
        width = max(1, round(image.width * height / image.height))
    elif height == 0:
        height = max(1, round(image.height * width / image.width))
    return (_resize(image, width, height, upscale_method, crop),)


def _annotated(server: ComfyUITestServer, name: str) -> tuple[str, str | None]:
    for tag, d in (
        (" [output]", server.output_dir),
        (" [input]", server.input_dir),
        (" [temp]", server.temp_dir),
    ):
        if name.endswith(tag.strip()):
            return name[: -len(tag)], d
    return name, None


def _annotated_path(server: ComfyUITestServer, name: str) -> str:
    n, d = _annotated(server, name)
    return os.path.join(d or server.input_dir, n)


def _load_image(ctx: _Ctx, image: str):
    path = _annotated_path(ctx.server, image)
    with open(path, "rb") as fh:
        data = fh.read()
    try:
        w, h, ch, px = png_decode(data)
    except PngDecodeError:
        raise NodeRuntimeError(
            f"cannot identify image file {path!r}", "PIL.UnidentifiedImageError"
        ) from None
    if ch == 3:
        rgb, alpha = px, None
    elif ch == 1:
        rgb, alpha = bytes(b for g in px for b in (g, g, g)), None
    else:
        mv = memoryview(px)
        rgb = b"".join(mv[i : i + 3].tobytes() for i in range(0, len(px), 4))
        alpha = bytes(px[3::4])
    mask = (
        MaskValue(w, h, [bytes(255 - a for a in alpha)])
        if alpha is not None
        else MaskValue(64, 64, [bytes(64 * 64)])
    )
    return (ImageValue(w, h, [rgb]), mask)


def _load_image_validate(server: ComfyUITestServer, image: Any) -> Any:
    if not os.path.exists(_annotated_path(server, str(image))):
        return f"Invalid image file: {image}"
    return True


def _load_image_changed(server: ComfyUITestServer, image: Any = None, **_: Any) -> Any:
    try:
        with open(_annotated_path(server, str(image)), "rb") as fh:
            return hashlib.sha256(fh.read()).hexdigest()
    except OSError:
        return float("nan")


def _load_image_required(server: ComfyUITestServer) -> dict:
    try:
        files = [
            f
            for f in os.listdir(server.input_dir)
            if os.path.isfile(os.path.join(server.input_dir, f))
        ]
    except OSError:
        files = []
    imgs = []
    for f in files:
        mt = mimetypes.guess_type(f, strict=False)[0]
        if mt and mt.split("/")[0] == "image":
            imgs.append(f)
    return {"image": [sorted(imgs), {"image_upload": True}]}


def _save_path(prefix: str, output_dir: str, width: int, height: int):
    def map_filename(filename: str) -> tuple[int, str]:
        plen = len(os.path.basename(prefix))
        pre = filename[: plen + 1]
        try:
            digits = int(filename[plen + 1 :].split("_")[0])
        except ValueError:
            digits = 0
        return digits, pre

    if "%" in prefix:
        now = time.localtime()
        for k, v in (
            ("%width%", str(width)),
            ("%height%", str(height)),
            ("%year%", str(now.tm_year)),
            ("%month%", str(now.tm_mon).zfill(2)),
            ("%day%", str(now.tm_mday).zfill(2)),
            ("%hour%", str(now.tm_hour).zfill(2)),
            ("%minute%", str(now.tm_min).zfill(2)),
            ("%second%", str(now.tm_sec).zfill(2)),
        ):
            prefix = prefix.replace(k, v)
    subfolder = os.path.dirname(os.path.normpath(prefix))
    filename = os.path.basename(os.path.normpath(prefix))
    full = os.path.join(output_dir, subfolder)
    common = os.path.commonpath((output_dir, os.path.abspath(full)))
    if common != output_dir:
        raise NodeRuntimeError(
            "**** ERROR: Saving image outside the output folder is not allowed."
            "\n full_output_folder: "
            + os.path.abspath(full)
            + "\n         output_dir: "
            + output_dir
            + "\n         commonpath: "
            + common
        )
    try:
        matches = [
            m
            for m in map(map_filename, os.listdir(full))
            if os.path.normcase(m[1][:-1]) == os.path.normcase(filename) and m[1][-1] == "_"
        ]
        counter = max(matches)[0] + 1 if matches else 1
    except FileNotFoundError:
        os.makedirs(full, exist_ok=True)
        counter = 1
    return full, filename, counter, subfolder


def _save_images_impl(
    ctx: _Ctx,
    images: ImageValue,
    filename_prefix: str,
    out_dir: str,
    kind: str,
    compress: int,
    prompt: Any,
    extra_pnginfo: Any,
):
    full, filename, counter, subfolder = _save_path(
        filename_prefix, out_dir, images.width, images.height
    )
    results = []
    for batch_number, frame in enumerate(images.u8_frames()):
        text = {}
        if prompt is not None:
            text["prompt"] = json.dumps(prompt)
        if extra_pnginfo is not None:
            for k in extra_pnginfo:
                text[k] = json.dumps(extra_pnginfo[k])
        name = f"{filename.replace('%batch_num%', str(batch_number))}_{counter:05}_.png"
        with open(os.path.join(full, name), "wb") as fh:
            fh.write(png_encode(images.width, images.height, frame, 3, text, compress))
        results.append({"filename": name, "subfolder": subfolder, "type": kind})
        counter += 1
    return {"ui": {"images": results}}


def _save_image(
    ctx: _Ctx, images: ImageValue, filename_prefix: str = "ComfyUI", prompt=None, extra_pnginfo=None
):
    if not isinstance(images, ImageValue):
        raise NodeRuntimeError("'NoneType' object is not subscriptable", "TypeError")
    return _save_images_impl(
        ctx, images, filename_prefix, ctx.server.output_dir, "output", 4, prompt, extra_pnginfo
    )


def _preview_image(ctx: _Ctx, images: ImageValue, prompt=None, extra_pnginfo=None):
    if not isinstance(images, ImageValue):
        raise NodeRuntimeError("'NoneType' object is not subscriptable", "TypeError")
    suffix = "_temp_" + "".join(random.choice("abcdefghijklmnopqrstupvxyz") for _ in range(5))
    return _save_images_impl(
        ctx, images, "ComfyUI" + suffix, ctx.server.temp_dir, "temp", 1, prompt, extra_pnginfo
    )


def _primitive(ctx: _Ctx, value: Any):
    return (value,)


async def _podi_sleep(ctx: _Ctx, seconds: float, image: Any = None, steps: int = 10):
    for i in range(steps):
        await asyncio.sleep(seconds / steps)
        await ctx.progress(i + 1, steps)
    return (image,)


_SAVE_TOOLTIP = (
    "The prefix for the file to save. This may include formatting information such "
    "as %date:yyyy-MM-dd% or %Empty Latent Image.width% to include values from "
    "nodes."
)
_HIDDEN_PROMPT = {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"}
_V3 = {"deprecated": False, "experimental": False, "api_node": False}

NODE_DEFS: dict[str, NodeDef] = {
    d.name: d
    for d in [
        NodeDef(
            "EmptyImage",
            "EmptyImage",
            "image",
            {
                "width": ["INT", {"default": 512, "min": 1, "max": MAX_RESOLUTION, "step": 1}],
                "height": ["INT", {"default": 512, "min": 1, "max": MAX_RESOLUTION, "step": 1}],
                "batch_size": ["INT", {"default": 1, "min": 1, "max": 4096}],
                "color": [
                    "INT",
                    {"default": 0, "min": 0, "max": 0xFFFFFF, "step": 1, "display": "color"},
                ],
            },
            output=("IMAGE",),
            func=_empty_image,
        ),
        NodeDef(
            "ImageInvert",
            "Invert Image",
            "image",
            {"image": ["IMAGE"]},
            output=("IMAGE",),
            func=_image_invert,
        ),
        NodeDef(
            "ImageScale",
            "Upscale Image",
            "image/upscaling",
            {
                "image": ["IMAGE"],
                "upscale_method": [["nearest-exact", "bilinear", "area", "bicubic", "lanczos"]],
                "width": ["INT", {"default": 512, "min": 0, "max": MAX_RESOLUTION, "step": 1}],
                "height": ["INT", {"default": 512, "min": 0, "max": MAX_RESOLUTION, "step": 1}],
                "crop": [["disabled", "center"]],
            },
            output=("IMAGE",),
            func=_image_scale,
        ),
        NodeDef(
            "LoadImage",
            "Load Image",
            "image",
            {},
            output=("IMAGE", "MASK"),
            func=_load_image,
            validate=_load_image_validate,
            validate_inputs=("image",),
            is_changed=_load_image_changed,
            dynamic_required=_load_image_required,
        ),
        NodeDef(
            "SaveImage",
            "Save Image",
            "image",
            {
                "images": ["IMAGE", {"tooltip": "The images to save."}],
                "filename_prefix": ["STRING", {"default": "ComfyUI", "tooltip": _SAVE_TOOLTIP}],
            },
            hidden=_HIDDEN_PROMPT,
            output_node=True,
            func=_save_image,
            description="Saves the input images to your ComfyUI output directory.",
        ),
        NodeDef(
            "PreviewImage",
            "Preview Image",
            "image",
            {"images": ["IMAGE"]},
            hidden=_HIDDEN_PROMPT,
            output_node=True,
            func=_preview_image,
            description="Saves the input images to your ComfyUI output directory.",
        ),
        NodeDef(
            "PrimitiveString",
            "String",
            "utils/primitive",
            {"value": ["STRING", {"multiline": False}]},
            output=("STRING",),
            python_module="comfy_extras.nodes_primitive",
            func=_primitive,
            v3_extra=_V3,
        ),
        NodeDef(
            "PrimitiveInt",
            "Int",
            "utils/primitive",
            {
                "value": [
                    "INT",
                    {"min": -sys.maxsize, "max": sys.maxsize, "control_after_generate": True},
                ]
            },
            output=("INT",),
            python_module="comfy_extras.nodes_primitive",
            func=_primitive,
            v3_extra=_V3,
        ),
        NodeDef(
            "PodiTestSleep",
            "PODI test sleep",
            "podi/testing",
            {"seconds": ["FLOAT", {"default": 1.0, "min": 0.0, "max": 3600.0, "step": 0.01}]},
            optional={
                "image": ["IMAGE"],
                "steps": ["INT", {"default": 10, "min": 1, "max": 10000}],
            },
            output=("IMAGE",),
            output_node=True,
            func=_podi_sleep,
            python_module="custom_nodes.podi_test_sleep",
            description=(
                "Sleeps `seconds` in `steps` steps, reporting progress per step (interruptible)."
            ),
            is_changed=lambda server, **kw: float("nan"),
        ),
    ]
}


# =============================================================================================
# Execution helpers
# =============================================================================================
def _is_link(v: Any) -> bool:
    return (
        isinstance(v, list)
        and len(v) == 2
        and isinstance(v[0], str)
        and isinstance(v[1], int)
        and not isinstance(v[1], bool)
    )


def _format_value(x: Any) -> Any:
    if x is None or isinstance(x, (int, float, bool, str)):
        return x
    return str(x)


_UNCACHEABLE = object()


@dataclass
class _CacheEntry:
    outputs: tuple | None
    ui: dict | None


class _ExecutionList:
    """Topological dissolve of the graph (same picking rules as ComfyUI's ExecutionList)."""

    def __init__(self, prompt: dict, is_cached: Callable[[str], bool], defs: dict[str, NodeDef]):
        self.prompt = prompt
        self.is_cached = is_cached
        self.defs = defs
        self.pending: dict[str, bool] = {}
        self.block_count: dict[str, int] = {}
        self.blocking: dict[str, dict[str, dict]] = {}

    def add_node(self, node_id: str) -> None:
        stack, links = [node_id], []
        while stack:
            nid = stack.pop()
            if nid in self.pending:
                continue
            self.pending[nid] = True
            self.block_count[nid] = 0
            self.blocking[nid] = {}
            for _name, val in self.prompt[nid]["inputs"].items():
                if _is_link(val):
                    src, sock = val
                    if not self.is_cached(src):
                        stack.append(src)
                    links.append((src, sock, nid))
        for src, sock, dst in links:
            if not self.is_cached(src):
                self.add_node(src)
                if dst not in self.blocking[src]:
                    self.blocking[src][dst] = {}
                    self.block_count[dst] += 1
                self.blocking[src][dst][sock] = True

    def _is_output(self, nid: str) -> bool:
        return self.defs[self.prompt[nid]["class_type"]].output_node

    def pick(self) -> str | None:
        ready = [n for n in self.pending if self.block_count[n] == 0]
        if not ready:
            return None
        for n in ready:
            if self._is_output(n):
                return n
        for n in ready:
            for b in self.blocking[n]:
                if self._is_output(b):
                    return n
        for n in ready:
            for b in self.blocking[n]:
                for b1 in self.blocking[b]:
                    if self._is_output(b1):
                        return n
        return ready[0]

    def complete(self, nid: str) -> None:
        del self.pending[nid]
        for dst in self.blocking[nid]:
            self.block_count[dst] -= 1
        del self.blocking[nid]

    def empty(self) -> bool:
        return not self.pending


# =============================================================================================
# The server
# =============================================================================================
class ComfyUITestServer(LoopbackServer):
    def __init__(
        self, root_dir: str | None = None, port: int = 0, *, max_upload_size_mb: float = 100
    ) -> None:
        self._own_root = root_dir is None
        self.root_dir = os.path.abspath(root_dir or tempfile.mkdtemp(prefix="podi-comfy-"))
        self.output_dir = os.path.join(self.root_dir, "output")
        self.input_dir = os.path.join(self.root_dir, "input")
        self.temp_dir = os.path.join(self.root_dir, "temp")
        for d in (self.output_dir, self.input_dir, self.temp_dir):
            os.makedirs(d, exist_ok=True)
        self.max_upload_size = round(max_upload_size_mb * 1024 * 1024)
        self.client_max_size = self.max_upload_size
        # knobs
        self.node_delay: float = 0.0
        self.fail_next_prompt_with: Any = None
        self.drop_socket_after: int | None = None
        self.silent_socket: bool = False
        self.lose_prompt_end: bool = False
        self._losing: str | None = None  # the prompt whose end is being lost
        self.refuse_websockets: bool = False
        self.forget_prompts: bool = False
        self.http_delay: float = 0.0
        self.garbage: bool = False
        self.http_status_override: int | None = None
        self.installed_nodes: Iterable[str] | None = None
        self.history_delay: float = 0.0
        self.view_delay: float = 0.0
        # observation logs
        self.prompts: dict[str, dict] = {}
        self.interrupts: list[str] = []
        self.interrupt_calls: list[str | None] = []
        self.deleted: list[str] = []
        self.uploads: list[dict] = []
        self.sent: list[dict] = []
        super().__init__(port)

    # ------------------------------------------------------------------ state
    def reset_state(self) -> None:
        self._queue: list = []
        self._running: dict[int, tuple] = {}
        self._task_counter = 0
        self._history: dict[str, dict] = {}
        self.number = 0
        self._cache: dict[Any, _CacheEntry] = {}
        self.sockets: dict[str, web.WebSocketResponse] = {}
        self.sockets_metadata: dict[str, dict] = {}
        self.client_id: str | None = None
        self.last_node_id: str | None = None
        self.last_prompt_id: str | None = None
        self._interrupt_flag = False
        self._messages: asyncio.Queue | None = None
        self._wakeup: asyncio.Event | None = None
        self._drop_tag: str | None = None
        self._drop_remaining: int | None = None
        self._busy = False

    async def on_started(self) -> None:
        self._messages = asyncio.Queue()
        self._wakeup = asyncio.Event()
        if self._queue:
            self._wakeup.set()
        self.spawn(self._publish_loop())
        self.spawn(self._worker())

    def stop(self) -> None:
        super().stop()
        if self._own_root:
            shutil.rmtree(self.root_dir, ignore_errors=True)

    # ------------------------------------------------------------------ helpers for tests
    def _defs(self) -> dict[str, NodeDef]:
        if self.installed_nodes is None:
            return NODE_DEFS
        allowed = set(self.installed_nodes)
        return {k: v for k, v in NODE_DEFS.items() if k in allowed}

    def history(self, prompt_id: str | None = None) -> dict:
        """Deep copy of the in-memory history (or {id: entry} / {})."""
        if self.running:
            h = self.call(lambda: copy.deepcopy(self._history))
        else:
            h = copy.deepcopy(self._history)
        if prompt_id is None:
            return h
        return {prompt_id: h[prompt_id]} if prompt_id in h else {}

    def queue_snapshot(self) -> dict:
        if self.running:
            return self.call(self._queue_snapshot)
        return self._queue_snapshot()

    def _queue_snapshot(self) -> dict:
        return {
            "queue_running": [list(x[:5]) for x in list(self._running.values())],
            "queue_pending": [list(x[:5]) for x in list(self._queue)],
        }

    def wait_for_history(self, prompt_id: str, timeout: float = 10.0) -> dict:
        return self.wait_until(lambda: self._history.get(prompt_id), timeout)

    def wait_idle(self, timeout: float = 10.0) -> None:
        self.wait_until(lambda: not self._queue and not self._running and not self._busy, timeout)

    def file_path(self, filename: str, subfolder: str = "", type: str = "output") -> str:
        base = {"output": self.output_dir, "input": self.input_dir, "temp": self.temp_dir}[type]
        return os.path.join(base, subfolder, filename)

    def add_input_file(self, name: str, data: bytes, subfolder: str = "") -> str:
        d = os.path.join(self.input_dir, subfolder)
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, name), "wb") as fh:
            fh.write(data)
        return f"{subfolder}/{name}" if subfolder else name

    @property
    def ws_clients(self) -> list[str]:
        return list(self.sockets.keys())

    # ------------------------------------------------------------------ messaging
    def queue_info(self) -> dict:
        return {"exec_info": {"queue_remaining": len(self._queue) + len(self._running)}}

    def _send(self, event: str, data: Any, sid: str | None = None) -> None:
        if self._messages is not None:
            self._messages.put_nowait((event, data, sid, self._drop_tag))

    def _queue_updated(self) -> None:
        self._send("status", {"status": self.queue_info()})

    async def _deliver(self, event: str, data: Any, sid: str | None) -> None:
        if self.silent_socket:
            return
        ending = isinstance(data, dict) and (
            (event == "executing" and data.get("node") is None) or event == "execution_success"
        )
        if ending:
            if self.lose_prompt_end and self._losing is None:
                self.lose_prompt_end, self._losing = False, data.get("prompt_id")
            if self._losing is not None and data.get("prompt_id") == self._losing:
                if event == "executing":
                    self._losing = None  # the last of the two
                return
        msg = {"type": event, "data": data}
        if sid is None:
            targets = list(self.sockets.values())
        elif sid in self.sockets:
            targets = [self.sockets[sid]]
        else:
            targets = []
        if targets:
            self.sent.append({"to": sid, "type": event, "data": copy.deepcopy(data)})
        for ws in targets:
            try:
                await ws.send_json(msg)
            except (aiohttp.ClientError, ConnectionError, RuntimeError):
                pass

    async def _publish_loop(self) -> None:
        assert self._messages is not None
        while True:
            event, data, sid, tag = await self._messages.get()
            try:
                await self._deliver(event, data, sid)
                if tag is not None and tag == self._drop_tag and self._drop_remaining is not None:
                    self._drop_remaining -= 1
                    if self._drop_remaining <= 0:
                        self._drop_remaining = None
                        self.abort_websockets()
            except Exception:  # pragma: no cover - never kill the publisher
                traceback.print_exc()
            finally:
                self._messages.task_done()

    async def _flush(self) -> None:
        if self._messages is not None:
            await self._messages.join()

    # ------------------------------------------------------------------ app
    def extra_middlewares(self) -> list:
        return [self._knob_middleware, self._origin_middleware]

    @web.middleware
    async def _knob_middleware(self, request: web.Request, handler: Any):
        status = self.http_status_override
        if status:
            reason = {500: "Internal Server Error"}.get(status)
            text = (
                "500 Internal Server Error\n\nServer got itself in trouble"
                if status == 500
                else f"{status}: {reason or 'test override'}"
            )
            return web.Response(status=status, text=text)
        if self.refuse_websockets and request.path in ("/ws", "/api/ws"):
            return web.Response(status=503, text="503: websockets refused (test knob)")
        if self.http_delay and request.path not in ("/ws", "/api/ws"):
            await asyncio.sleep(self.http_delay)
        return await handler(request)

    @web.middleware
    async def _origin_middleware(self, request: web.Request, handler: Any):
        host, origin = request.headers.get("Host"), request.headers.get("Origin")
        if host and origin:
            hp = urllib.parse.urlsplit("//" + host.lower())
            op = urllib.parse.urlparse(origin)
            host_domain, origin_domain = host.lower(), op.netloc.lower()
            try:
                loop_back = ipaddress.ip_address(hp.hostname or "").is_loopback
            except ValueError:
                loop_back = hp.hostname == "localhost"
            if op.port is None:
                host_domain = hp.hostname
            if hp.port is None:
                origin_domain = op.hostname
            if loop_back and host_domain and origin_domain and host_domain != origin_domain:
                return web.Response(status=403)
        if request.method == "OPTIONS":
            return web.Response()
        return await handler(request)

    def setup_routes(self, app: web.Application) -> None:
        routes = [
            ("GET", "/ws", self._ws_handler),
            ("POST", "/prompt", self._post_prompt),
            ("GET", "/prompt", self._get_prompt),
            ("GET", "/queue", self._get_queue),
            ("POST", "/queue", self._post_queue),
            ("POST", "/interrupt", self._post_interrupt),
            ("GET", "/history", self._get_history),
            ("GET", "/history/{prompt_id}", self._get_history_id),
            ("POST", "/history", self._post_history),
            ("GET", "/view", self._view),
            ("POST", "/upload/image", self._upload_image),
            ("GET", "/object_info", self._object_info),
            ("GET", "/object_info/{node_class}", self._object_info_node),
            ("GET", "/system_stats", self._system_stats),
            ("GET", "/features", self._features),
            ("POST", "/free", self._free),
            ("GET", "/embeddings", self._embeddings),
        ]
        for prefix in ("/api", ""):
            for method, path, h in routes:
                app.router.add_route(method, prefix + path, h)

    # ------------------------------------------------------------------ websocket
    async def _ws_handler(self, request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse(max_msg_size=0)
        await ws.prepare(request)
        self.track_websocket(ws)
        sid = request.query.get("clientId", "")
        if sid:
            self.sockets.pop(sid, None)
        else:
            sid = uuid.uuid4().hex
        self.sockets[sid] = ws
        self.sockets_metadata[sid] = {"feature_flags": {}}
        try:
            await self._deliver("status", {"status": self.queue_info(), "sid": sid}, sid)
            if self.client_id == sid and self.last_node_id is not None:
                await self._deliver("executing", {"node": self.last_node_id}, sid)
            first = True
            async for msg in ws:
                if msg.type == aiohttp.WSMsgType.TEXT:
                    try:
                        data = json.loads(msg.data)
                        if first and isinstance(data, dict) and data.get("type") == "feature_flags":
                            if sid in self.sockets_metadata:
                                self.sockets_metadata[sid]["feature_flags"] = data.get("data", {})
                            await self._deliver("feature_flags", self._feature_flags(), sid)
                        first = False
                    except ValueError:
                        pass
        finally:
            # Same hazard as the real server: this removes whatever socket now owns ``sid``.
            self.sockets.pop(sid, None)
            self.sockets_metadata.pop(sid, None)
            self.untrack_websocket(ws)
        return ws

    # ------------------------------------------------------------------ /prompt
    async def _post_prompt(self, request: web.Request) -> web.Response:
        json_data = await request.json()
        if "number" in json_data:
            number: float = float(json_data["number"])
        else:
            number = self.number
            if json_data.get("front"):
                number = -number
            self.number += 1
        if "prompt" not in json_data:
            error = {
                "type": "no_prompt",
                "message": "No prompt provided",
                "details": "No prompt provided",
                "extra_info": {},
            }
            return web.json_response({"error": error, "node_errors": {}}, status=400)
        prompt = json_data["prompt"]
        prompt_id = str(json_data.get("prompt_id", uuid.uuid4()))
        self.prompts[prompt_id] = copy.deepcopy(json_data)
        targets = json_data.get("partial_execution_targets")
        ok, error, outputs, node_errors = self._validate_prompt(prompt, targets)
        extra_data = dict(json_data.get("extra_data", {}))
        if "client_id" in json_data:
            extra_data["client_id"] = json_data["client_id"]
        if not ok:
            return web.json_response({"error": error, "node_errors": node_errors}, status=400)
        sensitive = {k: extra_data.pop(k) for k in SENSITIVE_EXTRA_DATA_KEYS if k in extra_data}
        extra_data["create_time"] = int(time.time() * 1000)
        if not self.forget_prompts:
            heapq.heappush(self._queue, (number, prompt_id, prompt, extra_data, outputs, sensitive))
            self._queue_updated()
            if self._wakeup is not None:
                self._wakeup.set()
        return web.json_response(
            {"prompt_id": prompt_id, "number": number, "node_errors": node_errors}
        )

    async def _get_prompt(self, request: web.Request) -> web.Response:
        return web.json_response(self.queue_info())

    # ------------------------------------------------------------------ validation
    def _validate_prompt(self, prompt: Any, targets: list | None):
        defs = self._defs()
        outputs: list[str] = []
        for x in prompt:
            node = prompt[x]
            if "class_type" not in node:
                return (
                    False,
                    {
                        "type": "invalid_prompt",
                        "message": (
                            "Cannot execute because a node is missing the class_type property."
                        ),
                        "details": f"Node ID '#{x}'",
                        "extra_info": {},
                    },
                    [],
                    {},
                )
            ct = node["class_type"]
            if ct not in defs:
                return (
                    False,
                    {
                        "type": "invalid_prompt",
                        "message": f"Cannot execute because node {ct} does not exist.",
                        "details": f"Node ID '#{x}'",
                        "extra_info": {},
                    },
                    [],
                    {},
                )
            if defs[ct].output_node and (targets is None or x in targets):
                if x not in outputs:
                    outputs.append(x)
        if not outputs:
            return (
                False,
                {
                    "type": "prompt_no_outputs",
                    "message": "Prompt has no outputs",
                    "details": "",
                    "extra_info": {},
                },
                [],
                {},
            )
        good: list[str] = []
        failed: list[tuple[str, list]] = []
        node_errors: dict[str, dict] = {}
        validated: dict[str, tuple] = {}
        for o in outputs:
            try:
                valid, reasons = self._validate_inputs(prompt, o, validated, defs)[:2]
            except Exception as ex:
                valid = False
                reasons = [
                    {
                        "type": "exception_during_validation",
                        "message": "Exception when validating node",
                        "details": str(ex),
                        "extra_info": {
                            "exception_type": _full_type_name(type(ex)),
                            "traceback": traceback.format_tb(ex.__traceback__),
                        },
                    }
                ]
                validated[o] = (False, reasons, o)
            if valid is True:
                good.append(o)
                continue
            failed.append((o, reasons))
            for nid, result in validated.items():
                if result[0] is not True and len(result[1]) > 0:
                    if nid not in node_errors:
                        node_errors[nid] = {
                            "errors": result[1],
                            "dependent_outputs": [],
                            "class_type": prompt[nid]["class_type"],
                        }
                    node_errors[nid]["dependent_outputs"].append(o)
        if not good:
            details = "\n".join(
                f"{e['message']}: {e['details']}" for _o, errs in failed for e in errs
            )
            return (
                False,
                {
                    "type": "prompt_outputs_failed_validation",
                    "message": "Prompt outputs failed validation",
                    "details": details,
                    "extra_info": {},
                },
                [],
                node_errors,
            )
        return True, None, good, node_errors

    def _validate_inputs(
        self, prompt: dict, nid: str, validated: dict, defs: dict[str, NodeDef]
    ) -> tuple:
        if nid in validated:
            return validated[nid]
        inputs = prompt[nid]["inputs"]
        d = defs[prompt[nid]["class_type"]]
        it = d.input_types(self)
        errors: list[dict] = []
        valid = True
        vf = d.validate_inputs
        valid_inputs = list(it.get("required", {})) + [
            k for k in it.get("optional", {}) if k not in it.get("required", {})
        ]
        for x in valid_inputs:
            input_type, category, extra = _input_info(it, x)
            if x not in inputs:
                if category == "required":
                    errors.append(
                        {
                            "type": "required_input_missing",
                            "message": "Required input is missing",
                            "details": f"{x}",
                            "extra_info": {"input_name": x},
                        }
                    )
                continue
            val = inputs[x]
            info = [input_type, extra]
            if isinstance(val, list):
                if len(val) != 2:
                    errors.append(
                        {
                            "type": "bad_linked_input",
                            "message": (
                                "Bad linked input, must be a length-2 list of [node_id, slot_index]"
                            ),
                            "details": f"{x}",
                            "extra_info": {
                                "input_name": x,
                                "input_config": info,
                                "received_value": val,
                            },
                        }
                    )
                    continue
                o_id = val[0]
                o_def = defs[prompt[o_id]["class_type"]]
                received = o_def.output[val[1]]
                if not _types_compatible(received, input_type):
                    errors.append(
                        {
                            "type": "return_type_mismatch",
                            "message": "Return type mismatch between linked nodes",
                            "details": (
                                f"{x}, received_type({received}) mismatch input_type({input_type})"
                            ),
                            "extra_info": {
                                "input_name": x,
                                "input_config": info,
                                "received_type": received,
                                "linked_node": val,
                            },
                        }
                    )
                    continue
                try:
                    r = self._validate_inputs(prompt, o_id, validated, defs)
                    if r[0] is False:
                        valid = False
                        continue
                except Exception as ex:
                    valid = False
                    validated[o_id] = (
                        False,
                        [
                            {
                                "type": "exception_during_inner_validation",
                                "message": "Exception when validating inner node",
                                "details": str(ex),
                                "extra_info": {
                                    "input_name": x,
                                    "input_config": info,
                                    "exception_message": str(ex),
                                    "exception_type": _full_type_name(type(ex)),
                                    "traceback": traceback.format_tb(ex.__traceback__),
                                    "linked_node": val,
                                },
                            }
                        ],
                        o_id,
                    )
                    continue
            else:
                try:
                    if isinstance(val, dict) and "__value__" in val:
                        val = val["__value__"]
                        inputs[x] = val
                    if input_type == "INT":
                        val = int(val)
                        inputs[x] = val
                    if input_type == "FLOAT":
                        val = float(val)
                        inputs[x] = val
                    if input_type == "STRING":
                        val = str(val)
                        inputs[x] = val
                    if input_type == "BOOLEAN":
                        val = bool(val)
                        inputs[x] = val
                except Exception as ex:
                    errors.append(
                        {
                            "type": "invalid_input_type",
                            "message": f"Failed to convert an input value to a {input_type} value",
                            "details": f"{x}, {val}, {ex}",
                            "extra_info": {
                                "input_name": x,
                                "input_config": info,
                                "received_value": val,
                                "exception_message": str(ex),
                            },
                        }
                    )
                    continue
                if x not in vf:
                    if "min" in extra and val < extra["min"]:
                        errors.append(
                            {
                                "type": "value_smaller_than_min",
                                "message": f"Value {val} smaller than min of {extra['min']}",
                                "details": f"{x}",
                                "extra_info": {
                                    "input_name": x,
                                    "input_config": info,
                                    "received_value": val,
                                },
                            }
                        )
                        continue
                    if "max" in extra and val > extra["max"]:
                        errors.append(
                            {
                                "type": "value_bigger_than_max",
                                "message": f"Value {val} bigger than max of {extra['max']}",
                                "details": f"{x}",
                                "extra_info": {
                                    "input_name": x,
                                    "input_config": info,
                                    "received_value": val,
                                },
                            }
                        )
                        continue
                    if isinstance(input_type, list) or input_type == "COMBO":
                        options = extra.get("options", []) if input_type == "COMBO" else input_type
                        if val not in options:
                            cfg: Any = info
                            if len(options) > 20:
                                list_info, cfg = f"(list of length {len(options)})", None
                            else:
                                list_info = str(options)
                            errors.append(
                                {
                                    "type": "value_not_in_list",
                                    "message": "Value not in list",
                                    "details": f"{x}: '{val}' not in {list_info}",
                                    "extra_info": {
                                        "input_name": x,
                                        "input_config": cfg,
                                        "received_value": val,
                                    },
                                }
                            )
                            continue
        if vf and d.validate is not None:
            args = {k: inputs[k] for k in vf if k in inputs and not _is_link(inputs[k])}
            for k in vf:
                if k in inputs and _is_link(inputs[k]):
                    args[k] = None
            r = d.validate(self, **args)
            if r is not True:
                for k in args:
                    details = f"{k}" + (f" - {r}" if r is not False else "")
                    errors.append(
                        {
                            "type": "custom_validation_failed",
                            "message": "Custom validation failed for node",
                            "details": details,
                            "extra_info": {"input_name": k},
                        }
                    )
        ret = (False, errors, nid) if (errors or valid is not True) else (True, [], nid)
        validated[nid] = ret
        return ret

    # ------------------------------------------------------------------ queue / history
    async def _get_queue(self, request: web.Request) -> web.Response:
        return web.json_response(self._queue_snapshot())

    def _wipe_queue(self) -> None:
        self._queue = []
        self._queue_updated()

    async def _post_queue(self, request: web.Request) -> web.Response:
        json_data = await request.json()
        if "clear" in json_data and json_data["clear"]:
            for item in self._queue:
                self.deleted.append(item[1])
            self._wipe_queue()
        if "delete" in json_data:
            for pid in json_data["delete"]:
                for i, item in enumerate(self._queue):
                    if item[1] == pid:
                        self.deleted.append(pid)
                        if len(self._queue) == 1:
                            self._wipe_queue()
                        else:
                            self._queue.pop(i)
                            heapq.heapify(self._queue)
                        self._queue_updated()
                        break
        return web.Response(status=200)

    async def _post_interrupt(self, request: web.Request) -> web.Response:
        try:
            json_data = await request.json()
        except ValueError:
            json_data = {}
        pid = json_data.get("prompt_id")
        self.interrupt_calls.append(pid or None)
        running = [item[1] for item in self._running.values()]
        if pid:
            if pid in running:
                self._interrupt_flag = True
                self.interrupts.append(pid)
        else:
            self._interrupt_flag = True
            self.interrupts.extend(running)
        return web.Response(status=200)

    async def _get_history(self, request: web.Request) -> web.Response:
        max_items = request.query.get("max_items")
        mi = int(max_items) if max_items is not None else None
        off = request.query.get("offset")
        offset = int(off) if off is not None else -1
        if offset < 0 and mi is not None:
            offset = len(self._history) - mi
        out: dict = {}
        for i, k in enumerate(list(self._history)):
            if i >= offset:
                out[k] = self._history[k]
                if mi is not None and len(out) >= mi:
                    break
        return web.json_response(out)

    async def _get_history_id(self, request: web.Request) -> web.Response:
        pid = request.match_info["prompt_id"]
        if pid in self._history:
            return web.json_response({pid: self._history[pid]})
        return web.json_response({})

    async def _post_history(self, request: web.Request) -> web.Response:
        json_data = await request.json()
        if json_data.get("clear"):
            self._history = {}
        for pid in json_data.get("delete", []):
            self._history.pop(pid, None)
        return web.Response(status=200)

    # ------------------------------------------------------------------ files
    def _dir_by_type(self, t: str) -> str | None:
        return {"output": self.output_dir, "temp": self.temp_dir, "input": self.input_dir}.get(t)

    async def _view(self, request: web.Request) -> web.StreamResponse:
        if self.view_delay:
            await asyncio.sleep(self.view_delay)
        q = request.query
        if "filename" in q:
            filename, out_dir = _annotated(self, q["filename"])
            if not filename:
                return web.Response(status=400)
            if filename[0] == "/" or ".." in filename:
                return web.Response(status=400)
            if out_dir is None:
                out_dir = self._dir_by_type(q.get("type", "output"))
            if out_dir is None:
                return web.Response(status=400)
            if "subfolder" in q:
                full = os.path.join(out_dir, q["subfolder"])
                if os.path.commonpath((os.path.abspath(full), out_dir)) != out_dir:
                    return web.Response(status=403)
                out_dir = full
            filename = os.path.basename(filename)
            path = os.path.join(out_dir, filename)
            if os.path.isfile(path):
                disp = {"Content-Disposition": f'filename="{filename}"'}
                channel = q.get("channel", "rgba")
                if channel in ("rgb", "a") and "preview" not in q:
                    with open(path, "rb") as fh:
                        data = fh.read()
                    try:
                        w, h, ch, px = png_decode(data)
                    except PngDecodeError:
                        return web.Response(status=500)
                    if channel == "rgb":
                        if ch == 4:
                            px = b"".join(px[i : i + 3] for i in range(0, len(px), 4))
                        elif ch == 1:
                            px = bytes(b for g in px for b in (g, g, g))
                        body = png_encode(w, h, px, 3)
                    else:
                        alpha = px[3::4] if ch == 4 else bytes([255]) * (w * h)
                        body = png_encode(w, h, b"".join(bytes((0, 0, 0, a)) for a in alpha), 4)
                    return web.Response(body=body, content_type="image/png", headers=disp)
                ctype = mimetypes.guess_type(filename)[0] or "application/octet-stream"
                if ctype in {
                    "text/html",
                    "text/html-sandboxed",
                    "application/xhtml+xml",
                    "text/javascript",
                    "text/css",
                }:
                    ctype = "application/octet-stream"
                return web.FileResponse(path, headers={**disp, "Content-Type": ctype})
        return web.Response(status=404)

    async def _upload_image(self, request: web.Request) -> web.Response:
        post = await request.post()
        rec = self.record(request)
        if rec is not None:
            rec.form = {
                k: (
                    {"filename": v.filename, "size": len(v.file.read())}
                    if isinstance(v, web.FileField)
                    else v
                )
                for k, v in post.items()
            }
            for v in post.values():
                if isinstance(v, web.FileField):
                    v.file.seek(0)
        image = post.get("image")
        overwrite = post.get("overwrite")
        upload_type = post.get("type")
        if upload_type is None:
            upload_type = "input"
        upload_dir = self._dir_by_type(upload_type)
        if upload_dir is None:
            # The real handler crashes here (unbound local in get_dir_by_type) -> aiohttp 500.
            raise UnboundLocalError(
                "cannot access local variable 'type_dir' where it is not associated with a value"
            )
        if image and image.file:  # a part without filename is a str -> AttributeError -> 500
            filename = image.filename
            if not filename:
                return web.Response(status=400)
            subfolder = post.get("subfolder", "")
            full_folder = os.path.join(upload_dir, os.path.normpath(subfolder))
            filepath = os.path.abspath(os.path.join(full_folder, filename))
            if os.path.commonpath((upload_dir, filepath)) != upload_dir:
                return web.Response(status=400)
            os.makedirs(full_folder, exist_ok=True)
            data = image.file.read()
            stem, ext = os.path.splitext(filename)
            duplicate = False
            if not (overwrite is not None and overwrite in ("true", "1")):
                i = 1
                while os.path.exists(filepath):
                    with open(filepath, "rb") as fh:
                        if fh.read() == data:
                            duplicate = True
                            break
                    filename = f"{stem} ({i}){ext}"
                    filepath = os.path.join(full_folder, filename)
                    i += 1
            if not duplicate:
                with open(filepath, "wb") as fh:
                    fh.write(data)
            self.uploads.append(
                {
                    "name": filename,
                    "subfolder": subfolder,
                    "type": upload_type,
                    "filename_sent": image.filename,
                    "size": len(data),
                    "duplicate": duplicate,
                    "path": filepath,
                }
            )
            return web.json_response(
                {"name": filename, "subfolder": subfolder, "type": upload_type}
            )
        return web.Response(status=400)

    # ------------------------------------------------------------------ info endpoints
    _GARBAGE = "<html><body>502 Bad Gateway</body></html>\x00\x01 not json"

    async def _object_info(self, request: web.Request) -> web.Response:
        if self.garbage:
            return web.Response(text=self._GARBAGE, content_type="text/html")
        return web.json_response({k: d.object_info(self) for k, d in self._defs().items()})

    async def _object_info_node(self, request: web.Request) -> web.Response:
        if self.garbage:
            return web.Response(text=self._GARBAGE, content_type="text/html")
        name = request.match_info["node_class"]
        defs = self._defs()
        return web.json_response({name: defs[name].object_info(self)} if name in defs else {})

    async def _system_stats(self, request: web.Request) -> web.Response:
        if self.garbage:
            return web.Response(text=self._GARBAGE, content_type="text/html")
        try:
            total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
            free = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
        except (ValueError, OSError, AttributeError):  # pragma: no cover
            total = free = 8 * 1024**3
        return web.json_response(
            {
                "system": {
                    "os": sys.platform,
                    "ram_total": total,
                    "ram_free": free,
                    "comfyui_version": COMFYUI_VERSION,
                    "required_frontend_version": "1.35.9",
                    "installed_templates_version": "0.7.67",
                    "required_templates_version": "0.7.67",
                    "python_version": sys.version,
                    "pytorch_version": "2.14.1+cu130",
                    "embedded_python": False,
                    "argv": ["main.py", "--cpu", "--podi-test-server"],
                },
                "devices": [
                    {
                        "name": "cpu",
                        "type": "cpu",
                        "index": None,
                        "vram_total": total,
                        "vram_free": free,
                        "torch_vram_total": total,
                        "torch_vram_free": free,
                    }
                ],
            }
        )

    def _feature_flags(self) -> dict:
        return {
            "supports_preview_metadata": True,
            "max_upload_size": self.max_upload_size,
            "extension": {"manager": {"supports_v4": True}},
        }

    async def _features(self, request: web.Request) -> web.Response:
        return web.json_response(self._feature_flags())

    async def _free(self, request: web.Request) -> web.Response:
        json_data = await request.json()
        if json_data.get("free_memory"):
            self._cache.clear()
        return web.Response(status=200)

    async def _embeddings(self, request: web.Request) -> web.Response:
        return web.json_response([])

    # ------------------------------------------------------------------ worker
    async def _worker(self) -> None:
        assert self._wakeup is not None
        while True:
            while not self._queue:
                self._wakeup.clear()
                await self._wakeup.wait()
            item = heapq.heappop(self._queue)
            idx = self._task_counter
            self._task_counter += 1
            self._running[idx] = copy.deepcopy(item)
            self._busy = True
            drop = self.drop_socket_after
            if drop is not None:
                self.drop_socket_after = None
                self._drop_tag, self._drop_remaining = item[1], drop
                if drop <= 0:
                    self._drop_remaining = None
                    self.abort_websockets()
            self._queue_updated()
            prompt_id = item[1]
            self.last_prompt_id = prompt_id
            extra = dict(item[3])
            extra.update(item[5])
            success, status_messages, result = await self._execute(
                item[2], prompt_id, extra, list(item[4])
            )
            await self._flush()
            if self.history_delay:
                await asyncio.sleep(self.history_delay)
            running = self._running.pop(idx)
            if len(self._history) > MAXIMUM_HISTORY_SIZE:
                self._history.pop(next(iter(self._history)))
            entry = {
                "prompt": list(running[:5]),
                "outputs": {},
                "status": {
                    "status_str": "success" if success else "error",
                    "completed": success,
                    "messages": copy.deepcopy(status_messages),
                },
            }
            entry.update(result)
            self._history[prompt_id] = entry
            self._queue_updated()
            if self.client_id is not None:
                self._send("executing", {"node": None, "prompt_id": prompt_id}, self.client_id)
            await self._flush()
            self._drop_tag, self._drop_remaining = None, None
            self._busy = False

    def _check_interrupt(self) -> None:
        if self._interrupt_flag:
            self._interrupt_flag = False
            raise _Interrupted()

    async def _progress_hook(self, ctx: _Ctx, value: float, total: float) -> None:
        self._check_interrupt()
        self._progress_update(ctx.prompt_id, ctx.node_id, value, total)
        self._send(
            "progress",
            {"value": value, "max": total, "prompt_id": ctx.prompt_id, "node": ctx.node_id},
            self.client_id,
        )
        await asyncio.sleep(0)

    # progress registry -----------------------------------------------------------------------
    def _progress_send(self, prompt_id: str) -> None:
        nodes = {
            nid: {
                "value": st["value"],
                "max": st["max"],
                "state": st["state"],
                "node_id": nid,
                "prompt_id": prompt_id,
                "display_node_id": nid,
                "parent_node_id": None,
                "real_node_id": nid,
            }
            for nid, st in self._progress.items()
            if st["state"] != "pending"
        }
        self._send("progress_state", {"prompt_id": prompt_id, "nodes": nodes}, self.client_id)

    def _progress_entry(self, nid: str) -> dict:
        if nid not in self._progress:
            self._progress[nid] = {"state": "pending", "value": 0, "max": 1}
        return self._progress[nid]

    def _progress_start(self, prompt_id: str, nid: str) -> None:
        e = self._progress_entry(nid)
        e.update(state="running", value=0.0, max=1.0)
        self._progress_send(prompt_id)

    def _progress_update(self, prompt_id: str, nid: str, value: float, total: float) -> None:
        e = self._progress_entry(nid)
        e.update(state="running", value=value, max=total)
        self._progress_send(prompt_id)

    def _progress_finish(self, prompt_id: str, nid: str) -> None:
        e = self._progress_entry(nid)
        e.update(state="finished", value=e["max"])
        self._progress_send(prompt_id)

    # signatures ------------------------------------------------------------------------------
    def _signatures(self, prompt: dict, defs: dict[str, NodeDef]) -> dict[str, Any]:
        changed: dict[str, Any] = {}
        for nid, node in prompt.items():
            d = defs[node["class_type"]]
            if d.is_changed is None:
                changed[nid] = False
            else:
                lits = {k: v for k, v in node["inputs"].items() if not _is_link(v)}
                try:
                    changed[nid] = d.is_changed(self, **lits)
                except Exception:
                    changed[nid] = float("nan")

        def immediate(nid: str, order: dict[str, int]) -> Any:
            node = prompt.get(nid)
            if node is None:
                return _UNCACHEABLE
            ch = changed[nid]
            if isinstance(ch, float) and math.isnan(ch):
                return _UNCACHEABLE
            sig: list = [node["class_type"], ch]
            for k in sorted(node["inputs"]):
                v = node["inputs"][k]
                if _is_link(v):
                    sig.append((k, ("ANCESTOR", order[v[0]], v[1])))
                else:
                    sig.append((k, json.dumps(v, sort_keys=True, default=str)))
            return tuple(sig)

        def ancestry(nid: str, out: list, order: dict) -> None:
            node = prompt.get(nid)
            if node is None:
                return
            for k in sorted(node["inputs"]):
                v = node["inputs"][k]
                if _is_link(v) and v[0] not in order:
                    out.append(v[0])
                    order[v[0]] = len(out) - 1
                    ancestry(v[0], out, order)

        sigs: dict[str, Any] = {}
        for nid in prompt:
            anc: list = []
            order: dict = {}
            ancestry(nid, anc, order)
            parts = [immediate(nid, order)] + [immediate(a, order) for a in anc]
            sigs[nid] = object() if any(p is _UNCACHEABLE for p in parts) else tuple(parts)
        return sigs

    # execution -------------------------------------------------------------------------------
    async def _execute(
        self, prompt: dict, prompt_id: str, extra_data: dict, execute_outputs: list[str]
    ) -> tuple[bool, list, dict]:
        defs = NODE_DEFS
        self._interrupt_flag = False
        self.client_id = extra_data.get("client_id")
        status_messages: list = []
        self._progress: dict[str, dict] = {}

        def add_message(event: str, data: dict, broadcast: bool) -> None:
            data = {**data, "timestamp": int(time.time() * 1000)}
            status_messages.append([event, data])
            if self.client_id is not None or broadcast:
                self._send(event, data, self.client_id)

        fail = self.fail_next_prompt_with
        if fail is not None:
            self.fail_next_prompt_with = None
            self._cache.clear()

        add_message("execution_start", {"prompt_id": prompt_id}, False)
        sigs = self._signatures(prompt, defs)
        used = set(s for s in sigs.values())
        for key in [k for k in self._cache if k not in used]:
            del self._cache[key]
        cached_nodes = [nid for nid in prompt if sigs[nid] in self._cache]
        add_message("execution_cached", {"nodes": cached_nodes, "prompt_id": prompt_id}, False)

        ui_outputs: dict[str, dict] = {}
        results: dict[str, tuple] = {}
        executed: list[str] = []
        current_outputs = list(prompt.keys())
        el = _ExecutionList(prompt, lambda n: sigs.get(n) in self._cache, defs)
        for o in execute_outputs:
            el.add_node(o)
        success = True
        ctx_base = dict(server=self, prompt_id=prompt_id, prompt=prompt, extra_data=extra_data)
        while not el.empty():
            nid = el.pick()
            if nid is None:  # dependency cycle
                success = False
                add_message(
                    "execution_error",
                    {
                        "prompt_id": prompt_id,
                        "node_id": next(iter(el.pending)),
                        "node_type": prompt[next(iter(el.pending))]["class_type"],
                        "executed": list(executed),
                        "exception_message": "Dependency cycle detected",
                        "exception_type": "graph.DependencyCycleError",
                        "traceback": [],
                        "current_inputs": [],
                        "current_outputs": current_outputs,
                    },
                    False,
                )
                break
            node = prompt[nid]
            d = defs[node["class_type"]]
            cached = self._cache.get(sigs[nid])
            if cached is not None:
                if self.client_id is not None:
                    cached_ui = cached.ui or {}
                    self._send(
                        "executed",
                        {
                            "node": nid,
                            "display_node": nid,
                            "output": cached_ui.get("output"),
                            "prompt_id": prompt_id,
                        },
                        self.client_id,
                    )
                    if cached.ui is not None:
                        ui_outputs[nid] = cached.ui
                self._progress_finish(prompt_id, nid)
                results[nid] = cached.outputs or ()
                el.complete(nid)
                continue
            input_data: dict[str, Any] | None = None
            try:
                self._progress_start(prompt_id, nid)
                input_data = self._input_data(prompt, nid, d, results, extra_data, sigs)
                if self.client_id is not None:
                    self.last_node_id = nid
                    self._send(
                        "executing",
                        {"node": nid, "display_node": nid, "prompt_id": prompt_id},
                        self.client_id,
                    )
                if self.node_delay:
                    await asyncio.sleep(self.node_delay)
                self._check_interrupt()
                if fail is not None and (
                    not isinstance(fail, dict) or fail.get("node_id") in (None, nid)
                ):
                    f, fail = fail, None
                    raise _make_failure(f)
                ctx = _Ctx(node_id=nid, **ctx_base)
                kwargs = {k: v for k, v in input_data.items()}
                if inspect.iscoroutinefunction(d.func):
                    ret = await d.func(ctx, **kwargs)
                else:
                    ret = d.func(ctx, **kwargs)
                await asyncio.sleep(0)
                if isinstance(ret, dict):
                    ui, outs = ret.get("ui"), tuple(ret.get("result", ()))
                else:
                    ui, outs = None, tuple(ret)
                entry_ui = None
                if ui:
                    entry_ui = {
                        "meta": {
                            "node_id": nid,
                            "display_node": nid,
                            "parent_node": None,
                            "real_node_id": nid,
                        },
                        "output": ui,
                    }
                    ui_outputs[nid] = entry_ui
                    if self.client_id is not None:
                        self._send(
                            "executed",
                            {
                                "node": nid,
                                "display_node": nid,
                                "output": ui,
                                "prompt_id": prompt_id,
                            },
                            self.client_id,
                        )
                results[nid] = outs
                self._cache[sigs[nid]] = _CacheEntry(outs, entry_ui)
            except _Interrupted:
                success = False
                add_message(
                    "execution_interrupted",
                    {
                        "prompt_id": prompt_id,
                        "node_id": nid,
                        "node_type": node["class_type"],
                        "executed": list(executed),
                    },
                    True,
                )
                break
            except asyncio.CancelledError:
                raise
            except Exception as ex:
                success = False
                etype = getattr(ex, "exception_type", None) or _full_type_name(type(ex))
                current_inputs = {k: [_format_value(v)] for k, v in (input_data or {}).items()}
                add_message(
                    "execution_error",
                    {
                        "prompt_id": prompt_id,
                        "node_id": nid,
                        "node_type": node["class_type"],
                        "executed": list(executed),
                        "exception_message": f"{ex}\n",
                        "exception_type": etype,
                        "traceback": traceback.format_tb(ex.__traceback__),
                        "current_inputs": current_inputs,
                        "current_outputs": current_outputs,
                    },
                    False,
                )
                break
            self._progress_finish(prompt_id, nid)
            executed.append(nid)
            el.complete(nid)
        else:
            add_message("execution_success", {"prompt_id": prompt_id}, False)
        result = {
            "outputs": {k: v["output"] for k, v in ui_outputs.items()},
            "meta": {k: v["meta"] for k, v in ui_outputs.items()},
        }
        self.last_node_id = None
        return success, status_messages, result

    def _input_data(
        self, prompt: dict, nid: str, d: NodeDef, results: dict, extra_data: dict, sigs: dict
    ) -> dict[str, Any]:
        it = d.input_types(self)
        out: dict[str, Any] = {}
        for name, val in prompt[nid]["inputs"].items():
            _t, cat, _info = _input_info(it, name)
            if _is_link(val):
                src = results.get(val[0])
                if src is None and val[0] in sigs:
                    hit = self._cache.get(sigs[val[0]])
                    src = hit.outputs if hit is not None else None
                out[name] = src[val[1]] if src is not None and val[1] < len(src) else None
            elif cat is not None:
                out[name] = val
        for name, kind in it.get("hidden", {}).items():
            if kind == "PROMPT":
                out[name] = prompt
            elif kind == "EXTRA_PNGINFO":
                out[name] = extra_data.get("extra_pnginfo")
            elif kind == "UNIQUE_ID":
                out[name] = nid
        return out


def _full_type_name(klass: type) -> str:
    if klass.__module__ == "builtins":
        return klass.__qualname__
    return klass.__module__ + "." + klass.__qualname__


def _make_failure(spec: Any) -> BaseException:
    if isinstance(spec, BaseException):
        return spec
    if isinstance(spec, dict):
        return NodeRuntimeError(
            str(spec.get("message", spec.get("exception_message", "injected failure"))),
            spec.get("exception_type", spec.get("type", "Exception")),
        )
    return NodeRuntimeError(str(spec))
